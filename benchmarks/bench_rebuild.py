#!/usr/bin/env python3
"""Incremental vs full nightly rebuild, measured in the same run.

    python benchmarks/bench_rebuild.py [--n 100000] [--frac 0.01] [--k 100] [--workers 2]
        [--block-size ROWS] [--index | --no-index]

Builds a collection of ``n * (1 - frac)`` synthetic landmark signatures (published with a
full rebuild, plus a query index: setup, not timed), appends ``n * frac`` new ones, then
times (1) the incremental rebuild (new x all folded into the lists, index extended) and
(2) a full rebuild of all ``n`` from scratch (similarity and index), and prints both,
their stage timings and their ratio (target <= 0.05 at n = 100,000, frac = 0.01). Also
compares the two results' neighbours: equal, or how many entries differ and by how much
(float32 products of differently shaped blocks may differ in the last bit, which can swap
two neighbours whose scores tie to within that bit).
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
    ap.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="signatures per similarity block (default: the store's chunks)",
    )
    ap.add_argument(
        "--index",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the collection a query index (extended by the rebuild)",
    )
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()

    from distributed import Client, LocalCluster

    from cmapdask.io.gctx import write_gctx
    from cmapdask.io.store import open_member
    from cmapdask.rebuild import append, open_current, read_manifest, rebuild
    from cmapdask.synthetic import synth_dataset, synth_design

    n_new = max(1, int(round(a.n * a.frac)))
    n_old = a.n - n_new
    with (
        tempfile.TemporaryDirectory(dir=a.dir) as tmp,
        LocalCluster(n_workers=a.workers, threads_per_worker=1, dashboard_address=":0") as cl,
        Client(cl) as client,
    ):
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
        if a.index:
            from cmapdask.connectivity import build_index

            build_index(open_current(root).attrs["store_url"], space="all")
        setup = time.perf_counter() - t
        t = time.perf_counter()
        append(root, new)
        t_append = time.perf_counter() - t
        with PeakRSS() as mem_inc:
            t = time.perf_counter()
            inc = rebuild(root, **opts)
            t_inc = time.perf_counter() - t
        m_inc = open_member(open_current(root).attrs["store_url"], "similarity/pearson_all")
        m_inc = m_inc[["top_index", "top_score", "bottom_index", "bottom_score"]].compute()
        with PeakRSS() as mem_full:
            t = time.perf_counter()
            full = rebuild(root, full=True, **opts)
            t_full = time.perf_counter() - t
        m_full = open_member(open_current(root).attrs["store_url"], "similarity/pearson_all")
        m_full = m_full[["top_index", "top_score", "bottom_index", "bottom_score"]].compute()
        products = [
            f"products, {name}: "
            + "; ".join(
                f"{p['member']} {p['how']} {p['seconds']:.2f} s"
                for p in read_manifest(root, res.version)["products"]
            )
            for name, res in (("incremental", inc), ("full", full))
        ]
        diff = {}
        for tail in ("top", "bottom"):
            d = m_inc[f"{tail}_index"].values != m_full[f"{tail}_index"].values
            ds_ = np.abs(m_inc[f"{tail}_score"].values - m_full[f"{tail}_score"].values)
            diff[tail] = (int(d.sum()), int(d.any(1).sum()), float(np.nanmax(ds_, initial=0)))
    assert inc.mode == "incremental" and full.mode == "full"
    print(f"signatures            {a.n:>10,} ({n_new:,} new, k={a.k}, {a.workers} workers)")
    print(f"setup (first full)    {setup:10.2f} s")
    print(f"append {n_new:>6} sigs     {t_append:10.2f} s")
    print(f"incremental rebuild   {t_inc:10.2f} s   peak RSS {mem_inc.peak / 2**30:.2f} GiB")
    print(f"full rebuild          {t_full:10.2f} s   peak RSS {mem_full.peak / 2**30:.2f} GiB")
    print(f"ratio incremental / full   {t_inc / t_full:.3f}  (target <= 0.05)")
    print(f"(append + incremental) / full   {(t_append + t_inc) / t_full:.3f}")
    for tail, (n_ent, n_rows, dmax) in diff.items():
        print(
            f"{tail:6s} lists: {n_ent} entries in {n_rows} rows differ from the full rebuild; "
            f"max |score difference| {dmax:.2e}"
        )
    print(f"stage timings, incremental: {inc.timings}")
    print(f"stage timings, full:        {full.timings}")
    for line in products:
        print(line)


if __name__ == "__main__":
    main()
