"""Query jobs: a bounded queue, batches, worker threads, results under unguessable ids.

A job is :mod:`cmapdask.connectivity.job`'s query job, as ``cmapdask query`` runs it:
plan (``query`` and ``summarize``), one computation on the Dask cluster in effect (the
default ``distributed`` client when there is one, else dask's threaded scheduler), then
the ranked tables and CLUE's folder written from memory. Each job lives in
``JOBS_DIR/<id>/``:

    job.json                    state, request, gene report, warnings, file list
    tables/q<i>_<level>.parquet the ranked tables behind the JSON API (written first:
                                the job is ``done`` and viewable once they are)
    clue/                       CLUE's result folder (``JobResult.write``), then
    result.tar.gz               the result folder as one download; ``download_status``
                                (as CLUE's) is ``done`` once both are written

Many users, one pass: a worker takes the oldest queued job and every other queued job of
the same store and options (up to ``batch_queries`` queries; it waits ``batch_wait``
seconds for jobs arriving together), and scores all their queries in one query (every
score of a query depends on that query alone, so each job's part equals the job run
alone). Identical requests in a batch are computed once; an identical request on the
same store version as a finished job returns that job. A failing batch is run again job
by job, so one job's failure reaches no other.

Jobs cannot harm each other: a batch's tasks carry keys of its own (``clone`` seeded
with a fresh token), so two identical requests share no key on the scheduler; cancelling
a job drops its part of a batch and cancels the batch's tasks only when every job of it
is cancelled. A failed job shows one line (never task keys) and can be retried.

Ids are ``secrets.token_urlsafe`` strings; a request's id is only ever looked up in the
in-memory index of known jobs, and paths are built from the index, never from the request.
Jobs left queued, running or without their download by a stopped server are queued again
when it restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import secrets
import shutil
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cmapdask.connectivity.job import JobCancelled, summary_tables
from cmapdask.errors import CmapdaskError, InputError

__all__ = ["Job", "JobManager", "QueueFull", "LEVELS", "summary_tables"]

LEVELS = ["sig", "pert_cell", "pert_summary", "pcl_cell", "pcl_summary"]
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_FINAL = ("done", "failed", "cancelled")
_OPTIONS = ("space", "metric", "tail", "reference", "scored", "tau", "fdr")


class QueueFull(CmapdaskError):
    """The job queue (or one client's share of it) holds as many jobs as it may."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = int(retry_after)


@dataclass
class Job:
    """One query job and its folder (the folder comes from the manager, never a request)."""

    id: str
    dir: Path
    request: dict
    status: str = "queued"
    stage: str = "queued"
    progress: float = 0.0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    genes: list[dict] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    matrices: dict[str, str] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    download_status: str = "pending"
    batch: int = 0  # jobs computed together with this one (itself included)
    key: str = ""
    client: str = ""
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    _KEYS = (
        "id status stage progress created started finished error warnings genes queries "
        "matrices tables download_status batch key client request"
    ).split()

    def state(self) -> dict:
        return {k: getattr(self, k) for k in self._KEYS}

    def save(self) -> None:
        tmp = self.dir / f"job.json.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(self.state(), default=str))
        os.replace(tmp, self.dir / "job.json")

    @property
    def archive(self) -> Path:
        return self.dir / "result.tar.gz"

    @property
    def batch_key(self) -> tuple:
        """Jobs with the same options and list shape are scored together."""
        r = self.request
        shape = {(bool(q.get("up")), bool(q.get("down"))) for q in r["queries"]}
        return (*(r.get(k) for k in _OPTIONS), tuple(sorted(shape)))


class JobManager:
    """Runs query jobs on worker threads from a bounded queue, in batches.

    Parameters
    ----------
    root : path
        Folder holding one sub-folder per job (created if absent).
    store : str
        Store URL the queries run against.
    storage_options : dict, optional
        fsspec options for ``store``.
    pcls : dict, optional
        PCL name → pert ids, for the PCL summaries.
    max_queue : int
        Jobs waiting at most; a submission beyond it raises :class:`QueueFull`.
    max_per_client : int
        Jobs one client (address) may have queued or running at once; beyond it
        :class:`QueueFull` (so one client cannot fill the queue for the others).
    workers : int
        Batches computed at once (each one's tasks run on the Dask cluster in effect).
    batch_queries : int
        Queries scored together at most (1: every job alone).
    batch_wait : float
        Seconds a worker waits for more jobs before it starts a batch.

    Notes
    -----
    Holds every job's state in memory (a few KB each); results stay on disk. A running
    batch holds its query result until its jobs are written (``5-8 x queries x n_sig``
    float32).
    """

    def __init__(
        self,
        root,
        store: str,
        *,
        storage_options: dict | None = None,
        pcls: dict | None = None,
        max_queue: int = 64,
        max_per_client: int = 8,
        workers: int = 2,
        batch_queries: int = 100,
        batch_wait: float = 0.05,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = str(store)
        self.storage_options = storage_options
        self.pcls = pcls
        self.max_queue = int(max_queue)
        self.max_per_client = max(1, int(max_per_client))
        self.n_workers = max(1, int(workers))
        self.batch_queries = max(1, int(batch_queries))
        self.batch_wait = max(0.0, float(batch_wait))
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._packing: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._durations: list[float] = []
        self._load()

    # ------------------------------------------------------------------ life cycle

    def _load(self) -> None:
        """Index the jobs already on disk; queue again those that never finished."""
        again = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not (entry.is_dir() and _ID.match(entry.name)):
                continue
            try:
                state = json.loads((Path(entry.path) / "job.json").read_text())
            except (OSError, ValueError):
                continue
            if state.get("id") != entry.name:
                continue
            job = Job(id=entry.name, dir=Path(entry.path), request=state.get("request", {}))
            for k in Job._KEYS:
                if k not in ("id", "request") and k in state:
                    setattr(job, k, state[k])
            if "download_status" not in state and job.status == "done":
                job.download_status = "done"  # a job of a server before download_status
            if job.status not in _FINAL or (job.status == "done" and job.download_status != "done"):
                self._reset(job)
                again.append(job)
            self._jobs[job.id] = job
        for job in sorted(again, key=lambda j: j.created):
            job.save()
            self._queue.put(job.id)

    def start(self) -> None:
        for i in range(self.n_workers):
            t = threading.Thread(target=self._worker, name=f"cmapdask-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._packer, name="cmapdask-job-pack", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for _ in range(self.n_workers):
            self._queue.put(None)
        self._packing.put(None)
        for t in self._threads:
            t.join(timeout)

    # ----------------------------------------------------------------------- access

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None (the id is only a key into the index)."""
        return self._jobs.get(job_id) if isinstance(job_id, str) else None

    def waiting(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.status == "queued")

    def counts(self) -> dict:
        with self._lock:
            out: dict[str, int] = {}
            for j in self._jobs.values():
                out[j.status] = out.get(j.status, 0) + 1
            return out

    def request_key(self, request: dict) -> str:
        """The identity of a request on the store's current version (dedup)."""
        from cmapdask.connectivity.query import _store_key

        version = _store_key(self.store, self.storage_options)
        text = json.dumps([request, version], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _retry_after(self) -> int:
        """Seconds a refused client should wait: about one batch's time (1-60)."""
        recent = self._durations[-8:]
        return int(min(60, max(1, round(sum(recent) / len(recent)) if recent else 5)))

    def submit(
        self,
        request: dict,
        *,
        queries: list[str],
        genes: list[dict],
        warnings: list[str],
        client: str = "",
    ) -> Job:
        """Queue a validated request (or return the finished job of an identical one).

        Raises :class:`QueueFull` when the queue, or this client's share of it, is full.
        """
        key = self.request_key(request)
        with self._lock:
            for j in self._jobs.values():
                if j.key == key and j.status == "done" and (j.dir / "tables").is_dir():
                    return j
            waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
            if waiting >= self.max_queue:
                raise QueueFull(
                    f"the job queue is full ({waiting} jobs waiting); try again later",
                    self._retry_after(),
                )
            mine = sum(
                1
                for j in self._jobs.values()
                if j.client == client and j.status in ("queued", "running")
            )
            if mine >= self.max_per_client:
                raise QueueFull(
                    f"you have {mine} jobs queued or running (at most {self.max_per_client}); "
                    "try again when one has finished",
                    self._retry_after(),
                )
            job_id = secrets.token_urlsafe(24)
            job_dir = self.root / job_id
            job_dir.mkdir()
            job = Job(
                id=job_id,
                dir=job_dir,
                request=request,
                queries=list(queries),
                genes=list(genes),
                warnings=list(warnings),
                key=key,
                client=client,
            )
            job.save()
            self._jobs[job_id] = job
        self._queue.put(job_id)
        return job

    def cancel(self, job: Job) -> Job:
        """Cancel a queued or running job (a finished one is left as it is). A running
        job's part of its batch is dropped; the batch's tasks are cancelled only when
        every job of it is."""
        with self._lock:
            if job.status in _FINAL:
                return job
            job.cancel.set()
            where = "before it started" if job.status == "queued" else "while running"
            self._finish(job, "cancelled", error=f"cancelled {where}")
        return job

    def retry(self, job: Job) -> Job:
        """Queue a failed or cancelled job again (same id, same request)."""
        with self._lock:
            if job.status not in ("failed", "cancelled"):
                raise InputError(
                    f"only a failed or cancelled job can be retried; it is {job.status}"
                )
            self._reset(job)
            job.save()
        self._queue.put(job.id)
        return job

    @staticmethod
    def _reset(job: Job) -> None:
        job.status, job.stage, job.progress = "queued", "queued", 0.0
        job.started = job.finished = job.error = None
        job.download_status, job.matrices, job.tables = "pending", {}, {}
        job.cancel = threading.Event()

    # ----------------------------------------------------------------------- running

    def _take(self, first: Job) -> list[Job]:
        """``first`` and the queued jobs that can share its batch, marked running."""
        if self.batch_queries > 1 and self.batch_wait:
            time.sleep(self.batch_wait)  # let jobs that arrive together join
        with self._lock:
            if first.status != "queued":
                return []
            batch, n = [first], len(first.request["queries"])
            if self.batch_queries > 1:
                key = first.batch_key
                for j in sorted(self._jobs.values(), key=lambda j: j.created):
                    m = len(j.request["queries"])
                    if j is first or j.status != "queued" or j.batch_key != key:
                        continue
                    if n + m > self.batch_queries:
                        break
                    batch.append(j)
                    n += m
            now = time.time()
            for j in batch:
                j.status, j.stage, j.started = "running", "planning", now
                j.batch = len(batch)
                j.save()
            return batch

    def _worker(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self._jobs.get(job_id)
            if job is None:
                continue
            batch = self._take(job)
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                self._run_batch(batch)
            except Exception as e:
                if len(batch) == 1:
                    self._fail(batch[0], e)
                else:  # one job's fault must not fail the others: each alone
                    for j in batch:
                        if j.status == "running":
                            try:
                                self._run_batch([j])
                            except Exception as e1:
                                self._fail(j, e1)
            self._durations = [*self._durations[-15:], time.perf_counter() - t0]

    def _fail(self, job: Job, e: BaseException) -> None:
        if isinstance(e, JobCancelled) or job.cancel.is_set():
            with self._lock:
                self._finish(job, "cancelled", error="cancelled while running")
            return
        if isinstance(e, CmapdaskError):
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
        else:  # a bug or a cluster failure: keep the server alive, log it, one line
            traceback.print_exc()
            line = f"internal error ({type(e).__name__}); retry it"
        with self._lock:
            self._finish(job, "failed", error=line[:500])

    def _finish(self, job: Job, status: str, *, error: str | None = None) -> None:
        """Record a final state (call with the lock held); a cancelled job stays so."""
        if job.status in _FINAL and job.status != "done":
            return
        job.status, job.error, job.finished = status, error, time.time()
        job.stage = status
        if status == "done":
            job.progress = 1.0
        job.save()
        if status != "done":
            for sub in ("clue", "tables"):
                shutil.rmtree(job.dir / sub, ignore_errors=True)

    def _progress(self, batch: list[Job], stage: str, progress: float) -> None:
        for j in batch:
            if j.status == "running":
                j.stage, j.progress = stage, float(progress)

    def _run_batch(self, batch: list[Job]) -> None:
        from cmapdask.connectivity.job import plan_query_job

        # identical requests in one batch are computed once
        reps: dict[str, str] = {}  # job key -> batch prefix
        up, down, names = {}, {}, {}
        for j in batch:
            if j.key in reps:
                continue
            prefix = reps[j.key] = f"b{len(reps)}"
            for q in j.request["queries"]:
                name = f"{prefix}.{q['name']}"
                names[name] = q["name"]
                if q.get("up"):
                    up[name] = q["up"]
                if q.get("down"):
                    down[name] = q["down"]
        req = batch[0].request
        self._progress(batch, "scoring", 0.05)
        plan = plan_query_job(
            self.store,
            up or None,
            down or None,
            pcls=self.pcls,
            storage_options=self.storage_options,
            space=req["space"],
            metric=req["metric"],
            tail=req["tail"],
            reference=req["reference"],
            scored=req.get("scored", "all"),  # jobs of servers before --scored: all
            tau=req["tau"],
            fdr=req["fdr"],
        )
        self._progress(batch, "computing", 0.2)
        computed = plan.compute(
            key=secrets.token_hex(8),  # keys of this batch's own
            cancelled=lambda: all(j.cancel.is_set() for j in batch),
            progress=lambda f: self._progress(batch, "computing", 0.2 + 0.6 * f),
        )
        ready = []
        for j in batch:
            if j.cancel.is_set():
                continue
            prefix = reps[j.key]
            part = computed.part({b: o for b, o in names.items() if b.startswith(prefix + ".")})
            try:
                self._write_tables(j, part)
            except Exception as e:
                self._fail(j, e)
                continue
            with self._lock:
                if not j.cancel.is_set():
                    self._finish(j, "done")
                    ready.append((j, part))
        for item in ready:  # folders after every job of the batch is viewable
            self._packing.put(item)

    def _write_tables(self, job: Job, part) -> None:
        self._progress([job], "ranking", 0.85)
        tables = job.dir / "tables"
        tmp = job.dir / "tables.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = {}
        for (i, level), df in part.tables().items():
            df.to_parquet(tmp / f"q{i}_{level}.parquet", index=False)
            files[f"{i}/{level}"] = f"tables/q{i}_{level}.parquet"
        shutil.rmtree(tables, ignore_errors=True)
        os.replace(tmp, tables)
        job.queries = part.queries
        job.tables = files

    def _packer(self) -> None:
        """CLUE's folder and its archive, after the job is viewable (download_status)."""
        while True:
            item = self._packing.get()
            if item is None:
                return
            job, part = item
            try:
                self._pack(job, part)
            except Exception:
                traceback.print_exc()
                job.download_status = "failed"
                job.save()

    def _pack(self, job: Job, part) -> None:
        job.download_status = "writing"
        job.save()
        clue = job.dir / "clue"
        part.write(str(clue), overwrite=True)
        tmp = job.dir / "result.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(clue, arcname=f"cmapdask_query_{job.id[:8]}")
        os.replace(tmp, job.archive)
        with self._lock:
            if job.status != "done":
                return
            job.matrices = {
                p.relative_to(clue).with_suffix("").as_posix().removeprefix("matrices/"): (
                    p.relative_to(job.dir).as_posix()
                )
                for p in sorted(clue.rglob("*.gctx"))
            }
            job.download_status = "done"
            job.save()

    # ---------------------------------------------------------------------- reading

    def table(self, job: Job, query_index: int, level: str) -> pd.DataFrame:
        rel = job.tables.get(f"{query_index}/{level}")
        if rel is None:
            raise InputError(f"no {level!r} table for query {query_index} of this job")
        return pd.read_parquet(job.dir / rel)

    def matrix_path(self, job: Job, name: str) -> Path:
        rel = job.matrices.get(name)
        if rel is None:
            raise InputError(
                f"no matrix {name!r} in this job; it has {', '.join(sorted(job.matrices))}"
            )
        return job.dir / rel
