"""Writing similarity results: store members, stand-alone Zarr, GCTx for full matrices."""

from __future__ import annotations

import xarray as xr

from cmapdask.errors import InputError
from cmapdask.io.pending import deferrable

__all__ = ["write_similarity", "default_member_name"]


def default_member_name(result: xr.Dataset | xr.DataArray) -> str:
    """``similarity/<metric>_<space>[_query][_full|_pert]`` from the result's provenance."""
    prov = result.attrs.get("cmapdask", {})
    name = f"similarity/{prov.get('metric', 'unknown')}_{prov.get('space', 'unknown')}"
    if prov.get("mode") == "query":  # never overwrite the self-similarity member
        name += "_query"
    if prov.get("full"):
        name += "_full"
    if prov.get("level"):
        name += f"_{prov['level']}"
    return name


def _as_dataset(result) -> xr.Dataset:
    if isinstance(result, xr.DataArray):
        ds = result.to_dataset(name=result.name or "similarity")
        ds.attrs = dict(result.attrs)
        return ds
    if isinstance(result, xr.Dataset):
        return result
    raise InputError(
        f"write_similarity: expected a similarity Dataset or DataArray, got {type(result)}"
    )


@deferrable("similarity result", lambda a: a["out"] or a["store"])
def write_similarity(
    result: xr.Dataset | xr.DataArray,
    store: str | None = None,
    *,
    out: str | None = None,
    name: str | None = None,
    gctx: str | None = None,
    storage_options: dict | None = None,
    progress: bool = False,
    overwrite: bool = False,
    compute: bool = True,
) -> str:
    """Compute and write a similarity result; returns where it went.

    Parameters
    ----------
    result
        From :func:`~cmapdask.similarity.similarity` (top-k), :func:`similarity_matrix`
        (full) or :func:`pert_similarity`.
    store
        Signature store URL: the result becomes its member ``name`` (default
        ``similarity/<metric>_<space>``, ``..._full`` for a full matrix), published
        atomically with provenance; ``expr`` is never rewritten. Queries-vs-reference
        results get ``..._query``.
    out
        Instead of a member, a stand-alone Zarr URL (published atomically): absent or
        empty, or with ``overwrite`` a Zarr group cmapdask wrote (never another folder
        or a file; see :mod:`cmapdask.io.atomic`).
    gctx
        Full matrices only: also write a GCTx file (rows ``sig_ref``, columns ``sig``).
    storage_options
        fsspec options for ``store``/``out``/``gctx``.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Notes
    -----
    Streams: each output chunk is computed by its own task on the active scheduler and
    written straight away; memory is that of the similarity tasks (see their Notes).
    """
    if (store is None) == (out is None):
        raise InputError("write_similarity: give exactly one of store= or out=")
    ds = _as_dataset(result)
    prov = dict(ds.attrs.get("cmapdask", {}))
    if out is not None:
        from cmapdask.io.atomic import check_destination

        check_destination(out, storage_options=storage_options, overwrite=overwrite)
    if gctx is not None:
        if "similarity" not in ds or ds["similarity"].dims != ("sig", "sig_ref"):
            raise InputError(f"{gctx}: only a full similarity matrix can be written as GCTx")
        from cmapdask.io.gctx import write_gctx

        m = ds["similarity"].rename({"sig_ref": "gene"})
        write_gctx(m.rename("expr"), gctx, storage_options=storage_options, progress=progress)
    if store is not None:
        from cmapdask.io.store import write_member

        return write_member(
            store,
            name or default_member_name(result),
            ds,
            family="similarity",
            storage_options=storage_options,
            provenance=prov,
            progress=progress,
        )
    from cmapdask.io.atomic import publish_dir
    from cmapdask.io.store import consolidate, quiet_zarr

    ds = ds.copy()
    ds.attrs = {**ds.attrs, "cmapdask": {**prov, "package": "cmapdask"}}  # marks it as ours
    with (
        publish_dir(out, storage_options=storage_options, overwrite=overwrite) as tmp,
        quiet_zarr(),
    ):
        ds.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            storage_options=storage_options if "://" in str(tmp) else None,
        )
        consolidate(tmp, storage_options)  # xr.open_zarr(out) opens it without a warning
    return str(out)
