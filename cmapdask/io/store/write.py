"""Writing stores and members: ``expr`` as one task per chunk of whole signatures (each
chunk compressed once, written once, never read back), coordinates and attributes, then
published atomically (:mod:`cmapdask.io.store.publish`).
"""

from __future__ import annotations

import re
import warnings

import dask
import numpy as np
import xarray as xr
import zarr

from cmapdask.errors import NonFiniteWarning, StoreError
from cmapdask.io.atomic import join, publish_dir
from cmapdask.io.malloc import roomy_malloc
from cmapdask.io.pending import deferrable
from cmapdask.io.store.access import _is_local_url, _open_group, quiet_zarr, zarr_options
from cmapdask.io.store.layout import (
    _expr_encoding,
    _provenance,
    _strings_to_str,
    store_chunk_rows,
)
from cmapdask.io.store.publish import (
    _check_complete,
    _set_complete,
    ensure_parent_groups,
    mark_complete_remote,
    remove_empty_groups,
)
from cmapdask.io.store.shards import sharded_matrix, write_shard

__all__ = ["write_member", "write_store", "check_member_name", "MEMBER_FAMILIES"]

# first components of the members each writer owns; ``tables`` is the release tables'
MEMBER_FAMILIES = frozenset({"tables", "index", "background", "clusters", "similarity"})
_MEMBER_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def check_member_name(
    store_url, name, *, family: str | None = None, storage_options: dict | None = None
) -> str:
    """``name`` as a member name of ``store_url``, or :class:`StoreError` (one line).

    A member name is a name, never a path: ``/``-separated parts of letters, digits and
    ``_ . + = -`` (no leading ``.``, no ``..``, not absolute); it may not be one of the
    store's arrays (``expr``, the coordinates) or lie in another writer's family
    (:data:`MEMBER_FAMILIES`: ``tables`` always, the others unless ``family`` is theirs).
    """
    text = str(name)
    parts = text.split("/")
    if (
        not text
        or text.startswith("/")
        or text.endswith("/")
        or not all(_MEMBER_PART.match(p) for p in parts)
    ):
        raise StoreError(
            f"{store_url}: invalid member name {text!r} (a name such as similarity/mine, "
            "not a path)"
        )
    first = parts[0]
    if first in MEMBER_FAMILIES and first != family and (family is not None or first == "tables"):
        raise StoreError(
            f"{store_url}: member name {text!r} lies in {first}/, which another writer "
            f"owns; choose a name{f' below {family}/' if family else ''}"
        )
    from cmapdask.io.atomic import _read_json, url_to_fs

    fs, root = url_to_fs(store_url, storage_options)
    for i in range(1, len(parts) + 1):
        meta = _read_json(fs, join(root, *parts[:i], "zarr.json")) or {}
        if meta.get("node_type") == "array":
            raise StoreError(
                f"{store_url}: member name {text!r} names the store's array "
                f"{'/'.join(parts[:i])!r}; refusing to replace it"
            )
    return text


@deferrable("signature store", "dest")
def write_store(
    ds: xr.Dataset,
    dest,
    *,
    storage_options: dict | None = None,
    provenance: dict | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    compute: bool = True,
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
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

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
    with roomy_malloc():  # (no quiet_zarr here: warning filters are not thread-safe)
        values = np.asarray(block, dtype=np.float32)
        store_rows(url, storage_options, start, values)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    first = start + int(bad[0]) if bad.size else -1
    from cmapdask.rebuild.faults import checkpoint

    checkpoint("write")  # fault injection for the kill tests (a no-op unless asked)
    return np.array([[stop - start, bad.size, first]], dtype=np.int64)


def store_rows(url, storage_options, start: int, values: np.ndarray) -> None:
    """Write ``values`` as ``expr[start:start + len(values)]``: whole chunks (shards), the
    last possibly short; a block starting inside a shard (an append) rewrites that shard
    with its earlier signatures, read back."""
    arr = zarr.open_array(
        url, path="expr", mode="r+", storage_options=zarr_options(url, storage_options)
    )
    sharded = sharded_matrix(arr, url, storage_options)
    if sharded is None:
        # every chunk is written: no pass comparing each chunk with the fill value (a
        # tenth of the conversion's CPU); an all-NaN block is stored like any other
        arr = arr.with_config({"write_empty_chunks": True})
        arr[start : start + values.shape[0], :] = values
        return
    s, off = divmod(start, sharded.shard_rows)
    if off:
        values = np.concatenate([sharded.take(np.arange(start - off, start)), values])
    write_shard(sharded, s, values)  # encoded here: zarr's sharding codec is far slower


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


def _compute(job, *, progress: bool, label: str):
    # the library draws no progress: the command line does (cmapdask.cli.runtime)
    return dask.compute(job)[0]


@deferrable("store member", lambda a: join(a["store_url"], str(a["name"]).strip("/")))
def write_member(
    store_url,
    name: str,
    ds: xr.Dataset,
    *,
    storage_options: dict | None = None,
    provenance: dict | None = None,
    encoding: dict | None = None,
    progress: bool = False,
    family: str | None = None,
    compute: bool = True,
) -> str:
    """Add or replace the member group ``name`` (e.g. ``"index/bing"``) of a store.

    The member is written beside its final place and published in one step; readers of
    the store never see it half-written, and ``expr`` is never touched.

    Parameters
    ----------
    name
        A member name, never a path (:func:`check_member_name`).
    family
        The writer's own first component (``"similarity"``, ``"index"``, ...): the members
        of the other families (:data:`MEMBER_FAMILIES`) are refused.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Notes
    -----
    Dask-backed variables are computed in parallel on the active scheduler, one chunk per
    task; nothing else is held in memory.
    """
    _check_complete(store_url, storage_options, "store")
    name = check_member_name(store_url, name, family=family, storage_options=storage_options)
    created = ensure_parent_groups(store_url, name, storage_options)
    dest = join(store_url, name)
    out = _strings_to_str(ds)
    out.attrs = {
        **{k: v for k, v in ds.attrs.items() if k != "cmapdask"},
        "cmapdask": _provenance(member=name, **(provenance or {}), complete=False),
    }
    try:
        with (
            publish_dir(dest, storage_options=storage_options, overwrite=True) as tmp,
            quiet_zarr(),
        ):
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
    except BaseException:
        remove_empty_groups(store_url, created, storage_options)
        raise
    mark_complete_remote(dest, storage_options)
    return dest
