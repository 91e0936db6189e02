"""The command line's runtime: no hangs, bounded failures (exit 75), Ctrl-C, progress.

Commands run as real subprocesses (``python -m cmapdask``) against real schedulers,
workers and an S3 server, as a user meets them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import RealCluster

ROOT = Path(__file__).resolve().parent.parent
N_SIG, N_GENE = 240, 1500
PERT_TYPES = np.array(["trt_cp", "trt_sh", "ctl_vehicle"])


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_CMAPDASK__")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CMAPDASK_PROGRESS", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cli(*args, timeout=600, **kw):
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kw.pop("env", None) or _env(),
        **kw,
    )


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("cmapdask: ")]


def _assert_one_line_failure(proc, code):
    assert proc.returncode == code, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("cmapdask: error:")]
    assert len(errors) == 1, proc.stderr
    assert _error_lines(proc.stderr) == [], proc.stderr  # no traceback, no asyncio noise


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """The hang's reproduction: 240 signatures x 1,500 genes, pert_id, pert_type and
    cell_id in siginfo, an index of the whole space and six queries of 50 + 50 genes."""
    import dask

    from cmapdask.connectivity.index import build_index
    from cmapdask.io.store import write_store

    d = tmp_path_factory.mktemp("repro")
    rng = np.random.default_rng(7)
    genes = np.array([f"{1000 + i}" for i in range(N_GENE)], dtype=object)
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), rng.normal(size=(N_SIG, N_GENE)).astype(np.float32))},
        coords={
            "sig": np.array([f"S{i:03d}" for i in range(N_SIG)], dtype=object),
            "gene": genes,
            "pert_type": (
                "sig",
                np.array(["trt_cp", "trt_sh", "ctl_vehicle"])[np.arange(N_SIG) % 3],
            ),
            "cell_id": ("sig", np.array(["MCF7", "A375", "PC3"])[rng.integers(0, 3, N_SIG)]),
            "pert_id": ("sig", np.array([f"P{i}" for i in rng.integers(0, 20, N_SIG)])),
        },
    )
    store = str(d / "s.zarr")
    write_store(ds, store, chunk_rows=40)
    with dask.config.set(scheduler="threads"):
        build_index(store, space="all", chunk_rows=40)
    with open(d / "up.gmt", "w") as up, open(d / "dn.gmt", "w") as dn:
        for q in range(6):
            pick = rng.permutation(N_GENE)
            up.write("\t".join([f"q{q}_UP", "x", *genes[pick[:50]]]) + "\n")
            dn.write("\t".join([f"q{q}_DN", "x", *genes[pick[50:100]]]) + "\n")
    return {"dir": d, "store": store, "up": str(d / "up.gmt"), "dn": str(d / "dn.gmt")}


def _query_args(r, out, *extra):
    return ["query", r["store"], "--space", "all", "--up", r["up"], "--down", r["dn"]] + [
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _matrix(folder, name="matrices/gutc/ns_sig.gctx"):
    import h5py

    with h5py.File(Path(folder) / name, "r") as f:
        return np.asarray(f["/0/DATA/0/matrix"][()])


@pytest.fixture(scope="module")
def reference(repro, tmp_path_factory):
    """The query's result folder computed with threads in this process (no cluster)."""
    from cmapdask.cli import main

    out = tmp_path_factory.mktemp("ref") / "res"
    assert main(_query_args(repro, out, "--scheduler", "none")) == 0
    return out


