"""cmapdask: the Connectivity Map's analysis at cluster scale on Dask.

The functional API lives here; ``ds.cmap`` (registered on import) is a doorway to it.
Optional dependencies (scikit-learn, dask-ml, matplotlib, s3fs) are imported only by the
functions that need them.
"""

from __future__ import annotations

from cmapdask import (
    accessor,  # noqa: E402,F401  (registers ds.cmap)
    config,  # noqa: E402,F401  (registers the dask config defaults)
)
from cmapdask._version import __version__
from cmapdask.annotations import read_annotations  # noqa: E402
from cmapdask.clustering import (  # noqa: E402
    cluster_quality,
    graph_clusters,
    hierarchical_perts,
    kmeans_signatures,
    knn_from_matrix,
    with_cluster_coords,
    write_clusters,
)
from cmapdask.connectivity import (  # noqa: E402
    build_background,
    build_index,
    introspect,
    query,
    summarize,
    write_result,
)
from cmapdask.connectivity.classes import filter_class, pert_class, split_by_class  # noqa: E402
from cmapdask.connectivity.targets import target_recall, targets  # noqa: E402
from cmapdask.data import sql  # noqa: E402
from cmapdask.enrich import (  # noqa: E402
    candidate_pcls,
    cluster_enrichment,
    enrich_ranked,
    enrichment_table,
    moa_recall_approx,
    read_ranked_lists,
    roc_curve,
    write_pcl_gmt,
)
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
from cmapdask.levels import level4, level5, modz, quantile_normalize, robust_zscore  # noqa: E402
from cmapdask.plots import plot_clustered_heatmap, plot_roc, plot_running_sum  # noqa: E402
from cmapdask.rebuild import (  # noqa: E402
    append,
    current_version,
    list_versions,
    open_current,
    open_version,
    read_manifest,
    rebuild,
)
from cmapdask.similarity import (  # noqa: E402
    moa_recall,
    pert_similarity,
    similarity,
    similarity_matrix,
    write_similarity,
)
from cmapdask.synthetic import (  # noqa: E402
    synth_dataset,
    synth_design,
    synth_genetic_truth,
    synth_truth,
    write_synthetic,
)

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
    # connectivity
    "query",
    "build_index",
    "introspect",
    "build_background",
    "summarize",
    "write_result",
    "pert_class",
    "filter_class",
    "split_by_class",
    "targets",
    "target_recall",
    # similarity
    "similarity",
    "similarity_matrix",
    "pert_similarity",
    "write_similarity",
    # signature levels
    "quantile_normalize",
    "robust_zscore",
    "level4",
    "modz",
    "level5",
    # clustering and MoA enrichment
    "read_annotations",
    "kmeans_signatures",
    "hierarchical_perts",
    "graph_clusters",
    "cluster_quality",
    "write_clusters",
    "knn_from_matrix",
    "with_cluster_coords",
    "enrich_ranked",
    "enrichment_table",
    "cluster_enrichment",
    "moa_recall",
    "moa_recall_approx",
    "candidate_pcls",
    "write_pcl_gmt",
    "read_ranked_lists",
    "roc_curve",
    "plot_clustered_heatmap",
    "plot_running_sum",
    "plot_roc",
    # nightly rebuilds
    "append",
    "rebuild",
    "open_current",
    "open_version",
    "current_version",
    "list_versions",
    "read_manifest",
    # data access (the filters themselves: cmapdask.data)
    "sql",
    # synthetic data
    "synth_design",
    "synth_dataset",
    "synth_truth",
    "synth_genetic_truth",
    "write_synthetic",
]
