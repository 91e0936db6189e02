"""Connectivity queries exactly as CMap computes them (ALGORITHMS.md §1-8).

Array layer: :mod:`.ranks`, :mod:`.es` (ES/WTCS/leading edge), :mod:`.ncs`, :mod:`.tau`,
:mod:`.fdr`, :mod:`.summaries`. Store layer: :mod:`.index` (the gene-major query index),
:mod:`.engine` (batched scoring), :mod:`.query`, :mod:`.introspect` (introspect and τ
backgrounds), :mod:`.results` (summaries and CLUE's result folder), :mod:`.classes`
(perturbagen classes: CP, KD, CRISPR, OE) and :mod:`.targets` (target identification).
"""

from __future__ import annotations

from cmapdask.connectivity.es import combine_wtcs, enrichment_scores
from cmapdask.connectivity.index import build_index, open_index, space_genes
from cmapdask.connectivity.introspect import build_background, introspect
from cmapdask.connectivity.query import query, select_signatures
from cmapdask.connectivity.ranks import rank_descending, rank_signatures
from cmapdask.connectivity.results import summarize, write_result
from cmapdask.connectivity.summaries import maxq

__all__ = [
    "build_background",
    "build_index",
    "combine_wtcs",
    "enrichment_scores",
    "introspect",
    "maxq",
    "open_index",
    "query",
    "rank_descending",
    "rank_signatures",
    "select_signatures",
    "space_genes",
    "summarize",
    "write_result",
]
