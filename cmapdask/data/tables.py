"""The release's metadata tables kept inside a store, as Parquet: the ``tables`` member.

``convert`` keeps every table it was given (``siginfo``, ``geneinfo``, ``compoundinfo``,
and ``cellinfo``, ``instinfo``, ``geneticinfo`` when given) as ``tables/<name>.parquet``,
``siginfo`` and ``geneinfo`` restricted to the store's signatures and genes. A store
without the member (converted by an older version, or without tables) still answers:
its tables are derived from the store's own coordinates.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cmapdask.errors import MetadataError
from cmapdask.io.atomic import join, publish_dir, url_to_fs
from cmapdask.io.pending import deferrable

__all__ = ["TABLE_NAMES", "write_tables", "read_tables", "store_tables"]

MEMBER = "tables"
# the tables a release ships, by the names cmapBQ and the 2020 release use
TABLE_NAMES = ("siginfo", "geneinfo", "compoundinfo", "cellinfo", "instinfo", "geneticinfo")


def _frame_to_arrow(df: pd.DataFrame) -> pa.Table:
    """Columns as Arrow types: numbers stay numbers, text is text, missing is null."""
    cols = {}
    for name in df.columns:
        s = df[name]
        if s.dtype.kind in "biuf":
            cols[str(name)] = pa.array(s.to_numpy(), from_pandas=True)
        else:
            vals = [None if v is None or (isinstance(v, float) and v != v) else v for v in s]
            kinds = {type(v) for v in vals if v is not None}
            if kinds and kinds <= {int, np.int64}:
                cols[str(name)] = pa.array(vals, type=pa.int64())
            elif kinds and kinds <= {int, float, np.int64, np.float64}:
                cols[str(name)] = pa.array([None if v is None else float(v) for v in vals])
            else:
                cols[str(name)] = pa.array(
                    [None if v is None else str(v) for v in vals], pa.string()
                )
    return pa.table(cols)


@deferrable("tables member of a store", lambda a: join(str(a["store_url"]), MEMBER))
def write_tables(
    store_url, tables: dict[str, pd.DataFrame], *, storage_options=None, compute: bool = True
) -> str:
    """Add or replace the store's ``tables`` member: one Parquet file per table.

    Published in one step beside the store's other members; ``expr`` is not touched.

    Parameters
    ----------
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.
    """
    import zarr

    from cmapdask.io.store import (
        _is_local_url,
        _provenance,
        mark_complete_remote,
        quiet_zarr,
        zarr_options,
    )

    bad = [n for n in tables if n not in TABLE_NAMES]
    if bad:
        raise MetadataError(f"unknown table name {bad[0]!r}; known: {', '.join(TABLE_NAMES)}")
    dest = join(str(store_url), MEMBER)
    with publish_dir(dest, storage_options=storage_options, overwrite=True) as tmp:
        with quiet_zarr():
            g = zarr.open_group(
                tmp, mode="w", zarr_format=3, storage_options=zarr_options(tmp, storage_options)
            )
        fs, root = url_to_fs(tmp, storage_options)
        for name, df in tables.items():
            buf = io.BytesIO()
            pq.write_table(_frame_to_arrow(df), buf, compression="zstd")
            with fs.open(f"{root.rstrip('/')}/{name}.parquet", "wb") as f:
                f.write(buf.getvalue())
        # locally the rename publishes it complete; remotely the flag is set last
        g.attrs["cmapdask"] = _provenance(
            member=MEMBER,
            tables={n: int(len(df)) for n, df in tables.items()},
            complete=_is_local_url(dest, storage_options),
        )
    mark_complete_remote(dest, storage_options)
    with _LOCK:
        _CACHE.clear()
        _FRAMES.clear()
    return dest


# Tables are read once per process and store version: a filter over a million
# signatures is then a pandas/DuckDB operation on memory (benchmarks/bench_data.py).
_CACHE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _key(store_url, meta) -> tuple:
    # "source" is a record for a converted file, a plain name for a derived store
    source = meta.get("source")
    return (
        str(store_url),
        meta.get("created"),
        meta.get("write_id"),
        source.get("sha256") if isinstance(source, dict) else source,
    )


def read_tables(store_url, *, storage_options=None) -> dict[str, pa.Table]:
    """Every table of a store as Arrow tables (cached per store version in this process).

    Tables the ``tables`` member does not hold, or all of them for a store without the
    member, are derived from the store's coordinates: ``siginfo`` (every signature field
    that did not come from compoundinfo), ``geneinfo``, ``compoundinfo`` (``pert_id`` and
    the compound fields), ``cellinfo`` (cell lines and their signature counts).
    """
    from cmapdask.io.store import _check_complete

    meta = _check_complete(store_url, storage_options, "store")
    key = _key(store_url, meta)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    found = _read_member(store_url, storage_options)
    derived = _derive(store_url, storage_options, found)
    out = {**derived, **found}
    with _LOCK:
        _CACHE[key] = out
        while len(_CACHE) > 4:
            _CACHE.popitem(last=False)
    return out


def store_tables(store_url, *, storage_options=None) -> list[str]:
    """Names of the tables a store answers for (kept or derived)."""
    return sorted(read_tables(store_url, storage_options=storage_options))


def _read_member(store_url, storage_options) -> dict[str, pa.Table]:
    from cmapdask.io.store import has_member

    if not has_member(store_url, MEMBER, storage_options=storage_options):
        return {}
    fs, root = url_to_fs(join(str(store_url), MEMBER), storage_options)
    out = {}
    for name in TABLE_NAMES:
        path = f"{root.rstrip('/')}/{name}.parquet"
        if fs.exists(path):
            with fs.open(path, "rb") as f:
                out[name] = pq.read_table(f)
    return out


_COMPOUND_FIELDS = ("cmap_name", "pert_iname", "moa", "target", "canonical_smiles", "inchi_key")


def _coords(store_url, storage_options, dim: str) -> pd.DataFrame:
    """The store's coordinates along ``dim`` read straight from Zarr (nothing else)."""
    from cmapdask.io.store import _open_group, quiet_zarr

    cols = {}
    with quiet_zarr():
        g = _open_group(store_url, "r", storage_options)
        for name, arr in g.arrays():
            if tuple(arr.metadata.dimension_names or ()) != (dim,):
                continue
            vals = np.asarray(arr[:])
            if vals.dtype.kind in "OUST":
                vals = np.array([None if v == "" else str(v) for v in vals.tolist()], object)
            key = {"sig": "sig_id", "gene": "gene_id"}.get(name, name)
            if dim == "gene" and key.startswith("gene_") and key != "gene_id":
                key = key.removeprefix("gene_") if key[5:] not in cols else key
            cols[key] = vals
    first = {"sig": "sig_id", "gene": "gene_id"}[dim]
    return pd.DataFrame({first: cols.pop(first), **cols})


