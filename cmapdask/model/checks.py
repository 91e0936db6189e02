"""The signature dataset check and the name a dataset goes by in messages."""

from __future__ import annotations

import xarray as xr

from cmapdask.errors import InputError, MetadataError

__all__ = ["dataset_name", "check_signatures"]


def dataset_name(ds, default: str = "signature dataset") -> str:
    """How messages name ``ds``: its store URL, else its source file, else ``default``.

    A store opened with :func:`cmapdask.io.store.open_store` carries ``attrs["store_url"]``;
    a file read directly carries ``attrs["cmapdask"]["source"]`` (a file name, or for a
    converted store the source record, whose ``url`` or ``name`` is used).
    """
    attrs = getattr(ds, "attrs", None) or {}
    if attrs.get("store_url"):
        return str(attrs["store_url"])
    meta = attrs.get("cmapdask")
    src = meta.get("source") if isinstance(meta, dict) else None
    if isinstance(src, dict):
        src = src.get("url") or src.get("name")
    return str(src) if src else default


def check_signatures(ds, what: str | None = None) -> None:
    """Check that ``ds`` is a signature Dataset of the data model (DEVELOPERS.md).

    ``expr`` with dims ``("sig", "gene")``, at least one signature and one gene, and
    ``sig`` and ``gene`` id coordinates without duplicates. ``what`` names the input in
    messages (default :func:`dataset_name`).

    Raises
    ------
    InputError
        Not a Dataset with ``expr`` of dims ``("sig", "gene")``, or empty.
    MetadataError
        An id coordinate is missing or holds a duplicate.
    """
    if what is None:
        what = dataset_name(ds) if isinstance(ds, xr.Dataset) else "signature dataset"
    if not isinstance(ds, xr.Dataset) or "expr" not in ds.data_vars:
        raise InputError(f"{what}: expected an xarray Dataset with an 'expr' variable")
    if ds["expr"].dims != ("sig", "gene"):
        raise InputError(f"{what}: 'expr' must have dims ('sig', 'gene'), not {ds['expr'].dims}")
    if ds.sizes["sig"] == 0 or ds.sizes["gene"] == 0:
        raise InputError(f"{what}: no signatures or no genes")
    for dim in ("sig", "gene"):
        ids = ds.indexes[dim] if dim in ds.indexes else None
        if ids is None:
            raise MetadataError(f"{what}: no '{dim}' id coordinate")
        if not ids.is_unique:
            dup = ids[ids.duplicated()][0]
            raise MetadataError(f"{what}: duplicate {dim} id {dup!r}")
