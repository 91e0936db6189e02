"""Summaries of a query result and CLUE's result folder, written and read.

``summarize`` aggregates NCS to (pert, cell), pert, PCL per cell and PCL with maxq and
gives each level its τ from the stored backgrounds. ``write_result`` lays a result out as
CLUE's ``sig_gutc_tool`` does (ALGORITHMS.md §12), so scripts written for CLUE's
downloads (R's cluequery, Morpheus, ...) keep working; ``read_ranked_lists`` reads such a
folder (or one of its matrices, or a Zarr result) back as ranked lists::

    DIR/config.yaml                                the parameters of the run
    DIR/matrices/query/up.gmt, dn.gmt              the query's sets, as submitted
    DIR/matrices/query/{cs,cs_up,cs_dn,leadf_up,leadf_dn}.gctx    rows sigs, cols queries
    DIR/matrices/gutc/{cs,ns,ps}_sig.gctx
    DIR/matrices/gutc/{ns,ps}_{pert_cell,pert_summary,pcl_cell,pcl_summary}.gctx
    DIR/matrices/gutc/query_info.txt               cid, desc, query_id per query
    DIR/arfs/<query>/{pert_id_cell,pert_id_summary,pcl_cell,pcl_summary}.gct   τ
    DIR/arfs/<query>/query_info.txt                that query's row, genes used/dropped
    DIR/arfs/<query>/query_result.{parquet,tsv}    signatures ranked (τ, NCS, FDR, ...)
    DIR/query_info.tsv                             genes kept / dropped per query
    DIR/report.txt                                 what to know: τ missing, genes dropped
    DIR/provenance.json
    DIR/success.txt                                written last: the job finished

Summary matrices name their row fields as the Broad's do: ``pert_id`` and ``cell_id``
(``pert_cell``), ``pert_id`` (``pert_summary``), ``pcl_size`` and ``cell_id`` (PCLs).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.connectivity.classes import pert_class
from cmapdask.connectivity.query import _field, background_name
from cmapdask.connectivity.summaries import LEVELS, SummaryPlan
from cmapdask.connectivity.tau import tau_binned
from cmapdask.errors import InputError, QueryError
from cmapdask.io.atomic import check_destination, join, publish_dir, url_to_fs
from cmapdask.io.gct import write_gct
from cmapdask.io.gctx import is_gctx, read_gctx, write_gctx
from cmapdask.io.gmt import write_gmt
from cmapdask.io.pending import deferrable
from cmapdask.io.store import has_member, open_member, zarr_options

__all__ = [
    "summarize",
    "write_result",
    "write_folder",
    "folder_variables",
    "read_ranked_lists",
    "ranked_table",
    "result_folders",
]

_VARIABLES = ("cs", "cs_up", "cs_dn", "leadf_up", "leadf_dn", "ncs", "ps", "fdr_q_nlog10")


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
    # the plan is one task of its own that every query's task depends on: shipped to a
    # worker once, not pickled into each task (it holds every group's members: about
    # 0.7 MB for 20,000 signatures, which each query's task carried before)
    agg = da.blockwise(
        _summaries_block,
        "qt",
        ncs,
        "qs",
        dask.delayed(plan, pure=True),
        None,
        new_axes={"t": total},
        concatenate=True,
        dtype=float,
        meta=np.empty((0, 0), dtype=float),
        name=f"summaries-{plan.token[:16]}-{ncs.name}",  # named: no pickling of the plan
    )
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
    # row fields, prefixed by their level here (one Dataset holds every level); the
    # result folder's matrices carry them unprefixed, as the Broad's files do
    coords["pert_cell_pert_id"] = ("pert_cell", plan.pc_pert)
    coords["pert_cell_cell_id"] = ("pert_cell", plan.pc_cell)
    coords.update(_class_coords(result, plan))
    coords["pert_summary_pert_id"] = ("pert_summary", plan.pert_labels)
    coords["pcl_cell_cell_id"] = ("pcl_cell", plan.cells("pcl_cell"))
    coords["pcl_cell_pcl_size"] = ("pcl_cell", _sizes(plan.pcl_cell_members))
    coords["pcl_summary_pcl_size"] = ("pcl_summary", _sizes(plan.pcl_members))
    out = xr.Dataset(data, coords=coords)
    out.attrs["cmapdask"] = {
        **result.attrs.get("cmapdask", {}),
        "kind": "query_summaries",
        "n_pcls": len(pcls or {}),
        "tau_background": background is not None,
    }
    return out


def _summaries_block(ncs: np.ndarray, plan: SummaryPlan) -> np.ndarray:
    return plan.apply_concat(ncs)


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


def _sizes(members) -> np.ndarray:
    """Members present (the values maxq summarised) of each PCL row."""
    return np.array([len(m) for m in members], dtype=np.int64)


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
        (str(k).removeprefix(f"{rows}_") if rows in LEVELS else k): ("gene", np.asarray(c.values))
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


# CLUE's per-query tables (arfs/<query>/<file>.gct): the τ column of one query
_ARFS = {
    "pert_cell": "pert_id_cell",
    "pert_summary": "pert_id_summary",
    "pcl_cell": "pcl_cell",
    "pcl_summary": "pcl_summary",
}


def result_folders(names: Iterable[str]) -> dict[str, str]:
    """``{query id: folder name under arfs/}``; refuses ids that clash as folder names.

    A folder name is the id with every run of characters other than letters, digits,
    ``_``, ``.`` and ``-`` replaced by ``_``. Two ids giving the same folder (also when
    they differ only in case, which case-insensitive file systems merge), and ids giving
    ``.``, ``..`` or a hidden name, are a ``QueryError`` naming them: check before the
    computation (the CLI does, and :func:`write_result` does before it computes).
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        name = str(name)
        folder = _SAFE.sub("_", name)
        if not folder or folder.startswith("."):
            raise QueryError(
                f"query id {name!r} cannot name a result folder (arfs/{folder}); rename it"
            )
        other = seen.get(folder.lower())
        if other is not None and other != name:
            raise QueryError(
                f"query ids {other!r} and {name!r} both become the result folder "
                f"arfs/{folder}; rename one"
            )
        seen[folder.lower()] = name
        out[name] = folder
    return out


