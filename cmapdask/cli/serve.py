"""``cmapdask serve``: the Query app, data browser and REST API over one store.

Starts a FastAPI application on uvicorn. Queries run as jobs on the Dask cluster named by
``--scheduler`` (the same choices as the other commands' cluster option); results are
kept under ``--jobs-dir``, so they survive a restart.
"""

from __future__ import annotations

import os
import sys
import types

from cmapdask.cli.options import json_object, positive_int, scheduler_text
from cmapdask.cli.runtime import dask_client, say
from cmapdask.errors import InputError

__all__ = ["register", "serve"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the query app, data browser and REST API of a store",
        description="Start a web server: the REST API (OpenAPI schema at /openapi.json, "
        "documentation at /docs), query jobs on the Dask cluster, and pages to query, "
        "browse and search the store.",
    )
    p.add_argument("store", metavar="STORE", help="signature store URL (local path or s3://)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--scheduler",
        type=scheduler_text,
        default=None,
        metavar="local|none|ADDRESS|FILE",
        help="Dask cluster the jobs run on (default: dask config cmapdask.cluster.address, "
        "else a local cluster; none: threads in the server process)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="local cluster: number of worker processes",
    )
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="file whose first line is the token every page and route needs but /health and "
        "/static (default: env CMAPDASK_TOKEN; neither: open to anyone who can connect)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="deprecated: a token on the command line shows in `ps`; use env CMAPDASK_TOKEN "
        "or --token-file",
    )
    p.add_argument(
        "--max-body",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="largest request body accepted, uploads included (default 8388608: 8 MiB); "
        "a larger one is a 413 before it is read",
    )
    p.add_argument(
        "--jobs-dir",
        default="cmapdask-jobs",
        metavar="DIR",
        help="where job results are kept (default ./cmapdask-jobs)",
    )
    p.add_argument("--pcl", default=None, metavar="GMT", help="PCL definitions (pert_id sets)")
    p.add_argument(
        "--space", choices=["landmark", "bing", "all"], default=None, help="default space"
    )
    p.add_argument("--max-queue", type=int, default=64, help="jobs waiting at most (64)")
    p.add_argument("--job-workers", type=int, default=2, help="batches computed at once (2)")
    p.add_argument(
        "--max-per-client",
        type=int,
        default=8,
        help="jobs one client address may have queued or running (8)",
    )
    p.add_argument(
        "--batch-queries",
        type=int,
        default=100,
        help="queries of jobs arriving together scored in one pass at most (100; 1: alone)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow cross-origin requests from ORIGIN (repeatable; default: none)",
    )
    p.add_argument(
        "--storage-options", type=json_object, default=None, metavar="JSON", help="fsspec options"
    )
    p.add_argument("--quiet", action="store_true", help="no status lines or request log")
    p.set_defaults(func=run_serve)


def _runtime_args(args) -> types.SimpleNamespace:
    # the cluster helpers read the scheduler under either option name
    return types.SimpleNamespace(
        cluster=args.scheduler,
        scheduler=args.scheduler,
        workers=args.workers,
        quiet=args.quiet,
    )


def run_serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: not a port number")
    if min(args.max_queue, args.job_workers, args.max_per_client, args.batch_queries) < 1:
        raise InputError(
            "--max-queue, --job-workers, --max-per-client and --batch-queries must be at least 1"
        )
    args.token = server_token(args)
    _check_listen(args.host, args.port)
    jobs = getattr(args, "jobs_dir", None)
    if jobs and "://" not in str(jobs):
        import os

        if os.path.lexists(jobs) and not os.path.isdir(jobs):
            raise InputError(f"--jobs-dir {jobs}: is a file, not a folder")
        if not os.path.isdir(jobs):
            from cmapdask.io.atomic import check_parent

            check_parent(str(jobs))
    return serve(args)


def server_token(args) -> str | None:
    """--token-file, else the deprecated --token, else env CMAPDASK_TOKEN; None: open."""
    if args.token_file and args.token:
        raise InputError("--token and --token-file: give one")
    if args.token:
        print(
            "cmapdask: warning: --token is deprecated: it shows in `ps` to every user of "
            "this machine; use env CMAPDASK_TOKEN or --token-file",
            file=sys.stderr,
        )
        return args.token.strip() or None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(
                f"--token-file {args.token_file}: cannot be read ({e.__class__.__name__})"
            ) from None
        if not token:
            raise InputError(f"--token-file {args.token_file}: its first line is empty")
        return token
    return os.environ.get("CMAPDASK_TOKEN", "").strip() or None


def _check_listen(host: str, port: int) -> None:
    """Bind HOST:PORT once before anything starts or is created (the jobs folder, a
    cluster): an unknown host or a busy port is one line, exit 2."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise InputError(f"--host {host}: not an address to listen on ({e})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            raise InputError(
                f"--host {host} --port {port}: cannot listen there ({e.strerror or e})"
            ) from None


def serve(args) -> int:
    """Build the app and run uvicorn until interrupted (the cluster lives as long)."""
    import uvicorn

    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.server.app import ServerSettings, create_app

    pcls = read_gene_sets(args.pcl) if args.pcl else None
    rt = _runtime_args(args)
    with dask_client(rt):
        app = create_app(
            ServerSettings(
                args.store,
                jobs_dir=args.jobs_dir,
                storage_options=args.storage_options,
                token=args.token,
                pcls=pcls,
                cors_origins=args.cors_origin,
                max_queue=args.max_queue,
                job_workers=args.job_workers,
                space=args.space,
                max_per_client=args.max_per_client,
                batch_queries=args.batch_queries,
                **({"max_body": args.max_body} if args.max_body else {}),
            )
        )
        host = f"[{args.host}]" if ":" in args.host else args.host
        say(args, f"cmapdask: serving {args.store} at http://{host}:{args.port}/")
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning" if args.quiet else "info",
            access_log=not args.quiet,
            # clients poll job status; keep their connections while jobs hold the GIL
            timeout_keep_alive=30,
        )
    return 0
