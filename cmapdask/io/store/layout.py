"""What a store holds and how ``expr`` is chunked: the schema version, the chunk policy
(whole signatures, about ``cmapdask.store.chunk_mb`` MiB, a multiple of the source's chunk
rows), the compression of ``expr``, the provenance record and the strings Zarr stores.

Pure: nothing here reads or writes a store.
"""

from __future__ import annotations

import datetime as _dt
import uuid

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from cmapdask import config
from cmapdask._version import __version__
from cmapdask.io.store.shards import inner_rows, inner_target
from cmapdask.model.missing import is_missing as _missing

__all__ = ["SCHEMA_VERSION", "store_chunk_rows"]

SCHEMA_VERSION = 1


_STRING_KINDS = "OUT"


def store_chunk_rows(
    n_gene: int, *, file_rows: int | None = None, chunk_mb: float | None = None
) -> int:
    """Signatures per ``expr`` chunk (a shard): about ``chunk_mb`` MiB of float32 with every
    gene, rounded to a multiple of the source's own chunk rows so no source chunk is read
    twice, else to a multiple of the inner chunk rows."""
    chunk_mb = chunk_mb or float(config.get("store.chunk_mb", 32))
    rows = max(1, int(chunk_mb * 2**20) // max(1, 4 * n_gene))
    if file_rows:
        return max(file_rows, rows // file_rows * file_rows)
    inner = inner_target(n_gene)
    return max(inner, rows // inner * inner)


def _expr_encoding(rows: int, n_gene: int) -> dict:
    """Shards of ``rows`` whole signatures made of inner chunks of a few signatures
    (:mod:`~cmapdask.io.store.shards`), blosc-zstd with byte shuffle."""
    clevel = int(config.get("store.clevel", 3))
    compressors = (BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle"),)
    if not config.get("store.inner_kb", 256):  # 0: plain chunks of whole signatures
        return {"chunks": (rows, n_gene), "compressors": compressors}
    return {
        "chunks": (inner_rows(rows, n_gene), n_gene),
        "shards": (rows, n_gene),
        "compressors": compressors,
    }


def _provenance(**extra) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "package": "cmapdask",
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        # unique per write: what caches of a store's metadata key on (two writes to one
        # URL within a second share "created")
        "write_id": uuid.uuid4().hex,
        **extra,
    }


def _strings_to_str(ds: xr.Dataset) -> xr.Dataset:
    """Object (str/None) coordinates -> plain ``str`` arrays ('' for missing) for Zarr."""
    out = {}
    for name, c in ds.coords.items():
        if c.dtype.kind == "O":
            vals = np.array(
                ["" if _missing(v) else str(v) for v in c.values.tolist()], dtype=object
            )
            out[name] = (c.dims, vals)
    return ds.assign_coords(out) if out else ds
