"""How cmapdask reaches a store's Zarr groups: storage options only for fsspec URLs, groups
always read as their nodes are now (never through consolidated metadata), and zarr's
warnings about what we knowingly use silenced.
"""

from __future__ import annotations

import contextlib
import warnings

import zarr

from cmapdask import config
from cmapdask.io.atomic import is_local, url_to_fs

__all__ = ["quiet_zarr", "zarr_options"]


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's warnings about what we knowingly use (vlen strings, no consolidation)."""
    with warnings.catch_warnings():
        # zarr v3 variable-length strings are not in the v3 core spec yet; xarray and
        # zarr both read them, which is all we need.
        warnings.filterwarnings("ignore", category=zarr.errors.UnstableSpecificationWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        # the tables member keeps Parquet files inside its group (cmapdask.data.tables)
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        yield


def zarr_options(url, storage_options):
    """``storage_options`` for zarr/xarray: only for fsspec URLs, never for local paths."""
    if _is_local_url(url, storage_options):
        return None
    return config.storage_options(url, storage_options)


def _is_local_url(url, storage_options) -> bool:
    return is_local(url_to_fs(url, storage_options)[0])


def _open_group(url, mode: str, storage_options) -> zarr.Group:
    """The group at ``url`` as its nodes are now, never through consolidated metadata (which
    is for other tools, and is stale between a change and the next :func:`consolidate`)."""
    return zarr.open_group(
        url,
        mode=mode,
        storage_options=zarr_options(url, storage_options),
        use_consolidated=False,
    )
