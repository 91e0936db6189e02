"""One query job, as ``cmapdask query`` and ``cmapdask serve`` both run it.

A job is three steps, kept apart so the server can batch, isolate and cancel between them:

1. :func:`plan_query_job`: :func:`~cmapdask.connectivity.query.query` and
   :func:`~cmapdask.connectivity.results.summarize`, lazy (reads metadata only);
2. :meth:`QueryJob.compute`: the result and its summaries in **one** ``dask.compute``
   (one submission to a distributed scheduler), under keys of the job's own when given a
   ``key`` (so a cancel, a failure or a lost worker touches that job only), into memory;
3. :class:`JobResult`: everything a result is read as, from memory: the ranked tables
   (:meth:`JobResult.tables`) and CLUE's result folder (:meth:`JobResult.write`).

A batch of queries computed together is split back into its jobs with
:meth:`JobResult.part`: every score of a query depends on that query alone (NCS, τ and
FDR are per query; ``fdr="random"`` is the exception: its random queries depend on the
batch's set sizes, so it is never batched), so a part equals the job computed alone.

The notes of ``report.txt`` are derived from the result itself (set sizes outside
CLUE's 10-150, a missing τ background), never captured from ``warnings`` (not
thread-safe), so a job's folder is the same whoever computed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dask
import pandas as pd
import xarray as xr

from cmapdask.connectivity.query import query
from cmapdask.connectivity.results import (
    folder_variables,
    ranked_table,
    summarize,
    write_folder,
)
from cmapdask.connectivity.summaries import LEVELS
from cmapdask.connectivity.validation import MAX_GENES, MIN_GENES
from cmapdask.errors import CmapdaskError, InfrastructureError

__all__ = ["JobCancelled", "JobResult", "QueryJob", "plan_query_job", "summary_tables"]


class JobCancelled(Exception):
    """Raised by :meth:`QueryJob.compute` when its ``cancelled`` callback said so."""


def plan_query_job(
    store,
    up=None,
    down=None,
    *,
    pcls: Mapping[str, Sequence[str]] | None = None,
    notes: Iterable[str] = (),
    storage_options: dict | None = None,
    **options,
) -> QueryJob:
    """The lazy job: a query and, where the store has ``pert_id``, its summaries.

    Parameters
    ----------
    store, up, down
        As :func:`cmapdask.connectivity.query.query`.
    pcls : mapping, optional
        PCL name → pert ids, for the PCL summaries.
    notes : iterable of str
        Extra lines for ``report.txt`` (the CLI passes the warnings of reading its files).
    **options
        The keyword options of :func:`~cmapdask.connectivity.query.query` (``space``,
        ``metric``, ``tail``, ``reference``, ``grouping``, ``tau``, ``fdr``, ...).

    Notes
    -----
    Reads the store's metadata (cached per store version), never its matrix.
    """
    res = query(store, up, down, storage_options=storage_options, **options)
    summ = (
        summarize(res, pcls=dict(pcls) if pcls else None, storage_options=storage_options)
        if "pert_id" in res.coords
        else None
    )
    return QueryJob(res, summ, tuple(str(n) for n in notes))


@dataclass(frozen=True)
class QueryJob:
    """A planned job: the lazy result, its lazy summaries and the caller's notes."""

    result: xr.Dataset
    summaries: xr.Dataset | None
    notes: tuple[str, ...] = ()

    @property
    def queries(self) -> list[str]:
        return [str(q) for q in self.result["query"].values.tolist()]

    def compute(
        self,
        *,
        key: str | None = None,
        cancelled: Callable[[], bool] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> JobResult:
        """Compute the result and the summaries in one submission, into memory.

        Parameters
        ----------
        key : str, optional
            Make every task key the job's own (each key renamed with it, after the
            graph is optimised): two identical jobs then share no key on the
            scheduler, and cancelling one cannot cancel the other's tasks.
        cancelled : callable, optional
            Polled twice a second while a distributed cluster computes; when it returns
            True the job's futures are released (the scheduler forgets the tasks no one
            else wants) and :class:`JobCancelled` is raised.
        progress : callable, optional
            Called with the fraction of the job's futures done (distributed only).

        Raises
        ------
        InfrastructureError
            The cluster lost the job's work (a scheduler or worker failure, one line
            without task keys): the job may be retried.

        Notes
        -----
        Runs on the distributed client in effect when there is one (it never creates
        one), else on dask's scheduler in effect. Memory: ``5-8 x query x n_sig``
        float32 plus the summaries, in this process.
        """
        objs = (folder_variables(self.result), self.summaries)
        client = _client() if (cancelled is not None or progress is not None) else None
        if key is None and client is None:
            res, summ = dask.compute(*objs)
        else:
            res, summ = _compute_own(objs, key, client, cancelled, progress)
        full = self.result.assign({k: res[k] for k in res.data_vars})
        return JobResult(full, summ, self.notes)


def _client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _own_key(key, salt: str):
    if isinstance(key, tuple):
        return (f"{key[0]}-{salt}", *key[1:])
    return f"{key}-{salt}"


def _nested(keys, fn):
    return [_nested(k, fn) for k in keys] if isinstance(keys, list) else fn(keys)


def _own_graph(objs, salt: str | None):
    """The optimised graph of ``objs`` (the collections among them), every key renamed
    with ``salt``: ``(graph, keys per collection, collections)``.

    Optimised first, then renamed (``dask.graph_manipulation.clone`` of these graphs is
    refused by dask's task fusion): a fused task's inner graph is private to it, so only
    the keys of the graph and the references to them change.
    """
    from dask.base import collections_to_expr

    colls = [o for o in objs if o is not None]
    expr = collections_to_expr(colls, True).optimize()
    dsk = dict(expr.__dask_graph__())
    keys = [c.__dask_keys__() for c in colls]
    if salt is None:
        return dsk, keys, colls
    new = {k: _own_key(k, salt) for k in dsk}
    dsk = {new[k]: node.substitute(new, key=new[k]) for k, node in dsk.items()}
    return dsk, _nested(keys, new.__getitem__), colls


def _compute_own(objs, key, client, cancelled, progress):
    """``dask.compute(*objs)`` under keys of the job's own (``key``), with cancellation
    and progress on a distributed client."""
    from dask.base import get_scheduler

    dsk, keys, colls = _own_graph(objs, None if key is None else str(key))
    if client is None:
        flat = list(_flatten(keys))
        values = dict(zip(flat, get_scheduler(collections=colls)(dsk, flat), strict=True))
        results = [_nested(k, values.__getitem__) for k in keys]
    else:
        results = _gather(client, dsk, keys, cancelled, progress)
    out = iter(
        c.__dask_postcompute__()[0](r, *c.__dask_postcompute__()[1])
        for c, r in zip(colls, results, strict=True)
    )
    return tuple(None if o is None else next(out) for o in objs)


def _flatten(keys):
    for k in keys:
        if isinstance(k, list):
            yield from _flatten(k)
        else:
            yield k


def _gather(client, dsk, keys, cancelled, progress):
    from distributed import wait

    futs = client.get(dsk, keys, sync=False)
    flat = list(_flatten(futs))
    try:
        while True:
            try:
                wait(flat, timeout=0.5)
                break
            except TimeoutError:
                if cancelled is not None and cancelled():
                    # released, not client.cancel()ed: the scheduler then forgets the
                    # job's tasks nobody wants. Cancelling a future whose task has
                    # dependents no client wants (an output the summaries read) trips
                    # an assertion in distributed's stimulus_cancel that drops the
                    # client's connection, and with it every other job's futures.
                    raise JobCancelled() from None
                if progress is not None:
                    progress(sum(f.done() for f in flat) / max(1, len(flat)))
        for f in flat:
            if f.status == "error":
                f.result()  # the task's own error
        return client.gather(futs)
    except (JobCancelled, CmapdaskError):
        raise
    except Exception as e:
        if cancelled is not None and cancelled():
            raise JobCancelled() from None
        if _is_cluster_failure(e):
            raise InfrastructureError(
                f"the Dask cluster lost this job's work ({type(e).__name__}); retry it"
            ) from None
        raise
    finally:
        del futs, flat  # release the job's keys on the scheduler


def _is_cluster_failure(e: BaseException) -> bool:
    import asyncio
    import concurrent.futures

    names = {"FuturesCancelledError", "KilledWorker", "CommClosedError", "CancelledError"}
    return (
        isinstance(e, (asyncio.CancelledError, concurrent.futures.CancelledError, OSError))
        or type(e).__name__ in names
    )


@dataclass(frozen=True)
class JobResult:
    """A computed job, in memory: what its tables and its CLUE folder are written from."""

    result: xr.Dataset
    summaries: xr.Dataset | None
    extra_notes: tuple[str, ...] = ()
    computed_at: float = field(default_factory=time.time, compare=False)

    @property
    def queries(self) -> list[str]:
        return [str(q) for q in self.result["query"].values.tolist()]

    @property
    def notes(self) -> list[str]:
        """``report.txt``'s warnings: the caller's, then set sizes, then τ."""
        return [*self.extra_notes, *derived_notes(self.result.attrs.get("cmapdask", {}))]

    def part(self, names: Mapping[str, str]) -> JobResult:
        """The queries ``names`` (batch name → the job's own name), as if computed alone."""
        pos = {q: i for i, q in enumerate(self.queries)}
        idx = [pos[b] for b in names]
        own = [names[b] for b in names]
        res = self.result.isel(query=idx).assign_coords(query=pd.Index(own, dtype=object))
        res.attrs = {"cmapdask": _part_meta(self.result.attrs.get("cmapdask", {}), names)}
        summ = None
        if self.summaries is not None:
            summ = self.summaries.isel(query=idx).assign_coords(query=pd.Index(own, dtype=object))
            summ.attrs = {"cmapdask": _part_meta(self.summaries.attrs.get("cmapdask", {}), names)}
        return JobResult(res, summ, self.extra_notes, self.computed_at)

    def write(self, out_dir, *, overwrite: bool = False) -> str:
        """CLUE's result folder (:func:`~cmapdask.connectivity.results.write_result`'s
        layout), written from memory and published atomically."""
        return write_folder(
            self.result, out_dir, summaries=self.summaries, notes=self.notes, overwrite=overwrite
        )

    def tables(self) -> dict[tuple[int, str], pd.DataFrame]:
        """``{(query index, level): ranked table}``: ``sig`` (as the folder's
        ``query_result`` tables) and each summary level (:func:`summary_tables`)."""
        out = {}
        for i, q in enumerate(self.queries):
            out[i, "sig"] = ranked_table(self.result, self.summaries, q)
            if self.summaries is not None:
                for level, df in summary_tables(self.summaries, q).items():
                    out[i, level] = df
        return out


def _part_meta(meta: Mapping, names: Mapping[str, str]) -> dict:
    out = dict(meta)
    if "genes" in meta:
        rows = {r["query"]: r for r in meta["genes"]}
        out["genes"] = [{**rows[b], "query": names[b]} for b in names if b in rows]
    if "sets" in meta:
        out["sets"] = {names[b]: meta["sets"][b] for b in names if b in meta["sets"]}
    return out


def derived_notes(meta: Mapping) -> list[str]:
    """The warnings :func:`~cmapdask.connectivity.query.query` gives, as report lines,
    from its provenance record (so the same however and wherever it ran)."""
    lines = []
    rows = {r["query"]: r for r in meta.get("genes", [])}
    for q, sets in meta.get("sets", {}).items():
        for side in ("up", "down"):
            n = rows.get(q, {}).get(f"n_{side}")
            if sets.get(side) is not None and n is not None and not MIN_GENES <= n <= MAX_GENES:
                lines.append(
                    f"warning: query {q!r}: {n} {side} genes; CMap queries use "
                    f"{MIN_GENES}-{MAX_GENES}"
                )
    if meta.get("tau") == "no background":
        store, space = meta.get("store"), meta.get("space")
        lines.append(
            f"warning: {store}: no τ background for space {space!r}; τ is NaN. Build it "
            f"with `cmapdask background {store} --space {space}`"
        )
    return lines


def _along(summ, dim: str, *suffixes: str):
    """The coordinate along ``dim`` whose name ends in one of ``suffixes``."""
    import numpy as np

    for s in suffixes:
        for k, c in summ.coords.items():
            if c.dims == (dim,) and k != dim and (k == s or k.endswith("_" + s)):
                return np.asarray(c.values)
    return None


def summary_tables(summ: xr.Dataset, q: str) -> dict[str, pd.DataFrame]:
    """One query's summary levels as tables ranked by τ (then NCS), from ``summarize``;
    in memory."""
    import numpy as np

    out = {}
    s = summ.sel(query=q)
    for level in LEVELS:
        var = f"ns_{level}"
        if var not in s or level not in s.dims:
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
