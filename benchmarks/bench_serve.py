"""``cmapdask serve`` under load: concurrent users submitting queries on loopback.

Builds (once) a synthetic landmark store of N signatures with its query index and a τ
background over a Touchstone subset, starts ``cmapdask serve`` in a subprocess, and lets
U simulated users (an asyncio script, httpx) each submit Q queries one after another:
submit, poll the job until done, read the first page of the ranked perturbagens. Prints

- p50 and p95 time from submit to result, queries per minute, errors;
- the server's peak resident memory (server process and its children, e.g. Dask workers);
- the time to a rendered result page (heatmap drawn) in headless Chromium, if present.

Usage::

    python3 benchmarks/bench_serve.py --n-sigs 100000 --users 20 --workdir /tmp/servebench

Each query is a different random pair of 50 up and 50 down landmark genes. The jobs run
on the ``--scheduler`` the server is given (default: a local cluster).

Measured 2026-12-02 on a shared 2-core machine (load average 7-20 from other jobs), local
cluster of 2 workers, ``--job-workers 2``, 20 users x 1 query, zero errors:

    signatures  p50 s  p95 s  queries/min  server peak  rendered result page
    20,000       82    154     7.8         1.22 GiB     0.95 s
    100,000     438    795     1.5         2.21 GiB     1.21 s

With jobs batched (jobs of the same options scored in one query), under keys of their
own, and the summary plan shipped once per batch, measured 2026-12-08 on the same shared
2-core machine (load average 5-12 from other developers' CI; not quiet), local cluster,
``--job-workers 4``, 20,000 signatures, zero errors: 1 user x 3 queries p50 2.4-3.0 s;
20 users x 1 query p50 9-12 s, p95 10-13 s, 95-114 queries/min (19 of the 20 jobs in
one batch). Before that change the text below held:

Most of a job's time was single-threaded Python in the job thread building and tokenizing
the query and summary graphs (``summarize`` pickles its plan to tokenize it), so jobs
queue behind each other on the GIL; the Dask workers are mostly idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np

CELLS = ["A375", "A549", "HA1E", "HCC515", "HEPG2", "HT29", "MCF7", "PC3", "VCAP"]


def build_store(path: str, n_sig: int) -> None:
    from cmapdask import build_background, build_index, write_store
    from cmapdask.io.store import has_member
    from cmapdask.synthetic import synth_dataset, synth_design

    if not os.path.exists(path):
        t = time.perf_counter()
        ds = synth_dataset(synth_design(n_sig, seed=0, genes="landmark"), metadata="ids")
        i = np.arange(n_sig)
        ds = ds.assign_coords(
            pert_type=("sig", np.where(i % 16 == 0, "ctl_vehicle", "trt_cp").astype(object)),
            cell_id=("sig", np.array(CELLS, dtype=object)[(i // 384) % 9]),
            # about 24 signatures per perturbagen, as in the LINCS release
            pert_id=("sig", np.array([f"P{k:05d}" for k in i % max(1, n_sig // 24)], dtype=object)),
            is_touchstone=("sig", (i % 50 == 0).astype(np.int64)),
            feature_space=("gene", np.full(ds.sizes["gene"], "landmark", dtype=object)),
        )
        write_store(ds, path)
        print(f"  store: {n_sig:,} signatures in {time.perf_counter() - t:.1f} s", flush=True)
    if not has_member(path, "index/landmark"):
        t = time.perf_counter()
        build_index(path, space="landmark")
        print(f"  index: {time.perf_counter() - t:.1f} s", flush=True)
    if not has_member(path, "background/landmark"):
        t = time.perf_counter()
        build_background(path, space="landmark", reference="touchstone")
        print(f"  τ background: {time.perf_counter() - t:.1f} s", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peak:
    """Peak summed RSS of a process and its children, sampled in a thread."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak / 2**30


async def _get(client, url, retries, **kw):
    # status polls and reads are idempotent: retry a dropped connection, and count it
    for attempt in range(4):
        try:
            return await client.get(url, **kw)
        except Exception:
            if attempt == 3:
                raise
            retries.append(url)
            await asyncio.sleep(0.2)


