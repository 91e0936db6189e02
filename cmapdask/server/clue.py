"""CLUE's REST API (api.clue.io) beside the native one, so CLUE's clients work unchanged.

Thin routes: metadata answers are :mod:`cmapdask.data.loopback` filters over the store's
tables (:func:`cmapdask.data.tables.read_tables`), never evaluated; query jobs are the
native API's jobs (:mod:`cmapdask.server.jobs`) submitted and reported the way CLUE's
clients expect (``POST /api/jobs`` multipart, ``GET /api/jobs/findByJobId/{id}``). The
table of CLUE endpoints and their cmapdask counterparts, with every difference, is
``docs/reference/clue-api.md``.
"""

from __future__ import annotations

import datetime
import threading
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from cmapdask.data import loopback as lb
from cmapdask.errors import InputError, QueryError

__all__ = ["clue_router", "TOOLS", "DATASETS", "FORM_FIELDS", "clue_job"]

# CLUE's query tools -> the τ of ``cmapdask query --tau`` (both are CLUE's gutc scores;
# the fast tool's τ comes from the binned background, as CLUE's fast tool approximates)
TOOLS = {"sig_gutc_tool": "exact", "sig_fastgutc_tool": "binned"}
# CLUE's datasets -> ``cmapdask query --reference``
DATASETS = {"touchstone": "touchstone", "expanded cmap": "all", "all": "all"}
FORM_FIELDS = frozenset(
    {"name", "tool_id", "uptag-cmapfile", "dntag-cmapfile", "data_type", "dataset"}
    | {"ignoreWarnings", "user_key"}
)
_STATUS = {
    "queued": "pending",
    "running": "running",
    "done": "completed",
    "failed": "error",
    "cancelled": "cancelled",
}
Where = Annotated[str | None, Query(max_length=20_000, description="LoopBack where (JSON)")]
FilterText = Annotated[
    str | None, Query(alias="filter", max_length=20_000, description="LoopBack filter (JSON)")
]
MAX_UPLOAD = 1 << 20  # bytes per uploaded GMT


def _profile_rows(attrs: dict) -> bool:
    """Whether a store's rows are Level 3/4 profiles (its provenance's last level step)."""
    rec = attrs.get("cmapdask") if isinstance(attrs, dict) else None
    while isinstance(rec, dict):
        rec = rec.get("levels", rec)  # a level step's record sits under "levels"
        step = rec.get("step")
        if step in ("qnorm", "level4"):
            return True
        if step == "level5":
            return False
        rec = rec.get("input")
    return False


class Models:
    """CLUE's model tables of one store, built once on first use (shared by requests)."""

    def __init__(self, store: str, *, storage_options=None, pcls=None):
        self.store, self.storage_options, self.pcls = store, storage_options, pcls
        self._lock = threading.Lock()
        self._tables: dict = {}

    def table(self, model: str):
        with self._lock:
            if model not in self._tables:
                from cmapdask.data.tables import frame, read_tables
                from cmapdask.io.store import open_store

                tables = {
                    k: frame(v)
                    for k, v in read_tables(
                        self.store, storage_options=self.storage_options
                    ).items()
                }
                profiles = model == "profiles" and _profile_rows(
                    open_store(self.store, storage_options=self.storage_options).attrs
                )
                self._tables[model] = lb.model_table(
                    tables, model, pcls=self.pcls, profiles=profiles
                )
            return self._tables[model]


def clue_job(job, request: Request, native: str) -> dict:
    """A job as CLUE's ``findByJobId`` answers it."""
    params = dict(job.request.get("clue", {}))
    status = _STATUS.get(job.status, job.status)
    if job.status != "done":
        download = "failed" if job.status in ("failed", "cancelled") else "pending"
    else:
        download = {"done": "completed", "failed": "failed"}.get(job.download_status, "pending")
    url = ""
    if download == "completed":
        root = request.scope.get("root_path", "").rstrip("/")
        url = f"//{request.url.netloc}{root}{native}/queries/{job.id}/result.tar.gz"
    error = job.error or ""
    if job.status == "cancelled" and not error:
        error = "the job was cancelled"
    if download == "failed" and job.status == "done":
        error = "the result folder could not be written; retry the job"

    def iso(t):
        if t is None:
            return None
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")

    return {
        "job_id": job.id,
        "id": job.id,
        "tool_id": params.get("tool_id"),
        "status": status,
        "download_status": download,
        "download_url": url,
        "errorMessage": error,
        "params": params,
        "created": iso(job.created),
        "started": iso(job.started),
        "finished": iso(job.finished),
        "progress": round(float(job.progress), 4),
        "warnings": list(job.warnings),
    }


