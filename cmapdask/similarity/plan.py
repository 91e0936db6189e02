"""Pure planning of the blockwise similarity engine: block boundaries, block pairs, merge trees.

Nothing here touches data, so the layout of a million-signature run can be inspected (and
tested) before anything is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cmapdask.errors import InputError

__all__ = ["BlockPlan", "plan_blocks", "merge_tree", "block_bounds"]


def block_bounds(chunks: tuple[int, ...]) -> np.ndarray:
    """Offsets ``[0, c0, c0+c1, ...]`` of the blocks given by dask-style ``chunks``."""
    return np.concatenate([[0], np.cumsum(np.asarray(chunks, dtype=np.int64))])


@dataclass(frozen=True)
class BlockPlan:
    """Which block pairs to multiply, and which partial results feed each row block.

    Attributes
    ----------
    mode
        ``"self"``: rows and columns are the same signatures, only pairs ``i <= j`` are
        multiplied and an off-diagonal pair also serves the rows of block ``j`` (transposed).
        ``"query"``: rows are queries, columns a separate reference; every pair is multiplied.
    row_chunks, col_chunks
        Block sizes along the rows and the columns (equal in ``"self"`` mode).
    pairs
        ``(i, j)`` block pairs, one matrix product each.
    sources
        For each row block ``r``, the partial results that hold candidates for its rows:
        ``(i, j, "row")`` is the row side of pair ``(i, j)`` (``r == i``), ``(i, j, "col")``
        the transposed side (``r == j``).
    """

    mode: Literal["self", "query"]
    row_chunks: tuple[int, ...]
    col_chunks: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    sources: tuple[tuple[tuple[int, int, str], ...], ...]

    @property
    def n_rows(self) -> int:
        return int(sum(self.row_chunks))

    @property
    def n_cols(self) -> int:
        return int(sum(self.col_chunks))

    @property
    def flops(self) -> int:
        """Multiply-adds times two of all block products for ``n_genes == 1`` (scale by G)."""
        rb, cb = block_bounds(self.row_chunks), block_bounds(self.col_chunks)
        return int(sum(2 * (rb[i + 1] - rb[i]) * (cb[j + 1] - cb[j]) for i, j in self.pairs))


def plan_blocks(
    row_chunks: tuple[int, ...],
    col_chunks: tuple[int, ...] | None = None,
) -> BlockPlan:
    """Plan the block pairs of a self-similarity (``col_chunks=None``) or a query run.

    Parameters
    ----------
    row_chunks
        Block sizes of the row signatures (dask ``chunks`` along ``sig``); zero-size blocks
        are allowed and skipped.
    col_chunks
        Block sizes of the reference signatures, or ``None`` for self-similarity, where only
        the upper triangle of block pairs (diagonal included) is planned.

    Returns
    -------
    BlockPlan

    Examples
    --------
    >>> p = plan_blocks((3, 3, 2))
    >>> p.pairs
    ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    >>> p.sources[1]
    ((0, 1, 'col'), (1, 1, 'row'), (1, 2, 'row'))
    """
    row_chunks = tuple(int(c) for c in row_chunks)
    if any(c < 0 for c in row_chunks) or (
        col_chunks is not None and any(c < 0 for c in col_chunks)
    ):
        raise InputError("similarity plan: block sizes must be non-negative")
    if col_chunks is None:
        nb = len(row_chunks)
        pairs = tuple((i, j) for i in range(nb) for j in range(i, nb))
        sources = tuple(
            tuple((i, r, "col") for i in range(r)) + tuple((r, j, "row") for j in range(r, nb))
            for r in range(nb)
        )
        return BlockPlan("self", row_chunks, row_chunks, pairs, sources)
    col_chunks = tuple(int(c) for c in col_chunks)
    pairs = tuple((i, j) for i in range(len(row_chunks)) for j in range(len(col_chunks)))
    sources = tuple(
        tuple((r, j, "row") for j in range(len(col_chunks))) for r in range(len(row_chunks))
    )
    return BlockPlan("query", row_chunks, col_chunks, pairs, sources)


def merge_tree(n_leaves: int, split_every: int) -> list[list[tuple[int, int]]]:
    """Levels of a tree reduction over ``n_leaves`` partial results.

    Each level is a list of ``(start, stop)`` ranges over the previous level's outputs;
    the last level has exactly one range. A single leaf still gets one (trivial) level so
    every row block ends in a merge that sorts and pads its result.

    >>> merge_tree(5, 2)
    [[(0, 2), (2, 4), (4, 5)], [(0, 2), (2, 3)], [(0, 2)]]
    """
    if split_every < 2:
        raise InputError(f"similarity plan: split_every must be at least 2, got {split_every}")
    if n_leaves < 1:
        raise InputError("similarity plan: a row block needs at least one partial result")
    levels: list[list[tuple[int, int]]] = []
    n = n_leaves
    while True:
        level = [(s, min(s + split_every, n)) for s in range(0, n, split_every)]
        levels.append(level)
        n = len(level)
        if n == 1:
            return levels
