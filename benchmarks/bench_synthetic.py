"""Synthetic data generation speed and memory: prints figures, asserts nothing.

    python3 benchmarks/bench_synthetic.py [--sigs 100000] [--genes landmark] [--write]

Prints, for ``--sigs`` signatures:
- values through ``iter_synth_blocks`` (one thread), and in the same run the baseline
  it cannot beat: drawing the same number of float32 N(0, 1) values with numpy alone
  (the noise term), with the ratio;
- values through ``synth_expr(...).sum()`` on dask's threaded scheduler;
- siginfo rows through ``synth_siginfo`` in blocks;
- with ``--write``: ``write_synthetic`` into a temporary folder (GCTx + tables), its size;
- peak resident memory of the process, and a linear extrapolation to 1,000,000 signatures.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import dask
import numpy as np

from cmapdask.synthetic import (
    iter_synth_blocks,
    synth_design,
    synth_expr,
    synth_siginfo,
    write_synthetic,
)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sigs", type=int, default=100_000)
    ap.add_argument("--genes", choices=["landmark", "bing", "all"], default="landmark")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--write", action="store_true", help="also time write_synthetic")
    args = ap.parse_args()
    design = synth_design(args.sigs, genes=args.genes, seed=0)
    n = design.n_sigs
    gb = n * design.n_genes * 4 / 1e9
    print(f"design: {design}")
    print(f"values: {n} x {design.n_genes} float32 = {gb:.2f} GB; cores: {os.cpu_count()}")

    def blocks():
        for _ in iter_synth_blocks(design, block_size=args.block_size):
            pass

    def baseline():
        rng = np.random.default_rng(0)
        rows = 65536 * 4 // design.n_genes * 64
        for lo in range(0, n, rows):
            rng.standard_normal((min(rows, n - lo), design.n_genes), dtype=np.float32)

    t_gen = timed(blocks)
    t_base = timed(baseline)
    print(
        f"iter_synth_blocks (1 thread): {t_gen:7.2f} s  {n / t_gen:10.0f} sig/s  "
        f"{gb / t_gen * 1e3:7.0f} MB/s"
    )
    print(
        f"baseline numpy N(0,1) only:   {t_base:7.2f} s  {n / t_base:10.0f} sig/s  "
        f"ratio generator/baseline = {t_gen / t_base:.2f}"
    )
    with dask.config.set(scheduler="threads"):
        t_dask = timed(lambda: synth_expr(design, chunks=args.block_size).sum().compute())
    print(f"synth_expr().sum() (threads): {t_dask:7.2f} s  {n / t_dask:10.0f} sig/s")

    def siginfo():
        step = 50_000
        for lo in range(0, n, step):
            synth_siginfo(design, start=lo, stop=min(n, lo + step))

    t_sig = timed(siginfo)
    print(f"synth_siginfo (blocks):       {t_sig:7.2f} s  {n / t_sig:10.0f} sig/s")
    total = t_gen + t_sig
    if args.write:
        with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
            t_write = timed(lambda: write_synthetic(tmp, design, block_size=args.block_size))
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e9
        print(
            f"write_synthetic (threads):    {t_write:7.2f} s  {n / t_write:10.0f} sig/s  "
            f"{size:.2f} GB written"
        )
        total = t_write
    print(f"peak RSS: {peak_rss_mb():.0f} MB (bounded by blocks, not by n)")
    print(f"extrapolated to 1,000,000 signatures: {total * 1e6 / n / 60:.1f} min")


if __name__ == "__main__":
    main()
