"""Virtual stores: a store whose ``expr`` reads the source GCTx's own chunks in place.

A virtual store is an ordinary store group (ids and metadata coordinates written as usual,
members such as ``index/`` or ``similarity/`` added as usual) without an ``expr`` array.
Instead ``attrs["cmapdask"]["virtual"]`` describes the source's matrix (URL, HDF5 dataset,
dtype, shape, layout, filters, the source's size and mtime or ETag) and the group
``virtual_refs`` holds the byte references of its chunks (int64 ``offset`` and ``length``,
uint32 ``filter_mask``, one entry per HDF5 chunk; ``offset`` -1 for a chunk never
written, which reads as the fill value). A contiguous matrix has a single reference.

:func:`open_virtual` (called by :func:`cmapdask.io.store.open_store`) builds ``expr`` as a
dask array in blocks of whole signatures that are whole multiples of the file's chunk
rows; each task reads the byte ranges of its chunks through fsspec (adjacent ranges
merged into one request), undoes the HDF5 filters (deflate, shuffle, fletcher32) and
returns float32. No HDF5 library is involved in reading, so tasks need only the bytes.

The references are read with h5py's chunk index, so no extra dependency (kerchunk,
VirtualiZarr) is needed; other HDF5 filters (lzf, szip, blosc plugins, scale-offset) and
the compact layout are refused at conversion with an error telling to copy instead.
"""

from __future__ import annotations

import math
import os
import zlib

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr
import zarr

from cmapdask import config
from cmapdask.errors import StoreError
from cmapdask.io.atomic import is_local, publish_dir, url_to_fs

__all__ = [
    "convert_virtual",
    "describe_matrix",
    "write_virtual",
    "open_virtual",
    "virtual_expr",
    "REFS_GROUP",
]

REFS_GROUP = "virtual_refs"
_DEFLATE, _SHUFFLE, _FLETCHER32 = 1, 2, 3
_SUPPORTED = {_DEFLATE: "deflate", _SHUFFLE: "shuffle", _FLETCHER32: "fletcher32"}
_COPY = "convert without --virtual (copy) instead"


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def source_stamp(url, storage_options=None) -> dict:
    """Size and modification stamp (local mtime, object-store ETag) of the file at ``url``."""
    fs, p = url_to_fs(url, storage_options)
    try:
        info = fs.info(p)
    except FileNotFoundError:
        raise StoreError(f"{url}: the source of the virtual store is gone") from None
    except Exception as e:  # credentials, endpoint, network
        raise StoreError(
            f"{url}: cannot reach the source of the virtual store ({_first_line(e)}); give "
            "its fsspec options (the store's storage options when both are on the same "
            "storage, else dask config cmapdask.virtual.storage_options)"
        ) from None
    stamp = {"size": int(info["size"])}
    etag = info.get("ETag") or info.get("etag")
    if etag:
        stamp["etag"] = str(etag).strip('"')
    else:
        mtime = info.get("mtime", info.get("LastModified", info.get("created")))
        if mtime is not None:
            stamp["mtime"] = float(mtime) if isinstance(mtime, (int, float)) else str(mtime)
    return stamp


def _source_url(src, storage_options) -> str:
    fs, p = url_to_fs(src, storage_options)
    return os.path.abspath(p) if is_local(fs) else str(src)


