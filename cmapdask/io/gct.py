"""GCT text files, v1.3 and v1.2 (ALGORITHMS.md §10): read and atomic write.

GCT text lists genes as rows and signatures as columns; ``expr`` is signatures x genes
(DEVELOPERS.md), so reading transposes. Metadata goes through ``cmapdask.io.meta`` exactly
as the GCTx reader's does, so a ``.gct`` and a ``.gctx`` of the same content give equal
datasets.

v1.3::

    #1.3
    nrow  ncol  n_rowmeta  n_colmeta
    id    <row fields...>       <column ids...>
    <col field>  -666 ...       <values...>        (n_colmeta lines)
    <row id>     <row values>   <data...>          (nrow lines)

v1.2 is v1.3 with one row field (``Description``) and no column metadata::

    #1.2
    nrow  ncol
    Name  Description  <column ids...>
    <row id>  <description>  <data...>

The data block is parsed by pandas' C reader straight from the file's bytes; field counts
are checked per line with numpy first, so a ragged line is reported by its line number.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from typing import Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import xarray as xr

from cmapdask.errors import GCTFormatError, InputError
from cmapdask.io.atomic import publish_file, url_to_fs
from cmapdask.io.meta import TEXT_NA, encode_for_text, merge_coords, normalise_column
from cmapdask.io.pending import deferrable

__all__ = ["read_gct", "write_gct", "is_gct"]

# Text that means "no value" (missing data is written as NaN), as cmapPy reads GCT: in
# the data and in both metadata blocks. Data cells are also read as cmapPy's float32()
# reads them, so any case of nan/inf (``NAN``, ``Inf``) is a number too.
_DATA_NA = sorted(TEXT_NA)
_NAN_WORDS = {"nan", "+nan", "-nan"}
_RESERVED = ("sig", "gene", "expr")
# Bytes of formatted output per write block: bounds memory when writing large matrices.
_WRITE_BLOCK_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- shared text I/O


def read_bytes(path, *, storage_options: dict | None, error: type[Exception]) -> bytes:
    """The whole file (local path or fsspec URL, ``.gz`` and friends decompressed)."""
    try:
        fs, p = url_to_fs(os.fspath(path), storage_options)  # cmapdask's bounded waits
        with fs.open(p, "rb", compression="infer") as f:
            return f.read()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except OSError as e:  # corrupt gzip, permission denied, ...
        raise error(f"{path}: cannot read: {e}") from None


def is_gct(path, storage_options: dict | None = None) -> bool:
    """True if ``path`` holds GCT text (first line ``#1.2`` or ``#1.3``), whatever its name.

    Sniffs the first bytes (decompressing ``.gz`` and friends by name), so a GCT text file
    named ``.gctx`` is recognised; anything unreadable is "not GCT"."""
    try:
        fs, p = url_to_fs(os.fspath(path), storage_options)  # cmapdask's bounded waits
        with fs.open(p, "rb", compression="infer") as f:
            head = f.read(16)
    except Exception:  # any failure to sniff means "not ours"
        return False
    head = head.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    return head.startswith((b"#1.3", b"#1.2")) and head[4:5] in (b"", b"\n", b"\r", b"\t", b" ")


def text_encoding(raw: bytes) -> str:
    """UTF-8 unless the bytes are not valid UTF-8; then latin-1 (older tools wrote µ so)."""
    if raw.isascii():
        return "utf-8"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


# ----------------------------------------------------------------------------- reading


class _Lines:
    """Walks the header lines of a byte buffer, remembering 1-based line numbers."""

    def __init__(self, raw: bytes, encoding: str, path: str):
        self.raw, self.encoding, self.path = raw, encoding, path
        self.pos, self.lineno = 0, 0

    def next(self, what: str) -> list[str]:
        if self.pos >= len(self.raw):
            raise GCTFormatError(
                f"{self.path}: file ends before the {what} (line {self.lineno + 1})"
            )
        end = self.raw.find(b"\n", self.pos)
        end = len(self.raw) if end < 0 else end
        line = self.raw[self.pos : end].decode(self.encoding).rstrip("\r")
        self.pos, self.lineno = end + 1, self.lineno + 1
        return line.split("\t")


def _counts(fields: list[str], n: int, path: str, line: int) -> list[int]:
    values = [f.strip() for f in fields]
    while values and values[-1] == "":  # spreadsheets pad short lines with tabs
        values.pop()
    try:
        counts = [int(v) for v in values]
    except ValueError:
        counts = []
    if len(counts) != n or min(counts, default=0) < 0:
        want = "nrow ncol n_rowmeta n_colmeta" if n == 4 else "nrow ncol"
        raise GCTFormatError(
            f"{path}: line {line} should hold the {n} counts '{want}', found {values!r}"
        )
    return counts


def _check_unique(names: list[str] | np.ndarray, path: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise GCTFormatError(f"{path}: duplicate {what} {str(name)!r}")
        seen.add(name)


def _data_line_fields(raw: bytes, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(line index of each non-blank line from ``start``, its number of tab-separated fields)."""
    buf = np.frombuffer(raw, dtype=np.uint8, offset=start)
    if len(buf) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.flatnonzero(buf == 10)
    if buf[-1] != 10:
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lengths = ends - starts
    blank = (lengths == 0) | ((lengths == 1) & (buf[starts] == 13))
    tabs = np.flatnonzero(buf == 9)
    per_line = np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts)
    keep = ~blank
    return np.flatnonzero(keep), per_line[keep] + 1


