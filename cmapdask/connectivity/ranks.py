"""Stable descending ranks of signatures (ALGORITHMS.md §1).

Rank 1 is the highest score; ties keep their original gene order, so ranks are always a
permutation of 1..N and every ES walk sees distinct positions.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from cmapdask.errors import InputError

__all__ = ["rank_descending", "rank_signatures", "rank_dtype"]


def rank_dtype(n_genes: int) -> np.dtype:
    """The smallest signed integer dtype that holds ranks 1..n_genes."""
    return np.dtype(np.int16) if n_genes < np.iinfo(np.int16).max else np.dtype(np.int32)


def rank_descending(scores: np.ndarray) -> np.ndarray:
    """Stable descending ranks along the last axis (genes) of a numpy array.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(..., gene)`` scores. NaN is rejected because its rank is undefined.

    Returns
    -------
    numpy.ndarray
        Integer ranks (1 = highest) with the same shape, dtype from :func:`rank_dtype`.

    Examples
    --------
    >>> rank_descending(np.array([[0.5, 2.0, 0.5, -1.0]])).tolist()
    [[2, 1, 3, 4]]
    """
    scores = np.asarray(scores)
    if scores.size and np.isnan(scores).any():
        raise InputError("cannot rank signatures containing NaN scores")
    n = scores.shape[-1]
    # argsort of -s with a stable sort: equal scores keep their row order (cmapM's rank)
    order = np.argsort(-scores, axis=-1, kind="stable")
    ranks = np.empty(scores.shape, dtype=rank_dtype(n))
    np.put_along_axis(ranks, order, np.arange(1, n + 1, dtype=ranks.dtype), axis=-1)
    return ranks


def rank_signatures(expr: da.Array) -> da.Array:
    """Lazy stable descending ranks of a ``(sig, gene)`` dask array.

    Parameters
    ----------
    expr : dask.array.Array
        Scores, dims ``(sig, gene)``. The gene axis is merged into one chunk if needed.

    Returns
    -------
    dask.array.Array
        Ranks with the chunks of ``expr`` along ``sig`` and one chunk along ``gene``.

    Notes
    -----
    Each task holds one signature chunk with all of its genes (ranking needs the whole
    signature); memory per task is about three times the chunk. Work scales as
    ``n_sig * N log N`` and is embarrassingly parallel over signature chunks.
    """
    expr = da.asarray(expr)
    if expr.ndim != 2:
        raise InputError(f"expected a (sig, gene) array, got {expr.ndim} dimensions")
    if expr.numblocks[1] != 1:
        expr = expr.rechunk({1: -1})
    dtype = rank_dtype(expr.shape[1])
    return expr.map_blocks(rank_descending, dtype=dtype)
