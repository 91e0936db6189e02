"""Write elsewhere, then publish: no reader ever sees half an output.

Local paths are written beside the destination and renamed into place (a rename is atomic
on POSIX). Object stores have no rename: a single file is uploaded in one PUT (atomic per
object), and a directory tree is written under a temporary prefix, copied server-side to
its destination, and only then marked complete by the caller (see ``cmapdask.io.store``,
whose readers refuse a store without that mark).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cmapdask.errors import StoreError

__all__ = ["url_to_fs", "is_local", "publish_file", "publish_dir", "join", "remove_leftovers"]


def url_to_fs(url: str, storage_options: dict | None = None):
    """(filesystem, path inside it) for a local path or any fsspec URL."""
    return fsspec.core.url_to_fs(str(url), **(storage_options or {}))


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *[p.strip("/") for p in parts]])


def _tmp_name(path: str) -> str:
    head, _, tail = path.rstrip("/").rpartition("/")
    name = f".{tail}.tmp-{uuid.uuid4().hex[:12]}"
    return f"{head}/{name}" if head else name


def remove_leftovers(url, *, storage_options: dict | None = None, depth: int = 2) -> list[str]:
    """Delete the temporaries of publishes that were killed (``.NAME.tmp-*``) in ``url``
    and its folders down to ``depth`` levels; returns what was removed.

    Only for a destination that no one else is writing to: a run resuming its own work.
    """
    fs, path = url_to_fs(url, storage_options)
    removed = []
    for level in range(depth):
        for p in fs.glob(join(path, *["*"] * level, ".*.tmp-*")):
            fs.rm(p, recursive=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def publish_file(dest, *, storage_options: dict | None = None) -> Iterator[str]:
    """Yield a local temporary path; on success it becomes ``dest`` in one step."""
    fs, path = url_to_fs(dest, storage_options)
    if is_local(fs):
        _check_local_parent(dest, path)
        parent = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = _tmp_name(os.path.abspath(path))
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        fs.put_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _check_local_parent(dest, path: str) -> None:
    """Refuse at the door a local destination under a file or an unwritable folder."""
    up = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(up) and os.path.dirname(up) != up:
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise StoreError(f"{dest}: cannot create it: {up} is a file, not a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        raise StoreError(f"{dest}: cannot create it: no permission to write in {up}")


_BUCKETED = {"s3", "s3a", "gs", "gcs", "abfs", "az"}


def check_bucket(fs, dest, path: str) -> None:
    """Refuse at the door a missing bucket, refused credentials or an unreachable endpoint
    of object storage, with one line naming ``dest`` (not a traceback at the first write)."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & _BUCKETED:
        return
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)
    except FileNotFoundError:
        raise StoreError(f"{dest}: bucket {bucket!r} does not exist") from None
    except PermissionError as e:
        raise StoreError(
            f"{dest}: access to bucket {bucket!r} refused (check the credentials): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    except Exception as e:  # botocore's connection errors are not OSError
        if "Connect" not in type(e).__name__ and not isinstance(e, (OSError, TimeoutError)):
            raise
        raise StoreError(
            f"{dest}: cannot reach the object store: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


@contextlib.contextmanager
def publish_dir(
    dest, *, storage_options: dict | None = None, overwrite: bool = False
) -> Iterator[str]:
    """Yield a temporary URL beside ``dest`` to write a directory tree into.

    On success the tree becomes ``dest`` (renamed locally, copied server-side remotely);
    on failure the temporary tree is removed and ``dest`` is untouched.
    """
    fs, path = url_to_fs(dest, storage_options)
    path = path.rstrip("/")
    if is_local(fs):
        _check_local_parent(dest, path)
    else:
        check_bucket(fs, dest, path)
    if fs.exists(path) and not overwrite:
        raise StoreError(f"{dest}: already exists (choose another destination or remove it)")
    tmp = _tmp_name(path)
    local = is_local(fs)
    tmp_url = tmp if local else fs.unstrip_protocol(tmp)
    try:
        yield tmp_url
        if local:
            if os.path.exists(path):
                trash = _tmp_name(path) + ".old"
                os.replace(path, trash)
                os.replace(tmp, path)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                os.replace(tmp, path)
        else:
            if fs.exists(path):
                fs.rm(path, recursive=True)
            fs.copy(tmp, path, recursive=True)
            fs.invalidate_cache()
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
