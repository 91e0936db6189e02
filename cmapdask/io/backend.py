"""``xr.open_dataset(path, engine="gctx")``: GCTx files through xarray's backend API."""

from __future__ import annotations

import os

from xarray.backends import BackendEntrypoint

# xarray imports every engine to list them: HDF5 and the rest load only when a file opens
import cmapdask.accessor  # noqa: F401  (ds.cmap on what xarray opens)

__all__ = ["GCTxBackendEntrypoint"]


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
