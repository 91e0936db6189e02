"""What every command shares: choosing the Dask cluster, progress, and clean exits.

The library never starts a cluster by itself; the command line does, here. A cluster is
named by ``--cluster``:

- ``local`` (default): a ``LocalCluster`` sized by ``cmapdask.cluster.local`` config;
- ``none``: no cluster, dask's threaded scheduler in this process;
- ``tcp://HOST:PORT`` (or any address): attach to a running scheduler;
- a path to a scheduler file (``dask scheduler --scheduler-file``).
The default comes from dask config ``cmapdask.cluster.address`` (env
``DASK_CMAPDASK__CLUSTER__ADDRESS``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import dask

from cmapdask import config as _config  # noqa: F401  (registers defaults)

__all__ = ["add_cluster_args", "dask_client", "progress", "say"]


def add_cluster_args(parser) -> None:
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="local|none|ADDRESS|FILE",
        help="Dask cluster to run on (default: dask config cmapdask.cluster.address, "
        "else a local cluster)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="local cluster: number of worker processes"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or dashboard address"
    )


def say(args, message: str) -> None:
    """Status line on stderr, so stdout stays clean for data."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def dask_client(args) -> Iterator[object | None]:
    """Start or attach the cluster named by ``args.cluster``; yield a Client (or None)."""
    target = getattr(args, "cluster", None) or dask.config.get("cmapdask.cluster.address")
    if target in (None, "", "local"):
        from distributed import Client, LocalCluster

        n = getattr(args, "workers", None) or dask.config.get("cmapdask.cluster.local.n_workers")
        n = n or max(1, min(os.cpu_count() or 1, 4))
        threads = dask.config.get("cmapdask.cluster.local.threads_per_worker")
        memory = dask.config.get("cmapdask.cluster.local.memory_limit")
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=threads,
                memory_limit=memory,
                processes=True,
                dashboard_address=":0",
                silence_logs=40,
            ) as cluster,
            Client(cluster) as client,
        ):
            say(
                args,
                f"cmapdask: local Dask cluster, {n} workers, dashboard {client.dashboard_link}",
            )
            yield client
    elif target == "none":
        with dask.config.set(scheduler="threads"):
            yield None
    else:
        from distributed import Client

        kwargs = {"scheduler_file": target} if os.path.isfile(target) else {"address": target}
        with Client(timeout="30s", **kwargs) as client:
            say(
                args,
                f"cmapdask: Dask cluster {client.scheduler.address}, dashboard "
                f"{client.dashboard_link}",
            )
            yield client


@contextlib.contextmanager
def progress(args, client) -> Iterator[None]:
    """Show progress of dask work run inside the block (a text bar on stderr)."""
    if (
        getattr(args, "quiet", False)
        or not sys.stderr.isatty()
        and not os.environ.get("CMAPDASK_PROGRESS")
    ):
        yield
        return
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr):
            yield
    else:
        # distributed.progress needs futures; the scheduler plugin-free way is the
        # dashboard. Report it; per-stage bars are printed by the commands.
        yield
