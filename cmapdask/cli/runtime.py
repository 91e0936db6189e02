"""What every command shares: the Dask scheduler, progress, and bounded, clean exits.

The library never starts a cluster by itself; the command line does, here. The scheduler
is named by ``--scheduler`` (``--cluster`` is a deprecated alias):

- ``local`` (default): a ``LocalCluster`` sized by ``cmapdask.cluster.local`` config;
- ``none``: no cluster, dask's threaded scheduler in this process;
- ``tcp://HOST:PORT`` (any ``PROTOCOL://`` address, or ``HOST:PORT``): a running scheduler;
- anything else is a scheduler file (``dask scheduler --scheduler-file``).

The default comes from dask config ``cmapdask.cluster.address`` (env
``DASK_CMAPDASK__CLUSTER__ADDRESS``).

Failures of infrastructure end a command in bounded time with one line and exit 75
(:class:`~cmapdask.errors.InfrastructureError`): a scheduler that does not answer within
``cmapdask.runtime.connect_timeout`` seconds, a scheduler that dies, and a cluster that
stalls (work pending, nothing running and no task finishing for
``cmapdask.runtime.stall_timeout`` seconds) or reports an internal error. A missing
scheduler file is bad input (exit 2). Lost workers are not failures: a local cluster's
nanny restarts a killed worker, and the scheduler reruns the tasks it held (up to
``distributed.scheduler.allowed-failures`` times per task).

Progress is drawn here and only here (the library draws none), on stderr and only when
stderr is a terminal: dask's callback bar for the threaded scheduler, and for a
distributed Client a bar fed by the scheduler's task counts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator

import dask

from cmapdask import config as _config  # noqa: F401  (registers defaults)
from cmapdask.cli.options import positive_int, scheduler_text
from cmapdask.errors import InfrastructureError, InputError

__all__ = ["add_cluster_args", "dask_client", "progress", "say", "scheduler_target"]

#: Why the watchdog last stopped a command (the CLI reports it if the interrupt it sends
#: to the main thread lands outside the block it guarded).
last_failure: str | None = None

_ADDRESS = re.compile(r"^[A-Za-z0-9+.-]+://|^[A-Za-z0-9_.-]+:\d+$|^\[[0-9A-Fa-f:]+\]:\d+$")


class _DeprecatedCluster(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        print("cmapdask: note: --cluster is deprecated; use --scheduler", file=sys.stderr)


def _configured_address():
    """``cmapdask.cluster.address``; dask's config reads the environment value ``none`` as
    Python None (unset), so the variable's own text decides that case."""
    env = os.environ.get("DASK_CMAPDASK__CLUSTER__ADDRESS", "").strip()
    if env.lower() in ("none", "'none'", '"none"'):
        return "none"
    return dask.config.get("cmapdask.cluster.address")


def add_cluster_args(parser) -> None:
    parser.add_argument(
        "--scheduler",
        dest="scheduler",
        type=scheduler_text,
        default=None,
        metavar="local|none|ADDRESS|FILE",
        help="Dask scheduler to run on: local (a local cluster), none (threads in this "
        "process), a scheduler address or a scheduler file (default: dask config "
        "cmapdask.cluster.address, else local)",
    )
    parser.add_argument(
        "--cluster",
        dest="scheduler",
        action=_DeprecatedCluster,
        default=argparse.SUPPRESS,
        help="deprecated alias of --scheduler",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="local cluster: number of worker processes",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or dashboard address"
    )


