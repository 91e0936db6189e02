"""Clustering and MoA recall at scale: wall time and peak memory, with a baseline.

1. k-means on N x 978 synthetic signatures (default 200,000; planted MoA classes):
   cmapdask.clustering.kmeans_signatures (dask-ml PCA + k-means||, threaded scheduler,
   data generated lazily) next to scikit-learn's MiniBatchKMeans on the same values held in
   memory (PCA by scikit-learn's randomized PCA first, same n_components), both in this
   run; prints wall time, peak memory (process tree RSS; the baseline's includes the
   N x 978 matrix it needs in memory) and the ARI of each against the planted MoA.
2. MoA recall from the neighbour lists of M signatures (default 100,000): synthetic top-k
   / bottom-k lists (k = 100; scores drawn so same-MoA pairs score higher) in chunks,
   cmapdask.enrich.moa_recall; prints wall time.

    python3 benchmarks/bench_clustering.py                        # 200,000 / 100,000
    python3 benchmarks/bench_clustering.py --n-sigs 20000 --n-recall 20000   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import dask
import dask.array as da
import numpy as np
import xarray as xr

sys.path.insert(0, os.path.dirname(__file__))
from _measure import PeakRSS  # noqa: E402

from cmapdask import synthetic as sy  # noqa: E402
from cmapdask.annotations import labels_from_sets, sets_from_table  # noqa: E402
from cmapdask.clustering import cluster_quality, kmeans_signatures  # noqa: E402
from cmapdask.enrich import moa_recall  # noqa: E402


def bench_kmeans(n: int, k: int, comps: int) -> None:
    design = sy.synth_design(n, seed=0)
    ds = sy.synth_dataset(design, chunks=20 * sy.TILE)
    truth_df = sy.synth_truth(design)
    truth = truth_df["moa"].to_numpy()
    fs = np.array(["landmark"] * ds.sizes["gene"], dtype=object)
    ds = ds.assign_coords(feature_space=("gene", fs))
    with dask.config.set(scheduler="threads"), PeakRSS() as mem:
        t0 = time.perf_counter()
        res = kmeans_signatures(ds, n_clusters=k, n_components=comps, n_init=1)
        lab = res["cluster"].values
        t_dask = time.perf_counter() - t0
    q = cluster_quality(lab, truth)
    print(f"kmeans cmapdask   N={n} k={k} pcs={comps}: {t_dask:8.1f} s  peak {mem.peak_gib:5.2f} GiB  "
          f"ARI vs planted MoA {q['adjusted_rand']:.3f}")
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA

    with PeakRSS() as mem2:
        t0 = time.perf_counter()
        x = ds["expr"].data.compute()
        x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
        z = PCA(n_components=comps, svd_solver="randomized", random_state=0).fit_transform(x)
        mb = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=1, batch_size=4096).fit(z)
        t_sk = time.perf_counter() - t0
    q2 = cluster_quality(mb.labels_, truth)
    print(f"kmeans sklearn MBK N={n} k={k} pcs={comps}: {t_sk:8.1f} s  peak {mem2.peak_gib:5.2f} GiB  "
          f"ARI vs planted MoA {q2['adjusted_rand']:.3f}")
    print(f"ratio cmapdask / MiniBatchKMeans wall time: {t_dask / t_sk:.2f}")


def bench_recall(m: int, k: int = 100, n_moas: int = 50, chunk: int = 10000) -> None:
    rng = np.random.default_rng(0)
    moa = rng.integers(0, n_moas, m)
    labels = np.array([f"M{i}" for i in moa], dtype=object)
    cells = np.array(["A", "B", "C", "D"], dtype=object)[rng.integers(0, 4, m)]

    def lists(block_info=None, which="top"):
        (lo, hi), _ = block_info[None]["array-location"]
        r = np.random.default_rng([lo, which == "top"])
        idx = r.integers(0, m, (hi - lo, k))
        sc = np.sort(r.uniform(0.2, 1.0, (hi - lo, k)), axis=1)[:, ::-1]
        if which == "bottom":
            sc = -sc
        return idx if block_info[None]["dtype"] == np.int64 else sc

    chunks = ((chunk,) * (m // chunk) + ((m % chunk,) if m % chunk else ()), (k,))

    def arr(which, dtype):
        return da.map_blocks(lambda block_info=None: lists(block_info, which), chunks=chunks,
                             dtype=dtype, meta=np.empty((0, 0), dtype))

    nb = xr.Dataset({"top_index": (("sig", "rank"), arr("top", np.int64)),
                     "top_score": (("sig", "rank"), arr("top", np.float32)),
                     "bottom_index": (("sig", "rank"), arr("bottom", np.int64)),
                     "bottom_score": (("sig", "rank"), arr("bottom", np.float32)),
                     "valid": (("sig",), da.ones(m, bool, chunks=chunk))})
    with dask.config.set(scheduler="threads"), PeakRSS() as mem:
        t0 = time.perf_counter()
        res = moa_recall(nb, labels, cells=cells).compute()
        t = time.perf_counter() - t0
    print(f"moa_recall N={m} k={k}: {t:8.1f} s  peak {mem.peak_gib:5.2f} GiB  "
          f"({len(res['group'])} groups; AUROC all {float(res['auroc'].sel(group='all')):.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-sigs", type=int, default=200_000)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--n-recall", type=int, default=100_000)
    a = p.parse_args()
    bench_recall(a.n_recall)
    bench_kmeans(a.n_sigs, a.k, a.components)


if __name__ == "__main__":
    main()
