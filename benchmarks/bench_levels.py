"""Level 4 -> Level 5 (MODZ + replicate statistics) at scale: wall time, peak memory, ratio.

Synthetic Level 4 profiles (float32, N(0, 2), generated lazily block by block so the input
never exists in memory) in replicate groups; by default each group's replicates lie in
three different "plate" thirds of the input, as replicate plates do, so the grouping needs
the lazy reorder. The Level 5 result streams into a new store on disk (write_store),
after the replicate statistics are computed, exactly as ``cmapdask level5`` does.

The baseline is the same arithmetic (cmapdask.levels.kernels.modz_groups) in plain numpy
on an in-memory slice of ``--baseline-rows`` signatures, extrapolated to N per signature;
the ratio is dask wall time / extrapolated numpy time, both measured in this run.

    python3 benchmarks/bench_levels.py                       # 1,000,000 x 978, groups of 3
    python3 benchmarks/bench_levels.py --n-sigs 30000        # a quick look

Peak memory is this process's maximum RSS (threaded scheduler, so the workers are this
process), measured before the baseline runs. Target: <= 4 GB at 1,000,000 signatures.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cmapdask.levels import STAT_COORDS, kernels, level5


def _block(block_id=None, *, rows, n_gene, seed):
    rng = np.random.default_rng([seed, block_id[0]])
    return rng.standard_normal((rows, n_gene), dtype=np.float32) * 2


def synthetic_level4(n_sig, n_gene, rep, *, chunk_rows, layout, seed=0) -> xr.Dataset:
    chunks = [chunk_rows] * (n_sig // chunk_rows) + (
        [n_sig % chunk_rows] if n_sig % chunk_rows else []
    )
    blocks = [
        da.from_delayed(
            dask.delayed(_block)(block_id=(i,), rows=c, n_gene=n_gene, seed=seed),
            shape=(c, n_gene),
            dtype=np.float32,
        )
        for i, c in enumerate(chunks)
    ]
    x = da.concatenate(blocks, axis=0)
    n_group = n_sig // rep
    r = np.arange(n_sig)
    group = r % n_group if layout == "interleaved" else r // rep
    group = np.minimum(group, n_group - 1)
    pert = np.char.add("BRD-", group.astype(str)).astype(object)
    sig = np.char.add("S", r.astype(str)).astype(object)
    return xr.Dataset(
        {"expr": (("sig", "gene"), x)},
        coords={"sig": sig, "gene": [f"g{j}" for j in range(n_gene)], "pert_id": ("sig", pert)},
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-sigs", type=int, default=1_000_000)
    p.add_argument("--n-genes", type=int, default=978)
    p.add_argument("--replicates", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=6000)
    p.add_argument("--layout", choices=["interleaved", "contiguous"], default="interleaved")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--baseline-rows", type=int, default=30_000)
    p.add_argument("--out", default=None, help="output store (default: a temporary folder)")
    args = p.parse_args()

    from cmapdask.io.store import write_store

    ds = synthetic_level4(
        args.n_sigs, args.n_genes, args.replicates, chunk_rows=args.chunk_rows, layout=args.layout
    )
    tmp = tempfile.mkdtemp(prefix="bench_levels_")
    dest = args.out or os.path.join(tmp, "level5.zarr")
    print(
        f"Level 4 -> 5: {args.n_sigs:,} x {args.n_genes} synthetic, groups of "
        f"{args.replicates}, layout {args.layout}, chunk {args.chunk_rows} rows, "
        f"{args.threads} threads"
    )
    try:
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            t0 = time.perf_counter()
            out = level5(
                ds, group_by=["pert_id"], landmarks=list(ds.gene.values), statistics="persist"
            )  # as `cmapdask level5` runs it
            t_plan = time.perf_counter() - t0
            stats = dask.compute(*(out[k].data for k in STAT_COORDS))
            out = out.assign_coords(
                {k: ("sig", v) for k, v in zip(STAT_COORDS, stats, strict=False)}
            )
            t_stats = time.perf_counter() - t0
            write_store(out, dest, chunk_rows=args.chunk_rows)
            wall = time.perf_counter() - t0
        peak = peak_rss_gb()
        print(f"  plan + statistics (persist) {t_plan:7.1f} s")
        print(f"  statistics to metadata     {t_stats - t_plan:8.1f} s")
        print(f"  MODZ streamed to store     {wall - t_stats:8.1f} s")
        print(
            f"  dask wall time             {wall:8.1f} s  ({args.n_sigs / wall:,.0f} signatures/s)"
        )
        print(f"  peak RSS                   {peak:8.2f} GiB (target <= 4 GB)")

        # baseline: the same arithmetic in plain numpy on an in-memory slice
        n_base = min(args.baseline_rows, args.n_sigs) // args.replicates * args.replicates
        base = synthetic_level4(
            n_base,
            args.n_genes,
            args.replicates,
            chunk_rows=args.chunk_rows,
            layout="contiguous",
            seed=1,
        )
        xb = base.expr.values
        t1 = time.perf_counter()
        sizes = np.full(n_base // args.replicates, args.replicates)
        _, weights, _ = kernels.modz_groups(xb, sizes, slice(None), columns=None)
        kernels.weighted_group_sums(xb, sizes, weights)
        t_np = time.perf_counter() - t1
        est = t_np * args.n_sigs / n_base
        print(
            f"  numpy, {n_base:,} in memory   {t_np:8.1f} s  -> {est:,.1f} s for "
            f"{args.n_sigs:,} on one core"
        )
        print(
            f"  ratio dask / numpy         {wall / est:8.2f}  (dask uses {args.threads} threads; "
            "includes generating the input and writing the store)"
        )
    finally:
        if args.out is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
