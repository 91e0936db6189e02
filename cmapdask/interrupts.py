"""Ctrl-C held back over a step that must not be cut in two.

``with deferred_interrupt():`` records a SIGINT that arrives inside the block and raises
``KeyboardInterrupt`` when the block ends (the CLI then exits 130 with one line): a local
cluster starting (workers half-spawned are closed, not orphaned), a published folder
swapped into place (never the old one gone and the new one not yet there). Only the
main thread receives signals; elsewhere the block runs as it is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["deferred_interrupt"]


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: hit.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt
