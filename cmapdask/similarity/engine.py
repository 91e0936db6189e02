"""Array layer: the task graph of blockwise top-k similarity and of full similarity matrices.

Works on dask arrays of shape (signatures, genes) whose gene axis is one chunk. The graph is
written out explicitly (``HighLevelGraph``): one standardisation task per signature block,
one matrix product with top-k per planned block pair (:mod:`.plan`), then a tree of merges
per row block. Generic ``da.dot`` is avoided on purpose: it keeps whole result blocks of
the N x N product alive, the known memory blowup at this scale.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cmapdask.similarity.kernels import Metric, gram, merge_key_parts, pair_keys, standardize
from cmapdask.similarity.plan import BlockPlan, block_bounds, merge_tree, plan_blocks

__all__ = ["TopK", "standardized", "topk_arrays", "gram_array"]


class TopK(NamedTuple):
    """Lazy top-k result: (n, k) arrays and the validity of rows and reference signatures."""

    top_score: da.Array
    top_index: da.Array
    bottom_score: da.Array
    bottom_index: da.Array
    valid: da.Array
    ref_valid: da.Array
    plan: BlockPlan


def _add_layer(hlg: HighLevelGraph, name: str, dsk: dict, deps: set[str]) -> HighLevelGraph:
    """``hlg`` plus one layer ``name`` that depends on the layers ``deps``."""
    layers, dependencies = dict(hlg.layers), dict(hlg.dependencies)
    layers[name], dependencies[name] = dsk, set(deps)
    return HighLevelGraph(layers, dependencies)


def _whole_genes(x: da.Array) -> da.Array:
    return x if len(x.chunks[1]) == 1 else x.rechunk({1: -1})


def standardized(x: da.Array, metric: Metric) -> tuple[str, HighLevelGraph, da.Array, da.Array]:
    """Standardise each signature block once: ``(layer name, graph, z, valid)``.

    Tasks ``(name, i)`` hold the tuple ``(z_i, valid_i)``; ``z`` and ``valid`` are dask views.
    """
    x = _whole_genes(x)
    name = "similarity-standardize-" + tokenize(x, metric)
    dsk = {(name, i): (standardize, (x.name, i, 0), metric) for i in range(len(x.chunks[0]))}
    hlg = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    zname, vname = name.replace("standardize", "z"), name.replace("standardize", "valid")
    zg = {(zname, i, 0): (operator.getitem, (name, i), 0) for i in range(len(x.chunks[0]))}
    vg = {(vname, i): (operator.getitem, (name, i), 1) for i in range(len(x.chunks[0]))}
    z = da.Array(_add_layer(hlg, zname, zg, {name}), zname, x.chunks, np.float32)
    v = da.Array(_add_layer(hlg, vname, vg, {name}), vname, (x.chunks[0],), bool)
    return name, hlg, z, v


def standardized_pair(x: da.Array, ref: da.Array | None, metric: Metric):
    """Standardised blocks of ``x`` and of ``ref`` (``x`` itself when None) and the plan of
    block pairs: ``(sname, shlg, valid, rname, rhlg, ref_valid, plan)``; shared by the
    top-k graph and the recall pass."""
    x = _whole_genes(x)
    sname, shlg, _, valid = standardized(x, metric)
    if ref is None:
        return sname, shlg, valid, sname, shlg, valid, plan_blocks(x.chunks[0])
    ref = _whole_genes(ref)
    rname, rhlg, _, ref_valid = standardized(ref, metric)
    return sname, shlg, valid, rname, rhlg, ref_valid, plan_blocks(x.chunks[0], ref.chunks[0])


def _pair_task(sa, sb, k, a_offset, b_offset, diagonal, both):
    return pair_keys(
        sa[0],
        sa[1],
        sb[0],
        sb[1],
        k=k,
        a_offset=a_offset,
        b_offset=b_offset,
        diagonal=diagonal,
        both=both,
    )


def _merge_parts(parts, k, final):
    return merge_key_parts(list(parts), k, final=final)


def topk_arrays(
    x: da.Array,
    ref: da.Array | None = None,
    *,
    metric: Metric,
    k: int,
    split_every: int = 8,
) -> TopK:
    """Top-k most similar and most opposite reference signatures of every row of ``x``.

    ``ref=None`` is self-similarity (a signature is never its own neighbour; only the upper
    triangle of block pairs is multiplied). Indices are positions in ``ref`` (or ``x``).
    Callers validate ``k``; this layer only builds the graph.
    """
    sname, shlg, valid, rname, rhlg, ref_valid, plan = standardized_pair(x, ref, metric)
    rb, cb = block_bounds(plan.row_chunks), block_bounds(plan.col_chunks)
    tok = tokenize(sname, rname, k, split_every, plan.mode)
    pname, xname, mname, oname = (
        f"similarity-{s}-{tok}" for s in ("pair", "side", "merge", "topk")
    )
    selfmode = plan.mode == "self"
    dsk: dict = {}
    for i, j in plan.pairs:
        diagonal, both = selfmode and i == j, selfmode and i != j
        dsk[(pname, i, j)] = (
            _pair_task,
            (sname, i),
            (rname, j),
            k,
            int(rb[i]),
            int(cb[j]),
            diagonal,
            both,
        )
        # each side its own key, so the row side is freed once merged even while the
        # column side still waits for its row block's merge
        for side in (0, 1) if both else (0,):
            dsk[(xname, i, j, side)] = (operator.getitem, (pname, i, j), side)
    for r, sources in enumerate(plan.sources):
        levels = merge_tree(len(sources), split_every)
        for lvl, ranges in enumerate(levels):
            for g, (s0, s1) in enumerate(ranges):
                final = lvl == len(levels) - 1  # the root sorts and decodes
                if lvl == 0:
                    res = [
                        (xname, i, j, 0 if side == "row" else 1) for i, j, side in sources[s0:s1]
                    ]
                    task = (_merge_parts, res, k, final)
                else:
                    prev_parts = [(mname, r, lvl - 1, q) for q in range(s0, s1)]
                    task = (_merge_parts, prev_parts, k, final)
                dsk[(mname, r, lvl, g)] = task
            prev = (mname, r, lvl, 0)
        dsk[(oname, r)] = prev  # alias: the last merge is the row block's result
    hlg = _add_layer(HighLevelGraph.merge(shlg, rhlg), oname, dsk, {sname, rname})
    chunks = (plan.row_chunks, (k,))
    outs = []
    for q, dtype in enumerate((np.float32, np.int64, np.float32, np.int64)):
        name = f"{oname}-{q}"
        layer = {(name, r, 0): (operator.getitem, (oname, r), q) for r in range(len(plan.sources))}
        outs.append(da.Array(_add_layer(hlg, name, layer, {oname}), name, chunks, dtype))
    return TopK(*outs, valid=valid, ref_valid=ref_valid, plan=plan)


def gram_array(x: da.Array, ref: da.Array | None = None, *, metric: Metric) -> da.Array:
    """Full similarity matrix, blockwise: one float32 product per block pair, NaN for invalid."""
    _, _, z, v = standardized(x, metric)
    if ref is None:
        zr, vr = z, v
    else:
        _, _, zr, vr = standardized(ref, metric)
    return da.blockwise(
        gram, "ij", z, "ik", v, "i", zr, "jk", vr, "j", dtype=np.float32, concatenate=True
    )
