"""Benchmark: read throughput of a virtual store beside the copied store, same run.

Usage::

    python3 benchmarks/bench_virtual.py [--n-sigs 20000] [--genes 978] [--pick 2000]
        [--layouts reference,gzip,contiguous] [--workdir DIR] [--repeat 3]

For each layout of a synthetic GCTx (``reference``: cmapdask.write_gctx's chunks,
``gzip``: the same chunks deflated, ``contiguous``: no chunks) writes the file, converts
it twice (copied: ``convert``; virtual: ``convert(..., virtual=True)``), then, on the
threaded scheduler, with the file and the store in the page cache (each read once
before timing), times

- ``all``: every signature (``expr.sum()``), and
- ``pick``: ``--pick`` random signatures (sorted positions, ``expr[idx]``),

from each store, best of ``--repeat``, and prints MB/s of float32 delivered (signatures x
genes x 4 bytes / seconds). Conversion times are printed too (virtual: metadata and the
chunk index only, with the checksum off for both).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import dask
import numpy as np
import xarray as xr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import cmapdask  # noqa: E402
from cmapdask.io.gctx import MATRIX_PATH  # noqa: E402


def make_gctx(path, n_sig, n_gene, layout):
    rng = np.random.default_rng(0)
    expr = rng.normal(size=(n_sig, n_gene)).astype(np.float32)
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), expr)},
        coords={
            "sig": np.array([f"S{i}" for i in range(n_sig)], dtype=object),
            "gene": np.array([str(1000 + i) for i in range(n_gene)], dtype=object),
        },
    )
    cmapdask.write_gctx(ds, path, compression="gzip" if layout == "gzip" else "none")
    if layout == "contiguous":
        import h5py

        with h5py.File(path, "r+") as f:
            del f[MATRIX_PATH]
            f.create_dataset(MATRIX_PATH, data=expr)
    return path


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-sigs", type=int, default=20000)
    ap.add_argument("--genes", type=int, default=978)
    ap.add_argument("--pick", type=int, default=2000)
    ap.add_argument("--layouts", default="reference,gzip,contiguous")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-virtual-")
    os.makedirs(work, exist_ok=True)
    n, g = args.n_sigs, args.genes
    idx = np.sort(np.random.default_rng(1).choice(n, min(args.pick, n), replace=False))
    print(f"# {n} signatures x {g} genes float32 ({n * g * 4 / 1e6:.0f} MB); pick {len(idx)}")
    print(f"# {'layout':<11} {'store':<8} {'convert s':>9} {'all MB/s':>9} {'pick MB/s':>10}")
    with dask.config.set(scheduler="threads"):
        for layout in args.layouts.split(","):
            src = make_gctx(os.path.join(work, f"{layout}.gctx"), n, g, layout)
            rows = {}
            for kind in ("copied", "virtual"):
                dest = os.path.join(work, f"{layout}-{kind}.zarr")
                shutil.rmtree(dest, ignore_errors=True)
                t0 = time.perf_counter()
                cmapdask.convert(src, dest, virtual=kind == "virtual", checksum=False)
                conv = time.perf_counter() - t0
                ds = cmapdask.open_store(dest)
                expr = ds["expr"].data
                expr.sum().compute()  # page cache warm for both
                t_all = best(lambda e=expr: e.sum().compute(), args.repeat)
                t_pick = best(lambda e=expr: e[idx].compute(), args.repeat)
                rows[kind] = ds
                print(
                    f"  {layout:<11} {kind:<8} {conv:>9.2f} {n * g * 4 / 1e6 / t_all:>9.0f} "
                    f"{len(idx) * g * 4 / 1e6 / t_pick:>10.0f}"
                )
            same = np.array_equal(
                rows["copied"]["expr"][idx[:50]].values, rows["virtual"]["expr"][idx[:50]].values
            )
            print(f"  {layout:<11} values equal: {same}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
