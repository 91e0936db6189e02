"""Numpy kernels of the similarity engine: standardise a block, top-k of one block pair, merge.

Order of neighbours (deterministic, independent of blocking): the most similar first by
score, then by the smaller neighbour index; the most opposite first by score ascending,
then by the smaller index. Missing slots (fewer candidates than ``k``) hold score NaN and
index -1 and sort last.

A partial result is a tuple ``(top_score, top_index, bottom_score, bottom_index)`` of
arrays with one row per signature of a row block and at most ``k`` columns.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.stats

from cmapdask.similarity.topk import block_topk

__all__ = ["standardize", "pair_topk", "merge_topk", "gram"]

Metric = Literal["pearson", "spearman", "cosine"]
Partial = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_LOW = np.int64(2**32 - 1)


def standardize(x: np.ndarray, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` scaled so that a dot product of two rows is their similarity.

    Pearson: centred, unit norm. Spearman: average ranks (ties share their mean rank), then
    as Pearson. Cosine: unit norm. Returns ``(z, valid)``: ``z`` float32 with invalid rows
    set to 0, ``valid`` False for rows with a non-finite value or no spread (constant rows
    for Pearson and Spearman, all-zero rows for cosine).
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x).all(axis=1)
    x = np.where(valid[:, None], x, 0.0)
    if metric == "spearman":
        x = scipy.stats.rankdata(x, axis=1) if x.shape[1] else x
    if metric in ("pearson", "spearman"):
        # exact test for constant rows: centring may leave rounding noise, ptp does not
        valid &= np.ptp(x, axis=1) > 0 if x.shape[1] else False
        x = x - x.mean(axis=1, keepdims=True)
    elif metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}")
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    valid &= norm > 0
    z = np.divide(x, norm[:, None], out=np.zeros_like(x), where=valid[:, None])
    return z.astype(np.float32), valid


def gram(za: np.ndarray, va: np.ndarray, zb: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Full similarity block ``za @ zb.T`` (float32) with NaN for invalid rows or columns."""
    c = za @ zb.T
    c[~va, :] = np.nan
    c[:, ~vb] = np.nan
    return c


def _empty(m: int, k: int) -> Partial:
    return (
        np.full((m, k), np.nan, np.float32),
        np.full((m, k), -1, np.int64),
        np.full((m, k), np.nan, np.float32),
        np.full((m, k), -1, np.int64),
    )


def _expand(sel: tuple[np.ndarray, ...], rows: np.ndarray, m: int) -> Partial:
    """Put the selection of the valid rows back at their place in a block of ``m`` rows."""
    if rows.size == m:
        return tuple(sel)
    out = _empty(m, sel[0].shape[1])
    for q in range(4):
        out[q][rows] = sel[q]
    return out


def pair_topk(
    za: np.ndarray,
    va: np.ndarray,
    zb: np.ndarray,
    vb: np.ndarray,
    *,
    k: int,
    a_offset: int,
    b_offset: int,
    diagonal: bool,
    both: bool,
) -> tuple[Partial, Partial | None]:
    """Top-k of one block pair: ``(row side, column side or None)``.

    ``za`` and ``zb`` are standardised blocks (gene axis whole) with validity masks; one
    float32 product ``za[valid] @ zb[valid].T``. ``diagonal``: the pair is a block with
    itself (self pairs are excluded). ``both``: also return the candidates of ``zb``'s rows
    among ``za``'s (the transposed side, used for the upper triangle of self-similarity).
    """
    ia, ib = np.flatnonzero(va), np.flatnonzero(vb)
    # the usual case, every signature valid, needs no gathered copies
    c = (za if ia.size == len(va) else za[ia]) @ (zb if ib.size == len(vb) else zb[ib]).T
    rsel, csel = block_topk(c, ib + b_offset, ia + a_offset, k, diagonal=diagonal, both=both)
    row = _expand(rsel, ia, len(va))
    return row, (_expand(csel, ib, len(vb)) if both else None)


def _ordered_bits(score: np.ndarray) -> np.ndarray:
    """int64 that orders like the float32 scores (-0.0 counted as 0.0)."""
    b = (score + np.float32(0)).view(np.int32).astype(np.int64)
    return np.where(b >= 0, b, b ^ 0x7FFFFFFF)


def merge_topk(parts: list[Partial], k: int) -> Partial:
    """Merge partial results of the same rows into the first ``k`` of each tail (padded)."""
    m = parts[0][0].shape[0]
    ts, ti, bs, bi = (np.concatenate([p[q] for p in parts], axis=1) for q in range(4))
    out = _empty(m, k)
    if ts.shape[1] == 0:
        return out
    # one int64 key per candidate: score first, then the smaller index wins; unique per row
    missing = ti < 0
    key_t = np.where(missing, np.iinfo(np.int64).min, (_ordered_bits(ts) << 32) + (_LOW - ti))
    key_b = np.where(missing, np.iinfo(np.int64).max, (_ordered_bits(bs) << 32) + bi)
    kk = min(k, ts.shape[1])
    if kk < ts.shape[1]:
        # ~key reverses the order without overflow
        sel_t = np.argpartition(~key_t, kk - 1, axis=1)[:, :kk]
        sel_b = np.argpartition(key_b, kk - 1, axis=1)[:, :kk]
    else:
        sel_t = sel_b = np.broadcast_to(np.arange(kk), (m, kk))
    sel_t = np.take_along_axis(sel_t, np.argsort(~np.take_along_axis(key_t, sel_t, 1), 1), 1)
    sel_b = np.take_along_axis(sel_b, np.argsort(np.take_along_axis(key_b, sel_b, 1), 1), 1)
    out[0][:, :kk] = np.take_along_axis(ts, sel_t, 1)
    out[1][:, :kk] = np.take_along_axis(ti, sel_t, 1)
    out[2][:, :kk] = np.take_along_axis(bs, sel_b, 1)
    out[3][:, :kk] = np.take_along_axis(bi, sel_b, 1)
    # slots that only found padding stay missing
    out[0][out[1] < 0] = np.nan
    out[2][out[3] < 0] = np.nan
    return out
