"""MoA recall: AUROC of same-MoA vs different-MoA pairs from neighbour lists.

Approximate from top-k/bottom-k lists (unseen pairs placed by ``unseen``); the numpy
kernels (:func:`_recall_block`, :func:`_auroc`) and the dask graph of :func:`moa_recall_approx`
are kept together in this one module.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.errors import InputError
from cmapdask.model.missing import labels as _labels
from cmapdask.model.provenance import provenance_record

__all__ = ["moa_recall_approx", "roc_curve"]

Unseen = Literal["midpoint", "exclude"]


def _combos(labels: np.ndarray):
    """Code per item for its label combination, and which combinations share a label."""
    keys = np.array(
        ["" if v is None else "|".join(sorted(set(v.split("|")))) for v in labels], dtype=object
    )
    uniq, code = np.unique(keys, return_inverse=True)
    code = np.where(keys == "", -1, code)
    parts = [set(u.split("|")) if u else set() for u in uniq]
    share = np.array([[bool(a & b) for b in parts] for a in parts], dtype=bool).reshape(
        len(parts), len(parts)
    )
    return code, share


def _recall_block(
    ti,
    ts,
    bi,
    bs,
    *,
    lo,
    code,
    share,
    cell,
    valid,
    n_cand,
    k,
    cnt_all,
    cnt_cell,
    n_groups,
    bins,
    score_range,
    unseen,
):
    """Histograms ``(1, 3, n_groups, 2, bins)`` of a block of signatures.

    Axis 1: where unseen pairs go (0 midpoint, 1 lowest-AUROC placement, 2 highest);
    axis 3: class (0 different MoA, 1 same MoA).
    """
    rows = np.arange(ti.shape[0]) + lo
    hist = np.zeros((3, n_groups, 2, bins))
    use = valid[rows] & (code[rows] >= 0)
    lo_s, hi_s = score_range

    def binof(s):
        return np.clip(((s - lo_s) / (hi_s - lo_s) * bins).astype(np.int64), 0, bins - 1)

    keep_b = np.arange(1, bi.shape[1] + 1)[None, :] <= (n_cand - k)  # bottom ranks not in top
    idx = np.concatenate([ti, np.where(keep_b, bi, -1)], axis=1)
    sc = np.concatenate([ts, bs], axis=1).astype(np.float64)
    r = np.broadcast_to(rows[:, None], idx.shape)
    m = use[:, None] & (idx >= 0)
    m[m] &= code[idx[m]] >= 0
    ri, ji, si = r[m], idx[m], sc[m]
    same = share[code[ri], code[ji]].astype(np.int64)
    b = binof(si)
    incell = (cell[ri] == cell[ji]) & (cell[ri] >= 0)
    for v in range(3):  # listed pairs have known scores: the same in every placement
        np.add.at(hist[v, 0], (same, b), 1)
        np.add.at(hist[v], (1 + cell[ri][incell], same[incell], b[incell]), 1)
    if unseen == "exclude" or not use.any():
        return hist[None]
    u = np.flatnonzero(use)
    ru = rows[u]
    tmin = np.where(ti[u] >= 0, ts[u], np.inf).min(axis=1)
    bmax = np.where((bi[u] >= 0) & keep_b, bs[u], -np.inf).max(axis=1)
    bmax = np.where(np.isfinite(bmax), bmax, tmin)
    at = {"mid": binof((tmin + bmax) / 2), "lo": binof(bmax), "hi": binof(tmin)}
    # unseen positives/negatives go to (variant, class) at these places
    place = [(0, 1, "mid"), (0, 0, "mid"), (1, 1, "lo"), (1, 0, "hi"), (2, 1, "hi"), (2, 0, "lo")]
    ri_local = ri - lo
    seen_pos = np.bincount(ri_local, weights=same, minlength=rows.size)[u]
    seen_n = np.bincount(ri_local, minlength=rows.size)[u]
    pos_tot = (share[code[ru]] * cnt_all[None, :]).sum(axis=1) - 1
    left = {1: pos_tot - seen_pos, 0: (cnt_all.sum() - 1 - pos_tot) - (seen_n - seen_pos)}
    for v, cls, where in place:
        np.add.at(hist[v, 0, cls], at[where], left[cls])
    c = cell[ru] >= 0
    cu = cell[ru][c]
    rc = ri_local[incell]
    seen_pos_c = np.bincount(rc, weights=same[incell], minlength=rows.size)[u][c]
    seen_n_c = np.bincount(rc, minlength=rows.size)[u][c]
    pos_c = (share[code[ru][c]] * cnt_cell[cu]).sum(axis=1) - 1
    left_c = {
        1: pos_c - seen_pos_c,
        0: (cnt_cell[cu].sum(axis=1) - 1 - pos_c) - (seen_n_c - seen_pos_c),
    }
    for v, cls, where in place:
        np.add.at(hist[v], (1 + cu, cls, at[where][c]), left_c[cls])
    return hist[None]


def _recall_counts(valid, code, cell, n_cells, n_combos) -> dict:
    """Per label combination: valid annotated signatures overall and per cell line."""
    valid = np.asarray(valid, dtype=bool)
    counted = valid & (code >= 0)
    cnt_all = np.bincount(code[counted], minlength=n_combos).astype(np.float64)
    cnt_cell = np.zeros((max(n_cells, 1), n_combos))
    has_cell = counted & (cell >= 0)
    np.add.at(cnt_cell, (cell[has_cell], code[has_cell]), 1)
    return {
        "valid": valid,
        "n_cand": int(valid.sum()) - 1,
        "cnt_all": cnt_all,
        "cnt_cell": cnt_cell,
    }


def _auroc(hist: np.ndarray) -> np.ndarray:
    """``(..., 4)`` from ``(..., 2, bins)``: AUROC, its binning error bound, positives, "
    "negatives."""
    neg, pos = hist[..., 0, :], hist[..., 1, :]
    P, N = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, axis=-1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(-1) / (P * N)
        err = 0.5 * (pos * neg).sum(-1) / (P * N)
    return np.stack([auc, err, P, N], axis=-1)


