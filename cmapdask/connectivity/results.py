"""Summaries of a query result and CLUE's result folder.

``summarize`` aggregates NCS to (pert, cell), pert, PCL per cell and PCL with maxq and
gives each level its τ from the stored backgrounds. ``write_result`` lays a result out as
CLUE does, so scripts written for CLUE's downloads keep working::

    DIR/matrices/query/{cs,cs_up,cs_dn,leadf_up,leadf_dn}.gctx    rows sigs, cols queries
    DIR/matrices/gutc/{cs,ns,ps}_sig.gctx
    DIR/matrices/gutc/{ns,ps}_{pert_cell,pert_summary,pcl_cell,pcl_summary}.gctx
    DIR/arfs/<query>/query_result.{parquet,tsv}   ranked perturbagens (τ, NCS, FDR, ...)
    DIR/query_info.tsv                             genes kept / dropped per query
"""

from __future__ import annotations

import json
import os
import re

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.connectivity.classes import pert_class
from cmapdask.connectivity.query import _field, background_name
from cmapdask.connectivity.summaries import LEVELS, SummaryPlan
from cmapdask.connectivity.tau import tau_binned
from cmapdask.io.atomic import check_destination, publish_dir
from cmapdask.io.gctx import write_gctx
from cmapdask.io.store import has_member, open_member

__all__ = ["summarize", "write_result", "ranked_table"]


def _level_tau(ns, labels, bg, level):
    if bg is None or f"tables_{level}" not in bg:
        return da.full(ns.shape, np.nan, chunks=ns.chunks)
    pos = pd.Index(bg[f"bg_{level}"].values.astype(str)).get_indexer(labels.astype(str))
    have = np.flatnonzero(pos >= 0)
    out = da.full(ns.shape, np.nan, chunks=ns.chunks)
    if have.size:
        out[:, have] = tau_binned(ns[:, have], bg[f"tables_{level}"].data[pos[have]])
    return out


def summarize(
    result: xr.Dataset,
    *,
    pcls: dict[str, list[str]] | None = None,
    background="auto",
    storage_options: dict | None = None,
) -> xr.Dataset:
    """NCS and τ at the four summary levels of ALGORITHMS.md §7.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`cmapdask.connectivity.query.query` (needs ``pert_id`` and
        ``cell_id``/``cell_iname`` signature fields).
    pcls : mapping, optional
        PCL name → pert_ids (for example read with ``read_gmt``); without it the PCL
        levels are empty.
    background : "auto", xarray.Dataset or None
        The τ backgrounds; ``"auto"`` opens the store's ``background/<space>`` if present.

    Returns
    -------
    xarray.Dataset
        ``ns_<level>`` and ``ps_<level>`` with dims ``("query", <level>)``. Lazy. Rows of
        ``pert_cell`` and ``pert_summary`` carry ``pert_type`` and ``pert_class`` (CP, KD,
        CRISPR, OE, ...; :mod:`.classes`) when the result has ``pert_type``, to filter or
        split with :func:`.classes.filter_class` / :func:`.classes.split_by_class`.

    Notes
    -----
    One task per query holds all of that query's NCS (``8 * n_sig`` bytes) and sorts
    each group once per distinct group size.
    """
    pert = _field(result, "pert_id")
    cell = _field(result, "cell_id", "cell_iname")
    if pert is None:
        from cmapdask.errors import MetadataError

        raise MetadataError("summaries need a pert_id signature field")
    if cell is None:
        cell = np.full(pert.shape, "", dtype=object)
    plan = SummaryPlan(pert, cell, pcls)
    sizes = plan.sizes()
    total = sum(sizes.values())
    ncs = da.asarray(result["ncs"].data).rechunk({0: 1, 1: -1})
    agg = ncs.map_blocks(plan.apply_concat, chunks=(ncs.chunks[0], (total,)), dtype=float)
    if background == "auto":
        meta = result.attrs.get("cmapdask", {})
        store, space = meta.get("store"), meta.get("space")
        name = background_name(space) if space else None
        background = (
            open_member(store, name, storage_options=storage_options)
            if store and name and has_member(store, name, storage_options=storage_options)
            else None
        )
    data, coords, start = {}, {"query": result["query"].values}, 0
    for level in LEVELS:
        k = sizes[level]
        labels = plan.labels(level)
        ns = agg[:, start : start + k]
        start += k
        data[f"ns_{level}"] = (("query", level), ns.astype(np.float32))
        data[f"ps_{level}"] = (
            ("query", level),
            _level_tau(ns, labels, background, level).astype(np.float32),
        )
        coords[level] = labels
    coords["pert_cell_pert_id"] = ("pert_cell", plan.pc_pert)
    coords["pert_cell_cell_id"] = ("pert_cell", plan.pc_cell)
    coords.update(_class_coords(result, plan))
    out = xr.Dataset(data, coords=coords)
    out.attrs["cmapdask"] = {
        **result.attrs.get("cmapdask", {}),
        "kind": "query_summaries",
        "n_pcls": len(pcls or {}),
        "tau_background": background is not None,
    }
    return out


def _class_coords(result: xr.Dataset, plan: SummaryPlan) -> dict:
    """``pert_type`` and ``pert_class`` of each pert_cell and pert_summary row (the
    first signature's, should a pert_id have several)."""
    pt = _field(result, "pert_type")
    if pt is None:
        return {}
    pc = np.array([pt[m[0]] for m in plan.pc_members], dtype=object)
    ps = np.array([pc[m[0]] for m in plan.pert_members], dtype=object)
    return {
        "pert_cell_pert_type": ("pert_cell", pc),
        "pert_cell_pert_class": ("pert_cell", pert_class(pc)),
        "pert_summary_pert_type": ("pert_summary", ps),
        "pert_summary_pert_class": ("pert_summary", pert_class(ps)),
    }


