"""Target identification: which gene's loss does a compound mimic?

Each compound signature's top / bottom ``n_top`` genes are a query (as in introspect,
ALGORITHMS.md §8), run through :func:`cmapdask.connectivity.query.query` against the
whole store (WTCS, NCS in ``pert_type:cell_id`` groups, τ from the store's background)
and summarised by :func:`cmapdask.connectivity.results.summarize` (§7). Nothing here
scores anything: it gathers the τ of the compound queries against the genetic
perturbagens of the chosen classes (by default loss of function: ``KD`` and ``CRISPR``)
and ranks the genes:

- per cell line ``k``: maxq of the ``pert_cell`` τ between the compound's queries from
  ``k`` and the gene's perturbagens in ``k`` (matched cell lines only);
- ``summary``: maxq of the ``pert_summary`` τ between all of the compound's queries and
  the gene's perturbagens (each summarised across cell lines).

Each class is pooled on its own and the gene keeps its highest class (column
``pert_class``): a compound resembles the knockdown *or* the knockout of its target.
With ``OE`` among the classes an agonist finds its target through the overexpression
(its target's loss has the opposite sign).

Rank 1 is the highest τ (the gene whose loss looks most like the compound). Where the
compounds name targets (compoundinfo's ``target``, ``|``-separated), :func:`target_recall`
gives each compound's AUROC of its targets among all ranked genes and their mean over
compounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from cmapdask._version import __version__
from cmapdask.connectivity.classes import LOSS_OF_FUNCTION, PERT_CLASSES, pert_class
from cmapdask.connectivity.es import Metric
from cmapdask.connectivity.index import Space, open_index
from cmapdask.connectivity.query import (
    _check_index,
    _field,
    background_name,
    query,
    select_signatures,
)
from cmapdask.connectivity.summaries import SummaryPlan, aggregate_maxq
from cmapdask.connectivity.tau import tau_binned
from cmapdask.errors import InputError, MetadataError, StoreError
from cmapdask.io.store import has_member, open_member, open_store

__all__ = ["targets", "target_recall", "TARGET_COLUMNS"]

SUMMARY = "summary"
TARGET_COLUMNS = (
    "pert_id",
    "cmap_name",
    "cell_id",
    "gene_symbol",
    "gene_id",
    "pert_class",
    "genetic_pert_ids",
    "tau",
    "rank",
    "n_genes",
    "is_target",
)


def _classes(classes) -> tuple[str, ...]:
    cls = (classes,) if isinstance(classes, str) else tuple(classes)
    known = set(PERT_CLASSES.values()) - {"CP"}
    bad = [c for c in cls if c not in known and c not in PERT_CLASSES]
    if not cls or bad:
        raise InputError(
            f"targets: classes must be genetic classes among {sorted(known)} (or their "
            f"pert_types), got {list(cls)!r}"
        )
    return tuple(PERT_CLASSES.get(c, c) for c in cls)


def _annotations(ds, pert, annotations) -> dict[str, set[str]]:
    if annotations is not None:
        if not isinstance(annotations, Mapping):
            raise InputError("targets: annotations must map pert_id to target gene symbols")
        return {
            str(k): {str(v)} if isinstance(v, str) else {str(x) for x in v}
            for k, v in annotations.items()
        }
    tgt = _field(ds, "target")
    out: dict[str, set[str]] = {}
    if tgt is None:
        return out
    for p, t in zip(pert.tolist(), tgt.tolist(), strict=True):
        if t and p not in out:
            out[p] = {x for x in t.split("|") if x}
    return out


def _rank_rows(df: pd.DataFrame) -> pd.DataFrame:
    df = df.sort_values(["pert_id", "cell_id", "tau", "gene_symbol"], ascending=[1, 1, 0, 1])
    df["rank"] = df.groupby(["pert_id", "cell_id"], sort=False).cumcount() + 1
    df.loc[df["tau"].isna(), "rank"] = np.nan  # unranked: no τ (no background row)
    df["rank"] = df["rank"].astype("Int64")
    df["n_genes"] = df.groupby(["pert_id", "cell_id"], sort=False)["tau"].transform("count")
    return df


def targets(
    store,
    *,
    compounds="touchstone",
    classes: str | Iterable[str] = LOSS_OF_FUNCTION,
    annotations: Mapping[str, Sequence[str] | str] | None = None,
    space: Space = "bing",
    metric: Metric = "wtcs",
    reference="touchstone",
    n_top: int = 50,
    top_k: int = 10,
    chunk_rows: int | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Rank, for each compound, the genes whose genetic perturbation it resembles.

    Parameters
    ----------
    store : str
        Store with the index and the τ background of ``space`` (``cmapdask index``,
        ``cmapdask background``); genetic perturbagens need to be in the background's
        reference (Touchstone holds knockdowns and overexpressions) to have τ.
    compounds : {"touchstone", "all"} or str
        The compound signatures used as queries: ``"touchstone"`` (``is_touchstone == 1``),
        ``"all"``, or a pandas expression over signature metadata; only ``trt_cp`` /
        ``trt_poscon`` signatures are taken from it.
    classes : str or iterable of str
        Genetic classes ranked (``KD``, ``CRISPR``, ``OE``, or pert_types such as
        ``trt_sh.cgs``). Default loss of function: ``("KD", "CRISPR")``.
    annotations : mapping, optional
        pert_id → target gene symbols; default the store's ``target`` field.
    space, metric, reference, chunk_rows
        As for :func:`cmapdask.connectivity.query.query` (``reference``: NCS reference).
    n_top : int
        Genes per query set (top and bottom of each compound signature).
    top_k : int
        For the recall summary: a compound is a hit when a target ranks within ``top_k``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TARGET_COLUMNS`: one row per compound (``pert_id``,
        ``cmap_name``), cell line (``cell_id``; ``"summary"`` across cell lines) and gene
        (``gene_symbol``, ``gene_id`` where the store's genes name it, the
        ``genetic_pert_ids`` behind it and the ``pert_class`` of the strongest), with
        ``tau``, ``rank`` (1 = strongest), ``n_genes`` ranked and ``is_target`` (an
        annotated target). Genes without τ there (no row in the background's reference)
        are left out of that compound's and cell line's ranking.
        ``attrs["cmapdask"]`` holds the parameters and :func:`target_recall`'s summary.

    Notes
    -----
    Reads the query signatures' ranks from the index (``2 * n_query * N`` bytes), then
    runs one query batch over the whole store (reads each gene row the queries touch
    once) and keeps ``n_query x n_genetic`` τ in memory; the table has about
    ``n_compounds x n_genes x (n_cells + 1)`` rows.
    """
    cls = _classes(classes)
    if not 1 <= top_k:
        raise InputError(f"targets: top_k must be at least 1, got {top_k}")
    ds = open_store(store, storage_options=storage_options)
    pert, ptype = _field(ds, "pert_id"), _field(ds, "pert_type")
    cell = _field(ds, "cell_id", "cell_iname")
    name = _field(ds, "cmap_name", "pert_iname")
    if pert is None or ptype is None or cell is None or name is None:
        raise MetadataError(
            f"{store}: target identification needs pert_id, pert_type, cell_id (or "
            "cell_iname) and cmap_name (or pert_iname) signature fields"
        )
    if not has_member(store, background_name(space), storage_options=storage_options):
        raise StoreError(
            f"{store}: no τ background for space {space!r}; build it with "
            f"`cmapdask background {store} --space {space}`"
        )
    pclass = pert_class(ptype)
    q_pos = np.flatnonzero(select_signatures(ds, compounds) & (pclass == "CP") & (pert != ""))
    if not q_pos.size:
        raise InputError(f"targets: {compounds!r} selects no compound (trt_cp) signature")
    g_pos = np.flatnonzero(np.isin(pclass, cls) & (name != ""))
    if not g_pos.size:
        raise InputError(f"{store}: no genetic perturbagen of class {'/'.join(cls)}")

    handle = open_index(store, space=space, storage_options=storage_options)
    _check_index(handle, ds)
    n_genes = handle.n_genes
    if not 0 < n_top <= n_genes // 2:
        raise InputError(f"targets: n_top must be between 1 and {n_genes // 2}, not {n_top}")
    ranks, _ = handle.read_sigs(q_pos)
    genes = np.asarray(handle.genes, dtype=object)
    qnames = [str(s) for s in ds["sig"].values[q_pos]]
    ups = {n: list(genes[r <= n_top]) for n, r in zip(qnames, ranks, strict=True)}
    downs = {n: list(genes[r > n_genes - n_top]) for n, r in zip(qnames, ranks, strict=True)}
    res = query(
        store,
        ups,
        downs,
        space=space,
        metric=metric,
        reference=reference,
        fdr="none",
        chunk_rows=chunk_rows,
        storage_options=storage_options,
    )
    ncs = np.asarray(res["ncs"].isel(sig=g_pos).values, dtype=float)
    plan = SummaryPlan(pert[g_pos], cell[g_pos])
    levels = plan.apply(ncs)
    bg = open_member(store, background_name(space), storage_options=storage_options)
    tau_pc = _level_tau(levels["pert_cell"], plan.labels("pert_cell"), bg, "pert_cell")
    tau_ps = _level_tau(levels["pert_summary"], plan.labels("pert_summary"), bg, "pert_summary")

    # the genetic rows of each summary level, and the gene each one perturbs
    sym_of = dict(zip(pert[g_pos].tolist(), name[g_pos].tolist(), strict=True))
    pc_pert, pc_cell = plan.pc_pert, plan.pc_cell
    ps_pert = np.asarray(plan.labels("pert_summary"), dtype=object)
    if np.isnan(tau_ps).all():
        raise StoreError(
            f"{store}: the genetic perturbagens have no τ: they are not in the background's "
            f"reference; rebuild it with `cmapdask background` over a reference that holds them"
        )
    q_pert, q_cell = pert[q_pos], cell[q_pos]
    first = dict(zip(pert[g_pos].tolist(), ptype[g_pos].tolist(), strict=True))
    ctype = np.array([first[p] for p in ps_pert.tolist()], dtype=object)
    cls_of = dict(zip(ps_pert.tolist(), pert_class(ctype).tolist(), strict=True))

    # labels: (compound, gene, class); maxq pools the values of one label
    cpd_u, cpd_i = np.unique(q_pert.astype(str), return_inverse=True)
    gene_u = np.unique(np.array([sym_of[p] for p in ps_pert], dtype=str))
    keys = (gene_u, np.array(cls, dtype=object))

    def code(perts):
        g = np.searchsorted(gene_u, np.array([sym_of[p] for p in perts], dtype=str))
        return g * len(cls) + np.array([cls.index(cls_of[p]) for p in perts], dtype=np.int64)

    n_lab = gene_u.size * len(cls)
    # summary level: every query of a compound x every perturbagen of a gene
    lab = cpd_i[:, None] * n_lab + code(ps_pert)[None, :]
    rows = [_pool(tau_ps, lab, cpd_u, keys, SUMMARY)]
    # per cell line: matched cell lines only
    pc_code = code(pc_pert)
    for k in np.unique(q_cell.astype(str)):
        qi, ri = np.flatnonzero(q_cell == k), np.flatnonzero(pc_cell == k)
        if qi.size and ri.size:
            lab = cpd_i[qi][:, None] * n_lab + pc_code[ri][None, :]
            rows.append(_pool(tau_pc[np.ix_(qi, ri)], lab, cpd_u, keys, k))
    df = pd.concat(rows, ignore_index=True)
    # a gene's connection: the class the compound resembles most (highest τ)
    df = df.sort_values(["tau", "pert_class"], ascending=[False, True], na_position="last")
    df = df.drop_duplicates(["pert_id", "cell_id", "gene_symbol"], keep="first")
    ps_gene = np.searchsorted(gene_u, np.array([sym_of[p] for p in ps_pert], dtype=str))

    perts_of = (
        pd.Series(ps_pert).groupby(np.asarray(gene_u)[ps_gene]).agg(lambda s: "|".join(sorted(s)))
    )
    df["genetic_pert_ids"] = df["gene_symbol"].map(perts_of)
    gid = {}
    if handle.symbols is not None:
        for g, s in zip(genes.tolist(), handle.symbols.tolist(), strict=True):
            gid.setdefault(str(s), str(g))
    df["gene_id"] = df["gene_symbol"].map(gid).astype(object)
    names = dict(zip(pert[q_pos].tolist(), name[q_pos].tolist(), strict=True))
    df["cmap_name"] = df["pert_id"].map(names)
    ann = _annotations(ds, pert, annotations)
    df["is_target"] = [
        s in ann.get(p, ()) for p, s in zip(df["pert_id"], df["gene_symbol"], strict=True)
    ]
    df = _rank_rows(df)[list(TARGET_COLUMNS)].reset_index(drop=True)
    _, recall = target_recall(df, top_k=top_k)
    df.attrs["cmapdask"] = {
        "kind": "targets",
        "package_version": __version__,
        "store": str(store),
        "space": space,
        "metric": metric,
        "reference": reference if isinstance(reference, str) else "mask",
        "compounds": compounds if isinstance(compounds, str) else "mask",
        "classes": list(cls),
        "n_top": n_top,
        "n_queries": int(q_pos.size),
        "annotations": "given" if annotations is not None else "store target field",
        "recall": recall,
    }
    return df


