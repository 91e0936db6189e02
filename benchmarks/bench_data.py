"""Data access: filters and SQL over 1,000,000 signatures' metadata, and `matrix` of
random signatures from a store on a moto S3 server (loopback).

    python3 benchmarks/bench_data.py [--n-meta 1000000] [--n-store 1000000] [--n-pick 1000]
        [--chunk-mb 32] [--baseline] [--skip-meta]

Prints warm timings (best of 5 after one cold call) for a `sigs` filter and a two-table
SQL join, then the time of `matrix` for `--n-pick` random signatures x 978 genes from an
`--n-store`-signature store on moto S3 (in shards of `--chunk-mb` MiB; `--baseline` also
writes the store in plain chunks of whole signatures and times the same reads), with the
requests each call sent. moto answers a ranged GET by reading the whole object, so large
shards cost it more than they cost S3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import dask
import numpy as np
import pandas as pd
import xarray as xr

import cmapdask
import cmapdask.data as cd


def _tables(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """siginfo and compoundinfo of ``n`` signatures, shaped like the 2020 release's."""
    rng = np.random.default_rng(0)
    n_comp = max(10, n // 40)
    comp = pd.DataFrame(
        {
            "pert_id": [f"BRD-K{i:08d}" for i in range(n_comp)],
            "cmap_name": [f"cmpd-{i}" for i in range(n_comp)],
            "moa": [f"MOA{i % 600:03d}" for i in range(n_comp)],
            "target": [f"T{i % 2000:04d}" for i in range(n_comp)],
        }
    )
    cells = np.array(["MCF7", "PC3", "A549", "A375", "HA1E", "HT29", "VCAP", "HEPG2", "HCC515"])
    pick = rng.integers(0, n_comp, n)
    sig = pd.DataFrame(
        {
            "sig_id": [f"SIG{i:09d}" for i in range(n)],
            "pert_id": comp.pert_id.to_numpy()[pick],
            "cmap_name": comp.cmap_name.to_numpy()[pick],
            "pert_type": np.where(rng.random(n) < 0.9, "trt_cp", "ctl_vehicle"),
            "cell_iname": cells[rng.integers(0, cells.size, n)],
            "pert_idose": np.array(["0.04 uM", "0.37 uM", "1.11 uM", "3.33 uM", "10 uM"])[
                rng.integers(0, 5, n)
            ],
            "pert_itime": np.array(["6 h", "24 h"])[rng.integers(0, 2, n)],
            "is_touchstone": (rng.random(n) < 0.05).astype(int),
            "tas": rng.random(n).round(4),
        }
    )
    return sig, comp


def _meta_store(root: str, n: int) -> str:
    sig, comp = _tables(n)
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), dask.array.zeros((n, 1), dtype=np.float32, chunks=(n, 1)))},
        coords={"sig": sig.sig_id.to_numpy(dtype=object), "gene": np.array(["1"], dtype=object)},
    )
    store = os.path.join(root, "meta.zarr")
    cmapdask.write_store(ds, store)
    cd.write_tables(store, {"siginfo": sig, "compoundinfo": comp})
    return store


def _best(fn, repeat=5) -> float:
    fn()  # cold: reads the tables once
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _moto():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    exe = shutil.which("moto_server") or os.path.join(
        os.path.dirname(sys.executable), "moto_server"
    )
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as c:
            if c.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    opts = {
        "key": "x",
        "secret": "x",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    ).create_bucket(Bucket="bench")
    return proc, opts


def _matrix_bench(args, opts) -> None:
    """``matrix`` of random signatures from a store on moto S3, sharded (the default) and,
    with ``--baseline``, written in plain chunks of whole signatures (same run)."""
    layouts = [("sharded", {})]
    if args.baseline:
        layouts.append(("plain chunks", {"cmapdask.store.inner_kb": 0}))
    design = cmapdask.synth_design(args.n_store, genes="landmark", seed=0)
    data = cmapdask.synth_dataset(design)
    sig, _ = _tables(args.n_store)  # metadata fields, read by open_store like a release's
    data = data.assign_coords({k: ("sig", sig[k].to_numpy()) for k in sig if k != "sig_id"})
    for label, cfg in layouts:
        url = f"s3://bench/{uuid.uuid4().hex[:8]}/store.zarr"
        t = time.perf_counter()
        with dask.config.set({**cfg, "cmapdask.store.chunk_mb": args.chunk_mb}):
            cmapdask.write_store(data, url, storage_options=opts)
        print(
            f"\n{label}: store on moto S3, {args.n_store:,} x 978, {args.chunk_mb:g} MiB "
            f"chunks: written in {time.perf_counter() - t:.1f} s"
        )
        t = time.perf_counter()
        ds = cmapdask.open_store(url, storage_options=opts)
        t_open = time.perf_counter() - t
        n_fields = sum(c.dims == ("sig",) for c in ds.coords.values())
        print(f"  open_store (ids and {n_fields} metadata fields): {t_open:.2f} s, cold")
        per = _request_cost(opts)
        print(
            f"  moto itself: {per * 1e3:.1f} ms per small ranged GET through s3fs ({1 / per:.0f}/s)"
        )
        for n_pick in args.n_pick:
            _picks(url, opts, ds, n_pick, args.repeat, per)


