from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The Broad's files, copied into the repository (tests/data/README.md says from where).
FIXTURES = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The Broad's fixture folder (``tests/data``, part of the repository)."""
    return FIXTURES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


class RealCluster:
    """A `dask scheduler` and `dask worker` processes on loopback."""

    def __init__(self, tmp: Path, n_workers: int = 2, worker_args: tuple[str, ...] = ()):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.tmp = tmp
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        bin_dir = Path(sys.executable).parent
        dask_cmd = (
            [str(bin_dir / "dask")]
            if (bin_dir / "dask").exists()
            else [sys.executable, "-m", "dask"]
        )
        self._log = open(tmp / "cluster.log", "w")
        self.scheduler = subprocess.Popen(
            [
                *dask_cmd,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dashboard-address",
                ":0",
                "--no-show",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _wait_port(self.port, self.scheduler)
        self.workers = [
            subprocess.Popen(
                [
                    *dask_cmd,
                    "worker",
                    self.address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--memory-limit",
                    "2GiB",
                    "--local-directory",
                    str(tmp / f"w{i}"),
                    "--no-dashboard",
                    *worker_args,
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            for i in range(n_workers)
        ]
        from distributed import Client

        with Client(self.address, timeout="60s") as c:
            c.wait_for_workers(n_workers, timeout=90)

    def close(self) -> None:
        _stop([*self.workers, self.scheduler])
        self._log.close()


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory):
    """A real multi-process Dask cluster (scheduler + 2 workers) on loopback.

    Yields the object; connect with ``distributed.Client(real_cluster.address)``.
    """
    cluster = RealCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster_client(real_cluster):
    from distributed import Client

    with Client(real_cluster.address, timeout="60s") as client:
        yield client


@contextlib.contextmanager
def moto_server(log_dir: Path, bucket: str) -> Iterator[tuple[dict, subprocess.Popen]]:
    """Start moto in server mode on a free loopback port with ``bucket`` created; yield
    s3fs ``storage_options`` and the server process; stop it (resumed if stopped) after."""
    moto = str(Path(sys.executable).parent / "moto_server")  # this environment's, never PATH's
    port = _free_port()
    log = open(log_dir / "moto.log", "w")
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        opts = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        yield opts, proc
    finally:
        if proc.poll() is None:  # a test may have frozen it (SIGSTOP)
            os.kill(proc.pid, signal.SIGCONT)
        _stop([proc])
        log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible HTTP server (moto in server mode) on loopback.

    Yields ``storage_options`` for s3fs; the fixture creates bucket ``cmapdask-test``.
    """
    with moto_server(tmp_path_factory.mktemp("moto"), "cmapdask-test") as (opts, _):
        yield opts
