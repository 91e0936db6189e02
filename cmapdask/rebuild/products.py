"""The other products of a version, carried into the next one at a cost that follows what
changed.

- **query indexes** (``index/<space>``, gene-major ``(gene, sig)``, one chunk per gene and
  block of signatures): *extended*. The whole blocks of the previous index are shared
  (hard links locally, server-side copies on object storage); only the last, partial block
  (read back from the previous index, never re-ranked) and the blocks of the new
  signatures are written, each new signature ranked once.
- **τ backgrounds** (``background/<space>``): depend only on the reference signatures.
  *Shared* when the reference set is unchanged (the usual nightly case: new signatures
  outside Touchstone), *rebuilt* with :func:`cmapdask.connectivity.build_background` when
  it changed (with the PCL sets the member records); not refreshable (listed with the
  reason) when made from a signature mask, which the member does not record.
- **other similarity members** (another metric or space, perturbagen x perturbagen
  matrices): *recomputed* in full from their recorded parameters; query-mode results and
  full matrices are listed as not refreshed.
- **clusters** (``clusters/<name>``): clustering is global, not incremental; k-means,
  kNN-graph communities (from the freshly merged neighbour lists) and hierarchical
  clusters of a perturbagen matrix member (named in their provenance, ``source``) are
  *recomputed* from their recorded parameters, after the matrices they read.
- anything else: listed as not refreshed, with the reason.
"""

from __future__ import annotations

import os
import shutil
import time

import dask
import numpy as np
import zarr

from cmapdask.errors import InputError, StoreError
from cmapdask.io.atomic import is_local, join, publish_dir, url_to_fs
from cmapdask.io.store import (
    ensure_parent_groups,
    has_member,
    mark_complete_remote,
    open_member,
    open_store,
    quiet_zarr,
    set_provenance,
    zarr_options,
)

__all__ = ["extend_index", "refresh_products", "share_member", "stored_n_sig"]


def _copy_tree(src, dst, storage_options, *, keep=lambda rel: True, link=lambda rel: False):
    """Copy the files of ``src`` under ``dst`` (same filesystem): ``link(rel)`` ones as hard
    links locally (immutable chunks), the others as real copies."""
    fs, sp = url_to_fs(src, storage_options)
    _, dp = url_to_fs(dst, storage_options)
    sp, dp = sp.rstrip("/"), dp.rstrip("/")
    local = is_local(fs)
    for f in fs.find(sp):
        rel = f[len(sp) + 1 :]
        if not keep(rel):
            continue
        target = f"{dp}/{rel}"
        if local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if link(rel):
                os.link(f, target)
            else:
                shutil.copyfile(f, target)
        else:
            fs.copy(f, target)
    if not local:
        fs.invalidate_cache()


def stored_n_sig(store_url, storage_options=None) -> int:
    """Signatures of a store, from the ``expr`` array's metadata alone."""
    with quiet_zarr():
        g = zarr.open_group(
            store_url,
            mode="r",
            storage_options=zarr_options(store_url, storage_options),
            use_consolidated=False,
        )
        return int(g["expr"].shape[0])


def share_member(base_url, target_url, name, *, storage_options=None) -> str:
    """Publish member ``name`` of ``base_url`` unchanged in ``target_url`` (chunks linked
    locally, copied server-side remotely; published atomically, complete flag last)."""
    src, dest = join(base_url, name), join(target_url, name)
    meta = dict(open_member(base_url, name, storage_options=storage_options).attrs["cmapdask"])
    ensure_parent_groups(target_url, name, storage_options)
    local = is_local(url_to_fs(dest, storage_options)[0])
    with publish_dir(dest, storage_options=storage_options, overwrite=True) as tmp:
        _copy_tree(src, tmp, storage_options, link=lambda rel: "/c/" in f"/{rel}")
        set_provenance(tmp, {**meta, "complete": local}, storage_options=storage_options)
    mark_complete_remote(dest, storage_options)
    return dest


# ------------------------------------------------------------------------------ indexes


def _index_block(base_idx, target, sel, lo, hi, n_old, tmp, storage_options):
    """Columns [lo, hi) of the extended index: old ones read back, new ones ranked."""
    from cmapdask.connectivity import rank_descending

    parts_r, parts_s = [], []
    with quiet_zarr():
        if lo < n_old:
            g = zarr.open_group(
                base_idx,
                mode="r",
                storage_options=zarr_options(base_idx, storage_options),
                use_consolidated=False,
            )
            parts_r.append(g["rank"][:, lo : min(hi, n_old)])
            parts_s.append(g["score"][:, lo : min(hi, n_old)])
        if hi > n_old:
            ds = open_store(target, storage_options=storage_options)
            x = np.asarray(ds["expr"].data[max(lo, n_old) : hi].compute(scheduler="sync"))[:, sel]
            if np.isnan(x).any():
                raise InputError(f"{target}: a new signature has NaN scores; it cannot be ranked")
            parts_r.append(rank_descending(x).T)
            parts_s.append(x.astype(np.float32).T)
        out = zarr.open_group(
            tmp,
            mode="r+",
            storage_options=zarr_options(tmp, storage_options),
            use_consolidated=False,
        )
        r = np.concatenate(parts_r, axis=1)
        out["rank"][:, lo:hi] = r.astype(out["rank"].dtype, copy=False)
        out["score"][:, lo:hi] = np.concatenate(parts_s, axis=1)
    return hi - lo


