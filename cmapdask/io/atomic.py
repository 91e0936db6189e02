"""Write elsewhere, then publish: no reader ever sees half an output, and nothing that
is not ours is ever replaced.

Local paths are written beside the destination and renamed into place (a rename is atomic
on POSIX). Object stores have no rename: a single file is uploaded in one PUT (atomic per
object), and a directory tree is written under a temporary prefix, copied server-side to
its destination, and only then marked complete by the caller (see ``cmapdask.io.store``,
whose readers refuse a store without that mark).

Ownership rules (one place for every command):

- **Temporaries** are named ``.NAME.tmp-<owner>`` beside the destination ``NAME``, where
  ``<owner>`` is ``host.pid.start.random`` (the writing process and its start time). A
  later publish of the same destination removes the temporaries whose owner is dead (same
  host, no such process) or, from another host, older than the dask config
  ``cmapdask.atomic.foreign_leftover_hours``; a live writer's are left alone.
- **Ours**: a Zarr group whose ``zarr.json`` has ``cmapdask`` attributes (a store, a
  member, a similarity result), a folder holding the marker file ``.cmapdask`` (result
  folders; :func:`publish_dir` with ``mark=``), or an object-store tree holding
  ``.cmapdask-writing`` (a publish in progress, naming its owner).
- **Destinations**: absent or an empty folder -- written. A plain file -- always refused.
  A non-empty folder -- refused unless ``overwrite``, and then replaced only if it is ours
  *and holds nothing else*: a file cmapdask did not write inside it (a user's
  ``NOTES.txt`` in a result folder or a store) makes even ``overwrite`` refuse, naming it
  (:func:`foreign_files`). Ours but unfinished (complete flag false, or a dead writer's
  ``.cmapdask-writing``) -- replaced without ``overwrite``: nobody can read it, and a
  rerun must not be blocked.
- **File destinations** (:func:`check_file_destination`, :func:`publish_file` with
  ``overwrite=`` given): absent -- written, with a sidecar record ``.NAME.cmapdask``
  beside it (its size and modification time). An existing file -- refused unless
  ``overwrite``, and then replaced only if its sidecar record still matches it (cmapdask
  wrote it and nobody changed it since). A folder -- always refused.
- **Inputs are never outputs** (:func:`refuse_overlap`): a destination that is, contains
  or lies inside an input is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cmapdask import config
from cmapdask.errors import InputError, StoreError

__all__ = [
    "url_to_fs",
    "is_local",
    "publish_file",
    "publish_dir",
    "join",
    "remove_leftovers",
    "check_destination",
    "check_file_destination",
    "check_parent",
    "foreign_files",
    "refuse_overlap",
    "user_files",
    "owner_token",
    "owner_alive",
    "MARKER",
]

MARKER = ".cmapdask"  # marker file of a result folder we published
WRITING = ".cmapdask-writing"  # object stores: a publish in progress (its owner inside)


def url_to_fs(url: str, storage_options: dict | None = None):
    """(filesystem, path inside it) for a local path or any fsspec URL, with cmapdask's
    bounded waits (``cmapdask.storage``) for object storage.

    An empty path, storage options that are not a mapping, or a URL scheme no filesystem
    knows are :class:`~cmapdask.errors.InputError` (one line), not a traceback.
    """
    if url is None or not str(url).strip():
        raise InputError(f"{str(url or '')!r}: an empty path or URL; name a file or folder")
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InputError(
            f"{url}: storage options must be a JSON object such as "
            f'{{"anon": true}}, not {type(storage_options).__name__} {storage_options!r}'
        )
    try:
        fs, path = fsspec.core.url_to_fs(
            str(url), **(config.storage_options(url, storage_options) or {})
        )
    except ValueError as e:
        if "Protocol not known" not in str(e):
            raise
        raise InputError(
            f"{url}: unknown URL scheme {str(url).split('://', 1)[0]!r} (a local path, "
            "file://, memory://, s3://, gs://, https://, ...)"
        ) from None
    except ImportError as e:
        raise InputError(f"{url}: this kind of URL needs a package not installed: {e}") from None
    except TypeError as e:
        raise InputError(f"{url}: storage options not accepted: {e}") from None
    if getattr(fs, "protocol", None) and "s3" in fs.protocol:
        fs.retries = max(1, config.storage_defaults()["retries"])  # this filesystem only
    return fs, path


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *[p.strip("/") for p in parts]])


# ------------------------------------------------------------------------------ owners

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
_TOKEN_RE = re.compile(r"^(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<start>\d+)\.[0-9a-f]+$")


def _start_time(pid: int) -> int | None:
    """Start time of process ``pid`` (whole seconds since the epoch), None if none runs."""
    import psutil

    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def owner_token() -> str:
    """``host.pid.start.random``: names this process (and this call) as an owner."""
    pid = os.getpid()
    return f"{_HOST}.{pid}.{_start_time(pid) or 0}.{uuid.uuid4().hex[:8]}"


def owner_alive(token: str, *, foreign_seconds: float | None = None) -> bool:
    """Whether the owner named by ``token`` may still be at work.

    Same host: its process exists and started when the token says (a reused pid is
    another process). Another host: cannot be asked, so alive until its start is more
    than ``foreign_seconds`` ago (default ``cmapdask.atomic.foreign_leftover_hours``).
    A token without owner (older cmapdask) counts as dead.
    """
    m = _TOKEN_RE.match(token)
    if not m:
        return False
    start = int(m["start"])
    if m["host"] == _HOST:
        now = _start_time(int(m["pid"]))
        return now is not None and abs(now - start) <= 1
    if foreign_seconds is None:
        foreign_seconds = float(config.get("atomic.foreign_leftover_hours", 24)) * 3600
    return time.time() - start < foreign_seconds


def _tmp_name(path: str) -> str:
    head, _, tail = path.rstrip("/").rpartition("/")
    name = f".{tail}.tmp-{owner_token()}"
    return f"{head}/{name}" if head else name


def _tmp_owner(name: str) -> str:
    token = name.rstrip("/").rpartition("/")[2].partition(".tmp-")[2]
    return token.removesuffix(".old")


def _remove(fs, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def remove_leftovers(
    url, *, storage_options: dict | None = None, depth: int = 2, name: str | None = None
) -> list[str]:
    """Delete the temporaries (``.NAME.tmp-*``) of dead publishes in ``url`` and its
    folders down to ``depth`` levels (only those of ``name`` with ``name``, depth 1);
    returns what was removed. A live owner's temporaries are left alone.
    """
    fs, path = url_to_fs(url, storage_options)
    removed = []
    pattern = f".{name}.tmp-*" if name else ".*.tmp-*"
    for level in range(depth):
        try:
            found = fs.glob(join(path, *["*"] * level, pattern))
        except FileNotFoundError:
            found = []
        for p in found:
            if not owner_alive(_tmp_owner(p)):
                _remove(fs, p)
                removed.append(p)
    if removed and not is_local(fs):
        fs.invalidate_cache()
    return removed


# ------------------------------------------------------------------------------ destinations


def _read_json(fs, path: str) -> dict | None:
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, ValueError, UnicodeDecodeError, IsADirectoryError):
        return None


def _state(fs, path: str) -> str:
    """What is at ``path``: "absent", "file", "empty", "unfinished", "ours", "foreign"."""
    if not fs.exists(path):
        return "absent"
    if not fs.isdir(path):
        return "file"
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return "absent"
    if not entries:
        return "empty"
    names = {e.rstrip("/").rpartition("/")[2] for e in entries}
    if WRITING in names:
        w = _read_json(fs, join(path, WRITING)) or {}
        return "busy" if owner_alive(str(w.get("owner", ""))) else "unfinished"
    if "zarr.json" in names:
        meta = _read_json(fs, join(path, "zarr.json")) or {}
        prov = (meta.get("attributes") or {}).get("cmapdask")
        if isinstance(prov, dict):
            return "unfinished" if prov.get("complete") is False else "ours"
    if MARKER in names:
        return "ours"
    return "foreign"


def check_destination(dest, *, storage_options: dict | None = None, overwrite: bool = False):
    """Refuse a destination folder we may not replace (:class:`StoreError`, one line);
    returns its state. See the module's ownership rules."""
    fs, path = url_to_fs(dest, storage_options)
    if is_local(fs):
        _check_local_parent(dest, path.rstrip("/"))
    else:  # an unreachable store is one line naming it, before any listing
        check_bucket(fs, dest, path.rstrip("/"))
    state = _state(fs, path.rstrip("/"))
    if state == "file":
        raise StoreError(f"{dest}: is a file, not a folder; refusing to replace it")
    if state == "busy":
        raise StoreError(f"{dest}: another cmapdask process is writing it; try again later")
    if state in ("ours", "foreign") and not overwrite:
        raise StoreError(
            f"{dest}: already exists and is not empty (choose another destination, "
            "or --overwrite to replace what cmapdask wrote there)"
        )
    if state == "foreign":
        raise StoreError(
            f"{dest}: was not written by cmapdask (no store, member or result marker); "
            "refusing to replace it even with --overwrite"
        )
    if state == "ours" and overwrite:
        foreign = foreign_files(fs, path.rstrip("/"))
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise StoreError(
                f"{dest}: holds {len(foreign)} file(s) cmapdask did not write ({shown}); "
                "refusing to replace it even with --overwrite (move them out first)"
            )
    return state