def say(args, message: str) -> None:
    """Status line on stderr, so stdout stays clean for data."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _seconds(key: str, default: float | None) -> float | None:
    from dask.utils import parse_timedelta

    value = dask.config.get(f"cmapdask.runtime.{key}", default)
    return None if value in (None, "", 0, "0") else float(parse_timedelta(value, "s"))


def scheduler_target(args) -> tuple[str, str]:
    """``(kind, value)`` for ``--scheduler``: kind is local, none, address or file.

    Raises :class:`~cmapdask.errors.InputError` for a scheduler file that does not exist.
    """
    target = getattr(args, "scheduler", None) or _configured_address()
    target = str(target).strip() if target is not None else ""
    if target in ("", "local"):
        return "local", "local"
    if target == "none":
        return "none", "none"
    if _ADDRESS.match(target):
        return "address", target
    if not os.path.isfile(target):
        raise InputError(
            f"--scheduler {target}: not local, none, a scheduler address "
            "(tcp://HOST:PORT) or an existing scheduler file"
        )
    return "file", target


class _ErrorCounter(logging.Handler):
    """Counts failed state transitions logged by an in-process (local) scheduler, whose
    logs are otherwise silenced."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.count = 0

    def emit(self, record):
        if "Error transitioning" in record.getMessage():
            self.count += 1


_LOCAL_ERRORS = _ErrorCounter()


def _start_local(args):
    from distributed import Client, LocalCluster

    n = getattr(args, "workers", None) or dask.config.get("cmapdask.cluster.local.n_workers")
    n = n or max(1, min(os.cpu_count() or 1, 4))
    threads = dask.config.get("cmapdask.cluster.local.threads_per_worker")
    memory = dask.config.get("cmapdask.cluster.local.memory_limit")
    from cmapdask.interrupts import deferred_interrupt
    from cmapdask.rebuild.faults import checkpoint

    # Ctrl-C while the cluster starts is held until it is up, then closes it (exit 130):
    # never ignored, never a half-started cluster left behind. The workers ignore SIGINT
    # (their preload): only this process stops the cluster, and no worker prints.
    cluster = client = None
    # multiprocessing's resource tracker (started with the cluster, inheriting this
    # environment) unlinks the semaphores of workers stopped by Ctrl-C and warns on
    # stderr after our last line; the cleanup stays, the warning goes
    quiet = "ignore:resource_tracker:UserWarning"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(
            w for w in (os.environ.get("PYTHONWARNINGS"), quiet) if w
        )
    try:
        with deferred_interrupt():
            checkpoint("cluster")
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=threads,
                memory_limit=memory,
                processes=True,
                dashboard_address=":0",
                silence_logs=50,
                preload=["cmapdask.cli.worker_setup"],
            )
            _silence_distributed()
            log = logging.getLogger("distributed.scheduler")
            log.setLevel(logging.ERROR)
            log.propagate = False  # counted, not printed
            if _LOCAL_ERRORS not in log.handlers:
                log.addHandler(_LOCAL_ERRORS)
            client = Client(cluster)
    except BaseException:
        for c in (client, cluster):
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
        raise
    say(args, f"cmapdask: local Dask cluster, {n} workers, dashboard {client.dashboard_link}")
    return cluster, client


def _silence_distributed() -> None:
    """distributed's own log lines (tracebacks of reconnection attempts, dead workers)
    are noise in a command that reports its failures in one line."""
    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # children have levels of their own
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _check_scheduler_file(target: str) -> None:
    """A scheduler file is JSON naming the scheduler's ``address`` (what
    ``dask scheduler --scheduler-file`` writes); anything else is refused in one line."""
    import json

    try:
        with open(target, "rb") as f:
            info = json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise InputError(f"--scheduler {target}: cannot read the scheduler file") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(
            f"--scheduler {target}: not a scheduler file (not JSON; expected what "
            "`dask scheduler --scheduler-file` writes)"
        ) from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise InputError(
            f"--scheduler {target}: the scheduler file names no address "
            '(expected {"address": "tcp://host:port", ...})'
        )


