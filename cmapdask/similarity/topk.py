"""Exact top-k of a similarity block (numba): both tails per row, and per column on request.

Per row: a threshold that at least k scores reach (the smallest of the maxima of k
disjoint groups of the row) rejects almost every score in one cheap pass; the few
survivors are sorted by one int64 key (ordered score bits, then the column) that encodes
the tie rule of :mod:`.kernels`. numpy's argpartition costs as much as the matrix product
that made the block; this costs a small fraction of it, which is what keeps the engine
near the machine's matmul rate.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["block_topk"]

_LOW = np.int64(2**32 - 1)
GROUPS_PER_K = 2


@numba.njit(cache=True, inline="always")
def _ordered(b):
    # float32 bits as an int64 that sorts like the float (-0.0 counted as 0.0)
    v = np.int64(b)
    if v == -2147483648:
        return np.int64(0)
    return v if v >= 0 else v ^ 0x7FFFFFFF


@numba.njit(cache=True, inline="always")
def _emit(row, cols, keys, kk, top, out_s, out_i, r):
    if keys.shape[0] > kk:  # a linear-time partition, then sort only the kept
        keys = np.partition(keys, kk - 1)[:kk]
    keys = np.sort(keys)
    for q in range(kk):
        j = (_LOW - (~keys[q] & _LOW)) if top else (keys[q] & _LOW)
        out_s[r, q] = row[j]
        out_i[r, q] = cols[j]


@numba.njit(cache=True)
def _rows_topk(c, bits, cols, diagonal, ts, ti, bs, bi):
    m, n = c.shape
    kk = ts.shape[1]
    if kk == 0:
        return
    cand_t = np.empty(n, np.int64)
    cand_b = np.empty(n, np.int64)
    ng = max(kk, min(GROUPS_PER_K * kk, n // 8))
    gmaxs = np.empty(ng, np.float32)
    gmins = np.empty(ng, np.float32)
    for r in range(m):
        row = c[r]
        if diagonal:  # hide the signature itself from both tails
            saved = row[r]
            row[r] = np.nan
        # thresholds that at least kk scores reach: the kk-th largest of the maxima of
        # ng >= kk disjoint groups (kk-th smallest of the minima for the bottom); more
        # groups than kk give a tighter threshold and fewer survivors to sort
        for g in range(ng):
            gmax = np.float32(-np.inf)
            gmin = np.float32(np.inf)
            for j in range(g * n // ng, (g + 1) * n // ng):
                s = row[j]
                gmax = max(gmax, s)
                gmin = min(gmin, s)
            gmaxs[g] = gmax
            gmins[g] = -gmin
        t_top = np.partition(gmaxs, ng - kk)[ng - kk]
        t_bot = -np.partition(gmins, ng - kk)[ng - kk]
        nt = 0
        nb = 0
        for j in range(n):
            s = row[j]
            if s >= t_top:
                # one unique key per candidate: score, then the smaller column first
                cand_t[nt] = ~((_ordered(bits[r, j]) << 32) + (_LOW - j))
                nt += 1
            if s <= t_bot:
                cand_b[nb] = (_ordered(bits[r, j]) << 32) + j
                nb += 1
        _emit(row, cols, cand_t[:nt], kk, True, ts, ti, r)
        _emit(row, cols, cand_b[:nb], kk, False, bs, bi, r)
        if diagonal:
            row[r] = saved


@numba.njit(cache=True)
def _transpose(c):
    # cache-blocked: numpy's strided copy of a large block is several times slower
    m, n = c.shape
    out = np.empty((n, m), c.dtype)
    t = 64
    for i0 in range(0, m, t):
        for j0 in range(0, n, t):
            for i in range(i0, min(i0 + t, m)):
                for j in range(j0, min(j0 + t, n)):
                    out[j, i] = c[i, j]
    return out


def _side(c: np.ndarray, cols: np.ndarray, k: int, diagonal: bool):
    m, n = c.shape
    kk = max(0, min(k, n - 1 if diagonal else n))
    out = (np.empty((m, kk), np.float32), np.empty((m, kk), np.int64),
           np.empty((m, kk), np.float32), np.empty((m, kk), np.int64))
    if m and kk:
        _rows_topk(c, c.view(np.int32), cols.astype(np.int64), diagonal, *out)
    return out


def block_topk(
    c: np.ndarray, cols: np.ndarray, rows: np.ndarray, k: int, *, diagonal: bool, both: bool
):
    """Top/bottom-k per row of ``c`` (candidates ``cols``) and, with ``both``, per column.

    ``cols``/``rows`` are the global indices (ascending) of the columns/rows of ``c``;
    ``diagonal`` leaves out ``c[i, i]`` (a signature and itself). Returns ``(row side,
    column side or None)``, each ``(top_s, top_i, bottom_s, bottom_i)`` with
    ``min(k, candidates)`` sorted columns.
    """
    c = np.ascontiguousarray(c, dtype=np.float32)
    row = _side(c, cols, k, diagonal)
    if not both:
        return row, None
    ct = _transpose(c) if c.size else np.ascontiguousarray(c.T)
    return row, _side(ct, rows, k, False)
