"""Maximum-quantile summaries: signatures → (pert, cell) → pert → PCL (ALGORITHMS.md §7)."""

from __future__ import annotations

import numpy as np

from cmapdask.errors import InputError

__all__ = ["maxq", "aggregate_maxq", "pcl_members"]


def _hazen(sorted_vals: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    # MATLAB prctile == numpy "hazen": position n*q + 0.5 (1-based), clamped, interpolated
    pos = np.clip(n * q + 0.5, 1, n) - 1
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = pos - lo
    take = lambda k: np.take_along_axis(sorted_vals, k[..., None], axis=-1)[..., 0]  # noqa: E731
    return take(lo) * (1 - f) + take(hi) * f


def maxq(x, axis: int = -1) -> np.ndarray:
    """The 67th or the 33rd percentile, whichever is larger in magnitude (ties: 33rd).

    Examples
    --------
    >>> round(float(maxq(np.array([1.0, 2.0, 3.0]))), 6)
    2.51
    >>> round(float(maxq(np.array([-3.0, -2.0, 1.0]))), 6)
    -2.51
    """
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    s = np.sort(x, axis=-1)  # NaN sorts last; count only the values
    n = np.maximum((~np.isnan(x)).sum(axis=-1), 1)
    p_lo, p_hi = _hazen(s, n, 0.33), _hazen(s, n, 0.67)
    out = np.where(np.abs(p_lo) < np.abs(p_hi), p_hi, p_lo)
    return np.where((~np.isnan(x)).any(axis=-1), out, np.nan)


def aggregate_maxq(scores: np.ndarray, labels, *, min_members: int = 1):
    """maxq of ``scores`` (``(query, item)``) over the items sharing each label.

    Parameters
    ----------
    scores : numpy.ndarray ``(query, item)``
    labels : array-like ``(item,)`` of hashable labels; ``None`` items are left out.
    min_members : int
        Labels with fewer items are dropped (PCLs need 2).

    Returns
    -------
    (unique labels, numpy.ndarray ``(query, label)``)

    Notes
    -----
    Holds the input and one gathered copy; groups of equal size are summarised together,
    so the cost is a sort per distinct group size, not a Python loop per label.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=object)
    if scores.ndim != 2 or labels.shape != (scores.shape[1],):
        raise InputError(f"labels {labels.shape} do not match scores {scores.shape}")
    keep = np.array([lab is not None for lab in labels], dtype=bool)
    uniq, inv = np.unique(labels[keep].astype(str), return_inverse=True)
    items = np.flatnonzero(keep)
    order = np.argsort(inv, kind="stable")
    counts = np.bincount(inv, minlength=uniq.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((scores.shape[0], uniq.size), np.nan)
    for k in np.unique(counts):
        gs = np.flatnonzero(counts == k)
        idx = items[order[starts[gs][:, None] + np.arange(k)]]  # (n_groups_k, k)
        out[:, gs] = maxq(scores[:, idx], axis=-1)
    sel = counts >= min_members
    return uniq[sel].astype(object), out[:, sel]


def pcl_members(pcls: dict[str, list[str]], pert_ids) -> dict[str, np.ndarray]:
    """Indices into ``pert_ids`` of each PCL's members that are present."""
    pos: dict[str, list[int]] = {}
    for i, p in enumerate(pert_ids):
        pos.setdefault(str(p), []).append(i)
    return {name: np.array(sorted(i for m in set(members) for i in pos.get(m, [])), dtype=int)
            for name, members in pcls.items()}
