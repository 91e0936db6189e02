"""Opening stores and members lazily: ``expr`` dask-backed in its own chunks, the 1-D
coordinates read into memory, a virtual store's matrix read from its source in place.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cmapdask import config
from cmapdask.environment import check_default_client
from cmapdask.errors import StoreError
from cmapdask.io.atomic import join
from cmapdask.io.store.access import _open_group, quiet_zarr, zarr_options
from cmapdask.io.store.layout import _STRING_KINDS
from cmapdask.io.store.publish import _check_complete
from cmapdask.io.store.shards import ShardedMatrix, sharded_matrix

__all__ = ["has_member", "list_members", "open_member", "open_store", "take_sigs"]


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
    check_default_client()  # workers that run another release fail here, in one line
    meta = _check_complete(url, storage_options, "store")
    with quiet_zarr():
        ds = xr.open_zarr(
            url,
            consolidated=False,
            zarr_format=3,
            chunks={},
            storage_options=zarr_options(url, storage_options),
            create_default_indexes=False,  # the ids are read (or cached) just below
        )
    needed = ("sig", "gene") if meta.get("virtual") else ("expr", "sig", "gene")
    missing = [v for v in needed if v not in ds.variables]
    if missing:
        raise StoreError(
            f"{url}: a damaged store: array {missing[0]!r} is missing "
            f"(no {missing[0]}/zarr.json); convert the source again"
        )
    key = (str(url), json.dumps(meta, sort_keys=True, default=str))
    ds = _coords_to_memory(ds, url, storage_options, key=key)
    if meta.get("virtual"):  # expr reads the source GCTx's chunks in place
        from cmapdask.io.virtual import open_virtual

        ds = open_virtual(ds, meta, url, storage_options)
    else:
        m = _sharded(url, storage_options)
        if m is not None:
            ds = ds.assign(expr=ds["expr"].copy(deep=False, data=_shard_array(m, meta)))
    ds.attrs = {"cmapdask": meta, "store_url": str(url)}
    return ds


def _sharded(url, storage_options) -> ShardedMatrix | None:
    """The store's ``expr`` as a :class:`ShardedMatrix` when cmapdask wrote its shards."""
    with quiet_zarr():
        g = _open_group(url, "r", storage_options)
        arr = g["expr"] if "expr" in g else None
    if arr is None or isinstance(arr, zarr.Group):
        return None
    return sharded_matrix(arr, url, zarr_options(url, storage_options))


def _shard_array(m: ShardedMatrix, meta: dict) -> da.Array:
    """``expr`` as a dask array of one task per shard (one request, decoded here)."""
    name = "expr-" + dask.base.tokenize(m.url, m.shape, m.shard_rows, m.inner, meta)
    return da.from_array(
        m,
        chunks=(m.shard_rows, m.shape[1]),
        name=name,
        lock=False,
        asarray=False,
        meta=np.empty((0, 0), np.float32),
    )


def take_sigs(ds: xr.Dataset, pos, *, storage_options: dict | None = None) -> xr.Dataset:
    """``ds.isel(sig=pos)`` of a dataset from :func:`open_store`, reading only the inner
    chunks that hold those signatures when ``expr`` is sharded (else whole chunks).

    One task per group of at most ``cmapdask.store.take_rows`` signatures (in store
    order); each task sends its index and chunk requests together.
    """
    pos = np.asarray(pos, dtype=np.int64).reshape(-1)
    url = ds.attrs.get("store_url")
    m = (
        None
        if url is None or "virtual" in ds.attrs.get("cmapdask", {})
        else _sharded(url, storage_options)
    )
    out = ds.isel(sig=pos)
    if m is None or pos.size == 0:
        return out
    uniq, inverse = np.unique(pos, return_inverse=True)
    step = int(config.get("store.take_rows", 1024))
    parts = [
        da.from_delayed(
            dask.delayed(m.take, pure=True)(uniq[i : i + step]),
            shape=(min(step, uniq.size - i), m.shape[1]),
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
        )
        for i in range(0, uniq.size, step)
    ]
    x = da.concatenate(parts, axis=0)
    x = x if np.array_equal(uniq, pos) else x[inverse]
    return out.assign(expr=out["expr"].copy(deep=False, data=x))


# The coordinates of the last few stores opened, per process and store version (the key
# holds the store's provenance, which every publish renews): reopening a store of a
# million signatures (the web app, a notebook calling matrix) does not read and decode
# its metadata again. The arrays are read-only, so no caller can change the cached copy.
_COORDS: OrderedDict = OrderedDict()
_COORDS_LOCK = threading.Lock()


def _coords_to_memory(ds: xr.Dataset, url, storage_options, key=None) -> xr.Dataset:
    """Load 1-D coordinates straight from Zarr (no dask compute); strings back to object
    arrays with None for missing."""
    with _COORDS_LOCK:
        new = _COORDS.get(key) if key is not None else None
    if new is None:
        with quiet_zarr():
            g = _open_group(url, "r", storage_options)
            new = {}
            for name, c in ds.coords.items():
                vals = np.asarray(g[name][:]) if name in g else np.array(c.values)
                if vals.dtype.kind in _STRING_KINDS or vals.dtype.kind == "T":
                    vals = _str_objects(vals)
                # a Variable, built once: xarray checks object arrays on every build
                var = xr.Variable(c.dims, vals)
                var.values.setflags(write=False)
                new[name] = var
        if key is not None:
            with _COORDS_LOCK:
                _COORDS[key] = new
                while len(_COORDS) > int(config.get("store.cached_stores", 2)):
                    _COORDS.popitem(last=False)
    idx = {k: v for k, v in new.items() if k in ds.dims}
    # by name: xarray's order of a Zarr group's coordinates differs between processes
    # (a set), and files written from them (GCTx metadata, tables) must not
    rest = {k: new[k] for k in sorted(new) if k not in ds.dims}
    ds = ds.drop_vars(list(new)).assign_coords(idx).assign_coords(rest)
    # text variables (top_id, ...): Python str objects, as the data model says (numpy's
    # StringDType, which zarr returns, cannot even be cast with .astype(str)); lazily
    text = {k: v for k, v in ds.data_vars.items() if v.dtype.kind in "TU"}
    return ds.assign({k: v.astype(object) for k, v in text.items()}) if text else ds


def _str_objects(vals: np.ndarray) -> np.ndarray:
    """Python ``str`` objects, ``None`` for the empty string (how Zarr stores missing)."""
    if vals.dtype.kind in "UT":  # numpy converts in C: a million strings in ~0.1 s
        out = vals.astype(object)
    else:
        out = np.array([v if isinstance(v, str) else str(v) for v in vals.tolist()], dtype=object)
    out[out == ""] = None
    return out


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
