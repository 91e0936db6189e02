"""Benchmark: GCTx -> Zarr store conversion against the unavoidable work.

Usage::

    python benchmarks/bench_convert.py [--n-sigs 100000] [--genes 12328] [--workdir DIR]
                                       [--workers 2] [--keep]

Writes a synthetic GCTx in the reference layout (100,000 x 12,328 float32 = 4.6 GiB of
matrix; 5.0 GB on disk), then measures in the same run:

1. the unavoidable work: a plain loop that reads each store chunk's slab with h5py and
   compresses it with the store's codec (blosc-zstd, same level and shuffle), one core;
2. ``cmapdask.convert`` on a LocalCluster of ``--workers`` processes (checksum on),
   its wall time, throughput and the peak resident memory of all processes.

Prints the figures and the ratio conversion / unavoidable (target <= 1.5) and the peak
memory (target <= 1.5 GB). Both steps read the GCTx through the page cache after it is
written, so neither is favoured by a cold disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr
from numcodecs import Blosc

sys.path.insert(0, os.path.dirname(__file__))
from _measure import PeakRSS  # noqa: E402

from cmapdask import config  # noqa: E402
from cmapdask.io.gctx import MATRIX_PATH, reference_chunks, write_gctx  # noqa: E402
from cmapdask.io.store import convert, store_chunk_rows  # noqa: E402


def make_gctx(path: str, n_sig: int, n_gene: int) -> None:
    rng = da.random.default_rng(0)
    x = rng.standard_normal((n_sig, n_gene), chunks=(2000, n_gene), dtype=np.float32)
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), x)},
        coords={
            "sig": np.array([f"SYN{i:07d}:A{i % 384:03d}" for i in range(n_sig)], dtype=object),
            "gene": np.array([str(10000 + i) for i in range(n_gene)], dtype=object),
        },
    )
    with dask.config.set(scheduler="threads"):
        write_gctx(ds, path)


def unavoidable(path: str, rows: int) -> tuple[float, int]:
    """Read each chunk's slab with h5py and compress it with the store's codec."""
    clevel = int(config.get("store.clevel", 3))
    codec = Blosc(cname="zstd", clevel=clevel, shuffle=Blosc.SHUFFLE)
    t0 = time.perf_counter()
    stored = 0
    with h5py.File(path, "r") as f:
        m = f[MATRIX_PATH]
        for start in range(0, m.shape[0], rows):
            slab = m[start : start + rows, :]
            stored += len(codec.encode(np.ascontiguousarray(slab)))
    return time.perf_counter() - t0, stored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-sigs", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=12_328)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="cmapdask-bench-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, f"bench_n{args.n_sigs}x{args.genes}.gctx")
    dest = os.path.join(work, "bench.zarr")
    try:
        if not os.path.exists(src):
            t0 = time.perf_counter()
            make_gctx(src, args.n_sigs, args.genes)
            print(f"made {src}: {os.path.getsize(src) / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
        size = os.path.getsize(src)
        file_rows = reference_chunks(args.n_sigs, args.genes)[0]
        rows = store_chunk_rows(args.genes, file_rows=file_rows)

        t_base, stored_base = unavoidable(src, rows)

        from distributed import Client, LocalCluster

        shutil.rmtree(dest, ignore_errors=True)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", memory_limit="1GiB") as cluster, Client(cluster):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                convert(src, dest)
                t_conv = time.perf_counter() - t0
        stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dest) for f in fs)

        print(f"input            {args.n_sigs} x {args.genes} float32, {size / 1e9:.2f} GB GCTx")
        print(f"store chunks     {rows} signatures x {args.genes} genes ({rows * args.genes * 4 / 2**20:.0f} MiB raw)")
        print(f"unavoidable      {t_base:.1f} s  (h5py slab reads + blosc-zstd, one loop; {stored_base / 1e9:.2f} GB compressed)")
        print(f"convert          {t_conv:.1f} s  ({size / 1e6 / t_conv:.0f} MB/s; {args.workers} worker processes, sha256 on)")
        print(f"stored           {stored / 1e9:.2f} GB")
        print(f"peak RSS (all)   {mem.peak_gib:.2f} GiB  (target <= 1.5 GB)")
        print(f"ratio            convert / unavoidable = {t_conv / t_base:.2f}  (target <= 1.5)")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
