"""The Zarr signature store: one Zarr v3 group per collection of signatures.

Layout::

    STORE/                      root group; attrs["cmapdask"] holds provenance and "complete"
      expr                      float32 (sig, gene), chunks of whole signatures (all genes),
                                blosc-zstd; written once, never rewritten
      sig, gene                 ids (variable-length UTF-8)
      <field>                   metadata coordinates along sig or gene
      index/<space>/            query index (cmapdask.connectivity)      } members, each a
      similarity/<name>/        top-k neighbours (cmapdask.similarity)   } group written by
      clusters/<name>/          labels (cmapdask.clustering)             } write_member

Writers never expose a partial result: a new store is written beside its destination and
published in one step (cmapdask.io.atomic), and ``attrs["cmapdask"]["complete"]`` is set
last; :func:`open_store` refuses a store without it. Members are published the same way,
so adding one never touches ``expr``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import threading
import warnings
from typing import Literal

import dask
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from cmapdask import config
from cmapdask._version import __version__
from cmapdask.errors import InputError, NonFiniteWarning, StoreError
from cmapdask.io.atomic import check_destination, is_local, join, publish_dir, url_to_fs
from cmapdask.model.missing import is_missing as _missing

__all__ = [
    "SCHEMA_VERSION",
    "convert",
    "open_store",
    "write_store",
    "write_member",
    "open_member",
    "has_member",
    "list_members",
    "store_chunk_rows",
    "store_info",
    "quiet_zarr",
    "zarr_options",
    "ensure_parent_groups",
    "set_provenance",
    "mark_complete_remote",
    "consolidate",
]

SCHEMA_VERSION = 1
_STRING_KINDS = "OUT"


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's warnings about what we knowingly use (vlen strings, no consolidation)."""
    with warnings.catch_warnings():
        # zarr v3 variable-length strings are not in the v3 core spec yet; xarray and
        # zarr both read them, which is all we need.
        warnings.filterwarnings("ignore", category=zarr.errors.UnstableSpecificationWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def store_chunk_rows(
    n_gene: int, *, file_rows: int | None = None, chunk_mb: float | None = None
) -> int:
    """Signatures per ``expr`` chunk: about ``chunk_mb`` MiB of float32 with every gene,
    rounded to a multiple of the source's own chunk rows so no source chunk is read twice."""
    chunk_mb = chunk_mb or float(config.get("store.chunk_mb", 32))
    rows = max(1, int(chunk_mb * 2**20) // max(1, 4 * n_gene))
    if file_rows:
        rows = max(file_rows, rows // file_rows * file_rows)
    return rows


def _expr_encoding(rows: int, n_gene: int) -> dict:
    clevel = int(config.get("store.clevel", 3))
    return {
        "chunks": (rows, n_gene),
        "compressors": (BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle"),),
    }


def _provenance(**extra) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "package": "cmapdask",
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _strings_to_str(ds: xr.Dataset) -> xr.Dataset:
    """Object (str/None) coordinates -> plain ``str`` arrays ('' for missing) for Zarr."""
    out = {}
    for name, c in ds.coords.items():
        if c.dtype.kind == "O":
            vals = np.array(
                ["" if _missing(v) else str(v) for v in c.values.tolist()], dtype=object
            )
            out[name] = (c.dims, vals)
    return ds.assign_coords(out) if out else ds


def write_store(
    ds: xr.Dataset,
    dest,
    *,
    storage_options: dict | None = None,
    provenance: dict | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Write ``ds`` (``expr`` plus metadata coordinates) as a new, complete store.

    Parameters
    ----------
    ds
        Dataset following the data model of DEVELOPERS.md; dask-backed ``expr`` is
        computed in parallel on the active scheduler, one chunk per task.
    dest
        Local path or fsspec URL (``memory://``, ``s3://``).
    provenance
        Extra entries for ``attrs["cmapdask"]`` (source file, parameters, ...).
    chunk_rows
        Signatures per chunk (default :func:`store_chunk_rows`).
    overwrite
        Replace an existing store (atomically) instead of refusing.

    Notes
    -----
    Memory: one input block plus one output chunk per running task; nothing scales with
    the number of signatures except the metadata (O(n_sig) strings, held by the client).
    """
    return _write_dataset(
        ds,
        dest,
        storage_options=storage_options,
        rows=chunk_rows,
        overwrite=overwrite,
        progress=progress,
        provenance=lambda: dict(provenance or {}),
    )


def _write_dataset(ds, dest, *, storage_options, rows, overwrite, progress, provenance) -> str:
    """Write ``expr`` + coordinates beside ``dest``; add ``provenance()`` (called after the
    data are written, so it may wait for a checksum) and the complete flag; publish."""
    n_sig, n_gene = ds["expr"].shape
    rows = rows or store_chunk_rows(n_gene)
    rows = max(1, min(rows, n_sig or 1))
    expr = ds["expr"].astype(np.float32)
    if n_sig:
        expr = expr.chunk({"sig": rows, "gene": n_gene})
    out = _strings_to_str(ds.drop_vars([v for v in ds.data_vars if v != "expr"]).assign(expr=expr))
    out.attrs = {}
    with (
        publish_dir(dest, storage_options=storage_options, overwrite=overwrite) as tmp,
        quiet_zarr(),
    ):
        # creates the group, every array's metadata and the coordinates now; the
        # returned job (which would write expr) is replaced by _write_expr's tasks
        out.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={"expr": _expr_encoding(rows, n_gene)},
            compute=False,
            storage_options=zarr_options(tmp, storage_options),
        )
        nonfinite = {"n_sig": 0}
        if n_sig and n_gene:
            stats = np.asarray(
                _compute(
                    _write_expr(out["expr"].data, tmp, zarr_options(tmp, storage_options)),
                    progress=progress,
                    label="write store",
                )
            ).reshape(-1, 3)
            written = int(stats[:, 0].sum())
            if written != n_sig:  # every block reports its rows; a lost block is an error
                raise StoreError(f"{dest}: wrote {written} of {n_sig} signatures")
            nonfinite = _nonfinite(stats, out["sig"].values, dest)
        g = _open_group(tmp, "r+", storage_options)
        # locally the rename publishes a complete store; remotely the flag is set only
        # after the server-side copy (a copied "complete" could precede copied chunks)
        g.attrs["cmapdask"] = _provenance(
            **provenance(),
            chunk_rows=rows,
            nonfinite=nonfinite,
            complete=_is_local_url(dest, storage_options),
        )
    mark_complete_remote(dest, storage_options)
    return str(dest)


def _write_expr(data, url, storage_options):
    """One task per block of whole signatures: write it as its own ``expr`` chunk.

    Returns a dask array ``(blocks, 3)``: per block the rows written, the rows holding
    NaN or an infinity, and the first such row (-1 if none). Blocks must be the store's chunks
    (``_write_dataset`` rechunks to them), so every write is a whole chunk, compressed once,
    never read back."""
    return data.map_blocks(
        _store_block,
        url=url,
        storage_options=storage_options,
        chunks=((1,) * data.numblocks[0], (3,)),
        dtype=np.int64,
        meta=np.empty((0, 0), np.int64),
    )


def _store_block(block, url, storage_options, block_info=None):
    (start, stop), _ = block_info[0]["array-location"]
    with _roomy_malloc():  # (no quiet_zarr here: warning filters are not thread-safe)
        arr = zarr.open_array(url, path="expr", mode="r+", storage_options=storage_options)
        # every chunk is written: no pass over each chunk comparing it with the fill value
        # (a tenth of the conversion's CPU), and an all-NaN block is stored like any other
        arr = arr.with_config({"write_empty_chunks": True})
        values = np.asarray(block, dtype=np.float32)
        arr[start:stop, :] = values
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    first = start + int(bad[0]) if bad.size else -1
    from cmapdask.rebuild.faults import checkpoint

    checkpoint("write")  # fault injection for the kill tests (a no-op unless asked)
    return np.array([[stop - start, bad.size, first]], dtype=np.int64)


def _nonfinite(stats: np.ndarray, sig: np.ndarray, dest) -> dict:
    """Record (and warn about) signatures holding NaN or an infinity; ``index`` refuses them."""
    n_bad = int(stats[:, 1].sum())
    if not n_bad:
        return {"n_sig": 0}
    first = str(sig[int(stats[stats[:, 2] >= 0, 2].min())])
    warnings.warn(
        f"{dest}: {n_bad} signature(s) hold NaN or infinite values, e.g. {first!r}; "
        "`cmapdask index` refuses such a store",
        NonFiniteWarning,
        stacklevel=2,
    )
    return {"n_sig": n_bad, "first": first}


# glibc's malloc adjusts its mmap threshold to the sizes a program frees, unless one of
# these variables is set; dask's Nanny sets MALLOC_TRIM_THRESHOLD_ in every worker (to
# return memory to the OS promptly), which pins the threshold at 128 KiB. blosc-zstd then
# maps, faults in and unmaps fresh compression contexts for every block of every chunk:
# 45,000 page faults per 25 MB chunk, twice the CPU of the compression itself.
_MALLOC_ENV = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_lock = threading.Lock()
_malloc_users = 0
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        import platform

        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL("libc.so.6")
                lib.mallopt, lib.malloc_trim  # noqa: B018  (both must exist)
                _libc = lib
    return _libc or None


def _env_bytes(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@contextlib.contextmanager
def _roomy_malloc():
    """While blocks are compressed in this process, let glibc reuse freed memory (mmap
    threshold 4 MiB, trim threshold 16 MiB) where the environment had pinned it; the
    environment's settings come back, and the freed memory goes back to the OS, when the
    last block being written here is done. Elsewhere (dynamic thresholds, other C
    libraries, other systems) this does nothing."""
    global _malloc_users
    libc = _glibc()
    if libc is None or not any(k in os.environ for k in _MALLOC_ENV):
        yield
        return
    with _malloc_lock:
        if _malloc_users == 0:
            # blosc-zstd's contexts are 1-2 MiB; chunk-sized buffers stay mapped (and
            # go back to the OS when freed), so little memory is held beyond the chunk
            libc.mallopt(_M_MMAP_THRESHOLD, 4 * 2**20)
            libc.mallopt(_M_TRIM_THRESHOLD, 16 * 2**20)
        _malloc_users += 1
    try:
        yield
    finally:
        with _malloc_lock:
            _malloc_users -= 1
            if _malloc_users == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, _env_bytes("MALLOC_TRIM_THRESHOLD_", 128 * 2**10))
                libc.mallopt(_M_MMAP_THRESHOLD, _env_bytes("MALLOC_MMAP_THRESHOLD_", 128 * 2**10))
                libc.malloc_trim(0)


def zarr_options(url, storage_options):
    """``storage_options`` for zarr/xarray: only for fsspec URLs, never for local paths."""
    return None if _is_local_url(url, storage_options) else storage_options


def _compute(job, *, progress: bool, label: str):
    # the library draws no progress: the command line does (cmapdask.cli.runtime)
    return dask.compute(job)[0]


def set_provenance(url, meta: dict, *, storage_options: dict | None = None) -> None:
    """Replace ``attrs["cmapdask"]`` of the group at ``url`` (a store or member)."""
    with quiet_zarr():
        g = _open_group(url, "r+", storage_options)
        g.attrs["cmapdask"] = meta


def _set_complete(url, storage_options, value: bool) -> None:
    with quiet_zarr():
        g = _open_group(url, "r", storage_options)
        meta = dict(g.attrs.get("cmapdask", {}))
    set_provenance(url, {**meta, "complete": value}, storage_options=storage_options)


def _open_group(url, mode: str, storage_options) -> zarr.Group:
    """The group at ``url`` as its nodes are now, never through consolidated metadata (which
    is for other tools, and is stale between a change and the next :func:`consolidate`)."""
    return zarr.open_group(
        url,
        mode=mode,
        storage_options=zarr_options(url, storage_options),
        use_consolidated=False,
    )


def consolidate(url, storage_options: dict | None = None) -> None:
    """Write the consolidated metadata of the group at ``url`` (a store or member), so that
    generic tools (``xr.open_zarr(url)``, ``zarr.open_group(url)``) open it in one read and
    without a warning. Call it after any change to a published group's nodes.

    Notes
    -----
    Reads every node's metadata below ``url`` (not the chunks). cmapdask itself never
    reads through consolidated metadata, so a stale copy cannot mislead it.
    """
    with quiet_zarr():
        g = _open_group(url, "r+", storage_options)
        zarr.consolidate_metadata(g.store, path=g.path or None)


def _is_local_url(url, storage_options) -> bool:
    return is_local(url_to_fs(url, storage_options)[0])


def mark_complete_remote(dest, storage_options) -> None:
    """Finish publishing a store or member: on object storage set its complete flag (the
    last object written, after the server-side copy of every chunk; locally the rename
    published it complete); then consolidate its metadata and, for a member (attribute
    ``member``), that of the store above it (:func:`consolidate`)."""
    if not _is_local_url(dest, storage_options):
        _set_complete(dest, storage_options, True)
    consolidate(dest, storage_options)
    with quiet_zarr():
        name = str(
            dict(_open_group(dest, "r", storage_options).attrs.get("cmapdask", {})).get("member")
            or ""
        )
    root, name = str(dest).rstrip("/"), name.strip("/")
    if name and root.endswith("/" + name):
        consolidate(root[: -len(name) - 1], storage_options)


def _check_complete(url, storage_options, what: str) -> dict:
    with quiet_zarr():
        try:
            g = _open_group(url, "r", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            raise StoreError(f"{url}: no {what} here") from None
        except Exception as e:  # corrupt metadata, bad URL, unreachable server
            raise StoreError(
                f"{url}: cannot open {what}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        meta = dict(g.attrs.get("cmapdask", {}))
    if not meta:
        raise StoreError(f"{url}: not a cmapdask {what} (no cmapdask attributes)")
    if not meta.get("complete"):
        raise StoreError(
            f"{url}: incomplete {what} (the job that wrote it did not finish); write it again"
        )
    return meta


def open_store(url, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store lazily: ``expr`` dask-backed in its own chunks, metadata in memory.

    Parameters
    ----------
    url
        Local path, ``memory://...`` or ``s3://bucket/path`` (pass endpoint and
        credentials for S3-compatible servers in ``storage_options``, e.g.
        ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}``).

    Notes
    -----
    Reads the group metadata and the 1-D coordinates (ids and metadata: O(n_sig +
    n_gene)); the matrix is read only when computed, one chunk per task.
    """
    meta = _check_complete(url, storage_options, "store")
    with quiet_zarr():
        ds = xr.open_zarr(
            url,
            consolidated=False,
            zarr_format=3,
            chunks={},
            storage_options=zarr_options(url, storage_options),
        )
    ds = _coords_to_memory(ds, url, storage_options)
    if meta.get("virtual"):  # expr reads the source GCTx's chunks in place
        from cmapdask.io.virtual import open_virtual

        ds = open_virtual(ds, meta, url, storage_options)
    ds.attrs = {"cmapdask": meta, "store_url": str(url)}
    return ds


def _coords_to_memory(ds: xr.Dataset, url, storage_options) -> xr.Dataset:
    """Load 1-D coordinates straight from Zarr (no dask compute); strings back to object
    arrays with None for missing."""
    with quiet_zarr():
        g = _open_group(url, "r", storage_options)
        new = {}
        for name, c in ds.coords.items():
            vals = np.asarray(g[name][:]) if name in g else np.asarray(c.values)
            if vals.dtype.kind in _STRING_KINDS or vals.dtype.kind == "T":
                vals = np.array([None if v == "" else str(v) for v in vals.tolist()], dtype=object)
            new[name] = (c.dims, vals)
    idx = {k: v for k, v in new.items() if k in ds.dims}
    rest = {k: v for k, v in new.items() if k not in ds.dims}
    ds = ds.drop_vars(list(new)).assign_coords(idx).assign_coords(rest)
    # text variables (top_id, ...): Python str objects, as the data model says (numpy's
    # StringDType, which zarr returns, cannot even be cast with .astype(str)); lazily
    text = {k: v for k, v in ds.data_vars.items() if v.dtype.kind in "TU"}
    return ds.assign({k: v.astype(object) for k, v in text.items()}) if text else ds


# ------------------------------------------------------------------------------ members


def write_member(
    store_url,
    name: str,
    ds: xr.Dataset,
    *,
    storage_options: dict | None = None,
    provenance: dict | None = None,
    encoding: dict | None = None,
    progress: bool = False,
) -> str:
    """Add or replace the member group ``name`` (e.g. ``"index/bing"``) of a store.

    The member is written beside its final place and published in one step; readers of
    the store never see it half-written, and ``expr`` is never touched.

    Notes
    -----
    Dask-backed variables are computed in parallel on the active scheduler, one chunk per
    task; nothing else is held in memory.
    """
    _check_complete(store_url, storage_options, "store")
    name = name.strip("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in name.split("/")):
        raise StoreError(f"{store_url}: invalid member name {name!r}")
    ensure_parent_groups(store_url, name, storage_options)
    dest = join(store_url, name)
    out = _strings_to_str(ds)
    out.attrs = {
        **{k: v for k, v in ds.attrs.items() if k != "cmapdask"},
        "cmapdask": _provenance(member=name, **(provenance or {}), complete=False),
    }
    with publish_dir(dest, storage_options=storage_options, overwrite=True) as tmp, quiet_zarr():
        job = out.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding=encoding or {},
            compute=False,
            storage_options=zarr_options(tmp, storage_options),
        )
        _compute(job, progress=progress, label=f"write {name}")
        if _is_local_url(dest, storage_options):
            _set_complete(tmp, storage_options, True)
    mark_complete_remote(dest, storage_options)
    return dest


def ensure_parent_groups(store_url, name, storage_options) -> None:
    """Create the groups above member ``name`` (``index`` of ``index/bing``), if missing."""
    with quiet_zarr():
        g = zarr.open_group(
            store_url,
            mode="r+",
            storage_options=zarr_options(store_url, storage_options),
            use_consolidated=False,
        )
        for p in name.split("/")[:-1]:
            g = g.require_group(p)


def open_member(store_url, name: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open member ``name`` of a store lazily (``StoreError`` if absent or incomplete)."""
    dest = join(store_url, name.strip("/"))
    try:
        meta = _check_complete(dest, storage_options, f"member {name!r}")
    except StoreError as e:
        raise StoreError(f"{store_url}: {str(e).split(': ', 1)[-1]}") from None
    with quiet_zarr():
        ds = xr.open_zarr(
            dest,
            consolidated=False,
            zarr_format=3,
            chunks={},
            storage_options=zarr_options(dest, storage_options),
        )
    ds = _coords_to_memory(ds, dest, storage_options)
    ds.attrs = {**ds.attrs, "cmapdask": meta}
    return ds


def has_member(store_url, name: str, *, storage_options: dict | None = None) -> bool:
    try:
        _check_complete(join(store_url, name.strip("/")), storage_options, "member")
        return True
    except StoreError:
        return False


def list_members(store_url, *, storage_options: dict | None = None) -> list[str]:
    """Names of the complete member groups of a store (``index/bing``, ...)."""
    found = []
    with quiet_zarr():
        root = zarr.open_group(
            store_url,
            mode="r",
            storage_options=zarr_options(store_url, storage_options),
            use_consolidated=False,
        )

        def walk(g, prefix):
            for key, sub in g.groups():
                path = f"{prefix}{key}"
                if dict(sub.attrs.get("cmapdask", {})).get("complete"):
                    found.append(path)
                else:
                    walk(sub, path + "/")

        walk(root, "")
    return sorted(found)


def store_info(url, *, storage_options: dict | None = None) -> dict:
    """Shape, fields, chunking, compression and provenance of a store (for ``cmapdask info``)."""
    ds = open_store(url, storage_options=storage_options)
    with quiet_zarr():
        g = _open_group(url, "r", storage_options)
        if "expr" in g:
            arr = g["expr"]
            codecs = [type(c).__name__ for c in arr.metadata.codecs]
        else:  # a virtual store: expr is the source's matrix, read in place
            arr = ds["expr"].data
            v = ds.attrs["cmapdask"]["virtual"]
            codecs = [f"virtual:{v['layout']}:{v['dtype']}"] + [
                {1: "deflate", 2: "shuffle", 3: "fletcher32"}[c] for c in v["filters"]
            ]
        nbytes_stored = _stored_bytes(url, storage_options)
    return {
        "kind": "store",
        "url": str(url),
        "shape": {"sig": ds.sizes["sig"], "gene": ds.sizes["gene"]},
        "chunks": [int(c[0]) if isinstance(c, tuple) else int(c) for c in arr.chunks],
        "dtype": str(arr.dtype),
        "codecs": codecs,
        "stored_bytes": nbytes_stored,
        "sig_fields": sorted(k for k, c in ds.coords.items() if c.dims == ("sig",) and k != "sig"),
        "gene_fields": sorted(
            k for k, c in ds.coords.items() if c.dims == ("gene",) and k != "gene"
        ),
        "members": list_members(url, storage_options=storage_options),
        "provenance": ds.attrs["cmapdask"],
    }


def _stored_bytes(url, storage_options) -> int | None:
    try:
        fs, p = url_to_fs(url, storage_options)
        return int(fs.du(p))
    except Exception:  # size is informative only
        return None


# ------------------------------------------------------------------------------ convert


def _sha256(url, storage_options, out: dict, stop: threading.Event) -> None:
    """SHA-256 of the file at ``url`` into ``out["sha256"]`` (or its error into
    ``out["error"]``). Local files are read into one reused buffer (no fresh 8 MiB per
    read); hashlib and the reads release the GIL, so this runs beside the conversion."""
    try:
        fs, p = url_to_fs(url, storage_options)
        h = hashlib.sha256()
        if is_local(fs):
            buf = bytearray(8 * 2**20)
            view = memoryview(buf)
            with open(p, "rb", buffering=0) as f:
                while not stop.is_set() and (n := f.readinto(buf)):
                    h.update(view[:n])
        else:
            with fs.open(p, "rb", block_size=8 * 2**20) as f:
                while not stop.is_set() and (chunk := f.read(8 * 2**20)):
                    h.update(chunk)
        if not stop.is_set():  # stopped: a partial hash is no hash
            out["sha256"] = h.hexdigest()
    except Exception as e:  # reported by convert, which then fails
        out["error"] = e


def convert(
    src,
    dest,
    sig_info=None,
    gene_info=None,
    compound_info=None,
    *,
    cell_info=None,
    inst_info=None,
    genetic_info=None,
    storage_options: dict | None = None,
    src_storage_options: dict | None = None,
    extra_ids: Literal["error", "ignore"] = "error",
    chunk_rows: int | None = None,
    overwrite: bool = False,
    checksum: bool = True,
    virtual: bool = False,
    progress: bool = False,
) -> str:
    """Convert a GCTx (or GCT) file into a new signature store, with metadata joined.

    Parameters
    ----------
    src
        ``.gctx`` (HDF5, sniffed) or ``.gct`` text file, local or fsspec URL.
    dest
        Store URL: local path, ``memory://...``, ``s3://...``. Absent or an empty folder;
        with ``overwrite`` a store cmapdask wrote is replaced (never another folder or a
        file; see :mod:`cmapdask.io.atomic`).
    sig_info, gene_info, compound_info
        Optional release tables (TSV or Parquet): ``siginfo`` (one row per signature,
        id column ``sig_id``), ``geneinfo`` (``gene_id``), ``compoundinfo`` (``pert_id``,
        joined through the signatures' ``pert_id``; several rows of a compound fold into
        ``|``-separated values). Table fields override same-named fields of the file.
    cell_info, inst_info, genetic_info
        Optional release tables kept beside the others (``cellinfo``, ``instinfo``,
        ``geneticinfo``), not joined. Every table given is kept in the store as Parquet
        (the ``tables`` member) for :mod:`cmapdask.data` and :func:`cmapdask.sql`.
    extra_ids
        ``"error"``: a table row whose id is not in the matrix is an error;
        ``"ignore"``: such rows are skipped (release-wide tables with a subset matrix).
    chunk_rows
        Signatures per ``expr`` chunk (default: about ``cmapdask.store.chunk_mb`` MiB,
        a multiple of the source's chunk rows).
    checksum
        Record the SHA-256 of the source (read once more, sequentially, in a thread of
        the calling process beside the conversion; ``convert`` fails if it cannot).
    virtual
        Write a virtual store (GCTx only): metadata as usual, but no ``expr`` array;
        :func:`open_store` reads the source's own chunks in place (local or ``s3://``) from
        byte references kept in the store (:mod:`cmapdask.io.virtual`). The source must
        stay where it is, unchanged (its size and mtime/ETag are checked on open).

    Returns
    -------
    str
        ``dest``.

    Notes
    -----
    Runs on the active Dask scheduler: each task reads one block of whole signatures
    from the source (opening the file itself) and writes one compressed chunk, so memory
    per worker is a few chunks (tens of MB) whatever the input size. The client holds
    the metadata (O(n_sig + n_gene)) and one 8 MiB buffer for the checksum. Every chunk
    is compressed once and written once; the metadata are read once. Nothing is visible
    at ``dest`` until the store is complete.

    A virtual store reads only the source's HDF5 metadata and chunk index at conversion
    (nothing of the matrix but the checksum's pass). Copy instead of referencing when the
    store will be read often or remotely: a GCTx read in place is read in the file's own
    chunks and compression (small or gene-split chunks mean many small requests), the
    source must never move or change, and members that need the matrix rearranged (the
    query index, ``cmapdask index``; rechunked or appended stores) read all of it anyway.
    """
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or int(chunk_rows) < 1):
        raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    check_destination(dest, storage_options=storage_options, overwrite=overwrite)
    src_name = os.path.basename(str(src).rstrip("/"))
    fs, p = url_to_fs(src, src_storage_options)
    if not fs.exists(p):
        raise StoreError(f"{src}: no such file")
    size = int(fs.size(p))
    digest: dict = {}
    hasher = None
    stop = threading.Event()
    if checksum:
        # started first, so the one sequential pass over the source overlaps the
        # metadata reads and joins as well as the chunk writes
        hasher = threading.Thread(
            target=_sha256, args=(src, src_storage_options, digest, stop), daemon=True
        )
        hasher.start()
    try:
        dest = (_convert_virtual if virtual else _convert)(
            src,
            dest,
            src_name,
            size,
            digest,
            hasher,
            sig_info,
            gene_info,
            compound_info,
            storage_options=storage_options,
            src_storage_options=src_storage_options,
            extra_ids=extra_ids,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        stop.set()  # a failed conversion does not leave a hash reading on
    given = {
        "siginfo": sig_info,
        "geneinfo": gene_info,
        "compoundinfo": compound_info,
        "cellinfo": cell_info,
        "instinfo": inst_info,
        "geneticinfo": genetic_info,
    }
    if any(v is not None for v in given.values()):
        _keep_tables(dest, given, storage_options)
    return dest


def _keep_tables(dest, given: dict, storage_options) -> None:
    """The release's tables as the store's ``tables`` member (siginfo and geneinfo
    restricted to the store's signatures and genes, in store order)."""
    from cmapdask.data.tables import write_tables
    from cmapdask.io.tables import ID_COLUMNS, read_table

    ds = open_store(dest, storage_options=storage_options)
    tables = {}
    for name, path in given.items():
        if path is None:
            continue
        df = read_table(path)
        kind = {"siginfo": "sig", "geneinfo": "gene"}.get(name)
        if kind:
            col = next(c for c in ID_COLUMNS[kind] if c in df.columns)
            df = df.assign(**{col: df[col].astype(str)}).drop_duplicates(col).set_index(col)
            df = df.reindex(ds[kind].values.astype(str)).rename_axis(f"{kind}_id").reset_index()
        tables[name] = df
    write_tables(dest, tables, storage_options=storage_options)


def _convert_virtual(*args, **kwargs) -> str:
    from cmapdask.io.virtual import convert_virtual

    return convert_virtual(*args, **kwargs)


def _convert(
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
    from cmapdask.io.gct import is_gct, read_gct
    from cmapdask.io.gctx import is_gctx, matrix_layout, read_gctx

    if is_gctx(src, src_storage_options):
        (_, n_gene), file_chunks = matrix_layout(src, storage_options=src_storage_options)
        rows = chunk_rows or store_chunk_rows(
            n_gene, file_rows=file_chunks[0] if file_chunks else None
        )
        ds = read_gctx(src, chunks=(rows, n_gene), storage_options=src_storage_options)
        fmt = "gctx"
    elif is_gct(src, src_storage_options):  # by content: GCT text may be named .gctx
        ds = read_gct(src, storage_options=src_storage_options)
        rows = chunk_rows
        fmt = "gct"
    else:
        from cmapdask.errors import GCTxFormatError

        raise GCTxFormatError(
            f"{src}: neither a GCTx (HDF5 with /0/DATA/0/matrix) nor GCT text (#1.2/#1.3)"
        )
    if ds.sizes["sig"] == 0 or ds.sizes["gene"] == 0:
        raise StoreError(
            f"{src}: the matrix is empty ({ds.sizes['gene']} genes x {ds.sizes['sig']} "
            "signatures); nothing to convert"
        )
    ds, tables = _join_tables(ds, src_name, sig_info, gene_info, compound_info, extra_ids)
    source = {"name": src_name, "url": str(src), "format": fmt, "size": size}

    def provenance():
        if hasher is not None:  # the hash runs beside the conversion; wait for it here
            hasher.join()
            if "error" in digest:
                e = digest["error"]
                raise StoreError(
                    f"{src}: cannot read it for its SHA-256: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                )
            source["sha256"] = digest["sha256"]
        return {"source": source, "tables": tables}

    return _write_dataset(
        ds,
        dest,
        storage_options=storage_options,
        rows=rows,
        overwrite=overwrite,
        progress=progress,
        provenance=provenance,
    )


def _join_tables(ds, src_name, sig_info, gene_info, compound_info, extra_ids):
    from cmapdask.io.tables import join_compounds, join_table, read_table

    tables = {}
    sig_fields, gene_fields = {}, {}
    if sig_info is not None:
        t = read_table(sig_info)
        tables["sig_info"] = _table_prov(sig_info)
        sig_fields = join_table(
            ds["sig"].values, t, kind="sig", source=src_name, extra_ids=extra_ids
        )
    if gene_info is not None:
        t = read_table(gene_info)
        tables["gene_info"] = _table_prov(gene_info)
        gene_fields = join_table(
            ds["gene"].values, t, kind="gene", source=src_name, extra_ids=extra_ids
        )
    if compound_info is not None:
        t = read_table(compound_info)
        tables["compound_info"] = _table_prov(compound_info)
        if "pert_id" in sig_fields:
            pert = sig_fields["pert_id"]
        elif "pert_id" in ds.coords:
            pert = ds["pert_id"].values
        else:
            from cmapdask.errors import MetadataError

            raise MetadataError(
                f"{os.path.basename(str(compound_info))}: cannot join compounds: the signatures "
                "have no pert_id field (give --sig-info)"
            )
        for k, v in join_compounds(pert, t).items():
            sig_fields.setdefault(k, v)
    # a field may exist on the other axis already (from the file or the other table)
    taken_sig = set(sig_fields) | {k for k, c in ds.coords.items() if c.dims == ("sig",)}
    gene_fields = {(f"gene_{k}" if k in taken_sig else k): v for k, v in gene_fields.items()}
    taken_gene = {k for k, c in ds.coords.items() if c.dims == ("gene",)}
    sig_fields = {(f"sig_{k}" if k in taken_gene else k): v for k, v in sig_fields.items()}
    ds = ds.assign_coords({k: ("sig", v) for k, v in sig_fields.items()})
    ds = ds.assign_coords({k: ("gene", v) for k, v in gene_fields.items()})
    return ds, tables


def _table_prov(path) -> dict:
    fs, p = url_to_fs(path)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return {"name": os.path.basename(str(path)), "size": int(fs.size(p)), "sha256": h.hexdigest()}
