"""Up/down query gene sets from a differential-expression table (CLUE users' DESeq2 step).

A ranked table (TSV or CSV: one row per gene, a gene column of symbols or Entrez ids and a
score column such as DESeq2's ``log2FoldChange`` or ``stat``) becomes the two sets a
query takes: the genes are mapped to the store's gene ids (an id as written, else its
symbol in any case), kept when they lie in the query's feature space (BING by default,
CLUE's rule), and the ``n`` highest and ``n`` lowest scores beyond the thresholds make
``NAME_UP`` and ``NAME_DN``, each of CLUE's 10-150 genes.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from cmapdask.errors import InputError
from cmapdask.model import Space, feature_genes

__all__ = ["CLUE_MIN_GENES", "CLUE_MAX_GENES", "read_de_table", "de_gene_sets"]

# CLUE's Query app takes 10 to 150 genes per list
CLUE_MIN_GENES = 10
CLUE_MAX_GENES = 150
_SYMBOL_FIELDS = ("gene_symbol", "pr_gene_symbol")


def read_de_table(path, *, gene_column: str | None = None, score_column: str = "log2FoldChange"):
    """Read a differential-expression table as ``(genes, scores)``.

    Parameters
    ----------
    path
        A local TSV or CSV file (``.csv`` is comma-separated, anything else tab; ``.gz``
        allowed). R's ``write.csv`` of a DESeq2 result (unnamed first column) reads as is.
    gene_column
        The column of gene symbols or Entrez ids; default the first column.
    score_column
        The ranking score (``log2FoldChange``, ``stat``, ...).

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        Gene labels (``str``) and float64 scores, in table order.

    Raises
    ------
    InputError
        Unreadable file, a missing column, a score that is not a number or is missing
        (NaN: drop or fill those rows first), an empty gene label.
    """
    name = os.fspath(path)
    sep = "," if name.lower().removesuffix(".gz").endswith(".csv") else "\t"
    try:
        df = pd.read_csv(name, sep=sep, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: not a readable table: {str(e).splitlines()[0]}") from None
    if df.shape[1] < 2:
        raise InputError(f"{name}: needs a gene column and a score column (sep {sep!r})")
    gene_column = df.columns[0] if gene_column is None else gene_column
    for col, what in ((gene_column, "gene"), (score_column, "score")):
        if col not in df.columns:
            raise InputError(
                f"{name}: no {what} column {col!r}; columns: {', '.join(map(str, df.columns))}"
            )
    genes = df[gene_column].str.strip().to_numpy(dtype=object)
    if (empty := np.flatnonzero(genes == "")).size:
        raise InputError(f"{name}: row {empty[0] + 2} has no gene in column {gene_column!r}")
    scores = pd.to_numeric(df[score_column].str.strip(), errors="coerce").to_numpy(np.float64)
    if (bad := np.flatnonzero(~np.isfinite(scores))).size:
        raise InputError(
            f"{name}: {bad.size} rows have no numeric {score_column!r} (first: gene "
            f"{genes[bad[0]]}, {df[score_column].iloc[bad[0]]!r}); drop or fill them first"
        )
    return genes, scores


def _gene_ids(store, labels: np.ndarray, source: str) -> np.ndarray:
    """Store gene id of each label (an id as written, else a symbol in any case); None
    where the store has no such gene or the symbol names several."""
    ids = store["gene"].values.astype(str).tolist()
    by_id = {g: g for g in ids}
    by_symbol: dict[str, str | None] = {}
    field = next((f for f in _SYMBOL_FIELDS if f in store.coords), None)
    if field is not None:
        for gid, sym in zip(ids, store[field].values, strict=True):
            if isinstance(sym, str) and sym:
                key = sym.casefold()
                by_symbol[key] = None if key in by_symbol else gid  # ambiguous: neither
    out = np.array(
        [by_id.get(g, by_symbol.get(g.casefold())) for g in labels.tolist()], dtype=object
    )
    mapped = out[out != None]  # noqa: E711 (elementwise)
    uniq, counts = np.unique(mapped.astype(str), return_counts=True)
    if (dup := uniq[counts > 1]).size:
        rows = [labels[i] for i in np.flatnonzero(out == dup[0])]
        raise InputError(f"{source}: gene {dup[0]} is listed twice ({' and '.join(rows)})")
    return out


def de_gene_sets(
    table,
    store,
    *,
    name: str | None = None,
    gene_column: str | None = None,
    score_column: str = "log2FoldChange",
    n: int = CLUE_MAX_GENES,
    n_down: int | None = None,
    up_threshold: float = 0.0,
    down_threshold: float = 0.0,
    space: Space = "bing",
    storage_options: dict | None = None,
) -> dict[str, list[str]]:
    """The up and down query sets of a differential-expression table.

    Parameters
    ----------
    table
        A TSV/CSV path (see :func:`read_de_table`) or a ``(genes, scores)`` pair.
    store
        The store the query will read (a URL or an opened dataset): its gene ids,
        symbols (``gene_symbol``) and feature spaces.
    name
        Set name prefix (``NAME_UP``, ``NAME_DN``); default the table's file stem.
    gene_column, score_column
        Columns of the table (default the first column, and ``log2FoldChange``).
    n, n_down
        Genes per set: the ``n`` highest scores make the up set, the ``n_down``
        (default ``n``) lowest the down set; CLUE's 10-150.
    up_threshold, down_threshold
        A gene is up only if its score is above ``up_threshold``, down only if below
        ``-down_threshold`` (e.g. 1 for a two-fold change in log2FC).
    space
        Keep genes of this feature space (``"bing"``, CLUE's query space, by default).
    storage_options
        fsspec options for a store URL.

    Returns
    -------
    dict[str, list[str]]
        ``{NAME_UP: ids by decreasing score, NAME_DN: ids by increasing score}``; ties
        keep table order.

    Raises
    ------
    InputError
        A bad table (see :func:`read_de_table`), ``n`` outside 10-150, one gene twice
        (two rows, or an id and its symbol), fewer than 10 genes for a set.
    """
    from cmapdask.io.store import open_store

    for k, v in (("n", n), ("n_down", n if n_down is None else n_down)):
        if not CLUE_MIN_GENES <= int(v) <= CLUE_MAX_GENES:
            raise InputError(
                f"{k}={v}: CLUE's query sets hold {CLUE_MIN_GENES}-{CLUE_MAX_GENES} genes"
            )
    n_down = n if n_down is None else n_down
    if isinstance(table, (str, os.PathLike)):
        source = os.fspath(table)
        labels, scores = read_de_table(table, gene_column=gene_column, score_column=score_column)
        name = name or os.path.basename(source).split(".")[0]
    else:
        source = "table"
        labels = np.asarray(table[0], dtype=object).astype(str).astype(object)
        scores = np.asarray(table[1], dtype=np.float64)
        if not np.isfinite(scores).all():
            raise InputError("table: scores must be numbers (NaN or infinite found)")
    name = name or "QUERY"
    ds = (
        open_store(store, storage_options=storage_options)
        if isinstance(store, (str, os.PathLike))
        else store
    )
    ids = _gene_ids(ds, labels, source)
    in_space = np.zeros(len(labels), dtype=bool)
    allowed = set(ds["gene"].values[feature_genes(ds, space)].astype(str).tolist())
    for i, g in enumerate(ids.tolist()):
        in_space[i] = g is not None and g in allowed
    keep = np.flatnonzero(in_space)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    up = [ids[i] for i in order if scores[i] > up_threshold][:n]
    order = keep[np.argsort(scores[keep], kind="stable")]
    dn = [ids[i] for i in order if scores[i] < -down_threshold][:n_down]
    for label, genes, t in (("up", up, up_threshold), ("down", dn, down_threshold)):
        if len(genes) < CLUE_MIN_GENES:
            raise InputError(
                f"{source}: {len(genes)} {label} genes (|score| beyond {t} among the "
                f"{keep.size} of {len(labels)} genes in the store's {space} space); "
                f"CLUE's query needs at least {CLUE_MIN_GENES}"
            )
    return {f"{name}_UP": up, f"{name}_DN": dn}
