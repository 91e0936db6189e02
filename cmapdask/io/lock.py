"""One writer per collection: an exclusive lock object ``ROOT/LOCK``, locally and on S3.

The lock is taken by creating ``LOCK`` only if it does not exist, in one atomic step:

- local paths: a hard link from a fully written temporary file (``link`` fails if the
  name exists, like ``open(O_CREAT | O_EXCL)``, and the lock never appears empty);
- ``s3://``: a conditional PUT (``If-None-Match: *``, s3fs ``mode="create"``; AWS S3 and
  moto >= 5.0.x answer 412 when the object exists);
- other fsspec filesystems: "create if absent" then a read-back of the owner (not atomic
  against a writer in the same instant; use a local path or S3 for concurrent writers).

The lock holds JSON ``{"owner", "host", "pid", "command", "acquired"}``. While held, a
thread rewrites it every ``stale_seconds / 5`` (the heartbeat: the object's modification
time). A lock is **stale**, and is taken over, when its owner's process is gone (same host)
or it was not refreshed for ``cmapdask.lock.stale_seconds`` (dask config, default 300).
A second writer waits up to ``cmapdask.lock.wait_seconds`` (default 0) and then refuses
with :class:`~cmapdask.errors.LockedError` (CLI exit 2, one line).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import threading
import time
from collections.abc import Iterator

from cmapdask import config
from cmapdask.errors import LockedError, StoreError
from cmapdask.io.atomic import (
    _HOST,
    _tmp_name,
    is_local,
    join,
    owner_alive,
    owner_token,
    remove_leftovers,
    url_to_fs,
)

__all__ = ["collection_lock", "LOCK_NAME"]

LOCK_NAME = "LOCK"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class _Lock:
    def __init__(self, root, storage_options, command: str):
        self.root = str(root)
        self.fs, self.path = url_to_fs(join(self.root, LOCK_NAME), storage_options)
        self.local = is_local(self.fs)
        self.s3 = "s3" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.token = owner_token()
        self.body = json.dumps(
            {
                "owner": self.token,
                "host": _HOST,
                "pid": os.getpid(),
                "command": command,
                "acquired": _now(),
            }
        ).encode()

    # ------------------------------------------------------------------ primitives

    def create(self) -> bool:
        """Create the lock if absent, atomically; False if it exists."""
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            remove_leftovers(os.path.dirname(self.path), depth=1, name=LOCK_NAME)
            tmp = _tmp_name(self.path)  # .LOCK.tmp-<owner>: a dead one is removed above
            with open(tmp, "wb") as f:
                f.write(self.body)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        if self.s3:
            try:
                self.fs.pipe_file(self.path, self.body, mode="create")
            except FileExistsError:
                return False
            return True
        if self.fs.exists(self.path):  # fallback: not atomic (see the module docstring)
            return False
        self.fs.pipe_file(self.path, self.body)
        return (self.read() or {}).get("owner") == self.token

    def read(self) -> dict | None:
        try:
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None
        except ValueError:  # unreadable: treat as someone's lock, aged by its mtime
            return {}

    def age(self) -> float:
        """Seconds since the lock was last written (its heartbeat)."""
        if self.local:
            return time.time() - os.stat(self.path).st_mtime
        self.fs.invalidate_cache(self.path)
        mod = self.fs.modified(self.path)
        if mod.tzinfo is None:
            mod = mod.replace(tzinfo=_dt.UTC)
        return (_dt.datetime.now(_dt.UTC) - mod).total_seconds()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)
        if not self.local:
            self.fs.invalidate_cache(self.path)

    # ------------------------------------------------------------------ protocol

    def stale(self, held: dict, stale_seconds: float) -> bool:
        owner = str(held.get("owner", ""))
        try:
            age = self.age()
        except FileNotFoundError:
            return False  # released meanwhile: just try again
        if owner.startswith(f"{_HOST}.") and owner_alive(owner):
            return False  # a live process on this host: never taken over
        if owner.startswith(f"{_HOST}."):
            return True  # its process is gone
        return age > stale_seconds

    def acquire(self, stale_seconds: float, wait_seconds: float) -> None:
        if self.fs.isdir(self.path):  # not ours to remove, and no lock can be made there
            raise StoreError(f"{self.root}/{LOCK_NAME}: is a folder, not a lock file")
        deadline = time.monotonic() + wait_seconds
        while True:
            if self.create():
                return
            held = self.read()
            if held is None:
                continue  # released between our create and our read
            if self.stale(held, stale_seconds):
                again = self.read()  # unchanged since we judged it: remove it, try again
                if again is not None and again.get("owner") == held.get("owner"):
                    self.remove()
                continue
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{self.root}: another writer holds the collection lock "
                    f"({held.get('command', '?')} by pid {held.get('pid', '?')} on "
                    f"{held.get('host', '?')} since {held.get('acquired', '?')}); run again "
                    f"when it has finished (a dead writer's lock is taken over after "
                    f"{stale_seconds:g} s)"
                )
            time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))

    def heartbeat(self) -> None:
        """Rewrite the lock (new modification time) if it is still ours."""
        held = self.read()
        if not held or held.get("owner") != self.token:
            return
        if self.local:
            os.utime(self.path)
        else:
            self.fs.pipe_file(self.path, self.body)

    def release(self) -> None:
        held = self.read()
        if held is not None and held.get("owner") == self.token:
            self.remove()


@contextlib.contextmanager
def collection_lock(
    root,
    *,
    storage_options: dict | None = None,
    command: str = "write",
    stale_seconds: float | None = None,
    wait_seconds: float | None = None,
) -> Iterator[None]:
    """Hold the collection's writer lock (``ROOT/LOCK``) for the block.

    Parameters
    ----------
    root
        Collection URL (local path or fsspec URL).
    command
        What the holder does (``"append"``, ``"rebuild"``), shown to a refused writer.
    stale_seconds, wait_seconds
        Default: dask config ``cmapdask.lock.stale_seconds`` / ``wait_seconds``.

    Raises
    ------
    LockedError
        Another live writer holds the lock (after waiting ``wait_seconds``).

    Notes
    -----
    Reads and writes one small object, plus one rewrite per heartbeat while held.
    """
    stale = float(stale_seconds if stale_seconds is not None else config.get("lock.stale_seconds"))
    wait = float(wait_seconds if wait_seconds is not None else config.get("lock.wait_seconds"))
    lock = _Lock(root, storage_options, command)
    lock.acquire(stale, wait)
    stop = threading.Event()

    def beat():
        while not stop.wait(max(0.2, stale / 5)):
            with contextlib.suppress(Exception):  # a missed beat only ages the lock
                lock.heartbeat()

    t = threading.Thread(target=beat, name="cmapdask-lock-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        lock.release()
