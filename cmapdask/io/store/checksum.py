"""SHA-256 of a conversion's source (in a thread beside the conversion) and of the tables
joined to it.
"""

from __future__ import annotations

import hashlib
import os
import threading

from cmapdask.io.atomic import is_local, url_to_fs


def _sha256(url, storage_options, out: dict, stop: threading.Event) -> None:
    """SHA-256 of the file at ``url`` into ``out["sha256"]`` (or its error into
    ``out["error"]``). Local files are read into one reused buffer (no fresh 8 MiB per
    read); hashlib and the reads release the GIL, so this runs beside the conversion."""
    try:
        fs, p = url_to_fs(url, storage_options)
        h = hashlib.sha256()
        if is_local(fs):
            buf = bytearray(8 * 2**20)
            view = memoryview(buf)
            with open(p, "rb", buffering=0) as f:
                while not stop.is_set() and (n := f.readinto(buf)):
                    h.update(view[:n])
        else:
            with fs.open(p, "rb", block_size=8 * 2**20) as f:
                while not stop.is_set() and (chunk := f.read(8 * 2**20)):
                    h.update(chunk)
        if not stop.is_set():  # stopped: a partial hash is no hash
            out["sha256"] = h.hexdigest()
    except Exception as e:  # reported by convert, which then fails
        out["error"] = e


def _table_prov(path) -> dict:
    fs, p = url_to_fs(path)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return {"name": os.path.basename(str(path)), "size": int(fs.size(p)), "sha256": h.hexdigest()}
