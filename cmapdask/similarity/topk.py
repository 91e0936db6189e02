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
def _key(b, pos, top):
    # one unique int64 per candidate; ascending keys = best first (score, then position)
    o = _ordered(b)
    return ~((o << 32) + (_LOW - pos)) if top else (o << 32) + pos


@numba.njit(cache=True, inline="always")
def _pos(key, top):
    return (_LOW - (~key & _LOW)) if top else (key & _LOW)


@numba.njit(cache=True, inline="always")
def _best(keys, kk):
    if keys.shape[0] > kk:  # a linear-time partition, then sort only the kept
        keys = np.partition(keys, kk - 1)[:kk]
    return np.sort(keys)


@numba.njit(cache=True, inline="always")
def _kth_largest(vals, kk):
    return np.partition(vals, vals.shape[0] - kk)[vals.shape[0] - kk]


@numba.njit(cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _group_extrema(row, ng, gmaxs, gmins):
    # no NaN can occur (invalid signatures are compacted out), so the min/max reductions
    # may be vectorised; infinities stay allowed (the initial values)
    n = row.shape[0]
    for g in range(ng):
        gmax = np.float32(-np.inf)
        gmin = np.float32(np.inf)
        for j in range(g * n // ng, (g + 1) * n // ng):
            gmax = max(gmax, row[j])
            gmin = min(gmin, row[j])
        gmaxs[g] = gmax
        gmins[g] = -gmin


@numba.njit(cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _col_update(row, cm, cn):
    for j in range(row.shape[0]):
        cm[j] = max(cm[j], row[j])
        cn[j] = min(cn[j], row[j])


# nogil: the threaded scheduler runs several pair tasks at once in one process
@numba.njit(cache=True, nogil=True)
def _topk_kernel(c, bits, rows, cols, diagonal, ts, ti, bs, bi, cts, cti, cbs, cbi):
    """Row side into ts/ti/bs/bi, column side (if cts has columns) into cts/cti/cbs/cbi.

    Thresholds that at least kk scores reach: the kk-th largest of the maxima of
    ng >= kk disjoint groups (the kk-th smallest of the minima for the bottom). Rows use
    groups of columns, found while the row is in cache; columns use groups of rows,
    accumulated in the same row-major pass, so no transpose of the block is needed.
    """
    m, n = c.shape
    kr, kc = ts.shape[1], cts.shape[1]
    ngr = max(kr, min(2 * kr, n // 8))
    ngc = max(kc, min(2 * kc, m // 8))
    cand_t = np.empty(n, np.int64)
    cand_b = np.empty(n, np.int64)
    gmaxs = np.empty(max(ngr, 1), np.float32)
    gmins = np.empty(max(ngr, 1), np.float32)
    colmax = np.full((max(ngc, 1), n if kc else 0), -np.inf, np.float32)
    colmin = np.full((max(ngc, 1), n if kc else 0), np.inf, np.float32)
    for r in range(m):
        row = c[r]
        if kc:
            _col_update(row, colmax[r * ngc // m], colmin[r * ngc // m])
        if kr:
            _group_extrema(row, ngr, gmaxs, gmins)
            if diagonal:  # redo the group holding the signature itself, without it
                g = r * ngr // n
                while not (g * n // ngr <= r < (g + 1) * n // ngr):
                    g += 1 if r >= (g + 1) * n // ngr else -1
                gmax = np.float32(-np.inf)
                gmin = np.float32(np.inf)
                for j in range(g * n // ngr, (g + 1) * n // ngr):
                    if j != r:
                        gmax = max(gmax, row[j])
                        gmin = min(gmin, row[j])
                gmaxs[g] = gmax
                gmins[g] = -gmin
            t_top = _kth_largest(gmaxs, kr)
            t_bot = -_kth_largest(gmins, kr)
            nt = 0
            nb = 0
            for j in range(n):
                s = row[j]
                if s >= t_top and not (diagonal and j == r):
                    cand_t[nt] = _key(bits[r, j], j, True)
                    nt += 1
                if s <= t_bot and not (diagonal and j == r):
                    cand_b[nb] = _key(bits[r, j], j, False)
                    nb += 1
            kt = _best(cand_t[:nt], kr)
            kb = _best(cand_b[:nb], kr)
            for q in range(kr):
                j = _pos(kt[q], True)
                ts[r, q], ti[r, q] = row[j], cols[j]
                j = _pos(kb[q], False)
                bs[r, q], bi[r, q] = row[j], cols[j]
    if not kc:
        return
    tct = np.empty(n, np.float32)
    tcb = np.empty(n, np.float32)
    tmp = np.empty(ngc, np.float32)
    for j in range(n):
        for g in range(ngc):
            tmp[g] = colmax[g, j]
        tct[j] = _kth_largest(tmp, kc)
        for g in range(ngc):
            tmp[g] = -colmin[g, j]
        tcb[j] = -_kth_largest(tmp, kc)
    cap = 4 * kc + 64
    buf_t = np.empty((n, cap), np.int64)
    buf_b = np.empty((n, cap), np.int64)
    nt_c = np.zeros(n, np.int64)
    nb_c = np.zeros(n, np.int64)
    for r in range(m):
        row = c[r]
        for j in range(n):
            s = row[j]
            if s >= tct[j]:
                if nt_c[j] < cap:
                    buf_t[j, nt_c[j]] = _key(bits[r, j], r, True)
                nt_c[j] += 1
            if s <= tcb[j]:
                if nb_c[j] < cap:
                    buf_b[j, nb_c[j]] = _key(bits[r, j], r, False)
                nb_c[j] += 1
    col_keys = np.empty(m, np.int64)
    for j in range(n):
        for top in (True, False):
            cnt = nt_c[j] if top else nb_c[j]
            if cnt <= cap:
                keys = buf_t[j, :cnt] if top else buf_b[j, :cnt]
            else:  # many ties at the threshold overflowed the buffer: rescan the column
                cnt = 0
                for r in range(m):
                    s = c[r, j]
                    if (top and s >= tct[j]) or (not top and s <= tcb[j]):
                        col_keys[cnt] = _key(bits[r, j], r, top)
                        cnt += 1
                keys = col_keys[:cnt]
            best = _best(keys, kc)
            for q in range(kc):
                i = _pos(best[q], top)
                if top:
                    cts[j, q], cti[j, q] = c[i, j], rows[i]
                else:
                    cbs[j, q], cbi[j, q] = c[i, j], rows[i]


def _alloc(m: int, k: int):
    return (np.empty((m, k), np.float32), np.empty((m, k), np.int64),
            np.empty((m, k), np.float32), np.empty((m, k), np.int64))


def block_topk(
    c: np.ndarray, cols: np.ndarray, rows: np.ndarray, k: int, *, diagonal: bool, both: bool
):
    """Top/bottom-k per row of ``c`` (candidates ``cols``) and, with ``both``, per column.

    ``cols``/``rows`` are the global indices (ascending) of the columns/rows of ``c``;
    ``diagonal`` leaves out ``c[i, i]`` (a signature and itself; not with ``both``).
    Returns ``(row side, column side or None)``, each ``(top_s, top_i, bottom_s,
    bottom_i)`` with ``min(k, candidates)`` sorted columns.
    """
    c = np.ascontiguousarray(c, dtype=np.float32)
    m, n = c.shape
    row = _alloc(m, max(0, min(k, n - 1 if diagonal else n)))
    col = _alloc(n, max(0, min(k, m)) if both else 0)
    if m and n:
        _topk_kernel(c, c.view(np.int32), rows.astype(np.int64), cols.astype(np.int64),
                     diagonal, *row, *col)
    return row, (col if both else None)