def _attach(args, kind: str, target: str):
    from distributed import Client

    # the command reports a lost scheduler in one line; distributed's own tracebacks of
    # its reconnection attempts are noise here (as a local cluster's logs are silenced)
    _silence_distributed()
    timeout = _seconds("connect_timeout", 20) or 20
    if kind == "file":
        _check_scheduler_file(target)
    kwargs = {"scheduler_file": target} if kind == "file" else {"address": target}
    try:
        client = Client(timeout=f"{timeout}s", **kwargs)
    except (OSError, TimeoutError) as e:
        if kind == "file" and isinstance(e, (FileNotFoundError, IsADirectoryError)):
            raise InputError(f"--scheduler {target}: cannot read the scheduler file") from None
        raise InfrastructureError(
            f"scheduler {target} did not answer within {timeout:g} s "
            "(cmapdask.runtime.connect_timeout); is it running?"
        ) from None
    except ValueError as e:  # a malformed address or scheduler file
        raise InputError(f"--scheduler {target}: {e}") from None
    say(
        args,
        f"cmapdask: Dask scheduler {client.scheduler.address}, dashboard {client.dashboard_link}",
    )
    from cmapdask.environment import check_workers

    try:
        check_workers(client)  # another release on the workers: one line, exit 2
    except BaseException:
        client.close()
        raise
    return client


@contextlib.contextmanager
def dask_client(args) -> Iterator[object | None]:
    """Start or attach the scheduler named by ``args.scheduler``; yield a Client (or None).

    While the block runs, a watchdog turns a dead, unreachable or stalled scheduler into
    :class:`~cmapdask.errors.InfrastructureError` (exit 75), and transient errors raised
    by the cluster (lost connections, tasks that killed their workers too often) become
    the same error.
    """
    kind, target = scheduler_target(args)
    if kind == "none":
        with dask.config.set(scheduler="threads"), progress(args, None):
            yield None
        return
    # a failed or interrupted command's one line is its last word, not asyncio's "Task
    # exception was never retrieved" for the gathers an interrupt abandons
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    cluster = None
    if kind == "local":
        cluster, client = _start_local(args)
    else:
        client = _attach(args, kind, target)
    dog = _Watchdog(client, target)
    try:
        with client, dog, progress(args, client):
            yield client
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def _scheduler_state(dask_scheduler=None):  # run on the scheduler; pickled by value
    pending = 0
    for tg in dask_scheduler.task_groups.values():
        for state in ("waiting", "processing", "queued", "no-worker"):
            pending += tg.states.get(state, 0)
    running = sum(len(ws.processing) for ws in dask_scheduler.workers.values())
    errors = 0
    with contextlib.suppress(Exception):
        errors = sum(
            1 for level, msg in dask_scheduler.get_logs() if "Error transitioning" in str(msg)
        )
    return (dask_scheduler.transition_counter, pending, running, errors)


def _by_value(fn):
    """``fn`` rebuilt outside any importable module, so cloudpickle ships its code and a
    scheduler without cmapdask installed can run it."""
    import types

    g = {"contextlib": contextlib, "__builtins__": __builtins__}
    return types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__)