def _level_tau(ns: np.ndarray, labels, bg, level: str) -> np.ndarray:
    """τ of one summary level from the background's tables of that level (NaN for rows
    the reference lacks), as :func:`cmapdask.connectivity.results.summarize` gives it."""
    out = np.full(ns.shape, np.nan)
    if f"tables_{level}" not in bg:
        return out
    pos = pd.Index(bg[f"bg_{level}"].values.astype(str)).get_indexer(np.asarray(labels).astype(str))
    have = np.flatnonzero(pos >= 0)
    if have.size:
        tables = np.asarray(bg[f"tables_{level}"].data[pos[have]].compute())
        out[:, have] = tau_binned(ns[:, have], tables)
    return out


def _pool(tau, lab, cpd_u, keys, cell) -> pd.DataFrame:
    """maxq of the τ values sharing a (compound, gene, class) label."""
    gene_u, cls = keys
    tau = np.asarray(tau, dtype=float).reshape(-1)
    lab = lab.reshape(-1).astype(np.int64)
    ok = ~np.isnan(tau)
    labels, vals = aggregate_maxq(tau[ok][None, :], lab[ok])
    code = labels.astype(np.int64)
    n_lab = gene_u.size * cls.size
    return pd.DataFrame(
        {
            "pert_id": np.asarray(cpd_u, dtype=object)[code // n_lab],
            "cell_id": cell,
            "gene_symbol": np.asarray(gene_u, dtype=object)[(code % n_lab) // cls.size],
            "pert_class": cls[code % cls.size],
            "tau": vals[0],
        }
    )


def target_recall(table: pd.DataFrame, *, top_k: int = 10, cell_id: str = SUMMARY):
    """How well the annotated targets rank: per compound and over compounds.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`targets` (``pert_id``, ``cell_id``, ``gene_symbol``, ``tau``,
        ``rank``, ``is_target``), possibly with ``is_target`` recomputed.
    top_k : int
        A compound is a hit when one of its targets ranks within ``top_k``.
    cell_id : str
        Which rows: ``"summary"`` (default) or one cell line.

    Returns
    -------
    (pandas.DataFrame, dict)
        Per compound with at least one ranked target and one ranked other gene:
        ``pert_id``, ``n_targets``, ``best_rank``, ``auroc`` (P(τ of a target > τ of a
        non-target), ties half); and ``{"auroc": mean over compounds, "hit_rate":
        fraction of hits, "top_k", "n_compounds"}`` (NaN when no compound qualifies).
    """
    t = table[(table["cell_id"] == cell_id) & table["tau"].notna()]
    out = []
    for p, g in t.groupby("pert_id", sort=True):
        hit = g["is_target"].to_numpy(bool)
        if not hit.any() or hit.all():
            continue
        x = g["tau"].to_numpy(float)
        pos, neg = x[hit], x[~hit]
        auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
            pos.size * neg.size
        )
        out.append((p, int(hit.sum()), int(g["rank"].to_numpy()[hit].min()), float(auc)))
    per = pd.DataFrame(out, columns=["pert_id", "n_targets", "best_rank", "auroc"])
    summary = {
        "auroc": float(per["auroc"].mean()) if len(per) else float("nan"),
        "hit_rate": float((per["best_rank"] <= top_k).mean()) if len(per) else float("nan"),
        "top_k": int(top_k),
        "n_compounds": int(len(per)),
        "cell_id": cell_id,
    }
    return per, summary