def extend_index(
    base_url, target_url, space, n_old: int, *, storage_options=None, compute=None
) -> str | None:
    """Extend the query index ``index/<space>`` of ``base_url`` (its ``n_old`` signatures
    are the first of ``target_url``) to every signature of ``target_url``.

    Returns the member URL, or None when the previous index does not fit (other signature
    count or genes): build it afresh then.

    Notes
    -----
    Shares the previous index's whole blocks (one link or copy per gene and block); reads
    back its last partial block (``N x chunk_rows`` ranks and scores at most) and ranks
    only the new signatures; one task per index block written.
    """
    from cmapdask.connectivity import space_genes

    name = f"index/{space}"
    base_idx, dest = join(base_url, name), join(target_url, name)
    meta = dict(open_member(base_url, name, storage_options=storage_options).attrs["cmapdask"])
    with quiet_zarr():
        g = zarr.open_group(
            base_idx,
            mode="r",
            storage_options=zarr_options(base_idx, storage_options),
            use_consolidated=False,
        )
        shape, rows = g["rank"].shape, int(g["rank"].chunks[1])
        genes = np.asarray(g["gene"][:])
    target = open_store(target_url, storage_options=storage_options)
    n = target.sizes["sig"]
    sel = space_genes(target, space)
    if (
        shape[1] != n_old
        or n <= n_old
        or list(map(str, genes)) != [str(v) for v in target["gene"].values[sel]]
    ):
        return None
    b0 = n_old // rows  # blocks before b0 are whole and shared

    def keep(rel):
        head, _, tail = rel.partition("/c/")
        if head in ("rank", "score") and tail:
            return int(tail.split("/")[1]) < b0
        return True

    ensure_parent_groups(target_url, name, storage_options)
    local = is_local(url_to_fs(dest, storage_options)[0])
    with publish_dir(dest, storage_options=storage_options, overwrite=True) as tmp:
        _copy_tree(
            base_idx,
            tmp,
            storage_options,
            keep=keep,
            link=lambda rel: rel.split("/")[0] in ("rank", "score") and "/c/" in rel,
        )
        with quiet_zarr():
            out = zarr.open_group(
                tmp,
                mode="r+",
                storage_options=zarr_options(tmp, storage_options),
                use_consolidated=False,
            )
            for v in ("rank", "score"):
                out[v].resize((shape[0], n))
        tasks = [
            dask.delayed(_index_block, pure=False)(
                base_idx, str(target_url), sel, lo, min(lo + rows, n), n_old, tmp, storage_options
            )
            for lo in range(b0 * rows, n, rows)
        ]
        (compute or dask.compute)(tasks)
        sig = target["sig"].values
        meta = {
            **meta,
            "n_sig": int(n),
            "sig_first": str(sig[0]),
            "sig_last": str(sig[-1]),
            "extended_from": {"store": str(base_url), "n_sig": int(n_old)},
        }
        set_provenance(tmp, {**meta, "complete": local}, storage_options=storage_options)
    mark_complete_remote(dest, storage_options)
    return dest


# ------------------------------------------------------------------------------ the rest


def _background(base_url, target_url, member, storage_options, progress):
    from cmapdask.connectivity import build_background, select_signatures
    from cmapdask.where import selection_from_record

    prov = dict(open_member(base_url, member, storage_options=storage_options).attrs["cmapdask"])
    try:  # parsed as data, never evaluated: a store is data, whoever edited it
        ref = selection_from_record(prov.get("reference"))
    except InputError as e:
        raise StoreError(
            f"{base_url}: {member} records a reference that is not a filter: {e}"
        ) from None
    if ref is None:
        return (
            None,
            "built from a signature mask the member does not record; rebuild it with "
            "build_background",
        )
    pcls = prov.get("pcls") or None
    if prov.get("n_pcls") and not pcls:  # made before members recorded their PCL sets
        return (
            None,
            "built with PCL sets the member does not record; "
            "rebuild it with build_background(pcls=...)",
        )
    old = open_member(base_url, member, storage_options=storage_options)
    ds = open_store(target_url, storage_options=storage_options)
    ids = [str(s) for s in ds["sig"].values[select_signatures(ds, ref)]]
    if ids == [str(s) for s in old["sig_bg"].values]:
        share_member(base_url, target_url, member, storage_options=storage_options)
        return "shared (reference set unchanged)", None
    build_background(
        target_url,
        reference=ref,
        space=prov.get("space", "bing"),
        metric=prov.get("metric", "wtcs"),
        n_top=int(prov.get("n_top", 50)),
        pcls=pcls,
        storage_options=storage_options,
        progress=progress,
    )
    return "rebuilt (reference set changed)", None