def test_write_result_submits_one_graph(repro):
    """The cause of the hang: the result and its summaries (built on the result's lazy
    graph) were submitted as two overlapping graphs, each optimised on its own, so a
    shared key was a fused task in one and a plain one in the other; the scheduler then
    lost task priorities and deadlocked. Now one graph is submitted, once."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    from cmapdask.connectivity.query import query
    from cmapdask.connectivity.results import summarize, write_result

    class Count(SchedulerPlugin):
        def __init__(self):
            self.graphs = 0

        def update_graph(self, scheduler, **kw):
            self.graphs += 1

    with pytest.warns(UserWarning, match="background"):
        res = query(repro["store"], repro["up"], repro["dn"], space="all")
    plugin = Count()
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        cluster.scheduler.add_plugin(plugin)
        write_result(res, repro["dir"] / "one", summaries=summarize(res))
    assert plugin.graphs == 1
    assert _matrix(repro["dir"] / "one").shape == (6, N_SIG)


def _repeat_query(repro, reference, tmp_path, runs):
    want = _matrix(reference)
    env = _env(DASK_CMAPDASK__RUNTIME__STALL_TIMEOUT="60")
    for i in range(runs):
        out = tmp_path / f"run{i}"
        proc = _cli(*_query_args(repro, out, "--workers", "3"), env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(_matrix(out), want, rtol=1e-5, atol=1e-6)


def test_query_on_local_cluster_repeated(repro, reference, tmp_path):
    """The reproduction through the CLI on the default local cluster (used to hang in
    four runs out of six)."""
    _repeat_query(repro, reference, tmp_path, 2)


@pytest.mark.slow
def test_query_on_local_cluster_repeated_many(repro, reference, tmp_path):
    _repeat_query(repro, reference, tmp_path, 5)


# ----------------------------------------------------------------- bad or dead schedulers


def test_unreachable_scheduler_is_one_line_exit_75(repro, tmp_path):
    env = _env(DASK_CMAPDASK__RUNTIME__CONNECT_TIMEOUT="2")
    proc = _cli(*_query_args(repro, tmp_path / "x", "--scheduler", "tcp://127.0.0.1:1"), env=env)
    _assert_one_line_failure(proc, 75)
    assert "tcp://127.0.0.1:1" in proc.stderr


def test_missing_scheduler_file_is_one_line_exit_2(repro, tmp_path):
    missing = tmp_path / "nowhere" / "scheduler.json"
    proc = _cli(*_query_args(repro, tmp_path / "x", "--scheduler", missing))
    _assert_one_line_failure(proc, 2)
    assert str(missing) in proc.stderr


def test_cluster_is_a_deprecated_alias(repro, tmp_path):
    from cmapdask.cli import build_parser

    args = build_parser().parse_args(_query_args(repro, tmp_path / "x", "--cluster", "none"))
    assert args.scheduler == "none"


@pytest.fixture
def own_cluster(tmp_path):
    """A scheduler and two worker processes (with nannies) that a test may kill."""
    cluster = RealCluster(tmp_path, n_workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


def _pending(dask_scheduler=None):
    return sum(
        1
        for ts in list(dask_scheduler.tasks.values())
        if ts.state in ("waiting", "processing", "queued", "no-worker")
    )


def _when_busy(address, action, stop: threading.Event, done: list):
    """Call ``action(client)`` once the scheduler has work pending (a graph submitted and
    not finished)."""
    from distributed import Client

    from cmapdask.cli.runtime import _by_value

    pending = _by_value(_pending)  # shipped by value: the scheduler need not import tests
    with Client(address, timeout="30s") as client:
        while not stop.is_set():
            try:
                busy = client.run_on_scheduler(pending) > 0
            except Exception:  # a slow answer on a loaded machine: ask again until stopped
                time.sleep(0.05)
                continue
            if busy:
                done.append(action(client))
                return
            time.sleep(0.01)


def _run_with(address, args, action, env):
    stop, done = threading.Event(), []
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmapdask", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watcher = threading.Thread(target=_when_busy, args=(address, action, stop, done))
    watcher.start()
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        stop.set()
        watcher.join(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), done


def _kill_a_worker(client):
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    os.kill(victim, signal.SIGKILL)
    return victim


def test_worker_killed_mid_query(repro, reference, own_cluster, tmp_path):
    env = _env(DASK_CMAPDASK__RUNTIME__STALL_TIMEOUT="120")
    out = tmp_path / "res"
    proc, killed = _run_with(
        own_cluster.address,
        _query_args(repro, out, "--scheduler", own_cluster.address),
        _kill_a_worker,
        env,
    )
    assert killed, "the query finished before a worker could be killed"
    if proc.returncode == 0:
        np.testing.assert_allclose(_matrix(out), _matrix(reference), rtol=1e-5, atol=1e-6)
    else:
        _assert_one_line_failure(proc, 75)


def test_worker_killed_mid_similarity(repro, own_cluster, tmp_path):
    import dask

    from cmapdask.io.store import open_store
    from cmapdask.similarity import similarity

    ds = open_store(repro["store"])
    with dask.config.set(scheduler="threads"):
        want = similarity(ds, metric="pearson", k=5, space="all", block_size=20).compute()
    out = tmp_path / "sim.zarr"
    env = _env(DASK_CMAPDASK__RUNTIME__STALL_TIMEOUT="120")
    args = ["similarity", repro["store"], "--k", "5", "--space", "all", "--block-size", "20"]
    args += ["--out", out, "--scheduler", own_cluster.address, "--quiet"]
    proc, killed = _run_with(own_cluster.address, args, _kill_a_worker, env)
    assert killed, "the similarity finished before a worker could be killed"
    if proc.returncode == 0:
        got = xr.open_zarr(out, consolidated=False)
        for v in ("top_index", "bottom_index"):
            np.testing.assert_array_equal(got[v].values, want[v].values)
    else:
        _assert_one_line_failure(proc, 75)


def test_killed_scheduler_is_one_line_exit_75(repro, own_cluster, tmp_path):
    def kill_scheduler(client):
        own_cluster.scheduler.kill()
        return True

    env = _env(
        DASK_CMAPDASK__RUNTIME__CONNECT_TIMEOUT="3",
        DASK_CMAPDASK__RUNTIME__POLL_INTERVAL="0.5",
        DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s",
    )
    args = ["similarity", repro["store"], "--k", "5", "--space", "all", "--block-size", "10"]
    args += ["--out", tmp_path / "sim.zarr", "--scheduler", own_cluster.address, "--quiet"]
    proc, killed = _run_with(own_cluster.address, args, kill_scheduler, env)
    assert killed, f"the similarity ended before the scheduler could be killed: {proc.stderr}"
    _assert_one_line_failure(proc, 75)
    assert not (tmp_path / "sim.zarr").exists()


# ------------------------------------------------------------------------ frozen S3 server


@pytest.fixture
def frozen_s3(tmp_path):
    """Its own moto server holding a store; yields (url, options, process)."""
    from cmapdask.io.store import write_store
    from tests.conftest import moto_server

    with moto_server(tmp_path, "frozen") as (opts, proc):
        rng = np.random.default_rng(1)
        ds = xr.Dataset(
            {"expr": (("sig", "gene"), rng.normal(size=(20, 30)).astype(np.float32))},
            coords={"sig": [f"S{i}" for i in range(20)], "gene": [f"{i}" for i in range(30)]},
        )
        write_store(ds, "s3://frozen/s.zarr", storage_options=opts)
        yield "s3://frozen/s.zarr", opts, proc


def test_frozen_s3_server_is_one_line_exit_75(frozen_s3):
    url, opts, server = frozen_s3
    env = _env(
        DASK_CMAPDASK__STORAGE__CONNECT_TIMEOUT="2",
        DASK_CMAPDASK__STORAGE__READ_TIMEOUT="2",
        DASK_CMAPDASK__STORAGE__ATTEMPTS="1",
        DASK_CMAPDASK__STORAGE__RETRIES="1",
    )
    os.kill(server.pid, signal.SIGSTOP)
    try:
        proc = _cli("info", url, "--storage-options", json.dumps(opts), env=env, timeout=300)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    _assert_one_line_failure(proc, 75)


# ---------------------------------------------------------------------- Ctrl-C and progress


def test_sigint_is_one_line_exit_130_and_no_temporaries(repro, tmp_path):
    out = tmp_path / "res"
    args = _query_args(repro, out, "--workers", "2")
    args.remove("--quiet")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmapdask", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    lines = []
    for line in proc.stderr:  # wait until the cluster runs, then interrupt
        lines.append(line)
        if "local Dask cluster" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=300)
    stderr = "".join(lines) + err
    if proc.returncode == 0:
        pytest.fail("the query finished before it could be interrupted")
    assert proc.returncode == 130, stderr
    assert stderr.rstrip().splitlines()[-1] == "cmapdask: interrupted"
    assert "Traceback" not in stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def _progress_run(repro, tmp_path, tty: bool):
    import pty

    out = tmp_path / ("tty" if tty else "pipe")
    args = [sys.executable, "-m", "cmapdask", *_query_args(repro, out, "--scheduler", "none")]
    args.remove("--quiet")
    if not tty:
        proc = subprocess.run(args, capture_output=True, env=_env(), timeout=600)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read()
    proc.wait(timeout=600)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks)


def test_progress_only_on_a_terminal_and_only_on_stderr(repro, tmp_path):
    rc, stdout, stderr = _progress_run(repro, tmp_path, tty=False)
    assert rc == 0
    assert stdout == b""
    assert b"%" not in stderr and b"\r" not in stderr
    rc, stdout, stderr = _progress_run(repro, tmp_path, tty=True)
    assert rc == 0
    assert stdout == b""
    assert b"% Completed" in stderr


# ---------------------------------------------------------------------------- the watchdog


class _FakeClient:
    """Answers the watchdog's question with a fixed scheduler state, or not at all."""

    def __init__(self, state=None):
        self.state = state

    def _run_on_scheduler(self, *a, **k):  # pragma: no cover - never called directly
        raise AssertionError

    def sync(self, *a, **k):
        if self.state is None:
            raise OSError("Timed out trying to connect")
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def _watch(state, seconds):
    import dask

    from cmapdask.cli import runtime

    with dask.config.set(
        {
            "cmapdask.runtime.stall_timeout": 1,
            "cmapdask.runtime.connect_timeout": 1,
            "cmapdask.runtime.poll_interval": 0.1,
        }
    ):
        dog = runtime._Watchdog(_FakeClient(state), "tcp://fake:1")
    with dog:
        time.sleep(seconds)  # the watchdog interrupts this


@pytest.mark.parametrize(
    "state, message",
    [
        ((10, 5, 0, 0), "no progress"),  # work pending, nothing running, nothing changes
        (None, "no answer"),  # scheduler gone
    ],
)
def test_watchdog_stops_a_stalled_or_lost_scheduler(state, message):
    from cmapdask.errors import InfrastructureError

    start = time.monotonic()
    with pytest.raises(InfrastructureError, match=message):
        _watch(state, 60)
    # the watchdog wakes a main thread blocked in a wait: it does not sleep out the 60 s
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    "state",
    [
        (10, 5, 1, 0),  # a task running for longer than stall_timeout is fine
        RuntimeError("pickled functions not allowed"),  # not watchable: not a failure
    ],
)
def test_watchdog_leaves_long_tasks_and_unwatchable_schedulers_alone(state):
    _watch(state, 2.5)