def _as_gctx(arr: xr.DataArray, rows: str) -> xr.Dataset:
    # CLUE's matrices: rows (GCTx rid) = signatures or summary rows, columns = queries.
    # In our data model the GCTx column axis is "sig" and the row axis "gene".
    da_ = arr.transpose("query", rows)
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), da_.data.astype(np.float32))},
        coords={
            "sig": np.asarray(da_["query"].values, dtype=object),
            "gene": np.asarray(da_[rows].values, dtype=object).astype(str).astype(object),
        },
    )
    extra = {
        k: ("gene", np.asarray(c.values))
        for k, c in da_.coords.items()
        if c.dims == (rows,) and k != rows
    }
    return ds.assign_coords(extra)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def ranked_table(result: xr.Dataset, summaries: xr.Dataset | None, query: str) -> pd.DataFrame:
    """One query's signatures ranked by τ (then NCS), with metadata. In memory."""
    r = result.sel(query=query)
    cols = {"sig_id": r["sig"].values}
    for k, c in r.coords.items():
        if c.dims == ("sig",) and k != "sig":
            cols[k] = c.values
    for v in ("ps", "ncs", "cs", "cs_up", "cs_dn", "fdr_q_nlog10"):
        if v in r:
            cols["tau" if v == "ps" else ("wtcs" if v == "cs" else v)] = np.asarray(r[v].values)
    df = pd.DataFrame(cols)
    if "pert_type" in df:
        df.insert(df.columns.get_loc("pert_type") + 1, "pert_class", pert_class(df["pert_type"]))
    key = df["tau"].fillna(df["ncs"] * 0) if "tau" in df else df["ncs"]
    order = np.lexsort((-df["ncs"].to_numpy(), -key.to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def write_result(
    result: xr.Dataset,
    out_dir,
    *,
    summaries: xr.Dataset | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> str:
    """Write a query result as CLUE's result folder (published atomically).

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`cmapdask.connectivity.query.query`.
    out_dir : str
        Destination folder: absent or empty (see ``overwrite``).
    summaries : xarray.Dataset, optional
        From :func:`summarize`; adds the ``{ns,ps}_<level>.gctx`` matrices.
    overwrite : bool
        Replace an existing result folder (only one cmapdask wrote: it holds the
        ``.cmapdask`` marker; see :mod:`cmapdask.io.atomic`).

    Notes
    -----
    Computes the result and the summaries in one graph, once, into this process
    (``5-8 x query x n_sig`` float32 plus the summaries), then writes every file from
    memory; nothing else is submitted to the cluster. One submission matters: the
    summaries are built on the result's lazy graph, and two submissions of overlapping
    graphs (each optimised on its own, so a shared key can be a fused task in one and a
    plain task in the other) corrupt a distributed scheduler's state and hang it.
    """
    names = [
        v
        for v in ("cs", "cs_up", "cs_dn", "leadf_up", "leadf_dn", "ncs", "ps", "fdr_q_nlog10")
        if v in result
    ]
    check_destination(str(out_dir), overwrite=overwrite)  # before the work, not after
    # one compute of everything the folder holds: pieces of one graph persisted in turn
    # reached the scheduler as overlapping graphs and could wedge it (see DEVELOPERS.md)
    computed, summaries = dask.compute(result[names], summaries)
    result = result.assign({k: computed[k] for k in names})
    with publish_dir(str(out_dir), overwrite=overwrite, mark="query result") as tmp:
        q_dir = os.path.join(tmp, "matrices", "query")
        g_dir = os.path.join(tmp, "matrices", "gutc")
        os.makedirs(q_dir)
        os.makedirs(g_dir)
        for v in ("cs", "cs_up", "cs_dn", "leadf_up", "leadf_dn"):
            write_gctx(_as_gctx(result[v], "sig"), os.path.join(q_dir, f"{v}.gctx"))
        for v, fn in (("cs", "cs_sig"), ("ncs", "ns_sig"), ("ps", "ps_sig")):
            if v in result:
                write_gctx(_as_gctx(result[v], "sig"), os.path.join(g_dir, f"{fn}.gctx"))
        if summaries is not None:
            for level in LEVELS:
                for kind in ("ns", "ps"):
                    write_gctx(
                        _as_gctx(summaries[f"{kind}_{level}"], level),
                        os.path.join(g_dir, f"{kind}_{level}.gctx"),
                    )
        for q in result["query"].values:
            d = os.path.join(tmp, "arfs", _SAFE.sub("_", str(q)))
            os.makedirs(d)
            df = ranked_table(result, summaries, q)
            df.to_parquet(os.path.join(d, "query_result.parquet"), index=False)
            df.to_csv(os.path.join(d, "query_result.tsv"), sep="\t", index=False, na_rep="NaN")
        meta = result.attrs.get("cmapdask", {})
        pd.DataFrame(meta.get("genes", [])).to_csv(
            os.path.join(tmp, "query_info.tsv"), sep="\t", index=False
        )
        with open(os.path.join(tmp, "provenance.json"), "w") as fh:
            json.dump({k: v for k, v in meta.items() if k != "genes"}, fh, indent=1, default=str)
    return str(out_dir)
