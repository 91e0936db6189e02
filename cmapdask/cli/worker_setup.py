"""Preloaded by the workers of the CLI's local cluster (``distributed`` preload).

A worker ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and only
the command's own process should act on it (it closes the cluster, exit 130); a worker
interrupted on its own would print a traceback and be restarted by its nanny.
"""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
