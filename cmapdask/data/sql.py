"""SQL over a store's tables with DuckDB: ``cmapdask.sql(store, "SELECT ...")``."""

from __future__ import annotations

import threading

import pandas as pd

from cmapdask.data.tables import read_tables
from cmapdask.errors import InputError

__all__ = ["sql"]

_LOCK = threading.Lock()


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
    con = duckdb.connect(":memory:")
    try:
        for name, table in tables.items():
            con.register(name, table)
        # after registering: from here on the connection reads nothing but these tables
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        with _LOCK:
            try:
                if len(con.extract_statements(text)) != 1:
                    raise InputError("SQL: give exactly one statement")
                return con.execute(text).fetch_df()
            except duckdb.Error as e:
                first = str(e).strip().splitlines()[0]
                raise InputError(f"SQL: {first}") from None
    finally:
        con.close()