def _config(meta: Mapping, summaries) -> dict:
    """config.yaml: CLUE's names for the parameters (metric, es_tail, feature_space) and
    ours."""
    sm = summaries.attrs.get("cmapdask", {}) if summaries is not None else {}
    cfg = {
        "tool": "cmapdask query",
        "metric": meta.get("metric"),
        "es_tail": meta.get("tail"),
        "feature_space": meta.get("space"),
        "score_dir": meta.get("store"),
        "reference": meta.get("reference"),
        "n_reference": meta.get("n_reference"),
        "scored": meta.get("scored"),
        "n_scored": meta.get("n_scored"),
        "grouping": meta.get("grouping"),
        "tau": meta.get("tau"),
        "tau_background": sm.get("tau_background") if summaries is not None else None,
        "fdr": meta.get("fdr"),
        "n_pcls": sm.get("n_pcls"),
        "package_version": meta.get("package_version"),
    }
    return {k: v for k, v in cfg.items() if v is not None}


def _report(meta: Mapping, summaries, notes: Iterable[str]) -> list[str]:
    """report.txt: what a reader of the folder must know (also when --quiet hid stderr)."""
    lines = [str(n) for n in notes]
    space, store = meta.get("space"), meta.get("store")
    no_sig_tau = meta.get("tau") == "no background"
    no_level_tau = summaries is not None and not summaries.attrs.get("cmapdask", {}).get(
        "tau_background", True
    )
    if no_sig_tau or no_level_tau:
        which = "ps_sig and every ps_* summary" if no_sig_tau else "every ps_* summary"
        lines.append(
            f"tau: {store} has no tau background for space {space!r}, so {which} matrix "
            "(and the arfs tables) is NaN; build it with `cmapdask background "
            f"{store} --space {space}` and query again"
        )
    elif meta.get("tau") == "not computed":
        lines.append("tau: not computed (tau='none'); ps matrices are absent")
    for row in meta.get("genes", []):
        lines.append(
            "query {query}: {n_up} up, {n_down} down genes used; {n_up_dropped} up and "
            "{n_down_dropped} down dropped".format(**row)
        )
    return lines


