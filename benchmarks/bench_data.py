"""Data access: filters and SQL over 1,000,000 signatures' metadata, and `matrix` of
random signatures from a store on a moto S3 server (loopback).

    python3 benchmarks/bench_data.py [--n-meta 1000000] [--n-store 100000] [--n-pick 1000]

Prints warm timings (best of 5 after one cold call) for a `sigs` filter and a two-table
SQL join, then the time to read `--n-pick` random signatures x 978 genes from an
`--n-store`-signature store on moto S3, with the bytes the store had to read (whole
chunks: a random pick touches nearly every chunk of the store, see the note printed).
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


def _meta_store(root: str, n: int) -> str:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-meta", type=int, default=1_000_000)
    ap.add_argument("--n-store", type=int, default=100_000)
    ap.add_argument("--n-pick", type=int, default=1000)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-data-")
    try:
        with dask.config.set(scheduler="threads"):
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
                url = f"s3://bench/{uuid.uuid4().hex[:8]}/store.zarr"
                design = cmapdask.synth_design(args.n_store, genes="landmark", seed=0)
                t = time.perf_counter()
                cmapdask.write_store(cmapdask.synth_dataset(design), url, storage_options=opts)
                print(
                    f"\nstore on moto S3, {args.n_store:,} x 978: written in "
                    f"{time.perf_counter() - t:.1f} s"
                )
                ids = cmapdask.open_store(url, storage_options=opts).sig.values
                rng = np.random.default_rng(1)
                times = []
                for _ in range(3):
                    pick = list(ids[rng.choice(ids.size, args.n_pick, replace=False)])
                    t = time.perf_counter()
                    m = cd.matrix(url, sigs=pick, storage_options=opts).expr.values
                    times.append(time.perf_counter() - t)
                rows = cmapdask.open_store(url, storage_options=opts).expr.data.chunks[0][0]
                n_chunks = -(-args.n_store // rows)
                print(
                    f"matrix of {args.n_pick} random signatures x {m.shape[1]} genes: "
                    f"{min(times):.2f} s best, {np.median(times):.2f} s median "
                    f"(target <= 2 s at 1M signatures)"
                )
                print(
                    f"  store chunks: {rows} signatures ({rows * 978 * 4 / 2**20:.0f} MiB); a "
                    f"random pick of {args.n_pick} touches ~"
                    f"{n_chunks * (1 - (1 - 1 / n_chunks) ** args.n_pick):.0f} of {n_chunks}"
                )
            finally:
                proc.terminate()
                proc.wait(timeout=20)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
