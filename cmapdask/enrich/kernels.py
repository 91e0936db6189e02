"""numpy kernels of ranked-list enrichment: running sums, KS statistics, nulls, p-values.

The maths of one block of lists (:func:`_enrich_block`), with no dask or xarray; the dask
graph and labels are in :mod:`cmapdask.enrich.ranked`. Benjamini-Hochberg is the one in
:mod:`cmapdask.connectivity.fdr`.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from cmapdask.connectivity.fdr import fdr_bh
from cmapdask.errors import InputError

__all__ = ["FIELDS", "bh", "running_sum", "ks_statistics"]

FIELDS = (
    "n_hits",
    "es",
    "es_top",
    "es_bottom",
    "p_ks_top",
    "p_ks_bottom",
    "k_top",
    "k_bottom",
    "p_fisher_top",
    "p_fisher_bottom",
    "q_ks_top",
    "q_ks_bottom",
    "q_fisher_top",
    "q_fisher_bottom",
)
_P_FIELDS = ("p_ks_top", "p_ks_bottom", "p_fisher_top", "p_fisher_bottom")
_EPS = 1e-12  # float tolerance when comparing a statistic with its null


def bh(p) -> np.ndarray:
    """Benjamini-Hochberg q-values along the last axis; NaN stays NaN and is not counted.

    Each row is :func:`cmapdask.connectivity.fdr.fdr_bh` (the project's one BH).

    Examples
    --------
    >>> bh([0.01, 0.04, 0.03, np.nan]).round(3).tolist()
    [0.03, 0.04, 0.04, nan]
    """
    p = np.asarray(p, dtype=float)
    flat = p.reshape(-1, p.shape[-1]) if p.ndim else p.reshape(1, 1)
    out = np.stack([fdr_bh(row) for row in flat]) if flat.shape[0] else flat.copy()
    return out.reshape(p.shape)


def running_sum(positions, n: int, weights=None) -> np.ndarray:
    """The whole running-sum walk of one set in a list of ``n`` items (for plots and checks).

    Parameters
    ----------
    positions
        0-based positions of the set's items in the ranked list (any order, distinct).
    weights
        Hit weights per position (same order), default 1.

    Returns
    -------
    numpy.ndarray
        ``n + 1`` values: 0, then the sum after each item.
    """
    pos = np.asarray(positions, dtype=np.int64)
    g = pos.size
    if g == 0 or pos.min() < 0 or pos.max() >= n or np.unique(pos).size != g:
        raise InputError(f"running_sum: need distinct positions in 0..{n - 1}")
    step = np.full(n, -1.0 / (n - g) if n > g else 0.0)
    w = np.ones(g) if weights is None else np.abs(np.asarray(weights, dtype=float))
    if w.sum() == 0:
        w = np.ones(g)
    step[pos] = w / w.sum()
    return np.concatenate([[0.0], np.cumsum(step)])


def ks_statistics(pos, n, g, weights=None, starts=None):
    """``(es_top, es_bottom)`` of sets given their hits' sorted positions.

    Parameters
    ----------
    pos : numpy.ndarray
        ``(B, G)`` sorted 0-based positions (one set per row, all of size G), or, with
        ``starts``, a flat array of the hits of several sets one after another.
    n : int
        List length.
    g : int or numpy.ndarray
        Set size(s); per set when ``starts`` is given.
    weights : numpy.ndarray, optional
        Hit weights, shaped like ``pos`` (default 1).
    starts : numpy.ndarray, optional
        Offset of each set in the flat ``pos`` (sets must be non-empty).

    Notes
    -----
    O(total hits) time and memory: between hits the walk only falls, so its extremes are
    just after (top) or just before (bottom) a hit.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if starts is None:
        b, gg = pos.shape
        w = np.ones_like(pos) if weights is None else np.asarray(weights, dtype=np.float64)
        tot = w.sum(axis=1, keepdims=True)
        w = np.where(tot > 0, w, 1.0)
        tot = w.sum(axis=1, keepdims=True)
        cw = np.cumsum(w, axis=1) / tot
        miss = (pos - np.arange(gg)) / (n - gg) if n > gg else np.zeros_like(pos)
        a = cw - miss
        bb = a - w / tot
        return np.maximum(0.0, a.max(axis=1)), np.maximum(0.0, -bb.min(axis=1))
    g = np.asarray(g, dtype=np.int64)
    seg = np.repeat(np.arange(g.size), g)
    j = np.arange(pos.size) - np.repeat(starts, g)
    w = np.ones_like(pos) if weights is None else np.asarray(weights, dtype=np.float64)
    tot = np.add.reduceat(w, starts)
    w = np.where(tot[seg] > 0, w, 1.0)
    tot = np.add.reduceat(w, starts)
    csum = np.cumsum(w)
    before = np.concatenate([[0.0], csum])[starts]
    cw = (csum - before[seg]) / tot[seg]
    nm = (n - g).astype(np.float64)
    miss = np.where(nm[seg] > 0, (pos - j) / np.where(nm[seg] > 0, nm[seg], 1.0), 0.0)
    a = cw - miss
    bb = a - w / tot[seg]
    return (
        np.maximum(0.0, np.maximum.reduceat(a, starts)),
        np.maximum(0.0, -np.minimum.reduceat(bb, starts)),
    )


def _random_subsets(rng: np.random.Generator, n: int, g: int, b: int) -> np.ndarray:
    """``(b, g)`` sorted positions of ``b`` random g-subsets of ``range(n)``."""
    if b * n <= 20_000_000 or 2 * g > n:
        return np.sort(np.argsort(rng.random((b, n)), axis=1)[:, :g], axis=1)
    out = np.sort(rng.integers(0, n, (b, g)), axis=1)
    while True:  # rare when 2g <= n: redraw the rows with a repeated position
        bad = (np.diff(out, axis=1) == 0).any(axis=1)
        if not bad.any():
            return out
        out[bad] = np.sort(rng.integers(0, n, (int(bad.sum()), g)), axis=1)


def _pvalue(obs: np.ndarray, null_sorted: np.ndarray) -> np.ndarray:
    """(1 + #null >= obs) / (1 + B); the +1 keeps p > 0 (Phipson & Smyth 2010)."""
    ge = null_sorted.size - np.searchsorted(null_sorted, obs - _EPS, side="left")
    return (1.0 + ge) / (1.0 + null_sorted.size)


def _analytic_p(d: np.ndarray, n: int, g: np.ndarray) -> np.ndarray:
    # one-sided two-sample Kolmogorov-Smirnov, asymptotic: P(D+ >= d) ~ exp(-2 d^2 m)
    m = g * (n - g) / n
    return np.where(d > 0, np.minimum(1.0, np.exp(-2.0 * d * d * m)), 1.0)


def _group_null(rng, pos_by_group, ptr, m, permutations, n, nt, w):
    """KS and top/bottom-N counts of ``permutations`` random sets of ``m`` groups (all the
    items of each drawn group): ``(es_top, es_bottom, k_top, k_bottom)`` arrays."""
    n_groups = ptr.size - 1
    draws = _random_subsets(rng, n_groups, m, permutations)  # (B, m) group indices
    size = np.diff(ptr)[draws]  # items per drawn group
    tot = size.sum(axis=1)
    draw_id = np.repeat(np.arange(permutations), tot)
    starts_g = np.repeat(ptr[:-1][draws].ravel(), size.ravel())
    within = np.arange(starts_g.size) - np.repeat(
        np.cumsum(size.ravel()) - size.ravel(), size.ravel()
    )
    pos = pos_by_group[starts_g + within]
    o = np.lexsort((pos, draw_id))
    pos, draw_id = pos[o], draw_id[o]
    starts = np.concatenate([[0], np.cumsum(tot)[:-1]])
    top, bot = ks_statistics(pos, n, tot, None if w is None else w[pos], starts)
    kt = np.bincount(draw_id[pos < nt], minlength=permutations)
    kb = np.bincount(draw_id[pos >= n - nt], minlength=permutations)
    return top, bot, kt, kb


def _count_pvalue(obs, null_sorted):
    """(1 + #null >= obs) / (1 + B) for integer counts."""
    ge = null_sorted.size - np.searchsorted(null_sorted, obs, side="left")
    return (1.0 + ge) / (1.0 + null_sorted.size)


def _enrich_block(
    scores,
    item_idx,
    set_idx,
    n_sets,
    list_labels,
    item_labels,
    *,
    offset,
    n_top,
    permutations,
    pvalue,
    weight,
    seed,
    groups=None,
):
    """numpy kernel: ``(L, n_sets, len(FIELDS))`` for a block of lists.

    ``groups``: per item the code of its label (``-1``: none) for the group null, or
    ``None`` for random item sets.
    """
    L, N = scores.shape
    out = np.full((L, n_sets, len(FIELDS)), np.nan)
    nulls: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    F = {f: i for i, f in enumerate(FIELDS)}
    for r in range(L):
        s = np.asarray(scores[r], dtype=np.float64)
        ok = np.isfinite(s)
        if list_labels is not None and list_labels[r] is not None:
            ok &= item_labels != list_labels[r]
        n = int(ok.sum())
        out[r, :, F["n_hits"]] = 0
        if n == 0:
            continue
        keep = np.flatnonzero(ok)
        order = keep[np.argsort(-s[keep], kind="stable")]  # rank 1 = highest, ties by index
        posmap = np.full(N, -1, np.int64)
        posmap[order] = np.arange(n)
        p = posmap[item_idx]
        hit = p >= 0
        hp, hs = p[hit], set_idx[hit]
        o = np.lexsort((hp, hs))
        hp, hs = hp[o], hs[o]
        g_all = np.bincount(hs, minlength=n_sets)
        out[r, :, F["n_hits"]] = g_all
        present = np.flatnonzero(g_all)
        if present.size == 0:
            continue
        g = g_all[present]
        starts = np.concatenate([[0], np.cumsum(g)[:-1]])
        w = np.abs(s[order])
        hw = w[hp] if weight == "weighted" else None
        top, bot = ks_statistics(hp, n, g, hw, starts)
        out[r, present, F["es_top"]] = top
        out[r, present, F["es_bottom"]] = bot
        out[r, present, F["es"]] = np.where(top >= bot, top, -bot)
        # Fisher on the first / last n_top items: a hypergeometric upper tail
        nt = min(n_top, n)
        kt = np.bincount(hs[hp < nt], minlength=n_sets)[present]
        kb = np.bincount(hs[hp >= n - nt], minlength=n_sets)[present]
        out[r, present, F["k_top"]] = kt
        out[r, present, F["k_bottom"]] = kb
        if groups is not None and pvalue == "permutation":
            # random sets of as many labels (all their items), drawn from this list's labels
            gi = groups[order]
            lab_ok = gi >= 0
            lab_pos = np.flatnonzero(lab_ok)
            go = np.lexsort((lab_pos, gi[lab_ok]))
            pos_by_group = lab_pos[go]
            gsorted = gi[lab_ok][go]
            ptr = np.concatenate([[0], np.flatnonzero(np.diff(gsorted)) + 1, [gsorted.size]])
            hit_groups = groups[order[hp]]
            m_s = np.array([np.unique(hit_groups[hs == si]).size for si in present])
            wts = w if weight == "weighted" else None
            for mm in np.unique(m_s):
                sel = m_s == mm
                rng = np.random.default_rng([seed, offset + r, int(mm), 1])
                nt_, nb_, kt_, kb_ = _group_null(
                    rng, pos_by_group, ptr, int(mm), permutations, n, nt, wts
                )
                out[r, present[sel], F["p_ks_top"]] = _pvalue(top[sel], np.sort(nt_))
                out[r, present[sel], F["p_ks_bottom"]] = _pvalue(bot[sel], np.sort(nb_))
                out[r, present[sel], F["p_fisher_top"]] = _count_pvalue(kt[sel], np.sort(kt_))
                out[r, present[sel], F["p_fisher_bottom"]] = _count_pvalue(kb[sel], np.sort(kb_))
            continue
        out[r, present, F["p_fisher_top"]] = scipy.stats.hypergeom.sf(kt - 1, n, g, nt)
        out[r, present, F["p_fisher_bottom"]] = scipy.stats.hypergeom.sf(kb - 1, n, g, nt)
        if pvalue == "analytic":
            out[r, present, F["p_ks_top"]] = _analytic_p(top, n, g)
            out[r, present, F["p_ks_bottom"]] = _analytic_p(bot, n, g)
            continue
        for gg in np.unique(g):
            sel = g == gg
            if weight == "weighted":  # the null depends on this list's weights
                rng = np.random.default_rng([seed, offset + r, int(gg)])
                rp = _random_subsets(rng, n, int(gg), permutations)
                nt_, nb_ = ks_statistics(rp, n, int(gg), w[rp])
                null = (np.sort(nt_), np.sort(nb_))
            else:  # depends only on (n, G): shared by every list and chunk layout
                key = (n, int(gg))
                if key not in nulls:
                    rng = np.random.default_rng([seed, n, int(gg)])
                    nt_, nb_ = ks_statistics(
                        _random_subsets(rng, n, int(gg), permutations), n, int(gg)
                    )
                    nulls[key] = (np.sort(nt_), np.sort(nb_))
                null = nulls[key]
            out[r, present[sel], F["p_ks_top"]] = _pvalue(top[sel], null[0])
            out[r, present[sel], F["p_ks_bottom"]] = _pvalue(bot[sel], null[1])
    for f in _P_FIELDS:
        out[:, :, F["q" + f[1:]]] = bh(out[:, :, F[f]])
    return out