def _derive(store_url, storage_options, found: dict) -> dict[str, pa.Table]:
    need = {"siginfo", "geneinfo", "compoundinfo", "cellinfo"} - set(found)
    if not need:
        return {}
    out = {}
    if "geneinfo" in need:
        out["geneinfo"] = _frame_to_arrow(_coords(store_url, storage_options, "gene"))
    if need & {"siginfo", "compoundinfo", "cellinfo"}:
        if "siginfo" in found:
            sig = found["siginfo"].to_pandas()
        else:
            sig = _coords(store_url, storage_options, "sig")
            joined = [c for c in ("moa", "target") if c in sig]  # compoundinfo's, in a release
            out["siginfo"] = _frame_to_arrow(sig.drop(columns=joined))
        if "compoundinfo" in need and "pert_id" in sig:
            cols = ["pert_id"] + [c for c in _COMPOUND_FIELDS if c in sig]
            comp = sig[cols].drop_duplicates("pert_id").reset_index(drop=True)
            out["compoundinfo"] = _frame_to_arrow(comp)
        cell_col = next((c for c in ("cell_iname", "cell_id") if c in sig), None)
        if "cellinfo" in need and cell_col:
            cells = sig[cell_col].dropna().value_counts().rename_axis("cell_iname")
            out["cellinfo"] = _frame_to_arrow(cells.rename("n_sigs").reset_index())
    return out


_FRAMES: dict[int, tuple[pa.Table, pd.DataFrame, dict]] = {}


def frame(table: pa.Table) -> pd.DataFrame:
    """:func:`to_frame` of a cached table, converted once (treat it as read-only)."""
    with _LOCK:
        hit = _FRAMES.get(id(table))
        if hit is not None and hit[0] is table:
            return hit[1]
    df = to_frame(table)
    with _LOCK:
        _FRAMES[id(table)] = (table, df, {})
        while len(_FRAMES) > 24:
            _FRAMES.pop(next(iter(_FRAMES)))
    return df


def column_cache(df: pd.DataFrame) -> dict:
    """A scratch dict that lives as long as the cached frame ``df`` (empty for others)."""
    with _LOCK:
        for _, cached, scratch in _FRAMES.values():
            if cached is df:
                return scratch
    return {}


def to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as the data model's frame: text as object ``str``/None, numbers kept."""
    df = table.to_pandas()
    for name in df.columns:
        if df[name].dtype.kind not in "biuf":
            df[name] = df[name].astype(object).where(df[name].notna(), None)
    return df
