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

__all__ = ["GroupPlan", "plan_groups", "map_groups_same", "map_groups_reduce"]


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
    for block, (dest, src) in zip(blocks, where):
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
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(codes)]):
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


def _reduce_block(x, codes, ids, *, landmarks, columns, part, clip, weight_floor):
    kernels.check_finite(x, ids[:, 0])
    codes = codes[:, 0]
    sizes = np.diff(np.r_[0, np.flatnonzero(np.diff(codes)) + 1, len(codes)])
    modz, weights, stats = kernels.modz_groups(
        x, sizes, landmarks, clip=clip, weight_floor=weight_floor,
        columns=columns if part == "modz" else None,
    )
    if part == "modz":
        return modz
    # "stats": the statistics and CMap's distil_wt text (last column), one row per group;
    # one object array so that ranks are computed once for both
    packed = np.empty((len(sizes), stats.shape[1] + 1), dtype=object)
    packed[:, :-1] = stats
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    for g, (s, n) in enumerate(zip(starts.tolist(), sizes.tolist())):
        packed[g, -1] = ",".join(f"{w:.2f}" for w in weights[s : s + n])
    return packed


def map_groups_reduce(
    x: da.Array,
    plan: GroupPlan,
    *,
    ids: np.ndarray,
    landmarks: np.ndarray,
    part: str,
    clip: float,
    weight_floor: float,
) -> da.Array:
    """Lazily reduce each replicate group to one row (MODZ, or statistics and weights).

    ``part="modz"``: (n_groups, n_gene) float32 from all genes; ``"stats"``: (n_groups,
    len(STAT_FIELDS) + 1) object, the statistics then the ``distil_wt`` text, from the
    landmark columns alone (so only those are read).
    """
    if part == "modz":
        xs, lm, columns, width, dtype = _grouped(x, plan), landmarks, slice(None), x.shape[1], np.float32
    else:  # select the landmarks before the reorder so only they are read
        every = np.array_equal(landmarks, np.arange(x.shape[1]))
        xs, lm, columns = _grouped(x if every else x[:, landmarks], plan), slice(None), None
        width, dtype = len(kernels.STAT_FIELDS) + 1, object
    return da.map_blocks(
        _reduce_block,
        xs,
        _rowwise(plan.codes, plan),
        _rowwise(np.asarray(ids, dtype=object)[plan.order], plan),
        landmarks=lm,
        columns=columns,
        part=part,
        clip=clip,
        weight_floor=weight_floor,
        chunks=(plan.groups_per_chunk, (width,)),
        dtype=dtype,
        meta=np.empty((0, 0), dtype),
    )
