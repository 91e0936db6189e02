"""Query jobs: a bounded queue, worker threads, results on disk under unguessable ids.

A job runs the public functional API — :func:`cmapdask.query`, :func:`cmapdask.summarize`
and :func:`cmapdask.write_result` — exactly as ``cmapdask query`` does, on the Dask
cluster in effect (the default ``distributed`` client when there is one, else dask's
threaded scheduler). Each job lives in ``JOBS_DIR/<id>/``:

    job.json                    state, request, gene report, warnings, file list
    clue/                       CLUE's result folder (``write_result``)
    tables/q<i>_<level>.parquet the ranked tables behind the JSON API
    result.tar.gz               the result folder as one download

Ids are ``secrets.token_urlsafe`` strings; a request's id is only ever looked up in the
in-memory index of known jobs, and paths are built from the index, never from the request.
Jobs left queued or running by a stopped server are queued again when it restarts.
"""

from __future__ import annotations

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

import numpy as np
import pandas as pd

from cmapdask.errors import CmapdaskError, InputError

__all__ = ["Job", "JobManager", "QueueFull", "LEVELS"]

LEVELS = ["sig", "pert_cell", "pert_summary", "pcl_cell", "pcl_summary"]
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_FINAL = ("done", "failed", "cancelled")


class QueueFull(CmapdaskError):
    """The job queue holds as many jobs as it may."""