def _files(fs, path: str) -> list[str]:
    """Every file below ``path``, relative to it (``/``-separated)."""
    if is_local(fs):
        out = []
        for root, _, names in os.walk(path):
            rel = os.path.relpath(root, path)
            out += [n if rel == "." else f"{rel}/{n}".replace(os.sep, "/") for n in names]
        return out
    base = path.rstrip("/") + "/"
    return [f[len(base) :] for f in fs.find(path) if f.startswith(base)]


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def foreign_files(fs, path: str) -> list[str]:
    """The files inside the folder ``path`` (ours: a result folder or a Zarr group
    cmapdask wrote) that cmapdask did not write, relative to it, sorted.

    A result folder's marker lists the files published with it (a marker without a list,
    from an older cmapdask, vouches for everything). In a Zarr tree cmapdask writes only
    ``zarr.json`` files, the chunks of arrays (``c/...`` or ``c.*`` below an array), the
    Parquet files a group's ``cmapdask`` attributes name in ``tables``, and temporaries.
    """
    files = _files(fs, path)
    marker = _read_json(fs, join(path, MARKER)) if MARKER in files else None
    if marker is not None and "zarr.json" not in files:
        listed = marker.get("files")
        if not isinstance(listed, list):
            return []
        allowed = {*map(str, listed), MARKER}
        return sorted(
            f for f in files if f not in allowed and not _is_temporary(f.rpartition("/")[2])
        )
    nodes: dict[str, dict] = {}
    for f in files:
        if f == "zarr.json" or f.endswith("/zarr.json"):
            nodes[f[: -len("zarr.json")].rstrip("/")] = _read_json(fs, join(path, f)) or {}
    foreign = []
    for f in files:
        head, _, name = f.rpartition("/")
        if name in ("zarr.json", MARKER, WRITING) or _is_temporary(name):
            continue
        if any(_is_temporary(part) for part in head.split("/")):
            continue
        parts = f.split("/")
        owner = None
        for i in range(len(parts) - 1, -1, -1):
            d = "/".join(parts[:i])
            if d in nodes:
                owner = d
                break
        if owner is None:
            foreign.append(f)
            continue
        meta = nodes[owner]
        rest = f[len(owner) + 1 :] if owner else f
        if meta.get("node_type") == "array":
            if rest.startswith("c/") or rest.startswith("c.") or rest == "c":
                continue
        elif "/" not in rest and rest.endswith(".parquet"):
            tables = ((meta.get("attributes") or {}).get("cmapdask") or {}).get("tables")
            if isinstance(tables, dict) and rest[: -len(".parquet")] in tables:
                continue
        foreign.append(f)
    return sorted(foreign)


