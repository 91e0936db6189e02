"""The query index: each signature's rank and score of every gene, stored gene-major.

A query needs, for every signature, only the ranks and scores of its own genes. Stored as
``(gene, sig)`` with one gene of one block of signatures per (uncompressed) Zarr chunk, a
query reads exactly its genes' rows across all signatures and never re-sorts a signature
(ALGORITHMS.md §2). A block holds about ``connectivity.index_chunk_mb`` (256 MiB) of all
genes, because ranking needs whole signatures: 45,000 signatures per block in landmark
space, 4,400 in BING space (more chunk objects; raise the setting on big-memory workers).

Layout of member ``index/<space>``::

    rank    int16/int32 (gene, sig)  stable descending rank within the space (1 = top)
    score   float32     (gene, sig)  the signature's score (|score| is the hit weight)
    gene    the space's gene ids (in store order); gene_symbol where the store has it
"""

from __future__ import annotations

import asyncio
import os
import sys

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cmapdask import config
from cmapdask.connectivity.es import transpose
from cmapdask.connectivity.ranks import rank_descending, rank_dtype
from cmapdask.errors import InputError, StoreError
from cmapdask.io.atomic import join
from cmapdask.io.pending import deferrable
from cmapdask.io.store import has_member, open_member, open_store, write_member, zarr_options
from cmapdask.model.spaces import feature_genes as space_genes  # the one feature-space rule
from cmapdask.model.types import Space

__all__ = ["Space", "space_genes", "build_index", "open_index", "index_name", "IndexHandle"]


def index_name(space: Space) -> str:
    """The member name of a space's index (``index/<space>``)."""
    return f"index/{space}"