class _Watchdog:
    """Interrupts the main thread when the scheduler is gone, stalled or broken.

    Polls the scheduler every ``cmapdask.runtime.poll_interval`` seconds for its
    transition count, pending and running tasks and internal errors. It gives up (and the
    command exits 75) when the scheduler cannot be reached for ``connect_timeout``
    seconds, when it logs a failed state transition, or when work is pending but nothing
    runs and nothing changes for ``stall_timeout`` seconds. Long tasks are not stalls.
    """

    def __init__(self, client, target: str):
        self.client = client
        self.target = target
        self.reason: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stall = _seconds("stall_timeout", 300)
        self.unreachable = _seconds("connect_timeout", 20) or 20
        self.poll = _seconds("poll_interval", 2) or 2

    def __enter__(self):
        global last_failure
        last_failure = None
        if threading.current_thread() is threading.main_thread():
            self._thread = threading.Thread(target=self._run, name="cmapdask-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, typ, exc, tb):
        with self._lock:
            self._stop.set()
        if self.reason is not None:
            raise InfrastructureError(self.reason) from None
        if exc is not None and _is_transient(exc):
            raise InfrastructureError(f"the Dask cluster failed: {_first_line(exc)}") from None
        return False

    def _fire(self, reason: str) -> None:
        import _thread

        global last_failure
        with self._lock:
            if self._stop.is_set():
                return
            self.reason = last_failure = reason
            self._stop.set()
        if callable(signal.getsignal(signal.SIGINT)):
            # a real signal wakes a main thread blocked in a wait or a sleep at once;
            # interrupt_main only flags it for when it next runs Python code
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        else:  # SIGINT ignored or at its default action: never send the real signal
            _thread.interrupt_main()

    def _state(self):
        fn = _by_value(_scheduler_state)
        return self.client.sync(
            self.client._run_on_scheduler, fn, callback_timeout=max(self.poll, 5)
        )

    def _run(self) -> None:
        last_seen = time.monotonic()
        last_change = time.monotonic()
        last_counter = None
        errors0 = None
        while not self._stop.wait(self.poll):
            now = time.monotonic()
            try:
                counter, pending, running, errors = self._state()
            except Exception as e:
                if self._stop.is_set() or not (isinstance(e, OSError) or _is_transient(e)):
                    return  # e.g. a scheduler that refuses pickled functions: not watched
                if now - last_seen > self.unreachable:
                    self._fire(
                        f"lost the Dask scheduler {self.target}: no answer for "
                        f"{self.unreachable:g} s (cmapdask.runtime.connect_timeout)"
                    )
                    return
                continue
            last_seen = now
            errors += _LOCAL_ERRORS.count
            if errors0 is None:
                errors0 = errors
            if errors > errors0:
                self._fire(
                    f"the Dask scheduler {self.target} reported an internal error "
                    "(failed task transition); its state cannot be trusted"
                )
                return
            if counter != last_counter or running or not pending:
                last_counter, last_change = counter, now
            elif self.stall and now - last_change > self.stall:
                self._fire(
                    f"the Dask cluster {self.target} made no progress for {self.stall:g} s "
                    f"with {pending} task(s) pending and none running "
                    "(cmapdask.runtime.stall_timeout)"
                )
                return


_TRANSIENT_NAMES = {
    "CommClosedError",
    "KilledWorker",
    "FutureCancelledError",
    "CancelledError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ServerDisconnectedError",
    "ClientConnectorError",
    "ClientOSError",
    "FSTimeoutError",
    "StreamClosedError",
}


def _is_transient(exc: BaseException) -> bool:
    """A failure of infrastructure (network, storage server, cluster), not of the input."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class _ClientBar:
    """A text bar on stderr fed by the scheduler's count of finished tasks."""

    def __init__(self, client, out):
        self.client, self.out = client, out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmapdask-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.out.write("\r\x1b[K")
        self.out.flush()
        return False

    def _run(self):
        fn = _by_value(_task_counts)
        start = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                done, total = self.client.sync(
                    self.client._run_on_scheduler, fn, callback_timeout=5
                )
            except Exception:
                continue
            if total:
                frac = done / total
                bar = "#" * int(frac * 40)
                self.out.write(
                    f"\r[{bar:<40}] {frac * 100:5.1f}% | {time.monotonic() - start:6.1f}s"
                )
                self.out.flush()


def _task_counts(dask_scheduler=None):  # run on the scheduler; pickled by value
    done = total = 0
    for tg in dask_scheduler.task_groups.values():
        n = sum(tg.states.values())
        total += n
        done += tg.states.get("memory", 0) + tg.states.get("released", 0)
        done += tg.states.get("forgotten", 0) + tg.states.get("erred", 0)
    return done, total


@contextlib.contextmanager
def progress(args, client) -> Iterator[None]:
    """Show progress of dask work run inside the block: one bar on stderr, only when
    stderr is a terminal (or ``CMAPDASK_PROGRESS=1``) and not ``--quiet``; the same for
    the threaded scheduler (``client is None``) and a distributed Client. Every command's
    :func:`dask_client` block already draws it; a nested call does nothing."""
    global _drawing
    if (
        _drawing
        or getattr(args, "quiet", False)
        or not (sys.stderr.isatty() or os.environ.get("CMAPDASK_PROGRESS") == "1")
    ):
        yield  # already drawn by an enclosing block (dask_client draws for its commands)
        return
    _drawing = True
    try:
        if client is None:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr, dt=0.5):
                yield
        else:
            with _ClientBar(client, sys.stderr):
                yield
    finally:
        _drawing = False


_drawing = False
