"""SQL over a store's tables with DuckDB: ``cmapdask.sql(store, "SELECT ...")``."""

from __future__ import annotations

import threading

import pandas as pd

from cmapdask.data.tables import read_tables
from cmapdask.errors import InputError

__all__ = ["sql"]

_LOCK = threading.RLock()


def sql(store, query: str, *, storage_options: dict | None = None) -> pd.DataFrame:
    """Answer a SQL query over the store's tables (DuckDB's dialect).

    Parameters
    ----------
    store
        Store URL (local, ``s3://``; credentials and endpoint in ``storage_options``).
    query
        One ``SELECT`` (or ``WITH ... SELECT``) statement over the tables ``siginfo``,
        ``geneinfo``, ``compoundinfo``, ``cellinfo`` and, when the store keeps them,
        ``instinfo`` and ``geneticinfo``; joins work
        (``siginfo JOIN compoundinfo USING (pert_id)``).

    Returns
    -------
    pandas.DataFrame

    Notes
    -----
    The tables are read once per process and store version (see
    :func:`cmapdask.data.read_tables`) and handed to an in-memory DuckDB connection
    without copying (Arrow). The connection can read nothing else: external access is
    disabled, so a query cannot open files or URLs.

    Examples
    --------
    >>> sql(store, "SELECT pert_type, count(*) AS n FROM siginfo GROUP BY 1")  # doctest: +SKIP
    """
    import duckdb

    text = (query or "").strip().rstrip(";").strip()
    if not text:
        raise InputError("an empty SQL query")
    head = text.split(None, 1)[0].lower()
    if head not in ("select", "with", "from", "values", "table"):
        raise InputError(f"only SELECT queries are answered, not {head.upper()!r}")
    tables = read_tables(store, storage_options=storage_options)
    con = _connection(tables)
    with _LOCK:  # registered tables live on the connection: one query at a time on it
        try:
            if len(con.extract_statements(text)) != 1:
                raise InputError("SQL: give exactly one statement")
            return con.execute(text).fetch_df()
        except duckdb.Error as e:
            raise InputError(f"SQL: {str(e).strip().splitlines()[0]}") from None


_CONNECTIONS: dict[int, tuple[dict, object]] = {}


def _connection(tables: dict):
    """One in-memory DuckDB connection per cached set of tables, registered once."""
    import duckdb

    with _LOCK:
        hit = _CONNECTIONS.get(id(tables))
        if hit is not None and hit[0] is tables:
            return hit[1]
        con = duckdb.connect(":memory:")
        for name, table in tables.items():
            con.register(name, table)
        # after registering: from here on the connection reads nothing but these tables
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        _CONNECTIONS[id(tables)] = (tables, con)
        while len(_CONNECTIONS) > 4:
            _CONNECTIONS.pop(next(iter(_CONNECTIONS)))[1].close()
        return con
