"""Exact MoA recall (ALGORITHMS.md §13), computed in the blockwise similarity pass.

The question: does similarity put signatures of the same MoA closer than signatures of
different MoAs? Three layers, like the rest of :mod:`cmapdask.similarity`:

- numpy kernels of one block pair (:func:`pair_recall`): the float32 product of the valid
  signatures of two standardised blocks, turned into score histograms of same-MoA and
  different-MoA pairs (overall, per cell line, per MoA) and into exact rank counts of each
  same-MoA partner within its signature's row;
- the dask graph (:func:`recall_arrays`): one task per planned block pair
  (:func:`~cmapdask.similarity.plan.plan_blocks`), histograms summed in one tree, rank
  counts summed in one tree per row block, a final small task for the statistics. Never
  N x N: a task holds two blocks, one ``b x b`` product and its histograms;
- the labelled layer (:func:`moa_recall`): a Dataset of AUROCs per group (``all``, then
  each cell line) and the per-MoA table; :func:`recall_tables` turns it into pandas.

Definitions (§13). Pairs: every unordered pair of distinct pool signatures (self-similarity)
or every (query, reference) pair of two stores, a signature never paired with itself (same
id). A pair is positive when the MoA sets of the two signatures intersect. AUROC is the
Mann-Whitney statistic over positive and negative pairs divided by ``n_pos n_neg``, ties
counted half. Per cell line: pairs within that line. Per MoA ``m``: positive pairs are the
pairs whose two signatures both have ``m``; negative pairs those with at least one signature
of ``m`` whose MoA sets are disjoint (pairs sharing another MoA only are neither). The
percentile rank of a same-MoA pair ``(s, t)`` (ordered) is
``100 (#{u: S(s,u) < S(s,t)} + #{u: S(s,u) = S(s,t)} / 2) / (n_s - 1)`` over all valid
signatures ``u`` other than ``s`` and ``t``, annotated or not (``n_s``: valid signatures
other than ``s``; of the reference store for two stores); 100 means ``t`` is the most
similar; per MoA the median over its ordered same-MoA pairs.

Exactness. Rank counts and pair counts are exact (integer counts on the float32 scores the
similarity engine uses). AUROC comes from score histograms with ``bins`` equal-width bins
over ``[-1, 1]``: pairs in different bins are ordered correctly (the bin of a score is a
non-decreasing function of it), a positive and a negative pair in the same bin contribute
between 0 and 1 to the Mann-Whitney count and are counted 1/2. Hence
``|AUROC - reported| <= sum_b pos_b neg_b / (2 n_pos n_neg)``, which is computed and
reported as ``auroc_bound`` (of the order of the bin width times the overlap density).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from cmapdask.errors import InputError
from cmapdask.model.missing import labels
from cmapdask.similarity.api import Space
from cmapdask.similarity.engine import _add_layer, standardized_pair
from cmapdask.similarity.kernels import Metric
from cmapdask.similarity.plan import block_bounds, merge_tree

__all__ = [
    "RecallLabels",
    "recall_labels",
    "partner_pairs",
    "pair_recall",
    "recall_arrays",
    "recall_statistics",
    "moa_recall",
    "recall_tables",
]

_SENTINEL = np.int64(2**31 + 1)  # above every float32 key: never "below" nor "tied"
_ROW = np.int64(2**33)  # row offset of keys: rows sort apart, exactly


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class RecallLabels:
    """Labels of the rows and columns of a recall pass, as small integer arrays.

    Attributes
    ----------
    row_code, col_code
        Per signature its MoA combination (index into ``combo_moa``), -1 when unannotated.
    combo_moa
        ``(combos, moas)`` bool: the MoAs of each combination.
    share
        ``(combos, combos)`` bool: the two combinations have a MoA in common.
    row_cell, col_cell
        Cell line code per signature (-1: none).
    self_col
        Per row, the column that is the same signature (-1: none); never paired.
    moas, cells
        Names of the MoAs and of the cell lines.
    mode
        ``"self"`` (columns are the rows) or ``"query"`` (two stores).
    """

    row_code: np.ndarray
    col_code: np.ndarray
    combo_moa: np.ndarray
    share: np.ndarray
    row_cell: np.ndarray
    col_cell: np.ndarray
    self_col: np.ndarray
    moas: np.ndarray
    cells: np.ndarray
    mode: str

    @property
    def n_cells(self) -> int:
        return int(self.cells.size)

    @property
    def n_moas(self) -> int:
        return int(self.moas.size)


def _clean(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise InputError(f"moa_recall: {arr.size} {what} for {n} signatures")
    return labels(arr)  # the data model's missing values (-666 included), as the estimate


def recall_labels(row_moa, col_moa=None, *, row_cells=None, col_cells=None, self_col=None):
    """:class:`RecallLabels` from MoA strings (``|`` separates several; ``None``: none).

    ``col_moa=None`` is self-similarity; otherwise ``self_col`` (per row the column of the
    same signature, -1 for none) marks pairs that are never formed.
    """
    mode = "self" if col_moa is None else "query"
    row_moa = _clean(row_moa, len(row_moa), "MoA labels")
    col_moa = row_moa if col_moa is None else _clean(col_moa, len(col_moa), "MoA labels")
    keys = [
        "" if v is None else "|".join(sorted({p.strip() for p in v.split("|") if p.strip()}))
        for v in [*row_moa, *col_moa]
    ]
    uniq, code = np.unique(np.array(keys, dtype=object), return_inverse=True)
    code = np.where(np.array(keys, dtype=object) == "", -1, code).astype(np.int64)
    moas = sorted({p for u in uniq if u for p in u.split("|")})
    mpos = {m: i for i, m in enumerate(moas)}
    combo_moa = np.zeros((len(uniq), len(moas)), dtype=bool)
    for c, u in enumerate(uniq):
        for p in u.split("|") if u else []:
            combo_moa[c, mpos[p]] = True
    share = (combo_moa.astype(np.int64) @ combo_moa.T.astype(np.int64)) > 0
    n_rows = row_moa.size
    if row_cells is None and col_cells is None:
        row_cell = np.full(n_rows, -1, np.int64)
        col_cell = np.full(col_moa.size, -1, np.int64)
        cells = np.array([], dtype=object)
    else:
        rc = _clean(row_cells if row_cells is not None else [None] * n_rows, n_rows, "cell lines")
        if mode == "self":
            cc = rc
        else:
            cc = _clean(
                col_cells if col_cells is not None else [None] * col_moa.size,
                col_moa.size,
                "cell lines",
            )
        allc = pd.Series([*rc, *cc], dtype=object)
        cc_code, cells = pd.factorize(allc, sort=True)
        row_cell, col_cell = cc_code[:n_rows].astype(np.int64), cc_code[n_rows:].astype(np.int64)
        cells = np.asarray(cells, dtype=object)
    if mode == "self":
        self_col = np.arange(n_rows, dtype=np.int64)
    else:
        self_col = (
            np.full(n_rows, -1, np.int64)
            if self_col is None
            else np.asarray(self_col, dtype=np.int64)
        )
    return RecallLabels(
        row_code=code[:n_rows],
        col_code=code[n_rows:] if mode == "query" else code[:n_rows],
        combo_moa=combo_moa,
        share=share,
        row_cell=row_cell,
        col_cell=col_cell if mode == "query" else row_cell,
        self_col=self_col,
        moas=np.array(moas, dtype=object),
        cells=cells,
        mode=mode,
    )


def _partner_groups(lab: RecallLabels, lo: int, hi: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per MoA combination of the rows ``lo <= s < hi``: its rows and their partner columns.

    Partner columns: every annotated column sharing a MoA with the combination (ascending);
    the row itself is still among them.
    """
    rows = lo + np.flatnonzero(lab.row_code[lo:hi] >= 0).astype(np.int64)
    cols = np.flatnonzero(lab.col_code >= 0).astype(np.int64)
    rcode = lab.row_code[rows]
    return [(rows[rcode == c], cols[lab.share[c, lab.col_code[cols]]]) for c in np.unique(rcode)]


