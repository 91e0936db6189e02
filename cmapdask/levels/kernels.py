"""Array layer of the L1000 levels: plain numpy on in-memory blocks (ALGORITHMS.md §9).

Rows are signatures (samples), columns are genes: the ``("sig", "gene")`` orientation of
``expr``. Everything is computed in float64 and returned as float32 (``expr``'s dtype), so
a result is the float32 rounding of the exact value. The functions here know nothing of
dask or xarray; the dask layer (:mod:`cmapdask.levels.groups`) calls them once per block,
and the tests call them directly as the numpy reference.
"""

from __future__ import annotations

import numpy as np

from cmapdask.errors import InputError

__all__ = [
    "MAD_SCALE",
    "TAS_NGENE",
    "STAT_FIELDS",
    "check_finite",
    "quantile_normalize",
    "quantile_target_rows",
    "quantile_apply",
    "robust_center_scale",
    "robust_z_apply",
    "robust_z",
    "modz_groups",
    "weighted_group_sums",
]

MAD_SCALE = 1.4826  # the constant cmapM uses (not 1/Phi^-1(3/4) = 1.482602...)
TAS_NGENE = 978  # TAS divides by the size of the landmark space, as CMap does
# columns of the packed per-group statistics returned by modz_groups
STAT_FIELDS = (
    "distil_nsample",
    "distil_cc_q75",
    "distil_cc_max",
    "distil_cc_median",
    "distil_ss_ngene",
    "distil_tas",
)


def check_finite(x: np.ndarray, ids=None) -> None:
    """Raise InputError if ``x`` holds NaN or infinity (naming a signature when known)."""
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        who = f"signature {ids[row]!r}" if ids is not None else f"row {row}"
        raise InputError(
            f"expr has {int(bad.sum())} NaN or infinite value(s) ({who} and maybe others); "
            "L1000 level processing needs finite values: drop or impute them first"
        )


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks within each row, ties sharing their average rank (float64).

    Equal to ``scipy.stats.rankdata(x, axis=1, method="average")`` for finite input, but
    vectorized over rows (scipy loops over them in Python, ~30x slower on 978 genes).
    """
    x = np.asarray(x)
    n, m = x.shape
    order = np.argsort(x, axis=1)
    s = np.take_along_axis(x, order, axis=1)
    ranks = np.empty((n, m), dtype=np.float64)
    ranks[np.arange(n)[:, None], order] = np.arange(1.0, m + 1.0)
    tied = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
    if tied.size:  # rare for real scores, except values clipped at +-10
        ranks[tied] = _tied_ranks(x[tied])
    return ranks


def _tied_ranks(x: np.ndarray) -> np.ndarray:
    n, m = x.shape
    order = np.argsort(x, axis=1)
    s = np.take_along_axis(x, order, axis=1)
    new = np.ones((n, m), dtype=bool)  # True where a run of equal values starts
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    flat = new.ravel()
    run = np.cumsum(flat) - 1
    start = np.tile(np.arange(m, dtype=np.float64), n)[flat]
    avg = start + (np.bincount(run) - 1) / 2.0 + 1.0
    ranks = np.empty((n, m), dtype=np.float64)
    np.put_along_axis(ranks, order, avg[run].reshape(n, m), axis=1)
    return ranks


# -- quantile normalization -------------------------------------------------------------


def quantile_target_rows(x: np.ndarray) -> np.ndarray:
    """Each row sorted ascending (float64): the rows whose column medians are the target."""
    return np.sort(np.asarray(x, dtype=np.float64), axis=1)


def quantile_apply(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Give each value the target at its average (tie-aware) rank, interpolating halves."""
    ranks = average_ranks(x)
    return np.interp(ranks - 1.0, np.arange(target.shape[0]), target).astype(np.float32)


def quantile_normalize(x: np.ndarray) -> np.ndarray:
    """QNORM of one population: target = median over rows of the row-sorted matrix."""
    target = np.median(quantile_target_rows(x), axis=0)
    return quantile_apply(x, target)


# -- robust z ---------------------------------------------------------------------------


