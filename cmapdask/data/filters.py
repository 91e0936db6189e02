"""Filters as functions, like cmapBQ's, over a store's tables: signatures, compounds,
genes, cell lines, genetic perturbagens, MoAs, targets, and the matrix itself.

Every filter takes a value, a list, or a comma-separated string; filters combine with AND.
The 2020 release's field names and the older ones both work (``cmap_name`` /
``pert_iname``, ``cell_iname`` / ``cell_id``), and doses and times match whatever their
spelling (``10 uM``, ``10 µM``, ``10uM``; ``24 h``, ``24h``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.data.tables import column_cache, frame, read_tables
from cmapdask.errors import InputError, MetadataError

__all__ = ["sigs", "compounds", "genes", "cells", "genetic_perts", "moas", "targets", "matrix"]

Fields = Literal["priority", "all"]
Values = str | int | float | Sequence | None

# each filter's field, then the older names it may have in a store
_ALIASES = {
    "sig_id": ("sig_id",),
    "pert_id": ("pert_id",),
    "cmap_name": ("cmap_name", "pert_iname"),
    "pert_type": ("pert_type",),
    "cell_iname": ("cell_iname", "cell_id"),
    "pert_idose": ("pert_idose", "pert_dose"),
    "pert_itime": ("pert_itime", "pert_time"),
    "build_name": ("build_name",),
    "is_touchstone": ("is_touchstone", "is_gold"),
    "moa": ("moa",),
    "target": ("target",),
    "gene_symbol": ("gene_symbol", "pr_gene_symbol"),
    "gene_id": ("gene_id", "pr_gene_id"),
    "feature_space": ("feature_space",),
    "cell_lineage": ("cell_lineage", "primary_site"),
    "primary_disease": ("primary_disease",),
}
# the columns shown by fields="priority", in this order, where present
_PRIORITY = {
    "siginfo": (
        "sig_id",
        "pert_id",
        "cmap_name",
        "pert_iname",
        "pert_type",
        "cell_iname",
        "cell_id",
        "pert_idose",
        "pert_itime",
        "is_touchstone",
        "tas",
        "cc_q75",
        "nsample",
        "build_name",
        "moa",
        "target",
    ),
    "compoundinfo": ("pert_id", "cmap_name", "pert_iname", "moa", "target", "inchi_key"),
    "geneinfo": ("gene_id", "gene_symbol", "feature_space", "gene_title", "ensembl_id"),
    "cellinfo": ("cell_iname", "cell_id", "cell_lineage", "primary_disease", "n_sigs"),
    "geneticinfo": ("pert_id", "cmap_name", "pert_type", "gene_id", "gene_symbol"),
}
_GENETIC_TYPES = ("trt_sh", "trt_sh.cgs", "trt_sh.css", "trt_xpr", "trt_oe", "trt_oe.mut")


def _values(v: Values) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        items = [s.strip() for s in v.split(",")]
    elif isinstance(v, (int, float, np.integer, np.floating, bool)):
        items = [v]
    else:
        items = list(v)
    items = [str(int(x)) if isinstance(x, (bool, np.bool_)) else str(x).strip() for x in items]
    if not [x for x in items if x != ""]:
        raise InputError("an empty filter value")
    return items


_UNIT = {
    "um": "um",
    "µm": "um",
    "μm": "um",
    "nm": "nm",
    "mm": "mm",
    "m": "m",
    "ul": "ul",
    "µl": "ul",
    "μl": "ul",
    "ng": "ng",
    "ug": "ug",
    "µg": "ug",
    "ng/ul": "ng/ul",
    "h": "h",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "d": "d",
    "day": "d",
    "days": "d",
    "m.o.i.": "moi",
    "moi": "moi",
    "%": "%",
}
_QTY = re.compile(r"^\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*([^\d\s].*?)?\s*$")


def _canon(value) -> str:
    """A dose, time or other value in one spelling: ``10 µM`` -> ``10 um``; text as is."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    text = str(value).strip()
    m = _QTY.match(text)
    if not m:
        return text.lower() if text.lower() in ("true", "false") else text
    number, unit = float(m.group(1)), (m.group(2) or "").strip().lower()
    unit = _UNIT.get(unit, unit)
    num = f"{number:g}"
    return f"{num} {unit}" if unit else num