def describe_matrix(src, *, storage_options: dict | None = None) -> tuple[dict, dict]:
    """``(info, refs)`` of the GCTx matrix at ``src``: the description kept in the
    store's provenance and the per-chunk byte references (numpy arrays).

    Raises ``StoreError`` naming the file for a layout or filter a virtual store cannot
    read (compact layout; lzf, szip, scale-offset or plugin filters).

    Notes
    -----
    Reads only HDF5 metadata: the chunk index (one entry per chunk) and the dataset's
    header; the references take 20 bytes per chunk in memory.
    """
    from cmapdask.io.gctx import MATRIX_PATH, _matrix, _open

    stamp = source_stamp(src, storage_options)
    with _open(str(src), storage_options) as f:
        m = _matrix(f, src)
        if m.dtype.kind not in "fiu":
            raise StoreError(f"{src}: matrix dtype {m.dtype} is not numeric")
        plist = m.id.get_create_plist()
        filters = []
        for i in range(plist.get_nfilters()):
            code, _flags, _vals, fname = plist.get_filter(i)[:4]
            if code not in _SUPPORTED:
                name = fname.decode("ascii", "replace") if isinstance(fname, bytes) else fname
                raise StoreError(
                    f"{src}: the matrix uses HDF5 filter {name or code!r}, which a virtual "
                    f"store cannot decode; {_COPY}"
                )
            filters.append(int(code))
        layout = plist.get_layout()
        shape = tuple(int(s) for s in m.shape)
        if layout == h5py.h5d.CHUNKED:
            cshape = tuple(int(c) for c in m.chunks)
            refs = _chunk_refs(m, shape, cshape)
            kind = "chunked"
        elif layout == h5py.h5d.CONTIGUOUS:
            cshape = shape
            off = m.id.get_offset()
            size = int(m.id.get_storage_size())
            refs = {
                "offset": np.array([[-1 if off is None else int(off)]], np.int64),
                "length": np.array([[size if off is not None else 0]], np.int64),
                "filter_mask": np.zeros((1, 1), np.uint32),
            }
            kind = "contiguous"
        else:
            raise StoreError(f"{src}: the matrix has the HDF5 compact layout; {_COPY}")
        fill = m.fillvalue
    info = {
        "url": _source_url(src, storage_options),
        "name": os.path.basename(str(src).rstrip("/")),
        "dataset": MATRIX_PATH,
        "dtype": np.dtype(m.dtype).str,
        "shape": list(shape),
        "layout": kind,
        "chunks": list(cshape),
        "filters": filters,
        "fill_value": float(fill) if fill is not None else 0.0,
        "source": stamp,
    }
    return info, refs


def _chunk_refs(m, shape, cshape) -> dict:
    grid = tuple(max(1, math.ceil(s / c)) for s, c in zip(shape, cshape, strict=True))
    offset = np.full(grid, -1, np.int64)
    length = np.zeros(grid, np.int64)
    mask = np.zeros(grid, np.uint32)

    def put(ci):
        i, j = ci.chunk_offset[0] // cshape[0], ci.chunk_offset[1] // cshape[1]
        offset[i, j] = ci.byte_offset
        length[i, j] = ci.size
        mask[i, j] = ci.filter_mask

    if hasattr(m.id, "chunk_iter"):
        m.id.chunk_iter(put)
    else:  # older HDF5: one call per chunk
        for k in range(m.id.get_num_chunks()):
            put(m.id.get_chunk_info(k))
    return {"offset": offset, "length": length, "filter_mask": mask}


# ------------------------------------------------------------------------------- write