async def user(client, genes, rng, n_queries, times, errors, retries):
    for _ in range(n_queries):
        pick = rng.permutation(genes.size)
        body = {
            "queries": [{"up": list(genes[pick[:50]]), "down": list(genes[pick[50:100]])}],
            "space": "landmark",
        }
        t0 = time.perf_counter()
        try:
            r = await client.post("/api/v1/queries", json=body)
            while r.status_code == 429:  # the queue's bound: wait as told, then again
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                r = await client.post("/api/v1/queries", json=body)
            if r.status_code != 202:
                errors.append(f"submit {r.status_code}: {r.text[:200]}")
                continue
            job = r.json()["id"]
            while True:
                s = (await _get(client, f"/api/v1/queries/{job}", retries)).json()
                if s["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.1)
            if s["status"] != "done":
                errors.append(f"job {s['status']}: {s['error']}")
                continue
            r = await _get(
                client,
                f"/api/v1/queries/{job}/results",
                retries,
                params={"level": "pert_summary", "limit": 50},
            )
            if r.status_code != 200:
                errors.append(f"results {r.status_code}")
                continue
            times.append((time.perf_counter() - t0, job))
        except Exception as e:  # count transport errors too
            errors.append(f"{type(e).__name__}: {e!r}")


async def load(url, n_users, n_queries):
    import httpx

    from cmapdask.synthetic import landmark_gene_ids

    genes = np.array(landmark_gene_ids())
    times, errors, retries = [], [], []
    limits = httpx.Limits(max_connections=4 * n_users)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(
            *[
                user(client, genes, np.random.default_rng(u), n_queries, times, errors, retries)
                for u in range(n_users)
            ]
        )
        wall = time.perf_counter() - t0
    return times, errors, retries, wall


def page_time(url: str, job: str) -> float | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        d.get(url + "/")  # warm the browser and the static files' cache once
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            d.get(f"{url}/jobs/{job}")
            WebDriverWait(d, 300).until(
                lambda x: x.find_element(By.ID, "heatmap").get_attribute("data-ready") == "1"
            )
            best.append(time.perf_counter() - t0)
        return float(np.median(best))
    finally:
        d.quit()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sigs", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--queries", type=int, default=3, help="queries per user")
    ap.add_argument("--workdir", default="/tmp/cmapdask-servebench")
    ap.add_argument("--scheduler", default="local", help="passed to cmapdask serve")
    ap.add_argument("--workers", type=int, default=None, help="local cluster workers")
    ap.add_argument("--job-workers", type=int, default=4, help="batches computed at once")
    ap.add_argument(
        "--batch-queries", type=int, default=100, help="queries scored in one pass at most"
    )
    args = ap.parse_args(argv)

    os.makedirs(args.workdir, exist_ok=True)
    store = os.path.join(args.workdir, f"store_{args.n_sigs}.zarr")
    print(f"store: {store}", flush=True)
    build_store(store, args.n_sigs)
    jobs = os.path.join(args.workdir, "jobs")
    shutil.rmtree(jobs, ignore_errors=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cmapdask", "serve", store, "--port", str(port)]
    cmd += ["--jobs-dir", jobs, "--scheduler", args.scheduler, "--quiet"]
    cmd += ["--job-workers", str(args.job_workers), "--max-queue", str(4 * args.users)]
    # every simulated user comes from 127.0.0.1: one client address for the server
    cmd += ["--max-per-client", str(4 * args.users), "--batch-queries", str(args.batch_queries)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    log = open(os.path.join(args.workdir, "server.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/api/v1/info", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        print(f"server up in {time.perf_counter() - t0:.1f} s at {url}", flush=True)
        peak = Peak(proc.pid)
        # one warm-up query (store metadata and index opened in the job workers)
        asyncio.run(load(url, 1, 1))
        times, errors, retries, wall = asyncio.run(load(url, args.users, args.queries))
        mem = peak.stop()
        secs = np.array([t for t, _ in times])
        page = page_time(url, times[0][1]) if times else None
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()
    n = len(times)
    print()
    print(f"signatures                 {args.n_sigs:,}")
    print(f"users x queries            {args.users} x {args.queries} (scheduler {args.scheduler})")
    print(f"completed / errors         {n} / {len(errors)} ({len(retries)} polls retried)")
    if n:
        print(f"submit -> result p50       {np.percentile(secs, 50):.2f} s")
        print(f"submit -> result p95       {np.percentile(secs, 95):.2f} s")
        print(f"queries per minute         {60 * n / wall:.1f}")
    print(f"server peak memory         {mem:.2f} GiB (server and its children)")
    print(
        "rendered result page       "
        + (f"{page:.2f} s (Chromium, heatmap drawn)" if page is not None else "no chromium")
    )
    for e in errors[:5]:
        print(f"  error: {e}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