def _column(df: pd.DataFrame, key: str, table: str) -> str:
    for name in _ALIASES.get(key, (key,)):
        if name in df.columns:
            return name
    raise MetadataError(
        f"the store's {table} has no field {key!r} (fields: {', '.join(df.columns)})"
    )


def _multi(cell) -> list[str]:
    # compound fields folded from several compoundinfo rows are '|'-separated
    return [] if cell is None else [p.strip() for p in str(cell).split("|")]


def _factorized(df: pd.DataFrame, name: str) -> tuple[np.ndarray, list[str]]:
    """Codes and canonical spellings of a column's distinct values, computed once per
    cached table: a filter is then a lookup over the few distinct values and one numpy
    take over the rows."""
    cache = column_cache(df)
    if name not in cache:
        codes, uniques = pd.factorize(df[name], use_na_sentinel=True)
        cache[name] = (codes, [_canon(u) for u in uniques])
    return cache[name]


def _filter(df: pd.DataFrame, table: str, filters: dict, where: str | None) -> np.ndarray:
    keep = np.ones(len(df), dtype=bool)
    for key, value in filters.items():
        wanted = _values(value)
        if wanted is None:
            continue
        name = _column(df, key, table)
        codes, canon = _factorized(df, name)
        if key in ("moa", "target"):
            want = set(wanted)
            hit = np.array([bool(want & set(_multi(u))) for u in canon] + [False])
        else:
            want = {_canon(w) for w in wanted}
            hit = np.array([u in want for u in canon] + [False])
        keep &= hit[codes]  # code -1 (missing) takes the trailing False
    if where is not None:
        from cmapdask.where import parse

        keep &= np.asarray(parse(where).mask(df), dtype=bool)
    return keep


def _finish(df: pd.DataFrame, keep, table: str, fields: Fields, limit: int | None) -> pd.DataFrame:
    if fields not in ("priority", "all"):
        raise InputError(f"fields must be 'priority' or 'all', not {fields!r}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be a positive integer, not {limit!r}")
    out = df.loc[keep]
    if fields == "priority":
        cols = [c for c in _PRIORITY.get(table, ()) if c in out.columns]
        out = out[cols or list(out.columns)]
    if limit is not None:
        out = out.head(int(limit))
    return out.reset_index(drop=True)


def _select(df, table: str, filters: dict, where, fields, limit) -> pd.DataFrame:
    return _finish(df, _filter(df, table, filters, where), table, fields, limit)


def _table(store, name: str, storage_options) -> pd.DataFrame:
    tables = read_tables(store, storage_options=storage_options)
    if name not in tables:
        raise MetadataError(f"{store}: no {name} table (convert with the release's {name})")
    return frame(tables[name])