def _text_to_float(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A data column pandas left as text -> (float64 values, mask of cells not numbers).

    Accepts what cmapPy accepts: the missing spellings, and anything Python's float()
    reads (``NAN``, ``Inf``, ``-infinity``, surrounding spaces)."""
    text = pd.Series(col.to_numpy(dtype=object), dtype=object)
    present = text.notna()
    stripped = text.where(~present, text.astype(str).str.strip())
    na = ~present | stripped.isin(TEXT_NA) | stripped.str.lower().isin(_NAN_WORDS)
    num = pd.to_numeric(stripped.where(~na), errors="coerce")
    bad = num.isna() & ~na
    return num.to_numpy(dtype=np.float64), bad.to_numpy(dtype=bool)


def _first_bad_cell(raw, start, encoding, n_lead, names, path, header_lines) -> str:
    """Locate the first non-numeric data cell (only called once parsing has failed)."""
    df = pd.read_csv(
        io.BytesIO(raw[start:]),
        sep="\t",
        header=None,
        dtype=str,
        encoding=encoding,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
    )
    lines, _ = _data_line_fields(raw, start)
    for j in range(n_lead, df.shape[1]):
        col = df.iloc[:, j]
        _, bad = _text_to_float(col)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return (
                f"{path}: line {header_lines + int(lines[i]) + 1}: non-numeric value "
                f"'{col.iloc[i]}' in column '{names[j - n_lead]}'"
            )
    return f"{path}: the data block holds a value that is not a number"


def read_gct(
    path,
    *,
    chunks: int | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Read a GCT text file (v1.3 or v1.2) as an ``xr.Dataset``.

    Parameters
    ----------
    path
        Local path or fsspec URL; ``.gz``/``.bz2`` compression is inferred from the name.
    chunks
        ``None`` (default): ``expr`` is an in-memory numpy array (the text had to be parsed
        whole anyway). An int: ``expr`` is a dask array with that many signatures per chunk
        and all genes in each chunk, the layout of a signature store.
    storage_options
        Passed to fsspec for remote paths.

    Returns
    -------
    xr.Dataset
        ``expr`` float32 ``("sig", "gene")`` (the file's columns are signatures, its rows
        genes); ``sig`` and ``gene`` ids as ``str`` coordinates; column metadata as
        coordinates along ``sig``, row metadata along ``gene`` (a row field whose name is
        also a column field becomes ``gene_<field>``). Missing, in both metadata blocks
        and the data, is every spelling cmapPy reads as missing
        (:data:`cmapdask.io.meta.TEXT_NA`: empty, ``NaN``, ``NA``, ``N/A``, ``#N/A``,
        ``NULL``, ``None``, ...) and, in metadata, ``-666``; a field whose values are all
        numbers becomes int64 (or float64 with NaN for missing), others stay ``str`` with
        missing as ``None`` (xarray may show it as NaN). Data cells are read as cmapPy
        reads them, so ``NAN``, ``Inf`` and ``-infinity`` are numbers too. In v1.2 files the
        description column is the gene field named by the header (``Description``).

    Raises
    ------
    GCTFormatError
        Unknown version line, bad counts line, header or metadata lines of the wrong
        length, ragged or missing data lines, non-numeric data, duplicate ids or fields.

    Notes
    -----
    Reads the whole file and holds its bytes plus the parsed matrix (4 bytes per value)
    in memory, so memory is about twice the file size; time is linear in the file size
    (pandas' C parser). Bytes that are not valid UTF-8 are decoded as latin-1.
    GCT cannot be read in part: use GCTx or a store for large data.

    Examples
    --------
    >>> ds = read_gct("tests/data/cmappy/test_parse_gct_int_ids.gct")
    >>> ds.expr.dims, ds.expr.shape
    (('sig', 'gene'), (2, 3))
    >>> ds.sig.values.tolist(), ds.chd1.values.tolist()
    (['1', '2'], ['a', 'b'])
    """
    path_s = str(path)
    raw = read_bytes(path, storage_options=storage_options, error=GCTFormatError)
    encoding = text_encoding(raw)
    lines = _Lines(raw, encoding, path_s)

    first = [f.strip() for f in lines.next("version line")]
    version = first[0] if first else ""
    if version not in ("#1.3", "#1.2") or any(first[1:]):
        raise GCTFormatError(
            f"{path_s}: line 1 should be '#1.3' or '#1.2', found {lines.raw[:40]!r}"
        )
    if version == "#1.3":
        nrow, ncol, n_rowmeta, n_colmeta = _counts(lines.next("counts line"), 4, path_s, 2)
    else:
        (nrow, ncol), n_rowmeta, n_colmeta = _counts(lines.next("counts line"), 2, path_s, 2), 1, 0

    header = lines.next("header line")
    if len(header) != 1 + n_rowmeta + ncol:
        raise GCTFormatError(
            f"{path_s}: line 3 (header) has {len(header)} fields; the counts line implies "
            f"1 + {n_rowmeta} row fields + {ncol} column ids = {1 + n_rowmeta + ncol}"
        )
    row_fields = [h.strip() for h in header[1 : 1 + n_rowmeta]]
    sig_ids = np.array([h.strip() for h in header[1 + n_rowmeta :]], dtype=object)
    _check_unique(sig_ids, path_s, "column id")
    _check_unique(row_fields, path_s, "row metadata field")

    sig_fields: dict[str, np.ndarray] = {}
    for _ in range(n_colmeta):
        fields = lines.next("column metadata lines")
        if len(fields) != 1 + n_rowmeta + ncol:
            raise GCTFormatError(
                f"{path_s}: line {lines.lineno} (column metadata) has {len(fields)} fields, "
                f"expected {1 + n_rowmeta + ncol}"
            )
        name = fields[0].strip()
        if name in sig_fields:
            raise GCTFormatError(f"{path_s}: duplicate column metadata field {name!r}")
        sig_fields[name] = normalise_column(
            np.array(fields[1 + n_rowmeta :], dtype=object), missing=TEXT_NA
        )

    header_lines, start = lines.lineno, lines.pos
    line_idx, nfields = _data_line_fields(raw, start)
    want = 1 + n_rowmeta + ncol
    if len(nfields) != nrow:
        raise GCTFormatError(
            f"{path_s}: the counts line says {nrow} data lines, the file has {len(nfields)}"
        )
    bad = np.flatnonzero(nfields != want)
    if len(bad):
        i = int(bad[0])
        raise GCTFormatError(
            f"{path_s}: line {header_lines + int(line_idx[i]) + 1} has {int(nfields[i])} "
            f"fields, expected {want} (ragged data line)"
        )

    n_lead = 1 + n_rowmeta
    if nrow:
        # Data columns are left to pandas' float inference (per-column dtypes and NA lists
        # cost more than the parse for wide files); anything not numeric is caught below.
        df = pd.read_csv(
            io.BytesIO(raw[start:]),
            sep="\t",
            header=None,
            encoding=encoding,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_values=_DATA_NA,
            engine="c",
            dtype={j: str for j in range(n_lead)},
        )
        text_cols = [
            j for j, d in enumerate(df.dtypes.tolist()) if j >= n_lead and d.kind not in "fiu"
        ]
        for j in text_cols:  # rare: NAN, Inf, ... spelled in a way pandas leaves as text
            values, bad = _text_to_float(df.iloc[:, j])
            if bad.any():
                raise GCTFormatError(
                    _first_bad_cell(raw, start, encoding, n_lead, sig_ids, path_s, header_lines)
                )
            df[df.columns[j]] = values
        gene_ids = np.array([str(s).strip() for s in df.iloc[:, 0].tolist()], dtype=object)
        gene_fields = {
            name: normalise_column(df.iloc[:, 1 + k].to_numpy(dtype=object), missing=TEXT_NA)
            for k, name in enumerate(row_fields)
        }
        matrix = df.iloc[:, n_lead:].to_numpy(dtype=np.float32)
    else:
        gene_ids = np.zeros(0, dtype=object)
        gene_fields = {name: normalise_column(np.zeros(0, object)) for name in row_fields}
        matrix = np.zeros((0, ncol), np.float32)
    del raw
    _check_unique(gene_ids, path_s, "row id")

    sig_fields, gene_fields = merge_coords(sig_fields, gene_fields)
    expr = np.ascontiguousarray(matrix.T)  # genes x signatures on disk -> sig x gene
    data = expr if chunks is None else da.from_array(expr, chunks=(chunks, -1))
    coords: dict = {"sig": ("sig", sig_ids), "gene": ("gene", gene_ids)}
    coords.update({k: ("sig", v) for k, v in sig_fields.items()})
    coords.update({k: ("gene", v) for k, v in gene_fields.items()})
    ds = xr.Dataset({"expr": (("sig", "gene"), data)}, coords=coords)
    ds.attrs["cmapdask"] = {
        "source": os.path.basename(path_s),
        "source_format": "gct",
        "gct_version": version[1:],
        "encoding": encoding,
    }
    return ds


# ----------------------------------------------------------------------------- writing


def _text_fields(obj: xr.Dataset, dim: str) -> dict[str, np.ndarray]:
    return {
        str(name): np.asarray(c.values)
        for name, c in obj.coords.items()
        if c.dims == (dim,) and name != dim
    }


def _unmerge(sig_fields: dict, gene_fields: dict) -> tuple[dict, dict]:
    """Undo ``merge_coords``' renames so the file carries the original field names."""
    # a coordinate along "sig" cannot be called "gene" or "expr", so these never clash
    sig_out = {
        (k[4:] if k.startswith("sig_") and k[4:] in _RESERVED else k): v
        for k, v in sig_fields.items()
    }
    gene_out = {}
    for k, v in gene_fields.items():
        base = k[5:]
        clash = k.startswith("gene_") and (base in sig_out or base in _RESERVED)
        gene_out[base if clash and base not in gene_fields else k] = v
    return sig_out, gene_out


def _check_text(values, what: str) -> None:
    for v in values:
        if isinstance(v, str) and ("\t" in v or "\n" in v or "\r" in v):
            raise InputError(f"write_gct: {what} {v!r} contains a tab or line break")


def _join(values) -> str:
    return "\t".join(values)


def _format_rows(lead: list[list[str]], values: np.ndarray) -> bytes:
    """Data lines for a block of genes: ids and row metadata, then ``values.T`` (sig x gene).

    Floats are written as the shortest text that reads back to the same float32, by
    Arrow's vectorised formatter; pandas (per-value Python formatting, ~4x slower) is the
    fallback for the rare block whose text holds a double quote, which Arrow refuses
    to write unquoted.
    """
    n_gene = values.shape[1]
    flat = pa.array(np.ascontiguousarray(values).ravel())  # signature-major: one column per sig
    text = pc.if_else(pc.is_nan(flat), "NaN", pc.cast(flat, pa.string()))
    cols = [pa.array(c, type=pa.string()) for c in lead]
    cols += [text.slice(j * n_gene, n_gene) for j in range(values.shape[0])]
    out = io.BytesIO()
    try:
        pa_csv.write_csv(
            pa.Table.from_arrays(cols, names=[str(i) for i in range(len(cols))]),
            out,
            pa_csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"),
        )
        return out.getvalue()
    except pa.ArrowInvalid:
        frame = pd.concat(
            [pd.DataFrame({i: c for i, c in enumerate(lead)}), pd.DataFrame(values.T)], axis=1
        )
        return frame.to_csv(
            sep="\t",
            header=False,
            index=False,
            na_rep="NaN",
            quoting=csv.QUOTE_NONE,
            lineterminator="\n",
        ).encode("utf-8")


@deferrable("GCT file", "path")
def write_gct(
    obj,
    path,
    *,
    version: Literal["1.3", "1.2"] = "1.3",
    storage_options: dict | None = None,
    compute: bool = True,
) -> str:
    """Write a dataset (or an ``expr``-like DataArray) as GCT text, atomically.

    Parameters
    ----------
    obj
        ``xr.Dataset`` with ``expr`` ``("sig", "gene")`` and metadata coordinates, or an
        ``xr.DataArray`` with those dims. Dask-backed inputs are computed here.
    path
        Destination, local path or fsspec URL. Written beside it and moved into place
        (locally) or uploaded in one piece (object stores), so no reader sees half a file.
    version
        ``"1.3"`` (default): ids, all row (gene) and column (signature) metadata.
        ``"1.2"``: ids, one description column (the gene field named ``Description``,
        case-insensitively; ``-666`` if there is none) and the data; every other
        metadata field is dropped with a warning, as v1.2 has no place for it.
    storage_options
        Passed to fsspec for remote paths.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        The destination path.

    Raises
    ------
    InputError
        ``expr`` missing or with other dims, duplicate ids, tabs or line breaks in ids,
        field names or text values (they would corrupt the file).

    Notes
    -----
    Values are written as the shortest text that reads back to the same float32 (so a
    write/read round trip is exact); missing data as ``NaN``, missing metadata as
    ``-666``. A gene field renamed ``gene_<field>`` on reading is written as ``<field>``.
    Text cannot tell a string field of numbers from a numeric field: such a field reads
    back as numbers; a float field of whole numbers with nothing missing reads back as
    int64, and a field with no value at all as text with every value missing.

    Memory: the metadata plus one block of genes (about 64 MB of float32 across all
    signatures) and its text at a time. A dask-backed ``expr`` is computed once per gene
    block; for ``expr`` chunked along signatures each block reads every chunk, so GCT text
    suits matrices up to a few GB: write GCTx or a store for more.
    """
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name="expr")
    if not isinstance(obj, xr.Dataset) or "expr" not in obj or obj["expr"].dims != ("sig", "gene"):
        raise InputError("write_gct: need a Dataset with expr dims ('sig', 'gene')")
    if version not in ("1.3", "1.2"):
        raise InputError(f"write_gct: version must be '1.3' or '1.2', not {version!r}")
    expr = obj["expr"]
    n_sig, n_gene = expr.shape
    sig_ids = [str(s) for s in obj["sig"].values.tolist()]
    gene_ids = [str(g) for g in obj["gene"].values.tolist()]
    for ids, axis in ((sig_ids, "sig"), (gene_ids, "gene")):
        if len(set(ids)) != len(ids):
            raise InputError(f"write_gct: duplicate {axis} ids")
        _check_text(ids, f"{axis} id")

    sig_fields, gene_fields = _unmerge(_text_fields(obj, "sig"), _text_fields(obj, "gene"))
    if version == "1.2":
        desc = next((k for k in gene_fields if k.lower() == "description"), None)
        dropped = [k for k in sig_fields] + [k for k in gene_fields if k != desc]
        if dropped:
            warnings.warn(
                f"write_gct: GCT v1.2 has no place for metadata fields {dropped}; dropped",
                UserWarning,
                stacklevel=2,
            )
        desc_values = gene_fields[desc] if desc else np.full(n_gene, None, dtype=object)
        sig_fields, gene_fields = {}, {"Description": desc_values}
    for fields, axis in ((sig_fields, "sig"), (gene_fields, "gene")):
        _check_text(fields, f"{axis} field name")
    sig_text = {k: encode_for_text(v) for k, v in sig_fields.items()}
    gene_text = {k: encode_for_text(v) for k, v in gene_fields.items()}
    for k, v in {**sig_text, **gene_text}.items():
        _check_text(v, f"value of field {k!r}:")

    n_rowmeta = len(gene_text)
    if version == "1.3":
        head = ["#1.3", _join(map(str, (n_gene, n_sig, n_rowmeta, len(sig_text))))]
        head.append(_join(["id", *gene_text, *sig_ids]))
        filler = ["-666"] * n_rowmeta
        head += [_join([k, *filler, *v.tolist()]) for k, v in sig_text.items()]
    else:
        head = ["#1.2", f"{n_gene}\t{n_sig}", _join(["Name", "Description", *sig_ids])]

    lead = [gene_ids, *(v.tolist() for v in gene_text.values())]
    block = max(1, _WRITE_BLOCK_BYTES // max(1, 4 * n_sig))
    with publish_file(path, storage_options=storage_options) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(head) + "\n").encode("utf-8"))
            for g0 in range(0, n_gene, block):
                values = expr.data[:, g0 : g0 + block]
                if isinstance(values, da.Array):
                    (values,) = dask.compute(values)
                values = np.asarray(values, dtype=np.float32)
                f.write(_format_rows([c[g0 : g0 + block] for c in lead], values))
    return str(path)
