"""The client's and the workers' package versions: a cluster whose workers run another
cmapdask or array stack fails with one line on connecting, not deep inside a task.

The CLI checks every scheduler it attaches to; :func:`cmapdask.open_store` checks the
default ``distributed`` client when there is one (once per set of workers); notebooks may
call :func:`check_workers` themselves. A difference in the release (major or minor
version) of any package of :data:`STACK` is an error; a patch-level difference a warning.
"""

from __future__ import annotations

import warnings

from cmapdask import config
from cmapdask.errors import InfrastructureError, InputError

__all__ = ["STACK", "check_workers", "check_default_client", "local_versions"]

# what a task's bytes pass through: the package, the scheduler protocol, the store's codecs
STACK = ("cmapdask", "dask", "distributed", "numpy", "xarray", "zarr", "numcodecs", "numba")

_CHECKED: set[tuple] = set()


def _versions(names=STACK) -> dict:  # runs on each worker; shipped by value (_by_value)
    import importlib

    out = {}
    for name in names:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # not installed there, or broken: reported as missing
            out[name] = None
    return out


def local_versions() -> dict:
    """``{package: version}`` of :data:`STACK` in this process (``None``: not installed)."""
    return _versions()


def _release(v: str) -> tuple:
    parts = v.split("+")[0].split(".")
    return tuple(parts[:2])


def _by_value(fn):
    """``fn`` rebuilt outside any module, so it runs on a worker without cmapdask."""
    import types

    g = {"__builtins__": __builtins__}
    return types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__)


def check_workers(client) -> dict:
    """Compare every worker's :data:`STACK` versions with this process's.

    Returns ``{worker address: versions}``. Raises :class:`~cmapdask.errors.InputError`
    naming the first worker and package whose release differs (or that lacks it); warns
    for patch-level differences. Waits at most ``cmapdask.runtime.check_timeout``
    seconds (then :class:`~cmapdask.errors.InfrastructureError`).
    """
    here = local_versions()
    # not connect_timeout: answering imports the stack on each worker, slow when loaded
    wait = float(config.get("runtime.check_timeout", 60) or 60)
    try:
        theirs = client.run(_by_value(_versions), on_error="return", callback_timeout=wait)
    except (OSError, TimeoutError) as e:
        raise InfrastructureError(
            f"the workers did not report their versions within {wait:g} s "
            f"(cmapdask.runtime.check_timeout): {e}"
        ) from None
    patch = []
    for addr, got in sorted(theirs.items()):
        if isinstance(got, BaseException):
            raise InputError(f"worker {addr}: could not report its versions ({got})")
        for name in STACK:
            mine, other = here.get(name), got.get(name)
            if mine is None or mine == other:
                continue
            if other is None:
                raise InputError(
                    f"worker {addr} has no {name} (here {mine}): install the same versions "
                    "on the workers (cluster/docker's image, or distributed's PipInstall plugin)"
                )
            if _release(mine) != _release(other):
                raise InputError(
                    f"worker {addr} runs {name} {other}, this client {mine}: install the same "
                    "versions on the workers (cluster/docker's image, or distributed's "
                    "PipInstall plugin)"
                )
            patch.append(f"{name} {other} on {addr} (here {mine})")
    if patch:
        warnings.warn(
            "workers differ from this client at patch level: " + "; ".join(patch[:3]),
            stacklevel=2,
        )
    return theirs


def check_default_client() -> None:
    """:func:`check_workers` on the default ``distributed`` client, once per set of workers.

    Does nothing when no client is in effect (the threaded scheduler, or distributed never
    imported).
    """
    import sys

    if "distributed" not in sys.modules:
        return
    from distributed import default_client, get_worker

    try:
        get_worker()
        return  # inside a task: the client that sent it was checked
    except ValueError:
        pass
    try:
        client = default_client()
    except ValueError:
        return
    try:
        workers = tuple(sorted(client.scheduler_info(n_workers=-1)["workers"]))
    except Exception:  # a client that cannot answer: the compute will say so
        return
    key = (client.id, workers)
    if workers and key not in _CHECKED:
        check_workers(client)
        _CHECKED.add(key)
