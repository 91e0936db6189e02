"""Quality figures of a clustering: silhouette, adjusted Rand index, purity."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd

from cmapdask.errors import InputError
from cmapdask.model.missing import is_missing

__all__ = ["cluster_quality"]


def cluster_quality(
    labels,
    truth=None,
    *,
    x=None,
    sample_size: int = 5000,
    seed: int = 0,
) -> dict:
    """Quality figures of a clustering.

    Parameters
    ----------
    labels
        Cluster per item (array-like or DataArray; computed if lazy).
    truth
        Annotation per item (for example the MoA); items with ``None`` are left out of
        the agreement figures.
    x
        Features per item (``(n, d)``, numpy or dask): the silhouette is computed on
        ``sample_size`` items drawn at random (only those rows are computed).

    Returns
    -------
    dict
        ``n``, ``n_clusters``; with ``truth``: ``adjusted_rand`` (0 = chance, 1 =
        identical), ``purity`` (share of items whose cluster's majority annotation is
        theirs), ``n_annotated``; with ``x``: ``silhouette`` (Euclidean) and
        ``silhouette_n``.
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    lab = np.asarray(dask.compute(getattr(labels, "data", labels))[0]).ravel()
    out = {"n": int(lab.size), "n_clusters": int(np.unique(lab).size)}
    if truth is not None:
        t = np.asarray(truth, dtype=object).ravel()
        if t.size != lab.size:
            raise InputError(f"cluster_quality: {t.size} annotations for {lab.size} labels")
        ok = np.array([not is_missing(v) for v in t], dtype=bool)
        if ok.sum() < 2:
            raise InputError("cluster_quality: fewer than 2 annotated items")
        tt, ll = t[ok].astype(str), lab[ok]
        out["adjusted_rand"] = float(adjusted_rand_score(tt, ll))
        ct = pd.crosstab(ll, tt)
        out["purity"] = float(ct.max(axis=1).sum() / ok.sum())
        out["n_annotated"] = int(ok.sum())
    if x is not None:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(lab.size, min(sample_size, lab.size), replace=False))
        (xs,) = dask.compute(x[take])
        if np.unique(lab[take]).size >= 2:
            out["silhouette"] = float(silhouette_score(np.asarray(xs), lab[take]))
            out["silhouette_n"] = int(take.size)
    return out