def partner_pairs(lab: RecallLabels, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Ordered same-MoA pairs ``(s, t)`` of the rows ``lo <= s < hi``.

    ``t`` runs over every annotated column sharing a MoA with ``s``, except ``s`` itself;
    validity is not looked at (invalid signatures are dropped at the end). Order: by MoA
    combination of ``s``, then ``s``, then ``t`` (every task rebuilds the same order).
    """
    groups = _partner_groups(lab, lo, hi)
    if not groups:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    s = np.concatenate([np.repeat(rc, tc.size) for rc, tc in groups])
    t = np.concatenate([np.tile(tc, rc.size) for rc, tc in groups])
    keep = t != lab.self_col[s]
    return s[keep], t[keep]


# ----------------------------------------------------------------------------- numpy kernels


def _keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving int64 keys of float32 values (equal keys iff equal values)."""
    i = np.ascontiguousarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _bin(s: np.ndarray, bins: int) -> np.ndarray:
    b = np.floor((s.astype(np.float64) + 1.0) * (bins / 2.0))
    return np.clip(b, 0, bins - 1).astype(np.int64)


def _rank_counts(S, row_ids, col_ids, col_lo, n_cols, ps, ts, pscore, self_col):
    """Below/tied counts of each partner score within its row of one block, ``(2, P)``.

    ``S`` holds rows ``row_ids`` (global) x valid columns ``col_ids`` (global, within
    ``[col_lo, col_lo + n_cols)``); ``ps``, ``ts``, ``pscore``: the pairs and their scores.
    The row's own column and the partner itself are not counted.
    """
    out = np.zeros((2, ps.size), np.int64)
    if ps.size == 0 or col_ids.size == 0 or row_ids.size == 0:
        return out
    # pairs of invalid rows are dropped at the end
    rpos_all = np.searchsorted(row_ids, ps)
    inpool = (rpos_all < row_ids.size) & (
        row_ids[np.minimum(rpos_all, max(row_ids.size - 1, 0))] == ps
    )
    if not inpool.all():
        sub = np.flatnonzero(inpool)
        out[:, sub] = _rank_counts(
            S, row_ids, col_ids, col_lo, n_cols, ps[sub], ts[sub], pscore[sub], self_col
        )
        return out
    need, inv = np.unique(ps, return_inverse=True)
    rpos = np.searchsorted(row_ids, need)
    K = _keys(S[rpos])  # (rows with partners, valid columns)
    own = self_col[need]
    hit = np.flatnonzero((own >= col_lo) & (own < col_lo + n_cols))
    if hit.size:
        cpos = np.searchsorted(col_ids, own[hit])
        found = (cpos < col_ids.size) & (col_ids[np.minimum(cpos, col_ids.size - 1)] == own[hit])
        K[hit[found], cpos[found]] = _SENTINEL
    n = K.shape[1]
    flat = np.sort((K + np.arange(need.size, dtype=np.int64)[:, None] * _ROW).ravel())
    q = _keys(pscore) + inv.astype(np.int64) * _ROW
    base = inv.astype(np.int64) * n
    # sorted queries: the binary searches then walk the sorted keys in order (cache-friendly)
    order = np.argsort(q)
    below, le = np.empty_like(q), np.empty_like(q)
    below[order] = np.searchsorted(flat, q[order], side="left")
    le[order] = np.searchsorted(flat, q[order], side="right")
    below -= base
    le -= base
    ties = le - below
    # the partner itself, when it is a pool column of this block
    inblk = np.flatnonzero((ts >= col_lo) & (ts < col_lo + n_cols))
    if inblk.size:
        cpos = np.searchsorted(col_ids, ts[inblk])
        ok = (cpos < col_ids.size) & (col_ids[np.minimum(cpos, col_ids.size - 1)] == ts[inblk])
        e, cpos = inblk[ok], cpos[ok]
        kt, kp = K[inv[e], cpos], _keys(pscore[e])
        below[e] -= kt < kp
        ties[e] -= kt == kp
    out[0], out[1] = below, ties
    return out


def _histograms(S, same, mask, rcell, ccell, rmoa, cmoa, n_cells, bins, moa_bins):
    """Group histograms ``(1 + cells, 2, bins)`` and MoA histograms ``(moas, 2, moa_bins)``."""
    n_moas = rmoa.shape[1]
    hist = np.zeros((1 + n_cells, 2, bins), np.int64)
    mhist = np.zeros((n_moas, 2, moa_bins), np.int64)
    if not mask.any():
        return hist, mhist
    b = _bin(S, bins)
    cls = same.astype(np.int64)
    idx = cls * bins + b
    hist[0] = np.bincount(idx[mask], minlength=2 * bins).reshape(2, bins)
    if n_cells:
        cm = mask & (rcell[:, None] == ccell[None, :]) & (rcell[:, None] >= 0)
        if cm.any():
            g = np.broadcast_to(rcell[:, None], S.shape)[cm] * (2 * bins) + idx[cm]
            hist[1:] = np.bincount(g, minlength=n_cells * 2 * bins).reshape(n_cells, 2, bins)
    if n_moas:
        mb = b if moa_bins == bins else _bin(S, moa_bins)
        diff = mask & ~same
        for m in np.flatnonzero(rmoa.any(axis=0) | cmoa.any(axis=0)):
            rin, cin = rmoa[:, m], cmoa[:, m]
            ri, ci = np.flatnonzero(rin), np.flatnonzero(cin)
            pos = mb[np.ix_(ri, ci)][mask[np.ix_(ri, ci)]]
            neg_r = mb[ri][diff[ri]]  # rows of m against every column
            rest = np.flatnonzero(~rin)
            sub = diff[np.ix_(rest, ci)]
            neg_c = mb[np.ix_(rest, ci)][sub]  # other rows against columns of m
            mhist[m, 1] = np.bincount(pos, minlength=moa_bins)
            mhist[m, 0] = np.bincount(neg_r, minlength=moa_bins) + np.bincount(
                neg_c, minlength=moa_bins
            )
    return hist, mhist


def pair_recall(
    sa,
    sb,
    pa,
    pb,
    lab: RecallLabels,
    *,
    a_lo: int,
    b_lo: int,
    diagonal: bool,
    both: bool,
    bins: int,
    moa_bins: int,
):
    """Recall statistics of one block pair: ``(hist, moa_hist, row counts, column counts)``.

    ``sa``, ``sb``: ``(z, valid)`` standardised blocks (rows ``a_lo...``, columns
    ``b_lo...``); ``pa``, ``pb``: partner scores of the rows of block a and of block b (in
    :func:`partner_pairs` order; ``pb`` only with ``both``). ``diagonal``: the block with
    itself (each unordered pair once, ``s < t``); ``both``: self-similarity off the
    diagonal, so the product also serves the rows of block b (transposed). Counts are
    ``(2, P)``: below and tied, for the pairs of each row block; ``None`` without ``both``.
    """
    za, va = sa
    zb, vb = sb
    na, nb = len(va), len(vb)
    ga = np.arange(a_lo, a_lo + na, dtype=np.int64)
    gb = np.arange(b_lo, b_lo + nb, dtype=np.int64)
    # valid rows x valid columns (float32): ranks are among every valid signature,
    # pairs (histograms) among the annotated ones
    vr, vc = ga[va], gb[vb]
    s_all = (za if vr.size == na else za[va]) @ (zb if vc.size == nb else zb[vb]).T
    ar, ac = lab.row_code[vr] >= 0, lab.col_code[vc] >= 0
    rows, cols = vr[ar], vc[ac]
    S = s_all if ar.all() and ac.all() else s_all[np.ix_(ar, ac)]
    mask = np.ones(S.shape, dtype=bool)
    if diagonal:
        mask &= rows[:, None] < cols[None, :]
    elif lab.mode == "query":
        mask &= lab.self_col[rows][:, None] != cols[None, :]
    rcode, ccode = lab.row_code[rows], lab.col_code[cols]
    same = lab.share[rcode[:, None], ccode[None, :]]
    hist, mhist = _histograms(
        S,
        same,
        mask,
        lab.row_cell[rows],
        lab.col_cell[cols],
        lab.combo_moa[rcode],
        lab.combo_moa[ccode],
        lab.n_cells,
        bins,
        moa_bins,
    )
    ps, ts = partner_pairs(lab, a_lo, a_lo + na)
    row_counts = _rank_counts(s_all, vr, vc, b_lo, nb, ps, ts, pa, lab.self_col)
    col_counts = None
    if both:
        ps, ts = partner_pairs(lab, b_lo, b_lo + nb)
        col_counts = _rank_counts(s_all.T, vc, vr, a_lo, na, ps, ts, pb, lab.self_col)
    return hist, mhist, row_counts, col_counts


def _partner_piece(sa, sb, lab, a_lo, b_lo):
    """Scores of block a's rows with their partners in block b: one product per combination."""
    za, zb, nb = sa[0], sb[0], len(sb[1])
    out = []
    for rc, tc in _partner_groups(lab, a_lo, a_lo + len(sa[1])):
        t0, t1 = np.searchsorted(tc, [b_lo, b_lo + nb])
        out.append(za[rc - a_lo] @ zb[tc[t0:t1] - b_lo].T)
    return out


def _gather_partners(pieces, lab, a_lo, a_n):
    """Partner scores of a row block in :func:`partner_pairs` order (float32)."""
    groups = _partner_groups(lab, a_lo, a_lo + a_n)
    if not groups:
        return np.empty(0, np.float32)
    flat = np.concatenate(
        [np.concatenate([p[g] for p in pieces], axis=1).ravel() for g in range(len(groups))]
    )
    s = np.concatenate([np.repeat(rc, tc.size) for rc, tc in groups])
    t = np.concatenate([np.tile(tc, rc.size) for rc, tc in groups])
    return flat[t != lab.self_col[s]].astype(np.float32, copy=False)


def _sum_parts(parts):
    parts = list(parts)
    acc = [None if p is None else p.copy() for p in parts[0]]
    for p in parts[1:]:
        for q, v in enumerate(p):
            acc[q] = v if acc[q] is None else acc[q] + v
    return tuple(acc)


def _auroc(h: np.ndarray) -> np.ndarray:
    """``(..., 4)`` from ``(..., 2, bins)``: AUROC, its bound, positives, negatives."""
    neg, pos = h[..., 0, :].astype(np.float64), h[..., 1, :].astype(np.float64)
    P, N = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, axis=-1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(-1) / (P * N)
        bound = 0.5 * (pos * neg).sum(-1) / (P * N)
    return np.stack([auc, bound, P, N], axis=-1)


def recall_statistics(
    hist, mhist, counts, row_valid, col_valid, lab: RecallLabels, row_bounds
) -> dict:
    """Final numbers from the summed histograms and rank counts (numpy, small).

    ``counts``: per row block (bounds ``row_bounds``) the ``(2, P)`` rank counts of its
    :func:`partner_pairs`.
    """
    row_valid = np.concatenate([np.asarray(v, bool) for v in row_valid])
    col_valid = (
        row_valid
        if lab.mode == "self"
        else np.concatenate([np.asarray(v, bool) for v in col_valid])
    )
    g = _auroc(hist)
    m = _auroc(mhist) if lab.n_moas else np.zeros((0, 4))
    bounds = zip(row_bounds[:-1], row_bounds[1:], strict=True)
    parts = [partner_pairs(lab, int(a), int(b)) for a, b in bounds]
    ps = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    ts = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    below, ties = (np.concatenate([c[0] for c in counts]), np.concatenate([c[1] for c in counts]))
    col_pool = col_valid  # ranks are among every valid signature
    n_pool = int(col_pool.sum())
    own = lab.self_col[ps]
    own_in = (own >= 0) & col_pool[np.maximum(own, 0)]
    others = n_pool - own_in.astype(np.int64) - 1  # valid columns other than s and t
    ok = row_valid[ps] & col_pool[ts] & (others > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pr = 100.0 * (below + 0.5 * ties) / others
    ps, ts, pr = ps[ok], ts[ok], pr[ok]
    rm = lab.combo_moa[lab.row_code[ps]] & lab.combo_moa[lab.col_code[ts]]
    med = np.full(lab.n_moas, np.nan)
    n_ranked = np.zeros(lab.n_moas, np.int64)
    for q in range(lab.n_moas):
        v = pr[rm[:, q]]
        n_ranked[q] = v.size
        if v.size:
            med[q] = np.median(v)
    row_pool = row_valid & (lab.row_code >= 0)
    n_sigs = lab.combo_moa[lab.row_code[row_pool]].sum(axis=0).astype(np.int64)
    return {
        "auroc": g[:, 0],
        "auroc_bound": g[:, 1],
        "n_pos": g[:, 2].astype(np.int64),
        "n_neg": g[:, 3].astype(np.int64),
        "moa_auroc": m[:, 0],
        "moa_auroc_bound": m[:, 1],
        "moa_n_pos": m[:, 2].astype(np.int64),
        "moa_n_neg": m[:, 3].astype(np.int64),
        "moa_n_sigs": n_sigs,
        "moa_median_percentile": med,
        "moa_n_ranked": n_ranked,
        "hist": hist,
    }


# ----------------------------------------------------------------------------- dask graph


def _lab_token(lab: RecallLabels) -> tuple:
    return tuple(getattr(lab, f) for f in lab.__dataclass_fields__)


def recall_arrays(
    x: da.Array,
    ref: da.Array | None,
    lab: RecallLabels,
    *,
    metric: Metric,
    bins: int,
    moa_bins: int,
    split_every: int = 8,
):
    """Graph of the exact recall pass: ``(Delayed dict of recall_statistics, plan)``.

    Tasks: standardisation per block (shared with :func:`~.engine.standardized`), partner
    scores per block pair and their gathering per row block, one :func:`pair_recall` per
    planned block pair, one histogram tree over all pairs, one rank-count tree per row
    block, and a final :func:`recall_statistics`.
    """
    sname, shlg, valid, rname, rhlg, ref_valid, plan = standardized_pair(x, ref, metric)
    rb, cb = block_bounds(plan.row_chunks), block_bounds(plan.col_chunks)
    tok = tokenize(sname, rname, *_lab_token(lab), bins, moa_bins, split_every)
    lname, piece, gath, pname, sidename, hname, cname, fname = (
        f"recall-{s}-{tok}"
        for s in ("labels", "piece", "partners", "pair", "side", "hist", "counts", "stats")
    )
    selfmode = plan.mode == "self"
    dsk: dict = {lname: lab}
    nr, nc = len(plan.row_chunks), len(plan.col_chunks)
    # partner scores: the rows of every row block against every column block, gathered
    for r in range(nr):
        for j in range(nc):
            dsk[(piece, r, j)] = (
                _partner_piece,
                (sname, r),
                (rname, j),
                lname,
                int(rb[r]),
                int(cb[j]),
            )
        dsk[(gath, r)] = (
            _gather_partners,
            [(piece, r, j) for j in range(nc)],
            lname,
            int(rb[r]),
            int(plan.row_chunks[r]),
        )
    for i, j in plan.pairs:
        diagonal, both = selfmode and i == j, selfmode and i != j
        dsk[(pname, i, j)] = (
            _pair_task,
            (sname, i),
            (rname, j),
            (gath, i),
            (gath, j) if both else None,
            lname,
            int(rb[i]),
            int(cb[j]),
            diagonal,
            both,
            int(bins),
            int(moa_bins),
        )
        # separate keys, so each product is freed once its three parts are merged
        dsk[(hname, "leaf", i, j)] = (_pick, (pname, i, j), (0, 1))
        dsk[(sidename, i, j, 0)] = (_pick, (pname, i, j), (2,))
        if both:
            dsk[(sidename, i, j, 1)] = (_pick, (pname, i, j), (3,))
    hist_root = _tree(dsk, hname, [(hname, "leaf", i, j) for i, j in plan.pairs], split_every)
    roots = [
        _tree(
            dsk,
            (cname, r),
            [(sidename, i, j, 0 if side == "row" else 1) for i, j, side in sources],
            split_every,
        )
        for r, sources in enumerate(plan.sources)
    ]
    dsk[fname] = (
        _final,
        hist_root,
        roots,
        [(valid.name, q) for q in range(nr)],
        [(ref_valid.name, q) for q in range(nc)],
        lname,
        rb,
    )
    hlg = HighLevelGraph.merge(shlg, rhlg, valid.dask, ref_valid.dask)
    hlg = _add_layer(hlg, fname, dsk, {sname, rname, valid.name, ref_valid.name})
    return Delayed(fname, hlg), plan


def _tree(dsk: dict, prefix, leaves: list, split_every: int):
    """Sum ``leaves`` (tuples of arrays) in a tree of fan-in ``split_every``; the root key."""
    prev = leaves
    for lvl, ranges in enumerate(merge_tree(len(leaves), split_every)):
        for g, (s0, s1) in enumerate(ranges):
            dsk[(*_as_tuple(prefix), lvl, g)] = (_sum_parts, prev[s0:s1])
        prev = [(*_as_tuple(prefix), lvl, g) for g in range(len(ranges))]
    return prev[0]


def _as_tuple(prefix):
    return prefix if isinstance(prefix, tuple) else (prefix,)


def _pick(t, which):
    return tuple(t[q] for q in which)


def _final(hist, roots, row_valid, col_valid, lab, row_bounds):
    counts = [r[0] for r in roots]
    return recall_statistics(hist[0], hist[1], counts, row_valid, col_valid, lab, row_bounds)


def _pair_task(sa, sb, pa, pb, lab, a_lo, b_lo, diagonal, both, bins, moa_bins):
    return pair_recall(
        sa,
        sb,
        pa,
        pb,
        lab,
        a_lo=a_lo,
        b_lo=b_lo,
        diagonal=diagonal,
        both=both,
        bins=bins,
        moa_bins=moa_bins,
    )


# ----------------------------------------------------------------------------- labelled layer


def _coord_or_values(ds: xr.Dataset, value, what: str):
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ds.coords:
            raise InputError(f"moa_recall: no signature coordinate {value!r} ({what})")
        return ds[value].values
    return value


def _check_bins(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise InputError(f"moa_recall: {name} must be an integer >= 2, got {value!r}")
    return int(value)


def moa_recall(
    ds: xr.Dataset,
    ref: xr.Dataset | None = None,
    *,
    moa,
    ref_moa=None,
    cells=None,
    ref_cells=None,
    metric: Metric = "pearson",
    space: Space = "landmark",
    block_size: int | None = None,
    bins: int = 1 << 16,
    moa_bins: int = 4096,
    split_every: int = 8,
) -> xr.Dataset:
    """Exact MoA recall over every pair of annotated signatures (ALGORITHMS.md §13), lazy.

    Parameters
    ----------
    ds
        Signatures (``expr`` with dims ``("sig", "gene")``).
    ref
        ``None``: every unordered pair of signatures of ``ds``. A Dataset: every pair of a
        signature of ``ds`` with one of ``ref`` (two stores); a signature whose id is in
        both is never paired with itself.
    moa, ref_moa
        MoA per signature (``|`` separates several; ``None`` or ``""``: unannotated, left
        out), aligned with ``sig``, or the name of a signature coordinate. ``ref_moa``
        defaults to ``moa`` when that is a coordinate name.
    cells, ref_cells
        Cell line per signature (values or coordinate name); adds one AUROC row per cell
        line over the pairs within it. ``None``: overall only.
    metric, space, block_size
        As for :func:`cmapdask.similarity.similarity`.
    bins
        Score bins over ``[-1, 1]`` for the AUROC of the groups; the reported
        ``auroc_bound`` is a proven bound on the binning error (module docstring).
    moa_bins
        The same for the per-MoA AUROC (kept coarser: one histogram per MoA per task).
    split_every
        Fan-in of the reduction trees.

    Returns
    -------
    xarray.Dataset
        Dim ``group`` (``"all"``, then each cell line): ``auroc``, ``auroc_bound``, ``n_pos``,
        ``n_neg`` (pairs) and ``hist`` (``group, class, bin``) for ROC curves. Dim ``moa``:
        ``moa_n_sigs``, ``moa_n_pos``, ``moa_n_neg``, ``moa_auroc``, ``moa_auroc_bound``,
        ``moa_median_percentile`` (median percentile rank of same-MoA partners, exact) and
        ``moa_n_ranked`` (ordered same-MoA pairs ranked). Dask-backed; provenance in
        ``attrs["cmapdask"]``.

    Notes
    -----
    One pass over the block pairs of the similarity engine (upper triangle for one store):
    each task reads two signature blocks (``b x G``), forms one ``b x b`` float32 product
    and holds ``(1 + cells) x 2 x bins + moas x 2 x moa_bins`` int64 counts and the rank
    counts of its rows' same-MoA pairs. Partner scores (same-MoA pairs only) are dot
    products computed beforehand, one small task per block pair. Work ``N^2 G`` like
    all-by-all similarity; memory never N x N; the client holds the labels (O(N)) and the
    final tables. The exact median percentile ranks need two int64 counts per ordered
    same-MoA pair: one row block's in each task, all of them in the final task
    (``16 sum_m n_m^2`` bytes for MoAs of ``n_m`` signatures), which is what bounds the
    scale of the per-MoA table (not of the AUROCs).
    """
    from cmapdask.similarity.api import _check_metric, _ids, _inputs, _provenance

    _check_metric(metric)
    bins, moa_bins = _check_bins("bins", bins), _check_bins("moa_bins", moa_bins)
    genes, x, xr_ = _inputs(ds, ref, space, block_size)
    row_moa = _coord_or_values(ds, moa, "moa")
    if ref is None:
        lab = recall_labels(row_moa, row_cells=_coord_or_values(ds, cells, "cells"))
    else:
        if ref_moa is None and isinstance(moa, str):
            ref_moa = moa
        if ref_moa is None:
            raise InputError("moa_recall: two stores need ref_moa (labels of ref)")
        if ref_cells is None and isinstance(cells, str):
            ref_cells = cells
        rid = pd.Index(_ids(ref))
        lab = recall_labels(
            row_moa,
            _coord_or_values(ref, ref_moa, "ref_moa"),
            row_cells=_coord_or_values(ds, cells, "cells"),
            col_cells=_coord_or_values(ref, ref_cells, "ref_cells"),
            self_col=rid.get_indexer(pd.Index(_ids(ds))),
        )
    if lab.row_code.size != ds.sizes["sig"]:
        raise InputError(f"moa_recall: {lab.row_code.size} labels for {ds.sizes['sig']} signatures")
    if (lab.row_code < 0).all() or (lab.col_code < 0).all():
        raise InputError("moa_recall: no signature has a MoA label")
    stats, plan = recall_arrays(
        x, xr_, lab, metric=metric, bins=bins, moa_bins=moa_bins, split_every=split_every
    )
    groups = np.array(["all", *lab.cells.tolist()], dtype=object)
    ng, nm = groups.size, lab.n_moas

    def col(key, shape, dtype):
        return da.from_delayed(stats[key], shape=shape, dtype=dtype)

    gvars = {"auroc": np.float64, "auroc_bound": np.float64, "n_pos": np.int64, "n_neg": np.int64}
    mvars = {
        "moa_n_sigs": np.int64,
        "moa_n_pos": np.int64,
        "moa_n_neg": np.int64,
        "moa_auroc": np.float64,
        "moa_auroc_bound": np.float64,
        "moa_median_percentile": np.float64,
        "moa_n_ranked": np.int64,
    }
    data = {k: ("group", col(k, (ng,), t)) for k, t in gvars.items()}
    data.update({k: ("moa", col(k, (nm,), t)) for k, t in mvars.items()})
    data["hist"] = (("group", "class", "bin"), col("hist", (ng, 2, bins), np.int64))
    out = xr.Dataset(
        data,
        coords={
            "group": groups,
            "moa": lab.moas,
            "class": np.array(["different", "same"], dtype=object),
            "bin_lower": ("bin", np.linspace(-1.0, 1.0, bins + 1)[:-1]),
        },
    )
    prov = _provenance(
        ds,
        metric=metric,
        space=space,
        n_genes=int(genes.size),
        mode=plan.mode,
        bins=bins,
        moa_bins=moa_bins,
        n_block_pairs=len(plan.pairs),
        split_every=split_every,
        pairs="unordered" if plan.mode == "self" else "query x reference",
        exact="pair and rank counts exact; AUROC within auroc_bound",
    )
    prov["method"] = "moa_recall"
    out.attrs["cmapdask"] = prov
    return out


def recall_tables(result: xr.Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(groups, per-MoA)`` tables of a computed (or lazy) :func:`moa_recall` result."""
    res = result.drop_vars(["hist", "bin_lower"], errors="ignore").compute()
    groups = pd.DataFrame(
        {
            "group": res["group"].values,
            "auroc": res["auroc"].values,
            "auroc_bound": res["auroc_bound"].values,
            "n_pos": res["n_pos"].values,
            "n_neg": res["n_neg"].values,
        }
    )
    moas = pd.DataFrame(
        {
            "moa": res["moa"].values,
            "n_sigs": res["moa_n_sigs"].values,
            "pairs": res["moa_n_pos"].values,
            "n_neg": res["moa_n_neg"].values,
            "auroc": res["moa_auroc"].values,
            "auroc_bound": res["moa_auroc_bound"].values,
            "median_percentile": res["moa_median_percentile"].values,
            "n_ranked": res["moa_n_ranked"].values,
        }
    )
    return groups, moas
