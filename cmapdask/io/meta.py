"""Metadata columns as every reader and writer sees them: decoding, -666, numeric inference.

CMap files carry metadata as text (GCT, siginfo tables) or as fixed-width bytes (GCTx).
Whatever the source, a field ends up as one of

- int64 (a numeric field with no missing value and only whole numbers),
- float64 (other numeric fields; missing is NaN),
- an object array of ``str`` with ``None`` for missing,

so that numbers stay numbers and ``-666`` (CMap's missing value) is never mistaken for
data. Writers turn missing back into ``-666``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmapdask.model.missing import MISSING
from cmapdask.model.missing import MISSING_TEXT as _MISSING_TEXT

__all__ = [
    "MISSING",
    "TEXT_NA",
    "decode_bytes",
    "normalise_column",
    "encode_for_text",
    "merge_coords",
]

# What text files (GCT) mean by "no value", as cmapPy reads them: pandas' default NA
# strings plus cmapPy's own list (parse_gct's nan_values). GCTx metadata and release
# tables use only -666 and empty, as cmapPy's GCTx reader does.
TEXT_NA = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#N/A!",
        "#NA",
        "#VALUE!",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "na",
        "nan",
        "null",
    }
)


def decode_bytes(values: np.ndarray, *, what: str | None = None) -> np.ndarray:
    """Fixed-width bytes -> object array of stripped ``str``.

    The one rule for text: UTF-8 first; any value that is not valid UTF-8 falls back to
    latin-1 (real files carry bytes such as µ written by older tools), with a
    :class:`~cmapdask.errors.TextWarning` naming ``what`` (the file and field).
    """
    values = np.asarray(values)
    if values.dtype.kind == "S":
        try:  # fast path: the whole column is valid UTF-8
            text = np.char.decode(values, "utf-8")
            return np.char.strip(text, " \x00").astype(object)
        except UnicodeDecodeError:
            pass
    out = np.empty(len(values), dtype=object)
    latin = []
    for i, v in enumerate(values.tolist()):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                latin.append(v)
                v = v.decode("latin-1")
        out[i] = str(v).strip(" \x00")
    if latin and what is not None:
        import warnings

        from cmapdask.errors import TextWarning

        warnings.warn(
            f"{what}: {len(latin)} value(s) are not UTF-8, e.g. {latin[0].rstrip(b' ')!r}; "
            "decoded as latin-1",
            TextWarning,
            stacklevel=2,
        )
    return out


def normalise_column(values, *, missing=frozenset(), what: str | None = None) -> np.ndarray:
    """One metadata field -> int64, float64 or object (str / None), with -666 as missing.

    ``missing``: further text meaning "no value" (GCT text passes :data:`TEXT_NA`).
    Text columns that are entirely numeric (missing aside) become numbers, as cmapPy and
    the release tables do (whole numbers become int64 when nothing is missing); typed
    numeric columns keep their kind. Ids are never passed through here. ``what`` names
    the field in decode_bytes' warning.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "SV":
        arr = decode_bytes(arr, what=what)
    if arr.dtype.kind in "iu":
        missing = arr == MISSING
        if missing.any():
            out = arr.astype(np.float64)
            out[missing] = np.nan
            return out
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float64)
        out[out == MISSING] = np.nan
        return out
    # text (object or unicode)
    obj = np.empty(len(arr), dtype=object)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                v = v.decode("latin-1")
        if v is None or (isinstance(v, float) and np.isnan(v)):
            obj[i] = None
        else:
            v = str(v).strip()
            obj[i] = None if v in _MISSING_TEXT or v in missing else v
    present = np.fromiter((v is not None for v in obj), dtype=bool, count=len(obj))
    if not present.any():
        return obj
    numbers = pd.to_numeric(pd.Series(obj[present], dtype=object), errors="coerce")
    if numbers.notna().all() and not _looks_like_text(obj[present]):
        out = np.full(len(obj), np.nan)
        out[present] = numbers.to_numpy(dtype=np.float64)
        out[out == MISSING] = np.nan
        return _maybe_int(out)
    return obj


def _looks_like_text(values: np.ndarray) -> bool:
    # "inf"/"nan" parse as numbers but are words in metadata (e.g. a cell line called NaN
    # is unlikely, but pert_iname "INF" is not): keep such columns as text.
    words = {"inf", "-inf", "+inf", "infinity", "-infinity", "nan"}
    return bool(pd.Series(values, dtype=object).str.lower().isin(words).any())


def _maybe_int(out: np.ndarray) -> np.ndarray:
    if not np.isnan(out).any() and np.all(np.isfinite(out)) and np.all(out == np.round(out)):
        if out.size == 0 or np.abs(out).max() < 2**53:
            return out.astype(np.int64)
    return out


def encode_for_text(values: np.ndarray) -> np.ndarray:
    """Metadata column -> object array of ``str`` for text files, missing as ``-666``."""
    arr = np.asarray(values)
    out = np.empty(len(arr), dtype=object)
    if arr.dtype.kind == "f":
        for i, v in enumerate(arr.tolist()):
            if np.isnan(v):
                out[i] = "-666"
            elif np.isfinite(v) and v == int(v):
                out[i] = str(int(v))
            else:
                out[i] = repr(v)
        return out
    for i, v in enumerate(arr.tolist()):
        out[i] = "-666" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
    return out


def merge_coords(sig_fields: dict, gene_fields: dict) -> tuple[dict, dict]:
    """Apply the naming rule: a gene field whose name is also a sig field, or a reserved
    name, becomes ``gene_<field>``; a sig field with a reserved name becomes ``sig_<field>``."""
    reserved = {"sig", "gene", "expr"}
    sig_out = {(f"sig_{k}" if k in reserved else k): v for k, v in sig_fields.items()}
    gene_out = {}
    for k, v in gene_fields.items():
        name = f"gene_{k}" if (k in sig_out or k in reserved) else k
        gene_out[name] = v
    return sig_out, gene_out