def _picks(url, opts, ds, n_pick: int, repeat: int, per: float) -> None:
    from cmapdask.io.store.read import take_sigs
    from cmapdask.io.store.shards import ShardedMatrix

    ids = ds.sig.values
    rng = np.random.default_rng(n_pick)
    calls, takes, reqs = [], [], []
    real = ShardedMatrix._fetch

    def counting(self, fs, r, _real=real, reqs=reqs):
        reqs.append(len(r))
        return _real(self, fs, r)

    ShardedMatrix._fetch = counting
    try:
        for _ in range(repeat):
            pos = rng.choice(ids.size, n_pick, replace=False)
            reqs.clear()
            t = time.perf_counter()
            m = cd.matrix(url, sigs=list(ids[pos]), storage_options=opts).expr.values
            calls.append(time.perf_counter() - t)
            t = time.perf_counter()
            v = take_sigs(ds, pos, storage_options=opts).expr.values
            takes.append(time.perf_counter() - t)
            assert np.array_equal(m, v, equal_nan=True)
            n_req = sum(reqs) // 2
    finally:
        ShardedMatrix._fetch = real
    target = "  (target <= 2 s at 1M signatures)" if n_pick == 1000 else ""
    print(
        f"  matrix of {n_pick:>5} random signatures x {m.shape[1]}: {np.median(calls):6.2f} s "
        f"median of {repeat} (the read alone {np.median(takes):6.2f} s); "
        + (f"{n_req} requests (>= {n_req * per:.2f} s of moto's)" if n_req else "whole chunks")
        + target
    )


def _request_cost(opts, n: int = 500) -> float:
    """Seconds per small ranged GET on the moto server (s3fs, concurrent): the floor of
    any read that needs that many requests."""
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.pipe_file("bench/probe", bytes(4096))
    fs.cat_ranges(["bench/probe"] * 10, [0] * 10, [4096] * 10)
    t = time.perf_counter()
    fs.cat_ranges(["bench/probe"] * n, [0] * n, [4096] * n)
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-meta", type=int, default=1_000_000)
    ap.add_argument("--n-store", type=int, default=1_000_000)
    ap.add_argument("--n-pick", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--chunk-mb", type=float, default=32, help="store chunk (shard) size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", action="store_true", help="also a store of plain chunks")
    ap.add_argument("--skip-meta", action="store_true", help="only the matrix benchmark")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-data-")
    try:
        with dask.config.set(scheduler="threads"):
            if not args.skip_meta:
                t = time.perf_counter()
                store = _meta_store(root, args.n_meta)
                print(
                    f"metadata store, {args.n_meta:,} signatures: made in {time.perf_counter() - t:.1f} s"
                )
                t = time.perf_counter()
                cd.sigs(store, cell_iname="MCF7")
                print(f"first call (reads the tables)          {time.perf_counter() - t:7.3f} s")
                f = _best(
                    lambda: cd.sigs(
                        store,
                        cmap_name="cmpd-7,cmpd-9",
                        cell_iname="MCF7",
                        pert_idose="10 µM",
                        pert_itime="24 h",
                    )
                )
                print(f"sigs filter, warm (best of 5)          {f:7.3f} s   (target <= 0.2)")
                q = (
                    "SELECT c.moa, count(*) AS n FROM siginfo s JOIN compoundinfo c "
                    "USING (pert_id) WHERE s.cell_iname = 'MCF7' GROUP BY 1 ORDER BY 2 DESC"
                )
                j = _best(lambda: cd.sql(store, q))
                print(f"two-table SQL join, warm (best of 5)   {j:7.3f} s   (target <= 0.2)")

            proc, opts = _moto()
            try:
                _matrix_bench(args, opts)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
