"""Conversion of a GCTx or GCT file into a store, with the release's tables joined to the
signatures and genes and kept beside them (the ``tables`` member).
"""

from __future__ import annotations

import os
import threading
from typing import Literal

from cmapdask.errors import InputError, StoreError
from cmapdask.io.atomic import check_destination, url_to_fs
from cmapdask.io.pending import deferrable
from cmapdask.io.store.checksum import _sha256, _table_prov
from cmapdask.io.store.layout import store_chunk_rows
from cmapdask.io.store.read import open_store
from cmapdask.io.store.write import _write_dataset

__all__ = ["convert"]


@deferrable("signature store converted from a GCTx/GCT file", "dest")
def convert(
    src,
    dest,
    sig_info=None,
    gene_info=None,
    compound_info=None,
    *,
    cell_info=None,
    inst_info=None,
    genetic_info=None,
    storage_options: dict | None = None,
    src_storage_options: dict | None = None,
    extra_ids: Literal["error", "ignore"] = "error",
    chunk_rows: int | None = None,
    overwrite: bool = False,
    checksum: bool = True,
    virtual: bool = False,
    progress: bool = False,
    compute: bool = True,
) -> str:
    """Convert a GCTx (or GCT) file into a new signature store, with metadata joined.

    Parameters
    ----------
    src
        ``.gctx`` (HDF5, sniffed) or ``.gct`` text file, local or fsspec URL.
    dest
        Store URL: local path, ``memory://...``, ``s3://...``. Absent or an empty folder;
        with ``overwrite`` a store cmapdask wrote is replaced (never another folder or a
        file; see :mod:`cmapdask.io.atomic`).
    sig_info, gene_info, compound_info
        Optional release tables (TSV or Parquet): ``siginfo`` (one row per signature,
        id column ``sig_id``), ``geneinfo`` (``gene_id``), ``compoundinfo`` (``pert_id``,
        joined through the signatures' ``pert_id``; several rows of a compound fold into
        ``|``-separated values). Table fields override same-named fields of the file.
    cell_info, inst_info, genetic_info
        Optional release tables kept beside the others (``cellinfo``, ``instinfo``,
        ``geneticinfo``), not joined. Every table given is kept in the store as Parquet
        (the ``tables`` member) for :mod:`cmapdask.data` and :func:`cmapdask.sql`.
    extra_ids
        ``"error"``: a table row whose id is not in the matrix is an error;
        ``"ignore"``: such rows are skipped (release-wide tables with a subset matrix).
    chunk_rows
        Signatures per ``expr`` chunk (default: about ``cmapdask.store.chunk_mb`` MiB,
        a multiple of the source's chunk rows).
    checksum
        Record the SHA-256 of the source (read once more, sequentially, in a thread of
        the calling process beside the conversion; ``convert`` fails if it cannot).
    virtual
        Write a virtual store (GCTx only): metadata as usual, but no ``expr`` array;
        :func:`open_store` reads the source's own chunks in place (local or ``s3://``) from
        byte references kept in the store (:mod:`cmapdask.io.virtual`). The source must
        stay where it is, unchanged (its size and mtime/ETag are checked on open).
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        ``dest``.

    Notes
    -----
    Runs on the active Dask scheduler: each task reads one block of whole signatures
    from the source (opening the file itself) and writes one compressed chunk, so memory
    per worker is a few chunks (tens of MB) whatever the input size. The client holds
    the metadata (O(n_sig + n_gene)) and one 8 MiB buffer for the checksum. Every chunk
    is compressed once and written once; the metadata are read once. Nothing is visible
    at ``dest`` until the store is complete.

    A virtual store reads only the source's HDF5 metadata and chunk index at conversion
    (nothing of the matrix but the checksum's pass). Copy instead of referencing when the
    store will be read often or remotely: a GCTx read in place is read in the file's own
    chunks and compression (small or gene-split chunks mean many small requests), the
    source must never move or change, and members that need the matrix rearranged (the
    query index, ``cmapdask index``; rechunked or appended stores) read all of it anyway.
    """
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or int(chunk_rows) < 1):
        raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    check_destination(dest, storage_options=storage_options, overwrite=overwrite)
    src_name = os.path.basename(str(src).rstrip("/"))
    fs, p = url_to_fs(src, src_storage_options)
    if not fs.exists(p):
        raise StoreError(f"{src}: no such file")
    size = int(fs.size(p))
    digest: dict = {}
    hasher = None
    stop = threading.Event()
    if checksum:
        # started first, so the one sequential pass over the source overlaps the
        # metadata reads and joins as well as the chunk writes
        hasher = threading.Thread(
            target=_sha256, args=(src, src_storage_options, digest, stop), daemon=True
        )
        hasher.start()
    try:
        dest = (_convert_virtual if virtual else _convert)(
            src,
            dest,
            src_name,
            size,
            digest,
            hasher,
            sig_info,
            gene_info,
            compound_info,
            storage_options=storage_options,
            src_storage_options=src_storage_options,
            extra_ids=extra_ids,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        stop.set()  # a failed conversion does not leave a hash reading on
    given = {
        "siginfo": sig_info,
        "geneinfo": gene_info,
        "compoundinfo": compound_info,
        "cellinfo": cell_info,
        "instinfo": inst_info,
        "geneticinfo": genetic_info,
    }
    if any(v is not None for v in given.values()):
        _keep_tables(dest, given, storage_options)
    return dest


def _keep_tables(dest, given: dict, storage_options) -> None:
    """The release's tables as the store's ``tables`` member (siginfo and geneinfo
    restricted to the store's signatures and genes, in store order)."""
    from cmapdask.data.tables import write_tables
    from cmapdask.io.tables import ID_COLUMNS, read_table

    ds = open_store(dest, storage_options=storage_options)
    tables = {}
    for name, path in given.items():
        if path is None:
            continue
        df = read_table(path)
        kind = {"siginfo": "sig", "geneinfo": "gene"}.get(name)
        if kind:
            col = next(c for c in ID_COLUMNS[kind] if c in df.columns)
            df = df.assign(**{col: df[col].astype(str)}).drop_duplicates(col).set_index(col)
            df = df.reindex(ds[kind].values.astype(str)).rename_axis(f"{kind}_id").reset_index()
        tables[name] = df
    write_tables(dest, tables, storage_options=storage_options)


def _convert_virtual(*args, **kwargs) -> str:
    from cmapdask.io.virtual import convert_virtual

    return convert_virtual(*args, **kwargs)


def _convert(
    src,
    dest,
    src_name,
    size,
    digest,
    hasher,
    sig_info,
    gene_info,
    compound_info,
    *,
    storage_options,
    src_storage_options,
    extra_ids,
    chunk_rows,
    overwrite,
    progress,
) -> str:
    from cmapdask.io.gct import is_gct, read_gct
    from cmapdask.io.gctx import is_gctx, matrix_layout, read_gctx

    if is_gctx(src, src_storage_options):
        (_, n_gene), file_chunks = matrix_layout(src, storage_options=src_storage_options)
        rows = chunk_rows or store_chunk_rows(
            n_gene, file_rows=file_chunks[0] if file_chunks else None
        )
        ds = read_gctx(src, chunks=(rows, n_gene), storage_options=src_storage_options)
        fmt = "gctx"
    elif is_gct(src, src_storage_options):  # by content: GCT text may be named .gctx
        ds = read_gct(src, storage_options=src_storage_options)
        rows = chunk_rows
        fmt = "gct"
    else:
        from cmapdask.errors import GCTxFormatError

        raise GCTxFormatError(
            f"{src}: neither a GCTx (HDF5 with /0/DATA/0/matrix) nor GCT text (#1.2/#1.3)"
        )
    if ds.sizes["sig"] == 0 or ds.sizes["gene"] == 0:
        raise StoreError(
            f"{src}: the matrix is empty ({ds.sizes['gene']} genes x {ds.sizes['sig']} "
            "signatures); nothing to convert"
        )
    ds, tables = _join_tables(ds, src_name, sig_info, gene_info, compound_info, extra_ids)
    source = {"name": src_name, "url": str(src), "format": fmt, "size": size}

    def provenance():
        if hasher is not None:  # the hash runs beside the conversion; wait for it here
            hasher.join()
            if "error" in digest:
                e = digest["error"]
                raise StoreError(
                    f"{src}: cannot read it for its SHA-256: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                )
            source["sha256"] = digest["sha256"]
        return {"source": source, "tables": tables}

    return _write_dataset(
        ds,
        dest,
        storage_options=storage_options,
        rows=rows,
        overwrite=overwrite,
        progress=progress,
        provenance=provenance,
    )


def _join_tables(ds, src_name, sig_info, gene_info, compound_info, extra_ids):
    from cmapdask.io.tables import join_compounds, join_table, read_table

    tables = {}
    sig_fields, gene_fields = {}, {}
    if sig_info is not None:
        t = read_table(sig_info)
        tables["sig_info"] = _table_prov(sig_info)
        sig_fields = join_table(
            ds["sig"].values, t, kind="sig", source=src_name, extra_ids=extra_ids
        )
    if gene_info is not None:
        t = read_table(gene_info)
        tables["gene_info"] = _table_prov(gene_info)
        gene_fields = join_table(
            ds["gene"].values, t, kind="gene", source=src_name, extra_ids=extra_ids
        )
    if compound_info is not None:
        t = read_table(compound_info)
        tables["compound_info"] = _table_prov(compound_info)
        if "pert_id" in sig_fields:
            pert = sig_fields["pert_id"]
        elif "pert_id" in ds.coords:
            pert = ds["pert_id"].values
        else:
            from cmapdask.errors import MetadataError

            raise MetadataError(
                f"{os.path.basename(str(compound_info))}: cannot join compounds: the signatures "
                "have no pert_id field (give --sig-info)"
            )
        for k, v in join_compounds(pert, t).items():
            sig_fields.setdefault(k, v)
    # a field may exist on the other axis already (from the file or the other table)
    taken_sig = set(sig_fields) | {k for k, c in ds.coords.items() if c.dims == ("sig",)}
    gene_fields = {(f"gene_{k}" if k in taken_sig else k): v for k, v in gene_fields.items()}
    taken_gene = {k for k, c in ds.coords.items() if c.dims == ("gene",)}
    sig_fields = {(f"sig_{k}" if k in taken_gene else k): v for k, v in sig_fields.items()}
    ds = ds.assign_coords({k: ("sig", v) for k, v in sig_fields.items()})
    ds = ds.assign_coords({k: ("gene", v) for k, v in gene_fields.items()})
    return ds, tables
