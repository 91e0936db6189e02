"""The release's metadata tables (``siginfo``, ``geneinfo``, ``compoundinfo``) and joins.

Tables are tab-separated text with a header (``.txt``/``.tsv``, optionally gzipped) or
Parquet. Every column goes through :func:`cmapdask.io.meta.normalise_column`, so ``-666``
is missing and numeric columns are numbers.
"""

from __future__ import annotations

import io
import os
from typing import Literal

import numpy as np
import pandas as pd

from cmapdask.errors import MetadataError
from cmapdask.io.atomic import url_to_fs
from cmapdask.io.meta import encode_for_text, normalise_column
from cmapdask.io.pending import deferrable

__all__ = ["read_table", "write_table", "join_table", "join_compounds", "ID_COLUMNS"]

# the id column of each table, in the order they are looked for
ID_COLUMNS = {
    "sig": ("sig_id", "id", "cid"),
    "gene": ("gene_id", "pr_gene_id", "id", "rid"),
    "compound": ("pert_id",),
}


def read_table(path, *, storage_options: dict | None = None) -> pd.DataFrame:
    """Read a metadata table; every column normalised (numbers stay numbers, -666 missing).

    Non-UTF-8 bytes are decoded as latin-1, so files written by older tools still read.
    """
    name = os.path.basename(str(path))
    fs, p = url_to_fs(path, storage_options)
    try:
        if p.endswith(".parquet"):
            with fs.open(p, "rb") as f:
                raw = pd.read_parquet(f).astype(object)
        else:
            with fs.open(p, "rb", compression="infer") as f:
                data = f.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
            raw = pd.read_csv(
                io.StringIO(text), sep="\t", dtype=str, keep_default_na=False, na_filter=False
            )
    except FileNotFoundError:
        raise MetadataError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as e:
        raise MetadataError(
            f"{name}: not a tab-separated table: {str(e).splitlines()[0]}"
        ) from None
    if raw.shape[1] < 1:
        raise MetadataError(f"{name}: table has no columns")
    if not p.endswith(".parquet"):
        _check_header(name, text)
    out = pd.DataFrame(
        {c: normalise_column(raw[c].to_numpy(dtype=object)) for c in raw.columns}, index=raw.index
    )
    out.attrs["source"] = name
    return out


def _check_header(name: str, text: str) -> None:
    """Refuse a header with a repeated or empty column name (pandas would rename it
    ``pert_id.1`` / ``Unnamed: 3`` and the table would silently lose the field)."""
    import csv

    line = text.split("\n", 1)[0].rstrip("\r")
    header = next(csv.reader([line], delimiter="\t"), [])
    seen: dict[str, int] = {}
    for i, col in enumerate(header, start=1):
        if not col.strip():
            raise MetadataError(f"{name}: header column {i} has no name")
        if col in seen:
            raise MetadataError(
                f"{name}: column {col!r} appears twice in the header (columns {seen[col]} and {i})"
            )
        seen[col] = i


@deferrable("metadata table (TSV)", "path")
def write_table(df: pd.DataFrame, path, *, compute: bool = True) -> str:
    """Write a metadata table as TSV, missing values as -666.

    Parameters
    ----------
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.
    """
    text = pd.DataFrame({c: encode_for_text(df[c].to_numpy()) for c in df.columns})
    text.to_csv(path, sep="\t", index=False)
    return str(path)


def _id_column(df: pd.DataFrame, kind: str, name: str) -> str:
    for c in ID_COLUMNS[kind]:
        if c in df.columns:
            return c
    raise MetadataError(f"{name}: no id column (expected one of {', '.join(ID_COLUMNS[kind])})")


def join_table(
    ids: np.ndarray,
    table: pd.DataFrame,
    *,
    kind: Literal["sig", "gene"],
    source: str,
    extra_ids: Literal["error", "ignore"] = "error",
) -> dict[str, np.ndarray]:
    """Align a table to ``ids``; return ``{field: values}`` in ``ids`` order.

    Every id must have exactly one row. Rows for ids not in the matrix are an error
    unless ``extra_ids="ignore"`` (a release-wide siginfo against a subset matrix).
    """
    name = table.attrs.get("source", "table")
    col = _id_column(table, kind, name)
    keys = pd.Index(np.asarray([str(v) for v in table[col].tolist()], dtype=object))
    if keys.has_duplicates:
        dup = keys[keys.duplicated()].unique()
        raise MetadataError(f"{name}: {len(dup)} duplicate {col} value(s), e.g. {str(dup[0])!r}")
    pos = keys.get_indexer(np.asarray(ids, dtype=object))
    if (pos < 0).any():
        missing = np.asarray(ids)[pos < 0]
        raise MetadataError(
            f"{name}: {len(missing)} {kind} id(s) of {source} have no row, e.g. {str(missing[0])!r}"
        )
    if extra_ids == "error" and len(keys) > len(ids):
        extra = keys.difference(pd.Index(np.asarray(ids, dtype=object)))
        raise MetadataError(
            f"{name}: {len(extra)} {col} value(s) are not in {source}, e.g. {str(extra[0])!r} "
            "(pass extra_ids='ignore' / --ignore-extra-ids to allow)"
        )
    return {c: _take(table[c].to_numpy(), pos) for c in table.columns if c != col}


def _take(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return normalise_column(values[pos]) if values.dtype == object else values[pos]


def join_compounds(pert_ids: np.ndarray, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-signature compound fields (``moa``, ``target``, ...) via ``pert_id``.

    compoundinfo has one row per (compound, target) in the release; the rows of one
    pert_id are folded into one value per field, distinct values joined with ``|`` (the
    release's own multi-value separator). Signatures whose pert_id is absent (vehicle
    controls, genetic perturbagens) get missing values.
    """
    name = table.attrs.get("source", "compoundinfo")
    col = _id_column(table, "compound", name)
    fields = [c for c in table.columns if c != col]
    folded = {}
    for pid, rows in table.groupby(table[col].astype(str), sort=False):
        folded[pid] = {f: _fold(rows[f].tolist()) for f in fields}
    out = {}
    for f in fields:
        values = [folded.get(str(p), {}).get(f) if p is not None else None for p in pert_ids]
        out[f] = normalise_column(np.array(values, dtype=object))
    return out


def _fold(values: list):
    seen = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        for part in str(v).split("|"):
            if part and part not in seen:
                seen.append(part)
    return "|".join(seen) if seen else None
