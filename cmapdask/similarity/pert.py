"""Perturbagen-level similarity: pert x pert per cell line, summarised across cell lines.

Signature similarities are aggregated with the maximum quantile (maxq, ALGORITHMS.md §7):
for perturbagens a and b in cell line c, maxq over the similarities of every signature of
a in c with every signature of b in c (a signature is never paired with itself); then
maxq across the cell lines where both were profiled.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cmapdask.connectivity.summaries import maxq
from cmapdask.errors import MetadataError
from cmapdask.model.checks import dataset_name
from cmapdask.model.types import SimilarityMetric as Metric
from cmapdask.model.types import Space
from cmapdask.similarity.api import _check_metric, _inputs, _provenance
from cmapdask.similarity.kernels import gram, standardize

__all__ = ["pert_similarity", "aggregate_pairs"]


def aggregate_pairs(m: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """maxq of the entries of a square similarity block for every pair of groups.

    ``groups[i]`` is the group (0..n_groups-1) of row/column ``i``; the diagonal (a
    signature with itself) is left out. Groups of equal size are done together, so the
    cost is a sort per pair of distinct sizes, not a Python loop per pair of groups.
    """
    m = np.array(m, dtype=np.float64)
    np.fill_diagonal(m, np.nan)
    out = np.full((n_groups, n_groups), np.nan)
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    for ka in np.unique(counts[present]):
        ga = present[counts[present] == ka]
        ia = order[starts[ga][:, None] + np.arange(ka)]  # (na, ka) rows of each group
        for kb in np.unique(counts[present]):
            gb = present[counts[present] == kb]
            ib = order[starts[gb][:, None] + np.arange(kb)]
            block = m[ia[:, :, None, None], ib[None, None, :, :]]  # (na, ka, nb, kb)
            vals = block.transpose(0, 2, 1, 3).reshape(len(ga), len(gb), ka * kb)
            out[np.ix_(ga, gb)] = maxq(vals, axis=-1)
    return out


def _cell_task(x: np.ndarray, groups: np.ndarray, n_groups: int, metric: str) -> np.ndarray:
    z, v = standardize(x, metric)
    return aggregate_pairs(gram(z, v, z, v), groups, n_groups).astype(np.float32)


def _summary(block: np.ndarray) -> np.ndarray:
    return maxq(block, axis=0).astype(np.float32)


def pert_similarity(
    ds: xr.Dataset,
    *,
    metric: Metric = "pearson",
    space: Space = "landmark",
    pert_field: str = "pert_id",
    cell_field: str | None = None,
) -> xr.Dataset:
    """Perturbagen x perturbagen similarity per cell line and across cell lines (lazy).

    Parameters
    ----------
    ds
        Signatures with ``pert_field`` and ``cell_field`` coordinates along ``sig``
        (signatures where either is missing are left out).
    metric, space
        As for :func:`~cmapdask.similarity.similarity`.
    pert_field, cell_field
        Names of the perturbagen and cell-line coordinates; ``cell_field=None`` takes
        ``cell_id`` (older releases) or else ``cell_iname`` (2020 release).

    Returns
    -------
    xarray.Dataset
        ``pert_cell`` (``cell``, ``pert``, ``pert_ref``): maxq of the signature
        similarities within each cell line, NaN where a pair was not profiled together (or
        a perturbagen has a single signature, against itself); ``pert_summary``
        (``pert``, ``pert_ref``): maxq of ``pert_cell`` across cell lines.

    Notes
    -----
    One task per cell line reads that line's signatures (``n_c x G``) and holds their
    full ``n_c x n_c`` similarity plus a ``P x P`` result (P perturbagens overall): meant
    for sets up to tens of thousands of signatures. The summary holds ``cells x P x P``.
    """
    _check_metric(metric)
    if cell_field is None:
        cell_field = "cell_id" if "cell_id" in ds.coords else "cell_iname"
    for f in (pert_field, cell_field):
        if f not in ds.coords or ds[f].dims != ("sig",):
            raise MetadataError(
                f"{dataset_name(ds)}: no signature coordinate {f!r} for perturbagen similarity"
            )
    genes, x, _ = _inputs(ds, None, space, None)
    pert = np.asarray(ds[pert_field].values, dtype=object)
    cell = np.asarray(ds[cell_field].values, dtype=object)
    ok = np.array(
        [
            p is not None and c is not None and p == p and c == c
            for p, c in zip(pert, cell, strict=False)
        ]
    )
    if not ok.any():
        raise MetadataError(
            f"{dataset_name(ds)}: every signature lacks {pert_field} or {cell_field}"
        )
    perts, pidx = np.unique(pert[ok].astype(str), return_inverse=True)
    cells, cidx = np.unique(cell[ok].astype(str), return_inverse=True)
    rows = np.flatnonzero(ok)
    P = len(perts)
    per_cell = []
    for c in range(len(cells)):
        sel = rows[cidx == c]
        task = dask.delayed(_cell_task, pure=True)(x[sel], pidx[cidx == c], P, metric)
        per_cell.append(da.from_delayed(task, (P, P), dtype=np.float32))
    pc = da.stack(per_cell)
    summary = da.blockwise(
        _summary, "jk", pc.rechunk({0: -1}), "ijk", dtype=np.float32, concatenate=True
    )
    coords = {
        "cell": cells.astype(object),
        "pert": perts.astype(object),
        "pert_ref": perts.astype(object),
    }
    out = xr.Dataset(
        {
            "pert_cell": (("cell", "pert", "pert_ref"), pc),
            "pert_summary": (("pert", "pert_ref"), summary),
        },
        coords=coords,
    )
    out.attrs["cmapdask"] = _provenance(
        ds,
        metric=metric,
        space=space,
        n_genes=int(genes.size),
        level="pert",
        aggregate="maxq",
        pert_field=pert_field,
        cell_field=cell_field,
    )
    return out