def index_chunk_rows(n_genes: int, *, chunk_mb: float | None = None) -> int:
    """Signatures per index block: about ``chunk_mb`` MiB of rank + score for all genes."""
    chunk_mb = chunk_mb or float(config.get("connectivity.index_chunk_mb", 256))
    return max(1, int(chunk_mb * 2**20) // (6 * max(1, n_genes)))


def _block_rows(n_sig: int, n_genes: int, chunk_rows: int | None) -> int:
    """Signatures per index chunk, sized to the data: an uncompressed Zarr chunk is
    stored whole, so a block larger than the store (or an uneven last block) would be
    written padded (2,000 signatures in 45,000-row chunks: 268 MB for 7.8 MB of data).
    The default evens the blocks out: at most one row of padding per block."""
    if chunk_rows:
        return max(1, min(int(chunk_rows), n_sig))
    most = index_chunk_rows(n_genes)
    blocks = -(-n_sig // most)
    return max(1, -(-n_sig // blocks))


@deferrable("query index member", lambda a: join(str(a["store_url"]), index_name(a["space"])))
def build_index(
    store_url,
    *,
    space: Space = "bing",
    storage_options: dict | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
    compute: bool = True,
) -> str:
    """Compute and add the query index ``index/<space>`` to a store.

    Parameters
    ----------
    store_url : str
        The store (local path or fsspec URL).
    space : {"landmark", "bing", "all"}
        Feature space (:func:`cmapdask.model.feature_genes`); ranks are taken within it,
        so N is its number of genes.
    chunk_rows : int, optional
        Signatures per index block (default from :func:`index_chunk_rows`).
    progress : bool
        Ignored (kept for callers): the command line draws progress.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        The member's URL.

    Notes
    -----
    Reads ``expr`` once, one block of whole signatures per task; each task holds that
    block's space genes three times (scores, ranks, transposes): about
    ``3 * 6 * N * chunk_rows`` bytes, 256 MiB of output per block by default. Time is
    ``n_sig * N log N`` spread over the workers; the output is ``6 * N * n_sig`` bytes.
    Writing goes through ``write_member`` (atomic; ``expr`` is never rewritten).
    """
    ds = open_store(store_url, storage_options=storage_options)
    if ds.sizes["sig"] == 0:
        raise InputError(f"{store_url}: the store has no signatures to index")
    if chunk_rows is not None and int(chunk_rows) < 1:
        raise InputError(f"chunk_rows must be a positive integer, not {chunk_rows!r}")
    sel = space_genes(ds, space)
    n = sel.size
    rows = _block_rows(ds.sizes["sig"], n, chunk_rows)
    expr = ds["expr"].data
    if sel.size != ds.sizes["gene"] or not np.array_equal(sel, np.arange(n)):
        expr = expr[:, sel]
    expr = expr.rechunk((rows, -1))
    _check_finite(ds, expr, store_url, space)
    ranks = expr.map_blocks(_rank_block, dtype=rank_dtype(n), url=str(store_url))
    out = xr.Dataset(
        {"rank": (("gene", "sig"), ranks.T), "score": (("gene", "sig"), expr.T.astype(np.float32))},
        coords={"gene": ds["gene"].values[sel]},
    )
    for f in ("gene_symbol", "pr_gene_symbol"):
        if f in ds.coords and ds[f].dims == ("gene",):
            out = out.assign_coords(gene_symbol=("gene", ds[f].values[sel]))
            break
    # Uncompressed: ranks and scores hardly compress, and a query then reads each gene
    # row's chunk as raw bytes (see IndexHandle.read), without per-chunk decoding work.
    enc = {v: {"chunks": (1, rows), "compressors": None} for v in ("rank", "score")}
    sig = ds["sig"].values
    prov = {
        "kind": "query_index",
        "space": space,
        "n_genes": int(n),
        "n_sig": int(ds.sizes["sig"]),
        "sig_first": str(sig[0]) if sig.size else "",
        "sig_last": str(sig[-1]) if sig.size else "",
        "chunk_rows": rows,
        "rank_convention": "stable descending (ALGORITHMS.md §1)",
        "store_provenance": {
            k: v
            for k, v in ds.attrs.get("cmapdask", {}).items()
            if k in ("created", "package_version", "source")
        },
    }
    return write_member(
        store_url,
        index_name(space),
        out,
        family="index",
        storage_options=storage_options,
        provenance=prov,
        encoding=enc,
        progress=progress,
    )


def _check_finite(ds, expr, url, space) -> None:
    """Refuse, before anything is written, signatures with NaN or infinite scores.

    A store whose conversion counted none (``nonfinite`` in its provenance) is trusted;
    otherwise the space's columns are read once to find them.
    """
    rec = ds.attrs.get("cmapdask", {}).get("nonfinite")
    if isinstance(rec, dict) and rec.get("n_sig") == 0:
        return
    ok = np.asarray(da.isfinite(expr).all(axis=1).compute())
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise InputError(
            f"{url}: {bad.size} signature(s) have NaN or infinite scores in space {space!r}, "
            f"e.g. {str(ds['sig'].values[bad[0]])!r}; they cannot be ranked (remove or "
            "repair them and convert again)"
        )


def _rank_block(block, url):
    if np.isnan(block).any():
        raise InputError(f"{url}: a signature has NaN scores; it cannot be ranked")
    return rank_descending(block)


class IndexHandle:
    """What a query needs to read an index: small, picklable, opens Zarr inside tasks."""

    def __init__(self, store_url, space: Space, *, storage_options: dict | None = None):
        name = index_name(space)
        if not has_member(store_url, name, storage_options=storage_options):
            raise StoreError(
                f"{store_url}: no query index for space {space!r}; build it with "
                f"`cmapdask index {store_url} --space {space}`"
            )
        meta = open_member(store_url, name, storage_options=storage_options)
        self.store_url = str(store_url)
        self.space = space
        self.url = join(str(store_url), name)
        self.storage_options = storage_options
        self.genes = meta["gene"].values
        self.symbols = meta["gene_symbol"].values if "gene_symbol" in meta.coords else None
        self.n_genes = int(meta.sizes["gene"])
        self.n_sig = int(meta.sizes["sig"])
        self.provenance = dict(meta.attrs.get("cmapdask", {}))
        self.chunk_rows = int(
            self.provenance.get("chunk_rows")
            or meta["rank"].encoding.get("preferred_chunks", {}).get("sig", self.n_sig)
        )

    def sig_chunks(self, target_rows: int | None = None, n: int | None = None) -> tuple[int, ...]:
        """Signature blocks aligned with the index's own blocks (of ``n`` signatures, all
        by default: a scored subset gets the blocks a store of only it would have)."""
        rows = self.chunk_rows
        if target_rows and target_rows > rows:
            rows = max(rows, target_rows // rows * rows)
        full, rest = divmod(self.n_sig if n is None else n, rows)
        return (rows,) * full + ((rest,) if rest else ())

    def _arrays(self):
        # opened once per handle and process (a few ms each; the arrays are read-only)
        arrays = self.__dict__.get("_opened")
        if arrays is None:
            opts = zarr_options(self.url, self.storage_options)
            g = zarr.open_group(self.url, mode="r", storage_options=opts, use_consolidated=False)
            arrays = self._opened = (g["rank"], g["score"])
        return arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_opened", None)  # open Zarr arrays stay in the process that opened them
        return state

    def read(self, genes: np.ndarray, start: int, stop: int, *, scores: bool = True):
        """``(rank, score)`` of ``genes`` (sorted positions) for signatures [start, stop).

        Returned signature-major, ``(stop - start, len(genes))``; see
        :meth:`read_gene_major` for the layout as stored.
        """
        r, s = self.read_gene_major(genes, start, stop, scores=scores)
        return transpose(r), (transpose(s) if s is not None else None)

    def read_gene_major(self, genes: np.ndarray, start: int, stop: int, *, scores: bool = True):
        """``(rank, score)`` of ``genes`` for signatures [start, stop), ``(len(genes), n)``.

        Each gene row of each index block is one uncompressed chunk: read as raw bytes
        straight into the output row (``preadv`` on local stores; concurrent fetches
        through the Zarr store otherwise), which is ~20x faster than Zarr's orthogonal
        indexing for a few hundred scattered rows.
        """
        rank, score = self._arrays()
        genes = np.asarray(genes, dtype=np.int64)
        r = _read_rows(rank, genes, start, stop)
        s = _read_rows(score, genes, start, stop) if scores else None
        return r, s

    def read_gene_major_at(
        self, genes: np.ndarray, sig_pos: np.ndarray, *, scores: bool = True, gap: int = 1024
    ):
        """``(rank, score)`` of ``genes`` for the chosen signatures only (ascending
        positions), ``(len(genes), len(sig_pos))``.

        Chosen signatures at most ``gap`` apart are read as one range of each gene row
        (one read instead of many tiny ones), then the chosen columns are kept: a sparse
        subset never reads other genes' rows nor the index blocks between its runs.
        """
        pos = np.asarray(sig_pos, dtype=np.int64)
        cut = np.flatnonzero(np.diff(pos) > gap) + 1
        ranks, values = [], []
        for run in np.split(pos, cut) if pos.size else []:
            lo = int(run[0])
            r, s = self.read_gene_major(genes, lo, int(run[-1]) + 1, scores=scores)
            ranks.append(r[:, run - lo])
            values.append(s[:, run - lo] if s is not None else None)
        if not ranks:
            rank, score = self._arrays()
            empty = np.empty((np.size(genes), 0), dtype=rank.dtype)
            return empty, (np.empty((np.size(genes), 0), dtype=score.dtype) if scores else None)
        return np.concatenate(ranks, axis=1), (np.concatenate(values, axis=1) if scores else None)

    def read_sigs(self, sig_pos: np.ndarray):
        """All genes' ``(rank, score)`` of chosen signatures, ``(len(sig_pos), N)``."""
        rank, score = self._arrays()
        sel = (slice(None), np.asarray(sig_pos, dtype=np.int64))
        return (
            np.ascontiguousarray(rank.get_orthogonal_selection(sel).T),
            np.ascontiguousarray(score.get_orthogonal_selection(sel).T),
        )


def open_index(store_url, *, space: Space = "bing", storage_options: dict | None = None):
    """The index of a space (``StoreError`` saying how to build it when absent)."""
    return IndexHandle(store_url, space, storage_options=storage_options)


def _raw_ok(arr) -> bool:
    codecs = arr.metadata.codecs
    return (
        len(codecs) == 1
        and type(codecs[0]).__name__ == "BytesCodec"
        and getattr(codecs[0], "endian", None) is not None
        and str(getattr(codecs[0].endian, "value", codecs[0].endian)) == sys.byteorder
        and arr.chunks[0] == 1
        and getattr(arr, "shards", None) is None
    )


def _read_rows(arr, genes: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``arr[genes, start:stop]`` for a ``(gene, sig)`` array chunked ``(1, rows)``."""
    n = stop - start
    if n == 0 or genes.size == 0:
        return np.empty((genes.size, n), dtype=arr.dtype)
    if not _raw_ok(arr):
        return np.ascontiguousarray(arr.get_orthogonal_selection((genes, slice(start, stop))))
    rows = arr.chunks[1]
    first, last = start // rows, (stop - 1) // rows
    encode = arr.metadata.encode_chunk_key
    keys, where = [], []
    for c in range(first, last + 1):
        lo, hi = max(start, c * rows), min(stop, (c + 1) * rows)
        for k, g in enumerate(genes.tolist()):
            keys.append(encode((g, c)))
            where.append((k, lo - c * rows, hi - c * rows, lo - start))
    dtype = arr.dtype
    fill = arr.metadata.fill_value
    gene_major = np.empty((genes.size, n), dtype=dtype)
    local = _local_dir(arr)
    if local is not None:
        _read_local(local, keys, where, gene_major, fill)
        return gene_major
    path = arr.store_path

    async def fetch():
        return await asyncio.gather(
            *[(path / k).get(prototype=default_buffer_prototype()) for k in keys]
        )

    for buf, (k, a, b, o) in zip(sync(fetch()), where, strict=False):
        if buf is None:  # chunks equal to the fill value are not stored
            gene_major[k, o : o + b - a] = fill
        else:
            gene_major[k, o : o + b - a] = np.frombuffer(buf.as_buffer_like(), dtype=dtype)[a:b]
    return gene_major


def _local_dir(arr):
    """The array's folder when it lives in a local directory store, else None."""
    store = arr.store_path.store
    root = getattr(store, "root", None)
    if type(store).__name__ != "LocalStore" or root is None:
        return None
    return os.path.join(str(root), arr.store_path.path)


def _pread_into(fd, buf, offset) -> int:
    """Read ``len(buf)`` bytes at ``offset`` into ``buf``; the count read."""
    want, got = buf.nbytes, 0
    while got < want:
        if hasattr(os, "preadv"):
            more = os.preadv(fd, [buf[got:]], offset + got)
        else:  # no preadv (Windows): one copy
            raw = os.pread(fd, want - got, offset + got)
            buf[got : got + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            more = len(raw)
        if not more:
            break
        got += more
    return got


def _read_local(folder, keys, where, out, fill):
    # preadv only the bytes of [start, stop) of each gene row, straight into its row of
    # the output: no whole-chunk reads, no intermediate bytes, no event loop
    item = out.dtype.itemsize
    flat = out.reshape(-1).view(np.uint8)
    row = out.shape[1] * item
    for key, (k, a, b, o) in zip(keys, where, strict=False):
        fn = os.path.join(folder, *key.split("/"))
        try:
            fd = os.open(fn, os.O_RDONLY)
        except FileNotFoundError:  # chunks equal to the fill value are not stored
            out[k, o : o + b - a] = fill
            continue
        lo = k * row + o * item
        want = (b - a) * item
        try:
            got = _pread_into(fd, flat[lo : lo + want], a * item)
        finally:
            os.close(fd)
        if got != want:
            raise StoreError(f"{fn}: index chunk shorter than expected")