def _submitted(meta: Mapping, side: str) -> dict[str, list[str]]:
    sets = {}
    for q, pair in meta.get("sets", {}).items():
        genes = pair.get(side)
        if genes:
            sets[q] = list(dict.fromkeys(str(g).strip() for g in genes if str(g).strip()))
    return sets


@deferrable("CLUE result folder", "out_dir")
def write_result(
    result: xr.Dataset,
    out_dir,
    *,
    summaries: xr.Dataset | None = None,
    progress: bool = False,
    overwrite: bool = False,
    notes: Iterable[str] = (),
    compute: bool = True,
) -> str:
    """Write a query result as CLUE's result folder (published atomically).

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`cmapdask.connectivity.query.query`.
    out_dir : str
        Destination folder: absent or empty (see ``overwrite``).
    summaries : xarray.Dataset, optional
        From :func:`summarize`; adds the ``{ns,ps}_<level>.gctx`` matrices and the
        ``arfs/<query>/*.gct`` tables.
    overwrite : bool
        Replace an existing result folder (only one cmapdask wrote: it holds the
        ``.cmapdask`` marker; see :mod:`cmapdask.io.atomic`).
    notes : iterable of str
        Lines for ``report.txt`` (the CLI passes the warnings of the query).
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Raises
    ------
    QueryError
        Query ids that clash as folder names (:func:`result_folders`), before anything is
        computed.

    Notes
    -----
    The layout is in this module's docstring. Computes the result and the summaries in
    one graph, once, into this process (``5-8 x query x n_sig`` float32 plus the
    summaries), then writes every file from memory; nothing else is submitted to the
    cluster. One submission matters: the summaries are built on the result's lazy graph,
    and two submissions of overlapping graphs (each optimised on its own, so a shared key
    can be a fused task in one and a plain task in the other) corrupt a distributed
    scheduler's state and hang it. ``success.txt`` is written last.
    """
    result_folders(result["query"].values.tolist())
    check_destination(str(out_dir), overwrite=overwrite)  # before the work, not after
    # one compute of everything the folder holds: pieces of one graph persisted in turn
    # reached the scheduler as overlapping graphs and could wedge it (see DEVELOPERS.md)
    computed, summaries = dask.compute(folder_variables(result), summaries)
    result = result.assign({k: computed[k] for k in computed.data_vars})
    return write_folder(result, str(out_dir), summaries=summaries, notes=notes, overwrite=overwrite)


def folder_variables(result: xr.Dataset) -> xr.Dataset:
    """The variables of a query result that its result folder holds (all it computes)."""
    return result[[v for v in _VARIABLES if v in result]]


