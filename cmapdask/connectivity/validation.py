"""Query gene sets: map to the feature space, drop what is outside, reject what is wrong.

ALGORITHMS.md §0: genes outside the space are dropped and reported; an empty set, a gene
in both sets, or identical sets is an error; sets outside 10-150 genes warn.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cmapdask.errors import QueryError

__all__ = ["QuerySet", "GeneTable", "prepare_queries", "MIN_GENES", "MAX_GENES"]

MIN_GENES, MAX_GENES = 10, 150


@dataclass
class QuerySet:
    """Validated queries: positions of each set's genes in the feature space."""

    names: list[str]
    up: list[np.ndarray]
    down: list[np.ndarray]
    report: list[dict] = field(default_factory=list)

    @property
    def union(self) -> np.ndarray:
        """Sorted positions of every gene any query uses (the index rows to read)."""
        parts = [a for a in self.up + self.down if a.size]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


class GeneTable:
    """Genes by id or symbol: an exact id, else an exact symbol, else a symbol in any case.

    The one matching rule of queries (``cmapdask query``, the server's gene check, CLUE's
    API): ``g51026`` is ``G51026`` when that is a symbol; a case-folded symbol shared by
    two genes matches neither (no guess).
    """

    def __init__(self, gene_ids, gene_symbols=None):
        self.ids = [str(g) for g in gene_ids]
        self.pos = {g: i for i, g in enumerate(self.ids)}
        self.symbols = [None] * len(self.ids) if gene_symbols is None else list(gene_symbols)
        self.exact: dict[str, int] = {}
        folded: dict[str, int | None] = {}
        for i, s in enumerate(self.symbols):
            if s is None or (isinstance(s, float) and s != s):
                continue
            s = str(s)
            if s not in self.pos:
                self.exact.setdefault(s, i)
            k = s.casefold()
            folded[k] = i if folded.get(k, i) == i else None  # None: ambiguous
        self.folded = {k: i for k, i in folded.items() if i is not None}

    def lookup(self, gene) -> int | None:
        """The position of ``gene`` (an id or a symbol), or None."""
        g = str(gene).strip()
        p = self.pos.get(g)
        if p is None:
            p = self.exact.get(g)
        if p is None:
            p = self.folded.get(g.casefold())
        return p

    def account(self, genes, space_ids, space: str = "") -> list[dict]:
        """Every given gene accounted for, in input order (CLUE's per-gene table).

        ``status``: ``unknown`` (neither an id nor a symbol here), ``in_space`` (scored),
        ``outside`` (measured but outside ``space_ids``, dropped) or ``duplicate`` (the
        same gene given before in the list).
        """
        inside = {str(g) for g in space_ids}
        rows, seen = [], set()
        for given in genes:
            p = self.lookup(given)
            row = {"given": str(given).strip(), "gene_id": None, "symbol": None}
            if p is None:
                row["status"] = "unknown"
            else:
                s = self.symbols[p]
                row["gene_id"] = self.ids[p]
                row["symbol"] = None if s is None or s != s else str(s)
                if self.ids[p] in seen:
                    row["status"] = "duplicate"
                else:
                    seen.add(self.ids[p])
                    row["status"] = "in_space" if self.ids[p] in inside else "outside"
            row["space"] = space
            rows.append(row)
        return rows


def _resolve(genes, table: GeneTable) -> tuple[list[int], list[str], list[str]]:
    keep, dropped, dups = [], [], []
    seen = set()
    for g in genes:
        g = str(g).strip()
        p = table.lookup(g)
        if p is None:
            dropped.append(g)
        elif p in seen:
            dups.append(g)
        else:
            seen.add(p)
            keep.append(p)
    return keep, dropped, dups


def prepare_queries(
    queries: Mapping[str, tuple[list[str] | None, list[str] | None]],
    gene_ids,
    *,
    gene_symbols=None,
    space: str = "",
) -> QuerySet:
    """Map ``{query: (up genes, down genes)}`` onto a feature space.

    Parameters
    ----------
    queries : mapping
        Query id to ``(up, down)``; either side may be ``None`` for a one-tailed query.
    gene_ids : sequence of str
        The space's gene ids, in index order.
    gene_symbols : sequence of str, optional
        Symbols of the same genes: a query gene that is not an id is looked up here,
        exactly and then in any case (:class:`GeneTable`).
    space : str
        Name of the space, for messages.

    Returns
    -------
    QuerySet
        With ``report``: one row per query with the counts kept, dropped (outside the
        space) and duplicated, and the dropped genes.

    Raises
    ------
    QueryError
        No queries; a set empty after filtering; a gene in both sets; identical sets.
    """
    if not queries:
        raise QueryError("no queries given")
    table = GeneTable(gene_ids, gene_symbols)
    names, ups, downs, report = [], [], [], []
    where = f" in space {space!r}" if space else ""
    for name, (up, down) in queries.items():
        if up is None and down is None:
            raise QueryError(f"query {name!r}: neither an up nor a down set")
        row = {"query": str(name)}
        sides = []
        for label, genes in (("up", up), ("down", down)):
            if genes is None:
                sides.append(None)
                row.update({f"n_{label}": 0, f"n_{label}_dropped": 0, f"{label}_dropped": ""})
                continue
            keep, dropped, dups = _resolve(genes, table)
            if not keep:
                raise QueryError(
                    f"query {name!r}: the {label} set is empty after dropping "
                    f"{len(dropped)} gene(s) outside the feature space{where}"
                )
            if not MIN_GENES <= len(keep) <= MAX_GENES:
                warnings.warn(
                    f"query {name!r}: {len(keep)} {label} genes; CMap queries use "
                    f"{MIN_GENES}-{MAX_GENES}",
                    stacklevel=2,
                )
            sides.append(np.array(keep, dtype=np.int64))
            row.update(
                {
                    f"n_{label}": len(keep),
                    f"n_{label}_dropped": len(dropped),
                    f"{label}_dropped": " ".join(dropped),
                    f"{label}_duplicates": " ".join(dups),
                }
            )
        u, d = sides
        if u is not None and d is not None:
            both = set(u.tolist()) & set(d.tolist())
            if both and set(u.tolist()) == set(d.tolist()):
                raise QueryError(f"query {name!r}: the up and down sets are identical")
            if both:
                ids = sorted(str(gene_ids[i]) for i in both)
                raise QueryError(
                    f"query {name!r}: {len(ids)} gene(s) in both the up and the down set "
                    f"(first: {ids[0]})"
                )
        names.append(str(name))
        ups.append(u if u is not None else np.zeros(0, dtype=np.int64))
        downs.append(d if d is not None else np.zeros(0, dtype=np.int64))
        report.append(row)
    if len(set(names)) != len(names):
        raise QueryError("query ids are not unique")
    return QuerySet(names, ups, downs, report)
