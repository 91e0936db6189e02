"""Enrichment score, WTCS and leading edge on sorted hit ranks (ALGORITHMS.md §2-3).

The kernels work on the ranks and scores of a set's own genes only: after sorting the G
hit ranks of a signature, ES is one O(G) pass, never a walk over all N genes. Arrays are
signature-major ``(sig, gene_in_set)`` here; the query engine gathers them from the
gene-major index.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from cmapdask.errors import InputError
from cmapdask.model.types import ConnectivityMetric

__all__ = [
    "enrichment_scores",
    "es_of_members",
    "es_of_sets",
    "combine_wtcs",
    "transpose",
    "Metric",
    "Tail",
]

Metric = ConnectivityMetric  # the option type, defined once in cmapdask.model.types
Tail = Literal["both", "up", "down"]


@intrinsic
def _ctz(typingctx, x):  # pragma: no cover
    """Trailing zero bits of a non-zero uint64: one ``tzcnt``."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(types.uint64), codegen


_TILE = 16  # signatures per transposed tile of the gene-major kernel


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def _es_kernel(ranks, scores, members, sizes, n_genes, weighted, es, lead):  # pragma: no cover
    """ES of every set ``ranks[:, members[k, :sizes[k]]]`` in every row (sig-major)."""
    bits = np.zeros((n_genes >> 6) + 1, dtype=np.uint64)
    wbuf = np.zeros(n_genes + 1, dtype=np.float64)
    _es_rows(ranks, scores, members, sizes, n_genes, weighted, es, lead, bits, wbuf, 0)


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def _es_kernel_gm(
    ranks, scores, members, sizes, n_genes, weighted, es, lead, tile
):  # pragma: no cover
    """:func:`_es_kernel` of gene-major ``(gene, sig)`` blocks, as the index stores them.

    Each tile of ``tile`` signatures is transposed into a small buffer that stays in
    cache (16 x 16 sub-tiles), then scored: no signature-major copy of the whole block.
    """
    n_u, n_sig = ranks.shape
    bits = np.zeros((n_genes >> 6) + 1, dtype=np.uint64)
    wbuf = np.zeros(n_genes + 1, dtype=np.float64)
    br = np.empty((tile, n_u), dtype=ranks.dtype)
    bw = np.empty((tile if weighted else 1, n_u), dtype=scores.dtype)
    for i0 in range(0, n_sig, tile):
        nt = min(tile, n_sig - i0)
        for u0 in range(0, n_u, 16):
            u1 = min(u0 + 16, n_u)
            for t in range(nt):
                for u in range(u0, u1):
                    br[t, u] = ranks[u, i0 + t]
            if weighted:
                for t in range(nt):
                    for u in range(u0, u1):
                        bw[t, u] = scores[u, i0 + t]
        _es_rows(br[:nt], bw, members, sizes, n_genes, weighted, es, lead, bits, wbuf, i0)


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def _es_rows(
    ranks, scores, members, sizes, n_genes, weighted, es, lead, bits, wbuf, out0
):  # pragma: no cover
    """ES of every set in rows ``ranks[i]``, written to column ``out0 + i``.

    Ranks are distinct integers in [1, N], so instead of a comparison sort each row marks
    a set's hits in a bitset and reads them back word by word (lowest set bit by one
    ``tzcnt``): O(G + N/64) per signature and set. Rows are the outer loop, so a
    signature's ranks and scores are fetched from memory once for all sets of a batch.
    """
    n_sig = ranks.shape[0]
    n_sets = members.shape[0]
    one = np.uint64(1)
    for i in range(n_sig):
        for k in range(n_sets):
            g = sizes[k]
            if g == 0:
                es[k, out0 + i] = 0.0
                lead[k, out0 + i] = 0.0
                continue
            miss = float(n_genes - g) if n_genes > g else 1.0
            total = 0.0
            lo = n_genes + 1
            for j in range(g):
                m = members[k, j]
                r = np.int64(ranks[i, m])
                bits[r >> 6] |= one << np.uint64(r & 63)
                w = abs(np.float64(scores[i, m])) if weighted else 1.0
                wbuf[r] = w
                total += w
                lo = min(lo, r)
            use_w = weighted and total > 0.0
            if not use_w:
                total = float(g)
            inv_total = 1.0 / total
            inv_miss = 1.0 / miss
            cum = 0.0
            # the largest positive deviation is some A_j (after a hit), the largest
            # negative some B_j (before a hit): track both extremes and first indices
            max_a = -2.0
            min_b = 2.0
            ja = 0
            jb = 0
            word = lo >> 6
            x = bits[word]
            bits[word] = np.uint64(0)
            for j in range(1, g + 1):
                # exactly g hits: step to the next word without a branch (a word is
                # rarely empty; a run of empty words falls back to the loop below)
                empty = x == 0
                word = word + 1 if empty else word
                nx = bits[word]
                x = nx if empty else x
                bits[word] = np.uint64(0)
                while x == 0:
                    word += 1
                    x = bits[word]
                    bits[word] = np.uint64(0)
                r = (word << 6) + np.int64(_ctz(x))
                x &= x - one
                w = wbuf[r] if use_w else 1.0
                cum += w
                after = cum * inv_total - (r - j) * inv_miss
                before = after - w * inv_total
                # rounding-level gains do not displace an earlier extreme: "first"
                # must not depend on summation order
                ca = after > max_a + 1e-12
                cb = before < min_b - 1e-12
                max_a = after if ca else max_a
                ja = j if ca else ja
                min_b = before if cb else min_b
                jb = j if cb else jb
            pos, neg = abs(max_a), abs(min_b)
            # E_j prefers A_j when |A_j| == |B_j|; otherwise the first index wins a tie
            if pos > neg + 1e-12 or (abs(pos - neg) <= 1e-12 and ja <= jb):
                best, jstar = max_a, ja
            else:
                best, jstar = min_b, jb
            es[k, out0 + i] = best
            lead[k, out0 + i] = jstar / g if best >= 0 else (g - jstar + 1) / g


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _transpose_into(a, out):  # pragma: no cover
    # 16 x 16 tiles: both the reads and the writes stay within a few cache lines
    n_r, n_c = a.shape
    for c0 in range(0, n_c, 16):
        c1 = min(c0 + 16, n_c)
        for r0 in range(0, n_r, 16):
            r1 = min(r0 + 16, n_r)
            for c in range(c0, c1):
                for r in range(r0, r1):
                    out[c, r] = a[r, c]


