"""Shared measuring tools for the benchmark scripts: wall time and peak memory of a
process tree (this process and every child, e.g. Dask worker processes)."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil

__all__ = ["PeakRSS", "timed", "tree_cpu_seconds"]


def tree_cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process and its live children
    (take the difference of two calls while the children are still running)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class PeakRSS:
    """Sample the summed resident memory of this process and its children."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self.peak_detail: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        self.peak_procs = max(self.peak_procs, len(procs))
        total, detail = 0, []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss
                total += rss
                detail.append((p.pid, rss))
        if total > self.peak:
            self.peak_detail = detail  # each process's RSS at the peak, this process first
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30


@contextlib.contextmanager
def timed(result: dict, key: str):
    t0 = time.perf_counter()
    yield
    result[key] = time.perf_counter() - t0
