"""The nightly job: plan, similarity, members, products, manifest, switch.

Stages, each idempotent so that a killed run started again ends where an uninterrupted
one would:

1. **plan** -- the target is the newest version after ``CURRENT`` (made by ``append``);
   nothing newer means nothing to do (a no-op) unless ``full``.
2. **similarity** -- top-k of the target's signatures, incrementally from the published
   version's lists when it has the same product (:mod:`.incremental`: one pass of the old
   blocks against the new rows), else in full; every row block is saved in
   ``ROOT/work/<version>/`` as soon as it is done and skipped by a rerun.
3. **members** -- the top-k written into the target as ``similarity/<metric>_<space>``,
   one task per output chunk, straight from the saved blocks.
4. **products** -- every other member of the published version carried over at a cost
   that follows what changed (:mod:`.products`): query indexes extended (whole blocks
   shared), τ backgrounds shared when the reference set is unchanged and rebuilt when it
   changed, clusters recomputed; the manifest lists each with how it was made
   (``products``) or why it was not (``not_refreshed``).
5. **manifest** and **switch** -- the manifest gets parameters, inputs, timings; then
   ``CURRENT`` moves to the target in one atomic step (retried on transient errors).
"""

from __future__ import annotations

import dataclasses
import time

import dask

from cmapdask._version import __version__
from cmapdask.errors import InputError, StoreError
from cmapdask.io.atomic import join, remove_leftovers, url_to_fs
from cmapdask.io.lock import collection_lock
from cmapdask.io.store import has_member, list_members, open_member, open_store
from cmapdask.model.types import SimilarityMetric, Space
from cmapdask.rebuild.faults import checkpoint
from cmapdask.rebuild.incremental import topk_full, topk_incremental, write_topk_member
from cmapdask.rebuild.products import refresh_products
from cmapdask.rebuild.versions import (
    check_collection,
    current_version,
    list_versions,
    read_manifest,
    switch_current,
    version_url,
    work_url,
    write_manifest,
)

__all__ = ["rebuild", "RebuildResult", "plan_rebuild"]

Metric = SimilarityMetric  # the option types, defined once in cmapdask.model.types


@dataclasses.dataclass(frozen=True)
class RebuildResult:
    """What a rebuild did: ``status`` is ``"published"`` or ``"nothing-new"``."""

    status: str
    version: str | None
    mode: str | None = None
    n_sig: int = 0
    n_new: int = 0
    timings: dict = dataclasses.field(default_factory=dict)


def plan_rebuild(root, *, full: bool = False, storage_options: dict | None = None) -> dict:
    """Which version to build on which: ``{"target", "base"}`` (ids or None). Reads only
    manifests and the pointer."""
    versions = list_versions(root, storage_options=storage_options)
    if not versions:
        raise StoreError(
            f"{root}: no versions (add signatures with `cmapdask append {root} NEW.gctx`)"
        )
    cur = current_version(root, storage_options=storage_options)
    newer = [m["version"] for m in versions if cur is None or m["version"] > cur]
    return {"base": cur, "target": newer[-1] if newer else None}


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}

    def stage(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 3)
        checkpoint("stage")


def _compute(tasks, progress: bool) -> None:
    # ``progress`` is kept for callers; the command line draws progress (cli.runtime)
    if tasks:
        dask.compute(*tasks)


def _n_sig(store_url, storage_options) -> int:
    from cmapdask.rebuild.products import stored_n_sig

    return stored_n_sig(store_url, storage_options)