def _sidecar(path: str) -> str:
    head, _, tail = path.rstrip("/").rpartition("/")
    return f"{head}/.{tail}{MARKER}" if head else f".{tail}{MARKER}"


def _file_stamp(fs, path: str) -> dict:
    if is_local(fs):
        st = os.stat(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"size": int(fs.info(path).get("size") or 0)}


def _file_is_ours(fs, path: str) -> bool:
    rec = _read_json(fs, _sidecar(path))
    if not isinstance(rec, dict) or rec.get("written_by") != "cmapdask":
        return False
    try:
        stamp = _file_stamp(fs, path)
    except OSError:
        return False
    return all(rec.get(k) == v for k, v in stamp.items())


def check_file_destination(
    dest, *, storage_options: dict | None = None, overwrite: bool = False
) -> str:
    """Refuse a destination file we may not replace (:class:`StoreError`, one line);
    returns "absent" or "ours". See the module's ownership rules."""
    fs, path = url_to_fs(dest, storage_options)
    path = path.rstrip("/")
    if is_local(fs):
        _check_local_parent(dest, path)
        if os.path.islink(path) and not os.path.exists(path):
            raise StoreError(f"{dest}: is a dangling symbolic link; refusing to write through it")
    else:
        check_bucket(fs, dest, path)
    if not fs.exists(path):
        return "absent"
    if fs.isdir(path):
        raise StoreError(f"{dest}: is a folder, not a file; refusing to replace it")
    if not overwrite:
        raise StoreError(
            f"{dest}: already exists (choose another name, or --overwrite to replace a "
            "file cmapdask wrote)"
        )
    if not _file_is_ours(fs, path):
        raise StoreError(
            f"{dest}: was not written by cmapdask (or was changed since; no matching "
            f"{_sidecar(path).rpartition('/')[2]} record beside it); refusing to replace "
            "it even with --overwrite"
        )
    return "ours"


