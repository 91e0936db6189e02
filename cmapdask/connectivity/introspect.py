"""Introspect (all-by-all connectivity within a set of signatures) and τ backgrounds.

ALGORITHMS.md §8 and §5: each signature's top-50 / bottom-50 genes are a query scored
against every signature of the set; NCS uses the set as reference; τ is computed in the
order of the Broad's ``runIntrospect`` (each query's table from its own unsymmetrised NCS,
then symmetrised); matrices are made symmetric as (M + Mᵀ)/2. The backgrounds CLUE's τ
needs are built from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from cmapdask.connectivity.engine import score_index
from cmapdask.connectivity.es import Metric
from cmapdask.connectivity.index import Space, open_index
from cmapdask.connectivity.ncs import Grouping
from cmapdask.connectivity.query import (
    _check_index,
    _field,
    background_name,
    normalize,
    select_signatures,
    sig_groups,
)
from cmapdask.connectivity.summaries import LEVELS, SummaryPlan
from cmapdask.connectivity.tau import GRID, background_tables, tau_rows
from cmapdask.connectivity.validation import QuerySet
from cmapdask.errors import InputError
from cmapdask.io.pending import deferrable
from cmapdask.io.store import open_store, write_member
from cmapdask.model.provenance import provenance_record
from cmapdask.where import parse, selection_record, selection_text

__all__ = ["introspect", "build_background"]


def _cells(ds, pos):
    c = _field(ds, "cell_id", "cell_iname")
    return c[pos] if c is not None else np.full(pos.size, "", dtype=object)


def introspect(
    store,
    *,
    where=None,
    space: Space = "bing",
    metric: Metric = "wtcs",
    n_top: int = 50,
    grouping: Grouping | Sequence[str] = "pert_type_cell",
    chunk_rows: int | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """All-by-all connectivity of the signatures selected by ``where``.

    Parameters
    ----------
    store : str
        Store with the index of ``space``.
    where : {"all", "touchstone"} or str, optional
        Signatures to use (see :func:`cmapdask.connectivity.query.select_signatures`).
    space : {"landmark", "bing", "all"}
        Feature space of the index.
    metric : {"wtcs", "cs"}
        Weighted or unweighted ES.
    n_top : int
        Genes per query set: the ``n_top`` highest and lowest ranked of each signature.
    grouping : {"pert_type_cell", "global"} or list of str
        NCS groups; the reference is the selected set itself.

    Returns
    -------
    xarray.Dataset
        Dims ``("sig", "sig_ref")`` (query, then signature; both the selected
        signatures): ``cs``, ``ncs`` and ``ps`` symmetric, and ``ps_bkg``, the τ before
        symmetrising, as the Broad's ``sig_introspect_tool`` writes them: each query's
        τ table is built from its unsymmetrised NCS against all the signatures (10,000
        grid points, no cell-line mask, :func:`~cmapdask.connectivity.tau.tau_rows`),
        looked up at those NCS, and ``ps = (ps_bkg + ps_bkgᵀ)/2``.

    Notes
    -----
    Reads the selected signatures' ranks from the index now (``2 * n * N`` bytes) to form
    the queries; the scoring is lazy and reads the index once per query batch. Results
    are ``n x n``: meant for reference sets (Touchstone: about 9,000 signatures), not for
    a whole release.
    """
    if isinstance(where, str) and where not in ("all", "touchstone"):
        where = parse(where)  # a bad filter fails before anything is read
    ds = open_store(store, storage_options=storage_options)
    handle = open_index(store, space=space, storage_options=storage_options)
    _check_index(handle, ds)
    pos = np.flatnonzero(select_signatures(ds, where or "all"))
    n_genes = handle.n_genes
    if pos.size < 2:
        raise InputError(
            f"introspect needs at least 2 signatures; {selection_text(where)!r} selects {pos.size}"
        )
    if not 0 < n_top <= n_genes // 2:
        raise InputError(f"n_top must be between 1 and {n_genes // 2}, not {n_top}")
    ranks, _ = handle.read_sigs(pos)
    ups = [np.flatnonzero(r <= n_top) for r in ranks]
    downs = [np.flatnonzero(r > n_genes - n_top) for r in ranks]
    ids = ds["sig"].values[pos]
    qs = QuerySet([str(s) for s in ids], ups, downs)
    raw = score_index(handle, qs, metric=metric, chunk_rows=chunk_rows or 2048, sig_pos=pos)
    sub = ds.isel(sig=pos)
    groups, codes = sig_groups(sub, grouping)
    ncs, _ = normalize(raw[0], codes, np.ones(pos.size, bool), groups)
    ps_bkg = tau_rows(ncs)  # before symmetrising NCS: runIntrospect's order
    cs = (raw[0] + raw[0].T) / 2
    ncs = (ncs + ncs.T) / 2
    ps = (ps_bkg + ps_bkg.T) / 2
    sig_coords = {k: v.values for k, v in sub.coords.items() if v.dims == ("sig",) and k != "sig"}
    out = xr.Dataset(
        {
            "cs": (("sig", "sig_ref"), cs.astype(np.float32)),
            "ncs": (("sig", "sig_ref"), ncs.astype(np.float32)),
            "ps": (("sig", "sig_ref"), ps.astype(np.float32)),
            "ps_bkg": (("sig", "sig_ref"), ps_bkg.astype(np.float32)),
        },
        coords={"sig": ids, "sig_ref": ids, **{k: ("sig", v) for k, v in sig_coords.items()}},
    )
    out.attrs["cmapdask"] = provenance_record(
        "introspect",
        kind="introspect",
        store=str(store),
        space=space,
        metric=metric,
        where=selection_text(where),
        n_top=n_top,
        n_sig=int(pos.size),
        tau="runIntrospect: tables per query from the unsymmetrised NCS, linspace(-4, 4, 10000)",
    )
    return out


@deferrable(
    "tau background member",
    lambda a: f"{str(a['store']).rstrip('/')}/{background_name(a['space'])}",
)
def build_background(
    store,
    *,
    reference="touchstone",
    space: Space = "bing",
    pcls: dict[str, list[str]] | None = None,
    metric: Metric = "wtcs",
    n_top: int = 50,
    grouping: Grouping | Sequence[str] = "pert_type_cell",
    storage_options: dict | None = None,
    progress: bool = False,
    compute: bool = True,
) -> str:
    """Build and store the τ lookup tables (member ``background/<space>``).

    Parameters
    ----------
    store : str
    reference : {"all", "touchstone"} or str
        The reference signatures (CLUE: Touchstone).
    space, metric, n_top, grouping
        As for :func:`introspect`.
    pcls : mapping, optional
        PCL name → pert_ids, for the PCL levels' tables.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        The member's URL.

    Notes
    -----
    Computes introspect over the reference (``n_ref x n_ref`` in memory, with
    ``n_ref`` the reference size) and one table of 10,001 float32 per reference signature
    and per summary row; stores the cell-masked reference NCS as well, for the exact τ.
    """
    if isinstance(reference, str) and reference not in ("all", "touchstone"):
        reference = parse(reference)  # recorded as data (to_data), never as code
    intro = introspect(
        store,
        where=reference,
        space=space,
        metric=metric,
        n_top=n_top,
        grouping=grouping,
        storage_options=storage_options,
    )
    ds = open_store(store, storage_options=storage_options)
    pos = np.flatnonzero(select_signatures(ds, reference))
    ncs = np.asarray(intro["ncs"].data.compute(), dtype=float)
    cells = np.asarray(_cells(ds, pos), dtype=object)
    pert = _field(ds, "pert_id")
    masked = ncs.copy()
    masked[cells[:, None] != cells[None, :]] = np.nan
    data = {
        "tables_sig": (
            ("sig_bg", "grid"),
            background_tables(ncs, query_cell=cells, ref_cell=cells),
        ),
        "ncs_ref": (("ref_query", "sig_bg"), masked.astype(np.float32)),
    }
    coords = {"sig_bg": intro["sig"].values, "ref_query": intro["sig"].values, "grid": GRID}
    if pert is not None:
        plan = SummaryPlan(pert[pos], cells, pcls)
        levels = plan.apply(ncs)
        for level in LEVELS:
            lc = plan.cells(level)
            t = background_tables(
                levels[level], query_cell=cells if lc is not None else None, ref_cell=lc
            )
            if t.size == 0:
                t = np.zeros((0, GRID.size), dtype=np.float32)
            data[f"tables_{level}"] = ((f"bg_{level}", "grid"), t)
            coords[f"bg_{level}"] = plan.labels(level)
    out = xr.Dataset(data, coords=coords)
    prov = {
        "kind": "tau_background",
        "space": space,
        "metric": metric,
        "reference": selection_record(reference),
        "n_reference": int(pos.size),
        "n_pcls": len(pcls or {}),
        "n_top": n_top,
        "grid": "linspace(-4, 4, 10001)",
        # the sets themselves (pert ids; small), so a rebuild can make the same tables
        "pcls": {str(k): [str(p) for p in v] for k, v in (pcls or {}).items()},
    }
    return write_member(
        store,
        background_name(space),
        out,
        family="background",
        storage_options=storage_options,
        provenance=prov,
        progress=progress,
    )
