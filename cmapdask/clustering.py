"""Clustering of signatures and perturbagens.

- :func:`kmeans_signatures`: PCA (exact from a one-pass covariance, or dask-ml's
  randomized/TSQR) then k-means (dask-ml's Lloyd iterations after a weighted
  ``k-means||`` initialisation of our own, or k-means++ on a sample) over signatures.
- :func:`hierarchical_perts`: average/complete/single/Ward linkage (scipy) of a
  perturbagen x perturbagen similarity or connectivity matrix.
- :func:`graph_clusters`: Leiden (igraph/leidenalg) or Louvain (networkx) communities
  of the k-nearest-neighbour graph built from :func:`cmapdask.similarity.similarity`
  results or from a dense perturbagen matrix.
- :func:`cluster_quality`: silhouette on a sample, adjusted Rand index and purity against
  annotations; :func:`write_clusters`: labels as a store member and as a table;
  :func:`with_cluster_coords`: stored labels back as coordinates of a dataset.

Fitting is iterative and runs on the dask scheduler in effect when called (as dask-ml
estimators do); what a function returns beyond the fit (labels of every signature) is
lazy.
"""

from __future__ import annotations

import os
from typing import Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.errors import InputError

__all__ = [
    "kmeans_signatures",
    "covariance_pca",
    "kmeans_parallel_init",
    "hierarchical_perts",
    "graph_clusters",
    "knn_from_matrix",
    "cluster_quality",
    "write_clusters",
    "clusters_table",
    "with_cluster_coords",
]

Init = Literal["k-means||", "sample-k-means++"]
Solver = Literal["auto", "covariance", "randomized", "full"]
Scale = Literal["zscore", "none"]
Linkage = Literal["average", "complete", "single", "ward"]
Community = Literal["auto", "leiden", "louvain"]


def _provenance(**params) -> dict:
    from cmapdask import __version__

    return {"package_version": __version__, **params}


def _check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")


def _name(ds: xr.Dataset) -> str:
    src = ds.attrs.get("cmapdask", {})
    return (
        str(src.get("source", "signature dataset"))
        if isinstance(src, dict)
        else "signature dataset"
    )


