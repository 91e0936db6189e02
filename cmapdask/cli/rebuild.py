"""``cmapdask append`` and ``cmapdask rebuild``: grow a collection, publish nightly versions.

Exit codes (for cron, SLURM, PBS, Kubernetes): 0 done (a version published, or nothing
new to do); 2 bad input (duplicate ids, conflicting metadata, missing store: fix and
resubmit); 75 a transient failure (lost workers or cluster, object storage unreachable
after retries: resubmit as is -- a rerun resumes from completed blocks); 1 a bug
(traceback); 130 interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from typing import get_args

from cmapdask.cli.options import SO_HELP, json_object, positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.model.types import SimilarityMetric, Space

__all__ = ["register", "run_append", "run_rebuild", "EXIT_TRANSIENT"]

EXIT_TRANSIENT = 75  # EX_TEMPFAIL of sysexits.h: "try again later"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "append",
        help="add signatures (and metadata) to a versioned collection",
        description="Add the signatures of NEW.gctx to the collection STORE as a new staged "
        "version (the first append creates the collection). Duplicate signature ids are "
        "refused; metadata fields are reconciled (missing on one side) or refused (numeric "
        "vs text). `cmapdask rebuild STORE` publishes it. " + __doc__.split("\n\n")[1],
    )
    p.add_argument("store", metavar="STORE", help="collection URL (local path, s3://...)")
    p.add_argument("new", metavar="NEW.gctx", help="GCTx file of new signatures")
    p.add_argument(
        "--sig-info", default=None, metavar="F", help="siginfo table of the new signatures"
    )
    p.add_argument(
        "--gene-info", default=None, metavar="F", help="geneinfo table (first append only)"
    )
    p.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=None,
        help="signatures per chunk (first append only)",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for STORE and NEW (e.g. an S3 endpoint)",
    )
    add_cluster_args(p)
    p.set_defaults(func=run_append)

    r = subparsers.add_parser(
        "rebuild",
        help="nightly rebuild: fold new signatures into the products, publish",
        description="Compute the products of the newest appended version of STORE (top-k "
        "similarity incrementally: new x all merged into the existing lists; query indexes "
        "extended; tau backgrounds shared, or rebuilt when the reference set changed; "
        "clusters recomputed) and switch STORE/CURRENT to it atomically. Nothing new: a no-op. A "
        "killed run "
        "resumes from completed blocks. " + __doc__.split("\n\n")[1],
    )
    r.add_argument("store", metavar="STORE", help="collection URL")
    r.add_argument("--full", action="store_true", help="recompute everything from scratch")
    r.add_argument(
        "--metric",
        choices=get_args(SimilarityMetric),
        default="pearson",
        help="similarity of the neighbour lists (default pearson)",
    )
    r.add_argument("--k", type=positive_int, default=100, help="neighbours per tail (default 100)")
    r.add_argument(
        "--space",
        choices=get_args(Space),
        default="landmark",
        help="feature space (default landmark)",
    )
    r.add_argument(
        "--block-size", type=positive_int, default=None, help="signatures per similarity block"
    )
    r.add_argument(
        "--storage-options", type=json_object, default=None, metavar="JSON", help=SO_HELP
    )
    add_cluster_args(r)
    r.set_defaults(func=run_rebuild)


def _transient(e: BaseException) -> bool:
    names = {"KilledWorker", "CommClosedError", "FutureCancelledError", "CancelledError"}
    return (
        isinstance(e, (OSError, TimeoutError, ConnectionError))
        and not isinstance(e, (FileNotFoundError, PermissionError))
        or type(e).__name__ in names
    )


def _guard(args, fn) -> int:
    try:
        return fn()
    except Exception as e:
        from cmapdask.errors import CmapdaskError

        if isinstance(e, CmapdaskError) or not _transient(e):
            raise
        # an error line, shown even with --quiet (the exit code alone says too little)
        print(
            f"cmapdask: error: transient failure, rerun to resume: {type(e).__name__}: "
            + " ".join(str(e).split()),
            file=sys.stderr,
        )
        return EXIT_TRANSIENT


def run_append(args) -> int:
    from cmapdask.rebuild import append

    def go():
        t0 = time.perf_counter()
        with dask_client(args):
            vid = append(
                args.store,
                args.new,
                sig_info=args.sig_info,
                gene_info=args.gene_info,
                storage_options=args.storage_options,
                src_storage_options=args.storage_options if "://" in args.new else None,
                chunk_rows=args.chunk_rows,
                progress=not args.quiet,
            )
        say(
            args,
            f"cmapdask: staged version {vid} of {args.store} in "
            f"{time.perf_counter() - t0:.1f} s; publish it with `cmapdask rebuild {args.store}`",
        )
        print(vid)
        return 0

    return _guard(args, go)


def run_rebuild(args) -> int:
    from cmapdask.rebuild import rebuild

    def go():
        t0 = time.perf_counter()
        with dask_client(args):
            res = rebuild(
                args.store,
                full=args.full,
                metric=args.metric,
                k=args.k,
                space=args.space,
                block_size=args.block_size,
                storage_options=args.storage_options,
                progress=not args.quiet,
            )
        if res.status == "nothing-new":
            say(args, f"cmapdask: nothing new in {args.store}; current is {res.version}")
        else:
            say(
                args,
                f"cmapdask: published {res.version} ({res.mode}, {res.n_sig} signatures, "
                f"{res.n_new} new) in {time.perf_counter() - t0:.1f} s",
            )
        print(json.dumps(dataclasses_asdict(res)))
        return 0

    return _guard(args, go)


def dataclasses_asdict(res) -> dict:
    import dataclasses

    return dataclasses.asdict(res)
