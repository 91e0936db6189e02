"""cmapdask: the Connectivity Map's analysis at cluster scale on Dask.

The functional API lives here; ``ds.cmap`` (registered on import) is a doorway to it.
Files and the store are imported eagerly; the analyses are imported on first use (PEP 562),
so ``import cmapdask`` and the command line start quickly.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmapdask")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from cmapdask import config  # noqa: E402,F401  (registers the dask config defaults)
from cmapdask.errors import (  # noqa: E402
    CmapdaskError,
    GCTFormatError,
    GCTxFormatError,
    GeneSetFormatError,
    InputError,
    MetadataError,
    QueryError,
    StoreError,
)
from cmapdask.io.gct import read_gct, write_gct  # noqa: E402
from cmapdask.io.gctx import read_gctx, write_gctx  # noqa: E402
from cmapdask.io.gmt import (  # noqa: E402
    pair_up_down,
    read_gene_sets,
    read_gmt,
    read_grp,
    write_gmt,
    write_grp,
)
from cmapdask.io.store import (  # noqa: E402
    convert,
    has_member,
    list_members,
    open_member,
    open_store,
    write_member,
    write_store,
)
from cmapdask.io.tables import read_table, write_table  # noqa: E402
from cmapdask import accessor  # noqa: E402,F401  (registers ds.cmap)

# name -> module, imported on first access
_LAZY = {
    **dict.fromkeys(
        ["query", "build_index", "introspect", "build_background", "summarize", "write_result"],
        "cmapdask.connectivity",
    ),
    **dict.fromkeys(
        ["similarity", "similarity_matrix", "pert_similarity", "write_similarity"],
        "cmapdask.similarity",
    ),
    **dict.fromkeys(
        ["quantile_normalize", "robust_zscore", "level4", "modz", "level5"], "cmapdask.levels"
    ),
    **dict.fromkeys(
        ["synth_design", "synth_dataset", "synth_truth", "write_synthetic"], "cmapdask.synthetic"
    ),
    **dict.fromkeys(
        ["kmeans_signatures", "hierarchical_perts", "graph_clusters", "cluster_quality",
         "write_clusters"],
        "cmapdask.clustering",
    ),
    **dict.fromkeys(
        ["enrich_ranked", "enrichment_table", "cluster_enrichment", "moa_recall",
         "candidate_pcls", "write_pcl_gmt"],
        "cmapdask.enrich",
    ),
    "read_annotations": "cmapdask.annotations",
    **dict.fromkeys(
        ["append", "rebuild", "open_current", "open_version", "current_version",
         "list_versions", "read_manifest"],
        "cmapdask.rebuild",
    ),
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cmapdask' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    # errors
    "CmapdaskError",
    "GCTFormatError",
    "GCTxFormatError",
    "GeneSetFormatError",
    "InputError",
    "MetadataError",
    "QueryError",
    "StoreError",
    # files
    "read_gctx",
    "write_gctx",
    "read_gct",
    "write_gct",
    "read_gmt",
    "write_gmt",
    "read_grp",
    "write_grp",
    "read_gene_sets",
    "pair_up_down",
    "read_table",
    "write_table",
    # the store
    "convert",
    "open_store",
    "write_store",
    "write_member",
    "open_member",
    "has_member",
    "list_members",
    # analyses (imported on first use)
    *_LAZY,
]
