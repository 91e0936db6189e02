"""xarray engines: ``engine="gctx"`` for GCTx files, ``engine="cmapdask"`` for stores."""

from __future__ import annotations

import os

from xarray.backends import BackendEntrypoint

# xarray imports every engine to list them: HDF5 and the rest load only when a file opens
import cmapdask.accessor  # noqa: F401  (ds.cmap on what xarray opens)

__all__ = ["GCTxBackendEntrypoint", "StoreBackendEntrypoint"]


class GCTxBackendEntrypoint(BackendEntrypoint):
    """Open a GCTx as a Dataset with ``expr`` (sig, gene) and metadata coordinates.

    Extra keywords: ``sigs``/``genes`` (subsets by id or position) and
    ``storage_options`` (fsspec, for remote files). Data stay lazy (dask-backed).
    """

    description = "CMap GCTx (HDF5) matrices, lazily, as (sig, gene)"
    url = "https://github.com/cmapdask/cmapdask"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "sigs",
        "genes",
        "storage_options",
    )

    def open_dataset(
        self, filename_or_obj, *, drop_variables=None, sigs=None, genes=None, storage_options=None
    ):
        from cmapdask.io.gctx import read_gctx

        ds = read_gctx(
            os.fspath(filename_or_obj), sigs=sigs, genes=genes, storage_options=storage_options
        )
        if drop_variables:
            ds = ds.drop_vars(list(drop_variables), errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        # sniff the HDF5 magic bytes and the GCTx matrix node, not just the extension
        try:
            path = os.fspath(filename_or_obj)
        except TypeError:
            return False
        from cmapdask.io.gctx import is_gctx

        return is_gctx(path)


class StoreBackendEntrypoint(BackendEntrypoint):
    """Open a cmapdask store, or one of its members, as :func:`cmapdask.open_store` and
    :func:`cmapdask.open_member` do: ``xr.open_dataset(url, engine="cmapdask")``.

    Extra keywords: ``member`` (``"index/bing"``, ``"similarity/pearson_landmark"``, ...;
    the store itself when omitted) and ``storage_options`` (fsspec, for ``s3://``). Data
    stay lazy; the ids and metadata are read as ``open_store`` reads them. Pass
    ``chunks={}`` for dask arrays in the store's own chunks, exactly as ``open_store``
    gives them (xarray's default, ``chunks=None``, reads lazily on indexing instead).
    """

    description = "cmapdask signature stores (Zarr v3) and their members"
    url = "https://github.com/cmapdask/cmapdask"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "member", "storage_options")

    def open_dataset(
        self, filename_or_obj, *, drop_variables=None, member=None, storage_options=None
    ):
        from cmapdask.io.store import open_member, open_store

        url = os.fspath(filename_or_obj)
        if member:
            ds = open_member(url, str(member), storage_options=storage_options)
        else:
            ds = open_store(url, storage_options=storage_options)
        if drop_variables:
            ds = ds.drop_vars(list(drop_variables), errors="ignore")
        for var in ds.variables.values():  # chunks={} gives open_store's dask chunks
            if var.chunks:
                var.encoding["preferred_chunks"] = {
                    d: c[0] for d, c in zip(var.dims, var.chunks, strict=True)
                }
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        # a local folder whose root group carries cmapdask's record; never a remote read
        try:
            path = os.fspath(filename_or_obj)
        except TypeError:
            return False
        meta = os.path.join(path, "zarr.json")
        if "://" in path or not os.path.isfile(meta):
            return False
        try:
            with open(meta, "rb") as f:
                return b'"cmapdask"' in f.read(1 << 20)
        except OSError:
            return False
