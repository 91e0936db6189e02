"""Connectivity queries against a store: WTCS, NCS, τ and FDR as xarray objects.

The xarray layer: it reads metadata, validates queries and hands arrays to the engine
(:mod:`.engine`) and the score modules (:mod:`.ncs`, :mod:`.tau`, :mod:`.fdr`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.connectivity.engine import FIELDS, score_index
from cmapdask.connectivity.es import Metric, Tail
from cmapdask.connectivity.fdr import fdr_bh, fdr_null, nlog10, random_query_pvalues
from cmapdask.connectivity.index import IndexHandle, Space, open_index
from cmapdask.connectivity.ncs import Grouping, _normalize_block, fit_ncs, group_labels, group_stats
from cmapdask.connectivity.tau import tau_binned, tau_exact
from cmapdask.connectivity.validation import prepare_queries
from cmapdask.errors import InputError, MetadataError, StoreError
from cmapdask.io.store import has_member, open_member, open_store
from cmapdask.model.provenance import provenance_record
from cmapdask.where import SELECTION_WORDS, parse, selection_text

__all__ = [
    "query",
    "select_signatures",
    "scored_positions",
    "scored_set",
    "sig_groups",
    "normalize",
    "background_name",
]

TauMethod = Literal["binned", "exact", "none"]
FDRMethod = Literal["auto", "null", "random", "none"]
GeneSets = Mapping[str, Sequence[str]] | Sequence[str] | str | None


_CACHE: dict = {}
_CACHE_SIZE = 8  # stores and their NCS group labels


def _store_key(store, storage_options):
    """Identity of a store version: its URL and creation stamp (``expr`` is immutable)."""
    import json

    import zarr

    from cmapdask.io.store.access import zarr_options

    opts = zarr_options(str(store), storage_options)
    try:
        meta = dict(
            zarr.open_group(
                str(store), mode="r", storage_options=opts, use_consolidated=False
            ).attrs.get("cmapdask", {})
        )
    except Exception:  # let open_store raise its own clear error
        return None
    if not meta.get("created"):
        return None
    stamp = (meta["created"], meta.get("write_id"))
    return (str(store), stamp, json.dumps(storage_options, sort_keys=True, default=str))


def open_store_cached(store, *, storage_options: dict | None = None) -> xr.Dataset:
    """:func:`open_store`, remembered per store version for repeated queries.

    Loading a million signatures' metadata takes seconds; a store's ``expr`` and
    metadata never change after it is written, so warm queries reuse them.
    """
    key = _store_key(store, storage_options)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    ds = open_store(store, storage_options=storage_options)
    if key is not None:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        ds.attrs["_cache_key"] = key
        _CACHE[key] = ds
    return ds


def _groups_cached(ds, grouping):
    # labels are a Python loop over every signature: remember them with the store
    key = (ds.attrs.get("_cache_key"), grouping if isinstance(grouping, str) else tuple(grouping))
    if key[0] is None:
        return sig_groups(ds, grouping)
    if key not in _CACHE:
        _CACHE[key] = sig_groups(ds, grouping)
    return _CACHE[key]


def background_name(space: Space) -> str:
    """The member holding the τ backgrounds of a space."""
    return f"background/{space}"


def _field(ds: xr.Dataset, *names: str):
    for n in names:
        if n in ds.coords and ds[n].dims == ("sig",):
            return np.array(
                ["" if v is None else str(v) for v in ds[n].values.tolist()], dtype=object
            )
    return None


def select_signatures(ds: xr.Dataset, where) -> np.ndarray:
    """Boolean mask of signatures chosen by ``where``.

    Parameters
    ----------
    where : {"all", "touchstone"} or str or cmapdask.where.Expr or array of bool
        ``"all"``: every signature. ``"touchstone"``: ``is_touchstone == 1`` (else
        ``is_ncs_sig == 1``). Any other string is a filter of :mod:`cmapdask.where` over
        the signature metadata (``sig_id`` is the signature id), e.g.
        ``"pert_type == 'trt_cp' and cell_id in ('MCF7', 'PC3')"``; it is parsed, never
        evaluated as code.
    """
    from cmapdask.where import Expr, parse

    n = ds.sizes["sig"]
    if where is None or (isinstance(where, str) and where == "all"):
        return np.ones(n, dtype=bool)
    if not isinstance(where, (str, Expr)):
        mask = np.asarray(where, dtype=bool)
        if mask.shape != (n,):
            raise InputError(f"signature mask has shape {mask.shape}, expected ({n},)")
        return mask
    if isinstance(where, str) and where == "touchstone":
        for f in ("is_touchstone", "is_ncs_sig"):
            if f in ds.coords:
                return np.asarray(
                    pd.to_numeric(pd.Series(ds[f].values), errors="coerce").fillna(0).to_numpy()
                    == 1
                )
        raise MetadataError(f"{ds.attrs.get('store_url', 'store')}: no is_touchstone field")
    expr = parse(where) if isinstance(where, str) else where
    return expr.mask(ds, dim="sig")


def sig_groups(ds: xr.Dataset, grouping: Grouping | Sequence[str]):
    """``(group labels, codes per signature)`` for NCS."""
    if isinstance(grouping, str):
        pt = _field(ds, "pert_type")
        cell = _field(ds, "cell_id", "cell_iname")
        if grouping == "pert_type_cell" and (pt is None or cell is None):
            raise MetadataError(
                f"{ds.attrs.get('store_url', 'store')}: NCS groups need "
                "pert_type and cell_id (or cell_iname); group by all signatures with "
                "grouping='global' (command line: --grouping global) or by other fields "
                "(--grouping FIELD,FIELD)"
            )
        n = ds.sizes["sig"]
        labels = group_labels(
            pt if pt is not None else [""] * n,
            cell if cell is not None else [""] * n,
            grouping=grouping,
        )
    else:
        cols = []
        for f in grouping:
            v = _field(ds, f)
            if v is None:
                raise MetadataError(f"no signature field {f!r} to group NCS by")
            cols.append(v)
        labels = np.array([":".join(t) for t in zip(*cols, strict=False)], dtype=object)
    groups, codes = np.unique(labels.astype(str), return_inverse=True)
    return groups.astype(object), codes


def _ncs_block(w, codes2d, stats, *, groups):
    norm = fit_ncs(stats, groups)
    return _normalize_block(w, codes2d[0], norm.mu_pos, norm.mu_neg)


def normalize(wtcs: da.Array, codes, is_ref, groups) -> tuple[da.Array, da.Array]:
    """Lazy NCS and the ``(query, 4, group)`` reference statistics behind it."""
    wtcs = wtcs.rechunk({0: -1})
    stats = group_stats(wtcs, codes, is_ref, len(groups))
    c = da.from_array(np.asarray(codes)[None, :], chunks=(1, wtcs.chunks[1]))
    ncs = da.blockwise(
        partial(_ncs_block, groups=groups),
        "qs",
        wtcs,
        "qs",
        c,
        "os",
        stats.rechunk(-1),
        "qkg",
        concatenate=True,
        dtype=np.float64,
    )
    return ncs, stats


def _as_sets(obj, what) -> dict | None:
    from cmapdask.io.gmt import read_gene_sets

    if obj is None:
        return None
    if isinstance(obj, str):
        return read_gene_sets(obj)
    if isinstance(obj, Mapping):
        return {str(k): list(v) for k, v in obj.items()}
    return {"query": [str(g) for g in obj]}


def _pair(up, down) -> dict:
    from cmapdask.io.gmt import pair_up_down

    if up is not None and down is not None:
        return pair_up_down(up, down)
    if up is not None:
        names = list(up)
        if any(n.upper().endswith("_UP") for n in names) and any(
            n.upper().endswith("_DN") for n in names
        ):
            return pair_up_down(up)
        return {k.removesuffix("_UP"): (v, None) for k, v in up.items()}
    if down is not None:
        return {k.removesuffix("_DN"): (None, v) for k, v in down.items()}
    raise InputError("a query needs an up set, a down set, or both")


def _filter(sel, what: str):
    """A selection word, mask or Expr as given; text parsed now, so that a bad filter is
    one line naming the option."""
    if not isinstance(sel, str) or sel in SELECTION_WORDS:
        return sel
    try:
        return parse(sel)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None


def scored_positions(ds: xr.Dataset, scored, store) -> np.ndarray | None:
    """Ascending positions of the scored signatures, or None when all are scored.

    Raises ``InputError`` (one line) when the selection is empty.
    """
    if scored is None or (isinstance(scored, str) and scored == "all"):
        return None
    keep = select_signatures(ds, scored)
    if not keep.any():
        raise InputError(f"scored set {selection_text(scored)!r} selects no signature of {store}")
    return None if keep.all() else np.flatnonzero(keep)


def scored_set(store, scored="all", *, storage_options: dict | None = None) -> int:
    """How many signatures ``scored`` selects in ``store`` (metadata only; cached).

    Raises ``InputError`` (one line) for a bad filter or an empty selection: what a
    query with ``scored=`` would refuse, checked before a job is queued.
    """
    ds = open_store_cached(store, storage_options=storage_options)
    pos = scored_positions(ds, _filter(scored, "scored"), store)
    return ds.sizes["sig"] if pos is None else int(pos.size)


def _tau_blockwise(ncs, ds, pos, space, store_url, method, storage_options):
    name = background_name(space)
    if method == "none":
        return None, "not computed"
    if not has_member(store_url, name, storage_options=storage_options):
        warnings.warn(
            f"{store_url}: no τ background for space {space!r}; τ is NaN. Build "
            f"it with `cmapdask background {store_url} --space {space}`",
            stacklevel=3,
        )
        return da.full(ncs.shape, np.nan, chunks=ncs.chunks), "no background"
    bg = open_member(store_url, name, storage_options=storage_options)
    at = pd.Index(ds["sig"].values).get_indexer(bg["sig_bg"].values)
    if (at < 0).any():
        raise StoreError(f"{store_url}: the τ background names signatures not in the store")
    if pos is not None:  # the background's columns among the scored signatures
        col = np.full(ds.sizes["sig"], -1, dtype=np.int64)
        col[pos] = np.arange(pos.size)
        at = col[at]
    have = np.flatnonzero(at >= 0)
    out = da.full(ncs.shape, np.nan, chunks=ncs.chunks)
    if not have.size:
        return out, f"{method} background from {name}"
    sub = ncs[:, at[have]]
    if method == "binned":
        tau_sub = tau_binned(sub, bg["tables_sig"].data[have])
    else:
        tau_sub = tau_exact(sub, bg["ncs_ref"].data[:, have])
    out[:, at[have]] = tau_sub
    return out, f"{method} background from {name}"


def _fdr_rows(x, null):
    return np.stack([fdr_null(row, null) for row in x])


def query(
    store,
    up: GeneSets = None,
    down: GeneSets = None,
    *,
    space: Space = "bing",
    metric: Metric = "wtcs",
    tail: Tail = "both",
    reference="all",
    scored="all",
    grouping: Grouping | Sequence[str] = "pert_type_cell",
    tau: TauMethod = "binned",
    fdr: FDRMethod = "auto",
    n_random: int = 100,
    seed: int = 0,
    chunk_rows: int | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Query a store with up/down gene sets, CMap style.

    Parameters
    ----------
    store : str
        Store URL; it must have the index of ``space`` (``cmapdask index``).
    up, down : mapping, list of genes, or path
        Gene sets: ``{name: genes}`` (names may end in ``_UP``/``_DN``), a list of genes
        (one query named ``"query"``), or a GMT/GRP path. Genes are ids of the space or,
        failing that, gene symbols. Either may be omitted for a one-tailed query.
    space : {"landmark", "bing", "all"}
        Feature space of the index (CLUE uses ``bing``).
    metric : {"wtcs", "cs"}
        Weighted KS (CMap's WTCS, default) or unweighted KS.
    tail : {"both", "up", "down"}
        Two-tailed WTCS, or the up (ES_up) or the down (−ES_down) set alone.
    reference : {"all", "touchstone"} or str
        NCS reference signatures: all, Touchstone (``is_touchstone == 1``), or a filter
        of :mod:`cmapdask.where` over signature metadata; only those in the scored set
        count.
    scored : {"all", "touchstone"} or str
        The signatures scored (CLUE scores Touchstone): all, Touchstone, or a filter as
        for ``reference``. The result holds only them, exactly as a query of a store
        holding only them: NCS groups are the scored set's (``pert_type:cell_id``), FDR's
        null signatures those among it; τ is read from the store's background (built
        over the reference compendium, as CLUE's), for the scored signatures in it.
    grouping : {"pert_type_cell", "global"} or list of str
        NCS groups: CMap's ``pert_type:cell_id``, one global group, or other fields.
    tau : {"binned", "exact", "none"}
        CLUE's binned τ from the store's background (default), the paper's exact formula
        against the stored reference NCS, or no τ.
    fdr : {"auto", "null", "random", "none"}
        ``"null"``: against ``is_null_sig`` rows. ``"random"``: p-values from
        ``n_random`` size-matched random queries, then Benjamini-Hochberg. ``"auto"``:
        ``"null"`` where null signatures exist, else none (random queries cost
        ``n_random`` extra queries, so they are asked for explicitly).
    n_random, seed : int
        Random queries per distinct set-size pair, and their seed.
    chunk_rows : int, optional
        Signatures per task.

    Returns
    -------
    xarray.Dataset
        Dims ``("query", "sig")``: ``cs`` (WTCS or CS), ``cs_up``, ``cs_dn``, ``leadf_up``,
        ``leadf_dn``, ``ncs``, ``ps`` (τ), ``fdr_q_nlog10``; signature metadata as
        coordinates; ``attrs["cmapdask"]`` holds parameters and the dropped-gene report.
        Dask-backed: nothing is computed until asked.

    Notes
    -----
    Reads the store's metadata and, per query batch, only the index rows of the batch's
    genes (``6 * n_union_genes * n_sig`` bytes; with ``scored``, of the scored
    signatures only). Holds per task one block of those rows
    and its ``query x block`` results; NCS needs one reduction over all signatures before
    normalising, and FDR one pass per query over all of its scores (``8 * n_sig`` bytes
    per query).
    """
    for name, value, allowed in (
        ("metric", metric, ("wtcs", "cs")),
        ("tail", tail, ("both", "up", "down")),
        ("tau", tau, ("binned", "exact", "none")),
        ("fdr", fdr, ("auto", "null", "random", "none")),
    ):
        if value not in allowed:
            raise InputError(f"{name} must be one of {allowed}, not {value!r}")
    # a bad filter fails before anything is read
    reference, scored = _filter(reference, "reference"), _filter(scored, "scored")
    full = open_store_cached(store, storage_options=storage_options)
    handle = open_index(store, space=space, storage_options=storage_options)
    _check_index(handle, full)
    pos = scored_positions(full, scored, store)
    ds = full if pos is None else full.isel(sig=pos)
    pairs = _pair(_as_sets(up, "up"), _as_sets(down, "down"))
    qs = prepare_queries(pairs, handle.genes, gene_symbols=handle.symbols, space=space)
    score = partial(
        score_index, handle, metric=metric, tail=tail, chunk_rows=chunk_rows, sig_pos=pos
    )
    raw = score(qs)
    groups, codes = _groups_cached(full, grouping)
    if pos is not None:  # the scored set's own groups, as a store of only them has
        groups, codes = np.unique(groups[codes[pos]].astype(str), return_inverse=True)
        groups = groups.astype(object)
    is_ref = select_signatures(full, reference)
    is_ref = is_ref if pos is None else is_ref[pos]
    if not is_ref.any():
        raise InputError(
            f"reference {selection_text(reference)!r} selects no signature"
            + ("" if pos is None else f" of the scored set {selection_text(scored)!r}")
        )
    ncs, _ = normalize(raw[0], codes, is_ref, groups)
    ps, tau_note = _tau_blockwise(ncs, full, pos, space, store, tau, storage_options)
    fdr_used, fdr_q = _fdr(fdr, ncs, ds, handle, qs, score, codes, is_ref, groups, n_random, seed)
    dims = ("query", "sig")
    data = {f: (dims, raw[i]) for i, f in enumerate(FIELDS)}
    data["ncs"] = (dims, ncs.astype(np.float32))
    if ps is not None:
        data["ps"] = (dims, ps.astype(np.float32))
    if fdr_q is not None:
        data["fdr_q_nlog10"] = (dims, fdr_q.astype(np.float32))
    sig_coords = {k: c for k, c in ds.coords.items() if c.dims == ("sig",)}
    out = xr.Dataset(data, coords={"query": np.array(qs.names, dtype=object), **sig_coords})
    out.attrs["cmapdask"] = provenance_record(
        "query",
        kind="query_result",
        store=str(store),
        space=space,
        n_genes_space=handle.n_genes,
        metric=metric,
        tail=tail,
        reference=selection_text(reference),
        n_reference=int(is_ref.sum()),
        scored=selection_text(scored),
        n_scored=int(ds.sizes["sig"]),
        grouping=grouping if isinstance(grouping, str) else list(grouping),
        ncs_fallback="median of groups with the same pert_type, else cell_id, else all",
        tau=tau_note,
        fdr=fdr_used,
        genes=qs.report,
        # the sets as submitted (before mapping to the space): the result folder's
        # matrices/query/up.gmt and dn.gmt
        sets={
            str(q): {
                "up": None if u is None else [str(g) for g in u],
                "down": None if d is None else [str(g) for g in d],
            }
            for q, (u, d) in pairs.items()
        },
    )
    return out


