"""Clustering of signatures and perturbagens (one module per method).

- :func:`kmeans_signatures`: PCA (exact from a one-pass covariance, or dask-ml's
  randomized/TSQR) then k-means (dask-ml's Lloyd iterations after a weighted
  ``k-means||`` initialisation of our own, or k-means++ on a sample) over signatures.
- :func:`hierarchical_perts`: average/complete/single/Ward linkage (scipy) of a
  perturbagen x perturbagen similarity or connectivity matrix.
- :func:`graph_clusters`: Leiden (igraph/leidenalg) or Louvain (networkx) communities
  of the k-nearest-neighbour graph built from :func:`cmapdask.similarity.similarity`
  results or from a dense perturbagen matrix.
- :func:`cluster_quality`: silhouette on a sample, adjusted Rand index and purity against
  annotations; :func:`write_clusters`: labels as a store member and as a table;
  :func:`with_cluster_coords`: stored labels back as coordinates of a dataset.

Fitting is iterative and runs on the dask scheduler in effect when called (as dask-ml
estimators do); what a function returns beyond the fit (labels of every signature) is
lazy.
"""

from cmapdask.clustering.graph import graph_clusters, knn_from_matrix
from cmapdask.clustering.hierarchical import hierarchical_perts
from cmapdask.clustering.kernels import _condensed_similarity  # noqa: F401  (tests)
from cmapdask.clustering.kmeans import kmeans_parallel_init, kmeans_signatures
from cmapdask.clustering.pca import covariance_pca
from cmapdask.clustering.quality import cluster_quality
from cmapdask.clustering.write import clusters_table, with_cluster_coords, write_clusters

__all__ = [
    "kmeans_signatures",
    "covariance_pca",
    "kmeans_parallel_init",
    "hierarchical_perts",
    "graph_clusters",
    "knn_from_matrix",
    "cluster_quality",
    "write_clusters",
    "clusters_table",
    "with_cluster_coords",
]
