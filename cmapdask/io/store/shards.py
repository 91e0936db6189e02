"""Sharded ``expr``: each store chunk of whole signatures (the chunk policy of
:mod:`~cmapdask.io.store.layout`) is a Zarr v3 shard of small inner chunks of a few whole
signatures, so a signature can be read without its neighbours.

The shards follow the Zarr v3 ``sharding_indexed`` codec exactly (inner codecs ``bytes``
little-endian + blosc, index ``bytes`` + ``crc32c`` at the end), so any Zarr v3 reader
opens the store. cmapdask encodes and decodes them here instead, one blosc call per inner
chunk: zarr's codec pipeline spends a fraction of a millisecond per inner chunk, which
would make a full scan of a store many times slower than reading whole chunks.

Reading: a whole shard is one request; a few signatures of a shard are one request for
its index (``16 * inner chunks + 4`` bytes at its end) and one per run of adjacent inner
chunks, all of a task's requests issued together (:meth:`ShardedMatrix.take`).
"""

from __future__ import annotations

import numpy as np
from numcodecs import Blosc
from numcodecs.checksum32 import CRC32C

from cmapdask import config
from cmapdask.errors import StoreError
from cmapdask.io.atomic import is_local, join, url_to_fs

__all__ = [
    "ShardedMatrix",
    "encode_shard",
    "inner_rows",
    "inner_target",
    "sharded_matrix",
    "write_shard",
]

_EMPTY = np.uint64(2**64 - 1)  # the spec's offset/nbytes of an inner chunk never written
_CRC = CRC32C()


