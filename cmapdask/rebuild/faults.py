"""Fault injection for the kill-and-resume tests: a process SIGKILLs itself at a checkpoint.

``CMAPDASK_FAULT_KILL="block:3"`` kills the process (the CLI, or the worker that ran the
task) right after its third completed similarity block; ``"stage:2"`` after the second
completed pipeline stage; ``"append:1"`` in an append after the previous version's
files are shared, ``"append:2"`` after the new rows are written; ``"write:N"`` after
the N-th ``expr`` chunk a store write (convert) wrote. With ``CMAPDASK_FAULT_ONCE=PATH``
only the first process to get there dies (the file records that it happened), so a
restarted worker carries on. With ``CMAPDASK_FAULT_SIGNAL=INT`` the checkpoint sends
SIGINT (Ctrl-C) instead, to the process that first imported this module (the CLI; its
workers inherit ``CMAPDASK_FAULT_PID``), at ``"cluster"`` (a local cluster starting),
``"write:N"`` (mid-compute) or ``"publish"`` (a folder being swapped into place). Unset
(the default), :func:`checkpoint` does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["checkpoint"]

_seen: Counter = Counter()
if os.environ.get("CMAPDASK_FAULT_SIGNAL"):
    os.environ.setdefault("CMAPDASK_FAULT_PID", str(os.getpid()))


def checkpoint(event: str) -> None:
    spec = os.environ.get("CMAPDASK_FAULT_KILL")
    if not spec:
        return
    _seen[event] += 1
    name, _, n = spec.partition(":")
    if name != event or _seen[event] != int(n or 1):
        return
    once = os.environ.get("CMAPDASK_FAULT_ONCE")
    if once:
        try:
            fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    if os.environ.get("CMAPDASK_FAULT_SIGNAL") == "INT":
        os.kill(int(os.environ["CMAPDASK_FAULT_PID"]), signal.SIGINT)
        return
    os.kill(os.getpid(), signal.SIGKILL)
