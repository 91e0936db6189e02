"""glibc malloc tuning for code that compresses many blocks in one process.

glibc's malloc adjusts its mmap threshold to the sizes a program frees, unless one of the
``MALLOC_*_`` variables is set; dask's Nanny sets ``MALLOC_TRIM_THRESHOLD_`` in every worker
(to return memory to the OS promptly), which pins the threshold at 128 KiB. blosc-zstd then
maps, faults in and unmaps fresh compression contexts for every block of every chunk:
45,000 page faults per 25 MB chunk, twice the CPU of the compression itself.
:func:`roomy_malloc` lifts the thresholds while blocks are compressed.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["roomy_malloc"]

_MALLOC_ENV = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_lock = threading.Lock()
_malloc_users = 0
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        import platform

        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL("libc.so.6")
                lib.mallopt, lib.malloc_trim  # noqa: B018  (both must exist)
                _libc = lib
    return _libc or None


def _env_bytes(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# Thresholds while blocks are written: every buffer up to 32 MiB (glibc's ceiling for the
# mmap threshold; a store chunk is at most cmapdask.store.chunk_mb, 32 MiB by default) comes
# from the heap, and up to 64 MiB of freed memory stays there for the next block.
_ROOMY_MMAP, _ROOMY_TRIM = 32 * 2**20, 64 * 2**20
# Seconds without a block being written before the environment's settings come back and the
# freed memory goes back to the OS. Restoring after every block (as cmapdask once did)
# returned the memory between the blocks of one conversion, so every block faulted its
# chunk-sized buffers in afresh: 4-5 page faults per page of matrix in a worker.
_LINGER_S = 2.0
_malloc_generation = 0


def _restore(libc, generation: int) -> None:
    with _malloc_lock:
        if _malloc_users or generation != _malloc_generation:
            return  # a block started since: it keeps the room
        libc.mallopt(_M_TRIM_THRESHOLD, _env_bytes("MALLOC_TRIM_THRESHOLD_", 128 * 2**10))
        libc.mallopt(_M_MMAP_THRESHOLD, _env_bytes("MALLOC_MMAP_THRESHOLD_", 128 * 2**10))
        libc.malloc_trim(0)


@contextlib.contextmanager
def roomy_malloc():
    """While blocks are compressed in this process, let glibc reuse freed memory (mmap
    threshold 32 MiB, trim threshold 64 MiB) where the environment had pinned it; the
    environment's settings come back, and the freed memory goes back to the OS, two
    seconds after the last block being written here is done (so the blocks of one
    conversion reuse each other's buffers). Elsewhere (dynamic thresholds, other C
    libraries, other systems) this does nothing.

    Notes
    -----
    Holds, between blocks, at most the freed buffers of one block (a few chunks) per
    process, and only while blocks keep coming.
    """
    global _malloc_users, _malloc_generation
    libc = _glibc()
    if libc is None or not any(k in os.environ for k in _MALLOC_ENV):
        yield
        return
    with _malloc_lock:
        if _malloc_users == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _ROOMY_MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _ROOMY_TRIM)
        _malloc_users += 1
        _malloc_generation += 1
    try:
        yield
    finally:
        with _malloc_lock:
            _malloc_users -= 1
            if _malloc_users == 0:
                timer = threading.Timer(_LINGER_S, _restore, (libc, _malloc_generation))
                timer.daemon = True
                timer.start()
