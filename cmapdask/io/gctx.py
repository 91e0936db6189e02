"""GCTx (HDF5) files: lazy, subsettable reading and streaming, atomic writing.

Layout (ALGORITHMS.md §10): the logical matrix is genes x signatures, but the HDF5 dataset
``/0/DATA/0/matrix`` is stored signatures x genes, which is exactly our ``expr`` with dims
``("sig", "gene")``. Column metadata (``/0/META/COL``) describes signatures and row
metadata (``/0/META/ROW``) describes genes.

Reading builds a dask array whose chunks are whole multiples of the file's own HDF5
chunks, and every task opens the file itself (nothing unpicklable travels in the graph),
so reads run on distributed workers and a subset touches only the chunks it needs.
Metadata (one value per signature or gene) is read eagerly: it is small next to the
matrix (1.2 million signatures x 30 fields is a few hundred MB of text at most).
"""

from __future__ import annotations

import math
import os
from typing import Literal

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr

from cmapdask._version import __version__
from cmapdask.errors import GCTxFormatError, InputError
from cmapdask.io.atomic import is_local, publish_file, url_to_fs
from cmapdask.io.meta import MISSING, merge_coords, normalise_column
from cmapdask.io.pending import deferrable

__all__ = ["read_gctx", "write_gctx", "gctx_filename", "is_gctx", "matrix_layout", "MATRIX_PATH"]

