"""Query jobs that cannot harm each other, batches equal to single jobs, and the one job
function shared by ``cmapdask query`` and ``cmapdask serve``.

Folders are compared byte for byte, every file but ``.cmapdask``: that marker (written
by :func:`cmapdask.io.atomic.publish_dir` so ``--overwrite`` knows the folder is ours)
holds the time of publication, ``created``, so two writes of the same result differ
there by design. Nothing else in CLUE's folder depends on time, job ids or the process
that wrote it (provenance records hold no timestamps; the store's metadata fields are in
a fixed order).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dask
import pandas as pd
import pytest

from tests._server_helpers import planted_query, shared_store

MARKER = ".cmapdask"  # publication time: the one file that differs by design


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def assert_same_folder(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert len(fa) > 20
    for rel in fa:
        assert fa[rel] == fb[rel], f"{rel} differs"
    assert (a / MARKER).is_file() and (b / MARKER).is_file()


def _request(up, down, name="query", **options):
    req = {
        "queries": [{"name": name, "up": up, "down": down}],
        "space": "landmark",
        "reference": "all",
        "tau": "binned",
        "metric": "wtcs",
        "tail": "both",
        "fdr": "auto",
    }
    req.update(options)
    return req


def _gmt(path: Path, name: str, genes) -> str:
    path.write_text("\t".join([name, "na", *genes]) + "\n")
    return str(path)


def _cli(data, tmp: Path, name, up, down, out: Path) -> Path:
    from cmapdask.cli import main

    args = ["query", data["store"], "--space", "landmark", "--pcl", data["pcl"]]
    args += ["--up", _gmt(tmp / f"{name}_up.gmt", name, up)]
    args += ["--down", _gmt(tmp / f"{name}_dn.gmt", name, down)]
    with dask.config.set(scheduler="threads"):
        assert main([*args, "--out", str(out), "--scheduler", "none", "--quiet"]) == 0
    return out


def _wait(mgr, jobs, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            j.status in ("failed", "cancelled")
            or (j.status == "done" and j.download_status in ("done", "failed"))
            for j in jobs
        ):
            return
        time.sleep(0.05)
    raise AssertionError([j.state() for j in jobs])


def _manager(root, data, **kw):
    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.server.jobs import JobManager

    return JobManager(root, data["store"], pcls=read_gene_sets(data["pcl"]), **kw)


# -------------------------------------------------------------------- one job function


def test_cli_and_job_function_write_the_same_folder(data, tmp_path):
    """``cmapdask query`` is a thin shell over connectivity.job: the server's job, run by
    the JobManager, writes the CLI's folder byte for byte."""
    up, dn = planted_query(data["design"], moa=2)
    cli = _cli(data, tmp_path, "query", up, dn, tmp_path / "cli")
    mgr = _manager(tmp_path / "jobs", data, workers=1)
    job = mgr.submit(_request(up, dn), queries=["query"], genes=[], warnings=[])
    with dask.config.set(scheduler="threads"):
        mgr.start()
        try:
            _wait(mgr, [job])
        finally:
            mgr.stop()
    assert job.status == "done" and job.download_status == "done", job.error
    assert_same_folder(cli, job.dir / "clue")
    # the tables behind the JSON API are the folder's ranked list
    pd.testing.assert_frame_equal(
        mgr.table(job, 0, "sig"),
        pd.read_parquet(cli / "arfs" / "query" / "query_result.parquet"),
    )
    # an identical request on the same store version returns the finished job
    again = mgr.submit(_request(up, dn), queries=["query"], genes=[], warnings=[])
    assert again is job


# ------------------------------------------------------------------------------ batches


def test_burst_of_jobs_batched_equals_one_at_a_time(data, tmp_path):
    from cmapdask.connectivity.job import plan_query_job
    from cmapdask.io.gmt import read_gene_sets

    reqs = []
    for moa in range(4):
        up, dn = planted_query(data["design"], moa=moa, n=20 + 5 * moa)
        reqs.append(_request(up, dn, name=f"m{moa}"))
    up, dn = planted_query(data["design"], moa=1, n=40)
    two = _request(up, dn, name="a")
    two["queries"].append({"name": "b", "up": dn, "down": up})
    reqs.append(two)
    reqs.append(reqs[0])  # identical to the first: computed once in the batch
    reqs.append({**reqs[1], "tau": "none"})  # other options: a batch of its own
    mgr = _manager(tmp_path / "jobs", data, workers=1, batch_queries=100)
    jobs = [
        mgr.submit(r, queries=[q["name"] for q in r["queries"]], genes=[], warnings=[])
        for r in reqs
    ]
    with dask.config.set(scheduler="threads"):
        mgr.start()  # everything is queued already: the burst arrives together
        try:
            _wait(mgr, jobs)
        finally:
            mgr.stop()
    assert [j.status for j in jobs] == ["done"] * len(jobs), [j.error for j in jobs]
    assert [j.batch for j in jobs] == [6, 6, 6, 6, 6, 6, 1]
    pcls = read_gene_sets(data["pcl"])
    for i, (req, job) in enumerate(zip(reqs, jobs, strict=True)):
        sets = {q["name"]: q for q in req["queries"]}
        alone = plan_query_job(
            data["store"],
            {k: q["up"] for k, q in sets.items()},
            {k: q["down"] for k, q in sets.items()},
            pcls=pcls,
            **{k: req[k] for k in ("space", "metric", "tail", "reference", "tau", "fdr")},
        )
        with dask.config.set(scheduler="threads"):
            out = alone.compute().write(str(tmp_path / f"alone{i}"))
        assert_same_folder(Path(out), job.dir / "clue")
        for q in range(len(sets)):
            for level in ("sig", "pert_summary", "pcl_summary"):
                ref = pd.read_parquet(job.dir / "tables" / f"q{q}_{level}.parquet")
                pd.testing.assert_frame_equal(mgr.table(job, q, level), ref)
    assert job.queries == ["m1"] and jobs[4].queries == ["a", "b"]


