#!/usr/bin/env python3
"""The nightly job: append what arrived, fold it into the products, publish a new version.

Built only from cmapdask's public API (:mod:`cmapdask.rebuild`). Usage::

    python workflows/nightly_rebuild.py ROOT [--incoming DIR] [--full]
        [--scheduler local|slurm|pbs|gateway|ADDRESS|SCHEDULER_FILE] [--k 100]

``--incoming DIR``: every ``*.gctx`` there not yet in the collection (by SHA-256, from the
version manifests) is appended first, with ``NAME.siginfo.txt`` beside it as its siginfo.
A rerun after a failure appends nothing twice and resumes the rebuild from completed
blocks. The cluster comes from ``--scheduler`` (``--cluster``: deprecated alias), else dask config
``cmapdask.cluster.address``, else a local cluster; ``slurm``/``pbs`` use dask-jobqueue
(configured by ``cluster/slurm/jobqueue.yaml``), ``gateway`` uses Dask Gateway.

Exit codes: 0 done (published, or nothing new); 2 bad input; 75 transient failure (rerun);
1 a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import sys
import time

import dask

import cmapdask
from cmapdask.errors import CmapdaskError, require
from cmapdask.rebuild import append, list_versions, rebuild

EXIT_TRANSIENT = 75


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nightly_rebuild.py", description=__doc__.split("\n\n")[0])
    p.add_argument("root", metavar="ROOT", help="collection URL (local path or s3://...)")
    p.add_argument("--incoming", default=None, metavar="DIR", help="folder of new *.gctx files")
    p.add_argument("--full", action="store_true", help="recompute every product from scratch")
    p.add_argument(
        "--scheduler",
        "--cluster",  # deprecated alias
        dest="scheduler",
        default=None,
        help="local | slurm | pbs | gateway | scheduler ADDRESS | scheduler FILE",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="workers to start (local/jobqueue/gateway)"
    )
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--metric", choices=["pearson", "spearman", "cosine"], default="pearson")
    p.add_argument("--space", choices=["landmark", "bing", "all"], default="landmark")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON")
    return p


@contextlib.contextmanager
def cluster_client(target: str | None, workers: int | None):
    """A distributed Client on the cluster named by ``target`` (printed with its dashboard)."""
    from distributed import Client, LocalCluster

    target = target or dask.config.get("cmapdask.cluster.address", None) or "local"
    stack = contextlib.ExitStack()
    with stack:
        if target == "local":
            cluster = stack.enter_context(
                LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
            )
        elif target in ("slurm", "pbs"):
            # configured by jobqueue.yaml (see cluster/)
            dask_jobqueue = require("dask_jobqueue", "cluster", f"a {target.upper()} cluster")
            cls = dask_jobqueue.SLURMCluster if target == "slurm" else dask_jobqueue.PBSCluster
            cluster = stack.enter_context(cls())
            cluster.scale(n=workers or 4)  # workers, whatever the processes per job
        elif target == "gateway":
            # configured by gateway.yaml (see cluster/)
            Gateway = require("dask_gateway", "cluster", "a Dask Gateway cluster").Gateway
            cluster = stack.enter_context(Gateway().new_cluster())
            cluster.scale(workers or 4)
        else:
            cluster = None
        if cluster is not None:
            client = stack.enter_context(Client(cluster))
        elif os.path.isfile(target):
            client = stack.enter_context(Client(scheduler_file=target, timeout="60s"))
        else:
            client = stack.enter_context(Client(target, timeout="60s"))
        print(
            f"nightly_rebuild: Dask cluster {target}, dashboard {client.dashboard_link}",
            file=sys.stderr,
            flush=True,
        )
        yield client


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def append_incoming(args) -> list[str]:
    """Append the incoming files not yet in any version (idempotent)."""
    if not args.incoming:
        return []
    known = {
        m.get("inputs", {}).get("gctx", {}).get("sha256")
        for m in list_versions(args.root, storage_options=args.storage_options)
    }
    added = []
    for path in sorted(glob.glob(os.path.join(args.incoming, "*.gctx"))):
        if _sha256(path) in known:
            continue
        info = path[: -len(".gctx")] + ".siginfo.txt"
        vid = append(
            args.root,
            path,
            sig_info=info if os.path.exists(info) else None,
            storage_options=args.storage_options,
        )
        print(f"nightly_rebuild: appended {os.path.basename(path)} as {vid}", file=sys.stderr)
        added.append(vid)
    return added


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        with cluster_client(args.scheduler, args.workers):
            append_incoming(args)
            res = rebuild(
                args.root,
                full=args.full,
                k=args.k,
                metric=args.metric,
                space=args.space,
                block_size=args.block_size,
                storage_options=args.storage_options,
                progress=False,
            )
    except CmapdaskError as e:
        print(f"nightly_rebuild: error: {e}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as e:
        print(f"nightly_rebuild: transient failure, rerun to resume: {e}", file=sys.stderr)
        return EXIT_TRANSIENT
    except Exception as e:
        if type(e).__name__ in ("KilledWorker", "CommClosedError", "CancelledError"):
            print(f"nightly_rebuild: lost the cluster, rerun to resume: {e}", file=sys.stderr)
            return EXIT_TRANSIENT
        raise
    print(
        json.dumps(
            {
                "status": res.status,
                "version": res.version,
                "mode": res.mode,
                "n_sig": res.n_sig,
                "n_new": res.n_new,
                "timings": res.timings,
                "wall_s": round(time.perf_counter() - t0, 2),
                "cmapdask": cmapdask.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
