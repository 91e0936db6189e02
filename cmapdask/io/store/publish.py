"""Publishing stores and members: the ``complete`` flag (set last; readers refuse a group
without it), provenance attributes, consolidated metadata for other tools, and the
parent groups of a member.
"""

from __future__ import annotations

import os

import zarr

from cmapdask.errors import StoreError
from cmapdask.io.atomic import join, url_to_fs
from cmapdask.io.store.access import _is_local_url, _open_group, quiet_zarr, zarr_options

__all__ = [
    "consolidate",
    "ensure_parent_groups",
    "mark_complete_remote",
    "remove_empty_groups",
    "set_provenance",
]


def set_provenance(url, meta: dict, *, storage_options: dict | None = None) -> None:
    """Replace ``attrs["cmapdask"]`` of the group at ``url`` (a store or member)."""
    with quiet_zarr():
        g = _open_group(url, "r+", storage_options)
        g.attrs["cmapdask"] = meta


def _set_complete(url, storage_options, value: bool) -> None:
    with quiet_zarr():
        g = _open_group(url, "r", storage_options)
        meta = dict(g.attrs.get("cmapdask", {}))
    set_provenance(url, {**meta, "complete": value}, storage_options=storage_options)


def consolidate(url, storage_options: dict | None = None) -> None:
    """Write the consolidated metadata of the group at ``url`` (a store or member), so that
    generic tools (``xr.open_zarr(url)``, ``zarr.open_group(url)``) open it in one read and
    without a warning. Call it after any change to a published group's nodes.

    Notes
    -----
    Reads every node's metadata below ``url`` (not the chunks). cmapdask itself never
    reads through consolidated metadata, so a stale copy cannot mislead it.
    """
    with quiet_zarr():
        g = _open_group(url, "r+", storage_options)
        zarr.consolidate_metadata(g.store, path=g.path or None)


def mark_complete_remote(dest, storage_options) -> None:
    """Finish publishing a store or member: on object storage set its complete flag (the
    last object written, after the server-side copy of every chunk; locally the rename
    published it complete); then consolidate its metadata and, for a member (attribute
    ``member``), that of the store above it (:func:`consolidate`)."""
    if not _is_local_url(dest, storage_options):
        _set_complete(dest, storage_options, True)
    consolidate(dest, storage_options)
    with quiet_zarr():
        name = str(
            dict(_open_group(dest, "r", storage_options).attrs.get("cmapdask", {})).get("member")
            or ""
        )
    root, name = str(dest).rstrip("/"), name.strip("/")
    if name and root.endswith("/" + name):
        consolidate(root[: -len(name) - 1], storage_options)


def _check_complete(url, storage_options, what: str) -> dict:
    with quiet_zarr():
        try:
            g = _open_group(url, "r", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            raise StoreError(f"{url}: no {what} here") from None
        except Exception as e:  # corrupt metadata, bad URL, unreachable server
            raise StoreError(
                f"{url}: cannot open {what}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        meta = dict(g.attrs.get("cmapdask", {}))
    if not meta:
        raise StoreError(f"{url}: not a cmapdask {what} (no cmapdask attributes)")
    if not meta.get("complete"):
        raise StoreError(
            f"{url}: incomplete {what} (the job that wrote it did not finish); write it again"
        )
    return meta


def ensure_parent_groups(store_url, name, storage_options) -> list[str]:
    """Create the groups above member ``name`` (``index`` of ``index/bing``), if missing;
    returns those it created, outermost first (see remove_empty_groups)."""
    created = []
    with quiet_zarr():
        g = zarr.open_group(
            store_url,
            mode="r+",
            storage_options=zarr_options(store_url, storage_options),
            use_consolidated=False,
        )
        parts = name.split("/")[:-1]
        for i, p in enumerate(parts):
            if p not in g:
                created.append("/".join(parts[: i + 1]))
            g = g.require_group(p)
    return created


def remove_empty_groups(store_url, groups: list[str], storage_options) -> None:
    """Remove the groups a failed write created (innermost first), if they still hold
    nothing but their own ``zarr.json``: a failure leaves no empty ``index/`` behind."""
    for name in reversed(groups):
        fs, path = url_to_fs(join(str(store_url), name), storage_options)
        try:
            names = [os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            continue
        if set(names) <= {"zarr.json"}:
            fs.rm(path, recursive=True)
