"""cmapdask: the Connectivity Map's analysis at cluster scale on Dask.

The functional API lives here, loaded on first use: ``import cmapdask`` reads only the
configuration defaults, so the heavy parts (numba kernels, HDF5, S3, Arrow, the server,
the plots) load when a function that needs them is first touched, and importing changes
nothing outside the package (no fsspec or s3fs default of the process). ``ds.cmap`` is
registered as soon as any cmapdask function is used, a store or GCTx is opened through
xarray, or :mod:`cmapdask.accessor` is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from cmapdask import config  # noqa: F401  (registers the dask config defaults)
from cmapdask._version import __version__

# public name -> the module that defines it (imported on first access)
_LAZY = {
    "cmapdask.annotations": ("read_annotations",),
    "cmapdask.clustering": (
        "cluster_quality",
        "graph_clusters",
        "hierarchical_perts",
        "kmeans_signatures",
        "knn_from_matrix",
        "with_cluster_coords",
        "write_clusters",
    ),
    "cmapdask.connectivity": (
        "build_background",
        "build_index",
        "introspect",
        "query",
        "summarize",
        "write_result",
    ),
    "cmapdask.connectivity.classes": ("filter_class", "pert_class", "split_by_class"),
    "cmapdask.connectivity.desets": ("de_gene_sets",),
    "cmapdask.connectivity.targets": ("target_recall", "targets"),
    "cmapdask.data": ("sql",),
    "cmapdask.enrich": (
        "candidate_pcls",
        "cluster_enrichment",
        "enrich_ranked",
        "enrichment_table",
        "moa_recall_approx",
        "read_ranked_lists",
        "roc_curve",
        "write_pcl_gmt",
    ),
    "cmapdask.environment": ("check_workers",),
    "cmapdask.errors": (
        "CmapdaskError",
        "GCTFormatError",
        "GCTxFormatError",
        "GeneSetFormatError",
        "InputError",
        "MetadataError",
        "QueryError",
        "StoreError",
    ),
    "cmapdask.io.gct": ("read_gct", "write_gct"),
    "cmapdask.io.gctx": ("read_gctx", "write_gctx"),
    "cmapdask.io.gmt": (
        "pair_up_down",
        "read_gene_sets",
        "read_gmt",
        "read_grp",
        "write_gmt",
        "write_grp",
    ),
    "cmapdask.io.store": (
        "convert",
        "has_member",
        "list_members",
        "open_member",
        "open_store",
        "write_member",
        "write_store",
    ),
    "cmapdask.io.tables": ("read_table", "write_table"),
    "cmapdask.levels": ("level4", "level5", "modz", "quantile_normalize", "robust_zscore"),
    "cmapdask.plots": ("plot_clustered_heatmap", "plot_roc", "plot_running_sum"),
    "cmapdask.rebuild": (
        "append",
        "current_version",
        "list_versions",
        "open_current",
        "open_version",
        "read_manifest",
        "rebuild",
    ),
    "cmapdask.similarity": (
        "moa_recall",
        "pert_similarity",
        "similarity",
        "similarity_matrix",
        "write_similarity",
    ),
    "cmapdask.synthetic": (
        "synth_dataset",
        "synth_design",
        "synth_genetic_truth",
        "synth_truth",
        "write_synthetic",
    ),
}
_HOME = {name: mod for mod, names in _LAZY.items() for name in names}
# functions named like their subpackage: the function wins, as it always has
_SHADOWED = frozenset(n for n in _HOME if _HOME[n] == f"{__name__}.{n}")


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system binds a subpackage on its parent; keep the function instead
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")  # a subpackage, as before
    importlib.import_module("cmapdask.accessor")  # ds.cmap with the first function used
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = ["__version__", *_HOME]  # the public API is the table above