def _check_signatures(ds) -> None:
    what = _name(ds) if isinstance(ds, xr.Dataset) else "kmeans_signatures"
    if not isinstance(ds, xr.Dataset) or "expr" not in ds.data_vars:
        raise InputError(f"{what}: expected an xarray Dataset with an 'expr' variable")
    if ds["expr"].dims != ("sig", "gene"):
        raise InputError(f"{what}: 'expr' must have dims ('sig', 'gene'), not {ds['expr'].dims}")
    if ds.sizes["sig"] == 0 or ds.sizes["gene"] == 0:
        raise InputError(f"{what}: no signatures or no genes")
    if "sig" not in ds.indexes or not ds.indexes["sig"].is_unique:
        raise InputError(f"{what}: signature ids ('sig') missing or not unique")


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    # per signature: Euclidean k-means on z-scored rows follows Pearson correlation
    x = x.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return (x / np.where(sd > 0, sd, 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- k-means


_COVARIANCE_MAX_GENES = 4096  # Gram partials of (G + 1) x G float64: 134 MB at this size


def _gram_block(x: np.ndarray) -> np.ndarray:
    """``(1, G + 1, G)``: column sums, then ``x^T x``, in float64, of one block of rows."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x.sum(axis=0)[None, :], x.T @ x], axis=0)[None]


def covariance_pca(x: da.Array, n_components: int) -> dict:
    """Exact PCA of a tall matrix from its Gram matrix, in one pass over the rows.

    Parameters
    ----------
    x
        ``(n, G)`` dask array, chunks of whole rows (G columns in each block).
    n_components
        Components kept.

    Returns
    -------
    dict
        ``mean`` (G), ``components`` (``n_components x G``, unit rows, each signed so its
        largest absolute loading is positive), ``explained_variance`` and
        ``explained_variance_ratio`` (``n_components``; variance with ``n - 1``
        denominator, ratio of the total), ``finite`` (False when ``x`` holds a non-finite
        value).

    Notes
    -----
    One task per block computes that block's column sums and ``x^T x`` in float64
    (``8 (G + 1) G`` bytes: 7.6 MB for the 978 landmarks); the partials are summed in a
    tree and the ``G x G`` covariance is diagonalised in this process (``O(G^3)``).
    Meant for ``G`` up to a few thousand; randomized PCA suits wider data.
    """
    n, g = x.shape
    x = x.rechunk({1: -1})
    parts = x.map_blocks(
        _gram_block,
        chunks=((1,) * x.numblocks[0], (g + 1,), (g,)),
        new_axis=[1],
        dtype=np.float64,
        meta=np.empty((0, 0, 0)),
    )
    (tot,) = dask.compute(parts.sum(axis=0))
    if not np.isfinite(tot).all():
        return {"finite": False}
    mean = tot[0] / n
    cov = (tot[1:] - n * np.outer(mean, mean)) / max(n - 1, 1)
    cov = (cov + cov.T) / 2
    val, vec = np.linalg.eigh(cov)
    val, vec = np.maximum(val[::-1], 0.0), vec[:, ::-1]
    comps = vec[:, :n_components].T
    flip = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(flip == 0, 1.0, flip)[:, None]
    total = float(np.trace(cov))
    ev = val[:n_components]
    return {
        "finite": True,
        "mean": mean,
        "components": comps,
        "explained_variance": ev,
        "explained_variance_ratio": ev / total if total > 0 else np.zeros_like(ev),
    }


def kmeans_signatures(
    ds: xr.Dataset,
    *,
    n_clusters: int,
    n_components: int = 50,
    space: Literal["landmark", "bing", "all"] = "landmark",
    scale: Scale = "zscore",
    solver: Solver = "auto",
    init: Init = "k-means||",
    init_sample: int = 20000,
    n_init: int = 3,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> xr.Dataset:
    """k-means of signatures on their leading principal components.

    Parameters
    ----------
    ds
        Signatures (``expr`` dims ``("sig", "gene")``), dask-backed or in memory; chunks
        of whole signatures. Non-finite values are an error.
    n_clusters
        k.
    n_components
        Principal components kept (at most the number of genes of the space).
    space
        Genes used (``feature_space`` coordinate): 978 landmarks, BING or all.
    scale
        ``"zscore"``: centre and scale each signature first, so distances follow Pearson
        correlation (CMap's similarity); ``"none"``: the raw values.
    solver
        PCA: ``"covariance"``: exact, from the ``G x G`` covariance accumulated in one
        pass over the signatures (for up to 4,096 genes); ``"randomized"``: dask-ml's
        randomized SVD (about ten passes, any width); ``"full"``: exact, dask-ml's TSQR.
        ``"auto"`` (default): ``"covariance"`` up to 4,096 genes, else ``"randomized"``.
    init
        ``"k-means||"``: scalable k-means++ (Bahmani et al. 2012,
        :func:`kmeans_parallel_init`): 5 rounds that each draw about ``2k`` candidates in
        two passes of one small task per block, whatever k is; the candidates, weighted by
        the points nearest to each, are reduced to k centres in this process.
        ``"sample-k-means++"``: scikit-learn's k-means++ on
        ``max(init_sample, 20 k)`` signatures drawn at random from the in-memory
        projection (one gather; ``O(sample x k x n_components)`` work in this process).
    init_sample
        Signatures drawn for ``"sample-k-means++"``.
    n_init
        Initialisations (seeds ``seed, seed + 1, ...``); the fit with the lowest inertia
        is kept, as in scikit-learn (one unlucky start can merge two classes).
    max_iter, tol
        Lloyd iterations and convergence tolerance (dask-ml).
    seed
        Random state of PCA, initialisation and the sample.

    Returns
    -------
    xarray.Dataset
        ``cluster`` (``sig``, int32, dask-backed: the nearest centre of each signature,
        computed when asked), ``distance`` (``sig``, lazy), ``centers`` (``cluster_id``,
        ``component``), ``components`` (``component``, ``gene``),
        ``explained_variance_ratio`` (``component``); ``sig`` metadata kept as
        coordinates; parameters, inertia and the seconds of each stage (``timing_s``) in
        ``attrs["cmapdask"]``.

    Notes
    -----
    Runs the fit now, on the scheduler in effect (a ``distributed.Client`` if one is
    active): with the covariance solver it reads ``expr`` twice (one pass for the
    covariance, which also checks that every value is finite, one to project); the other
    solvers read it about ten times. k-means reads the ``n x n_components`` projection,
    persisted in worker memory (4 bytes per value: 40 MB for 200,000 x 50), once per
    Lloyd iteration. The client holds ``k x n_components`` centres and
    ``n_components x G`` loadings (and the ``G x G`` covariance). Work
    ``O(n G^2 + iterations x n k n_components)``; scales with workers.
    """
    import time

    from cmapdask.similarity import feature_genes

    _check_signatures(ds)
    _check_int("n_clusters", n_clusters, 2)
    _check_int("n_components", n_components)
    _check_int("max_iter", max_iter)
    _check_int("n_init", n_init)
    _check_int("init_sample", init_sample)
    for name, v, ok in (
        ("scale", scale, ("zscore", "none")),
        ("solver", solver, ("auto", "covariance", "randomized", "full")),
        ("init", init, ("k-means||", "sample-k-means++")),
    ):
        if v not in ok:
            raise InputError(f"{name} must be one of {ok}, not {v!r}")
    genes = feature_genes(ds, space)
    n = ds.sizes["sig"]
    if n_clusters > n:
        raise InputError(f"{_name(ds)}: n_clusters={n_clusters} exceeds the {n} signatures")
    n_components = min(n_components, genes.size, n)
    if solver == "auto":
        solver = "covariance" if genes.size <= _COVARIANCE_MAX_GENES else "randomized"
    x = ds["expr"].data
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=(min(n, 8192), -1))
    x = x[:, genes].rechunk({1: -1}).astype(np.float32)
    if scale == "zscore":
        x = x.map_blocks(_zscore_rows, dtype=np.float32)
    nonfinite = InputError(
        f"{_name(ds)}: signatures with non-finite values cannot be clustered (drop them first)"
    )
    timing = {}
    t0 = time.perf_counter()
    if solver == "covariance":
        pc = covariance_pca(x, n_components)
        if not pc["finite"]:
            raise nonfinite
        comps = pc["components"].astype(np.float32)
        mean = pc["mean"].astype(np.float32)
        evr = pc["explained_variance_ratio"]
    else:
        from dask_ml.decomposition import PCA

        (ok,) = dask.compute(da.isfinite(x).all())
        if not ok:
            raise nonfinite
        pca = PCA(
            n_components=n_components,
            svd_solver="randomized" if solver == "randomized" else "tsqr",
            random_state=seed,
            iterated_power=4,
        )
        pca.fit(x)
        comps = np.asarray(pca.components_, dtype=np.float32)
        mean = np.asarray(pca.mean_, dtype=np.float32)
        evr = np.asarray(pca.explained_variance_ratio_)
    timing["pca"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the projection by hand: dask-ml's PCA.transform trips over newer scikit-learn tags
    z = (x - mean) @ comps.T
    # small (n x n_components) and read once per Lloyd iteration: keep it in memory
    (z,) = dask.persist(z)
    dask.compute(z.sum())  # wait for the whole projection (a stage of its own in timing_s)
    timing["project"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    km = None
    for trial in range(n_init):
        fit = _fit_kmeans(z, n, n_clusters, init, init_sample, max_iter, tol, seed + trial)
        if km is None or fit.inertia_ < km.inertia_:
            km = fit
    timing["kmeans"] = time.perf_counter() - t0
    centers = np.asarray(km.cluster_centers_, dtype=np.float32)
    labels, dist = _assign(z, centers)
    cid = np.arange(n_clusters)
    comp = np.arange(n_components)
    out = xr.Dataset(
        {
            "cluster": (("sig",), labels),
            "distance": (("sig",), dist),
            "centers": (("cluster_id", "component"), centers),
            "components": (("component", "gene"), comps),
            "explained_variance_ratio": (("component",), np.asarray(evr, dtype=np.float64)),
        },
        coords={
            "sig": ds["sig"].values,
            "cluster_id": cid,
            "component": comp,
            "gene": ds["gene"].values[genes],
            **{k: c for k, c in ds.coords.items() if c.dims == ("sig",) and k != "sig"},
        },
    )
    out.attrs["cmapdask"] = _provenance(
        method="kmeans",
        n_clusters=int(n_clusters),
        n_components=int(n_components),
        space=space,
        scale=scale,
        solver=solver,
        init=init,
        n_init=int(n_init),
        max_iter=int(max_iter),
        tol=float(tol),
        seed=int(seed),
        n_iter=int(getattr(km, "n_iter_", -1)),
        inertia=float(getattr(km, "inertia_", np.nan)),
        timing_s={k: round(v, 3) for k, v in timing.items()},
        input=str(ds.attrs.get("store_url", ds.attrs.get("cmapdask", {}).get("source", ""))),
    )
    return out


def _fit_kmeans(z, n, n_clusters, init, init_sample, max_iter, tol, seed, rounds=5):
    from dask_ml.cluster import KMeans

    if init == "sample-k-means++":
        from sklearn.cluster import kmeans_plusplus

        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n, min(max(init_sample, 20 * n_clusters), n), replace=False))
        (zs,) = dask.compute(z[take])
        init_arg, _ = kmeans_plusplus(np.asarray(zs, np.float64), n_clusters, random_state=seed)
    else:
        init_arg = kmeans_parallel_init(z, n_clusters, seed=seed, rounds=rounds)
    km = KMeans(
        n_clusters=n_clusters,
        init=np.asarray(init_arg, dtype=z.dtype),
        max_iter=max_iter,
        tol=tol,
        random_state=seed,
    )
    return km.fit(z)


def _min_d2(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre and squared distance per row (scikit-learn chunks the distance
    matrix to its working memory, so a block never holds rows x candidates at once)."""
    from sklearn.metrics import pairwise_distances_argmin_min

    idx, d = pairwise_distances_argmin_min(np.asarray(x, np.float64), centers)
    return idx, d * d


def _cost_block(x, centers):
    return np.array([_min_d2(x, centers)[1].sum()])


def _sample_block(x, centers, scale, seed, rnd, block):
    _, d2 = _min_d2(x, centers)
    keep = np.random.default_rng([seed, rnd, block]).random(d2.size) < np.minimum(1.0, scale * d2)
    return np.asarray(x, np.float64)[keep]


def _weight_block(x, centers):
    idx, _ = _min_d2(x, centers)
    return np.bincount(idx, minlength=centers.shape[0]).astype(np.float64)


def kmeans_parallel_init(
    z: da.Array,
    n_clusters: int,
    *,
    seed: int = 0,
    rounds: int = 5,
    oversampling: float = 2.0,
) -> np.ndarray:
    """Initial centres by k-means|| (Bahmani et al. 2012), with weighted reclustering.

    Parameters
    ----------
    z
        ``(n, d)`` dask array of points (persisted: it is read ``2 rounds + 1`` times).
    n_clusters
        k.
    seed
        The first centre and each block's draws (``default_rng([seed, round, block])``),
        so the result depends on the chunking but not on the scheduler.
    rounds
        Sampling rounds (the paper finds 5 enough).
    oversampling
        ``l / k``: each round draws each point with probability
        ``min(1, l d^2(x) / phi)``, about ``l`` points.

    Returns
    -------
    numpy.ndarray
        ``(k, d)`` centres: the candidates weighted by the points nearest to each, then
        clustered in this process by weighted k-means (k-means++ seeding, as the paper's
        step 8).

    Notes
    -----
    Per round, two passes over ``z`` (the cost ``phi``, then the draws), each one task
    per block returning a number or the few drawn points: the scheduler sees
    ``2 x blocks`` small tasks per round whatever k is. The client holds the
    ``~ 1 + rounds x l`` candidates (``8 d`` bytes each) and clusters them in
    ``O(candidates x k x d)`` per Lloyd iteration.
    """
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.cluster import kmeans_plusplus

    n = z.shape[0]
    rng = np.random.default_rng([seed, 2**31 - 1])
    (first,) = dask.compute(z[int(rng.integers(n))])
    cand = np.asarray(first, np.float64)[None, :]
    blocks = z.to_delayed().ravel()
    ell = oversampling * n_clusters
    for rnd in range(rounds):
        cd = dask.delayed(cand)  # one key: the candidates travel once, not once per block
        costs = [dask.delayed(_cost_block, pure=True)(b, cd) for b in blocks]
        phi = float(np.sum(dask.compute(*costs)))
        if not phi > 0:
            break  # every point sits on a candidate
        draws = [
            dask.delayed(_sample_block, pure=True)(b, cd, ell / phi, seed, rnd, i)
            for i, b in enumerate(blocks)
        ]
        new = [d for d in dask.compute(*draws) if d.size]
        if new:
            cand = np.unique(np.vstack([cand, *new]), axis=0)
    cd = dask.delayed(cand)
    weights = np.sum(
        dask.compute(*[dask.delayed(_weight_block, pure=True)(b, cd) for b in blocks]), axis=0
    )
    if cand.shape[0] <= n_clusters:  # too few distinct points drawn: top up at random
        extra = np.sort(rng.choice(n, n_clusters - cand.shape[0] + 1, replace=False))
        (more,) = dask.compute(z[extra])
        cand = np.vstack([cand, np.asarray(more, np.float64)])
        weights = np.concatenate([weights, np.ones(len(extra))])
    weights = np.maximum(weights, 1e-12)
    start, _ = kmeans_plusplus(cand, n_clusters, sample_weight=weights, random_state=seed)
    km = SKKMeans(n_clusters=n_clusters, init=start, n_init=1, max_iter=50, random_state=seed)
    return km.fit(cand, sample_weight=weights).cluster_centers_


def _nearest(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (z * z).sum(1)[:, None] - 2 * z @ centers.T + (centers * centers).sum(1)[None, :]
    lab = d.argmin(axis=1)
    return np.stack([lab, np.sqrt(np.maximum(d[np.arange(len(z)), lab], 0))], axis=1)


def _assign(z: da.Array, centers: np.ndarray) -> tuple[da.Array, da.Array]:
    """Lazy nearest centre and distance per row (one task per chunk)."""
    both = z.map_blocks(
        _nearest, centers.astype(np.float64), chunks=(z.chunks[0], (2,)), dtype=np.float64
    )
    return both[:, 0].astype(np.int32), both[:, 1].astype(np.float32)


# ----------------------------------------------------------------------------- hierarchical


def _square(matrix: xr.DataArray, what: str, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    if (
        not isinstance(matrix, xr.DataArray)
        or matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
    ):
        raise InputError(f"{what}: need a square 2-D DataArray (pert, pert_ref)")
    r, c = matrix.dims
    ids = np.asarray([str(v) for v in matrix[r].values], dtype=object)
    if len(set(ids)) != ids.size:
        raise InputError(f"{what}: duplicate ids along {r!r}")
    other = np.asarray([str(v) for v in matrix[c].values], dtype=object)
    if set(ids) != set(other):
        raise InputError(f"{what}: rows and columns hold different ids")
    if not np.array_equal(other, ids):
        matrix = matrix.isel({c: pd.Index(other).get_indexer(ids)})
    m = np.asarray(matrix.values, dtype=dtype)
    return ids, m


def _condensed_similarity(m: np.ndarray, *, block: int = 1024) -> np.ndarray:
    """``(M + M^T) / 2`` above the diagonal as scipy's condensed vector (float64), built
    a block of rows at a time so that no second ``P x P`` array exists."""
    p = m.shape[0]
    out = np.empty(p * (p - 1) // 2)
    for r0 in range(0, p, block):
        r1 = min(p, r0 + block)
        sym = (m[r0:r1].astype(np.float64) + m[:, r0:r1].T.astype(np.float64)) / 2
        for i in range(r0, r1):
            start = i * p - i * (i + 1) // 2
            out[start : start + p - i - 1] = sym[i - r0, i + 1 :]
    return out


def hierarchical_perts(
    matrix: xr.DataArray,
    *,
    method: Linkage = "average",
    n_clusters: int | None = None,
    threshold: float | None = None,
    source: str | None = None,
) -> xr.Dataset:
    """Agglomerative clustering of a perturbagen x perturbagen similarity/connectivity matrix.

    Parameters
    ----------
    matrix
        Square, dims like ``("pert", "pert_ref")`` with the same ids (a ``pert_summary``
        from :func:`cmapdask.similarity.pert_similarity`, or a symmetric τ matrix).
        Higher = more alike. It is symmetrised as ``(M + M^T) / 2``; pairs never profiled
        together (NaN) count as the least similar pair observed.
    method
        scipy linkage: ``"average"`` (UPGMA, the usual choice for correlation-like
        scores), ``"complete"``, ``"single"``, ``"ward"`` (assumes Euclidean distances;
        use with care on similarity-derived distances).
    n_clusters, threshold
        Cut the tree into ``n_clusters`` clusters, or at distance ``threshold``; give
        exactly one.
    source
        Where ``matrix`` lives, as ``"MEMBER:VARIABLE"`` of the store the labels are
        written to (for example ``"similarity/pearson_landmark_pert:pert_summary"``);
        recorded so that a nightly rebuild can remake the clusters.

    Returns
    -------
    xarray.Dataset
        ``cluster`` (``pert``, int32, 0-based), ``leaf_order`` (``leaf``: positions in
        dendrogram order), ``linkage`` (``merge``, ``field``: scipy's linkage matrix).

    Notes
    -----
    Computes the matrix and holds it as float32 (``4 P^2`` bytes) plus its condensed
    distances in float64 (``4 P^2`` bytes), which scipy's linkage copies once: about
    ``12 P^2`` bytes at the peak (4.8 GB for 20,000 perturbagens, 11 GB for 30,000).
    The symmetric matrix is never formed as a second ``P x P`` array. scipy's linkage
    (NN-chain for average/complete/ward, minimum spanning tree for single) takes
    ``O(P^2)`` time.
    Distance is ``top - s`` with ``top`` the largest off-diagonal score.
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage

    if method not in ("average", "complete", "single", "ward"):
        raise InputError(f"method must be average, complete, single or ward, not {method!r}")
    if (n_clusters is None) == (threshold is None):
        raise InputError("hierarchical_perts: give exactly one of n_clusters or threshold")
    ids, m = _square(matrix, "hierarchical_perts", dtype=np.float32)
    if ids.size < 2:
        raise InputError("hierarchical_perts: need at least 2 perturbagens")
    if n_clusters is not None:
        _check_int("n_clusters", n_clusters, 1)
        if n_clusters > ids.size:
            raise InputError(f"n_clusters={n_clusters} exceeds the {ids.size} perturbagens")
    d = _condensed_similarity(m)
    del m
    finite = np.isfinite(d)
    if not finite.any():
        raise InputError("hierarchical_perts: the matrix has no finite off-diagonal value")
    top, bottom = float(d[finite].max()), float(d[finite].min())
    d[~finite] = bottom
    del finite
    np.subtract(top, d, out=d)  # distance = top - similarity, in place
    z = linkage(d, method=method)
    if n_clusters is not None:
        lab = fcluster(z, t=n_clusters, criterion="maxclust")
    else:
        lab = fcluster(z, t=float(threshold), criterion="distance")
    out = xr.Dataset(
        {
            "cluster": (("pert",), (lab - 1).astype(np.int32)),
            "leaf_order": (("leaf",), leaves_list(z).astype(np.int64)),
            "linkage": (("merge", "field"), z),
        },
        coords={
            "pert": ids,
            "field": np.array(["left", "right", "distance", "size"], dtype=object),
        },
    )
    out.attrs["cmapdask"] = _provenance(
        method="hierarchical",
        linkage=method,
        n_clusters=n_clusters,
        threshold=threshold,
        distance="top - similarity",
        top=float(top),
        input=matrix.attrs.get("cmapdask", {}).get("method", str(matrix.name)),
        source=source,
    )
    return out


# ----------------------------------------------------------------------------- graphs


def knn_from_matrix(matrix: xr.DataArray, *, k: int = 10) -> xr.Dataset:
    """Top-k neighbour lists (``top_index``, ``top_score``; dims ``sig``, ``rank``) of each row
    of a square similarity matrix, itself left out (for :func:`graph_clusters`)."""
    ids, m = _square(matrix, "knn_from_matrix")
    _check_int("k", k)
    if k >= ids.size:
        raise InputError(f"k={k} must be smaller than the {ids.size} items")
    m = m.copy()
    np.fill_diagonal(m, -np.inf)
    m = np.where(np.isfinite(m), m, -np.inf)
    idx = np.argsort(-m, axis=1, kind="stable")[:, :k]
    sc = np.take_along_axis(m, idx, axis=1)
    idx = np.where(np.isfinite(sc), idx, -1)
    return xr.Dataset(
        {
            "top_index": (("sig", "rank"), idx),
            "top_score": (("sig", "rank"), np.where(idx >= 0, sc, np.nan)),
        },
        coords={"sig": ids, "rank": np.arange(1, k + 1)},
    )


def _leiden_backend() -> str | None:
    """``"leidenalg"`` when igraph and leidenalg import, else ``None``."""
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401
    except ImportError:
        return None
    return "leidenalg"


def _knn_edges(idx: np.ndarray, sc: np.ndarray, min_score: float):
    """Undirected weighted edges ``(a, b, w)`` with ``a < b`` (weight: the larger direction)."""
    n = idx.shape[0]
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols, w = idx.ravel(), sc.ravel()
    keep = (cols >= 0) & (cols < n) & np.isfinite(w) & (w > min_score) & (cols != rows)
    a, b, w = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], w[keep]
    e = pd.DataFrame({"a": a, "b": b, "w": w}).groupby(["a", "b"], sort=True)["w"].max()
    return (
        e.index.get_level_values(0).to_numpy(np.int64),
        e.index.get_level_values(1).to_numpy(np.int64),
        e.to_numpy(np.float64),
    )


def _communities_leiden(n, a, b, w, resolution, seed):
    import igraph as ig
    import leidenalg

    g = ig.Graph(n=n, edges=np.column_stack([a, b]).tolist(), directed=False)
    g.es["weight"] = w.tolist()
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights="weight",
        resolution_parameter=float(resolution),
        seed=int(seed),
        n_iterations=-1,
    )
    lab = np.asarray(part.membership, dtype=np.int64)
    modularity = float(
        g.modularity(part.membership, weights="weight", resolution=float(resolution))
    )
    return lab, modularity


def _communities_louvain(n, a, b, w, resolution, seed):
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from(zip(a.tolist(), b.tolist(), w.tolist(), strict=False))
    comms = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
    lab = np.empty(n, np.int64)
    for i, c in enumerate(comms):
        lab[list(c)] = i
    modularity = float(nx.community.modularity(g, comms, weight="weight", resolution=resolution))
    return lab, modularity


def _by_size(lab: np.ndarray) -> np.ndarray:
    """Renumber communities 0, 1, ... by decreasing size (ties: smallest member first)."""
    uniq, inv, cnt = np.unique(lab, return_inverse=True, return_counts=True)
    first = np.full(uniq.size, lab.size)
    np.minimum.at(first, inv, np.arange(lab.size))
    order = np.lexsort((first, -cnt))
    rank = np.empty(uniq.size, np.int32)
    rank[order] = np.arange(uniq.size)
    return rank[inv].astype(np.int32)


def graph_clusters(
    neighbours: xr.Dataset,
    *,
    method: Community = "auto",
    k: int | None = None,
    resolution: float = 1.0,
    min_score: float = 0.0,
    seed: int = 0,
) -> xr.Dataset:
    """Leiden or Louvain communities of the k-nearest-neighbour graph.

    Parameters
    ----------
    neighbours
        ``top_index``/``top_score`` with dims ``("sig", "rank")``: a
        :func:`cmapdask.similarity.similarity` result, or :func:`knn_from_matrix` of a
        perturbagen matrix.
    method
        ``"leiden"``: the Leiden algorithm (Traag et al. 2019: refined, well-connected
        communities) with the modularity objective (``RBConfigurationVertexPartition``),
        from the ``leidenalg`` and ``igraph`` packages (C++; iterated until stable).
        ``"louvain"``: networkx's Louvain modularity optimisation (pure Python).
        ``"auto"``: Leiden where ``igraph`` and ``leidenalg`` are installed, else Louvain;
        the method used is in the provenance.
    k
        Use only the first k neighbours of each list (default all).
    resolution
        Modularity resolution (> 1: smaller communities).
    min_score
        Edges with a score at or below this are dropped (only positive similarity links).
    seed
        Random state of the community search.

    Returns
    -------
    xarray.Dataset
        ``cluster`` (``sig``, int32; communities numbered by decreasing size; a node with
        no edge is its own community); method, parameters, number of edges and modularity
        in ``attrs["cmapdask"]``.

    Notes
    -----
    Reads the neighbour lists (``N x k`` indices and scores) into memory and builds an
    undirected graph of at most ``N k`` edges (weight: the larger score of the two
    directions). Leiden (igraph/leidenalg) holds the graph in C structures (about
    100 bytes per edge) and takes seconds per million edges, so it suits the kNN graph
    of hundreds of thousands of signatures; networkx's Louvain is pure Python (about a
    minute and a few hundred bytes of Python objects per million edges), so keep it to
    pert-level graphs or tens of thousands of signatures.
    """
    if method not in ("auto", "louvain", "leiden"):
        raise InputError(f"method must be 'auto', 'leiden' or 'louvain', not {method!r}")
    for v in ("top_index", "top_score"):
        if v not in neighbours:
            raise InputError(f"graph_clusters: neighbour lists lack {v!r}")
    if not isinstance(resolution, (int, float, np.floating)) or not resolution > 0:
        raise InputError(f"resolution must be a positive number, got {resolution!r}")
    backend = _leiden_backend()
    if method == "auto":
        method = "leiden" if backend else "louvain"
    if method == "leiden" and backend is None:
        raise InputError(
            "Leiden needs the igraph and leidenalg packages "
            "(pip install igraph leidenalg), or use method='louvain'"
        )
    idx, sc = dask.compute(neighbours["top_index"].data, neighbours["top_score"].data)
    idx, sc = np.asarray(idx), np.asarray(sc, dtype=np.float64)
    if k is not None:
        _check_int("k", k)
        idx, sc = idx[:, :k], sc[:, :k]
    n = idx.shape[0]
    a, b, w = _knn_edges(idx, sc, min_score)
    run = _communities_leiden if method == "leiden" else _communities_louvain
    lab, modularity = run(n, a, b, w, resolution, seed)
    out = xr.Dataset(
        {"cluster": (("sig",), _by_size(lab))}, coords={"sig": neighbours["sig"].values}
    )
    out.attrs["cmapdask"] = _provenance(
        method=method,
        backend="leidenalg" if method == "leiden" else "networkx",
        k=int(idx.shape[1]),
        resolution=float(resolution),
        min_score=float(min_score),
        seed=int(seed),
        n_edges=int(a.size),
        modularity=modularity,
        input=str(neighbours.attrs.get("cmapdask", {}).get("metric", "")),
    )
    return out


# ----------------------------------------------------------------------------- quality, output


def cluster_quality(
    labels,
    truth=None,
    *,
    x=None,
    sample_size: int = 5000,
    seed: int = 0,
) -> dict:
    """Quality figures of a clustering.

    Parameters
    ----------
    labels
        Cluster per item (array-like or DataArray; computed if lazy).
    truth
        Annotation per item (for example the MoA); items with ``None`` are left out of
        the agreement figures.
    x
        Features per item (``(n, d)``, numpy or dask): the silhouette is computed on
        ``sample_size`` items drawn at random (only those rows are computed).

    Returns
    -------
    dict
        ``n``, ``n_clusters``; with ``truth``: ``adjusted_rand`` (0 = chance, 1 =
        identical), ``purity`` (share of items whose cluster's majority annotation is
        theirs), ``n_annotated``; with ``x``: ``silhouette`` (Euclidean) and
        ``silhouette_n``.
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    lab = np.asarray(dask.compute(getattr(labels, "data", labels))[0]).ravel()
    out = {"n": int(lab.size), "n_clusters": int(np.unique(lab).size)}
    if truth is not None:
        t = np.asarray(truth, dtype=object).ravel()
        if t.size != lab.size:
            raise InputError(f"cluster_quality: {t.size} annotations for {lab.size} labels")
        ok = np.array([v is not None and v == v for v in t])
        if ok.sum() < 2:
            raise InputError("cluster_quality: fewer than 2 annotated items")
        tt, ll = t[ok].astype(str), lab[ok]
        out["adjusted_rand"] = float(adjusted_rand_score(tt, ll))
        ct = pd.crosstab(ll, tt)
        out["purity"] = float(ct.max(axis=1).sum() / ok.sum())
        out["n_annotated"] = int(ok.sum())
    if x is not None:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(lab.size, min(sample_size, lab.size), replace=False))
        (xs,) = dask.compute(x[take])
        if np.unique(lab[take]).size >= 2:
            out["silhouette"] = float(silhouette_score(np.asarray(xs), lab[take]))
            out["silhouette_n"] = int(take.size)
    return out


def clusters_table(
    result: xr.Dataset, *, fields: tuple[str, ...] = ("pert_id", "cell_iname", "cell_id")
) -> pd.DataFrame:
    """Labels as a table: the id column (``sig`` or ``pert``), ``cluster``, and any of "
    "``fields``."""
    dim = result["cluster"].dims[0]
    (lab,) = dask.compute(result["cluster"].data)
    df = pd.DataFrame(
        {dim: np.asarray(result[dim].values, dtype=object), "cluster": np.asarray(lab)}
    )
    for f in fields:
        if f in result.coords and result[f].dims == (dim,):
            df[f] = result[f].values
    return df


def write_clusters(
    result: xr.Dataset,
    store=None,
    *,
    name: str,
    table=None,
    storage_options: dict | None = None,
) -> dict[str, str]:
    """Write cluster labels as the store member ``clusters/<name>`` and/or a table.

    Parameters
    ----------
    result
        From :func:`kmeans_signatures`, :func:`hierarchical_perts` or
        :func:`graph_clusters`.
    store
        Store URL; the labels (and centres, linkage ...) become member ``clusters/<name>``
        with the result's provenance, published atomically.
    name
        Member name below ``clusters/``.
    table
        Path of a table of labels (``.parquet`` for Parquet, anything else TSV), written
        atomically.

    Notes
    -----
    Computes the lazy labels chunk by chunk while writing; memory O(n) for the table.
    """
    from cmapdask.io.atomic import publish_file

    if store is None and table is None:
        raise InputError("write_clusters: give a store, a table path, or both")
    if not name or "/" in name.strip("/"):
        raise InputError(f"write_clusters: invalid name {name!r}")
    out = {}
    if store is not None:
        from cmapdask.io.store import write_member

        ds = result.reset_coords(drop=True)  # metadata stays with the store, labels here
        out["member"] = write_member(
            store,
            f"clusters/{name}",
            ds,
            storage_options=storage_options,
            provenance=result.attrs.get("cmapdask", {}),
        )
    if table is not None:
        df = clusters_table(result)
        with publish_file(table, storage_options=storage_options) as tmp:
            if str(table).endswith(".parquet"):
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, sep="\t", index=False)
        out["table"] = os.fspath(table)
    return out


def with_cluster_coords(
    ds: xr.Dataset,
    store,
    *,
    names: list[str] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """``ds`` with the labels of stored clusterings as coordinates ``cluster_<name>``.

    Parameters
    ----------
    ds
        Signatures (or any dataset whose dimension matches the clustering's: ``sig`` for
        k-means and signature graphs, ``pert`` for perturbagen clusterings).
    store
        Store URL holding members ``clusters/<name>`` (:func:`write_clusters`).
    names
        Clusterings to attach (default: every ``clusters/*`` member).

    Returns
    -------
    xarray.Dataset
        ``cluster_<name>`` along the matching dimension, int32, ``-1`` where an id has no
        label; each coordinate's ``attrs["cmapdask"]`` is the clustering's provenance.

    Notes
    -----
    Reads the label arrays only (``4 n`` bytes each).
    """
    from cmapdask.io.store import list_members, open_member

    if names is None:
        names = [
            m.split("/", 1)[1]
            for m in list_members(store, storage_options=storage_options)
            if m.startswith("clusters/")
        ]
    out = ds
    for name in names:
        member = open_member(store, f"clusters/{name}", storage_options=storage_options)
        if "cluster" not in member:
            raise InputError(f"{store}: member clusters/{name} holds no cluster labels")
        dim = member["cluster"].dims[0]
        if dim not in ds.dims:
            raise InputError(f"clusters/{name} labels {dim!r}, which the dataset does not have")
        lab = pd.Series(
            np.asarray(member["cluster"].values, dtype=np.int64),
            index=[str(v) for v in member[dim].values],
        )
        vals = lab.reindex([str(v) for v in ds[dim].values]).fillna(-1).to_numpy(np.int32)
        coord = xr.DataArray(
            vals, dims=(dim,), attrs={"cmapdask": dict(member.attrs.get("cmapdask", {}))}
        )
        out = out.assign_coords({f"cluster_{name}": coord})
    return out
