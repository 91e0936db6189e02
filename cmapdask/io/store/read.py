"""Opening stores and members lazily: ``expr`` dask-backed in its own chunks, the 1-D
coordinates read into memory, a virtual store's matrix read from its source in place.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from cmapdask.errors import StoreError
from cmapdask.io.atomic import join
from cmapdask.io.store.access import _open_group, quiet_zarr, zarr_options
from cmapdask.io.store.layout import _STRING_KINDS
from cmapdask.io.store.publish import _check_complete

__all__ = ["has_member", "list_members", "open_member", "open_store"]


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
