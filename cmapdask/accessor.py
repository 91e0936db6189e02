"""``ds.cmap``: the functional API as methods of a signature dataset.

Every method forwards to the function of the same name in :mod:`cmapdask`, so the two
spellings give identical (lazy) results; this module holds no algorithm of its own.
Connectivity queries read the store's gene-major index, so they need a dataset opened
with :func:`cmapdask.open_store` (which records ``attrs["store_url"]``).
"""

from __future__ import annotations

import pandas as pd
import xarray as xr

from cmapdask.errors import InputError

__all__ = ["CmapAccessor"]


@xr.register_dataset_accessor("cmap")
class CmapAccessor:
    """Connectivity, similarity, signature levels and writing for a signature dataset."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    # -- where the data lives ----------------------------------------------------------

    @property
    def store_url(self) -> str:
        """The store this dataset was opened from (:func:`cmapdask.open_store`)."""
        url = self._ds.attrs.get("store_url")
        if not url:
            raise InputError(
                "this dataset was not opened from a store (no attrs['store_url']); open it "
                "with cmapdask.open_store, or convert it first with cmapdask.write_store"
            )
        return url

    @property
    def provenance(self) -> dict:
        """``attrs["cmapdask"]``: source, parameters, package version, ..."""
        return dict(self._ds.attrs.get("cmapdask", {}))

    # -- connectivity (the store's query index) ----------------------------------------

    def query(self, up=None, down=None, *, storage_options: dict | None = None, **options):
        """:func:`cmapdask.query` against this dataset's store.

        The result is restricted to this dataset's signatures when it is a subset of the
        store (a lazy selection: the query itself still reads only its genes' rows).
        ``scored=`` (all, touchstone or a filter) chooses the signatures scored, as for
        :func:`cmapdask.query`: NCS then normalises within that set, as CLUE's within
        Touchstone.
        """
        from cmapdask.connectivity import query

        result = query(self.store_url, up, down, storage_options=storage_options, **options)
        if result.sizes["sig"] != self._ds.sizes["sig"] or not result.indexes["sig"].equals(
            self._ds.indexes["sig"]
        ):
            mine = self._ds["sig"].values
            result = result.sel(sig=mine[pd.Index(mine).isin(result.indexes["sig"])])
        return result

    # -- data access (the store's tables; cmapdask.data) --------------------------------

    def sigs(self, **filters):
        """:func:`cmapdask.data.sigs` over this dataset's store."""
        from cmapdask.data import sigs

        return sigs(self.store_url, **filters)

    def compounds(self, **filters):
        """:func:`cmapdask.data.compounds` over this dataset's store."""
        from cmapdask.data import compounds

        return compounds(self.store_url, **filters)

    def genes(self, **filters):
        """:func:`cmapdask.data.genes` over this dataset's store."""
        from cmapdask.data import genes

        return genes(self.store_url, **filters)

    def cells(self, **filters):
        """:func:`cmapdask.data.cells` over this dataset's store."""
        from cmapdask.data import cells

        return cells(self.store_url, **filters)

    def genetic_perts(self, **filters):
        """:func:`cmapdask.data.genetic_perts` over this dataset's store."""
        from cmapdask.data import genetic_perts

        return genetic_perts(self.store_url, **filters)

    def moas(self, **options):
        """:func:`cmapdask.data.moas`: every MoA of this dataset's store with its compounds."""
        from cmapdask.data import moas

        return moas(self.store_url, **options)

    def matrix(self, **selection) -> xr.Dataset:
        """:func:`cmapdask.data.matrix` of this dataset's store (lazy)."""
        from cmapdask.data import matrix

        return matrix(self.store_url, **selection)

    def sql(self, query: str, **options):
        """:func:`cmapdask.sql` over this dataset's store's tables."""
        from cmapdask.data import sql

        return sql(self.store_url, query, **options)

    def build_index(self, **options) -> str:
        """:func:`cmapdask.build_index` for this dataset's store."""
        from cmapdask.connectivity import build_index

        return build_index(self.store_url, **options)

    # -- similarity -------------------------------------------------------------------

    def similarity(self, ref: xr.Dataset | None = None, **options) -> xr.Dataset:
        """:func:`cmapdask.similarity`: top-k neighbours (against ``ref`` if given)."""
        from cmapdask.similarity import similarity

        return similarity(self._ds, ref, **options)

    def similarity_matrix(self, ref: xr.Dataset | None = None, **options) -> xr.DataArray:
        """:func:`cmapdask.similarity_matrix`: the full, lazy, chunked matrix."""
        from cmapdask.similarity import similarity_matrix

        return similarity_matrix(self._ds, ref, **options)

    def pert_similarity(self, **options) -> xr.Dataset:
        """:func:`cmapdask.pert_similarity`: perturbagen x perturbagen, by cell line."""
        from cmapdask.similarity import pert_similarity

        return pert_similarity(self._ds, **options)

    # -- signature levels -------------------------------------------------------------

    def quantile_normalize(self, **options) -> xr.Dataset:
        """:func:`cmapdask.quantile_normalize` (Level 3)."""
        from cmapdask.levels import quantile_normalize

        return quantile_normalize(self._ds, **options)

    def robust_zscore(self, **options) -> xr.Dataset:
        """:func:`cmapdask.robust_zscore` (Level 3 -> 4)."""
        from cmapdask.levels import robust_zscore

        return robust_zscore(self._ds, **options)

    def level4(self, **options) -> xr.Dataset:
        """:func:`cmapdask.level4`."""
        from cmapdask.levels import level4

        return level4(self._ds, **options)

    def level5(self, **options) -> xr.Dataset:
        """:func:`cmapdask.level5` (MODZ consensus with replicate statistics)."""
        from cmapdask.levels import level5

        return level5(self._ds, **options)

    # -- clustering -------------------------------------------------------------------

    def kmeans(self, **options) -> xr.Dataset:
        """:func:`cmapdask.kmeans_signatures`."""
        from cmapdask.clustering import kmeans_signatures

        return kmeans_signatures(self._ds, **options)

    # -- writing ----------------------------------------------------------------------

    def to_gctx(self, path, **options) -> str:
        """:func:`cmapdask.write_gctx`: stream this dataset to a GCTx file."""
        from cmapdask.io.gctx import write_gctx

        return write_gctx(self._ds, path, **options)

    def to_gct(self, path, **options) -> str:
        """:func:`cmapdask.write_gct`: a GCT v1.3 text file (small matrices)."""
        from cmapdask.io.gct import write_gct

        return write_gct(self._ds, path, **options)

    def to_store(self, dest, **options) -> str:
        """:func:`cmapdask.write_store`: a new, complete Zarr store."""
        from cmapdask.io.store import write_store

        return write_store(self._ds, dest, **options)
