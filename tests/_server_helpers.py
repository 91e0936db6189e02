"""A small synthetic store with index, τ background and similarity, and a uvicorn server
on a free loopback port, for the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_SIGS = 600


def build_store(root: Path, n_sigs: int = N_SIGS) -> dict:
    """synth -> convert -> index -> background -> similarity, as the demo does."""
    import dask

    from cmapdask import build_background, build_index, convert
    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.similarity import similarity, write_similarity
    from cmapdask.synthetic import synth_design, write_synthetic

    raw, store = root / "release", root / "store.zarr"
    design = synth_design(n_sigs, genes="landmark", seed=0)
    with dask.config.set(scheduler="threads"):
        paths = write_synthetic(str(raw), design, progress=False)
        convert(
            paths["gctx"],
            str(store),
            sig_info=paths["siginfo"],
            gene_info=paths["geneinfo"],
            compound_info=paths["compoundinfo"],
        )
        build_index(str(store), space="landmark")
        pcls = read_gene_sets(paths["pcl"])
        build_background(str(store), space="landmark", pcls=pcls)
        from cmapdask import open_store

        res = similarity(open_store(str(store)), k=10, metric="pearson", space="landmark")
        write_similarity(res, str(store), name="similarity/pearson_landmark")
    return {"store": str(store), "pcl": paths["pcl"], "design": design}


def planted_query(design, moa: int = 0, n: int = 50) -> tuple[list[str], list[str]]:
    """The planted response of one MoA: its ``n`` most up and ``n`` most down genes."""
    from cmapdask.synthetic import synth_moa_directions

    u = synth_moa_directions(design).isel(moa=moa)
    order = np.argsort(-u.values, kind="stable")
    return [str(g) for g in u["gene"].values[order[:n]]], [
        str(g) for g in u["gene"].values[order[-n:]]
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cmapdask serve`` in a subprocess on a loopback port; stop() ends it."""

    def __init__(
        self,
        store: str,
        jobs_dir: Path,
        *extra: str,
        log: Path | None = None,
        env: dict | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **(env or {})}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.log = open(log or (jobs_dir.parent / f"server-{self.port}.log"), "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "cmapdask", "serve", store, "--port", str(self.port)]
        cmd += ["--jobs-dir", str(jobs_dir), "--scheduler", "none", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait()

    def _wait(self, timeout: float = 600.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        text = self.text()
        self.stop()
        raise RuntimeError(f"server did not start in {timeout:.0f} s: {text}")

    def text(self, full: bool = False) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text()
        return text if full else text[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def wait_job(client, job_id: str, timeout: float = 180.0, *, downloads: bool = True) -> dict:
    """The job's status once it is final (and, with ``downloads``, once a done job's
    result folder and archive are written: ``download_status``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"/api/v1/queries/{job_id}").json()
        if s["status"] not in ("queued", "running") and not (
            downloads and s["status"] == "done" and s["download_status"] in ("pending", "writing")
        ):
            return s
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {s}")


def shared_store(tmp_path_factory) -> dict:
    """One store per test session, shared by the server test modules (built once)."""
    import fcntl

    root = tmp_path_factory.getbasetemp() / "server_store"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            build_store(root)
            (root / "done").write_text("ok")
    from cmapdask.synthetic import synth_design

    return {
        "store": str(root / "store.zarr"),
        "pcl": str(root / "release" / "pcl.gmt"),
        "design": synth_design(N_SIGS, genes="landmark", seed=0),
    }


def artifacts_dir() -> Path:
    """Where tests leave screenshots and logs (``tests/artifacts``, git-ignored)."""
    d = Path(__file__).resolve().parent / "artifacts"
    d.mkdir(exist_ok=True)
    return d