def _clusters(base_url, target_url, member, similarity_name, storage_options):
    from cmapdask import clustering

    prov = dict(open_member(base_url, member, storage_options=storage_options).attrs["cmapdask"])
    method, name = prov.get("method"), member.split("/", 1)[1]
    if method == "kmeans":
        keys = (
            "n_clusters",
            "n_components",
            "space",
            "scale",
            "solver",
            "init",
            "n_init",
            "max_iter",
            "tol",
            "seed",
        )
        res = clustering.kmeans_signatures(
            open_store(target_url, storage_options=storage_options),
            **{k: prov[k] for k in keys if k in prov},
        )
    elif method in ("leiden", "louvain"):
        if similarity_name is None:
            return None, "kNN-graph clusters need the neighbour member, which was not rebuilt"
        nb = open_member(target_url, similarity_name, storage_options=storage_options)
        if int(prov.get("k", 0)) > nb.sizes["rank"]:
            return None, f"made from {prov.get('k')} neighbours, more than {similarity_name} holds"
        res = clustering.graph_clusters(
            nb,
            method=method,
            k=int(prov["k"]) if "k" in prov else None,
            resolution=float(prov.get("resolution", 1.0)),
            min_score=float(prov.get("min_score", 0.0)),
            seed=int(prov.get("seed", 0)),
        )
    elif method == "hierarchical" and prov.get("source"):
        member_name, _, variable = str(prov["source"]).rpartition(":")
        if not has_member(target_url, member_name, storage_options=storage_options):
            return None, f"its matrix {member_name} is not in the new version"
        mat = open_member(target_url, member_name, storage_options=storage_options)[variable]
        res = clustering.hierarchical_perts(
            mat,
            method=prov.get("linkage", "average"),
            n_clusters=prov.get("n_clusters"),
            threshold=prov.get("threshold"),
            source=prov["source"],
        )
    else:
        return None, (
            f"{method or 'unknown'} clusters of a matrix the member does not name; "
            "make them again with `cmapdask cluster --method hierarchical --matrix ...`"
        )
    clustering.write_clusters(res, target_url, name=name, storage_options=storage_options)
    return "recomputed (clustering is global, not incremental)", None


def _similarity(base_url, target_url, member, storage_options, progress):
    """Another similarity member (other metric, space or level than the incremental one):
    recomputed in full on the new version from its recorded parameters."""
    from cmapdask.similarity import pert_similarity, similarity, write_similarity

    prov = dict(open_member(base_url, member, storage_options=storage_options).attrs["cmapdask"])
    ds = open_store(target_url, storage_options=storage_options)
    if prov.get("level") == "pert":
        res = pert_similarity(
            ds,
            metric=prov["metric"],
            space=prov["space"],
            pert_field=prov.get("pert_field", "pert_id"),
            cell_field=prov.get("cell_field"),
        )
    elif prov.get("mode") == "self" and "k" in prov and not prov.get("full"):
        res = similarity(ds, metric=prov["metric"], k=int(prov["k"]), space=prov["space"])
    else:
        return None, (
            "a query-mode or full-matrix similarity: make it again on the new "
            "version (`cmapdask similarity`)"
        )
    write_similarity(
        res, target_url, name=member, storage_options=storage_options, progress=progress
    )
    return "recomputed in full (from its recorded parameters)", None


def refresh_products(
    base_url,
    target_url,
    members,
    *,
    n_old: int,
    similarity_name: str | None,
    storage_options=None,
    progress=False,
    compute=None,
):
    """Carry every member of the base version (but ``similarity_name``, made by the caller)
    into the target: ``(refreshed, not_refreshed)``, lists of dicts for the manifest
    (member, how or reason, seconds)."""
    from cmapdask.connectivity import build_index

    done, skipped = [], []
    # backgrounds need indexes; hierarchical clusters need their (pert) similarity matrix
    rank = {"index": 0, "similarity": 1, "background": 2, "clusters": 3}
    order = sorted(
        (m for m in members if m != similarity_name),
        key=lambda m: (rank.get(m.split("/", 1)[0], 4), m),
    )
    for member in order:
        t0 = time.perf_counter()
        kind = member.split("/", 1)[0]
        how, why = None, None
        if kind == "index":
            space = member.split("/", 1)[1]
            url = None
            if n_old:
                url = extend_index(
                    base_url,
                    target_url,
                    space,
                    n_old,
                    storage_options=storage_options,
                    compute=compute,
                )
            if url is not None:
                how = "extended (whole blocks shared, new signatures ranked)"
            else:
                build_index(
                    target_url, space=space, storage_options=storage_options, progress=progress
                )
                how = "rebuilt"
        elif kind == "background":
            how, why = _background(base_url, target_url, member, storage_options, progress)
        elif kind == "clusters":
            how, why = _clusters(base_url, target_url, member, similarity_name, storage_options)
        elif kind == "similarity":
            how, why = _similarity(base_url, target_url, member, storage_options, progress)
        else:
            why = f"no rebuild step for {kind} members; make it again on the new version"
        entry = {"member": member, "seconds": round(time.perf_counter() - t0, 3)}
        if how:
            done.append({**entry, "how": how})
        else:
            skipped.append({**entry, "reason": why})
    return done, skipped