def write_folder(
    result: xr.Dataset,
    out_dir,
    *,
    summaries: xr.Dataset | None = None,
    notes: Iterable[str] = (),
    overwrite: bool = False,
) -> str:
    """CLUE's result folder from a result (and summaries) already in memory.

    :func:`write_result` computes, then calls this; :class:`cmapdask.connectivity.job.JobResult`
    calls it with what its one computation brought back. Nothing is computed here (a
    dask-backed variable would be computed file by file: pass computed data).
    """
    folders = result_folders(result["query"].values.tolist())
    check_destination(str(out_dir), overwrite=overwrite)
    meta = result.attrs.get("cmapdask", {})
    queries = [str(q) for q in result["query"].values.tolist()]
    with publish_dir(str(out_dir), overwrite=overwrite, mark="query result") as tmp:
        q_dir = os.path.join(tmp, "matrices", "query")
        g_dir = os.path.join(tmp, "matrices", "gutc")
        os.makedirs(q_dir)
        os.makedirs(g_dir)
        import yaml

        with open(os.path.join(tmp, "config.yaml"), "w") as fh:
            yaml.safe_dump(_config(meta, summaries), fh, sort_keys=False)
        for side, fn in (("up", "up.gmt"), ("down", "dn.gmt")):
            sets = _submitted(meta, side)
            if sets:
                write_gmt(sets, os.path.join(q_dir, fn))
        for v in ("cs", "cs_up", "cs_dn", "leadf_up", "leadf_dn"):
            write_gctx(_as_gctx(result[v], "sig"), os.path.join(q_dir, f"{v}.gctx"))
        for v, fn in (("cs", "cs_sig"), ("ncs", "ns_sig"), ("ps", "ps_sig")):
            if v in result:
                write_gctx(_as_gctx(result[v], "sig"), os.path.join(g_dir, f"{fn}.gctx"))
        info = pd.DataFrame({"cid": queries, "desc": queries, "query_id": queries})
        info.to_csv(os.path.join(g_dir, "query_info.txt"), sep="\t", index=False)
        if summaries is not None:
            for level in LEVELS:
                for kind in ("ns", "ps"):
                    write_gctx(
                        _as_gctx(summaries[f"{kind}_{level}"], level),
                        os.path.join(g_dir, f"{kind}_{level}.gctx"),
                    )
        genes = {row["query"]: row for row in meta.get("genes", [])}
        for q in queries:
            d = os.path.join(tmp, "arfs", folders[q])
            os.makedirs(d)
            row = {"cid": q, "desc": q, "query_id": q}
            row.update({k: v for k, v in genes.get(q, {}).items() if k != "query"})
            pd.DataFrame([row]).to_csv(os.path.join(d, "query_info.txt"), sep="\t", index=False)
            if summaries is not None:
                for level, fn in _ARFS.items():
                    tau = summaries[f"ps_{level}"].sel(query=q)
                    table = xr.Dataset(
                        # CLUE's tables: τ to 2 decimals, one column (the query), ids only
                        {"expr": (("sig", "gene"), np.round(tau.values[None, :], 2))},
                        coords={
                            "sig": np.array([q], dtype=object),
                            "gene": np.asarray(tau[level].values, dtype=object),
                        },
                    )
                    write_gct(table, os.path.join(d, f"{fn}.gct"))
            df = ranked_table(result, summaries, q)
            df.to_parquet(os.path.join(d, "query_result.parquet"), index=False)
            df.to_csv(os.path.join(d, "query_result.tsv"), sep="\t", index=False, na_rep="NaN")
        pd.DataFrame(meta.get("genes", [])).to_csv(
            os.path.join(tmp, "query_info.tsv"), sep="\t", index=False
        )
        with open(os.path.join(tmp, "report.txt"), "w") as fh:
            fh.writelines(line + "\n" for line in _report(meta, summaries, notes))
        with open(os.path.join(tmp, "provenance.json"), "w") as fh:
            prov = {k: v for k, v in meta.items() if k not in ("genes", "sets")}
            json.dump(prov, fh, indent=1, default=str)
        with open(os.path.join(tmp, "success.txt"), "w") as fh:  # last: the job finished
            fh.write("success\n")
    return str(out_dir)


_RESULT_FILES = {
    "ps": "gutc/ps_sig",
    "ncs": "gutc/ns_sig",
    "cs": "gutc/cs_sig",
    "cs_up": "query/cs_up",
    "cs_dn": "query/cs_dn",
}


