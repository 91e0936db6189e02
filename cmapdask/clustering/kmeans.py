"""k-means of signatures on their leading principal components (dask graph and labels).

The block maths is in :mod:`.kernels`, the PCA in :mod:`.pca`.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cmapdask.clustering.common import _check_int
from cmapdask.clustering.kernels import (
    _cost_block,
    _nearest,
    _sample_block,
    _weight_block,
    _zscore_rows,
)
from cmapdask.clustering.pca import _COVARIANCE_MAX_GENES, covariance_pca
from cmapdask.errors import InputError
from cmapdask.model.checks import check_signatures, dataset_name
from cmapdask.model.provenance import provenance_record
from cmapdask.model.spaces import feature_genes
from cmapdask.model.types import Space

__all__ = ["kmeans_signatures", "kmeans_parallel_init"]

Init = Literal["k-means||", "sample-k-means++"]
Solver = Literal["auto", "covariance", "randomized", "full"]
Scale = Literal["zscore", "none"]


def kmeans_signatures(
    ds: xr.Dataset,
    *,
    n_clusters: int,
    n_components: int = 50,
    space: Space = "landmark",
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

    check_signatures(ds, None if isinstance(ds, xr.Dataset) else "kmeans_signatures")
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
        raise InputError(f"{dataset_name(ds)}: n_clusters={n_clusters} exceeds the {n} signatures")
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
        f"{dataset_name(ds)}: signatures with non-finite values cannot be clustered "
        "(drop them first)"
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
    out.attrs["cmapdask"] = provenance_record(
        "kmeans",
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
        input=dataset_name(ds, default=""),
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


def _assign(z: da.Array, centers: np.ndarray) -> tuple[da.Array, da.Array]:
    """Lazy nearest centre and distance per row (one task per chunk)."""
    both = z.map_blocks(
        _nearest, centers.astype(np.float64), chunks=(z.chunks[0], (2,)), dtype=np.float64
    )
    return both[:, 0].astype(np.int32), both[:, 1].astype(np.float32)
