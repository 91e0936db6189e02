"""Plan and run work per group (plate, replicate group) over signature blocks on dask.

Plan (pure, no data): order the signatures so every group is contiguous (groups keep the
order of their first appearance, so input already laid out by plate needs no shuffle),
then cut the signature axis into chunks that each hold whole groups, about ``target_rows``
signatures each. Run: reorder lazily, rechunk to the plan with all genes in a chunk, and
``map_blocks`` a numpy kernel over each chunk. Each task holds one chunk (a few groups),
so memory is bounded by the chunk size, not by the data size.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cmapdask.levels import kernels

__all__ = [
    "GroupPlan",
    "plan_groups",
    "gather_rows",
    "map_groups_same",
    "replicate_statistics",
    "modz_from_statistics",
]


@dataclass(frozen=True)
class GroupPlan:
    """Where each group lies once signatures are in grouped order.

    ``order``: input position of each grouped-order row; ``sizes``: rows per group, in
    grouped order; ``chunks``: rows per chunk; ``groups_per_chunk``: groups per chunk.
    """

    order: np.ndarray
    sizes: np.ndarray
    chunks: tuple[int, ...]
    groups_per_chunk: tuple[int, ...]

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.order, np.arange(len(self.order))))

    @property
    def codes(self) -> np.ndarray:
        """Group number of each grouped-order row."""
        return np.repeat(np.arange(len(self.sizes)), self.sizes)


def plan_groups(codes: np.ndarray, *, target_rows: int) -> GroupPlan:
    """Plan chunks of whole groups from per-signature group codes.

    ``codes`` are integers numbering groups by first appearance (``pandas.factorize``).
    A group bigger than ``target_rows`` gets a chunk of its own.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size == 0:
        return GroupPlan(np.zeros(0, np.int64), np.zeros(0, np.int64), (), ())
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    chunks, per_chunk = [], []
    rows = groups = 0
    for size in sizes.tolist():
        if rows and rows + size > target_rows:
            chunks.append(rows)
            per_chunk.append(groups)
            rows = groups = 0
        rows += size
        groups += 1
    chunks.append(rows)
    per_chunk.append(groups)
    return GroupPlan(order, sizes, tuple(chunks), tuple(per_chunk))


def gather_rows(x: da.Array, order: np.ndarray, chunks: tuple[int, ...]) -> da.Array:
    """``x[order]`` with row chunks ``chunks``; each output chunk is one task that reads
    only the input blocks holding its rows.

    Dask's generic fancy indexing may route rows through intermediate chunks; here a
    task's memory is its output chunk plus the input blocks it touches, however the rows
    are scattered (replicates on three plates touch about three blocks).
    """
    x = x.rechunk({1: -1})
    bounds = np.cumsum((0,) + x.chunks[0])
    name = "cmapdask-gather-" + tokenize(x.name, order, chunks)
    dsk, start = {}, 0
    for j, n in enumerate(chunks):
        rows = order[start : start + n]
        start += n
        block = np.searchsorted(bounds, rows, side="right") - 1
        parts = []
        for b in np.unique(block):
            at = np.flatnonzero(block == b)
            parts.append(((x.name, int(b), 0), at, rows[at] - bounds[b]))
        dsk[(name, j, 0)] = (_take_rows, [p[0] for p in parts], [p[1:] for p in parts], n)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    return da.Array(graph, name, chunks=(tuple(chunks), (x.shape[1],)), meta=x._meta)


def _take_rows(blocks, where, n):
    out = np.empty((n, blocks[0].shape[1]), dtype=blocks[0].dtype)
    for block, (dest, src) in zip(blocks, where, strict=False):
        out[dest] = block[src]
    return out


def _grouped(x: da.Array, plan: GroupPlan) -> da.Array:
    """``x`` in grouped order, chunked by the plan with all genes in each chunk."""
    if plan.is_identity:
        return x.rechunk((plan.chunks, x.shape[1]))
    return gather_rows(x, plan.order, plan.chunks)


def _rowwise(values: np.ndarray, plan: GroupPlan) -> da.Array:
    """A per-row numpy array as an (n, 1) dask array aligned with the grouped chunks."""
    return da.from_array(values[:, None], chunks=(plan.chunks, 1))


