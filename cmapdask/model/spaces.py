"""The one feature-space rule (ALGORITHMS.md §0): which genes a space holds.

Every command that picks genes by space (similarity, clustering, the query index,
rebuild) calls :func:`feature_genes`.
"""

from __future__ import annotations

import functools
import typing
from importlib.resources import files

import numpy as np
import xarray as xr

from cmapdask.errors import InputError, MetadataError
from cmapdask.model.checks import dataset_name
from cmapdask.model.types import Space

__all__ = ["feature_genes", "landmark_ids", "SPACE_CLASSES"]

#: ``feature_space`` values (compared stripped and lower-cased) that each space takes.
SPACE_CLASSES = {
    "landmark": frozenset({"landmark"}),
    "bing": frozenset({"landmark", "best inferred"}),
}
# the 0/1 flags of older gene tables (GSE92742's gene_info: pr_is_lm; some GCTx row
# metadata: pr_is_lmark)
_FLAGS = {"landmark": ("pr_is_lm", "pr_is_lmark"), "bing": ("pr_is_bing",)}
_TRUE = frozenset({"1", "1.0", "true", "t", "y", "yes"})


@functools.cache
def landmark_ids() -> tuple[str, ...]:
    """The 978 landmark Entrez ids shipped with the package (as ``str``), in the order of
    the Broad's ``landmark_gene_ids_n978.grp``."""
    text = files("cmapdask").joinpath("data/landmark_gene_ids_n978.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _gene_field(ds: xr.Dataset, name: str):
    """The values of gene field ``name`` (also as ``gene_<name>``, any case), or None."""
    wanted = {name.lower(), f"gene_{name}".lower()}
    for key, c in ds.coords.items():
        if str(key).lower() in wanted and c.dims == ("gene",):
            return c.values
    return None


def feature_genes(ds: xr.Dataset, space: Space) -> np.ndarray:
    """Positions (in store gene order, increasing) of the genes of a feature space.

    Parameters
    ----------
    ds : xarray.Dataset
        Signatures or a store (only the ``gene`` coordinates are read).
    space : {"landmark", "bing", "all"}
        ``"landmark"``: the 978 measured genes. ``"bing"``: landmarks and best inferred
        genes (10,174; CLUE's default for queries). ``"all"``: every gene.

    Returns
    -------
    numpy.ndarray
        int64 positions along ``gene``.

    Notes
    -----
    The rule, in order: the gene field ``feature_space`` (``landmark`` / ``best inferred``
    / ``inferred``, any case); else the 0/1 flags ``pr_is_lm`` (or ``pr_is_lmark``) /
    ``pr_is_bing`` of older gene tables (1, true, yes; field names in any case); else,
    for ``"landmark"`` only, the genes whose ids are among the 978 landmark ids shipped
    with the package, or every gene of a matrix of exactly 978 genes. ``"bing"`` without gene
    metadata is an error naming the table to join (geneinfo). A field may also carry the
    ``gene_`` prefix the data model gives a field present on both axes.

    Raises
    ------
    InputError
        Unknown space.
    MetadataError
        The space cannot be told from the metadata, or it holds no gene of ``ds``.
    """
    if space not in typing.get_args(Space):
        raise InputError(
            f"unknown feature space {space!r}; use one of {list(typing.get_args(Space))}"
        )
    n = ds.sizes["gene"]
    if space == "all":
        return np.arange(n, dtype=np.int64)
    name = dataset_name(ds)
    fs = _gene_field(ds, "feature_space")
    flag = next((f for f in (_gene_field(ds, k) for k in _FLAGS[space]) if f is not None), None)
    if fs is not None:
        text = np.array([str(v).strip().lower() for v in fs.tolist()], dtype=object)
        sel = np.flatnonzero(np.isin(text, list(SPACE_CLASSES[space])))
    elif flag is not None:
        text = np.array([str(v).strip().lower() for v in flag.tolist()], dtype=object)
        sel = np.flatnonzero(np.isin(text, list(_TRUE)))
    elif space == "landmark":
        genes = np.array([str(g) for g in ds.indexes["gene"]], dtype=object)
        sel = np.flatnonzero(np.isin(genes, list(landmark_ids())))
        if sel.size == 0 and n == 978:  # a landmark matrix (Level 3) under other ids
            return np.arange(n, dtype=np.int64)
        if sel.size == 0:
            raise MetadataError(
                f"{name}: no gene field 'feature_space' (or 'pr_is_lm') and none of the 978 "
                "landmark ids shipped with cmapdask among its genes; join the gene table "
                "(geneinfo, convert --gene-info) or use space 'all'"
            )
        return sel.astype(np.int64)
    else:
        raise MetadataError(
            f"{name}: the {space} space needs gene metadata: no gene field 'feature_space' "
            f"(or {_FLAGS[space][0]!r}); join the gene table (geneinfo_beta.txt, "
            "convert --gene-info) or use space 'all'"
        )
    if sel.size == 0:
        raise MetadataError(f"{name}: no genes in feature space {space!r}")
    return sel.astype(np.int64)