def clue_router(*, models: Models, jobs, validate, who, read_sets, native: str):
    """The routes of CLUE's API under ``/api`` (``native``: the native API's prefix)."""
    from cmapdask.server import models as m

    router = APIRouter(prefix="/api", tags=["clue"])

    def listing(model: str):
        def route(flt: FilterText = None) -> list[dict]:
            df = models.table(model)
            return lb.records(lb.select(df, lb.parse_filter(flt, df.columns, model)))

        route.__doc__ = (
            f"CLUE's ``/api/{model}``: a JSON array; ``filter`` is LoopBack's "
            "(where, fields, order, limit, skip/offset)."
        )
        return route

    def counting(model: str):
        def route(where: Where = None) -> dict:
            df = models.table(model)
            return {"count": lb.count(df, lb.parse_where(where, df.columns, model))}

        route.__doc__ = f'CLUE\'s ``/api/{model}/count``: ``{{"count": n}}`` for ``where``.'
        return route

    for model in ("perts", "sigs", "cells", "genes", "pcls", "profiles"):
        router.add_api_route(f"/{model}", listing(model), methods=["GET"], name=f"clue_{model}")
        router.add_api_route(
            f"/{model}/count", counting(model), methods=["GET"], name=f"clue_{model}_count"
        )

    @router.post("/jobs")
    async def clue_submit(
        request: Request,
        uptag: Annotated[UploadFile | None, File(alias="uptag-cmapfile")] = None,
        dntag: Annotated[UploadFile | None, File(alias="dntag-cmapfile")] = None,
        tool_id: Annotated[str, Form(max_length=64)] = "sig_gutc_tool",
        name: Annotated[str, Form(max_length=200)] = "my_analysis",
        data_type: Annotated[str, Form(max_length=64)] = "L1000",
        dataset: Annotated[str, Form(max_length=64)] = "Touchstone",
        ignoreWarnings: Annotated[str, Form(max_length=8)] = "false",  # noqa: N803 (CLUE's)
    ) -> dict:
        """CLUE's job submission: GMT files ``uptag-cmapfile`` and ``dntag-cmapfile``."""
        from cmapdask.io.gmt import pair_up_down

        form = await request.form()
        unknown = sorted(set(form.keys()) - FORM_FIELDS)
        if unknown:
            known = ", ".join(sorted(FORM_FIELDS))
            raise InputError(f"jobs: unknown form field {unknown[0]!r} (fields: {known})")
        if tool_id not in TOOLS:
            raise InputError(f"jobs: tool_id {tool_id!r} is not one of {', '.join(TOOLS)}")
        if data_type != "L1000":
            raise InputError(f"jobs: data_type {data_type!r} is not 'L1000'")
        reference = DATASETS.get(dataset.strip().lower())
        if reference is None:
            raise InputError(f"jobs: dataset {dataset!r} is not 'Touchstone' or 'Expanded CMap'")
        if ignoreWarnings.lower() not in ("true", "false"):
            raise InputError(f"jobs: ignoreWarnings is 'true' or 'false', not {ignoreWarnings!r}")
        if uptag is None or dntag is None:
            raise QueryError("jobs: both uptag-cmapfile and dntag-cmapfile (GMT) are needed")
        sets = {}
        for side, f in (("up", uptag), ("down", dntag)):
            data = await f.read(MAX_UPLOAD + 1)
            if len(data) > MAX_UPLOAD:
                raise HTTPException(413, f"the {side} file is larger than {MAX_UPLOAD} bytes")
            sets[side] = read_sets(data, side)
        up, dn = sets["up"], sets["down"]
        if list(up) != list(dn) and len(up) == len(dn):
            # CLUE pairs the two files' sets by their order; names may differ
            dn = dict(zip(up, dn.values(), strict=True))
        pairs = pair_up_down(up, dn)
        try:
            req = m.QueryRequest(
                queries=[m.QueryIn(name=k, up=u, down=d) for k, (u, d) in pairs.items()],
                reference=reference,
                tau=TOOLS[tool_id],
                allow_any_size=ignoreWarnings.lower() == "true",  # CLUE's override
            )
        except ValidationError as e:
            raise QueryError(f"jobs: {e.errors()[0].get('msg', 'invalid query')}") from None
        try:
            request_dict, names, report, notes = validate(req)
        except QueryError as e:
            if "allow_any_size" not in str(e):
                raise
            # the size refusal, in CLUE's words
            text = str(e).replace("allow_any_size", "ignoreWarnings=true")
            raise QueryError(f"jobs: {text}") from None
        if notes and ignoreWarnings.lower() != "true":
            raise QueryError(f"jobs: {notes[0]} (send ignoreWarnings=true to run it anyway)")
        request_dict["clue"] = {
            "name": name,
            "tool_id": tool_id,
            "data_type": data_type,
            "dataset": dataset,
            "ignoreWarnings": ignoreWarnings.lower() == "true",
        }
        job = jobs.submit(
            request_dict, queries=names, genes=report, warnings=notes, client=who(request)
        )
        out = clue_job(job, request, native)
        return {"result": {**out, "job_id": job.id}}

    @router.get("/jobs/findByJobId/{job_id}")
    def clue_find(request: Request, job_id: Annotated[str, PathParam(max_length=64)]) -> dict:
        """CLUE's job status: ``status``, ``download_status``, ``download_url``."""
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no job with this id")
        return clue_job(job, request, native)

    return router