def read_ranked_lists(
    path, *, variable: str | None = None, storage_options: dict | None = None
) -> xr.DataArray:
    """Ranked lists of a connectivity query result, for :func:`cmapdask.enrich.enrich_ranked`.

    Parameters
    ----------
    path
        A query result: CLUE's result folder written by
        :func:`write_result` (``cmapdask query --out``), one of its
        GCTx matrices, or a Zarr group holding a :func:`cmapdask.connectivity.query`
        result (``Dataset.to_zarr``). Local path or fsspec URL.
    variable
        ``"ps"`` (τ, the default: each query's signatures ranked by τ), ``"ncs"``,
        ``"cs"`` (WTCS), ``"cs_up"``, ``"cs_dn"``, or a summary level of the folder such as
        ``"ps_pert_summary"``, ``"ns_pert_cell"``, ``"ps_pcl_summary"``. Ignored for a
        single GCTx file. Default ``"ps"``; in a Zarr group the first of ``ps``,
        ``pert_summary`` (a :func:`cmapdask.similarity.pert_similarity` result), ``ncs``.

    Returns
    -------
    xarray.DataArray
        Dims ``("query", <items>)`` with ``<items>`` ``"sig"`` for signature-level
        matrices (signature metadata such as ``pert_id`` as coordinates) or the summary
        level's name; ``pert_id`` is a coordinate of signature, ``pert_cell`` and
        ``pert_summary`` items. Dask-backed.

    Notes
    -----
    Opens the file lazily: the matrix is read when the lists are computed, one block of
    queries per task (``4 x n_items`` bytes per query).
    """
    fs, p = url_to_fs(path, storage_options)
    level = "sig"
    if fs.isdir(p) and fs.exists(p.rstrip("/") + "/matrices"):
        variable = variable or "ps"
        rel = _RESULT_FILES.get(variable)
        if rel is None:
            if not variable.startswith(("ps_", "ns_")):
                raise InputError(
                    f"{path}: unknown result variable {variable!r} (ps, ncs, cs, "
                    "cs_up, cs_dn, or a summary such as ps_pert_summary)"
                )
            rel, level = f"gutc/{variable}", variable[3:]
        gctx = join(str(path), "matrices", rel + ".gctx")
        if not fs.exists(url_to_fs(gctx, storage_options)[1]):
            raise InputError(f"{path}: the result folder has no {rel}.gctx")
    elif is_gctx(path, storage_options):
        gctx = str(path)
        stem = os.path.basename(str(path)).split(".")[0]
        if stem[:3] in ("ps_", "ns_") and not stem.endswith("_sig"):
            level = stem[3:]
    else:
        try:
            res = xr.open_zarr(
                path, consolidated=False, storage_options=zarr_options(path, storage_options)
            )
        except Exception as e:  # not a Zarr group, missing path
            raise InputError(
                f"{path}: not a query result folder, GCTx or Zarr result: {str(e).splitlines()[0]}"
            ) from None
        if variable is None:
            variable = next((v for v in ("ps", "pert_summary", "ncs") if v in res), "ps")
        if variable not in res or res[variable].ndim != 2:
            raise InputError(f"{path}: no 2-D variable {variable!r}")
        return res[variable]
    ds = read_gctx(gctx, storage_options=storage_options)
    # CLUE's matrices: GCTx columns (our "sig") are the queries, rows ("gene") the items
    out = ds["expr"].rename({"sig": "query", "gene": level})
    keep = {k: c for k, c in out.coords.items() if c.dims == (level,) and k != level}
    out = out.reset_coords(drop=True).assign_coords(
        {k.removeprefix("gene_"): (level, c.values) for k, c in keep.items()}
    )
    if "pert_id" not in out.coords:  # summary rows: match sets by their perturbagen
        if f"{level}_pert_id" in out.coords:
            out = out.assign_coords(pert_id=(level, out[f"{level}_pert_id"].values))
        elif level == "pert_summary":
            out = out.assign_coords(pert_id=(level, np.asarray(out[level].values, dtype=object)))
    out.name = variable if gctx != str(path) else os.path.basename(str(path)).split(".")[0]
    out.attrs = {"cmapdask": {**ds.attrs.get("cmapdask", {}), "query_result": str(path)}}
    return out