def _recall_stats(hist: np.ndarray) -> np.ndarray:
    """``(groups, 6)``: auroc, bin error, n_pos, n_neg, lowest and highest AUROC."""
    a = _auroc(hist)  # (3, groups, 4)
    lo = np.maximum(0.0, a[1, :, 0] - a[1, :, 1])
    hi = np.minimum(1.0, a[2, :, 0] + a[2, :, 1])
    return np.concatenate([a[0], lo[:, None], hi[:, None]], axis=1)


def moa_recall_approx(
    neighbours: xr.Dataset,
    labels,
    *,
    cells=None,
    bins: int = 4000,
    score_range: tuple[float, float] = (-1.0, 1.0),
    unseen: Unseen = "midpoint",
) -> xr.Dataset:
    """Approximate MoA recall AUROC from neighbour lists, with its bounds (lazy).

    An estimate: pairs outside the lists are only known to score between a signature's
    k-th most opposite and k-th most similar neighbour, so unless ``2k`` covers every
    candidate the AUROC is only known within ``[auroc_min, auroc_max]`` (reported). The
    exact AUROC over every pair is :func:`cmapdask.similarity.recall.moa_recall`.

    Parameters
    ----------
    neighbours
        A :func:`cmapdask.similarity.similarity` result (self-similarity): ``top_index``,
        ``top_score``, ``bottom_index``, ``bottom_score`` (``("sig", "rank")``) and
        ``valid``.
    labels
        MoA per signature, aligned with ``sig`` (``|`` separates several; ``None``:
        unannotated, its pairs are left out). Two signatures are a positive pair when
        they share a MoA.
    cells
        Cell line per signature; adds one group per cell line (pairs within that line).
    bins
        Score histogram bins over ``score_range``; AUROC is exact up to ties within a bin,
        whose effect is reported as ``auroc_bin_error``.
    score_range
        Range of the metric (correlations and cosine: ``(-1, 1)``).
    unseen
        Pairs in neither list of a signature have scores between its k-th most opposite
        and its k-th most similar neighbour. ``"midpoint"``: count them at the middle of
        that interval (exact when ``2k`` covers every candidate; otherwise the error is
        bounded by the share of unseen pairs); ``"exclude"``: use listed pairs only.

    Returns
    -------
    xarray.Dataset
        Dim ``group`` (``"all"``, then each cell line): ``auroc``, ``auroc_bin_error``,
        ``n_pos``, ``n_neg`` (ordered pairs), and ``hist`` (``group, class, bin``; class 0
        different MoA, 1 same) for ROC curves (:func:`roc_curve`). Dask-backed.

    Notes
    -----
    Reads the neighbour lists once, one chunk of signatures per task; each task holds its
    chunk, the per-signature label codes (O(N)), and a ``groups x 2 x bins`` histogram;
    the histograms are summed in a tree. Never forms an N x N matrix; time O(N k).
    """
    if unseen not in ("midpoint", "exclude"):
        raise InputError(f"unseen must be 'midpoint' or 'exclude', not {unseen!r}")
    need = ("top_index", "top_score", "bottom_index", "bottom_score", "valid")
    miss = [v for v in need if v not in neighbours]
    if miss:
        raise InputError(
            f"moa_recall_approx: neighbour lists lack {', '.join(miss)} (a similarity() result?)"
        )
    if "ref_valid" in neighbours:
        raise InputError(
            "moa_recall_approx: needs a self-similarity result, not queries-vs-reference"
        )
    n = neighbours.sizes["sig"]
    labels = _labels(labels)
    if labels.size != n:
        raise InputError(f"moa_recall_approx: {labels.size} labels for {n} signatures")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InputError(f"bins must be an integer >= 2, got {bins!r}")
    code, share = _combos(labels)
    if code.max(initial=-1) < 0:
        raise InputError("moa_recall_approx: no signature has a MoA label")
    if cells is None:
        cell_names, cell = np.array([], dtype=object), np.full(n, -1, np.int64)
    else:
        cl = _labels(cells)
        if cl.size != n:
            raise InputError(f"moa_recall_approx: {cl.size} cell lines for {n} signatures")
        cell, cell_names = pd.factorize(pd.Series(cl), sort=True)
        cell_names = np.asarray(cell_names, dtype=object)
    n_groups = 1 + cell_names.size
    k = neighbours.sizes["rank"]
    # valid is lazy: the pair counts it implies are one small task every block depends on
    valid = neighbours["valid"].data
    counts = dask.delayed(_recall_counts, pure=True)(
        valid, code, cell, cell_names.size, share.shape[0]
    )
    arrs = [neighbours[v].data for v in need[:4]]
    arrs = [
        a if isinstance(a, da.Array) else da.from_array(np.asarray(a), chunks=(4096, -1))
        for a in arrs
    ]
    rows = arrs[0].chunks[0]
    arrs = [a.rechunk({0: rows, 1: -1}) for a in arrs]
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]])

    def block(ti, ts, bi, bs, counts, block_info=None):
        lo = int(starts[block_info[0]["chunk-location"][0]])
        return _recall_block(
            ti,
            ts,
            bi,
            bs,
            lo=lo,
            code=code,
            share=share,
            cell=cell,
            **counts,
            k=k,
            n_groups=n_groups,
            bins=int(bins),
            score_range=score_range,
            unseen=unseen,
        )

    parts = da.map_blocks(
        block,
        *arrs,
        counts,
        chunks=((1,) * len(rows), (3,), (n_groups,), (2,), (int(bins),)),
        new_axis=[2, 3, 4],
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0, 0)),
    )
    hist = parts.sum(axis=0)
    stats = da.blockwise(
        _recall_stats,
        "gs",
        hist,
        "vgcb",
        new_axes={"s": 6},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0)),
    )
    groups = np.array(["all", *cell_names.tolist()], dtype=object)
    out = xr.Dataset(
        {
            "auroc": ("group", stats[:, 0]),
            "auroc_bin_error": ("group", stats[:, 1]),
            "n_pos": ("group", stats[:, 2]),
            "n_neg": ("group", stats[:, 3]),
            "auroc_min": ("group", stats[:, 4]),
            "auroc_max": ("group", stats[:, 5]),
            "hist": (("group", "class", "bin"), hist[0]),
        },
        coords={
            "group": groups,
            "class": np.array(["different", "same"], dtype=object),
            "bin_lower": ("bin", np.linspace(*score_range, int(bins) + 1)[:-1]),
        },
    )
    prov = dict(neighbours.attrs.get("cmapdask", {}))
    out.attrs["cmapdask"] = provenance_record(
        "moa_recall_approx",
        estimate="neighbour lists only; exact value within [auroc_min, auroc_max]",
        k=int(k),
        bins=int(bins),
        unseen=unseen,
        metric=prov.get("metric"),
        space=prov.get("space"),
        pairs="ordered (query signature, listed or unlisted candidate)",
    )
    return out


def roc_curve(hist) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) from a ``(2, bins)`` recall histogram."""
    h = np.asarray(hist, dtype=float)
    neg, pos = h[0][::-1], h[1][::-1]
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), 1)])
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1)])
    return fpr, tpr