def inner_target(n_gene: int) -> int:
    """Signatures in about ``cmapdask.store.inner_kb`` KiB of float32 (at least one)."""
    kb = float(config.get("store.inner_kb", 256) or 256)  # 0 (plain chunks): the default
    return max(1, int(kb * 1024) // max(1, 4 * n_gene))


def inner_rows(shard_rows: int, n_gene: int) -> int:
    """Signatures per inner chunk: the largest divisor of ``shard_rows`` not above
    :func:`inner_target`."""
    target = inner_target(n_gene)
    if target >= shard_rows:
        return max(1, shard_rows)
    return next(d for d in range(target, 0, -1) if shard_rows % d == 0)


_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def _codec(blosc: dict) -> Blosc:
    """The array's own inner blosc codec (its metadata is the one record of it)."""
    return Blosc(cname=blosc["cname"], clevel=blosc["clevel"], shuffle=_SHUFFLE[blosc["shuffle"]])


def encode_shard(
    values: np.ndarray, *, shard_rows: int, inner: int, blosc: dict, fill=np.nan
) -> bytes:
    """The bytes of one shard holding ``values`` (its first ``len(values)`` signatures; a
    last, short shard's missing inner chunks are marked empty, as Zarr does)."""
    codec = _codec(blosc)
    values = np.ascontiguousarray(values, dtype="<f4")
    n, n_gene = values.shape
    index = np.full((shard_rows // inner, 2), _EMPTY, dtype="<u8")
    parts, offset = [], 0
    for k in range(-(-n // inner)):
        block = values[k * inner : (k + 1) * inner]
        if block.shape[0] < inner:  # the array's edge: padded with the fill value
            block = np.concatenate([block, np.full((inner - block.shape[0], n_gene), fill, "<f4")])
        data = codec.encode(block)
        index[k] = (offset, len(data))
        offset += len(data)
        parts.append(data)
    parts.append(_CRC.encode(index.tobytes()))
    return b"".join(parts)


class ShardedMatrix:
    """Array-like over a sharded ``expr`` (for :func:`dask.array.from_array`).

    Pickles as a few numbers and the store's URL and options; each read fetches only the
    shards, or the inner chunks, it covers.
    """

    def __init__(self, url, storage_options, *, shape, shard_rows, inner, fill, blosc, key):
        self.url, self.storage_options, self.blosc = str(url), storage_options, blosc
        self.shape, self.ndim, self.dtype = tuple(shape), 2, np.dtype(np.float32)
        self.shard_rows, self.inner, self.fill = int(shard_rows), int(inner), fill
        self.n_inner = self.shard_rows // self.inner
        self.key = key  # shard number -> object key below the array, e.g. "c/3/0"

    def __dask_tokenize__(self):
        return (type(self).__name__, self.url, self.shape, self.shard_rows, self.inner)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (key + (slice(None),) * 2)[:2]
        n = self.shape[0]
        if isinstance(rows, slice) and rows.indices(n)[2] == 1:  # a dask block: no copies
            start, stop, _ = rows.indices(n)
            out = self.take(np.arange(start, max(start, stop)))
            return out[:, cols]  # a view when cols is a slice
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(n))
        rows = np.asarray(rows, dtype=np.int64)
        scalar = rows.ndim == 0
        rows = np.where(rows < 0, rows + n, rows).reshape(-1)
        uniq, inverse = np.unique(rows, return_inverse=True)
        out = self.take(uniq)[inverse][:, cols]
        return out[0] if scalar else out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The signatures at sorted, distinct positions ``rows``, all genes."""
        out = np.empty((rows.size, self.shape[1]), np.float32)
        if rows.size == 0:
            return out
        shard = rows // self.shard_rows
        first = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]])
        groups = np.split(np.arange(rows.size), first[1:])
        whole, partial = [], []
        for g in groups:
            s = int(shard[g[0]])
            chunks = np.unique((rows[g] - s * self.shard_rows) // self.inner)
            # most of a shard wanted: one request for all of it beats one per chunk
            (whole if chunks.size * 4 >= self._chunks_in(s) else partial).append((s, g, chunks))
        fs, root = url_to_fs(self.url, self.storage_options)
        blobs = self._fetch(fs, [(self._path(root, s), None, None) for s, _, _ in whole])
        for (s, g, chunks), blob in zip(whole, blobs, strict=True):
            index = self._index(blob, s)
            self._fill(out, rows, g, s, chunks, index, lambda c, b=blob, i=index: _piece(b, i, c))
        if partial:
            tail = self.n_inner * 16 + 4
            tails = self._fetch(fs, [(self._path(root, s), -tail, None) for s, _, _ in partial])
            indexes = [self._index(t, s) for t, (s, _, _) in zip(tails, partial, strict=True)]
            reqs, where = [], []
            for (s, _, chunks), index in zip(partial, indexes, strict=True):
                for run in _runs(chunks, index):
                    where.append((s, run))
                    lo = int(index[run[0], 0])
                    hi = int(index[run[-1], 0] + index[run[-1], 1])
                    reqs.append((self._path(root, s), lo, hi))
            got: dict = {}  # (shard, inner chunk) -> (bytes of its run, the run's start)
            for (s, run), blob in zip(where, self._fetch(fs, reqs), strict=True):
                for c in run:
                    got[(s, c)] = (blob, run[0])
            for (s, g, chunks), index in zip(partial, indexes, strict=True):

                def piece(c, s=s, index=index):
                    blob, c0 = got[(s, c)]
                    start = int(index[c, 0] - index[c0, 0])
                    return memoryview(blob)[start : start + int(index[c, 1])]

                self._fill(out, rows, g, s, chunks, index, piece)
        return out

    # ---------------------------------------------------------------------------- parts
    def _chunks_in(self, s: int) -> int:
        rows = min(self.shard_rows, self.shape[0] - s * self.shard_rows)
        return -(-rows // self.inner)

    def _path(self, root: str, s: int) -> str:
        return join(root, self.key(s))

    def _index(self, blob, s: int) -> np.ndarray:
        tail = self.n_inner * 16 + 4
        if blob is None or len(blob) < tail:
            raise StoreError(f"{self.url}: expr shard {s} is missing or truncated")
        try:
            raw = _CRC.decode(bytes(memoryview(blob)[-tail:]))
        except RuntimeError:
            raise StoreError(f"{self.url}: expr shard {s} is corrupt (index checksum)") from None
        return np.frombuffer(raw, "<u8").reshape(self.n_inner, 2)

    def _fill(self, out, rows, g, s, chunks, index, piece) -> None:
        """Decode the inner chunks ``chunks`` of shard ``s`` into ``out[g]`` (``rows[g]``
        sorted and distinct: each chunk's rows are a run of ``g``)."""
        codec = _codec(self.blosc)
        local = rows[g] - s * self.shard_rows
        inner, n_gene = self.inner, self.shape[1]
        for c in chunks.tolist():
            lo, hi = np.searchsorted(local, [c * inner, (c + 1) * inner])
            dst = slice(int(g[lo]), int(g[lo]) + int(hi - lo))  # g is a run of out's rows
            if index[c, 0] == _EMPTY:
                out[dst] = self.fill
                continue
            whole = hi - lo == inner  # the whole inner chunk wanted: decode in place
            try:
                if whole:
                    codec.decode(piece(c), out=out[dst])
                else:
                    block = np.frombuffer(codec.decode(piece(c)), "<f4").reshape(inner, n_gene)
                    out[dst] = block[local[lo:hi] - c * inner]
            except (RuntimeError, ValueError, TypeError):
                raise StoreError(
                    f"{self.url}: expr shard {s}, inner chunk {c} does not decode (corrupt)"
                ) from None

    def _fetch(self, fs, reqs: list) -> list:
        """Bytes of each ``(path, start, end)`` (``None`` whole; negative start: suffix)."""
        if not reqs:
            return []
        try:
            if is_local(fs):
                return [_read_local(p, a, b) for p, a, b in reqs]
            got = fs.cat_ranges(
                [r[0] for r in reqs], [r[1] for r in reqs], [r[2] for r in reqs], on_error="return"
            )
        except FileNotFoundError:
            raise StoreError(f"{self.url}: an expr shard is missing") from None
        except OSError as e:
            raise StoreError(f"{self.url}: cannot read expr: {e}") from None
        for blob in got:
            if isinstance(blob, FileNotFoundError):
                raise StoreError(f"{self.url}: an expr shard is missing")
            if isinstance(blob, BaseException):
                raise StoreError(f"{self.url}: cannot read expr: {blob}")
        return got


def _read_local(path: str, start, end) -> bytes:
    try:
        with open(path, "rb", buffering=0) as f:
            if start is None:
                return f.read()
            f.seek(start, 2 if start < 0 else 0)
            return f.read() if end is None else f.read(end - start)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e}") from None


def _piece(blob, index: np.ndarray, c: int):
    start = int(index[c, 0])
    return memoryview(blob)[start : start + int(index[c, 1])]


def _runs(chunks: np.ndarray, index: np.ndarray) -> list[list[int]]:
    """Written inner chunks in runs stored back to back (one ranged request each)."""
    runs: list[list[int]] = []
    for c in chunks.tolist():
        if index[c, 0] == _EMPTY:
            continue
        if runs and index[runs[-1][-1], 0] + index[runs[-1][-1], 1] == index[c, 0]:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def write_shard(m: ShardedMatrix, s: int, values: np.ndarray) -> None:
    """Write the signatures of shard ``s`` (all of it but the last) as one object."""
    data = encode_shard(values, shard_rows=m.shard_rows, inner=m.inner, blosc=m.blosc, fill=m.fill)
    fs, root = url_to_fs(m.url, m.storage_options)
    path = m._path(root, s)
    if is_local(fs):
        fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def sharded_matrix(arr, url, storage_options) -> ShardedMatrix | None:
    """A :class:`ShardedMatrix` over the zarr array ``arr`` (``expr`` at ``url``) when it is
    sharded the way cmapdask writes shards; ``None`` otherwise (zarr reads it)."""
    shards = getattr(arr, "shards", None)
    if shards is None or arr.ndim != 2 or arr.dtype != np.float32:
        return None
    (codec,) = arr.metadata.codecs
    inner_codecs = [type(c).__name__ for c in codec.codecs]
    index_codecs = [type(c).__name__ for c in codec.index_codecs]
    if (
        inner_codecs != ["BytesCodec", "BloscCodec"]
        or str(getattr(codec.codecs[0].endian, "value", codec.codecs[0].endian)) != "little"
        or index_codecs != ["BytesCodec", "Crc32cCodec"]
        or str(getattr(codec.index_location, "value", codec.index_location)) != "end"
        or tuple(arr.chunks)[1] != arr.shape[1]
        or tuple(shards)[1] != arr.shape[1]
    ):
        return None
    encode = arr.metadata.encode_chunk_key
    fill = arr.metadata.fill_value
    b = codec.codecs[1]
    return ShardedMatrix(
        url,
        storage_options,
        shape=arr.shape,
        shard_rows=shards[0],
        inner=arr.chunks[0],
        fill=np.float32(np.nan if fill is None else fill),
        blosc={
            "cname": str(getattr(b.cname, "value", b.cname)),
            "clevel": int(b.clevel),
            "shuffle": str(getattr(b.shuffle, "value", b.shuffle)),
        },
        key=_Keys(encode((0, 0)), arr.path),
    )


class _Keys:
    """Shard number -> object key (``expr/c/3/0``), picklable (no zarr objects)."""

    def __init__(self, first: str, path: str):
        # first: the key of chunk (0, 0) in the array's own encoding ("c/0/0", "0.0", ...)
        self.prefix, self.sep, self.path = first[:-3], first[-2], path

    def __call__(self, s: int) -> str:
        return f"{self.path}/{self.prefix}{s}{self.sep}0"