def convert_virtual(
    src,
    dest,
    src_name,
    size,
    digest,
    hasher,
    sig_info,
    gene_info,
    compound_info,
    *,
    storage_options,
    src_storage_options,
    extra_ids,
    chunk_rows,
    overwrite,
    progress,
) -> str:
    """:func:`cmapdask.io.store.convert` with ``virtual=True`` (same arguments as its
    ``_convert``): metadata read and joined as usual, the matrix referenced, not copied."""
    from cmapdask.errors import GCTxFormatError
    from cmapdask.io.gctx import is_gctx, read_gctx
    from cmapdask.io.store import _join_tables, store_chunk_rows

    if not is_gctx(src, src_storage_options):
        raise GCTxFormatError(
            f"{src}: a virtual store needs a GCTx (HDF5 with /0/DATA/0/matrix); "
            "convert other formats without --virtual"
        )
    info, refs = describe_matrix(src, storage_options=src_storage_options)
    if info["source"]["size"] != size:
        raise StoreError(f"{src}: the file changed while it was being converted")
    n_gene = info["shape"][1]
    file_rows = info["chunks"][0] if info["layout"] == "chunked" else None
    rows = store_chunk_rows(n_gene, file_rows=file_rows)
    if chunk_rows:
        rows = max(file_rows, chunk_rows // file_rows * file_rows) if file_rows else chunk_rows
    ds = read_gctx(src, storage_options=src_storage_options)
    ds, tables = _join_tables(ds, src_name, sig_info, gene_info, compound_info, extra_ids)
    source = {"name": src_name, "url": info["url"], "format": "gctx", "size": size}

    def provenance():
        if hasher is not None:  # the hash runs beside the conversion; wait for it here
            hasher.join()
            if "error" in digest:
                raise StoreError(
                    f"{src}: cannot read it for its SHA-256: {_first_line(digest['error'])}"
                )
            source["sha256"] = digest["sha256"]
        return {"source": source, "tables": tables}

    return write_virtual(
        ds,
        dest,
        info,
        refs,
        storage_options=storage_options,
        rows=rows,
        overwrite=overwrite,
        provenance=provenance,
    )


def write_virtual(
    ds: xr.Dataset,
    dest,
    info: dict,
    refs: dict,
    *,
    storage_options: dict | None,
    rows: int,
    overwrite: bool,
    provenance,
) -> str:
    """Publish a virtual store at ``dest``: the coordinates of ``ds`` (its ``expr`` is
    dropped), the references in ``virtual_refs`` and ``info`` under
    ``attrs["cmapdask"]["virtual"]``; ``provenance()`` adds the rest, the complete flag
    is set last."""
    from cmapdask.io.store import (
        _is_local_url,
        _provenance,
        _strings_to_str,
        mark_complete_remote,
        quiet_zarr,
        zarr_options,
    )

    out = _strings_to_str(ds.drop_vars(list(ds.data_vars)))
    out.attrs = {}
    with (
        publish_dir(dest, storage_options=storage_options, overwrite=overwrite) as tmp,
        quiet_zarr(),
    ):
        opts = zarr_options(tmp, storage_options)
        out.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, storage_options=opts)
        g = zarr.open_group(tmp, mode="r+", storage_options=opts, use_consolidated=False)
        r = g.create_group(REFS_GROUP)
        for name, arr in refs.items():
            r.create_array(name, data=arr, chunks=arr.shape, fill_value=0)
        g.attrs["cmapdask"] = _provenance(
            **provenance(),
            virtual=info,
            chunk_rows=rows,
            complete=_is_local_url(dest, storage_options),
        )
    mark_complete_remote(dest, storage_options)
    return str(dest)


# -------------------------------------------------------------------------------- read


def source_options(info: dict, store_url, storage_options):
    """fsspec options for reading the source: the store's own when both are on the same
    kind of storage, else ``cmapdask.virtual.storage_options`` from the configuration."""
    src = info["url"]
    if "://" not in src or src.startswith("file://"):
        return None
    proto = src.split("://", 1)[0]
    store_proto = str(store_url).split("://", 1)[0] if "://" in str(store_url) else "file"
    if proto == store_proto and storage_options:
        return storage_options
    return config.get("virtual.storage_options", None)


def check_source(info: dict, storage_options) -> None:
    """Refuse a source whose size or mtime/ETag differ from those recorded."""
    now = source_stamp(info["url"], storage_options)
    was = info["source"]
    if any(now.get(k) != v for k, v in was.items()):
        raise StoreError(
            f"{info['url']}: the source of this virtual store changed since it was written "
            f"(was {was}, now {now}); convert it again"
        )


