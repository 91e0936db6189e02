"""Data access like cmapBQ, over a store on disk or object storage: filters as functions,
SQL over the release's tables, release downloads.

Also package data: ``landmark_gene_ids_n978.txt``, the 978 landmark genes.
"""

from cmapdask.data.filters import (
    cells,
    compounds,
    genes,
    genetic_perts,
    matrix,
    moas,
    sigs,
    targets,
)
from cmapdask.data.sql import sql
from cmapdask.data.tables import TABLE_NAMES, read_tables, store_tables, write_tables

__all__ = [
    "sigs",
    "compounds",
    "genes",
    "cells",
    "genetic_perts",
    "moas",
    "targets",
    "matrix",
    "sql",
    "read_tables",
    "store_tables",
    "write_tables",
    "TABLE_NAMES",
]
