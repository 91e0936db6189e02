"""Candidate PCLs: clusters of perturbagens with high internal connectivity and a shared
annotation, and their GMT file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.enrich.clusters import cluster_enrichment
from cmapdask.enrich.kernels import bh
from cmapdask.errors import InputError
from cmapdask.model.missing import labels as _labels

__all__ = ["candidate_pcls", "write_pcl_gmt"]


def candidate_pcls(
    matrix: xr.DataArray,
    clusters,
    sets: Mapping[str, Sequence[str]],
    *,
    min_size: int = 3,
    min_shared: float = 0.5,
) -> pd.DataFrame:
    """Clusters of perturbagens with high internal connectivity and a shared annotation.

    Parameters
    ----------
    matrix
        Perturbagen x perturbagen similarity or connectivity, dims ``(pert, pert_ref)``
        with the same ids on both (a ``pert_summary``); NaN pairs are ignored.
    clusters
        Cluster label per ``pert`` (``-1``/``None``: unclustered).
    sets
        ``{annotation: perturbagen ids}``.
    min_size, min_shared
        Smallest cluster kept, and the smallest fraction of its members that must share
        the cluster's most common annotation.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``cluster, n_members, internal`` (median of the pairwise
        scores among members), ``annotation, n_shared, shared_fraction, p`` (hypergeometric
        over-representation of that annotation among perturbagens of the matrix), ``q``
        (BH over candidates), ``score = internal x shared_fraction``, ``members``
        (``|``-joined). Sorted by score.

    Notes
    -----
    Computes the matrix (P x P, meant for up to tens of thousands of perturbagens).
    """
    if matrix.ndim != 2:
        raise InputError("candidate_pcls: matrix must be 2-D (pert, pert_ref)")
    ids = _labels(matrix[matrix.dims[0]].values)
    m = np.asarray(matrix.values, dtype=np.float64)
    cl = np.asarray(clusters, dtype=object)
    if cl.size != ids.size:
        raise InputError(f"candidate_pcls: {cl.size} cluster labels for {ids.size} perturbagens")
    enr = cluster_enrichment(cl, ids, sets, background="all")
    rows = []
    for c, grp in enr.groupby("cluster", sort=False):
        members = np.flatnonzero(cl == c)
        if members.size < min_size:
            continue
        best = grp.sort_values(["k", "p"], ascending=[False, True]).iloc[0]
        sub = m[np.ix_(members, members)].copy()
        np.fill_diagonal(sub, np.nan)
        internal = float(np.nanmedian(sub)) if np.isfinite(sub).any() else np.nan
        frac = best["k"] / members.size
        if frac < min_shared:
            continue
        rows.append(
            {
                "cluster": c,
                "n_members": members.size,
                "internal": internal,
                "annotation": best["set"],
                "n_shared": int(best["k"]),
                "shared_fraction": frac,
                "p": best["p"],
                "score": internal * frac,
                "members": "|".join(ids[members].astype(str)),
            }
        )
    cols = [
        "cluster",
        "n_members",
        "internal",
        "annotation",
        "n_shared",
        "shared_fraction",
        "p",
        "q",
        "score",
        "members",
    ]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    df["q"] = bh(df["p"].to_numpy())
    return df.sort_values("score", ascending=False).reset_index(drop=True)[cols]


def write_pcl_gmt(candidates: pd.DataFrame, path, *, storage_options: dict | None = None) -> str:
    """Write candidate PCLs as GMT: ``CPCL_<cluster>_<ANNOTATION>``, description with the score."""
    import re

    from cmapdask.io.gmt import write_gmt

    if candidates.empty:
        raise InputError(f"{path}: no candidate PCLs to write")
    sets, desc = {}, {}
    for row in candidates.itertuples():
        name = f"CPCL_{row.cluster}_" + re.sub(
            r"[^A-Z0-9]+", "_", str(row.annotation).upper()
        ).strip("_")
        sets[name] = row.members.split("|")
        desc[name] = (
            f"{row.annotation} score={row.score:.4f} internal={row.internal:.4f} "
            f"shared={row.shared_fraction:.2f}"
        )
    return write_gmt(sets, path, descriptions=desc, storage_options=storage_options)
