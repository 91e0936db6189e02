"""xarray layer of signature similarity: labels, feature spaces, checks and provenance.

The maths lives in :mod:`.engine` (graph) and :mod:`.kernels` (numpy); this module turns a
signature Dataset (DEVELOPERS.md data model) into their inputs and their output back into a
labelled, lazy Dataset.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cmapdask.errors import InputError, MetadataError
from cmapdask.model.checks import check_signatures, dataset_name
from cmapdask.model.provenance import provenance_record
from cmapdask.model.spaces import feature_genes
from cmapdask.model.types import SimilarityMetric, Space
from cmapdask.similarity.engine import gram_array, topk_arrays

__all__ = ["similarity", "similarity_matrix", "feature_genes"]

Metric = SimilarityMetric  # the option type, defined once in cmapdask.model.types
_DEFAULT_BLOCK = 4096


def _expr(ds: xr.Dataset, genes: np.ndarray, block_size: int | None) -> da.Array:
    x = ds["expr"].data
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=(block_size or _DEFAULT_BLOCK, -1))
    if genes.size != x.shape[1] or np.any(genes != np.arange(x.shape[1])):
        x = x[:, genes]
    if block_size is not None:
        x = x.rechunk({0: block_size})
    return x.rechunk({1: -1}).astype(np.float32)


def _ids(ds: xr.Dataset) -> np.ndarray:
    return np.array([str(s) for s in ds.indexes["sig"]], dtype=object)


_STR = np.dtypes.StringDType()


def _lookup(idx: np.ndarray, ids: np.ndarray) -> np.ndarray:
    # ids ends with "": index -1 (no neighbour) picks it
    return ids[idx]


def _check_metric(metric: str) -> None:
    if metric not in ("pearson", "spearman", "cosine"):
        raise InputError(f"unknown metric {metric!r}; use 'pearson', 'spearman' or 'cosine'")


def _inputs(ds, ref, space, block_size):
    check_signatures(ds)
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    genes = feature_genes(ds, space)
    x = _expr(ds, genes, block_size)
    if ref is None:
        return genes, x, None
    check_signatures(ref)
    want = ds.indexes["gene"][genes]
    pos = ref.indexes["gene"].get_indexer(want)
    if (pos < 0).any():
        missing = want[pos < 0]
        raise MetadataError(
            f"{dataset_name(ref)}: reference lacks {len(missing)} gene(s) of the query space,"
            f" e.g. {str(missing[0])!r}"
        )
    return genes, x, _expr(ref, pos, block_size)


def _provenance(ds, **params) -> dict:
    src = ds.attrs.get("cmapdask", {})
    prov = provenance_record("similarity", **params)
    if isinstance(src, dict):
        for key in ("source", "store_version"):
            if key in src:
                prov["input_" + key] = src[key]
    return prov


def similarity(
    ds: xr.Dataset,
    ref: xr.Dataset | None = None,
    *,
    metric: Metric = "pearson",
    k: int = 100,
    space: Space = "landmark",
    block_size: int | None = None,
    split_every: int = 8,
) -> xr.Dataset:
    """Exact top-k most similar and most opposite signatures of every signature (lazy).

    Parameters
    ----------
    ds
        Signatures (``expr`` with dims ``("sig", "gene")``), in memory or dask-backed.
    ref
        ``None``: self-similarity of ``ds`` (a signature is never its own neighbour).
        A Dataset: queries-vs-reference, the neighbours of each signature of ``ds`` among
        ``ref`` (for a new slice against the rest, pass the two slices). ``ref`` must hold
        every gene of the chosen space of ``ds`` (matched by id).
    metric
        ``"pearson"``: correlation of the scores. ``"spearman"``: correlation of the ranks
        within each signature (ties share their average rank). ``"cosine"``: cosine of the
        raw scores (no centring).
    k
        Neighbours kept per tail; at most the number of candidate signatures (``n - 1`` in
        self-similarity, the size of ``ref`` otherwise), else :class:`InputError`.
    space
        Genes compared, from the gene coordinate ``feature_space``: ``"landmark"`` (978
        measured genes), ``"bing"`` (landmark and best inferred, 10,174), ``"all"``.
    block_size
        Signatures per block; ``None`` keeps the dask chunks of ``ds["expr"]`` (aligned with
        storage) or uses 4096 for in-memory data.
    split_every
        Fan-in of the per-row merge tree.

    Returns
    -------
    xarray.Dataset
        Dims ``("sig", "rank")``; ``top_score``/``top_index``/``top_id`` (most similar
        first, ties by smaller index) and ``bottom_*`` (most opposite first), score NaN,
        index -1 and id ``""`` where no neighbour exists; ``valid`` (dim ``sig``) is False
        for signatures with a non-finite value or no spread in the space: they have no
        neighbours and are nobody's neighbour. Query mode adds ``ref_valid`` (dim
        ``sig_ref``). Provenance in ``attrs["cmapdask"]``.

    Notes
    -----
    Reads each signature block once per block pair it takes part in (``ds`` chunks of
    signatures x genes-of-the-space). Memory per task: two standardised blocks
    (``2 b G`` float32), one ``b x b`` float32 product and its top-k (``b = block_size``);
    never an N x N matrix. Work is ``N^2 G`` multiply-adds for self-similarity (the upper
    triangle of block pairs), ``2 N M G`` for queries; scales linearly with workers.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"expr": (("sig", "gene"), np.eye(3, 4, dtype="float32"))},
    ...                 coords={"sig": ["a", "b", "c"], "gene": ["g1", "g2", "g3", "g4"]})
    >>> res = similarity(ds, metric="cosine", k=1, space="all")
    >>> res["top_score"].values.ravel().tolist()
    [0.0, 0.0, 0.0]
    """
    _check_metric(metric)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    genes, x, xr_ = _inputs(ds, ref, space, block_size)
    n_cand = x.shape[0] - 1 if ref is None else xr_.shape[0]
    if k > n_cand:
        raise InputError(
            f"{dataset_name(ds)}: k={k} is larger than the {n_cand} candidate neighbours"
            f" ({'signatures other than itself' if ref is None else 'reference signatures'})"
        )
    res = topk_arrays(x, xr_, metric=metric, k=int(k), split_every=split_every)
    ids_src = _ids(ds if ref is None else ref)
    # variable-width strings keep the dtype known without computing (Zarr writes them
    # lazily) and "" marks a missing neighbour (xarray would turn None into NaN)
    ids = da.from_array(np.array([*ids_src, ""], dtype=_STR), chunks=-1)

    def idcol(index):
        return da.blockwise(_lookup, "ij", index, "ij", ids, "k", dtype=_STR, concatenate=True)

    dims = ("sig", "rank")
    out = xr.Dataset(
        {
            "top_score": (dims, res.top_score),
            "top_index": (dims, res.top_index),
            "top_id": (dims, idcol(res.top_index)),
            "bottom_score": (dims, res.bottom_score),
            "bottom_index": (dims, res.bottom_index),
            "bottom_id": (dims, idcol(res.bottom_index)),
            "valid": (("sig",), res.valid),
        },
        coords={"sig": _ids(ds), "rank": np.arange(1, k + 1)},
    )
    if ref is not None:
        out["ref_valid"] = xr.DataArray(
            res.ref_valid, dims=("sig_ref",), coords={"sig_ref": ids_src}
        )
    out.attrs["cmapdask"] = _provenance(
        ds,
        metric=metric,
        k=int(k),
        space=space,
        n_genes=int(genes.size),
        mode=res.plan.mode,
        block_rows=list(res.plan.row_chunks)[:1],
        n_block_pairs=len(res.plan.pairs),
        split_every=split_every,
    )
    return out


def similarity_matrix(
    ds: xr.Dataset,
    ref: xr.Dataset | None = None,
    *,
    metric: Metric = "pearson",
    space: Space = "landmark",
    block_size: int | None = None,
) -> xr.DataArray:
    """Full similarity matrix, lazy and chunked, dims ``("sig", "sig_ref")``.

    Parameters are as for :func:`similarity`; invalid signatures (non-finite values, no
    spread) give NaN rows and columns. The diagonal of a self-similarity is the signature
    with itself (1 up to rounding).

    Notes
    -----
    Meant for sets up to tens of thousands (the matrix is ``4 N M`` bytes). Lazy: each
    output chunk is one float32 product of two standardised signature blocks, so writing
    it with ``to_zarr`` streams block by block and holds ``2 b G + b^2`` floats per task.
    """
    _check_metric(metric)
    genes, x, xr_ = _inputs(ds, ref, space, block_size)
    m = gram_array(x, xr_, metric=metric)
    ref_ds = ds if ref is None else ref
    out = xr.DataArray(
        m,
        dims=("sig", "sig_ref"),
        coords={"sig": _ids(ds), "sig_ref": _ids(ref_ds)},
        name="similarity",
    )
    out.attrs["cmapdask"] = _provenance(
        ds,
        metric=metric,
        space=space,
        n_genes=int(genes.size),
        mode="self" if ref is None else "query",
        full=True,
    )
    return out


def count_invalid(result: xr.Dataset) -> tuple[int, list[str]]:
    """Computed count and ids of the signatures a similarity result could not score."""
    (valid,) = dask.compute(result["valid"].data)
    bad = np.asarray(result["sig"].values)[~np.asarray(valid, bool)]
    return int(bad.size), [str(b) for b in bad]
