"""The FastAPI application: REST API, job endpoints and server-rendered pages.

A thin layer over the functional API (STYLE.md, "Serving"): queries run as jobs through
:mod:`cmapdask.server.jobs`; browsing reads the store's metadata through
:mod:`cmapdask.server.browse`. Every page has a JSON twin under the native API,
``/api/v1``; CLUE's API (api.clue.io's paths) is under ``/api``
(:mod:`cmapdask.server.clue`, docs/reference/clue-api.md). Every error is a 4xx with
``{"detail": "one line"}``; a query parameter a route does not take is a 400.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from cmapdask import __version__
from cmapdask.connectivity.query import scored_set
from cmapdask.connectivity.validation import MAX_GENES, MIN_GENES
from cmapdask.errors import CmapdaskError, QueryError, StoreError
from cmapdask.server import models as m
from cmapdask.server.browse import Catalogue, page
from cmapdask.server.errorpages import error_response, one_line
from cmapdask.server.jobs import JobManager, QueueFull
from cmapdask.server.security import DEFAULT_MAX_BODY, TOKEN_COOKIE, Guard, cookie_value, valid

__all__ = ["create_app", "ServerSettings"]

HERE = Path(__file__).parent
MAX_UPLOAD = 1 << 20  # bytes per uploaded gene-set file
_SUFFIX = re.compile(r"_(UP|DN)$", re.IGNORECASE)
_STATUSES = ("unknown", "in_space", "outside", "duplicate")  # validation.GeneTable.account
NATIVE = "/api/v1"  # the native API; CLUE's paths are under /api (server/clue.py)
JobId = Annotated[str, PathParam(max_length=64, description="job id from POST /api/v1/queries")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Text = Annotated[str | None, Query(max_length=200)]


class ServerSettings:
    """What ``cmapdask serve`` passes to :func:`create_app`."""

    def __init__(
        self,
        store: str,
        *,
        jobs_dir: str = "cmapdask-jobs",
        storage_options: dict | None = None,
        token: str | None = None,
        pcls: dict | None = None,
        cors_origins: list[str] | None = None,
        max_queue: int = 64,
        job_workers: int = 2,
        space: str | None = None,
        max_per_client: int = 8,
        batch_queries: int = 100,
        max_body: int = DEFAULT_MAX_BODY,
    ):
        self.store = str(store)
        self.jobs_dir = jobs_dir
        self.storage_options = storage_options
        self.token = token or None
        self.pcls = pcls
        self.cors_origins = list(cors_origins or [])
        self.max_queue = max_queue
        self.job_workers = job_workers
        self.space = space
        self.max_per_client = max_per_client
        self.batch_queries = batch_queries
        self.max_body = max_body


def _validation_line(errors) -> str:
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    return one_line(f"{where}: {msg}" if where else msg)


def plotly_js() -> Path:
    """plotly.js as shipped inside the installed ``plotly`` package."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the application for one store.

    Parameters
    ----------
    settings : ServerSettings
        Store, jobs folder, optional submit token, PCLs, CORS origins and queue limits.

    Notes
    -----
    Loads the store's signature and gene metadata into memory once (see
    :class:`~cmapdask.server.browse.Catalogue`); job threads start with the app's
    lifespan and stop with it.
    """
    # query() warns about list sizes and missing backgrounds; the API reports those itself
    warnings.filterwarnings("ignore", message=r"query .* CMap queries use")
    warnings.filterwarnings("ignore", message=r".*no τ background")
    cat = Catalogue(settings.store, storage_options=settings.storage_options)
    spaces = cat.spaces
    default_space = settings.space or next(
        (s for s in ("bing", "landmark", "all") if s in spaces), None
    )
    jobs = JobManager(
        settings.jobs_dir,
        settings.store,
        storage_options=settings.storage_options,
        pcls=settings.pcls,
        max_queue=settings.max_queue,
        max_per_client=settings.max_per_client,
        workers=settings.job_workers,
        batch_queries=settings.batch_queries,
    )
    handles: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        jobs.start()
        try:
            yield
        finally:
            jobs.stop()

    allowed_params: dict = {}

    def known_params(request: Request) -> None:
        """Refuse query parameters the route does not take (never silently ignored)."""
        route = request.scope.get("route")
        if route is None or not request.url.path.startswith("/api/"):
            return
        allowed = allowed_params.get(id(route))
        if allowed is None:
            allowed = _query_names(route.dependant) | {"user_key"}
            allowed_params[id(route)] = allowed
        unknown = sorted(set(request.query_params.keys()) - allowed)
        if unknown:
            took = ", ".join(sorted(allowed - {"user_key"})) or "none"
            raise HTTPException(
                400, f"unknown query parameter {unknown[0]!r} ({route.path} takes: {took})"
            )

    app = FastAPI(
        title="cmapdask",
        version=__version__,
        description="Connectivity Map queries and browsing over one signature store "
        f"({settings.store}).",
        lifespan=lifespan,
        dependencies=[Depends(known_params)],
        docs_url=None,  # self-hosted below: Swagger UI from the package, no CDN
        redoc_url=None,
        responses={c: {"model": m.ErrorOut} for c in (400, 401, 403, 404, 409, 413, 422, 429)},
    )
    app.openapi = lambda: _openapi(app)
    app.state.catalogue, app.state.jobs, app.state.settings = cat, jobs, settings
    app.add_middleware(
        Guard,
        token=settings.token,
        max_body=settings.max_body,
        cors_origins=settings.cors_origins,
    )
    if settings.cors_origins:  # outside the guard: it answers preflights itself
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "user_key"],
        )
    templates = Jinja2Templates(directory=str(HERE / "pages" / "templates"))

    # ------------------------------------------------------------------ errors

    @app.exception_handler(QueueFull)
    async def _full(request, exc):
        return error_response(request.scope, 429, exc, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(CmapdaskError)
    async def _bad(request, exc):
        return error_response(request.scope, 400, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error_response(request.scope, 422, _validation_line(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        detail = (
            "no page at this address"
            if exc.status_code == 404 and exc.detail == ("Not Found")
            else exc.detail
        )
        return error_response(request.scope, exc.status_code, detail, exc.headers)

    # ------------------------------------------------------------------ helpers

    def handle(space: str):
        if space not in spaces:
            raise StoreError(
                f"{settings.store}: no query index for space {space!r} "
                f"(indexed: {', '.join(spaces) or 'none'})"
            )
        if space not in handles:
            from cmapdask.connectivity.index import open_index

            handles[space] = open_index(
                settings.store, space=space, storage_options=settings.storage_options
            )
        return handles[space]

    def the_space(space: str | None) -> str:
        s = space or default_space
        if s is None:
            raise StoreError(f"{settings.store}: has no query index; run `cmapdask index`")
        handle(s)
        return s

    def get_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no job with this id")
        return job

    def done_job(job_id: str):
        job = get_job(job_id)
        if job.status != "done":
            raise HTTPException(409, f"job is {job.status}, not done")
        return job

    def downloadable(job_id: str):
        job = done_job(job_id)
        if job.download_status != "done":
            raise HTTPException(
                409,
                f"the result folder is {job.download_status}, not ready; try again shortly",
                headers={"Retry-After": "1"},
            )
        return job

    def who(request: Request) -> str:
        # the peer address: one client's share of the queue (headers are not trusted)
        return request.client.host if request.client else ""

    def status(job) -> dict:
        base = f"/api/v1/queries/{job.id}"
        links = {"self": base, "page": f"/jobs/{job.id}"}
        if job.status == "done":
            links.update(results=f"{base}/results", heatmap=f"{base}/heatmap")
            if job.download_status == "done":
                links.update(archive=f"{base}/result.tar.gz", gctx=f"{base}/gctx")
        elif job.status in ("failed", "cancelled"):
            links.update(retry=f"{base}/retry")
        return {
            "id": job.id,
            "status": job.status,
            "download_status": job.download_status if job.status == "done" else "pending",
            "stage": job.stage,
            "progress": round(float(job.progress), 4),
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "error": job.error,
            "warnings": job.warnings,
            "queries": job.queries,
            "genes": job.genes,
            "matrices": sorted(job.matrices),
            "links": links,
        }

    store_genes: list = []  # the store's gene table, matched as queries match (built once)

    def check_genes(space: str, up: list[str], down: list[str], any_size: bool = False) -> dict:
        """Every gene of both lists accounted for (CLUE's per-gene status) and whether
        the lists can be submitted as they are."""
        from cmapdask.connectivity.validation import GeneTable

        if not store_genes:
            sym = cat.genes["gene_symbol"] if "gene_symbol" in cat.genes else None
            store_genes.append(GeneTable(cat.genes.index, None if sym is None else list(sym)))
        table, h = store_genes[0], handle(space)
        out, ids = {}, {}
        for side, genes in (("up", up), ("down", down)):
            rows = table.account(genes, h.genes, space)
            pick = {k: [r["given"] for r in rows if r["status"] == k] for k in _STATUSES}
            used = [r["gene_id"] for r in rows if r["status"] == "in_space"]
            out[side] = {
                "used": used,
                "unknown": pick["unknown"],
                "outside": pick["outside"],
                "duplicates": pick["duplicate"],
                "genes": rows,
            }
            ids[side] = set(used)
        overlap = sorted(ids["up"] & ids["down"])
        msgs, ok = [], not overlap and bool(ids["up"] or ids["down"])
        for side, genes in (("up", up), ("down", down)):
            n, s = len(out[side]["used"]), out[side]
            if s["unknown"]:
                msgs.append(
                    f"{side}: {len(s['unknown'])} unknown gene(s): {' '.join(s['unknown'][:10])}"
                )
            if s["outside"]:
                msgs.append(
                    f"{side}: {len(s['outside'])} gene(s) measured but outside the {space} "
                    f"space: {' '.join(s['outside'][:10])}"
                )
            if genes and not n:
                msgs.append(f"{side}: no gene of the list is in the {space} space")
                ok = False
            elif n and not MIN_GENES <= n <= MAX_GENES:
                msgs.append(f"{side}: {n} genes; CLUE's queries use {MIN_GENES}-{MAX_GENES}")
                ok = ok and any_size
        if overlap:
            msgs.append(f"{len(overlap)} gene(s) in both lists (first: {overlap[0]})")
        return {"space": space, **out, "overlap": overlap, "messages": msgs, "ok": ok}

    def validate(req: m.QueryRequest) -> tuple[dict, list[str], list[dict], list[str]]:
        """Refuse what the job would refuse, now and in one line; collect warnings."""
        from cmapdask.connectivity.validation import prepare_queries

        space = the_space(req.space)
        names = [q.name for q in req.queries]
        if len(set(names)) != len(names):
            raise QueryError("query names are not unique")
        for q in req.queries:
            if _SUFFIX.search(q.name):
                raise QueryError(f"query {q.name!r}: a query name may not end in _UP or _DN")
            for side in ("up", "down"):
                if getattr(q, side) is not None and not getattr(q, side):
                    raise QueryError(f"query {q.name!r}: the {side} list is empty")
            if not q.up and not q.down:
                raise QueryError(f"query {q.name!r}: needs an up list, a down list or both")
        shapes = {(bool(q.up), bool(q.down)) for q in req.queries}
        if len(shapes) > 1:
            raise QueryError(
                "every query of a job needs the same lists (all up and down, all up only, "
                "or all down only); submit the others as another job"
            )
        h = handle(space)
        scored_set(settings.store, req.scored, storage_options=settings.storage_options)
        pairs = {q.name: (q.up, q.down) for q in req.queries}
        # its size warning is filtered above (catch_warnings is not thread-safe)
        qs = prepare_queries(pairs, h.genes, gene_symbols=h.symbols, space=space)
        notes = []
        for row in qs.report:
            for side in ("up", "down"):
                n = row.get(f"n_{side}", 0)
                if row.get(f"n_{side}_dropped"):
                    notes.append(
                        f"query {row['query']}: {row[f'n_{side}_dropped']} {side} gene(s) "
                        f"outside the {space} space dropped: {row[f'{side}_dropped'][:200]}"
                    )
                has = getattr(next(q for q in req.queries if q.name == row["query"]), side)
                if has and not MIN_GENES <= n <= MAX_GENES:
                    line = (
                        f"query {row['query']!r}: {n} {side} genes in the {space} space; "
                        f"CLUE's queries use {MIN_GENES}-{MAX_GENES}"
                    )
                    if not req.allow_any_size:
                        raise QueryError(f"{line} (allow_any_size runs it anyway)")
                    notes.append(line)
        if req.tau != "none" and f"background/{space}" not in cat.members:
            notes.append(f"the store has no τ background for space {space}; τ will be empty")
        request = req.model_dump(exclude={"allow_any_size"})  # a check, not a job parameter
        request["space"] = space
        return request, names, qs.report, notes

    def submit(req: m.QueryRequest, client: str) -> JSONResponse:
        request, names, report, notes = validate(req)
        job = jobs.submit(request, queries=names, genes=report, warnings=notes, client=client)
        return JSONResponse(status(job), status_code=202)

    def with_compound_meta(df: pd.DataFrame) -> pd.DataFrame:
        key = "pert_id" if "pert_id" in df else None
        if key is None and "id" in df and len(df) and df["id"].isin(cat.compounds.index).any():
            key = "id"
        if key is None:
            return df
        df = df.copy()
        for f in ("cmap_name", "moa", "target"):
            if f in cat.compounds and f not in df:
                df[f] = cat.compounds[f].reindex(df[key].astype(str)).to_numpy()
        return df

    def result_table(job, query: int, level: str, q, cell, sort, descending) -> pd.DataFrame:
        if not 0 <= query < len(job.queries):
            raise HTTPException(404, f"this job has queries 0-{len(job.queries) - 1}")
        df = with_compound_meta(jobs.table(job, query, level))
        if cell:
            for c in ("cell_id", "cell_iname", "cell"):
                if c in df:
                    df = df[df[c].astype(str) == cell]
                    break
        if q:
            needle = q.lower()
            hit = np.zeros(len(df), dtype=bool)
            for c in df.columns:
                if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]):
                    hit |= df[c].astype(str).str.lower().str.contains(needle, regex=False)
            df = df[hit]
        if sort:
            if sort not in df.columns:
                raise HTTPException(
                    400, f"cannot sort by {sort!r}; columns: {', '.join(map(str, df.columns))}"
                )
            df = df.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
        return df

    # --------------------------------------------------------------------- API

    @app.get("/api/v1/info", tags=["store"])
    def info() -> dict:
        """The store, its spaces and members, and the server's limits."""
        return {
            "store": settings.store,
            "n_sig": cat.n_sig,
            "n_gene": cat.n_gene,
            "spaces": spaces,
            "default_space": default_space,
            "members": cat.members,
            "similarity": cat.similarity_member(),
            "n_pcls": len(settings.pcls or {}),
            "token_required": settings.token is not None,
            "limits": {
                "queries_per_job": m.MAX_QUERIES,
                "genes_per_list": m.MAX_GENES_PER_LIST,
                "clue_genes": [MIN_GENES, MAX_GENES],
                "max_queue": settings.max_queue,
                "max_per_client": settings.max_per_client,
                "batch_queries": settings.batch_queries,
            },
            "jobs": jobs.counts(),
            "version": __version__,
        }

    @app.post("/api/v1/genes/check", response_model=m.GeneCheck, tags=["queries"])
    def genes_check(body: m.GeneCheckIn) -> dict:
        """Which genes are unknown, outside the space, duplicated or in both lists."""
        return check_genes(the_space(body.space), body.up, body.down, body.allow_any_size)

    @app.post(
        "/api/v1/queries",
        status_code=202,
        response_model=m.JobStatus,
        responses={
            400: {"model": m.ErrorOut},
            401: {"model": m.ErrorOut},
            429: {"model": m.ErrorOut},
        },
        tags=["queries"],
    )
    def post_query(body: m.QueryRequest, request: Request):
        """Submit one or more queries as a job; returns its id and status (an identical
        request on the same store version returns the finished job that answered it)."""
        return submit(body, who(request))

    @app.post(
        "/api/v1/queries/files",
        status_code=202,
        response_model=m.JobStatus,
        responses={400: {"model": m.ErrorOut}, 413: {"model": m.ErrorOut}},
        tags=["queries"],
    )
    async def post_query_files(
        request: Request,
        up: Annotated[UploadFile, File(description="GMT or GRP: up sets (or X_UP and X_DN)")],
        down: Annotated[UploadFile | None, File(description="GMT or GRP: down sets")] = None,
        space: Annotated[Literal["landmark", "bing", "all"] | None, Form()] = None,
        reference: Annotated[Literal["all", "touchstone"], Form()] = "all",
        scored: Annotated[str, Form(max_length=2000)] = "all",
        tau: Annotated[Literal["binned", "exact", "none"], Form()] = "binned",
        metric: Annotated[Literal["wtcs", "cs"], Form()] = "wtcs",
        tail: Annotated[Literal["both", "up", "down"], Form()] = "both",
        fdr: Annotated[Literal["auto", "null", "none"], Form()] = "auto",
        allow_any_size: Annotated[bool, Form()] = False,
    ):
        """Submit queries as GMT/GRP uploads (as ``cmapdask query --up --down``)."""
        from cmapdask.io.gmt import pair_up_down

        sets = {}
        for side, f in (("up", up), ("down", down)):
            if f is None or isinstance(f, str):
                continue
            data = await f.read(MAX_UPLOAD + 1)
            if len(data) > MAX_UPLOAD:
                raise HTTPException(413, f"the {side} file is larger than {MAX_UPLOAD} bytes")
            sets[side] = _read_sets(data, side)
        if "up" not in sets:
            raise QueryError("an up file is needed")
        if "down" in sets:
            pairs = pair_up_down(sets["up"], sets["down"])
        elif any(_SUFFIX.search(k) for k in sets["up"]):
            pairs = pair_up_down(sets["up"])
        else:
            pairs = {k: (v, None) for k, v in sets["up"].items()}
        try:
            req = m.QueryRequest(
                queries=[m.QueryIn(name=k, up=u, down=d) for k, (u, d) in pairs.items()],
                space=space,
                reference=reference,
                scored=scored,
                tau=tau,
                metric=metric,
                tail=tail,
                fdr=fdr,
                allow_any_size=allow_any_size,
            )
        except ValidationError as e:
            raise QueryError(_validation_line(e.errors())) from None
        return submit(req, who(request))

    @app.get("/api/v1/queries/{job_id}", response_model=m.JobStatus, tags=["queries"])
    def get_query(job_id: JobId):
        """Status and progress of a job."""
        return status(get_job(job_id))

    @app.delete(
        "/api/v1/queries/{job_id}",
        response_model=m.JobStatus,
        tags=["queries"],
    )
    def cancel_query(job_id: JobId):
        """Cancel a queued or running job."""
        return status(jobs.cancel(get_job(job_id)))

    @app.post(
        "/api/v1/queries/{job_id}/retry",
        status_code=202,
        response_model=m.JobStatus,
        responses={400: {"model": m.ErrorOut}, 404: {"model": m.ErrorOut}},
        tags=["queries"],
    )
    def retry_query(job_id: JobId):
        """Queue a failed or cancelled job again (same id and request)."""
        return JSONResponse(status(jobs.retry(get_job(job_id))), status_code=202)

    @app.get("/api/v1/queries/{job_id}/results", response_model=m.Page, tags=["results"])
    def results(
        job_id: JobId,
        query: Annotated[int, Query(ge=0, le=1000)] = 0,
        level: Literal["sig", "pert_cell", "pert_summary", "pcl_cell", "pcl_summary"] = "sig",
        q: Text = None,
        cell: Text = None,
        sort: Text = None,
        descending: bool = True,
        limit: Limit = 50,
        offset: Offset = 0,
    ):
        """One query's ranked table at a level: τ, NCS, FDR and metadata (CLUE's ranks)."""
        job = done_job(job_id)
        return page(result_table(job, query, level, q, cell, sort, descending), limit, offset)

    @app.get(
        "/api/v1/queries/{job_id}/results.tsv",
        response_class=Response,
        responses={200: {"content": {"text/tab-separated-values": {}}}},
        tags=["results"],
    )
    def results_tsv(
        job_id: JobId,
        query: Annotated[int, Query(ge=0, le=1000)] = 0,
        level: Literal["sig", "pert_cell", "pert_summary", "pcl_cell", "pcl_summary"] = "sig",
        q: Text = None,
        cell: Text = None,
        sort: Text = None,
        descending: bool = True,
    ):
        """The same table, whole, as TSV."""
        job = done_job(job_id)
        df = result_table(job, query, level, q, cell, sort, descending)
        return Response(
            df.to_csv(sep="\t", index=False, na_rep="NaN"),
            media_type="text/tab-separated-values",
            headers={"Content-Disposition": f'attachment; filename="{level}_{query}.tsv"'},
        )

    @app.get("/api/v1/queries/{job_id}/heatmap", tags=["results"])
    def heatmap(
        job_id: JobId,
        query: Annotated[int, Query(ge=0, le=1000)] = 0,
        n: Annotated[int, Query(ge=1, le=200)] = 40,
    ) -> dict:
        """τ by perturbagen × cell line for the top ``n`` perturbagens (pert summary τ)."""
        job = done_job(job_id)
        if not 0 <= query < len(job.queries):
            raise HTTPException(404, f"this job has queries 0-{len(job.queries) - 1}")
        if f"{query}/pert_cell" not in job.tables:
            raise HTTPException(409, "this job has no pert x cell summary")
        pc = jobs.table(job, query, "pert_cell")
        if f"{query}/pert_summary" in job.tables:
            perts = [str(p) for p in jobs.table(job, query, "pert_summary")["id"].head(n)]
        else:
            perts = list(dict.fromkeys(pc["pert_id"].astype(str)))[:n]
        grid = pc.pivot_table(index="pert_id", columns="cell_id", values="tau", aggfunc="first")
        grid = grid.reindex(index=perts)
        names = cat.compounds["cmap_name"] if "cmap_name" in cat.compounds else None
        return {
            "query": job.queries[query],
            "perts": perts,
            "names": [str(names.get(p, p)) if names is not None else p for p in perts],
            "cells": [str(c) for c in grid.columns],
            "tau": [
                [None if not np.isfinite(v) else float(v) for v in row] for row in grid.to_numpy()
            ],
        }

    @app.get(
        "/api/v1/queries/{job_id}/gctx",
        response_class=FileResponse,
        responses={200: {"content": {"application/x-hdf5": {}}}},
        tags=["results"],
    )
    def gctx(
        job_id: JobId,
        matrix: Annotated[str, Query(max_length=100, description="e.g. gutc/ps_pert_cell")] = (
            "gutc/ps_sig"
        ),
    ):
        """One matrix of the CLUE result folder as GCTx (names in the job's ``matrices``)."""
        job = downloadable(job_id)
        path = jobs.matrix_path(job, matrix)
        return FileResponse(
            path, media_type="application/x-hdf5", filename=matrix.replace("/", "_") + ".gctx"
        )

    @app.get(
        "/api/v1/queries/{job_id}/result.tar.gz",
        response_class=FileResponse,
        responses={200: {"content": {"application/gzip": {}}}},
        tags=["results"],
    )
    def archive(job_id: JobId):
        """CLUE's result folder as one ``.tar.gz``."""
        job = downloadable(job_id)
        return FileResponse(
            job.archive, media_type="application/gzip", filename=f"cmapdask_{job.id[:8]}.tar.gz"
        )

    # -------------------------------------------------------------- browsing

    @app.get("/api/v1/sigs", response_model=m.Page, tags=["browse"])
    def sigs(
        q: Text = None,
        pert_id: Text = None,
        cell: Text = None,
        pert_type: Text = None,
        moa: Text = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ):
        """Signatures, filtered by text, perturbagen, cell line, type or MoA."""
        df = cat.list_sigs(q=q, pert_id=pert_id, cell=cell, pert_type=pert_type, moa=moa)
        return page(df, limit, offset)

    @app.get("/api/v1/sigs/{sig_id}", tags=["browse"])
    def sig(sig_id: Annotated[str, PathParam(max_length=200)]) -> dict:
        """One signature's metadata."""
        out = cat.sig(sig_id)
        if out is None:
            raise HTTPException(404, "no signature with this id")
        return out

    @app.get("/api/v1/sigs/{sig_id}/neighbours", tags=["browse"])
    def neighbours(
        sig_id: Annotated[str, PathParam(max_length=200)],
        k: Annotated[int, Query(ge=1, le=500)] = 20,
    ) -> dict:
        """Most similar and most opposite signatures, from the store's similarity member."""
        out = cat.neighbours(sig_id, k=k)
        if out is None:
            raise HTTPException(404, "no signature with this id")
        return out

    @app.get("/api/v1/compounds", response_model=m.Page, tags=["browse"])
    def compounds(
        q: Text = None,
        moa: Text = None,
        target: Text = None,
        pert_type: Text = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ):
        """Perturbagens with their MoA, targets and signature counts."""
        return page(
            cat.list_compounds(q=q, moa=moa, target=target, pert_type=pert_type), limit, offset
        )

    @app.get("/api/v1/compounds/{pert_id}", tags=["browse"])
    def compound(pert_id: Annotated[str, PathParam(max_length=200)]) -> dict:
        """One perturbagen: signatures, MoA, targets and strongest connections."""
        out = cat.compound(pert_id)
        if out is None:
            raise HTTPException(404, "no compound with this id")
        return out

    @app.get("/api/v1/genes", response_model=m.Page, tags=["browse"])
    def genes(
        q: Text = None,
        feature_space: Text = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ):
        """Genes of the store (id, symbol, feature space)."""
        return page(cat.list_genes(q=q, feature_space=feature_space), limit, offset)

    @app.get("/api/v1/cells", response_model=m.Page, tags=["browse"])
    def cells(q: Text = None, limit: Limit = 50, offset: Offset = 0):
        """Cell lines with signature and perturbagen counts."""
        return page(cat.list_cells(q=q), limit, offset)

    @app.get("/api/v1/moas", response_model=m.Page, tags=["browse"])
    def moas(q: Text = None, limit: Limit = 50, offset: Offset = 0):
        """Mechanisms of action with their perturbagens."""
        return page(cat.list_moas(q=q), limit, offset)

    @app.get("/api/v1/targets", response_model=m.Page, tags=["browse"])
    def targets(q: Text = None, limit: Limit = 50, offset: Offset = 0):
        """Targets with their perturbagens."""
        return page(cat.list_targets(q=q), limit, offset)

    @app.get("/api/v1/search", tags=["browse"])
    def search(q: Annotated[str, Query(min_length=1, max_length=200)], limit: Limit = 20) -> dict:
        """Free text over compounds, MoAs, targets, cell lines and genes."""
        return cat.search(q, limit=limit)

    # -------------------------------------------------------------- CLUE's API

    from cmapdask.server.clue import Models, clue_router

    app.include_router(
        clue_router(
            models=Models(
                settings.store, storage_options=settings.storage_options, pcls=settings.pcls
            ),
            jobs=jobs,
            validate=validate,
            who=who,
            read_sets=_read_sets,
            native=NATIVE,
        )
    )

    # ------------------------------------------------------------------ pages

    def render(request: Request, name: str, status_code: int = 200, **ctx):
        ctx.setdefault("store", settings.store)
        ctx.setdefault("version", __version__)
        return templates.TemplateResponse(request, name, ctx, status_code=status_code)

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_file():
        return FileResponse(plotly_js(), media_type="application/javascript")

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs_page(request: Request):
        return render(request, "docs.html")

    def local(target: str | None) -> str:
        # only a path of this server: never an open redirect
        ok = target and target.startswith("/") and not target.startswith(("//", "/\\"))
        return target if ok else "/"

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: Text = None):  # noqa: A002 (the form's name)
        return render(request, "login.html", next=local(next), failed=False)

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        token: Annotated[str, Form(max_length=500)],
        next: Annotated[str, Form(max_length=2000)] = "/",  # noqa: A002
    ):
        if settings.token is None:
            return RedirectResponse(local(next), status_code=303)
        if not valid(settings.token, [token.strip()]):
            return render(request, "login.html", status_code=401, next=local(next), failed=True)
        out = RedirectResponse(local(next), status_code=303)
        out.set_cookie(
            TOKEN_COOKIE,
            cookie_value(settings.token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return out

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def query_page(request: Request):
        return render(
            request,
            "query.html",
            spaces=spaces,
            default_space=default_space,
            token_required=settings.token is not None,
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: JobId):
        job = get_job(job_id)
        return render(request, "result.html", job=status(job))

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(request: Request, q: Text = None):
        found = cat.search(q, limit=25) if q else None
        return render(request, "search.html", q=q or "", found=found)

    @app.get("/compounds/{pert_id}", response_class=HTMLResponse, include_in_schema=False)
    def compound_page(request: Request, pert_id: Annotated[str, PathParam(max_length=200)]):
        out = cat.compound(pert_id)
        if out is None:
            raise HTTPException(404, "no compound with this id")
        return render(request, "compound.html", c=out, has_similarity=cat.similarity_member())

    @app.get("/sigs/{sig_id}", response_class=HTMLResponse, include_in_schema=False)
    def sig_page(request: Request, sig_id: Annotated[str, PathParam(max_length=200)]):
        out = cat.sig(sig_id)
        if out is None:
            raise HTTPException(404, "no signature with this id")
        nb = cat.neighbours(sig_id, k=20) if cat.similarity_member() else None
        return render(request, "sig.html", s=out, nb=nb)

    # after the routes, so /static/vendor/plotly.min.js above is matched first
    app.mount("/static", StaticFiles(directory=str(HERE / "pages" / "static")), name="static")
    return app


def _query_names(dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    out = {f.alias for f in dependant.query_params}
    for d in dependant.dependencies:
        out |= _query_names(d)
    return out


def _read_sets(data: bytes, side: str) -> dict[str, list[str]]:
    """Parse an uploaded GMT or GRP with the project's readers (a fixed temporary name)."""
    from cmapdask.io.gmt import read_gmt, read_grp

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise QueryError(f"the {side} file is not UTF-8 text") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise QueryError(f"the {side} file holds no genes")
    gmt = any(ln.count("\t") >= 2 for ln in lines)
    with tempfile.TemporaryDirectory(prefix="cmapdask-upload-") as tmp:
        path = os.path.join(tmp, "sets.gmt" if gmt else "sets.grp")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            return read_gmt(path) if gmt else {"query": read_grp(path)}
        except CmapdaskError as e:
            # the readers name the file: here a temporary one, never shown
            raise QueryError(str(e).replace(path, f"the {side} file").replace(tmp, "")) from None


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI document, with validation errors as they are sent: one-line ``detail``."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        comps = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in comps:
            comps["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "properties": {"detail": {"type": "string", "title": "Detail"}},
                "required": ["detail"],
            }
            comps.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema
