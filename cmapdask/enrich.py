"""MoA/PCL enrichment: ranked lists, clusters, MoA recall and candidate PCLs.

Four questions, one module:

- :func:`enrich_ranked`: for each ranked list (a query's τ over signatures, a compound's
  similarity to every other compound), is each MoA/PCL set enriched at the top or at the
  bottom? Running-sum (KS/GSEA) statistics with permutation p-values (or an analytic
  approximation) and a one-sided Fisher test on the top/bottom N, then Benjamini-Hochberg
  over the sets of each list. Where a perturbagen has several items in a list (its
  signatures), random sets are drawn as whole perturbagens (the group null). One dask
  task per block of lists. :func:`read_ranked_lists` opens a query result (CLUE's result
  folder, one of its GCTx matrices, or Zarr) as lists.
- :func:`cluster_enrichment`: hypergeometric over-representation of each set in each
  cluster against a background, BH over all (cluster, set) pairs.
- :func:`moa_recall_approx`: an *estimate* of the MoA recall AUROC from top-k/bottom-k
  neighbour lists, with bounds (``auroc_min``, ``auroc_max``); the exact recall over every
  pair is :func:`cmapdask.similarity.recall.moa_recall` (``cmapdask.moa_recall``).
- :func:`candidate_pcls`: clusters with high internal connectivity and a shared
  annotation, scored; :func:`write_pcl_gmt` writes them as a GMT file.

The running sum (ALGORITHMS.md §2, unweighted or with hit weight ``|score|``) over a list
of n items of which G are in the set, at positions ``p_1 < ... < p_G`` (0-based), is
``A_j = (w_1 + ... + w_j) / W - (p_j - j + 1) / (n - G)`` just after hit j and
``B_j = A_j - w_j / W`` just before. ``es_top = max(0, max_j A_j)`` (enrichment among the
first items) and ``es_bottom = max(0, -min_j B_j)`` (among the last items); ``es`` is the
larger of the two in magnitude with its sign, which is the signed KS enrichment score of
:mod:`cmapdask.connectivity.es`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.stats
import xarray as xr

from cmapdask.annotations import membership
from cmapdask.errors import InputError

__all__ = [
    "running_sum",
    "ks_statistics",
    "enrich_ranked",
    "enrichment_table",
    "read_ranked_lists",
    "cluster_enrichment",
    "moa_recall_approx",
    "roc_curve",
    "candidate_pcls",
    "write_pcl_gmt",
    "bh",
    "FIELDS",
]

PValue = Literal["permutation", "analytic"]
Weight = Literal["unweighted", "weighted"]
Exclude = Literal["self", "none"]
Unseen = Literal["midpoint", "exclude"]
Null = Literal["auto", "items", "groups"]

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


# ----------------------------------------------------------------------------- maths


def bh(p) -> np.ndarray:
    """Benjamini-Hochberg q-values along the last axis; NaN stays NaN and is not counted.

    Examples
    --------
    >>> bh([0.01, 0.04, 0.03, np.nan]).round(3).tolist()
    [0.03, 0.04, 0.04, nan]
    """
    p = np.asarray(p, dtype=float)
    flat = p.reshape(-1, p.shape[-1]) if p.ndim else p.reshape(1, 1)
    out = np.full(flat.shape, np.nan)
    for r in range(flat.shape[0]):
        ok = ~np.isnan(flat[r])
        if ok.any():
            out[r, ok] = scipy.stats.false_discovery_control(flat[r, ok], method="bh")
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


# ----------------------------------------------------------------------------- ranked lists


def _labels(values) -> np.ndarray:
    return np.array(
        [
            None if v is None or (isinstance(v, float) and v != v) else str(v)
            for v in np.asarray(values, dtype=object).tolist()
        ],
        dtype=object,
    )


def enrich_ranked(
    scores: xr.DataArray,
    sets: Mapping[str, Sequence[str]],
    *,
    item_field: str | None = None,
    n_top: int = 100,
    permutations: int = 1000,
    pvalue: PValue = "permutation",
    weight: Weight = "unweighted",
    exclude: Exclude = "self",
    null: Null = "auto",
    seed: int = 0,
) -> xr.Dataset:
    """Enrichment of annotation sets at the top and bottom of ranked lists (lazy).

    Parameters
    ----------
    scores
        2-D, dims ``(list, item)`` whatever their names: each row is one ranked list,
        highest score first (a query result's ``ps``/``ncs`` with dims
        ``("query", "sig")``, a ``pert_summary`` matrix ``("pert", "pert_ref")``).
        NaN items are left out of that list.
    sets
        ``{set name: member ids}`` (MoAs, targets, PCLs); see :mod:`cmapdask.annotations`.
    item_field
        Coordinate along the item dim whose values are matched with set members
        (``"pert_id"`` for signatures); default the item ids themselves.
    n_top
        Items in the "top N" and "bottom N" of the Fisher test.
    permutations
        Random sets per set size for the permutation p-values (smallest p is
        ``1 / (permutations + 1)``).
    pvalue
        ``"permutation"``: ``(1 + #{null >= observed}) / (1 + permutations)`` against random
        sets of the same size drawn from the same list. ``"analytic"``: the asymptotic
        one-sided two-sample Kolmogorov-Smirnov tail ``exp(-2 d^2 G (n - G) / n)``; only
        for ``weight="unweighted"``; conservative for small sets.
    weight
        ``"unweighted"``: every hit weighs 1 (classic KS). ``"weighted"``: hit weight
        ``|score|`` (GSEA exponent 1, as in WTCS).
    exclude
        ``"self"``: in a list whose id (the list coordinate, or its ``item_field``
        coordinate) equals an item's label, that item is left out (a compound is not its
        own neighbour). ``"none"``: keep every item.
    null
        What a random set is, for the permutation p-values. ``"items"``: as many random
        items as the set has hits (right when items are independent: one per
        perturbagen, as in a ``pert_summary`` matrix). ``"groups"``: as many random
        labels (``item_field`` values present in the list) as the set has, with all of
        their items: the signatures of one compound move together in a ranked list, so
        random items would make a set of compounds look enriched far too often
        (measured: 41-46 % of p below 0.05 with shuffled annotations on a query result,
        instead of 5 %). The top/bottom-N p-values are then permutation p-values of the
        hit counts under the same null, not the hypergeometric tail. ``"auto"``:
        ``"groups"`` when some label has several items, else ``"items"``.
    seed
        Seed of the permutations; unweighted nulls depend only on (list length, set size,
        seed), so results do not depend on the chunking.

    Returns
    -------
    xarray.Dataset
        Dims ``(list, "set")``, one float64 variable per name in :data:`FIELDS`: hits in
        the list (``n_hits``), ``es`` (signed), ``es_top``/``es_bottom``, their p-values,
        the Fisher counts ``k_top``/``k_bottom`` and p-values, and BH q-values (over the
        sets of each list, per statistic and tail). NaN where a set has no item in a list.

    Notes
    -----
    One task per chunk of lists; each holds its lists (``L x n`` scores), the item x set
    incidence (one entry per membership) and, per distinct set size G, a null of
    ``permutations x G`` positions (unweighted nulls are shared within a task). Time per
    list ``O(n log n + hits + permutations x G)``. Scales linearly in the number of lists.
    """
    if pvalue not in ("permutation", "analytic"):
        raise InputError(f"pvalue must be 'permutation' or 'analytic', not {pvalue!r}")
    if weight not in ("unweighted", "weighted"):
        raise InputError(f"weight must be 'unweighted' or 'weighted', not {weight!r}")
    if exclude not in ("self", "none"):
        raise InputError(f"exclude must be 'self' or 'none', not {exclude!r}")
    if pvalue == "analytic" and weight == "weighted":
        raise InputError("the analytic p-value is for weight='unweighted' only; use permutations")
    if null not in ("auto", "items", "groups"):
        raise InputError(f"null must be 'auto', 'items' or 'groups', not {null!r}")
    if not isinstance(scores, xr.DataArray) or scores.ndim != 2:
        raise InputError("enrich_ranked: scores must be a 2-D xarray DataArray (list, item)")
    for name, v, lo in (("n_top", n_top, 1), ("permutations", permutations, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    ldim, idim = scores.dims
    if scores.sizes[idim] == 0 or scores.sizes[ldim] == 0:
        raise InputError("enrich_ranked: no lists or no items")
    if item_field is None:
        item_labels = _labels(scores[idim].values)
    elif item_field in scores.coords and scores[item_field].dims == (idim,):
        item_labels = _labels(scores[item_field].values)
    else:
        raise InputError(
            f"enrich_ranked: item_field {item_field!r} is not a coordinate along {idim!r}"
        )
    names, item_idx, set_idx = membership(sets, item_labels)
    if item_idx.size == 0:
        raise InputError("enrich_ranked: no item belongs to any annotation set (wrong item_field?)")
    codes = pd.factorize(pd.Series(item_labels, dtype=object))[0].astype(np.int64)
    repeated = bool(np.bincount(codes[codes >= 0]).max(initial=0) > 1)
    if null == "auto":
        null = "groups" if repeated else "items"
    if null == "groups" and pvalue == "analytic":
        raise InputError(
            "the analytic p-value assumes independent items (null='items'); "
            "use permutations for null='groups'"
        )
    groups = codes if null == "groups" else None
    list_labels = None
    if exclude == "self":
        src = scores[ldim].values
        if (
            item_field is not None
            and item_field in scores.coords
            and scores[item_field].dims == (ldim,)
        ):
            src = scores[item_field].values
        list_labels = _labels(src)
    data = scores.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(min(256, scores.shape[0]), -1))
    data = data.rechunk({1: -1})
    offsets = np.concatenate([[0], np.cumsum(data.chunks[0])[:-1]])
    n_sets = len(names)

    def block(x, block_info=None):
        i = block_info[0]["chunk-location"][0]
        lo, hi = block_info[0]["array-location"][0]
        lab = None if list_labels is None else list_labels[lo:hi]
        return _enrich_block(
            x,
            item_idx,
            set_idx,
            n_sets,
            lab,
            item_labels,
            offset=int(offsets[i]),
            n_top=int(n_top),
            permutations=int(permutations),
            pvalue=pvalue,
            weight=weight,
            seed=int(seed),
            groups=groups,
        )

    res = da.map_blocks(
        block,
        data,
        chunks=(data.chunks[0], (n_sets,), (len(FIELDS),)),
        new_axis=[2],
        dtype=np.float64,
        meta=np.empty((0, 0, 0)),
    )
    dims = (ldim, "set")
    out = xr.Dataset(
        {f: (dims, res[:, :, i]) for i, f in enumerate(FIELDS)},
        coords={
            ldim: scores[ldim].values,
            "set": np.array(names, dtype=object),
            "set_size": ("set", np.bincount(set_idx, minlength=n_sets)),
        },
    )
    from cmapdask import __version__

    out.attrs["cmapdask"] = {
        "method": "enrich_ranked",
        "package_version": __version__,
        "n_top": int(n_top),
        "permutations": int(permutations),
        "pvalue": pvalue,
        "weight": weight,
        "exclude": exclude,
        "null": null,
        "seed": int(seed),
        "item_field": item_field,
        "fdr": "Benjamini-Hochberg over the sets of each list, per statistic and tail",
    }
    return out


_RESULT_FILES = {
    "ps": "gutc/ps_sig",
    "ncs": "gutc/ns_sig",
    "cs": "gutc/cs_sig",
    "cs_up": "query/cs_up",
    "cs_dn": "query/cs_dn",
}


def read_ranked_lists(
    path, *, variable: str | None = None, storage_options: dict | None = None
) -> xr.DataArray:
    """Ranked lists of a connectivity query result, for :func:`enrich_ranked`.

    Parameters
    ----------
    path
        A query result: CLUE's result folder written by
        :func:`cmapdask.connectivity.write_result` (``cmapdask query --out``), one of its
        GCTx matrices, or a Zarr group holding a :func:`cmapdask.connectivity.query`
        result (``Dataset.to_zarr``). Local path or fsspec URL.
    variable
        ``"ps"`` (τ, the default: each query's signatures ranked by τ), ``"ncs"``,
        ``"cs"`` (WTCS), ``"cs_up"``, ``"cs_dn"``, or a summary level of the folder such as
        ``"ps_pert_summary"``, ``"ns_pert_cell"``, ``"ps_pcl_summary"``. Ignored for a
        single GCTx file. Default ``"ps"``; in a Zarr group the first of ``ps``,
        ``pert_summary`` (a :func:`cmapdask.similarity.pert_similarity` result), ``ncs``.

    Returns
    -------
    xarray.DataArray
        Dims ``("query", <items>)`` with ``<items>`` ``"sig"`` for signature-level
        matrices (signature metadata such as ``pert_id`` as coordinates) or the summary
        level's name; ``pert_id`` is a coordinate of signature, ``pert_cell`` and
        ``pert_summary`` items. Dask-backed.

    Notes
    -----
    Opens the file lazily: the matrix is read when the lists are computed, one block of
    queries per task (``4 x n_items`` bytes per query).
    """
    from cmapdask.io.atomic import join, url_to_fs
    from cmapdask.io.gctx import is_gctx, read_gctx

    fs, p = url_to_fs(path, storage_options)
    level = "sig"
    if fs.isdir(p) and fs.exists(p.rstrip("/") + "/matrices"):
        variable = variable or "ps"
        rel = _RESULT_FILES.get(variable)
        if rel is None:
            if not variable.startswith(("ps_", "ns_")):
                raise InputError(
                    f"{path}: unknown result variable {variable!r} (ps, ncs, cs, "
                    "cs_up, cs_dn, or a summary such as ps_pert_summary)"
                )
            rel, level = f"gutc/{variable}", variable[3:]
        gctx = join(str(path), "matrices", rel + ".gctx")
        if not fs.exists(url_to_fs(gctx, storage_options)[1]):
            raise InputError(f"{path}: the result folder has no {rel}.gctx")
    elif is_gctx(path, storage_options):
        gctx = str(path)
        stem = os.path.basename(str(path)).split(".")[0]
        if stem[:3] in ("ps_", "ns_") and not stem.endswith("_sig"):
            level = stem[3:]
    else:
        try:
            res = xr.open_zarr(path, consolidated=False, storage_options=storage_options)
        except Exception as e:  # not a Zarr group, missing path
            raise InputError(
                f"{path}: not a query result folder, GCTx or Zarr result: {str(e).splitlines()[0]}"
            ) from None
        if variable is None:
            variable = next((v for v in ("ps", "pert_summary", "ncs") if v in res), "ps")
        if variable not in res or res[variable].ndim != 2:
            raise InputError(f"{path}: no 2-D variable {variable!r}")
        return res[variable]
    ds = read_gctx(gctx, storage_options=storage_options)
    # CLUE's matrices: GCTx columns (our "sig") are the queries, rows ("gene") the items
    out = ds["expr"].rename({"sig": "query", "gene": level})
    keep = {k: c for k, c in out.coords.items() if c.dims == (level,) and k != level}
    out = out.reset_coords(drop=True).assign_coords(
        {k.removeprefix("gene_"): (level, c.values) for k, c in keep.items()}
    )
    if "pert_id" not in out.coords:  # summary rows: match sets by their perturbagen
        if f"{level}_pert_id" in out.coords:
            out = out.assign_coords(pert_id=(level, out[f"{level}_pert_id"].values))
        elif level == "pert_summary":
            out = out.assign_coords(pert_id=(level, np.asarray(out[level].values, dtype=object)))
    out.name = variable if gctx != str(path) else os.path.basename(str(path)).split(".")[0]
    out.attrs = {"cmapdask": {**ds.attrs.get("cmapdask", {}), "query_result": str(path)}}
    return out


def enrichment_table(result: xr.Dataset, *, max_q: float = 1.0) -> pd.DataFrame:
    """Long table of an :func:`enrich_ranked` result (computes it), one row per (list, set).

    Rows with a set absent from the list are dropped; ``max_q`` keeps rows whose smallest
    q-value is at most that.
    """
    ldim = next(d for d in result.dims if d != "set")
    df = result[list(FIELDS)].compute().to_dataframe().reset_index()
    df = df[df["n_hits"] > 0]
    qmin = df[[f"q{f[1:]}" for f in _P_FIELDS]].min(axis=1)
    df = df[qmin <= max_q].rename(columns={ldim: "list"})
    return df.sort_values(["list", "q_ks_top", "set"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- clusters


def cluster_enrichment(
    clusters,
    item_labels,
    sets: Mapping[str, Sequence[str]],
    *,
    background: Literal["annotated", "all"] = "annotated",
) -> pd.DataFrame:
    """Hypergeometric over-representation of each set in each cluster.

    Parameters
    ----------
    clusters
        Cluster label per item (negative integers or ``None``: unclustered, left out).
    item_labels
        Id per item matched with set members (``pert_id`` of each signature, or the
        perturbagen itself).
    sets
        ``{set name: member ids}``.
    background
        ``"annotated"``: items in at least one set (the usual MoA universe);
        ``"all"``: every clustered item.

    Returns
    -------
    pandas.DataFrame
        ``cluster, set, k, cluster_size, set_size, n_background, expected, fold, p, q``
        for every (cluster, set) pair with ``k >= 1``; ``p = P(X >= k)``, X
        hypergeometric; ``q`` is BH over all (cluster, set) pairs of the background
        (pairs with k = 0 have p = 1 and count in the correction). Sorted by p.

    Notes
    -----
    In memory, O(items + memberships); the counts are one ``bincount``. The
    hypergeometric treats items as independent draws: with several signatures per
    compound (which cluster together) the p-values of signature clusters are too small;
    cluster perturbagens (:func:`cmapdask.clustering.hierarchical_perts`) for calibrated
    ones.
    """
    cl = pd.Series(np.asarray(clusters, dtype=object))
    labels = _labels(item_labels)
    if len(cl) != labels.size:
        raise InputError(f"{len(cl)} cluster labels for {labels.size} items")
    if background not in ("annotated", "all"):
        raise InputError(f"background must be 'annotated' or 'all', not {background!r}")
    ok = cl.notna().to_numpy() & ~cl.isin([-1]).to_numpy()
    names, it, st = membership(sets, labels)
    annotated = np.zeros(labels.size, bool)
    annotated[it] = True
    bg = ok & (annotated if background == "annotated" else True)
    if not bg.any():
        raise InputError("cluster_enrichment: no clustered item is annotated")
    codes, uniq = pd.factorize(cl.where(bg, None), sort=True)
    m = int(bg.sum())
    n_cl, n_set = len(uniq), len(names)
    sel = bg[it]
    cnt = np.bincount(codes[it[sel]] * n_set + st[sel], minlength=n_cl * n_set).reshape(n_cl, n_set)
    size_c = np.bincount(codes[bg], minlength=n_cl)
    size_s = np.bincount(st[sel], minlength=n_set)
    p = scipy.stats.hypergeom.sf(cnt - 1, m, size_s[None, :], size_c[:, None])
    q = bh(p.ravel()).reshape(p.shape)
    ci, si = np.nonzero(cnt)
    expected = size_c[ci] * size_s[si] / m
    df = pd.DataFrame(
        {
            "cluster": np.asarray(uniq, dtype=object)[ci],
            "set": np.array(names, dtype=object)[si],
            "k": cnt[ci, si],
            "cluster_size": size_c[ci],
            "set_size": size_s[si],
            "n_background": m,
            "expected": expected,
            "fold": cnt[ci, si] / expected,
            "p": p[ci, si],
            "q": q[ci, si],
        }
    )
    return df.sort_values(["p", "cluster", "set"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- MoA recall


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
    from cmapdask import __version__

    prov = dict(neighbours.attrs.get("cmapdask", {}))
    out.attrs["cmapdask"] = {
        "method": "moa_recall_approx",
        "package_version": __version__,
        "estimate": "neighbour lists only; exact value within [auroc_min, auroc_max]",
        "k": int(k),
        "bins": int(bins),
        "unseen": unseen,
        "metric": prov.get("metric"),
        "space": prov.get("space"),
        "pairs": "ordered (query signature, listed or unlisted candidate)",
    }
    return out


def roc_curve(hist) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) from a ``(2, bins)`` recall histogram."""
    h = np.asarray(hist, dtype=float)
    neg, pos = h[0][::-1], h[1][::-1]
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), 1)])
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1)])
    return fpr, tpr


# ----------------------------------------------------------------------------- candidate PCLs


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
