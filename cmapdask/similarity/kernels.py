"""Numpy kernels of the similarity engine: standardise a block, top-k of one block pair, merge.

Order of neighbours (deterministic, independent of blocking): the most similar first by
score, then by the smaller neighbour index; the most opposite first by score ascending,
then by the smaller index. Missing slots (fewer candidates than ``k``) hold score NaN and
index -1 and sort last.

Inside the engine a partial result is a pair ``(top keys, bottom keys)`` of int64 arrays
(:mod:`.topk`: each key holds a score and a neighbour index and sorts best first), one row
per signature of a row block and at most ``k`` columns, in no particular order; only the
root of each row block's merge tree sorts and decodes them into ``(top_score, top_index,
bottom_score, bottom_index)``.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from cmapdask.model.types import SimilarityMetric
from cmapdask.similarity.topk import (
    MISSING,
    block_topk_keys,
    decode_keys,
    encode_keys,
    merge_keys,
)

__all__ = [
    "standardize",
    "pair_keys",
    "merge_key_parts",
    "pair_topk",
    "merge_topk",
    "gram",
]

Metric = SimilarityMetric  # the option type, defined once in cmapdask.model.types
Partial = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Keys = tuple[np.ndarray, np.ndarray]


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


def _expand(keys: np.ndarray, rows: np.ndarray, m: int) -> np.ndarray:
    """Put the keys of the valid rows back at their place in a block of ``m`` rows."""
    if rows.size == m:
        return keys
    out = np.full((m, keys.shape[1]), MISSING, np.int64)
    out[rows] = keys
    return out


def pair_keys(
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
) -> tuple[Keys, Keys | None]:
    """Top-k keys of one block pair: ``(row side, column side or None)``, unsorted.

    ``za`` and ``zb`` are standardised blocks (gene axis whole) with validity masks; one
    float32 product ``za[valid] @ zb[valid].T``. ``diagonal``: the pair is a block with
    itself (self pairs are excluded). ``both``: also return the candidates of ``zb``'s rows
    among ``za``'s (the transposed side, used for the upper triangle of self-similarity).
    Each side is ``(top keys, bottom keys)`` (:mod:`.topk`), one row per signature of the
    block, ``MISSING`` for invalid signatures.
    """
    ia, ib = np.flatnonzero(va), np.flatnonzero(vb)
    # the usual case, every signature valid, needs no gathered copies
    a = za if ia.size == len(va) else za[ia]
    # a block with itself: one operand, so numpy's symmetric product (syrk) makes
    # c[p, q] == c[q, p] bit for bit (a general product's rounding depends on the side)
    b = a if diagonal else (zb if ib.size == len(vb) else zb[ib])
    c = a @ b.T
    rsel, csel = block_topk_keys(c, ib + b_offset, ia + a_offset, k, diagonal=diagonal, both=both)
    del c
    row = tuple(_expand(s, ia, len(va)) for s in rsel)
    return row, (tuple(_expand(s, ib, len(vb)) for s in csel) if both else None)


def merge_key_parts(parts: list[Keys], k: int, *, final: bool = False):
    """Merge ``(top, bottom)`` key partials of the same rows into the ``k`` best per tail.

    ``final``: sorted and decoded into ``(top_score, top_index, bottom_score,
    bottom_index)`` (missing: score NaN, index -1) instead of keys.
    """
    top = merge_keys([p[0] for p in parts], k, sort=final)
    bottom = merge_keys([p[1] for p in parts], k, sort=final)
    if not final:
        return top, bottom
    return (*decode_keys(top, top=True), *decode_keys(bottom, top=False))


def pair_topk(za, va, zb, vb, *, k, a_offset, b_offset, diagonal, both):
    """:func:`pair_keys`, sorted and decoded (for inspection and tests)."""
    row, col = pair_keys(
        za, va, zb, vb, k=k, a_offset=a_offset, b_offset=b_offset, diagonal=diagonal, both=both
    )
    kr = row[0].shape[1]
    dec = merge_key_parts([row], kr, final=True)
    return dec, (merge_key_parts([col], col[0].shape[1], final=True) if both else None)


def merge_topk(parts: list[Partial], k: int) -> Partial:
    """Merge partial results ``(top_score, top_index, bottom_score, bottom_index)`` of the
    same rows (any order, index -1 for missing) into the first ``k`` of each tail, padded."""
    keys = [(encode_keys(p[0], p[1], top=True), encode_keys(p[2], p[3], top=False)) for p in parts]
    return merge_key_parts(keys, k, final=True)
