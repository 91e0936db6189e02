"""Appending signatures: a new immutable version = the previous one plus new rows.

Nothing of the previous version is modified. Its ``expr`` chunks are shared (hard links
locally, server-side copies on object storage) except the last, partial one, which is
copied and then completed with the first new rows; ``expr`` is resized and only the new
chunks are written. The 1-D signature coordinates (ids, metadata) are small and are
written afresh. Members (similarity, index, ...) are not carried over: ``rebuild`` makes
them for the new version.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from cmapdask._version import __version__
from cmapdask.errors import InputError, MetadataError
from cmapdask.io.atomic import is_local, url_to_fs
from cmapdask.io.lock import collection_lock
from cmapdask.io.pending import deferrable
from cmapdask.io.store import consolidate, quiet_zarr, zarr_options
from cmapdask.model.missing import is_missing
from cmapdask.rebuild.faults import checkpoint
from cmapdask.rebuild.versions import (
    check_collection,
    list_versions,
    next_version_id,
    open_version,
    version_url,
    write_manifest,
)

__all__ = ["append", "clone_version", "reconcile_fields"]


def file_provenance(url, storage_options=None) -> dict:
    """Name, size and SHA-256 of an input file (read once, 16 MiB at a time)."""
    fs, p = url_to_fs(url, storage_options)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return {
        "name": os.path.basename(str(url)),
        "url": str(url),
        "size": int(fs.size(p)),
        "sha256": h.hexdigest(),
    }


def _check_source(new, storage_options, *, what: str = "GCTx file") -> None:
    """A missing source or a folder is bad input (exit 2), not a traceback or a retry."""
    from cmapdask.io.atomic import url_to_fs

    fs, p = url_to_fs(str(new), storage_options)
    if not fs.exists(p):
        raise InputError(f"{new}: no such file")
    if fs.isdir(p):
        raise InputError(f"{new}: is a folder, not a {what}")


@deferrable("new store version", "root")
def append(
    root,
    new,
    *,
    sig_info=None,
    gene_info=None,
    storage_options: dict | None = None,
    src_storage_options: dict | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
    compute: bool = True,
) -> str:
    """Add the signatures of a GCTx file to a collection as a new, staged version.

    Parameters
    ----------
    root
        Collection URL (local path, ``s3://...``); created by the first append.
    new
        GCTx file of new signatures (all genes of the collection, any order).
    sig_info
        Optional siginfo table (TSV/Parquet, id column ``sig_id``) for the new signatures.
    gene_info
        Optional geneinfo table; only for the first version (gene metadata is fixed by it).
    chunk_rows
        Signatures per ``expr`` chunk; only for the first version (later ones keep it).
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        The new version id (staged: ``cmapdask rebuild`` publishes it).

    Raises
    ------
    MetadataError
        Signature ids already in the collection or repeated, genes that differ from the
        collection's, or a metadata field that is numeric on one side and text on the
        other.
    LockedError
        Another append or rebuild of ``root`` is at work (``ROOT/LOCK``, see
        :mod:`cmapdask.io.lock`).

    Notes
    -----
    Reads the new file once (one block of whole signatures per task) and the previous
    version's 1-D metadata; writes only the new ``expr`` chunks (plus a copy of the last
    partial one) and the signature metadata (O(n_sig) strings, held by the client). Time
    is proportional to the new signatures, plus one link/copy per existing chunk object.
    """
    _check_source(new, src_storage_options)  # before the lock creates the collection
    for table in (sig_info, gene_info):
        if table is not None:
            _check_source(table, None, what="table")
    existed = check_collection(root, storage_options=storage_options, create=True)
    with collection_lock(root, storage_options=storage_options, command="append"):
        try:
            return _append(
                root,
                new,
                sig_info=sig_info,
                gene_info=gene_info,
                storage_options=storage_options,
                src_storage_options=src_storage_options,
                chunk_rows=chunk_rows,
                progress=progress,
            )
        except BaseException:
            if not existed:  # the collection this append began: nothing else is in it
                _remove_tree(root, storage_options)
            raise


def _append(
    root, new, *, sig_info, gene_info, storage_options, src_storage_options, chunk_rows, progress
) -> str:
    from cmapdask.io.gctx import read_gctx
    from cmapdask.io.store import convert

    t0 = time.perf_counter()
    versions = list_versions(root, storage_options=storage_options)
    vid = next_version_id(root, storage_options=storage_options)
    dest = version_url(root, vid)
    _remove_tree(dest, storage_options)  # leftovers of a killed append of this id
    inputs = {"gctx": file_provenance(new, src_storage_options)}
    if sig_info is not None:
        inputs["sig_info"] = file_provenance(sig_info)
    if not versions:
        if gene_info is not None:
            inputs["gene_info"] = file_provenance(gene_info)
        convert(
            new,
            dest,
            sig_info,
            gene_info,
            storage_options=storage_options,
            src_storage_options=src_storage_options,
            chunk_rows=chunk_rows,
            progress=progress,
        )
        parent, n_old = None, 0
        n_tot = open_version_store(dest, storage_options).sizes["sig"]
    else:
        if gene_info is not None:
            raise InputError(f"{gene_info}: gene metadata is fixed by the first version of {root}")
        parent = versions[-1]["version"]
        base = open_version(root, parent, storage_options=storage_options)
        ds = read_gctx(new, storage_options=src_storage_options)
        if sig_info is not None:
            ds = _join_sig_info(ds, sig_info, os.path.basename(str(new)))
        x, fields = _check_new(base, ds, str(new), f"{root} ({parent})")
        n_old, n_tot = base.sizes["sig"], base.sizes["sig"] + ds.sizes["sig"]
        _extend(
            version_url(root, parent),
            dest,
            x,
            fields,
            n_old,
            storage_options,
            progress,
            {"version": vid, "parent": parent},
        )
    write_manifest(
        root,
        {
            "version": vid,
            "parent": parent,
            "status": "staged",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "package_version": __version__,
            "n_sig": int(n_tot),
            "n_new": int(n_tot - n_old),
            "inputs": inputs,
            "timings": {"append": round(time.perf_counter() - t0, 3)},
        },
        storage_options=storage_options,
    )
    return vid


def open_version_store(url, storage_options):
    from cmapdask.io.store import open_store

    return open_store(url, storage_options=storage_options)


def _join_sig_info(ds: xr.Dataset, sig_info, src_name: str) -> xr.Dataset:
    from cmapdask.io.tables import join_table, read_table

    t = read_table(sig_info)
    fields = join_table(ds["sig"].values, t, kind="sig", source=src_name)
    return ds.assign_coords({k: ("sig", v) for k, v in fields.items()})


def _sig_fields(ds: xr.Dataset) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(c.values) for k, c in ds.coords.items() if c.dims == ("sig",) and k != "sig"
    }


def _kind(v: np.ndarray) -> str:
    if v.dtype.kind in "iub":
        return "int"
    if v.dtype.kind == "f":
        return "float"
    # object arrays from readers: numbers stay numbers, text is str, missing None/NaN
    vals = [x for x in v.tolist() if not (x is None or (isinstance(x, float) and x != x))]
    if vals and all(
        isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in vals
    ):
        return "float"
    return "str" if vals else "empty"


def _missing(n: int, kind: str) -> np.ndarray:
    return np.full(n, np.nan) if kind in ("int", "float") else np.full(n, None, dtype=object)


def reconcile_fields(old: dict, new: dict, n_old: int, n_new: int, *, where: str) -> dict:
    """Signature metadata of old + new rows, field by field.

    A field on one side only is missing (NaN / None) on the other; integers meeting
    floats or missing values become float64; a field that is numeric on one side and text
    on the other is refused (:class:`MetadataError` naming the field).
    """
    out = {}
    for name in [*old, *(f for f in new if f not in old)]:
        a, b = old.get(name), new.get(name)
        ka = _kind(a) if a is not None else "empty"
        kb = _kind(b) if b is not None else "empty"
        kinds = {ka, kb} - {"empty"}
        if kinds == {"str", "int"} or kinds == {"str", "float"}:
            raise MetadataError(
                f"{where}: metadata field {name!r} is {'text' if ka == 'str' else 'numeric'} in "
                f"the collection but {'text' if kb == 'str' else 'numeric'} in the new signatures"
            )
        kind = "str" if "str" in kinds else "int" if kinds == {"int"} else "float"
        a = a if a is not None else _missing(n_old, kind)
        b = b if b is not None else _missing(n_new, kind)
        if kind == "int" and a.dtype.kind in "iub" and b.dtype.kind in "iub":
            out[name] = np.concatenate([a.astype(np.int64), b.astype(np.int64)])
        elif kind in ("int", "float"):
            out[name] = np.concatenate(
                [
                    pd.to_numeric(pd.Series(a, dtype=object)).to_numpy(float),
                    pd.to_numeric(pd.Series(b, dtype=object)).to_numpy(float),
                ]
            )
        else:
            vals = [None if is_missing(v) else str(v) for v in (*a.tolist(), *b.tolist())]
            out[name] = np.array(vals, dtype=object)
    return out


def _check_new(base: xr.Dataset, ds: xr.Dataset, name: str, where: str):
    """The new rows' expr in the collection's gene order and the reconciled metadata."""
    if ds.sizes["sig"] == 0:
        raise InputError(f"{name}: no signatures to append")
    ids = ds.indexes["sig"]
    if ids.has_duplicates:
        raise MetadataError(f"{name}: duplicate signature id {str(ids[ids.duplicated()][0])!r}")
    clash = ids.intersection(base.indexes["sig"])
    if len(clash):
        raise MetadataError(
            f"{name}: {len(clash)} signature id(s) already in {where}, e.g. {str(clash[0])!r}"
        )
    genes = base.indexes["gene"]
    pos = ds.indexes["gene"].get_indexer(genes)
    if (pos < 0).any():
        raise MetadataError(
            f"{name}: lacks {int((pos < 0).sum())} gene(s) of {where}, "
            f"e.g. {str(genes[pos < 0][0])!r}"
        )
    if ds.sizes["gene"] != len(genes):
        extra = ds.indexes["gene"].difference(genes)
        raise MetadataError(f"{name}: {len(extra)} gene(s) not in {where}, e.g. {str(extra[0])!r}")
    x = ds["expr"].data
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x))
    if not np.array_equal(pos, np.arange(len(genes))):
        x = x[:, pos]
    fields = reconcile_fields(
        _sig_fields(base),
        _sig_fields(ds),
        base.sizes["sig"],
        ds.sizes["sig"],
        where=f"{name} -> {where}",
    )
    fields["sig"] = np.array([*map(str, base.indexes["sig"]), *map(str, ids)], dtype=object)
    return x.astype(np.float32), fields


# ------------------------------------------------------------------------------ copying


def _remove_tree(url, storage_options) -> None:
    fs, p = url_to_fs(url, storage_options)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def _share_base(src: str, dest: str, skip: set[str], partial_chunk: str | None, storage_options):
    """Copy the previous version's tree minus ``skip`` (arrays rewritten) and members.

    ``expr`` chunk objects are linked (locally) or copied server-side; metadata files and
    the partial chunk are real copies, since they are about to be rewritten.
    """
    fs, sp = url_to_fs(src, storage_options)
    _, dp = url_to_fs(dest, storage_options)
    sp, dp = sp.rstrip("/"), dp.rstrip("/")
    with quiet_zarr():
        g = zarr.open_group(
            src,
            mode="r",
            storage_options=zarr_options(src, storage_options),
            use_consolidated=False,
        )
        arrays = [name for name, _ in g.arrays() if name not in skip]
    local = is_local(fs)
    files = [f"{sp}/zarr.json"]
    for name in arrays:
        files += [f for f in fs.find(f"{sp}/{name}")]
    for f in files:
        rel = f[len(sp) + 1 :]
        target = f"{dp}/{rel}"
        if rel == "zarr.json":  # incomplete until the caller has finished the version
            _copy_incomplete(fs, f, target)
        elif local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if rel.startswith("expr/c/") and rel != partial_chunk:
                os.link(f, target)  # immutable chunk: share it
            else:
                shutil.copyfile(f, target)
        else:
            fs.copy(f, target)
    if not local:
        fs.invalidate_cache()


def _copy_incomplete(fs, src: str, dest: str) -> None:
    """Copy a group's ``zarr.json`` with ``attributes.cmapdask.complete`` false: a version
    killed while being made never reads as complete when opened directly."""
    with fs.open(src, "rb") as f:
        meta = json.loads(f.read().decode())
    attrs = meta.setdefault("attributes", {})
    attrs["cmapdask"] = {**dict(attrs.get("cmapdask") or {}), "complete": False}
    fs.makedirs(os.path.dirname(dest), exist_ok=True)
    fs.pipe_file(dest, json.dumps(meta, indent=2).encode())


def _extend(src, dest, x, fields, n_old, storage_options, progress, prov):
    n_new, n_gene = x.shape
    n_tot = n_old + n_new
    with quiet_zarr():
        g = zarr.open_group(
            src,
            mode="r",
            storage_options=zarr_options(src, storage_options),
            use_consolidated=False,
        )
        rows = int((g["expr"].shards or g["expr"].chunks)[0])  # whole chunks or shards
        sig_arrays = {
            name
            for name, a in g.arrays()
            if (a.metadata.dimension_names or (None,))[0] == "sig" and name != "expr"
        }
        sep = "/"
    partial = f"expr/c{sep}{n_old // rows}{sep}0" if n_old % rows else None
    _share_base(src, dest, sig_arrays, partial, storage_options)
    checkpoint("append")  # fault injection for the tests (a no-op unless asked)
    opts = zarr_options(dest, storage_options)
    with quiet_zarr():
        root = zarr.open_group(dest, mode="r+", storage_options=opts, use_consolidated=False)
        meta = dict(root.attrs.get("cmapdask", {}))
        root.attrs["cmapdask"] = {**meta, "complete": False}
        arr = root["expr"]
        arr.resize((n_tot, n_gene))
    # one task per Zarr chunk: the first block fills the partial chunk, then whole chunks
    first = min(n_new, (rows - n_old % rows) % rows or rows)
    rest = n_new - first
    chunks = (first, *([rows] * (rest // rows)), *([rest % rows] if rest % rows else []))
    x = x.rechunk({0: chunks, 1: -1})
    job = x.map_blocks(
        _store_block,
        n_old=n_old,
        url=dest,
        opts=opts,
        dtype=np.int8,
        chunks=((1,) * x.numblocks[0], (1,)),
    )
    bad = (~da.isfinite(x)).any(axis=1)  # counted in the same pass as the write
    _, bad = dask.compute(job, bad)  # progress is the command line's (cmapdask.cli.runtime)
    checkpoint("append")
    coords = {}
    for k, v in fields.items():
        if v.dtype.kind == "O":
            v = np.array(["" if s is None else s for s in v.tolist()], dtype=object)
        coords[k] = ("sig", v)
    sig_ds = xr.Dataset(coords={"sig": coords.pop("sig")[1]}).assign_coords(coords)
    with quiet_zarr():
        sig_ds.to_zarr(dest, mode="a", zarr_format=3, consolidated=False, storage_options=opts)
        root = zarr.open_group(dest, mode="r+", storage_options=opts, use_consolidated=False)
        rec = _nonfinite_record(meta.pop("nonfinite", None), bad, fields["sig"], n_old)
        root.attrs["cmapdask"] = {**meta, **prov, **rec, "n_sig": int(n_tot), "complete": True}
    consolidate(dest, storage_options)  # the copied consolidated metadata is stale now


def _store_block(block, n_old, url, opts, block_info=None):
    from cmapdask.io.store.write import store_rows

    (start, _), _ = block_info[0]["array-location"]
    store_rows(url, opts, n_old + start, np.asarray(block, dtype=np.float32))
    return np.zeros((1, 1), np.int8)


def _nonfinite_record(old, bad, sig, n_old) -> dict:
    """The parent's count of NaN/Inf signatures plus the new ones (``index`` trusts a
    count of 0); nothing when the parent did not count them."""
    if not isinstance(old, dict):
        return {}
    new = np.flatnonzero(np.asarray(bad))
    out = {"n_sig": int(old.get("n_sig", 0)) + int(new.size)}
    first = old.get("first") or (str(sig[n_old + new[0]]) if new.size else None)
    return {"nonfinite": {**out, "first": first} if first else out}


def clone_version(root, parent: str, *, storage_options: dict | None = None) -> str:
    """A new staged version with the same signatures as ``parent`` (data shared, no
    members): what a full rebuild with nothing appended publishes."""
    vid = next_version_id(root, storage_options=storage_options)
    dest = version_url(root, vid)
    _remove_tree(dest, storage_options)
    _share_base(version_url(root, parent), dest, set(), None, storage_options)
    opts = zarr_options(dest, storage_options)
    with quiet_zarr():
        g = zarr.open_group(dest, mode="r+", storage_options=opts, use_consolidated=False)
        g.attrs["cmapdask"] = {
            **dict(g.attrs.get("cmapdask", {})),
            "version": vid,
            "parent": parent,
            "complete": True,
        }
        n = int(g["expr"].shape[0])
    consolidate(dest, storage_options)  # the copy lists the parent's members
    write_manifest(
        root,
        {
            "version": vid,
            "parent": parent,
            "status": "staged",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "package_version": __version__,
            "n_sig": n,
            "n_new": 0,
            "inputs": {},
            "timings": {},
        },
        storage_options=storage_options,
    )
    return vid
