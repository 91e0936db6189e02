"""Clustering and MoA recall at scale: wall time and peak memory, with a baseline.

1. k-means of N x 978 synthetic signatures (default 200,000; planted MoA classes), read
   from a Zarr signature store written first (not timed):
   cmapdask.clustering.kmeans_signatures (one-pass covariance PCA + dask-ml k-means,
   threaded scheduler, ``expr`` read lazily from the store) with each initialisation,
   next to scikit-learn's MiniBatchKMeans in the same run (reading the same store into
   memory, z-scoring each signature, randomized PCA to the same number of components).
   Prints wall time, peak memory (RSS of the process tree, sampled every 50 ms; the
   process's RSS before each part is printed too), the stage times of cmapdask, and two
   quality figures computed afterwards on the same data for every labelling: the
   within-cluster sum of squares per signature in the z-scored 978-gene space (lower is
   better; it does not depend on either method's PCA basis) and the adjusted Rand index
   against the planted MoA on the compound signatures at the two highest doses (where the
   MoA signal is planted strongly; chance = 0).
2. MoA recall from the neighbour lists of M signatures (default 100,000): synthetic
   top-k / bottom-k lists (k = 100) generated in chunks (distinct signatures, never the
   signature itself), half of each top list from the signature's own MoA and ranked
   first (so AUROC > 0.5), cmapdask.enrich.moa_recall_approx overall and per cell line; prints
   wall time and peak memory.
3. Graph clustering of the same lists' kNN graph (first 15 neighbours): Leiden
   (igraph/leidenalg) at the recall size, and networkx's Louvain where N <= 20,000;
   prints wall time, peak memory, modularity and ARI against the planted MoA.

    flock /tmp/cmapdask-bench.lock python3 benchmarks/bench_clustering.py
    flock /tmp/cmapdask-bench.lock python3 benchmarks/bench_clustering.py --n-sigs 20000 --n-recall 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import dask
import dask.array as da
import numpy as np
import psutil
import xarray as xr

sys.path.insert(0, os.path.dirname(__file__))
from _measure import PeakRSS  # noqa: E402

from cmapdask import synthetic as sy  # noqa: E402
from cmapdask.clustering import kmeans_signatures  # noqa: E402
from cmapdask.enrich import moa_recall_approx  # noqa: E402
from cmapdask.io.store import open_store, write_store  # noqa: E402


def _rss_gib() -> float:
    return psutil.Process().memory_info().rss / 2**30


def _zscore(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.where((sd := x.std(axis=1, keepdims=True)) > 0, sd, 1)


def _wss(x: np.ndarray, lab: np.ndarray) -> float:
    """Within-cluster sum of squares per row: sum |x|^2 - sum_c |sum_{i in c} x_i|^2 / n_c."""
    k = int(lab.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, lab, x)
    cnt = np.bincount(lab, minlength=k)
    tot = float((x.astype(np.float64) ** 2).sum())
    return (tot - float(((sums**2).sum(axis=1) / np.maximum(cnt, 1)).sum())) / x.shape[0]


def bench_kmeans(n: int, k: int | None, comps: int, workdir: str) -> None:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    design = sy.synth_design(n, seed=0)
    k = k or design.n_moas
    ds = sy.synth_dataset(design, chunks=20 * sy.TILE)
    ds = ds.assign_coords(
        feature_space=("gene", np.array(["landmark"] * ds.sizes["gene"], dtype=object))
    )
    url = os.path.join(workdir, "kmeans.zarr")
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        write_store(ds, url)
    print(
        f"setup: wrote the {n} x {ds.sizes['gene']} store in {time.perf_counter() - t0:.1f} s "
        f"(not timed below); k = {k} (the design's MoA count), {comps} components"
    )
    truth = sy.synth_truth(design)
    strong = (truth["pert_type"].to_numpy() == "trt_cp") & (truth["pert_dose"].to_numpy() >= 3.0)
    moa = truth["moa"].to_numpy()[strong].astype(str)
    labels = {}
    for init in ("k-means||", "sample-k-means++"):
        gc.collect()
        before = _rss_gib()
        with dask.config.set(scheduler="threads"), PeakRSS() as mem:
            t0 = time.perf_counter()
            res = kmeans_signatures(
                open_store(url), n_clusters=k, n_components=comps, n_init=1, init=init
            )
            lab = res["cluster"].values
            t = time.perf_counter() - t0
        prov = res.attrs["cmapdask"]
        stages = ", ".join(f"{s} {v:.1f} s" for s, v in prov["timing_s"].items())
        print(
            f"kmeans cmapdask {init:17s} N={n} k={k}: {t:7.1f} s  peak {mem.peak / 2**30:5.2f} GiB "
            f"(RSS before {before:4.2f})  [{stages}, labels {t - sum(prov['timing_s'].values()):.1f} s; "
            f"solver {prov['solver']}, {prov['n_iter']} Lloyd iterations]"
        )
        labels[f"cmapdask {init}"] = (lab, t)
        del res
    gc.collect()
    before = _rss_gib()
    with PeakRSS() as mem2:
        t0 = time.perf_counter()
        x = open_store(url)["expr"].values
        x = _zscore(x).astype(np.float32)
        z = PCA(n_components=comps, svd_solver="randomized", random_state=0).fit_transform(x)
        mb = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=1, batch_size=4096).fit(z)
        t_sk = time.perf_counter() - t0
    print(
        f"kmeans sklearn MiniBatchKMeans       N={n} k={k}: {t_sk:7.1f} s  peak {mem2.peak / 2**30:5.2f} GiB "
        f"(RSS before {before:4.2f})  [reads the store into memory, z-score, randomized PCA, "
        f"batch 4096]"
    )
    labels["sklearn MiniBatchKMeans"] = (mb.labels_, t_sk)
    for name, (lab, t) in labels.items():
        ari = adjusted_rand_score(moa, lab[strong])
        print(
            f"quality {name:28s}: WSS per signature {_wss(x, lab):8.2f} (z-scored 978 genes)  "
            f"ARI vs planted MoA {ari:.3f} ({int(strong.sum())} strong compound signatures)  "
            f"time / MiniBatchKMeans {t / t_sk:.2f}"
        )


def synthetic_lists(m: int, k: int = 100, n_moas: int = 50, chunk: int = 10000):
    """Neighbour lists of m signatures (dask-backed), their MoA and cell line labels."""
    n_moas = max(2, min(n_moas, m // (4 * k)))  # every MoA larger than a top list
    rng = np.random.default_rng(0)
    moa = rng.integers(0, n_moas, m)
    labels = np.array([f"M{i}" for i in moa], dtype=object)
    cells = np.array(["A", "B", "C", "D"], dtype=object)[rng.integers(0, 4, m)]
    # signatures grouped by MoA (random order within): lists are runs of this ring, so
    # they hold distinct signatures, never the signature itself, top and bottom disjoint
    ring = np.lexsort((rng.random(m), moa))
    where = np.empty(m, np.int64)
    where[ring] = np.arange(m)
    counts = np.bincount(moa, minlength=n_moas)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    half = k // 2

    def lists(block_info=None, which="top"):
        (lo, hi), _ = block_info[None]["array-location"]
        r = np.random.default_rng([lo, which == "top"])  # the scores
        shared = np.random.default_rng([lo, 2])  # the positions: the same for both lists
        rows = np.arange(lo, hi)
        g0, gn = starts[moa[rows]][:, None], counts[moa[rows]][:, None]
        # the top list: k/2 of the own MoA, ranked first, then k/2 of other MoAs; the
        # bottom list: k of other MoAs (after the top list's in the ring)
        # distinct random offsets in [1, gn - 1] of the own MoA's run (random gaps)
        gaps = 1 + (shared.random((hi - lo, half)) * ((gn - 1) // half)).astype(np.int64)
        own = ring[g0 + (where[rows][:, None] - g0 + np.cumsum(gaps, axis=1)) % gn]
        shift = (shared.random((hi - lo, 1)) * (m - gn - 3 * k)).astype(np.int64)
        other = ring[(g0 + gn + shift + np.arange(3 * k)) % m]
        if which == "top":
            idx = np.concatenate([own, other[:, : k - half]], axis=1)
        else:
            idx = other[:, k : 2 * k]
        sc = np.sort(r.uniform(0.2, 1.0, (hi - lo, k)), axis=1)[:, ::-1]
        if which == "bottom":
            sc = -sc
        return idx if block_info[None]["dtype"] == np.int64 else sc

    chunks = ((chunk,) * (m // chunk) + ((m % chunk,) if m % chunk else ()), (k,))

    def arr(which, dtype):
        return da.map_blocks(
            lambda block_info=None: lists(block_info, which),
            chunks=chunks,
            dtype=dtype,
            meta=np.empty((0, 0), dtype),
        )

    nb = xr.Dataset(
        {
            "top_index": (("sig", "rank"), arr("top", np.int64)),
            "top_score": (("sig", "rank"), arr("top", np.float32)),
            "bottom_index": (("sig", "rank"), arr("bottom", np.int64)),
            "bottom_score": (("sig", "rank"), arr("bottom", np.float32)),
            "valid": (("sig",), da.ones(m, bool, chunks=chunk)),
        },
        coords={"sig": np.array([f"S{i:07d}" for i in range(m)], dtype=object)},
    )
    return nb, labels, cells, n_moas


def bench_recall(m: int, k: int = 100) -> None:
    nb, labels, cells, n_moas = synthetic_lists(m, k)
    gc.collect()
    before = _rss_gib()
    with dask.config.set(scheduler="threads"), PeakRSS() as mem:
        t0 = time.perf_counter()
        res = moa_recall_approx(nb, labels, cells=cells).compute()
        t = time.perf_counter() - t0
    print(
        f"moa_recall_approx N={m} k={k} (top and bottom lists, {n_moas} MoAs): {t:7.1f} s  "
        f"peak {mem.peak / 2**30:5.2f} GiB (RSS before {before:4.2f})  "
        f"({len(res['group'])} groups; AUROC all {float(res['auroc'].sel(group='all')):.3f}, "
        f"bounds [{float(res['auroc_min'].sel(group='all')):.3f}, "
        f"{float(res['auroc_max'].sel(group='all')):.3f}])"
    )


def bench_graph(m: int, k: int = 15) -> None:
    from sklearn.metrics import adjusted_rand_score

    from cmapdask.clustering import graph_clusters

    nb, labels, cells, n_moas = synthetic_lists(m)
    with dask.config.set(scheduler="threads"):
        nb = nb.persist()  # the lists are an input here, not part of the timing
    for method in ("leiden", "louvain"):
        if method == "louvain" and m > 20_000:
            print(f"graph louvain N={m}: skipped (networkx, pure Python; see the docstring)")
            continue
        gc.collect()
        before = _rss_gib()
        with dask.config.set(scheduler="threads"), PeakRSS() as mem:
            t0 = time.perf_counter()
            res = graph_clusters(nb, method=method, k=k)
            lab = res["cluster"].values
            t = time.perf_counter() - t0
        prov = res.attrs["cmapdask"]
        print(
            f"graph {method} N={m} k={k}: {t:7.1f} s  peak {mem.peak / 2**30:5.2f} GiB "
            f"(RSS before {before:4.2f})  ({prov['n_edges']} edges, {lab.max() + 1} communities, "
            f"modularity {prov['modularity']:.3f}, ARI vs planted MoA "
            f"{adjusted_rand_score(labels.astype(str), lab):.3f}; {n_moas} MoAs)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-sigs", type=int, default=200_000)
    p.add_argument("--k", type=int, default=None, help="clusters (default: the design's MoA count)")
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--n-recall", type=int, default=100_000)
    p.add_argument(
        "--workdir", default=None, help="where the store is written (default: a temp dir)"
    )
    a = p.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    bench_recall(a.n_recall)
    bench_graph(a.n_recall)
    work = a.workdir or tempfile.mkdtemp(prefix="bench_clustering_")
    try:
        bench_kmeans(a.n_sigs, a.k, a.components, work)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
