"""Scoring many queries against every signature of an index, one signature block a task.

Each task reads the union of the batch's genes for its block of signatures (one gene row
per Zarr chunk, so nothing else is read) into a gene-major block, then scores every set of
every query in one pass over the block's signatures, O(G + N/64) per set and signature
(:mod:`.es`; the kernel releases the GIL, so Dask's threads score blocks in parallel).
The result is ``(5, query, sig)``: WTCS (or CS), ES up, ES down and the two
leading-edge fractions.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np

from cmapdask.connectivity.es import Metric, Tail, combine_wtcs, es_of_sets
from cmapdask.connectivity.index import IndexHandle
from cmapdask.connectivity.validation import QuerySet
from cmapdask.errors import QueryError

__all__ = ["FIELDS", "query_tails", "score_block", "score_index"]

FIELDS = ("cs", "cs_up", "cs_dn", "leadf_up", "leadf_dn")


def query_tails(qs: QuerySet, tail: Tail) -> list[str]:
    """The tail each query is scored with: the option, narrowed to the sets present."""
    out = []
    for name, u, d in zip(qs.names, qs.up, qs.down, strict=False):
        if tail == "both":
            out.append("both" if u.size and d.size else ("up" if u.size else "down"))
        elif (tail == "up" and not u.size) or (tail == "down" and not d.size):
            raise QueryError(f"query {name!r}: a {tail}-tailed query needs a {tail} set")
        else:
            out.append(tail)
    return out


def score_block(
    ranks,
    scores,
    qs: QuerySet,
    tails,
    n_genes: int,
    metric: Metric,
    *,
    layout: Literal["sig", "gene"] = "sig",
):
    """Score every query on one block: ``ranks``/``scores`` are ``(sig, union genes)``
    (``layout="gene"``: ``(union genes, sig)``, as the index stores them).

    Returns float32 ``(5, query, sig)`` in the order of :data:`FIELDS`; a tail that is not
    used is 0 (ES) and NaN (leading edge).
    """
    union = qs.union
    n = ranks.shape[1] if layout == "gene" else ranks.shape[0]
    nq = len(qs.names)
    out = np.zeros((5, nq, n), dtype=np.float32)
    out[3:] = np.nan
    sets, slots = [], []
    for q, (u, d, tail) in enumerate(zip(qs.up, qs.down, tails, strict=False)):
        for k, (label, genes) in enumerate((("up", u), ("down", d))):
            if genes.size and tail != ("down" if label == "up" else "up"):
                sets.append(np.searchsorted(union, genes))
                slots.append((q, k))
    # all sets in one pass over the block: each signature's row is fetched once
    es, lead = es_of_sets(ranks, scores, sets, n_genes, metric=metric, layout=layout)
    es_up, es_dn = np.zeros((nq, n)), np.zeros((nq, n))
    for (q, k), e, lf in zip(slots, es, lead, strict=False):
        (es_up if k == 0 else es_dn)[q] = e
        out[3 + k, q] = lf
    for q, tail in enumerate(tails):
        out[0, q] = combine_wtcs(es_up[q], es_dn[q], tail=tail)
    out[1], out[2] = es_up, es_dn
    return out


def _score_range(handle: IndexHandle, qs, tails, metric, start, stop, sig_pos=None):
    genes = qs.union
    if sig_pos is None:
        # as stored, gene-major: the kernel transposes a cache-sized tile at a time
        r, s = handle.read_gene_major(genes, start, stop, scores=metric == "wtcs")
        return score_block(r, s, qs, tails, handle.n_genes, metric, layout="gene")
    pos = sig_pos[start:stop]
    if 2 * genes.size < handle.n_genes:
        # a few genes (a query, a scored subset): only their rows, the chosen signatures'
        r, s = handle.read_gene_major_at(genes, pos, scores=metric == "wtcs")
        return score_block(r, s, qs, tails, handle.n_genes, metric, layout="gene")
    # most genes (introspect's batches of top/bottom sets): whole signatures
    r, s = handle.read_sigs(pos)
    r, s = r[:, genes], (s[:, genes] if metric == "wtcs" else None)
    return score_block(r, s, qs, tails, handle.n_genes, metric)


def score_index(
    handle: IndexHandle,
    qs: QuerySet,
    *,
    metric: Metric = "wtcs",
    tail: Tail = "both",
    chunk_rows: int | None = None,
    sig_pos: np.ndarray | None = None,
) -> da.Array:
    """Lazy ``(5, query, sig)`` scores of a batch of queries against an index.

    Parameters
    ----------
    handle : IndexHandle
    qs : QuerySet
    metric : {"wtcs", "cs"}
        Weighted (``wtcs``) or unweighted (``cs``) ES.
    tail : {"both", "up", "down"}
        See :func:`cmapdask.connectivity.es.combine_wtcs`.
    chunk_rows : int, optional
        Signatures per task (rounded to the index's blocks).
    sig_pos : array of int, optional
        Score only these signatures (ascending positions in the index): a scored subset
        or introspect's set. Few genes are read as their rows of the chosen signatures
        only (:meth:`IndexHandle.read_gene_major_at`), many as whole signatures.

    Notes
    -----
    Reads only the batch's genes: ``6 * n_union_genes * n_sig`` bytes in all, one
    ``preadv`` per gene row and index block on local stores. A task holds its block of
    ``(union, sig)`` ranks and scores as stored (no transposed copy) plus
    ``5 * query * sig`` float32 results. Time is ``n_sig * sum(G + N / 64)`` over the
    sets of the batch, spread over Dask's threads.
    """
    tails = query_tails(qs, tail)
    if sig_pos is None:
        chunks = handle.sig_chunks(chunk_rows)
    else:
        sig_pos = np.asarray(sig_pos, dtype=np.int64)
        if chunk_rows is None:  # as the index of a store of only these would be split
            chunks = handle.sig_chunks(None, n=sig_pos.size)
        else:
            rows = chunk_rows
            chunks = tuple(min(rows, sig_pos.size - i) for i in range(0, sig_pos.size, rows))
    nq = len(qs.names)
    h, q = dask.delayed(handle, pure=True), dask.delayed(qs, pure=True)
    p = dask.delayed(sig_pos, pure=True) if sig_pos is not None else None
    blocks, start = [], 0
    for size in chunks:
        task = dask.delayed(_score_range, pure=True)(h, q, tails, metric, start, start + size, p)
        blocks.append(da.from_delayed(task, shape=(5, nq, size), dtype=np.float32))
        start += size
    if not blocks:
        return da.zeros((5, nq, 0), dtype=np.float32)
    return da.concatenate(blocks, axis=2)
