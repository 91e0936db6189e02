"""All-by-all signature similarity: exact blockwise top-k neighbours and full matrices.

Layers: :mod:`.plan` (pure block-pair planning), :mod:`.kernels` (numpy maths on blocks),
:mod:`.engine` (the dask task graph), :mod:`.api` (xarray labels, checks, provenance),
:mod:`.pert` (perturbagen-level aggregation), :mod:`.recall` (exact MoA recall in the same
blockwise pass) and :mod:`.write` (store members, Zarr, GCTx).
"""

from __future__ import annotations

from cmapdask.similarity.api import count_invalid, feature_genes, similarity, similarity_matrix
from cmapdask.similarity.pert import pert_similarity
from cmapdask.similarity.plan import BlockPlan, plan_blocks
from cmapdask.similarity.recall import moa_recall, recall_tables
from cmapdask.similarity.write import write_similarity

__all__ = [
    "similarity",
    "similarity_matrix",
    "pert_similarity",
    "write_similarity",
    "feature_genes",
    "count_invalid",
    "plan_blocks",
    "BlockPlan",
    "moa_recall",
    "recall_tables",
]
