"""Exact top-k of a similarity block (numba): both tails per row, and per column on request.

A candidate is encoded as one int64 *key* that sorts best first (ascending) and holds both
the score and the neighbour's global index, so partial results are single int64 arrays,
selections and merges compare integers, and the tie rule of :mod:`.kernels` (score, then
the smaller index) is built in:

- top tail: ``key = ~((o << 32) + (2**32 - 1 - index))``
- bottom tail: ``key = (o << 32) + index``

where ``o`` is the float32 score's bit pattern mapped to an integer that orders like the
float (-0.0 counted as 0.0). ``MISSING`` (the largest int64) marks an empty slot; no real
key reaches it. Indices must be below 2**32.

Per row: the maxima and minima of G >= 2k disjoint strided lanes of the row are taken in
one vectorised pass; a score that at least k lane maxima reach (found by a short float
bisection over the G maxima) is a threshold that at least k scores reach, and it rejects
about 97 % of the row in one branch-free compaction while the row is still in cache.
Among the few survivors the exact k-th score is found by bisection on the ordered
integers (vectorised counts, no sorting), and the k best are written unsorted. Columns
use the extrema of groups of rows, accumulated during the same row-major pass; their
thresholds are bisected for all columns at once, then one more branch-free pass over the
block collects the survivors row by row, and a counting sort regroups them by column, so
the block is never transposed. For a 4096 x 4096 block of 978-gene correlations and
k = 100 the whole costs about a quarter of the single-threaded float32 product that made
the block (both sides) or a tenth (rows only).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["block_topk", "block_topk_keys", "merge_keys", "decode_keys", "encode_keys", "MISSING"]

MISSING = np.iinfo(np.int64).max
_LOW = np.int64(2**32 - 1)
# no "ninf": +-inf are the initial values of the extrema; no NaN reaches these kernels
# (invalid signatures are compacted out before the product)
_FM = {"nnan", "nsz", "reassoc", "arcp", "contract"}
_HALVINGS = 12  # of the threshold bisections


@numba.njit(cache=True, inline="always")
def _ord(b):
    # float32 bits (int32) -> int64 that orders like the float, -0.0 and 0.0 both 0
    v = np.int64(b)
    m = v >> 63
    return (v ^ (m & 0x7FFFFFFF)) - m


@numba.njit(cache=True, inline="always")
def _unord(o):
    # inverse of _ord (0 -> +0.0), as int32 bits
    return np.int32(o if o >= 0 else (o - 1) ^ 0x7FFFFFFF)


@numba.njit(cache=True, inline="always")
def _key_top(o, idx):
    return ~((o << 32) + (_LOW - idx))


@numba.njit(cache=True, inline="always")
def _key_bot(o, idx):
    return (o << 32) + idx


@numba.njit(cache=True, inline="always")
def _kth_largest(a, n, kk):
    # the largest T with #{a[:n] >= T} >= kk (1 <= kk <= n): bisection with vector counts
    lo = a[0]
    hi = a[0]
    for i in range(n):
        lo = min(lo, a[i])
        hi = max(hi, a[i])
    hi += 1
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        cnt = 0
        for i in range(n):
            cnt += a[i] >= mid
        if cnt >= kk:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(cache=True, inline="always")
def _kth_smallest(a, n, kk):
    # the smallest T with #{a[:n] <= T} >= kk
    lo = a[0]
    hi = a[0]
    for i in range(n):
        lo = min(lo, a[i])
        hi = max(hi, a[i])
    lo -= 1
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        cnt = 0
        for i in range(n):
            cnt += a[i] <= mid
        if cnt >= kk:
            hi = mid
        else:
            lo = mid
    return hi


@numba.njit(cache=True, inline="always")
def _emit(o, idx, n, kk, top, out):
    """The kk best of n candidates (ordered scores o, global indices idx ascending) as keys."""
    if top:
        t = _kth_largest(o, n, kk)
    else:
        t = _kth_smallest(o, n, kk)
    w = 0
    for q in range(n):
        if (o[q] > t) if top else (o[q] < t):
            out[w] = _key_top(o[q], idx[q]) if top else _key_bot(o[q], idx[q])
            w += 1
    for q in range(n):  # ties at the threshold: the smaller indices, which come first
        if w == kk:
            break
        if o[q] == t:
            out[w] = _key_top(o[q], idx[q]) if top else _key_bot(o[q], idx[q])
            w += 1


@numba.njit(cache=True, inline="always", fastmath=_FM)
def _threshold(g, n, kk, top):
    # a score that at least kk of g[:n] reach (top) or stay under (bottom): a float
    # bisection that keeps the safe side; a dozen halvings come close enough to the exact
    # k-th value for the few extra survivors not to matter
    lo = g[0]
    hi = g[0]
    for i in range(n):
        lo = min(lo, g[i])
        hi = max(hi, g[i])
    safe = lo if top else hi
    other = hi if top else lo
    for _ in range(_HALVINGS):
        mid = np.float32(0.5) * (safe + other)
        cnt = 0
        if top:
            for i in range(n):
                cnt += g[i] >= mid
        else:
            for i in range(n):
                cnt += g[i] <= mid
        if cnt >= kk:
            safe = mid
        else:
            other = mid
    return safe


@numba.njit(cache=True, nogil=True, fastmath=_FM)
def _lanes(row, lanes, gmax, gmin):
    # extrema of the strided lanes j % lanes (the tail of the row folds into the first lanes)
    n = row.shape[0]
    full = (n // lanes) * lanes
    for g in range(lanes):
        gmax[g] = row[g]
        gmin[g] = row[g]
    for base in range(lanes, full, lanes):
        seg = row[base : base + lanes]
        for g in range(lanes):
            gmax[g] = max(gmax[g], seg[g])
            gmin[g] = min(gmin[g], seg[g])
    for j in range(full, n):
        gmax[j - full] = max(gmax[j - full], row[j])
        gmin[j - full] = min(gmin[j - full], row[j])


@numba.njit(cache=True, fastmath=_FM)
def _colacc(row, cm, cn):
    for j in range(row.shape[0]):
        cm[j] = max(cm[j], row[j])
        cn[j] = min(cn[j], row[j])


def _n_groups(k: int, n: int) -> int:
    """Lanes (or row groups) for a threshold: >= k, multiple of 16, 0 when n is too small."""
    g = -(-2 * k // 16) * 16
    return g if n >= 2 * g else 0


@numba.njit(cache=True, nogil=True)
def _rows_pass(c, bits, cols, diagonal, lanes, kr, ngc, out_t, out_b, colmax, colmin):
    m, n = c.shape
    gmax = np.empty(max(lanes, 1), np.float32)
    gmin = np.empty(max(lanes, 1), np.float32)
    ct = np.empty(n + 1, np.int64)
    cb = np.empty(n + 1, np.int64)
    o = np.empty(n + 1, np.int64)
    ix = np.empty(n + 1, np.int64)
    for r in range(m):
        row = c[r]
        if ngc:
            g = r * ngc // m
            _colacc(row, colmax[g], colmin[g])
        if not kr:
            continue
        if lanes:
            _lanes(row, lanes, gmax, gmin)
            if diagonal:  # the lane holding the signature itself, without it
                full = (n // lanes) * lanes
                ln = r % lanes if r < full else r - full
                gmax[ln] = -np.inf
                gmin[ln] = np.inf
                for j in range(ln, full, lanes):
                    if j != r:
                        gmax[ln] = max(gmax[ln], row[j])
                        gmin[ln] = min(gmin[ln], row[j])
                if full + ln < n and full + ln != r:
                    gmax[ln] = max(gmax[ln], row[full + ln])
                    gmin[ln] = min(gmin[ln], row[full + ln])
            t_top = _threshold(gmax, lanes, kr, True)
            t_bot = _threshold(gmin, lanes, kr, False)
        else:
            t_top = np.float32(-np.inf)
            t_bot = np.float32(np.inf)
        nt = 0
        nb = 0
        for j in range(n):  # branch-free compaction of the survivors
            s = row[j]
            ct[nt] = j
            nt += s >= t_top
            cb[nb] = j
            nb += s <= t_bot
        brow = bits[r]
        for top in (True, False):
            cand = ct if top else cb
            nc = nt if top else nb
            w = 0
            for q in range(nc):
                j = cand[q]
                if not (diagonal and j == r):
                    o[w] = _ord(brow[j])
                    ix[w] = cols[j]
                    w += 1
            _emit(o, ix, w, kr, top, out_t[r] if top else out_b[r])


@numba.njit(cache=True, nogil=True)
def _bisect_cols(o, kk, top, out):
    # per column j of o (groups x columns, ordered ints): the kk-th largest (top) or
    # smallest value, by bisection vectorised across the columns
    ng, n = o.shape
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    mid = np.empty(n, np.int32)
    cnt = np.empty(n, np.int32)
    for j in range(n):
        lo[j] = o[0, j]
        hi[j] = o[0, j]
    for g in range(1, ng):
        for j in range(n):
            lo[j] = min(lo[j], o[g, j])
            hi[j] = max(hi[j], o[g, j])
    for j in range(n):
        if top:
            hi[j] += 1
        else:
            lo[j] -= 1
    while True:
        todo = False
        for j in range(n):
            mid[j] = lo[j] + (hi[j] - lo[j]) // 2
            todo |= hi[j] - lo[j] > 1
        if not todo:
            break
        cnt[:] = 0
        for g in range(ng):
            og = o[g]
            if top:
                for j in range(n):
                    cnt[j] += og[j] >= mid[j]
            else:
                for j in range(n):
                    cnt[j] += og[j] <= mid[j]
        for j in range(n):
            if hi[j] - lo[j] > 1:
                if (cnt[j] >= kk) == top:
                    lo[j] = mid[j]
                else:
                    hi[j] = mid[j]
    for j in range(n):
        out[j] = _unord(lo[j] if top else hi[j])


@numba.njit(cache=True, nogil=True)
def _ord_array(x):
    b = x.view(np.int32)
    o = np.empty(b.shape, np.int32)
    for g in range(b.shape[0]):
        for j in range(b.shape[1]):
            o[g, j] = np.int32(_ord(b[g, j]))
    return o


def _col_thresholds(colmax, colmin, kc, ngc, n):
    if not ngc:
        return np.full(n, -np.inf, np.float32), np.full(n, np.inf, np.float32)
    tct = np.empty(n, np.int32)
    tcb = np.empty(n, np.int32)
    _bisect_cols(_ord_array(colmax), kc, True, tct)
    _bisect_cols(_ord_array(colmin), kc, False, tcb)
    return tct.view(np.float32), tcb.view(np.float32)


def _cols_pass(c, bits, rows, kc, ngc, colmax, colmin, out_t, out_b):
    n = c.shape[1]
    tct, tcb = _col_thresholds(colmax, colmin, kc, ngc, n)
    lt, vt, pt, lb, vb, pb = _col_survivors(c, bits, tct, tcb, kc, ngc)
    _col_emit(n, rows, kc, lt, vt, pt, True, out_t)
    _col_emit(n, rows, kc, lb, vb, pb, False, out_b)


@numba.njit(cache=True, nogil=True)
def _col_survivors(c, bits, tct, tcb, kc, ngc):
    """Survivors of each row, branch-free, in CSR form (columns per row), both tails."""
    m, n = c.shape
    cap = n * (2 * kc + 64) + n + 1 if ngc else m * n + 1
    lt = np.empty(cap, np.int32)
    lb = np.empty(cap, np.int32)
    vt = np.empty(cap, np.int32)
    vb = np.empty(cap, np.int32)
    pt = np.zeros(m + 1, np.int64)
    pb = np.zeros(m + 1, np.int64)
    p = 0
    q = 0
    for r in range(m):
        if max(p, q) + n + 1 > lt.shape[0]:  # many ties at the thresholds: grow
            big = np.empty(2 * lt.shape[0] + n + 1, np.int32)
            big[:p] = lt[:p]
            lt = big
            big = np.empty(2 * lb.shape[0] + n + 1, np.int32)
            big[:q] = lb[:q]
            lb = big
            big = np.empty(2 * vt.shape[0] + n + 1, np.int32)
            big[:p] = vt[:p]
            vt = big
            big = np.empty(2 * vb.shape[0] + n + 1, np.int32)
            big[:q] = vb[:q]
            vb = big
        row = c[r]
        p0 = p
        q0 = q
        for j in range(n):
            s = row[j]
            lt[p] = j
            p += s >= tct[j]
            lb[q] = j
            q += s <= tcb[j]
        brow = bits[r]  # the row is still in cache
        for e in range(p0, p):
            vt[e] = brow[lt[e]]
        for e in range(q0, q):
            vb[e] = brow[lb[e]]
        pt[r + 1] = p
        pb[r + 1] = q
    return lt, vt, pt, lb, vb, pb


@numba.njit(cache=True, nogil=True)
def _col_emit(n, rows, kc, lst, val, ptr, top, out):
    """Per column, the kc best of its survivors (rows ascending) as keys."""
    m = ptr.shape[0] - 1
    tot = ptr[m]
    cnt = np.zeros(n + 1, np.int64)
    for e in range(tot):
        cnt[lst[e] + 1] += 1
    for j in range(n):
        cnt[j + 1] += cnt[j]
    fill = cnt[:n].copy()
    rl = np.empty(tot, np.int32)
    rv = np.empty(tot, np.int32)
    for r in range(m):
        for e in range(ptr[r], ptr[r + 1]):
            j = lst[e]
            rl[fill[j]] = r
            rv[fill[j]] = val[e]
            fill[j] += 1
    o = np.empty(m + 1, np.int64)
    ix = np.empty(m + 1, np.int64)
    for j in range(n):
        w = 0
        for e in range(cnt[j], cnt[j + 1]):
            o[w] = _ord(rv[e])
            ix[w] = rows[rl[e]]
            w += 1
        _emit(o, ix, w, kc, top, out[j])


def block_topk_keys(
    c: np.ndarray, cols: np.ndarray, rows: np.ndarray, k: int, *, diagonal: bool, both: bool
):
    """Keys of the top/bottom-k per row of ``c`` and, with ``both``, per column (unsorted).

    ``cols``/``rows`` are the global indices (ascending, below 2**32) of the columns/rows
    of ``c``; ``diagonal`` leaves out ``c[i, i]`` (a signature and itself; not with
    ``both``). ``c`` must hold no NaN. Returns ``((top, bottom), (top, bottom) or None)``
    of int64 key arrays with ``min(k, candidates)`` columns each, in no particular order.
    """
    c = np.ascontiguousarray(c, dtype=np.float32)
    m, n = c.shape
    kr = max(0, min(k, n - 1 if diagonal else n))
    kc = max(0, min(k, m)) if both else 0
    row = (np.empty((m, kr), np.int64), np.empty((m, kr), np.int64))
    col = (np.empty((n, kc), np.int64), np.empty((n, kc), np.int64))
    if m and n:
        bits = c.view(np.int32)
        lanes = _n_groups(kr, n) if kr else 0
        ngc = _n_groups(kc, m) if kc else 0
        colmax = np.full((max(ngc, 1), n if ngc else 0), -np.inf, np.float32)
        colmin = np.full((max(ngc, 1), n if ngc else 0), np.inf, np.float32)
        _rows_pass(
            c,
            bits,
            np.asarray(cols, np.int64),
            diagonal,
            lanes,
            kr,
            ngc,
            row[0],
            row[1],
            colmax,
            colmin,
        )
        if kc:
            _cols_pass(c, bits, np.asarray(rows, np.int64), kc, ngc, colmax, colmin, *col)
    return row, (col if both else None)


# ------------------------------------------------------------------------------ merging


@numba.njit(cache=True, nogil=True)
def _merge_rows(keys, k, out):
    m, p = keys.shape
    buf = np.empty(p, np.int64)
    for r in range(m):
        n = 0
        for q in range(p):
            v = keys[r, q]
            buf[n] = v
            n += v != MISSING
        if n <= k:
            out[r, :n] = buf[:n]
            out[r, n:] = MISSING
            continue
        # the k smallest keys (keys are unique): bisection on the key values; keys span
        # all of int64, so the width is taken as unsigned
        lo = buf[0]
        hi = buf[0]
        for i in range(n):
            lo = min(lo, buf[i])
            hi = max(hi, buf[i])
        # invariant: #{buf <= lo} < k <= #{buf <= hi}
        lo -= 1  # no key is the smallest int64 (it would be a NaN score), so no wrap
        while np.uint64(hi) - np.uint64(lo) > 1:
            mid = lo + np.int64((np.uint64(hi) - np.uint64(lo)) >> np.uint64(1))
            cnt = 0
            for i in range(n):
                cnt += buf[i] <= mid
            if cnt >= k:
                hi = mid
            else:
                lo = mid
        w = 0
        for i in range(n):
            if buf[i] <= hi and w < k:
                out[r, w] = buf[i]
                w += 1


def merge_keys(parts: list[np.ndarray], k: int, *, sort: bool = False) -> np.ndarray:
    """The ``k`` smallest keys of each row over ``parts`` (same rows), padded with MISSING."""
    keys = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    out = np.empty((keys.shape[0], k), np.int64)
    _merge_rows(np.ascontiguousarray(keys), k, out)
    if sort:
        out.sort(axis=1)
    return out


def decode_keys(keys: np.ndarray, *, top: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float32, NaN where missing) and indices (int64, -1 where missing) of keys."""
    missing = keys == MISSING
    k = ~keys if top else keys
    o = k >> 32
    b = np.where(o >= 0, o, (o - 1) ^ 0x7FFFFFFF).astype(np.int32)
    score = b.view(np.float32)
    idx = (_LOW - (k & _LOW)) if top else (k & _LOW)
    score[missing] = np.nan
    idx[missing] = -1
    return score, idx


def encode_keys(score: np.ndarray, index: np.ndarray, *, top: bool) -> np.ndarray:
    """Keys of (score, index) pairs; index -1 (or a NaN score) is MISSING."""
    score = np.asarray(score, np.float32) + np.float32(0)
    index = np.asarray(index, np.int64)
    b = score.view(np.int32).astype(np.int64)
    o = np.where(b >= 0, b, (b ^ 0x7FFFFFFF) + 1)
    keys = ~((o << 32) + (_LOW - index)) if top else (o << 32) + index
    return np.where((index < 0) | np.isnan(score), MISSING, keys)


def block_topk(
    c: np.ndarray, cols: np.ndarray, rows: np.ndarray, k: int, *, diagonal: bool, both: bool
):
    """Sorted, decoded :func:`block_topk_keys`: ``(top_s, top_i, bottom_s, bottom_i)`` per side."""
    row, col = block_topk_keys(c, cols, rows, k, diagonal=diagonal, both=both)

    def dec(side):
        t, b = np.sort(side[0], axis=1), np.sort(side[1], axis=1)
        return (*decode_keys(t, top=True), *decode_keys(b, top=False))

    return dec(row), (dec(col) if both else None)