MATRIX_PATH = "/0/DATA/0/matrix"
ROW_META = "/0/META/ROW"
COL_META = "/0/META/COL"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _open(path: str, storage_options: dict | None = None) -> h5py.File:
    """Open a GCTx for reading, turning HDF5's errors into one clear line."""
    fs, p = url_to_fs(path, storage_options)
    try:
        if is_local(fs):
            return h5py.File(p, "r")
        return h5py.File(fs.open(p, "rb", block_size=8 * 2**20), "r")
    except FileNotFoundError:
        raise GCTxFormatError(f"{path}: no such file") from None
    except OSError as e:
        raise GCTxFormatError(
            f"{path}: not a readable HDF5 file (corrupt or truncated?): {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def is_gctx(path, storage_options: dict | None = None) -> bool:
    """True if ``path`` is HDF5 and has the GCTx matrix node (sniffed, not trusted by name)."""
    try:
        fs, p = url_to_fs(path, storage_options)
        with fs.open(p, "rb") as f:
            if f.read(8) != HDF5_MAGIC:
                return False
        with _open(path, storage_options) as f:
            return MATRIX_PATH in f
    except Exception:  # any failure to sniff means "not ours"
        return False


class _LazyMatrix:
    """Array-like over the GCTx matrix that opens the file for every read.

    Pickles as (path, options, shape, dtype), so dask can ship it to workers; reading a
    block costs one HDF5 open (a few milliseconds), negligible next to a 64 MB read.
    """

    def __init__(self, path, storage_options, shape, dtype):
        self.path = path
        self.storage_options = storage_options
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.file_dtype = np.dtype(dtype)
        self.ndim = 2

    def __getitem__(self, key):
        try:
            with _open(self.path, self.storage_options) as f:
                block = f[MATRIX_PATH][key]
        except GCTxFormatError:
            raise
        except OSError as e:
            raise GCTxFormatError(
                f"{self.path}: cannot read matrix block {key!r} (truncated?): {_first_line(e)}"
            ) from None
        return np.asarray(block, dtype=np.float32)


def _dask_chunks(shape, file_chunks, target_bytes) -> tuple[int, int]:
    """Signature-axis blocks that are whole multiples of the file's chunks, all genes each."""
    n_sig, n_gene = shape
    per_sig = max(1, n_gene * 4)
    want = max(1, target_bytes // per_sig)
    if file_chunks is not None:
        step = file_chunks[0]
        want = max(step, (want // step) * step)
    return (min(n_sig, want), n_gene)


# The most a filter pipeline can shrink data: deflate's limit is 1032:1; other codecs
# (LZF, Blosc, ...) get a generous bound. No compressing filter: the bytes must be there.
_DEFLATE, _NOT_COMPRESSING = 1, {2, 3}  # shuffle and fletcher32 do not compress
_MAX_RATIO = {_DEFLATE: 1100.0}
_OTHER_RATIO = 1e5


def _check_declared(dset: h5py.Dataset, path: str) -> None:
    """Refuse a dataset whose declared shape its stored bytes cannot hold (with the
    compression it declares) before anything is read or allocated: a forged header
    must not make a 14 KB file allocate terabytes."""
    declared = int(np.prod(dset.shape, dtype=np.float64)) * dset.dtype.itemsize
    if declared == 0 or dset.id.get_storage_size() >= declared:
        return
    if dset.chunks is not None:
        # a chunk never written reads as the fill value (HDF5's sparse files): only the
        # written chunks must fit in the stored bytes
        per_chunk = int(np.prod(dset.chunks, dtype=np.float64)) * dset.dtype.itemsize
        declared = min(declared, dset.id.get_num_chunks() * per_chunk)
        if declared == 0:
            return
    plist = dset.id.get_create_plist()
    codes = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())} - _NOT_COMPRESSING
    ratio = max((_MAX_RATIO.get(c, _OTHER_RATIO) for c in codes), default=1.0)
    stored = dset.id.get_storage_size()
    if declared > stored * ratio:
        shape = " x ".join(str(n) for n in dset.shape)
        raise GCTxFormatError(
            f"{path}: {dset.name} declares {shape} values ({_human(declared)}) but holds "
            f"{_human(stored)}, which {'its compression' if codes else 'uncompressed data'} "
            "cannot expand to that; a damaged or forged file"
        )


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _worker_memory() -> int:
    """A worker's memory: ``cmapdask.cluster.local.memory_limit``, else the machine's."""
    from dask.utils import parse_bytes

    limit = dask.config.get("cmapdask.cluster.local.memory_limit", "auto")
    if limit in (None, "auto", 0, "0"):
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no bound
            return 2**62
    return int(parse_bytes(limit)) if isinstance(limit, str) else int(limit)


def _check_plan(shape, file_chunks, dtype, path: str) -> None:
    """The smallest block a task reads (one file chunk of signatures, every gene, as
    float32 with its file dtype copy) must fit a worker's memory."""
    rows = file_chunks[0] if file_chunks else 1
    need = rows * shape[1] * (4 + dtype.itemsize)
    have = _worker_memory()
    if need > have:
        raise GCTxFormatError(
            f"{path}: one block of {rows} signature(s) x {shape[1]} genes needs "
            f"{_human(need)}, more than a worker's memory ({_human(have)}, "
            "cmapdask.cluster.local.memory_limit)"
        )


def _read_meta(f: h5py.File, group: str, n: int, path: str, axis: str) -> tuple[np.ndarray, dict]:
    if group not in f or "id" not in f[group]:
        raise GCTxFormatError(f"{path}: missing {group}/id (the {axis} ids)")
    g = f[group]
    if g["id"].ndim == 1 and g["id"].shape[0] != n:  # before reading a single id
        raise GCTxFormatError(
            f"{path}: {g['id'].shape[0]} {axis} ids in {group}/id for {n} {axis}s in the matrix"
        )
    for node in g.values():
        if isinstance(node, h5py.Dataset):
            _check_declared(node, path)
    ids_raw = g["id"][()]
    if ids_raw.ndim != 1 or len(ids_raw) != n:
        raise GCTxFormatError(
            f"{path}: {len(ids_raw)} {axis} ids in {group}/id for {n} {axis}s in the matrix"
        )
    ids = _ids_to_str(ids_raw, what=f"{path}: {group}/id")
    empty = np.flatnonzero(ids.astype(str) == "")
    if len(empty):
        raise GCTxFormatError(
            f"{path}: {len(empty)} empty {axis} id(s) in {group}/id, the first at "
            f"position {empty[0]}; every {axis} needs an id"
        )
    _check_unique(ids, path, axis)
    fields = {}
    for name in g:
        if name == "id":
            continue
        node = g[name]
        if not isinstance(node, h5py.Dataset):
            continue
        values = node[()]
        if values.ndim != 1 or len(values) != n:
            raise GCTxFormatError(
                f"{path}: metadata field {group}/{name} has {values.shape} values for {n} {axis}s"
            )
        fields[name] = normalise_column(values, what=f"{path}: {group}/{name}")
    return ids, fields


def _ids_to_str(raw: np.ndarray, *, what: str | None = None) -> np.ndarray:
    if raw.dtype.kind in "SO":
        from cmapdask.io.meta import decode_bytes

        return decode_bytes(raw, what=what)
    if raw.dtype.kind == "f" and np.all(raw == np.round(raw)):
        raw = raw.astype(np.int64)
    return np.array([str(v) for v in raw.tolist()], dtype=object)


def _check_unique(ids: np.ndarray, path: str, axis: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1]
        raise GCTxFormatError(
            f"{path}: {len(dup)} duplicate {axis} id(s), e.g. {str(dup[0])!r} appears "
            f"{counts[counts > 1][0]} times"
        )


def _matrix(f, path) -> h5py.Dataset:
    """The 2-D matrix dataset of an open GCTx, or a clear error."""
    if MATRIX_PATH not in f or not isinstance(f[MATRIX_PATH], h5py.Dataset):
        raise GCTxFormatError(f"{path}: no {MATRIX_PATH} dataset; this is not a GCTx file")
    m = f[MATRIX_PATH]
    if m.ndim != 2:
        raise GCTxFormatError(f"{path}: {MATRIX_PATH} has {m.ndim} dimensions, expected 2")
    return m


def matrix_layout(
    path, *, storage_options: dict | None = None
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``(shape, file_chunks)`` of the GCTx matrix, stored (n_sig, n_gene), without
    reading any metadata (for choosing chunks before :func:`read_gctx`)."""
    path = os.fspath(path) if not isinstance(path, str) else path
    with _open(path, storage_options) as f:
        m = _matrix(f, path)
        return tuple(m.shape), (tuple(m.chunks) if m.chunks else None)


def read_gctx(
    path,
    *,
    sigs=None,
    genes=None,
    chunks: tuple[int, int] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open a GCTx file lazily as an ``xr.Dataset``.

    Parameters
    ----------
    path
        Local path or fsspec URL (``s3://...``) of a ``.gctx`` file.
    sigs, genes
        Optional subsets: a sequence of ids (``str``) or of integer positions. Only the
        HDF5 chunks holding them are read when the data are computed.
    chunks
        Dask chunks ``(n_sig, n_gene)``. Default: blocks of whole signatures (all genes)
        that are multiples of the file's own chunk rows, about ``cmapdask.gctx.chunk_mb``.
    storage_options
        Passed to fsspec for remote paths.

    Returns
    -------
    xr.Dataset
        ``expr`` float32 ``("sig", "gene")`` backed by dask; ``sig`` and ``gene`` ids as
        coordinates, metadata fields as coordinates along their axis (DEVELOPERS.md).

    Notes
    -----
    Reads the metadata of both axes now (O(n_sig + n_gene) memory) and nothing of the
    matrix; each dask task opens the file and reads one block, so memory per task is one
    chunk. Float64 files are converted to float32 block by block.

    Examples
    --------
    >>> ds = read_gctx("tests/data/cmapm/gctv13_01.gctx")  # doctest: +SKIP
    >>> ds.expr.shape  # doctest: +SKIP
    (371, 978)
    """
    path = os.fspath(path) if not isinstance(path, str) else path
    with _open(path, storage_options) as f:
        m = _matrix(f, path)
        shape, dtype, file_chunks = m.shape, m.dtype, m.chunks
        if dtype.kind not in "fiu":
            raise GCTxFormatError(f"{path}: matrix dtype {dtype} is not numeric")
        _check_declared(m, path)
        _check_plan(shape, file_chunks, dtype, path)
        sig_ids, sig_fields = _read_meta(f, COL_META, shape[0], path, "column (signature)")
        gene_ids, gene_fields = _read_meta(f, ROW_META, shape[1], path, "row (gene)")
        version = _version(f)
    from cmapdask import config

    if chunks is None:
        chunks = _dask_chunks(shape, file_chunks, int(config.get("gctx.chunk_mb", 64)) * 2**20)
    lazy = _LazyMatrix(path, storage_options, shape, dtype)
    name = f"gctx-{dask.base.tokenize(path, storage_options, shape, chunks, _mtime(path))}"
    arr = da.from_array(
        lazy, chunks=chunks, name=name, lock=False, asarray=False, meta=np.empty((0, 0), np.float32)
    )
    sig_fields, gene_fields = merge_coords(sig_fields, gene_fields)
    coords = {"sig": ("sig", sig_ids), "gene": ("gene", gene_ids)}
    coords.update({k: ("sig", v) for k, v in sig_fields.items()})
    coords.update({k: ("gene", v) for k, v in gene_fields.items()})
    ds = xr.Dataset({"expr": (("sig", "gene"), arr)}, coords=coords)
    ds.attrs["cmapdask"] = {
        "source": os.path.basename(str(path)),
        "source_format": "gctx",
        "gctx_version": version,
        "file_dtype": str(dtype),
        "file_chunks": list(file_chunks) if file_chunks else None,
    }
    return _subset(ds, sigs=sigs, genes=genes, path=path)


def _mtime(path) -> float | None:
    try:
        return os.path.getmtime(path)
    except (OSError, TypeError):
        return None


def _version(f: h5py.File) -> str | None:
    v = f.attrs.get("version")
    if v is None:
        return None
    v = np.asarray(v).ravel()
    v = v[0] if v.size else b""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _subset(ds: xr.Dataset, *, sigs, genes, path) -> xr.Dataset:
    sel = {}
    for dim, wanted in (("sig", sigs), ("gene", genes)):
        if wanted is None:
            continue
        wanted = np.asarray(list(wanted) if not isinstance(wanted, slice) else [], dtype=object)
        if len(wanted) and all(isinstance(w, (int, np.integer)) for w in wanted):
            pos = wanted.astype(np.int64)
            if pos.min() < -ds.sizes[dim] or pos.max() >= ds.sizes[dim]:
                raise InputError(f"{path}: {dim} position out of range (size {ds.sizes[dim]})")
        else:
            index = ds.indexes[dim]
            pos = index.get_indexer(wanted.astype(str))
            if (pos < 0).any():
                missing = wanted[pos < 0]
                raise InputError(
                    f"{path}: {len(missing)} requested {dim} id(s) not in the file, e.g. "
                    f"{str(missing[0])!r}"
                )
        sel[dim] = pos
    return ds.isel(sel) if sel else ds


# ----------------------------------------------------------------------------- writing


def reference_chunks(n_sig: int, n_gene: int) -> tuple[int, int]:
    """The reference layout's HDF5 chunks, stored (col_chunk, row_chunk) = (sigs, genes)."""
    row_chunk = max(1, min(n_gene, 1000))
    col_chunk = max(1, min(262144 // row_chunk, n_sig))
    return col_chunk, row_chunk


def gctx_filename(name: str, n_sig: int, n_gene: int) -> str:
    """``<name>_n<ncol>x<nrow>.gctx`` (columns are signatures, rows are genes)."""
    return f"{name}_n{n_sig}x{n_gene}.gctx"


@deferrable("GCTx file", "path")
def write_gctx(
    obj,
    path,
    *,
    storage_options: dict | None = None,
    compression: Literal["none", "gzip"] = "none",
    progress: bool = False,
    compute: bool = True,
) -> str:
    """Write a dataset (or an ``expr``-like DataArray) as a GCTx file, streaming.

    Parameters
    ----------
    obj
        ``xr.Dataset`` with ``expr`` ``("sig", "gene")`` and metadata coordinates, or an
        ``xr.DataArray`` with those dims. Dask-backed inputs are computed block by block.
    path
        Destination (local path or fsspec URL). Written beside it and moved into place
        when complete, so a reader never sees a partial file.
    compression
        ``"none"``: the reference layout (uncompressed matrix); ``"gzip"``: gzip level 6 on
        the matrix chunks too.
    progress
        Ignored (kept for callers): the command line draws progress.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        The destination path.

    Notes
    -----
    Reference layout (ALGORITHMS.md §10): float32 matrix stored signatures x genes in
    chunks of ``(min(262144 // row_chunk, n_sig), min(n_gene, 1000))`` with unlimited
    maxshape; metadata as fixed-width UTF-8 bytes or numbers, gzip level 6, chunks of up
    to 1000; missing metadata written as -666; root attribute ``version = "GCTX1.0"``.
    Memory: a few blocks of ``expr`` at a time (blocks of whole reference chunk rows of
    about 64 MB, computed in parallel batches on the active scheduler), independent of
    the size of the output.
    """
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name="expr")
    if "expr" not in obj or obj["expr"].dims != ("sig", "gene"):
        raise InputError("write_gctx: need a Dataset with expr dims ('sig', 'gene')")
    expr = obj["expr"]
    n_sig, n_gene = expr.shape
    sig_ids = _ids_for_write(obj, "sig")
    gene_ids = _ids_for_write(obj, "gene")
    col_chunk, row_chunk = reference_chunks(n_sig, n_gene)
    with publish_file(path, storage_options=storage_options) as tmp:
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs["version"] = np.bytes_(b"GCTX1.0")
            f.attrs["src"] = np.bytes_(f"cmapdask {__version__}".encode())
            dset = f.create_dataset(
                MATRIX_PATH,
                shape=(n_sig, n_gene),
                dtype=np.float32,
                chunks=(col_chunk, row_chunk) if n_sig and n_gene else None,
                maxshape=(None, None),
                **({"compression": "gzip", "compression_opts": 6} if compression == "gzip" else {}),
            )
            sig_fields = _fields(obj, "sig")
            gene_fields = {
                # undo the read-time rename of a gene field that clashes with a sig field
                (k[5:] if k.startswith("gene_") and k[5:] in sig_fields else k): v
                for k, v in _fields(obj, "gene").items()
            }
            _write_meta(f, COL_META, sig_ids, sig_fields)
            _write_meta(f, ROW_META, gene_ids, gene_fields)
            _stream_matrix(expr.data, dset, col_chunk, progress=progress)
    return str(path)


def _ids_for_write(obj: xr.Dataset, dim: str) -> np.ndarray:
    ids = np.asarray(obj[dim].values).astype(str)
    if len(set(ids.tolist())) != len(ids):
        raise InputError(f"write_gctx: duplicate {dim} ids")
    # ids are data (values of META/*/id), not HDF5 names: '/' is fine (P100 ids hold it)
    return ids


def _fields(obj: xr.Dataset, dim: str) -> dict:
    return {
        name: np.asarray(c.values)
        for name, c in obj.coords.items()
        if c.dims == (dim,) and name != dim
    }


def _write_meta(f, group, ids, fields):
    g = f.require_group(group)
    _write_field(g, "id", np.asarray(ids, dtype=object))
    for name, values in fields.items():
        if "/" in name:
            raise InputError(f"write_gctx: '/' is not allowed in field names ({name!r})")
        _write_field(g, name, values)


def _write_field(g, name, values):
    n = len(values)
    opts = (
        {"compression": "gzip", "compression_opts": 6, "chunks": (max(1, min(n, 1000)),)}
        if n
        else {}
    )
    if values.dtype.kind in "iub":
        g.create_dataset(name, data=values.astype(np.int64), **opts)
    elif values.dtype.kind == "f":
        out = values.astype(np.float64)
        out[np.isnan(out)] = MISSING
        g.create_dataset(name, data=out, **opts)
    else:
        text = [
            str(MISSING) if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            for v in values.tolist()
        ]
        encoded = [t.encode("utf-8") for t in text]
        width = max([len(b) for b in encoded] + [1])
        g.create_dataset(name, data=np.array(encoded, dtype=f"S{width}"), **opts)


def _stream_matrix(data, dset, col_chunk, *, progress: bool) -> None:
    """Write ``data`` into ``dset`` a batch of blocks at a time (bounded memory)."""
    n_sig, n_gene = dset.shape
    if n_sig == 0 or n_gene == 0:
        return
    if not isinstance(data, da.Array):
        dset[...] = np.asarray(data, dtype=np.float32)
        return
    rows = max(col_chunk, (64 * 2**20 // max(1, n_gene * 4)) // col_chunk * col_chunk)
    arr = data.astype(np.float32).rechunk((rows, n_gene))
    bounds = np.cumsum((0,) + arr.chunks[0])
    parallel = _parallelism()
    for start in range(0, arr.numblocks[0], parallel):
        idx = range(start, min(start + parallel, arr.numblocks[0]))
        blocks = dask.compute(*[arr.blocks[i] for i in idx])
        for i, block in zip(idx, blocks, strict=False):
            dset[bounds[i] : bounds[i + 1], :] = block


def _parallelism() -> int:
    try:
        from distributed import get_client

        client = get_client()
        return max(1, sum(client.nthreads().values()))
    except (ImportError, ValueError):
        return max(1, os.cpu_count() or 1)