# -------------------------------------------------------- jobs that cannot harm each other


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.cluster
def test_identical_jobs_one_cancelled_on_a_real_cluster(data, tmp_path):
    """Two identical jobs computing at once on a distributed cluster (scheduler and
    worker processes); one is cancelled; the other's folder is ``cmapdask query``'s.
    Repeated: the failure this guards against (a shared key cancelled) was 3 of 3."""
    from distributed import Client, LocalCluster

    up, dn = planted_query(data["design"], moa=0)
    cli = _cli(data, tmp_path, "query", up, dn, tmp_path / "cli")
    errors = _Errors()
    log = logging.getLogger("distributed")
    log.addHandler(errors)
    try:
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            for trial in range(3):
                # a manager of its own each trial: no finished job answers the request
                mgr = _manager(tmp_path / f"jobs{trial}", data, workers=2, batch_queries=1)
                # the workers are busy: both jobs' tasks wait on the scheduler, so the
                # cancel lands while both are computing
                busy = [
                    client.submit(time.sleep, 1.5, pure=False, workers=[w])
                    for w in client.scheduler_info()["workers"]
                ]
                a = mgr.submit(_request(up, dn), queries=["query"], genes=[], warnings=[])
                b = mgr.submit(_request(up, dn), queries=["query"], genes=[], warnings=[])
                assert a is not b and a.key == b.key
                mgr.start()
                try:
                    deadline = time.monotonic() + 60
                    while not (a.stage == b.stage == "computing"):
                        assert time.monotonic() < deadline, (a.state(), b.state())
                        time.sleep(0.01)
                    victim, other = (a, b) if trial % 2 == 0 else (b, a)
                    mgr.cancel(victim)
                    _wait(mgr, [a, b])
                finally:
                    mgr.stop()
                del busy
                assert victim.status == "cancelled" and victim.error == "cancelled while running"
                assert other.status == "done", other.error
                assert other.download_status == "done"
                assert_same_folder(cli, other.dir / "clue")
    finally:
        log.removeHandler(errors)
    assert not [e for e in errors.lines if "who_wants" in e or "Traceback" in e], errors.lines


# ------------------------------------------------------------------- failures and retry


def test_failed_job_is_one_line_and_can_be_retried(data, tmp_path, monkeypatch):
    from cmapdask.connectivity import job as jobfn

    mgr = _manager(tmp_path / "jobs", data, workers=1)
    up, dn = planted_query(data["design"], moa=3)
    real = jobfn.QueryJob.compute
    calls = []

    def flaky(self, **kw):
        calls.append(1)
        if len(calls) == 1:  # what distributed raises when a job's keys are lost
            raise RuntimeError(
                "FuturesCancelledError: 12 Future(s) were cancelled: "
                "('summaries-0a1b2c', 0, 0), ('getitem-3d4e5f', 0, 0), ..."
            )
        return real(self, **kw)

    monkeypatch.setattr(jobfn.QueryJob, "compute", flaky)
    job = mgr.submit(_request(up, dn), queries=["query"], genes=[], warnings=[])
    with dask.config.set(scheduler="threads"):
        mgr.start()
        try:
            _wait(mgr, [job])
            assert job.status == "failed"
            assert job.error == "internal error (RuntimeError); retry it"
            assert "\n" not in job.error and "summaries-" not in job.error
            mgr.retry(job)
            assert job.status == "queued" and job.error is None
            _wait(mgr, [job])
        finally:
            mgr.stop()
    assert job.status == "done" and job.download_status == "done"
    from cmapdask.errors import InputError

    with pytest.raises(InputError, match="only a failed or cancelled job"):
        mgr.retry(job)


def test_per_client_bound_and_retry_after(data, tmp_path):
    """Through the app (jobs not started): a client beyond its share gets 429 with
    Retry-After; another client still gets in; failed jobs link a retry."""
    from fastapi.testclient import TestClient

    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.server.app import ServerSettings, create_app

    app = create_app(
        ServerSettings(
            data["store"],
            jobs_dir=str(tmp_path / "jobs"),
            pcls=read_gene_sets(data["pcl"]),
            max_per_client=2,
            max_queue=3,
        )
    )
    up, dn = planted_query(data["design"], moa=0)
    body = {"queries": [{"up": up, "down": dn}], "space": "landmark"}
    one = TestClient(app, client=("10.0.0.1", 5000))  # not entered: no job threads
    other = TestClient(app, client=("10.0.0.2", 5000))
    assert one.post("/api/v1/queries", json=body).status_code == 202
    assert one.post("/api/v1/queries", json=body).status_code == 202
    r = one.post("/api/v1/queries", json=body)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "at most 2" in r.json()["detail"]
    assert other.post("/api/v1/queries", json=body).status_code == 202
    r = other.post("/api/v1/queries", json=body)  # now the whole queue is full
    assert r.status_code == 429 and "queue is full" in r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1
    # a cancelled job links its retry; the page has the button
    job = next(iter(app.state.jobs._jobs.values()))
    s = one.delete(f"/api/v1/queries/{job.id}").json()
    assert s["status"] == "cancelled" and s["links"]["retry"].endswith("/retry")
    assert 'id="retry"' in one.get(f"/jobs/{job.id}").text
    s = one.post(f"/api/v1/queries/{job.id}/retry")
    assert s.status_code == 202 and s.json()["status"] == "queued"
    # a job that is not done has no downloads yet
    assert one.get(f"/api/v1/queries/{job.id}/result.tar.gz").status_code == 409