def transpose(a: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(a.T)`` of a 2-D array, several times faster for int16 and
    float32 gene-major index blocks, and without holding the GIL."""
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    if a.size:
        _transpose_into(a, out)
    return out


def es_of_sets(
    ranks,
    scores,
    sets,
    n_genes: int,
    *,
    metric: Metric = "wtcs",
    layout: Literal["sig", "gene"] = "sig",
):
    """ES and leading edge of several sets (lists of columns) of ``(sig, U)`` blocks.

    Returns ``(es, leadf)``, each ``(len(sets), sig)``. ``scores`` may be ``None`` for
    ``metric="cs"``. Ranks must be distinct within a row. ``layout="gene"``: the blocks
    are ``(U, sig)`` as the index stores them (then ``sets`` index their rows); they are
    transposed a small tile at a time inside the kernel.
    """
    gene_major = layout == "gene"
    n_sig = ranks.shape[1] if gene_major else ranks.shape[0]
    sizes = np.array([len(m) for m in sets], dtype=np.int64)
    members = np.zeros((len(sets), max(1, int(sizes.max(initial=0)))), dtype=np.int64)
    for k, m in enumerate(sets):
        members[k, : len(m)] = m
    es = np.zeros((len(sets), n_sig))
    lead = np.zeros((len(sets), n_sig))
    if n_sig == 0 or not len(sets):
        return es, lead
    weighted = metric == "wtcs"
    if scores is None:
        if weighted:
            raise InputError("the weighted metric 'wtcs' needs the scores")
        scores = np.zeros((1, 1), dtype=np.float32)
    if gene_major:
        _es_kernel_gm(ranks, scores, members, sizes, int(n_genes), weighted, es, lead, _TILE)
    else:
        _es_kernel(ranks, scores, members, sizes, int(n_genes), weighted, es, lead)
    return es, lead


def es_of_members(ranks, scores, members, n_genes: int, *, metric: Metric = "wtcs"):
    """ES and leading edge of one set (``members``: columns) of ``(sig, U)`` blocks."""
    es, lead = es_of_sets(
        ranks, scores, [np.asarray(members, dtype=np.int64)], n_genes, metric=metric
    )
    return es[0], lead[0]


def enrichment_scores(
    ranks: np.ndarray,
    scores: np.ndarray,
    n_genes: int,
    *,
    metric: Metric = "wtcs",
) -> tuple[np.ndarray, np.ndarray]:
    """ES and leading-edge fraction of one gene set in many signatures.

    Parameters
    ----------
    ranks : numpy.ndarray
        ``(sig, G)`` ranks (1 = top, within a space of ``n_genes``) of the set's genes.
    scores : numpy.ndarray or None
        ``(sig, G)`` scores of the same genes (their absolute values are the hit weights);
        may be ``None`` for ``metric="cs"``.
    n_genes : int
        N, the size of the feature space the ranks were taken in.
    metric : {"wtcs", "cs"}
        ``"wtcs"``: weighted KS, hit weight ``|score|`` (GSEA exponent 1).
        ``"cs"``: unweighted KS, every hit weighs 1.

    Returns
    -------
    es, leadf : numpy.ndarray
        float64 arrays of length ``sig``. An empty set gives ES 0 and leading edge 0.
        A weighted set whose hit scores are all 0 falls back to equal weights.

    Notes
    -----
    Holds the inputs and two scratch arrays of N; time ``O(sig * (G + N / 64))``.
    """
    ranks = np.ascontiguousarray(ranks)
    if metric not in ("wtcs", "cs"):
        raise InputError(f"metric must be 'wtcs' or 'cs', not {metric!r}")
    if scores is not None:
        scores = np.ascontiguousarray(scores)
        if ranks.shape != scores.shape:
            raise InputError(f"ranks {ranks.shape} and scores {scores.shape} differ in shape")
    if ranks.ndim != 2:
        raise InputError(f"ranks must be 2-D (sig, gene), not {ranks.ndim}-D")
    if ranks.size and (ranks.min() < 1 or ranks.max() > n_genes):
        raise InputError(f"ranks must lie in 1..{n_genes}")
    return es_of_members(ranks, scores, np.arange(ranks.shape[1]), n_genes, metric=metric)


def combine_wtcs(es_up: np.ndarray, es_dn: np.ndarray, *, tail: Tail = "both") -> np.ndarray:
    """Combine the two ES into WTCS (or CS) (ALGORITHMS.md §3).

    Parameters
    ----------
    es_up, es_dn : array-like
        ES of the up and the down set (``es_dn`` is ignored for ``tail="up"`` and
        ``es_up`` for ``tail="down"``).
    tail : {"both", "up", "down"}
        ``"both"``: ``(up - down) / 2`` where the signs differ (sign(0) = 0), else 0.
        ``"up"``: ``es_up``. ``"down"``: ``-es_dn``.

    Examples
    --------
    >>> combine_wtcs(np.array([0.5, 0.5, 0.0]), np.array([-0.3, 0.2, 0.0])).tolist()
    [0.4, 0.0, 0.0]
    """
    if tail == "up":
        return np.asarray(es_up, dtype=float)
    if tail == "down":
        return -np.asarray(es_dn, dtype=float)
    if tail != "both":
        raise InputError(f"tail must be 'both', 'up' or 'down', not {tail!r}")
    es_up = np.asarray(es_up, dtype=float)
    es_dn = np.asarray(es_dn, dtype=float)
    return np.where(np.sign(es_up) != np.sign(es_dn), (es_up - es_dn) / 2, 0.0)