_USER_FILES: dict[tuple[str, str], bool] = {}  # the running command's file outputs


@contextlib.contextmanager
def user_files(paths, *, overwrite: bool) -> Iterator[None]:
    """While inside, :func:`publish_file` treats these destinations as the user's (the
    file rules, with ``overwrite``), whichever writer publishes them (the CLI declares
    its commands' outputs once, in ``cmapdask.cli.IO``)."""
    keys = [_split_url(p) for p in paths]
    for k in keys:
        _USER_FILES[k] = overwrite
    try:
        yield
    finally:
        for k in keys:
            _USER_FILES.pop(k, None)


def _split_url(url) -> tuple[str, str]:
    """(protocol, absolute normalised path) of a local path or URL, without touching it."""
    text = str(url)
    protocol, rest = fsspec.core.split_protocol(text)
    if protocol in (None, "file", "local"):
        return "file", os.path.realpath(os.path.abspath(os.path.expanduser(rest)))
    return protocol, "/" + rest.strip("/")


def _inside(a: str, b: str) -> bool:
    """Whether path ``a`` is ``b`` or lies below it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def refuse_overlap(outputs: dict, inputs: dict) -> None:
    """Refuse (:class:`StoreError`, one line) an output that is, contains or lies inside
    an input; ``outputs``/``inputs`` map an option's name to its URL (None: not given)."""
    ins = [(k, v, _split_url(v)) for k, v in inputs.items() if v not in (None, "")]
    for ok, ov in outputs.items():
        if ov is None:
            continue
        if not str(ov).strip():
            raise InputError(f"{ok}: an empty path or URL; name a file or folder")
        op, opath = _split_url(ov)
        for ik, iv, (ip, ipath) in ins:
            if op != ip:
                continue
            if _inside(opath, ipath) or _inside(ipath, opath):
                how = (
                    "is"
                    if opath == ipath
                    else ("lies inside" if _inside(opath, ipath) else "contains")
                )
                raise StoreError(
                    f"{ov}: the output ({ok}) {how} the input {iv} ({ik}); "
                    "refusing to write over an input (choose another destination)"
                )


def _mark(tmp_url: str, mark: str, storage_options) -> None:
    fs, p = url_to_fs(tmp_url, storage_options)
    fs.makedirs(p, exist_ok=True)
    body = {
        "written_by": "cmapdask",
        "kind": mark,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "files": sorted(f for f in _files(fs, p.rstrip("/")) if f != MARKER),
    }
    fs.pipe_file(join(p, MARKER), json.dumps(body).encode())


