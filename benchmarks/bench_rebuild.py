#!/usr/bin/env python3
"""Incremental vs full nightly rebuild, measured in the same run.

    python benchmarks/bench_rebuild.py [--n 100000] [--frac 0.01] [--k 100] [--workers 2]

Builds a collection of ``n * (1 - frac)`` synthetic landmark signatures (published with a
full rebuild: setup, not timed), appends ``n * frac`` new ones, then times
(1) the incremental rebuild (new x all folded into the lists) and (2) a full rebuild of
all ``n`` from scratch, and prints both and their ratio (target <= 0.05 at n = 100,000,
frac = 0.01). Also checks the two give the same neighbours.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _measure import PeakRSS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--frac", type=float, default=0.01)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()

    from distributed import Client, LocalCluster

    from cmapdask.io.gctx import write_gctx
    from cmapdask.io.store import open_member
    from cmapdask.rebuild import append, open_current, rebuild
    from cmapdask.synthetic import synth_dataset, synth_design

    n_new = max(1, int(round(a.n * a.frac)))
    n_old = a.n - n_new
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp, \
            LocalCluster(n_workers=a.workers, threads_per_worker=1, dashboard_address=":0") as cl, \
            Client(cl) as client:
        print(f"dashboard {client.dashboard_link}", file=sys.stderr)
        ds = synth_dataset(synth_design(a.n, seed=11), metadata="ids")
        old, new = f"{tmp}/old.gctx", f"{tmp}/new.gctx"
        write_gctx(ds.isel(sig=slice(0, n_old)), old)
        write_gctx(ds.isel(sig=slice(n_old, None)), new)
        root = f"{tmp}/coll"
        opts = {"k": a.k, "space": "all", "block_size": a.block_size}
        t = time.perf_counter()
        append(root, old)
        rebuild(root, **opts)
        setup = time.perf_counter() - t
        t = time.perf_counter()
        append(root, new)
        t_append = time.perf_counter() - t
        with PeakRSS() as mem_inc:
            t = time.perf_counter()
            inc = rebuild(root, **opts)
            t_inc = time.perf_counter() - t
        m_inc = open_member(open_current(root).attrs["store_url"], "similarity/pearson_all")
        top_inc = m_inc["top_index"].values
        with PeakRSS() as mem_full:
            t = time.perf_counter()
            full = rebuild(root, full=True, **opts)
            t_full = time.perf_counter() - t
        m_full = open_member(open_current(root).attrs["store_url"], "similarity/pearson_all")
        same = bool(np.array_equal(top_inc, m_full["top_index"].values))
    assert inc.mode == "incremental" and full.mode == "full"
    print(f"signatures            {a.n:>10,} ({n_new:,} new, k={a.k}, {a.workers} workers)")
    print(f"setup (first full)    {setup:10.2f} s")
    print(f"append {n_new:>6} sigs     {t_append:10.2f} s")
    print(f"incremental rebuild   {t_inc:10.2f} s   peak RSS {mem_inc.peak / 2**30:.2f} GiB")
    print(f"full rebuild          {t_full:10.2f} s   peak RSS {mem_full.peak / 2**30:.2f} GiB")
    print(f"ratio incremental / full   {t_inc / t_full:.3f}  (target <= 0.05)")
    print(f"(append + incremental) / full   {(t_append + t_inc) / t_full:.3f}")
    print(f"same neighbours       {same}")
    print(f"stage timings, incremental: {inc.timings}")
    print(f"stage timings, full:        {full.timings}")


if __name__ == "__main__":
    main()