def _same_block(x, codes, flags, ids, *, kernel):
    """Apply ``kernel(x_group, flags_group)`` to each group of rows of one block."""
    kernels.check_finite(x, ids[:, 0])
    codes, flags = codes[:, 0], flags[:, 0]
    out = np.empty(x.shape, dtype=np.float32)
    bounds = np.flatnonzero(np.diff(codes)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(codes)], strict=False):
        out[lo:hi] = kernel(x[lo:hi], flags[lo:hi])
    return out


def map_groups_same(
    x: da.Array,
    plan: GroupPlan,
    kernel,
    *,
    flags: np.ndarray,
    ids: np.ndarray,
) -> da.Array:
    """Lazily apply ``kernel(block_rows, flag_rows) -> same shape`` per group; input order.

    ``flags`` (per input row, bool) and ``ids`` (per input row) ride along with the rows.
    """
    xs = _grouped(x, plan)
    out = da.map_blocks(
        _same_block,
        xs,
        _rowwise(plan.codes, plan),
        _rowwise(np.asarray(flags, dtype=bool)[plan.order], plan),
        _rowwise(np.asarray(ids, dtype=object)[plan.order], plan),
        kernel=kernel,
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
    )
    if not plan.is_identity:  # back to the input order (and chunks) of the signatures
        out = gather_rows(out, np.argsort(plan.order), x.chunks[0])
    return out


def _sizes(codes: np.ndarray) -> np.ndarray:
    """Rows per group of a block whose group codes change at each group boundary."""
    return np.diff(np.r_[0, np.flatnonzero(np.diff(codes)) + 1, len(codes)])


def _stats_block(x, codes, ids, *, clip, weight_floor):
    kernels.check_finite(x, ids[:, 0])
    sizes = _sizes(codes[:, 0])
    _, weights, stats = kernels.modz_groups(
        x, sizes, slice(None), clip=clip, weight_floor=weight_floor, columns=None
    )
    # per group: the statistics, CMap's distil_wt text, and the weights themselves (for
    # the MODZ pass), in one object array so ranks are computed once for all three
    packed = np.empty((len(sizes), stats.shape[1] + 2), dtype=object)
    packed[:, : stats.shape[1]] = stats
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    for g, (s, n) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=False)):
        w = weights[s : s + n]
        packed[g, -2] = ",".join(f"{v:.2f}" for v in w)
        packed[g, -1] = w
    return packed


def _row_weights(packed):
    return np.concatenate(packed[:, -1])[:, None]


def _modz_block(x, codes, ids, weights, *, clip):
    kernels.check_finite(x, ids[:, 0])
    return kernels.weighted_group_sums(x, _sizes(codes[:, 0]), weights[:, 0], clip=clip)


def replicate_statistics(
    x: da.Array,
    plan: GroupPlan,
    *,
    ids: np.ndarray,
    landmarks: np.ndarray,
    clip: float,
    weight_floor: float,
) -> da.Array:
    """Lazy (n_groups, len(STAT_FIELDS) + 2) object array: statistics, weight text, weights.

    Reads only the landmark columns of ``x``.
    """
    every = np.array_equal(landmarks, np.arange(x.shape[1]))
    xs = _grouped(x if every else x[:, landmarks], plan)
    return da.map_blocks(
        _stats_block,
        xs,
        _rowwise(plan.codes, plan),
        _rowwise(np.asarray(ids, dtype=object)[plan.order], plan),
        clip=clip,
        weight_floor=weight_floor,
        chunks=(plan.groups_per_chunk, (len(kernels.STAT_FIELDS) + 2,)),
        dtype=object,
        meta=np.empty((0, 0), object),
    )


def modz_from_statistics(
    x: da.Array, plan: GroupPlan, stats: da.Array, *, ids: np.ndarray, clip: float
) -> da.Array:
    """Lazy (n_groups, n_gene) float32 MODZ from the weights inside ``stats``.

    ``stats`` (from :func:`replicate_statistics`, possibly persisted) supplies the weights,
    so this pass is a weighted sum: no ranks are computed again.
    """
    weights = stats.map_blocks(
        _row_weights, chunks=(plan.chunks, (1,)), dtype=np.float64, meta=np.empty((0, 0))
    )
    return da.map_blocks(
        _modz_block,
        _grouped(x, plan),
        _rowwise(plan.codes, plan),
        _rowwise(np.asarray(ids, dtype=object)[plan.order], plan),
        weights,
        clip=clip,
        chunks=(plan.groups_per_chunk, (x.shape[1],)),
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
    )
