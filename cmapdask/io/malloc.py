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


@contextlib.contextmanager
def roomy_malloc():
    """While blocks are compressed in this process, let glibc reuse freed memory (mmap
    threshold 4 MiB, trim threshold 16 MiB) where the environment had pinned it; the
    environment's settings come back, and the freed memory goes back to the OS, when the
    last block being written here is done. Elsewhere (dynamic thresholds, other C
    libraries, other systems) this does nothing."""
    global _malloc_users
    libc = _glibc()
    if libc is None or not any(k in os.environ for k in _MALLOC_ENV):
        yield
        return
    with _malloc_lock:
        if _malloc_users == 0:
            # blosc-zstd's contexts are 1-2 MiB; chunk-sized buffers stay mapped (and
            # go back to the OS when freed), so little memory is held beyond the chunk
            libc.mallopt(_M_MMAP_THRESHOLD, 4 * 2**20)
            libc.mallopt(_M_TRIM_THRESHOLD, 16 * 2**20)
        _malloc_users += 1
    try:
        yield
    finally:
        with _malloc_lock:
            _malloc_users -= 1
            if _malloc_users == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, _env_bytes("MALLOC_TRIM_THRESHOLD_", 128 * 2**10))
                libc.mallopt(_M_MMAP_THRESHOLD, _env_bytes("MALLOC_MMAP_THRESHOLD_", 128 * 2**10))
                libc.malloc_trim(0)