def open_virtual(ds: xr.Dataset, meta: dict, store_url, storage_options) -> xr.Dataset:
    """Add the virtual ``expr`` to ``ds`` (the store's coordinates, already in memory).

    Notes
    -----
    Reads the references (20 bytes per source chunk) and the source's stamp now; the
    matrix is read only when computed, one block of whole signatures per task.
    """
    from cmapdask.io.store import quiet_zarr, zarr_options

    info = meta["virtual"]
    src_opts = source_options(info, store_url, storage_options)
    check_source(info, src_opts)
    with quiet_zarr():
        g = zarr.open_group(
            store_url,
            mode="r",
            storage_options=zarr_options(store_url, storage_options),
            use_consolidated=False,
        )[REFS_GROUP]
        refs = {k: np.asarray(g[k][:]) for k in ("offset", "length", "filter_mask")}
    expr = virtual_expr(info, refs, storage_options=src_opts, rows=meta.get("chunk_rows"))
    return ds.assign(expr=(("sig", "gene"), expr))


def virtual_expr(info: dict, refs: dict, *, storage_options=None, rows: int | None = None):
    """The float32 dask array of the referenced matrix, in blocks of ``rows`` whole
    signatures (a multiple of the file's chunk rows)."""
    from cmapdask.io.store import store_chunk_rows

    shape = tuple(info["shape"])
    n_sig, n_gene = shape
    file_rows = info["chunks"][0] if info["layout"] == "chunked" else None
    rows = rows or store_chunk_rows(n_gene, file_rows=file_rows)
    if file_rows:
        rows = max(file_rows, rows // file_rows * file_rows)
    rows = max(1, min(rows, n_sig or 1))
    lazy = _VirtualMatrix(info, refs, storage_options)
    token = dask.base.tokenize(info["url"], info["source"], info["dataset"], rows)
    return da.from_array(
        lazy,
        chunks=(rows, n_gene),
        name=f"virtual-expr-{token}",
        lock=False,
        asarray=False,
        meta=np.empty((0, 0), np.float32),
    )


class _VirtualMatrix:
    """Array-like over the referenced matrix; every read fetches the chunks it covers.

    Pickles as (info, refs, options): the references travel to the workers once."""

    def __init__(self, info, refs, storage_options):
        self.info = info
        self.refs = refs
        self.storage_options = storage_options
        self.shape = tuple(info["shape"])
        self.ndim = 2
        self.dtype = np.dtype(np.float32)
        self.file_dtype = np.dtype(info["dtype"])

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        bounds, rel = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    idx = np.arange(start, stop, step)
                    k = idx
                else:
                    bounds.append((start, max(start, stop)))
                    rel.append(slice(None))
                    continue
            idx = np.asarray(k)
            if idx.size == 0:
                bounds.append((0, 0))
                rel.append(idx)
                continue
            idx = np.where(idx < 0, idx + n, idx)
            lo = int(idx.min())
            bounds.append((lo, int(idx.max()) + 1))
            rel.append(idx - lo if idx.ndim else int(idx) - lo)
        (r0, r1), (c0, c1) = bounds
        block = self._read(r0, r1, c0, c1)
        if all(isinstance(r, slice) for r in rel):
            return block
        out = block[rel[0], :] if not isinstance(rel[0], slice) else block
        return out[..., rel[1]] if not isinstance(rel[1], slice) else out

    def _read(self, r0, r1, c0, c1) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0), np.float32)
        if out.size == 0:
            return out
        info, refs = self.info, self.refs
        fill = np.float32(info["fill_value"])
        if info["layout"] == "contiguous":
            off = int(refs["offset"][0, 0])
            if off < 0:
                out[:] = fill
                return out
            n_gene, isz = self.shape[1], self.file_dtype.itemsize
            (buf,) = self._fetch([(off + r0 * n_gene * isz, off + r1 * n_gene * isz)])
            rows = np.frombuffer(buf, self.file_dtype).reshape(r1 - r0, n_gene)
            out[:] = rows[:, c0:c1]
            return out
        cr, cc = info["chunks"]
        i0, i1 = r0 // cr, -(-r1 // cr)
        j0, j1 = c0 // cc, -(-c1 // cc)
        want, ranges = [], []
        for i in range(i0, i1):
            for j in range(j0, j1):
                off = int(refs["offset"][i, j])
                if off < 0:
                    want.append((i, j, None))
                else:
                    want.append((i, j, len(ranges)))
                    ranges.append((off, off + int(refs["length"][i, j])))
        bufs = self._fetch(ranges)
        for i, j, k in want:
            # the chunk's cells that fall in [r0, r1) x [c0, c1)
            a0, a1 = max(r0, i * cr), min(r1, (i + 1) * cr)
            b0, b1 = max(c0, j * cc), min(c1, (j + 1) * cc)
            dst = out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
            if k is None:
                dst[:] = fill
                continue
            chunk = self._decode(bufs[k], int(refs["filter_mask"][i, j]), (i, j))
            dst[:] = chunk[a0 - i * cr : a1 - i * cr, b0 - j * cc : b1 - j * cc]
        return out

    def _decode(self, raw: bytes, mask: int, where) -> np.ndarray:
        info = self.info
        filters = info["filters"]
        data = raw
        try:
            for pos in range(len(filters) - 1, -1, -1):
                if mask & (1 << pos):
                    continue  # HDF5 skipped this filter for this chunk
                code = filters[pos]
                if code == _DEFLATE:
                    data = zlib.decompress(data)
                elif code == _SHUFFLE:
                    isz = self.file_dtype.itemsize
                    n = len(data) // isz
                    b = np.frombuffer(data, np.uint8)
                    body = b[: n * isz].reshape(isz, n).T.reshape(-1)
                    data = body.tobytes() + bytes(b[n * isz :])
                elif code == _FLETCHER32:
                    data = data[:-4]
            cshape = tuple(info["chunks"])
            return np.frombuffer(data, self.file_dtype, count=cshape[0] * cshape[1]).reshape(cshape)
        except (zlib.error, ValueError) as e:
            raise StoreError(
                f"{info['url']}: chunk {where} of {info['dataset']} does not decode "
                f"({_first_line(e)}); the source changed? convert it again"
            ) from None

    def _fetch(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(start, end)`` range; adjacent ranges are read together."""
        if not ranges:
            return []
        order = sorted(range(len(ranges)), key=lambda k: ranges[k][0])
        runs: list[list] = []  # [start, end, [members]]
        for k in order:
            s, e = ranges[k]
            if runs and s <= runs[-1][1] + 4096:
                runs[-1][1] = max(runs[-1][1], e)
                runs[-1][2].append(k)
            else:
                runs.append([s, e, [k]])
        url = self.info["url"]
        try:
            fs, p = url_to_fs(url, self.storage_options)
            if is_local(fs):
                blobs = []
                with open(p, "rb", buffering=0) as f:
                    for s, e, _ in runs:
                        f.seek(s)
                        blobs.append(f.read(e - s))
            else:
                blobs = fs.cat_ranges(
                    [p] * len(runs), [r[0] for r in runs], [r[1] for r in runs], on_error="raise"
                )
        except (OSError, ValueError) as e:
            raise StoreError(
                f"{url}: cannot read the source of the virtual store: {_first_line(e)}"
            ) from None
        out: list = [None] * len(ranges)
        for (s, e, members), blob in zip(runs, blobs, strict=True):
            if isinstance(blob, BaseException):
                raise StoreError(
                    f"{url}: cannot read the source of the virtual store: {_first_line(blob)}"
                )
            if len(blob) < e - s:
                raise StoreError(
                    f"{url}: the source is shorter than the virtual store's references "
                    "(truncated or changed); convert it again"
                )
            mv = memoryview(blob)
            for k in members:
                a, b = ranges[k]
                out[k] = mv[a - s : b - s]
        return out