def _check_index(handle: IndexHandle, ds: xr.Dataset) -> None:
    sig = ds["sig"].values
    p = handle.provenance
    if handle.n_sig != sig.size or (
        sig.size and (p.get("sig_first") != str(sig[0]) or p.get("sig_last") != str(sig[-1]))
    ):
        raise StoreError(
            f"{handle.store_url}: the {handle.space} index does not match the "
            f"store's signatures; rebuild it with `cmapdask index`"
        )


def _fdr(method, ncs, ds, handle, qs, score, codes, is_ref, groups, n_random, seed):
    null = select_signatures(ds, "is_null_sig == 1") if "is_null_sig" in ds.coords else None
    has_null = null is not None and null.any()
    if method == "auto":
        method = "null" if has_null else "none"
    if method == "none":
        return "none", None
    if method == "null":
        if not has_null:
            raise InputError("fdr='null' needs signatures flagged is_null_sig == 1")
        rows = ncs.rechunk({0: 1, 1: -1})
        q = rows.map_blocks(_fdr_rows, null, dtype=float)
        return "null signatures (is_null_sig)", nlog10(q)
    # random size-matched queries, one batch per distinct (n_up, n_down)
    rng = np.random.default_rng(seed)
    sizes = sorted({(u.size, d.size) for u, d in zip(qs.up, qs.down, strict=False)})
    rand = {}
    for nu, nd in sizes:
        for k in range(n_random):
            pick = rng.choice(handle.n_genes, size=nu + nd, replace=False)
            rand[f"rand_{nu}_{nd}_{k}"] = (
                [str(handle.genes[i]) for i in pick[:nu]] or None,
                [str(handle.genes[i]) for i in pick[nu:]] or None,
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rqs = prepare_queries(rand, handle.genes)
    rraw = score(rqs)
    rncs, _ = normalize(rraw[0], codes, is_ref, groups)
    which = [sizes.index((u.size, d.size)) for u, d in zip(qs.up, qs.down, strict=False)]
    q = da.blockwise(
        partial(_random_q_block, which=which, n_random=n_random),
        "qs",
        ncs.rechunk({0: -1}),
        "qs",
        rncs.rechunk({0: -1}),
        "rs",
        concatenate=True,
        dtype=float,
    )
    q = q.rechunk({0: 1, 1: -1}).map_blocks(lambda p: np.stack([fdr_bh(r) for r in p]), dtype=float)
    return f"random queries (n={n_random}, seed={seed}) + Benjamini-Hochberg", nlog10(q)


def _random_q_block(x, r, *, which, n_random):
    return np.stack(
        [
            random_query_pvalues(x[i], r[k * n_random : (k + 1) * n_random])
            for i, k in enumerate(which)
        ]
    )
