"""What ``cmapdask info`` says about a store: shape, fields, chunks, codecs, size, members."""

from __future__ import annotations

from cmapdask.io.atomic import url_to_fs
from cmapdask.io.store.access import _open_group, quiet_zarr
from cmapdask.io.store.read import list_members, open_store

__all__ = ["store_info"]


def store_info(url, *, storage_options: dict | None = None) -> dict:
    """Shape, fields, chunking, compression and provenance of a store (for ``cmapdask info``)."""
    ds = open_store(url, storage_options=storage_options)
    with quiet_zarr():
        g = _open_group(url, "r", storage_options)
        if "expr" in g:
            arr = g["expr"]
            codecs = [type(c).__name__ for c in arr.metadata.codecs]
            if getattr(arr, "shards", None):  # the inner chunks' codecs
                codecs += [type(c).__name__ for c in arr.metadata.codecs[0].codecs]
        else:  # a virtual store: expr is the source's matrix, read in place
            arr = ds["expr"].data
            v = ds.attrs["cmapdask"]["virtual"]
            codecs = [f"virtual:{v['layout']}:{v['dtype']}"] + [
                {1: "deflate", 2: "shuffle", 3: "fletcher32"}[c] for c in v["filters"]
            ]
        nbytes_stored = _stored_bytes(url, storage_options)
    return {
        "kind": "store",
        "url": str(url),
        "shape": {"sig": ds.sizes["sig"], "gene": ds.sizes["gene"]},
        "chunks": [int(c[0]) if isinstance(c, tuple) else int(c) for c in arr.chunks],
        "shards": list(getattr(arr, "shards", None) or []) or None,
        "dtype": str(arr.dtype),
        "codecs": codecs,
        "stored_bytes": nbytes_stored,
        "sig_fields": sorted(k for k, c in ds.coords.items() if c.dims == ("sig",) and k != "sig"),
        "gene_fields": sorted(
            k for k, c in ds.coords.items() if c.dims == ("gene",) and k != "gene"
        ),
        "members": list_members(url, storage_options=storage_options),
        "provenance": ds.attrs["cmapdask"],
    }


def _stored_bytes(url, storage_options) -> int | None:
    try:
        fs, p = url_to_fs(url, storage_options)
        return int(fs.du(p))
    except Exception:  # size is informative only
        return None
