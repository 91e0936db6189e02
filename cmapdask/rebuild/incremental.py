"""Top-k similarity of a grown collection: new x all folded into the existing lists.

With ``n_old`` signatures already ranked and ``n_new`` appended (positions after them):

- new rows: their neighbours among the old rows (queries-vs-reference) merged with their
  neighbours among the new rows (self-similarity of the new slice, a signature never
  being its own neighbour);
- old rows: their existing top-k merged with their neighbours among the new rows, so an
  old signature gains new neighbours exactly where they beat its current ones.

Work is ``2 n_new N G`` multiply-adds instead of ``N^2 G`` for a full rebuild. Every row
block of the result is saved as its own object under a work folder as soon as it is done
(a local rename or one PUT, both atomic); a rerun skips the blocks that exist, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import io

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cmapdask.io.atomic import join, publish_file, url_to_fs
from cmapdask.rebuild.faults import checkpoint
from cmapdask.similarity import similarity
from cmapdask.similarity.kernels import merge_topk

__all__ = ["topk_full", "topk_incremental", "block_tasks", "load_blocks", "FIELDS"]

FIELDS = ("top_score", "top_index", "bottom_score", "bottom_index", "valid")
_DTYPES = (np.float32, np.int64, np.float32, np.int64, bool)


def _parts(res: xr.Dataset) -> list[da.Array]:
    return [res[f].data for f in FIELDS]


def _shift(part, off):
    ts, ti, bs, bi = part
    return ts, np.where(ti >= 0, ti + off, -1), bs, np.where(bi >= 0, bi + off, -1)


def _combine_new(k, off, a, b):
    """New rows: neighbours among old (``a``) and among new (``b``, indices + off)."""
    parts = [tuple(a[:4])]
    if b is not None:
        parts.append(_shift(b[:4], off))
    return (*merge_topk(parts, k), a[4])


def _combine_old(k, off, prev, c):
    """Old rows: the previous top-k (``prev``) and the neighbours among the new rows."""
    return (*merge_topk([tuple(prev[:4]), _shift(c[:4], off)], k), prev[4])


def _identity(k, off, a):
    return tuple(a)


def _save(url, storage_options, combine, k, off, *groups):
    fs, path = url_to_fs(url, storage_options)
    if fs.exists(path):  # a rerun of a task whose block was saved already
        return url
    arrays = combine(k, off, *groups)
    buf = io.BytesIO()
    np.savez(buf, **dict(zip(FIELDS, arrays)))
    with publish_file(url, storage_options=storage_options) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
    checkpoint("block")
    return url


def _group_blocks(group, i):
    return None if group is None else [a.blocks[i] for a in group]


def block_tasks(workdir, prefix, combine, k, off, *groups, storage_options=None):
    """Delayed saves of the row blocks of ``combine(*groups)`` not yet in ``workdir``.

    ``groups`` are lists of the :data:`FIELDS` arrays with the same row chunks (or None).
    Returns ``(tasks, row_chunks)``; a block already saved gets no task, and dask culls
    the similarity work it alone needed.
    """
    chunks = next(g for g in groups if g is not None)[0].chunks[0]
    fs, path = url_to_fs(workdir, storage_options)
    try:
        done = {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        done = set()
    tasks = []
    for i in range(len(chunks)):
        name = f"{prefix}-{i:06d}.npz"
        if name in done:
            continue
        parts = [_group_blocks(g, i) for g in groups]
        tasks.append(dask.delayed(_save, pure=False)(
            join(workdir, name), storage_options, combine, k, off, *parts,
            dask_key_name=f"rebuild-save-{prefix}-{i}-{dask.base.tokenize(workdir)}"))
    return tasks, chunks


def _load(url, storage_options, field):
    fs, path = url_to_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))[field]


def load_blocks(workdir, prefix, chunks, k, storage_options=None) -> list[da.Array]:
    """The saved row blocks as lazy arrays (each block file read inside its own task)."""
    out = []
    for field, dtype in zip(FIELDS, _DTYPES):
        blocks = []
        for i, n in enumerate(chunks):
            url = join(workdir, f"{prefix}-{i:06d}.npz")
            shape = (n,) if field == "valid" else (n, k)
            blocks.append(da.from_delayed(dask.delayed(_load)(url, storage_options, field),
                                          shape, dtype=dtype))
        out.append(da.concatenate(blocks) if blocks else da.zeros((0, k), dtype))
    return out


def topk_full(ds: xr.Dataset, workdir, *, metric, k, space, block_size, storage_options=None):
    """Tasks and block layout of the self-similarity top-k of every signature of ``ds``."""
    res = similarity(ds, metric=metric, k=k, space=space, block_size=block_size)
    tasks, chunks = block_tasks(workdir, "all", _identity, k, 0, _parts(res),
                                storage_options=storage_options)
    return tasks, [("all", chunks)]


def topk_incremental(ds: xr.Dataset, prev: xr.Dataset, n_old: int, workdir, *, metric, k,
                     space, block_size, storage_options=None):
    """Tasks and block layout of the top-k of ``ds`` given ``prev`` (top-k of its first
    ``n_old`` rows, same metric, space and k)."""
    n = ds.sizes["sig"]
    old, new = ds.isel(sig=slice(0, n_old)), ds.isel(sig=slice(n_old, n))
    n_new = n - n_old
    opts = {"metric": metric, "space": space, "block_size": block_size}
    a = similarity(new, old, k=min(k, n_old), **opts)
    b = similarity(new, k=min(k, n_new - 1), **opts) if n_new > 1 else None
    c = similarity(old, new, k=min(k, n_new), **opts)
    prev_parts = [prev[f].data.rechunk({0: c["top_score"].data.chunks[0]}) for f in FIELDS]
    t_new, ch_new = block_tasks(workdir, "new", _combine_new, k, n_old, _parts(a),
                                None if b is None else _parts(b), storage_options=storage_options)
    t_old, ch_old = block_tasks(workdir, "old", _combine_old, k, n_old, prev_parts, _parts(c),
                                storage_options=storage_options)
    return [*t_old, *t_new], [("old", ch_old), ("new", ch_new)]


def assemble(ds: xr.Dataset, workdir, layout, k, storage_options=None) -> xr.Dataset:
    """The top-k Dataset (as :func:`cmapdask.similarity.similarity` returns) from saved blocks."""
    pieces = [load_blocks(workdir, prefix, chunks, k, storage_options) for prefix, chunks in layout]
    arrays = [da.concatenate([p[q] for p in pieces]) for q in range(len(FIELDS))]
    ids = np.array([*map(str, ds.indexes["sig"]), ""], dtype=np.dtypes.StringDType())
    ids_d = da.from_array(ids, chunks=-1)

    def idcol(index):
        return da.blockwise(lambda i, s: s[i], "ij", index, "ij", ids_d, "k",
                            dtype=ids.dtype, concatenate=True)

    dims = ("sig", "rank")
    # Zarr needs uniform chunks: old and new blocks meet at an arbitrary row
    rows = max((max(c) for _, c in layout if len(c)), default=1)
    return xr.Dataset(
        {"top_score": (dims, arrays[0]), "top_index": (dims, arrays[1]),
         "top_id": (dims, idcol(arrays[1])), "bottom_score": (dims, arrays[2]),
         "bottom_index": (dims, arrays[3]), "bottom_id": (dims, idcol(arrays[3])),
         "valid": (("sig",), arrays[4])},
        coords={"sig": np.array([str(s) for s in ds.indexes["sig"]], dtype=object),
                "rank": np.arange(1, k + 1)},
    ).chunk({"sig": rows})