def _remove(url, storage_options) -> None:
    fs, p = url_to_fs(url, storage_options)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def rebuild(
    root,
    *,
    full: bool = False,
    metric: Metric = "pearson",
    k: int = 100,
    space: Space = "landmark",
    block_size: int | None = None,
    storage_options: dict | None = None,
    progress: bool = False,
) -> RebuildResult:
    """Build the products of the newest appended version and publish it.

    Parameters
    ----------
    root
        Collection URL (see :mod:`cmapdask.rebuild.versions`).
    full
        ``False``: fold the new signatures into the published version's top-k lists
        (time proportional to what is new); nothing new is a no-op. ``True``: recompute
        every product from scratch and publish (a new version sharing the data when
        nothing was appended).
    metric, space
        Similarity metric and feature space (see :func:`cmapdask.similarity.similarity`).
    k
        Neighbours per tail (at most the number of signatures minus one).
    block_size
        Signatures per similarity block (default: the store's chunks).

    Returns
    -------
    RebuildResult

    Raises
    ------
    LockedError
        Another append or rebuild of ``root`` is at work (``ROOT/LOCK``, see
        :mod:`cmapdask.io.lock`).

    Notes
    -----
    Reads the new signatures' blocks against every block of the collection once
    (incremental: ``2 n_new N G`` multiply-adds; full: ``N^2 G``), the previous top-k
    lists (``N k``), and writes one block file per row block, then the member. Memory per
    task is that of :func:`cmapdask.similarity.similarity`; the client holds metadata only.
    Runs on the active Dask scheduler and never creates a cluster.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if block_size is not None and (isinstance(block_size, bool) or int(block_size) < 1):
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    check_collection(root, storage_options=storage_options, create=False)
    with collection_lock(root, storage_options=storage_options, command="rebuild"):
        return _rebuild(
            root,
            full=full,
            metric=metric,
            k=k,
            space=space,
            block_size=block_size,
            storage_options=storage_options,
            progress=progress,
        )


def _rebuild(
    root, *, full, metric, k, space, block_size, storage_options, progress
) -> RebuildResult:
    timer = _Timer()
    t0 = time.perf_counter()
    plan = plan_rebuild(root, full=full, storage_options=storage_options)
    base, target = plan["base"], plan["target"]
    if target is None and not full:
        return RebuildResult("nothing-new", base)
    if target is None:
        from cmapdask.rebuild.append import clone_version

        target = clone_version(root, base, storage_options=storage_options)
    tman = read_manifest(root, target, storage_options=storage_options)
    turl = version_url(root, target)
    # a run killed while publishing a member left its temporary beside it; ours to remove
    remove_leftovers(turl, storage_options=storage_options)
    ds = open_store(turl, storage_options=storage_options)
    n = ds.sizes["sig"]
    if n < 2:
        raise InputError(f"{root}: version {target} has {n} signature(s); similarity needs 2")
    k_eff = min(k, n - 1)
    name = f"similarity/{metric}_{space}"
    burl = None if base is None else version_url(root, base)
    n_old, prev = 0, None
    if not full and burl is not None and has_member(burl, name, storage_options=storage_options):
        prev = open_member(burl, name, storage_options=storage_options)
        p = prev.attrs.get("cmapdask", {})
        n_old = prev.sizes["sig"]
        same = (
            p.get("k") == k_eff
            and p.get("metric") == metric
            and p.get("space") == space
            and n_old < n
            and list(map(str, ds.indexes["sig"][:n_old])) == list(map(str, prev.indexes["sig"]))
        )
        if not same:
            prev, n_old = None, 0
    mode = "incremental" if prev is not None else "full"
    timer.stage("plan", t0)

    t0 = time.perf_counter()
    rows = int(block_size or ds["expr"].data.chunks[0][0])
    tag = f"{metric}_{space}_k{k_eff}_r{rows}_{mode}"
    workdir = join(work_url(root, target), tag)
    opts = {
        "metric": metric,
        "k": k_eff,
        "space": space,
        "rows": rows,
        "storage_options": storage_options,
    }
    if prev is not None:
        tasks, layout = topk_incremental(ds, prev, n_old, workdir, **opts)
    else:
        tasks, layout = topk_full(ds, workdir, **opts)
    _compute(tasks, progress)
    timer.stage("similarity", t0)

    t0 = time.perf_counter()
    params = {
        "method": "similarity",
        "metric": metric,
        "k": k_eff,
        "space": space,
        "block_size": block_size,
        "mode": "self",
        "rebuild": mode,
        "base_version": base,
        "n_old": n_old,
    }
    write_topk_member(
        turl,
        name,
        ds,
        workdir,
        layout,
        k_eff,
        rows,
        provenance=params,
        storage_options=storage_options,
        compute=lambda t: _compute(t, progress),
    )
    timer.stage("members", t0)

    t0 = time.perf_counter()
    refreshed = [
        {
            "member": name,
            "how": mode
            if mode == "full"
            else "incremental (new x all merged into the previous lists)",
            "seconds": timer.timings["similarity"] + timer.timings["members"],
        }
    ]
    not_refreshed = []
    if burl is not None:
        members = list_members(burl, storage_options=storage_options)
        # products can grow incrementally even when the similarity could not (other k)
        n_base = 0 if full else n_old or _n_sig(burl, storage_options)
        done, not_refreshed = refresh_products(
            burl,
            turl,
            members,
            n_old=n_base,
            similarity_name=name,
            storage_options=storage_options,
            progress=progress,
            compute=lambda t: _compute(t, progress),
        )
        refreshed += done
    timer.stage("products", t0)

    t0 = time.perf_counter()
    manifest = {
        **tman,
        "status": "published",
        "base_version": base,
        "mode": mode,
        "parameters": {
            "metric": metric,
            "k": k_eff,
            "space": space,
            "block_size": block_size,
            "full": full,
        },
        "package_version": __version__,
        "products": refreshed,
        "not_refreshed": not_refreshed,
        "n_old": n_old,
        "timings": {**tman.get("timings", {}), **timer.timings},
        "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_manifest(root, manifest, storage_options=storage_options)
    timer.stage("manifest", t0)
    t0 = time.perf_counter()
    switch_current(root, target, storage_options=storage_options)
    timer.stage("switch", t0)
    _remove(work_url(root, target), storage_options)
    return RebuildResult("published", target, mode, n, n - n_old, dict(timer.timings))