class Cancelled(Exception):
    """Raised inside a job's thread when its job was cancelled."""


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
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    _KEYS = (
        "id status stage progress created started finished error warnings genes queries "
        "matrices tables request"
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


class JobManager:
    """Runs query jobs on worker threads from a bounded queue.

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
    workers : int
        Jobs computed at once (each one's tasks run on the Dask cluster in effect).

    Notes
    -----
    Holds every job's state in memory (a few KB each); results stay on disk. A running
    job holds its query result until it is written (``5-8 x queries x n_sig`` float32).
    """

    def __init__(
        self,
        root,
        store: str,
        *,
        storage_options: dict | None = None,
        pcls: dict | None = None,
        max_queue: int = 64,
        workers: int = 2,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = str(store)
        self.storage_options = storage_options
        self.pcls = pcls
        self.max_queue = int(max_queue)
        self.n_workers = max(1, int(workers))
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
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
            if job.status not in _FINAL:
                job.status, job.stage, job.progress = "queued", "queued", 0.0
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

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
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

    def submit(
        self, request: dict, *, queries: list[str], genes: list[dict], warnings: list[str]
    ) -> Job:
        """Queue a validated request; raises :class:`QueueFull` when the queue is full."""
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
            if waiting >= self.max_queue:
                raise QueueFull(f"the job queue is full ({waiting} jobs waiting); try again later")
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
            )
            job.save()
            self._jobs[job_id] = job
        self._queue.put(job_id)
        return job

    def cancel(self, job: Job) -> Job:
        """Cancel a queued or running job (a finished one is left as it is)."""
        with self._lock:
            if job.status in _FINAL:
                return job
            job.cancel.set()
            if job.status == "queued":
                self._finish(job, "cancelled", error="cancelled before it started")
        return job

    # ----------------------------------------------------------------------- running

    def _worker(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self._jobs.get(job_id)
            with self._lock:
                if job is None or job.status != "queued":
                    continue
                job.status, job.stage, job.started = "running", "starting", time.time()
                job.save()
            try:
                self._run(job)
            except Cancelled:
                self._finish(job, "cancelled", error="cancelled while running")
            except CmapdaskError as e:
                self._finish(job, "failed", error=str(e).splitlines()[0])
            except Exception as e:  # a bug: keep the server alive, record it
                traceback.print_exc()
                self._finish(job, "failed", error=f"internal error: {type(e).__name__}: {e}")

    def _finish(self, job: Job, status: str, *, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        job.stage = status
        if status == "done":
            job.progress = 1.0
        job.save()
        if status != "done":
            for sub in ("clue", "tables"):
                shutil.rmtree(job.dir / sub, ignore_errors=True)

    def _stage(self, job: Job, stage: str, progress: float) -> None:
        if job.cancel.is_set():
            raise Cancelled()
        job.stage, job.progress = stage, float(progress)
        job.save()

    def _compute(self, job: Job, objs):
        """Persist lazy objects on the cluster in effect, with progress and cancellation."""
        import dask

        try:
            from distributed import default_client, futures_of, wait

            client = default_client()
        except (ImportError, ValueError):
            client = None
        if client is None:
            return dask.persist(*objs)
        out = client.persist(list(objs))
        futs = futures_of(out)
        while True:
            try:
                wait(futs, timeout=0.5)
                break
            except TimeoutError:
                if job.cancel.is_set():
                    client.cancel(futs)
                    raise Cancelled() from None
                done = sum(f.done() for f in futs)
                job.progress = 0.2 + 0.5 * done / max(1, len(futs))
        for f in futs:
            if f.status == "error":
                f.result()  # raises the task's error
        return tuple(out)

    def _run(self, job: Job) -> None:
        from cmapdask.connectivity import query, summarize, write_result
        from cmapdask.connectivity.results import ranked_table

        req = job.request
        up = {q["name"]: q["up"] for q in req["queries"] if q.get("up")} or None
        down = {q["name"]: q["down"] for q in req["queries"] if q.get("down")} or None
        self._stage(job, "scoring", 0.05)
        res = query(
            self.store,
            up,
            down,
            space=req["space"],
            metric=req["metric"],
            tail=req["tail"],
            reference=req["reference"],
            tau=req["tau"],
            fdr=req["fdr"],
            storage_options=self.storage_options,
        )
        summ = (
            summarize(res, pcls=self.pcls, storage_options=self.storage_options)
            if "pert_id" in res.coords
            else None
        )
        self._stage(job, "computing", 0.2)
        if summ is not None:
            res, summ = self._compute(job, (res, summ))
        else:
            (res,) = self._compute(job, (res,))
        self._stage(job, "writing the result folder", 0.7)
        clue = job.dir / "clue"
        write_result(res, str(clue), summaries=summ)
        self._stage(job, "ranking", 0.85)
        tables = job.dir / "tables"
        shutil.rmtree(tables, ignore_errors=True)
        tables.mkdir()
        names = [str(q) for q in res["query"].values]
        files = {}
        for i, q in enumerate(names):
            df = ranked_table(res, summ, q)
            files[f"{i}/sig"] = _save(df, tables / f"q{i}_sig.parquet")
            if summ is not None:
                for level, df in summary_tables(summ, q).items():
                    files[f"{i}/{level}"] = _save(df, tables / f"q{i}_{level}.parquet")
        self._stage(job, "packing", 0.95)
        tmp = job.dir / "result.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(clue, arcname=f"cmapdask_query_{job.id[:8]}")
        os.replace(tmp, job.archive)
        job.queries = names
        job.tables = files
        job.matrices = {
            p.relative_to(clue).with_suffix("").as_posix().removeprefix("matrices/"): (
                p.relative_to(job.dir).as_posix()
            )
            for p in sorted(clue.rglob("*.gctx"))
        }
        self._finish(job, "done")

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


def _save(df: pd.DataFrame, path: Path) -> str:
    df.to_parquet(path, index=False)
    return path.relative_to(path.parent.parent).as_posix()


def _along(summ, dim: str, *suffixes: str):
    """The coordinate along ``dim`` whose name ends in one of ``suffixes`` (tolerant of
    ``pert_cell_pert_id`` and ``pert_id`` spellings)."""
    for s in suffixes:
        for k, c in summ.coords.items():
            if c.dims == (dim,) and k != dim and (k == s or k.endswith("_" + s)):
                return np.asarray(c.values)
    return None


def summary_tables(summ, q: str) -> dict[str, pd.DataFrame]:
    """One query's summary levels as tables ranked by τ (then NCS), from ``summarize``."""
    out = {}
    s = summ.sel(query=q)
    for var in s.data_vars:
        if not var.startswith("ns_"):
            continue
        level = var[3:]
        if level not in s.dims:
            continue
        cols = {"id": np.asarray(s[level].values).astype(str)}
        for k, c in s.coords.items():
            if c.dims == (level,) and k != level:
                cols[k.removeprefix(level + "_")] = np.asarray(c.values)
        if level == "pert_cell":
            pert, cell = _along(s, level, "pert_id"), _along(s, level, "cell_id", "cell_iname")
            if pert is not None:
                cols["pert_id"] = pert
            if cell is not None:
                cols["cell_id"] = cell
        cols["ncs"] = np.asarray(s[var].values, dtype=np.float64)
        ps = f"ps_{level}"
        cols["tau"] = (
            np.asarray(s[ps].values, dtype=np.float64)
            if ps in s
            else np.full(len(cols["ncs"]), np.nan)
        )
        df = pd.DataFrame(cols)
        key = df["tau"].fillna(df["ncs"] * 0)
        order = np.lexsort((df["id"].to_numpy(), -df["ncs"].fillna(-np.inf).to_numpy(), -key))
        out[level] = df.iloc[order].reset_index(drop=True)
    return out
