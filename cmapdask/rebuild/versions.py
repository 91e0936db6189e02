"""Immutable versions of a signature collection and the ``CURRENT`` pointer.

Layout of a collection ``ROOT`` (local path or fsspec URL)::

    ROOT/CURRENT                 JSON {"version": "v000002", ...}: the published version
    ROOT/versions/v000001/       a complete store (cmapdask.io.store), never modified
    ROOT/manifests/v000001.json  the manifest, written last: no manifest, no version
    ROOT/work/v000002/           scratch of a rebuild in progress (resumable blocks)

A version is written once. ``append`` creates a *staged* version (status ``"staged"``);
``rebuild`` adds its products and publishes it (status ``"published"``) by rewriting
``CURRENT`` in one step: a local rename or a single object PUT, both atomic, so a reader
sees the old version or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable

import xarray as xr

from cmapdask.errors import StoreError
from cmapdask.io.atomic import join, publish_file, url_to_fs
from cmapdask.io.store import open_store

__all__ = [
    "version_url",
    "list_versions",
    "current_version",
    "read_manifest",
    "write_manifest",
    "switch_current",
    "open_current",
    "open_version",
    "next_version_id",
    "work_url",
    "retry",
    "check_collection",
]

POINTER = "CURRENT"


def version_url(root, vid: str) -> str:
    return join(str(root), "versions", vid)


def work_url(root, vid: str) -> str:
    return join(str(root), "work", vid)


def _manifest_url(root, vid: str) -> str:
    return join(str(root), "manifests", f"{vid}.json")


def _transient(e: BaseException) -> bool:
    # missing objects and bad requests are answers, not hiccups
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(e, (OSError, TimeoutError, ConnectionError)) or type(e).__name__ in (
        "ClientError",
        "EndpointConnectionError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
    )


def retry[T](fn: Callable[[], T], *, what: str, attempts: int = 5, delay: float = 0.2) -> T:
    """Call ``fn`` again after transient object-storage errors (exponential backoff, jitter).

    Errors that are not transient (missing files, refused permissions, cmapdask errors)
    pass through at once; after ``attempts`` the last error becomes a :class:`StoreError`.
    """
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not _transient(e):
                raise
            if i == attempts - 1:
                raise StoreError(f"{what}: failed after {attempts} attempts: {e}") from e
            time.sleep(delay * 2**i * (1 + random.random()))
    raise AssertionError("unreachable")


def _read_json(url, storage_options) -> dict | None:
    fs, path = url_to_fs(url, storage_options)

    def read():
        try:
            with fs.open(path, "rb") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    return retry(read, what=str(url))


def _write_json(url, obj: dict, storage_options) -> None:
    def write():
        with publish_file(url, storage_options=storage_options) as tmp:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1, sort_keys=True)

    retry(write, what=str(url))


def read_manifest(root, vid: str, *, storage_options: dict | None = None) -> dict:
    """The manifest of version ``vid`` (:class:`StoreError` if there is none)."""
    m = _read_json(_manifest_url(root, vid), storage_options)
    if m is None:
        raise StoreError(f"{root}: no version {vid!r}")
    return m


def write_manifest(root, manifest: dict, *, storage_options: dict | None = None) -> None:
    """Write (or replace) a version's manifest in one step."""
    _write_json(_manifest_url(root, manifest["version"]), manifest, storage_options)


def list_versions(root, *, storage_options: dict | None = None) -> list[dict]:
    """Manifests of every version, oldest first (versions without a manifest do not count)."""
    fs, path = url_to_fs(join(str(root), "manifests"), storage_options)
    try:
        names = sorted(os.path.basename(p) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.endswith(".json") and n.startswith("v"):
            m = _read_json(join(str(root), "manifests", n), storage_options)
            if m is not None:
                out.append(m)
    return out


def next_version_id(root, *, storage_options: dict | None = None) -> str:
    versions = list_versions(root, storage_options=storage_options)
    last = int(versions[-1]["version"][1:]) if versions else 0
    return f"v{last + 1:06d}"


def current_version(root, *, storage_options: dict | None = None) -> str | None:
    """The published version ``CURRENT`` points to, or None before the first publish.

    A pointer that is not JSON, names no version, or names one without a manifest is a
    damaged collection (:class:`StoreError`), never "nothing published"."""
    url = join(str(root), POINTER)
    try:
        p = _read_json(url, storage_options)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{url}: not a collection pointer (not JSON: {e})") from None
    if p is None:
        return None
    vid = p.get("version") if isinstance(p, dict) else None
    if not isinstance(vid, str) or not _VERSION.fullmatch(vid):
        raise StoreError(f"{url}: not a collection pointer (no version such as 'v000001')")
    if _read_json(_manifest_url(root, vid), storage_options) is None:
        raise StoreError(f"{url}: names version {vid!r}, which {root} does not hold")
    return vid


_VERSION = re.compile(r"v\d{6}")
# what a collection's folder holds (and owner-named temporaries, .NAME.tmp-<owner>)
_COLLECTION_NAMES = {POINTER, "versions", "manifests", "work", "LOCK"}


def check_collection(root, *, storage_options: dict | None = None, create: bool) -> bool:
    """Refuse a ``root`` that is not a collection (a file, a plain store, a user's folder)
    before anything is written; ``create``: a missing folder becomes one (else refused).
    Returns whether ``root`` existed."""
    fs, path = url_to_fs(str(root), storage_options)
    if not fs.exists(path):
        if not create:
            raise StoreError(f"{root}: no such collection")
        return False
    if not fs.isdir(path):
        raise StoreError(f"{root}: is a file, not a collection folder")
    names = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    foreign = [n for n in names if n not in _COLLECTION_NAMES and ".tmp-" not in n]
    if foreign:
        what = "a signature store" if "zarr.json" in foreign else "a folder"
        raise StoreError(
            f"{root}: is {what}, not a cmapdask collection (holds {', '.join(foreign[:3])}); "
            "append into a new folder or an existing collection"
        )
    return True


def switch_current(root, vid: str, *, storage_options: dict | None = None) -> None:
    """Point ``CURRENT`` at ``vid`` in one atomic step (retried on transient errors)."""
    _write_json(
        join(str(root), POINTER),
        {
            "version": vid,
            "url": version_url(root, vid),
            "switched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        storage_options,
    )


def open_version(root, vid: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open one version's store lazily (see :func:`cmapdask.io.store.open_store`)."""
    read_manifest(root, vid, storage_options=storage_options)
    ds = open_store(version_url(root, vid), storage_options=storage_options)
    ds.attrs["version"] = vid
    return ds


def open_current(root, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open the published version of a collection lazily.

    Notes
    -----
    Reads the ``CURRENT`` pointer (one small object) and then what
    :func:`~cmapdask.io.store.open_store` reads (metadata only). The version it opens is
    immutable, so a rebuild publishing a newer one meanwhile does not affect this reader.
    """
    vid = current_version(root, storage_options=storage_options)
    if vid is None:
        raise StoreError(f"{root}: no published version yet (run `cmapdask rebuild {root}`)")
    return open_version(root, vid, storage_options=storage_options)