def sigs(
    store,
    *,
    sig_id: Values = None,
    pert_id: Values = None,
    cmap_name: Values = None,
    pert_type: Values = None,
    cell_iname: Values = None,
    pert_idose: Values = None,
    pert_itime: Values = None,
    build_name: Values = None,
    is_touchstone: Values = None,
    moa: Values = None,
    target: Values = None,
    where: str | None = None,
    fields: Fields = "priority",
    limit: int | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Signatures of a store matching every filter given (cmapBQ's ``get_siginfo``).

    Parameters
    ----------
    store
        Store URL (local, ``s3://``, ...).
    sig_id, pert_id, cmap_name, pert_type, cell_iname, pert_idose, pert_itime
        A value, a list, or a comma-separated string; a signature matches one of the
        values of each filter given (``build_name`` and ``is_touchstone`` alike).
        ``cmap_name`` also matches ``pert_iname``, and ``cell_iname`` ``cell_id``, in
        older stores; doses and times match in any spelling.
    moa, target
        Signatures of compounds with one of these MoAs / targets (from compoundinfo).
    where
        A field expression (``"tas > 0.3 and pert_itime == '24 h'"``): comparisons,
        ``in``, ``and``, ``or``, ``not``; parsed, never evaluated as code.
    fields
        ``"priority"``: the fields most queries need; ``"all"``: every field.
    limit
        At most this many rows (in store order).

    Returns
    -------
    pandas.DataFrame
        One row per signature, ``sig_id`` first.

    Notes
    -----
    Reads the store's tables once per process and store version (O(n_sig) metadata, a
    few hundred MB for the 1.2 million signatures of the 2020 release), then filters in
    memory: a warm call over a million signatures takes milliseconds.
    """
    df = _table(store, "siginfo", storage_options)
    filters = dict(
        sig_id=sig_id,
        pert_id=pert_id,
        cmap_name=cmap_name,
        pert_type=pert_type,
        cell_iname=cell_iname,
        pert_idose=pert_idose,
        pert_itime=pert_itime,
        build_name=build_name,
        is_touchstone=is_touchstone,
    )
    if moa is not None or target is not None:
        comp = _table(store, "compoundinfo", storage_options)
        hit = _filter(comp, "compoundinfo", {"moa": moa, "target": target}, None)
        perts = set(comp.loc[hit, "pert_id"].astype(str))
        filters["pert_id"] = sorted(perts & set(_values(pert_id) or perts)) or ["\0none"]
    return _select(df, "siginfo", filters, where, fields, limit)


def compounds(
    store,
    *,
    pert_id: Values = None,
    cmap_name: Values = None,
    moa: Values = None,
    target: Values = None,
    where: str | None = None,
    fields: Fields = "priority",
    limit: int | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Compounds (compoundinfo rows) matching every filter given (cmapBQ's
    ``get_compoundinfo``); ``moa`` and ``target`` match any of a compound's values."""
    df = _table(store, "compoundinfo", storage_options)
    filters = dict(pert_id=pert_id, cmap_name=cmap_name, moa=moa, target=target)
    return _select(df, "compoundinfo", filters, where, fields, limit)


def genes(
    store,
    *,
    gene_id: Values = None,
    gene_symbol: Values = None,
    feature_space: Values = None,
    where: str | None = None,
    fields: Fields = "priority",
    limit: int | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Genes (geneinfo rows) matching every filter given (cmapBQ's ``get_geneinfo``).

    ``feature_space`` takes the release's classes (``landmark``, ``best inferred``,
    ``inferred``) or the spaces ``bing`` (landmark + best inferred) and ``all``."""
    df = _table(store, "geneinfo", storage_options)
    space = _values(feature_space)
    if space is not None:
        from cmapdask.model.spaces import SPACE_CLASSES  # the one feature-space rule

        classes = {"all": {"landmark", "best inferred", "inferred"}, **SPACE_CLASSES}
        feature_space = sorted(set().union(*(classes.get(x.lower(), {x}) for x in space)))
    filters = dict(gene_id=gene_id, gene_symbol=gene_symbol, feature_space=feature_space)
    return _select(df, "geneinfo", filters, where, fields, limit)


def cells(
    store,
    *,
    cell_iname: Values = None,
    cell_lineage: Values = None,
    primary_disease: Values = None,
    where: str | None = None,
    fields: Fields = "priority",
    limit: int | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Cell lines (cellinfo rows, or the store's cell lines with their signature counts)."""
    df = _table(store, "cellinfo", storage_options)
    filters = dict(
        cell_iname=cell_iname, cell_lineage=cell_lineage, primary_disease=primary_disease
    )
    return _select(df, "cellinfo", filters, where, fields, limit)


def genetic_perts(
    store,
    *,
    pert_id: Values = None,
    cmap_name: Values = None,
    pert_type: Values = None,
    gene_id: Values = None,
    where: str | None = None,
    fields: Fields = "priority",
    limit: int | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Genetic perturbagens (shRNA, CRISPR, overexpression): the geneticinfo table, or
    the store's genetic signatures' perturbagens (``cmap_name`` is the gene symbol)."""
    tables = read_tables(store, storage_options=storage_options)
    if "geneticinfo" in tables:
        df, table = frame(tables["geneticinfo"]), "geneticinfo"
    else:
        sig = frame(tables["siginfo"])
        if "pert_type" not in sig:
            raise MetadataError(f"{store}: no pert_type field to find genetic perturbagens")
        sig = sig[sig["pert_type"].astype(str).isin(_GENETIC_TYPES)]
        cols = [c for c in ("pert_id", "cmap_name", "pert_iname", "pert_type") if c in sig]
        df, table = sig[cols].drop_duplicates().reset_index(drop=True), "geneticinfo"
    filters = dict(pert_id=pert_id, cmap_name=cmap_name, pert_type=pert_type)
    if gene_id is not None:
        filters["gene_id"] = gene_id
    return _select(df, table, filters, where, fields, limit)


def _count(store, field: str, storage_options) -> pd.DataFrame:
    comp = _table(store, "compoundinfo", storage_options)
    if field not in comp:
        raise MetadataError(f"{store}: compoundinfo has no {field!r} field")
    rows = [
        (v, p)
        for p, cell in zip(comp["pert_id"], comp[field], strict=True)
        for v in _multi(cell)
        if v
    ]
    pairs = pd.DataFrame(rows, columns=[field, "pert_id"]).drop_duplicates()
    out = pairs.groupby(field)["pert_id"].nunique().rename("n_compounds").reset_index()
    return out.sort_values(["n_compounds", field], ascending=[False, True], ignore_index=True)


def moas(store, *, storage_options: dict | None = None) -> pd.DataFrame:
    """Every MoA with its number of compounds (most first)."""
    return _count(store, "moa", storage_options)


def targets(store, *, storage_options: dict | None = None) -> pd.DataFrame:
    """Every target gene with its number of compounds (most first)."""
    return _count(store, "target", storage_options)


def matrix(
    store,
    *,
    sigs: Values | pd.DataFrame = None,
    genes: Values | pd.DataFrame = None,
    space: Literal["landmark", "bing", "all"] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """The signatures × genes matrix for chosen signatures and genes, lazily.

    Parameters
    ----------
    sigs
        Signature ids (a list, comma-separated string, or a frame from :func:`sigs`);
        default every signature.
    genes
        Gene ids or symbols (or a frame from :func:`genes`); default the genes of
        ``space``, else every gene.
    space
        ``"landmark"``, ``"bing"`` or ``"all"``: the feature-space rule of every command.

    Returns
    -------
    xarray.Dataset
        ``expr`` over ``(sig, gene)`` with metadata, dask-backed in the store's chunks, in
        the order asked; ``ds.cmap.to_gctx(path)`` writes it as a GCTx.

    Notes
    -----
    Only the inner chunks of the store's shards that hold the chosen signatures are read,
    when computed (a few signatures each; whole chunks for stores written unsharded).
    """
    from cmapdask.io.store import open_store
    from cmapdask.io.store.read import take_sigs

    ds = open_store(store, storage_options=storage_options)
    if sigs is not None:
        ids = (
            sigs["sig_id"].astype(str).tolist() if isinstance(sigs, pd.DataFrame) else _values(sigs)
        )
        pos = pd.Index(ds["sig"].values).get_indexer(ids)
        if (pos < 0).any():
            bad = [i for i, p in zip(ids, pos, strict=True) if p < 0]
            raise InputError(
                f"{store}: {len(bad)} signature id(s) not in the store, e.g. {bad[0]!r}"
            )
        ds = take_sigs(ds, pos, storage_options=storage_options)
    if genes is not None:
        want = (
            genes["gene_id"].astype(str).tolist()
            if isinstance(genes, pd.DataFrame)
            else _values(genes)
        )
        index = pd.Index(ds["gene"].values.astype(str))
        pos = index.get_indexer(want)
        sym = next((c for c in ("gene_symbol", "pr_gene_symbol") if c in ds.coords), None)
        if (pos < 0).any() and sym:
            by_symbol = pd.Series(np.arange(ds.sizes["gene"]), index=ds[sym].values.astype(str))
            by_symbol = by_symbol[~by_symbol.index.duplicated()]
            pos = np.where(pos < 0, by_symbol.reindex(want).fillna(-1).to_numpy(int), pos)
        if (pos < 0).any():
            bad = [g for g, p in zip(want, pos, strict=True) if p < 0]
            raise InputError(f"{store}: {len(bad)} gene(s) not in the store, e.g. {bad[0]!r}")
        ds = ds.isel(gene=pos)
    elif space is not None:
        from cmapdask.model.spaces import feature_genes

        ds = ds.isel(gene=feature_genes(ds, space))
    return ds