@contextlib.contextmanager
def publish_file(
    dest,
    *,
    storage_options: dict | None = None,
    overwrite: bool | None = None,
    mark: str = "file",
) -> Iterator[str]:
    """Yield a local temporary path; on success it becomes ``dest`` in one step.

    Parameters
    ----------
    overwrite
        ``None`` (files cmapdask keeps for itself: a collection's ``CURRENT``, manifests)
        replaces ``dest`` freely. ``False``/``True`` (a user's destination) follows the
        file rules of the module (:func:`check_file_destination`, checked before and
        again after writing) and records the sidecar ``.NAME.cmapdask`` (kind ``mark``).
    """
    fs, path = url_to_fs(dest, storage_options)
    if overwrite is None:
        overwrite = _USER_FILES.get(_split_url(dest))
    user = overwrite is not None
    if user:
        check_file_destination(dest, storage_options=storage_options, overwrite=overwrite)
    if is_local(fs):
        _check_local_parent(dest, path)
        parent = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(parent, exist_ok=True)
        remove_leftovers(parent, depth=1, name=os.path.basename(path))
        tmp = _tmp_name(os.path.abspath(path))
        try:
            yield tmp
            if user:
                check_file_destination(dest, overwrite=overwrite)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    else:
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
        os.close(fd)
        try:
            yield tmp
            if user:
                check_file_destination(dest, storage_options=storage_options, overwrite=overwrite)
            fs.put_file(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    if user:
        body = {"written_by": "cmapdask", "kind": mark, **_file_stamp(fs, path)}
        fs.pipe_file(_sidecar(path), json.dumps(body).encode())


def _check_local_parent(dest, path: str) -> None:
    """Refuse at the door a local destination under a file or an unwritable folder, a
    dangling symbolic link, or a folder where nothing can be created (``/proc``)."""
    full = os.path.abspath(path)
    if os.path.islink(full) and not os.path.exists(full):
        raise StoreError(
            f"{dest}: is a symbolic link to {os.readlink(full)}, which does not exist; "
            "refusing to write through it"
        )
    up = os.path.dirname(full)
    while not os.path.lexists(up) and os.path.dirname(up) != up:
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise StoreError(f"{dest}: cannot create it: {up} is a file, not a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        raise StoreError(f"{dest}: cannot create it: no permission to write in {up}")
    try:  # a probe: a folder the kernel fills (/proc, /sys) or a read-only mount says no
        os.rmdir(tempfile.mkdtemp(prefix=".cmapdask-probe-", dir=up))
    except OSError as e:
        raise StoreError(f"{dest}: cannot create it in {up}: {e.strerror or e}") from None


def check_parent(dest, *, storage_options: dict | None = None) -> None:
    """Refuse a destination whose place cannot hold it (a local parent that is a file or
    unwritable; a bucket missing, refused or unreachable), with one line."""
    fs, path = url_to_fs(dest, storage_options)
    if is_local(fs):
        _check_local_parent(dest, path)
    else:
        check_bucket(fs, dest, path.rstrip("/"))


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
        if "ParamValidation" in type(e).__name__ or "InvalidBucketName" in str(e):
            raise StoreError(
                f"{dest}: invalid bucket name {bucket!r} (lower-case letters, digits, "
                "'.' and '-', 3 to 63 characters)"
            ) from None
        if "Connect" not in type(e).__name__ and not isinstance(e, (OSError, TimeoutError)):
            raise
        raise StoreError(
            f"{dest}: cannot reach the object store: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


@contextlib.contextmanager
def publish_dir(
    dest,
    *,
    storage_options: dict | None = None,
    overwrite: bool = False,
    mark: str | None = None,
) -> Iterator[str]:
    """Yield a temporary URL beside ``dest`` to write a directory tree into.

    On success the tree becomes ``dest`` (renamed locally, copied server-side remotely);
    on failure the temporary tree is removed and ``dest`` is untouched.

    Parameters
    ----------
    overwrite
        Replace an existing non-empty ``dest`` -- only one cmapdask wrote (see the
        module's ownership rules; a plain file or a foreign folder is always refused).
    mark
        Write the marker file ``.cmapdask`` (``{"kind": mark, ...}``) into the tree, so a
        later ``overwrite`` knows the folder is ours (result folders; stores and members
        are known by their ``cmapdask`` attributes).

    Notes
    -----
    Temporaries of dead earlier publishes of the same ``dest`` are removed first (one
    listing of the parent).
    """
    fs, path = url_to_fs(dest, storage_options)
    path = path.rstrip("/")
    if is_local(fs):
        _check_local_parent(dest, path)
    else:
        check_bucket(fs, dest, path)
    head, _, tail = path.rpartition("/")
    remove_leftovers(
        fs.unstrip_protocol(head) if not is_local(fs) else (head or "."),
        storage_options=storage_options,
        depth=1,
        name=tail,
    )
    check_destination(dest, storage_options=storage_options, overwrite=overwrite)
    tmp = _tmp_name(path)
    local = is_local(fs)
    tmp_url = tmp if local else fs.unstrip_protocol(tmp)
    try:
        yield tmp_url
        if mark:
            _mark(tmp_url, mark, storage_options)
        # checked again: another process may have published meanwhile
        check_destination(dest, storage_options=storage_options, overwrite=overwrite)
        if local:
            from cmapdask.interrupts import deferred_interrupt
            from cmapdask.rebuild.faults import checkpoint

            with deferred_interrupt():  # never the old tree gone and the new not in place
                checkpoint("publish")
                if os.path.exists(path):
                    trash = _tmp_name(path) + ".old"
                    os.replace(path, trash)
                    os.replace(tmp, path)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    os.replace(tmp, path)
        else:
            _copy_remote(fs, tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)


def _copy_remote(fs, tmp: str, path: str) -> None:
    """Object stores: the finished tree at ``tmp`` becomes ``path``. A ``.cmapdask-writing``
    object naming this process is put first and removed last, so a run killed midway
    leaves a destination that a rerun recognises as an unfinished one of a dead owner."""
    if fs.exists(path):
        fs.rm(path, recursive=True)
    writing = join(path, WRITING)
    fs.pipe_file(writing, json.dumps({"owner": owner_token()}).encode())
    files = [f for f in fs.find(tmp) if f.rpartition("/")[2] != WRITING]
    targets = [join(path, f[len(tmp) + 1 :]) for f in files]
    if files:
        fs.copy(files, targets)
    fs.rm(writing)
    fs.invalidate_cache()
