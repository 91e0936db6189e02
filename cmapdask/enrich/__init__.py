"""MoA/PCL enrichment: ranked lists, clusters, MoA recall and candidate PCLs.

Four questions, one module each (:mod:`.kernels` holds the numpy maths of ranked lists):

- :func:`enrich_ranked`: for each ranked list (a query's τ over signatures, a compound's
  similarity to every other compound), is each MoA/PCL set enriched at the top or at the
  bottom? Running-sum (KS/GSEA) statistics with permutation p-values (or an analytic
  approximation) and a one-sided Fisher test on the top/bottom N, then Benjamini-Hochberg
  over the sets of each list. Where a perturbagen has several items in a list (its
  signatures), random sets are drawn as whole perturbagens (the group null). One dask
  task per block of lists. :func:`read_ranked_lists` opens a query result (CLUE's result
  folder, one of its GCTx matrices, or Zarr) as lists.
- :func:`cluster_enrichment`: hypergeometric over-representation of each set in each
  cluster against a background, BH over all (cluster, set) pairs.
- :func:`moa_recall_approx`: an *estimate* of the MoA recall AUROC from top-k/bottom-k
  neighbour lists, with bounds (``auroc_min``, ``auroc_max``); the exact recall over every
  pair is :func:`cmapdask.similarity.recall.moa_recall` (``cmapdask.moa_recall``).
- :func:`candidate_pcls`: clusters with high internal connectivity and a shared
  annotation, scored; :func:`write_pcl_gmt` writes them as a GMT file.

The running sum (ALGORITHMS.md §2, unweighted or with hit weight ``|score|``) over a list
of n items of which G are in the set, at positions ``p_1 < ... < p_G`` (0-based), is
``A_j = (w_1 + ... + w_j) / W - (p_j - j + 1) / (n - G)`` just after hit j and
``B_j = A_j - w_j / W`` just before. ``es_top = max(0, max_j A_j)`` (enrichment among the
first items) and ``es_bottom = max(0, -min_j B_j)`` (among the last items); ``es`` is the
larger of the two in magnitude with its sign, which is the signed KS enrichment score of
:mod:`cmapdask.connectivity.es`.
"""

from cmapdask.enrich.clusters import cluster_enrichment
from cmapdask.enrich.kernels import (  # noqa: F401  (_random_subsets: used by the tests)
    FIELDS,
    _random_subsets,
    bh,
    ks_statistics,
    running_sum,
)
from cmapdask.enrich.pcl import candidate_pcls, write_pcl_gmt
from cmapdask.enrich.ranked import enrich_ranked, enrichment_table, read_ranked_lists
from cmapdask.enrich.recall import moa_recall_approx, roc_curve

__all__ = [
    "running_sum",
    "ks_statistics",
    "enrich_ranked",
    "enrichment_table",
    "read_ranked_lists",
    "cluster_enrichment",
    "moa_recall_approx",
    "roc_curve",
    "candidate_pcls",
    "write_pcl_gmt",
    "bh",
    "FIELDS",
]