def robust_center_scale(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene median and (unscaled) median absolute deviation over the rows of ``ref``."""
    ref = np.asarray(ref, dtype=np.float64)
    med = np.median(ref, axis=0)
    mad = np.median(np.abs(ref - med), axis=0)
    return med, mad


def robust_z_apply(x, med, mad, mad_floor: float) -> np.ndarray:
    """z = (x - median) / (1.4826 * max(MAD, floor)); the floor applies to the raw MAD."""
    scale = MAD_SCALE * np.maximum(mad, mad_floor)
    return ((np.asarray(x, dtype=np.float64) - med) / scale).astype(np.float32)


def robust_z(x: np.ndarray, *, reference=None, mad_floor: float = 0.1) -> np.ndarray:
    """Robust z of one plate; ``reference`` (boolean rows) picks the control wells (ZSVC)."""
    ref = x if reference is None else np.asarray(x)[np.asarray(reference, dtype=bool)]
    med, mad = robust_center_scale(ref)
    return robust_z_apply(x, med, mad, mad_floor)


# -- MODZ -------------------------------------------------------------------------------


def _standardized_ranks(z_lm: np.ndarray) -> np.ndarray:
    """Rows of average ranks, centred and scaled to unit norm: their dot product is Spearman."""
    r = average_ranks(z_lm)
    r -= r.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(r, axis=1, keepdims=True)
    # a constant replicate has no rank order; correlation 0 rather than NaN (weight floors)
    return np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)


def modz_groups(
    z: np.ndarray,
    sizes: np.ndarray,
    landmarks: np.ndarray | slice,
    *,
    clip: float = 10.0,
    weight_floor: float = 0.01,
    columns: np.ndarray | slice | None = slice(None),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MODZ consensus of consecutive replicate groups.

    Parameters
    ----------
    z : (n_rows, n_gene) array
        Level 4 rows; group g is the next ``sizes[g]`` rows.
    sizes : (n_groups,) int array
        Replicate counts, in row order (every size >= 1).
    landmarks : index of the landmark columns of ``z`` (Spearman weights, ss_ngene).
    columns : which columns of ``z`` get a consensus (``None``: none, to get only the
        weights and statistics).

    Returns
    -------
    modz : (n_groups, n_columns) float32
    weights : (n_rows,) float64, each group's normalized replicate weights
    stats : (n_groups, len(STAT_FIELDS)) float64, NaN where undefined (one replicate)
    """
    z = np.clip(np.asarray(z, dtype=np.float64), -clip, clip)
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    z_lm = z[:, landmarks]
    ranks = _standardized_ranks(z_lm)
    zc = None if columns is None else z[:, columns]
    n_out = 0 if zc is None else zc.shape[1]
    modz = np.empty((len(sizes), n_out), dtype=np.float32)
    weights = np.empty(z.shape[0], dtype=np.float64)
    stats = np.full((len(sizes), len(STAT_FIELDS)), np.nan)
    stats[:, 0] = sizes
    # groups of equal size are handled together: one batched matmul instead of a loop
    for k in np.unique(sizes):
        sel = np.flatnonzero(sizes == k)
        rows = starts[sel, None] + np.arange(k)  # (G, k)
        if k == 1:
            w = np.ones((len(sel), 1))
        else:
            r = ranks[rows]  # (G, k, L)
            cc = np.einsum("gkl,gjl->gkj", r, r)  # Spearman between the replicates of each group
            iu = np.triu_indices(k, 1)
            pairs = np.clip(cc[:, iu[0], iu[1]], 0.0, None)
            stats[sel, 1] = np.percentile(pairs, 75, axis=1, method="hazen")
            stats[sel, 2] = pairs.max(axis=1)
            stats[sel, 3] = np.median(pairs, axis=1)
            cc[:, np.arange(k), np.arange(k)] = 0.0
            w = 0.5 * np.clip(cc, 0.0, None).sum(axis=2)
            w = np.maximum(w, weight_floor)
            w /= np.abs(w).sum(axis=1, keepdims=True)
        weights[rows] = w
        modz_lm = np.einsum("gk,gkl->gl", w, z_lm[rows])
        stats[sel, 4] = (np.abs(modz_lm) * np.sqrt(k) >= 2.0).sum(axis=1)
        if n_out:
            modz[sel] = np.einsum("gk,gkn->gn", w, zc[rows]).astype(np.float32)
    q75 = np.clip(stats[:, 1], 0.0, 1.0)  # NaN (one replicate) stays NaN: TAS is missing
    stats[:, 5] = np.sqrt(np.maximum(stats[:, 4], 0.001) * np.maximum(q75, 0.001) / TAS_NGENE)
    return modz, weights, stats


def weighted_group_sums(z: np.ndarray, sizes, weights, *, clip: float = 10.0) -> np.ndarray:
    """MODZ from known replicate weights: per group, sum of weight * clipped z (float32)."""
    z = np.clip(np.asarray(z, dtype=np.float64), -clip, clip) * np.asarray(weights)[:, None]
    starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    return np.add.reduceat(z, starts, axis=0).astype(np.float32)
