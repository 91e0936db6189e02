"""``cmapdask index | query | introspect | background``: connectivity on a store."""

from __future__ import annotations

import warnings
from typing import get_args

from cmapdask.cli.options import json_object, positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, progress, say
from cmapdask.model.types import ConnectivityMetric, Space

__all__ = ["register"]

FILTER_HELP = "a filter such as \"cell_id in ('MCF7', 'PC3')\" (docs/errors.md)"

_SPACES = get_args(Space)


def _common(p, *, space_default="bing"):
    p.add_argument("store", metavar="STORE", help="signature store URL")
    p.add_argument(
        "--space",
        choices=_SPACES,
        default=space_default,
        help=f"feature space: landmark, bing or all (default {space_default})",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the store URL",
    )
    add_cluster_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index",
        help="build the query index of a store (needed by query/introspect)",
        description="Rank every signature within a feature space and store ranks and "
        "scores gene-major as the member index/<space>, so a query reads only its own "
        "genes' rows.",
    )
    _common(p)
    p.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=None,
        help="signatures per index block (default: about 256 MiB per block)",
    )
    p.set_defaults(func=run_index)
    _register_de_sets(subparsers)

    p = subparsers.add_parser(
        "query",
        help="connectivity query: WTCS, NCS, tau, FDR and summaries (CLUE folder)",
        description="Score up/down gene sets against every signature of STORE and write "
        "CLUE's result folder: matrices/query/*.gctx, matrices/gutc/*.gctx, per-query "
        "ranked tables (Parquet and TSV) and a report of dropped genes.",
    )
    _common(p)
    p.add_argument(
        "--up",
        required=False,
        metavar="GMT|GRP",
        help="up sets (GMT, GRP, or a GMT holding both X_UP and X_DN sets)",
    )
    p.add_argument("--down", default=None, metavar="GMT|GRP", help="down sets")
    p.add_argument(
        "--genes-up",
        default=None,
        metavar="G1,G2,...",
        help="one query's up genes (ids or symbols), comma separated",
    )
    p.add_argument(
        "--genes-down",
        default=None,
        metavar="G1,G2,...",
        help="one query's down genes, comma separated",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="result folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it is a result folder cmapdask wrote (never other files)",
    )
    p.add_argument(
        "--metric",
        choices=get_args(ConnectivityMetric),
        default="wtcs",
        help="weighted (wtcs, default) or unweighted (cs) enrichment",
    )
    p.add_argument(
        "--tail",
        choices=["both", "up", "down"],
        default="both",
        help="both: two-tailed WTCS (default); up: ES of the up set alone; down: -ES of the "
        "down set alone",
    )
    p.add_argument(
        "--reference",
        default="all",
        help="NCS reference: all, touchstone, or " + FILTER_HELP + "; only signatures "
        "of the scored set count",
    )
    p.add_argument(
        "--scored",
        default="all",
        help="signatures scored: all (default), touchstone (as CLUE), or "
        + FILTER_HELP
        + "; the result is what a store of only these would give",
    )
    p.add_argument(
        "--grouping",
        default="pert_type_cell",
        metavar="pert_type_cell|global|FIELD,...",
        help="NCS groups: pert_type and cell line (CMap's, default), global (one group: "
        "for stores without pert_type/cell_id), or signature fields, comma separated",
    )
    p.add_argument(
        "--tau",
        choices=["binned", "exact", "none"],
        default="binned",
        help="binned: CLUE's tau from the store's background (default; cmapdask background); "
        "exact: the paper's formula against the stored reference NCS; none: no tau",
    )
    p.add_argument(
        "--fdr",
        choices=["auto", "null", "random", "none"],
        default="auto",
        help="null: against the null signatures (is_null_sig); random: --n-random "
        "size-matched random queries; auto: null where there are null signatures, else none",
    )
    p.add_argument(
        "--n-random", type=positive_int, default=100, help="random queries for --fdr random"
    )
    p.add_argument("--pcl", default=None, metavar="GMT", help="PCL definitions (pert_id sets)")
    p.set_defaults(func=run_query)

    p = subparsers.add_parser(
        "introspect",
        help="all-by-all connectivity within a set of signatures",
        description="Top/bottom-50 gene sets of every selected signature against the same "
        "set, as the Broad's sig_introspect_tool computes it; writes the symmetric cs, ncs "
        "and ps matrices and ps_bkg (tau before symmetrising) as GCTx.",
    )
    _common(p)
    p.add_argument("--out", required=True, metavar="DIR", help="result folder (cs, ncs, ps GCTx)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it is a result folder cmapdask wrote (never other files)",
    )
    p.add_argument(
        "--where",
        default="all",
        help="all, touchstone, or " + FILTER_HELP,
    )
    p.add_argument("--n-top", type=positive_int, default=50, help="genes per set (default 50)")
    p.set_defaults(func=run_introspect)

    p = subparsers.add_parser(
        "background",
        help="build the tau lookup tables (member background/<space>)",
        description="Introspect over the reference signatures and store the tau lookup "
        "table of every reference signature and summary row.",
    )
    _common(p)
    p.add_argument(
        "--reference",
        default="touchstone",
        help="touchstone (default), all, or " + FILTER_HELP,
    )
    p.add_argument("--pcl", default=None, metavar="GMT", help="PCL definitions")
    p.add_argument(
        "--n-top", type=positive_int, default=50, help="genes per introspect set (default 50)"
    )
    p.set_defaults(func=run_background)


def _register_de_sets(subparsers) -> None:
    p = subparsers.add_parser(
        "de-sets",
        help="up/down query gene sets (GMT) from a differential-expression table",
        description="Map a ranked table's genes (symbols in any case, or Entrez ids) to "
        "STORE's gene ids, keep those of the feature space, and write the N highest and N "
        "lowest scores as NAME_UP and NAME_DN (CLUE's 10-150 genes per set).",
    )
    p.add_argument("table", metavar="TABLE", help="TSV or CSV (.csv), one row per gene")
    p.add_argument("store", metavar="STORE", help="the store to query (its genes and symbols)")
    p.add_argument(
        "--space", choices=_SPACES, default="bing", help="keep genes of this space (default bing)"
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the store URL",
    )
    p.add_argument("--out-up", required=True, metavar="GMT", help="the up set's GMT file")
    p.add_argument("--out-down", required=True, metavar="GMT", help="the down set's GMT file")
    p.add_argument("--name", default=None, help="set name prefix (default the table's stem)")
    p.add_argument(
        "--gene-column", default=None, help="gene symbols or Entrez ids (default: first column)"
    )
    p.add_argument(
        "--score-column",
        default="log2FoldChange",
        help="ranking score, e.g. DESeq2's log2FoldChange (default) or stat",
    )
    p.add_argument(
        "--n", type=positive_int, default=150, help="genes per set, 10-150 (default 150)"
    )
    p.add_argument(
        "--n-down", type=positive_int, default=None, help="genes in the down set (default --n)"
    )
    p.add_argument(
        "--up-threshold", type=float, default=0.0, help="up genes score above this (default 0)"
    )
    p.add_argument(
        "--down-threshold",
        type=float,
        default=0.0,
        help="down genes score below minus this (default 0)",
    )
    p.set_defaults(func=run_de_sets)


def run_de_sets(args) -> int:
    from cmapdask.connectivity.desets import de_gene_sets
    from cmapdask.io.gmt import write_gmt

    sets = de_gene_sets(
        args.table,
        args.store,
        name=args.name,
        gene_column=args.gene_column,
        score_column=args.score_column,
        n=args.n,
        n_down=args.n_down,
        up_threshold=args.up_threshold,
        down_threshold=args.down_threshold,
        space=args.space,
        storage_options=args.storage_options,
    )
    (up, up_genes), (dn, dn_genes) = sets.items()
    write_gmt({up: up_genes}, args.out_up)
    write_gmt({dn: dn_genes}, args.out_down)
    say(
        args,
        f"cmapdask: wrote {args.out_up} ({len(up_genes)} genes), "
        f"{args.out_down} ({len(dn_genes)} genes)",
    )
    return 0


def run_index(args) -> int:
    from cmapdask.connectivity.index import build_index

    with dask_client(args) as client, progress(args, client):
        url = build_index(
            args.store,
            space=args.space,
            chunk_rows=args.chunk_rows,
            storage_options=args.storage_options,
        )
    say(args, f"cmapdask: wrote {url}")
    return 0


def _split(text):
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def _grouping(text: str):
    text = text.strip()
    if text in ("pert_type_cell", "global"):
        return text
    fields = _split(text)
    if not fields:
        from cmapdask.errors import InputError

        raise InputError("--grouping needs pert_type_cell, global or signature field names")
    return fields


def run_query(args) -> int:
    from cmapdask.connectivity.job import plan_query_job
    from cmapdask.connectivity.query import _as_sets, _pair
    from cmapdask.connectivity.results import result_folders
    from cmapdask.errors import InputError
    from cmapdask.io.atomic import check_destination
    from cmapdask.io.gmt import read_gene_sets

    check_destination(args.out, overwrite=args.overwrite)  # refused before any work
    up, down = args.up, args.down
    if args.genes_up or args.genes_down:
        if up or down:
            raise InputError("give gene files (--up/--down) or gene lists, not both")
        up, down = _split(args.genes_up), _split(args.genes_down)
    if up is None and down is None:
        raise InputError("a query needs --up and/or --down (or --genes-up/--genes-down)")
    pcls = read_gene_sets(args.pcl) if args.pcl else None
    with warnings.catch_warnings(record=True) as read:
        warnings.simplefilter("always")
        up, down = _as_sets(up, "up"), _as_sets(down, "down")
    # query ids must make distinct result folders: refused before anything is computed
    result_folders(_pair(up, down))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = plan_query_job(
            args.store,
            up,
            down,
            pcls=pcls,
            notes=[f"warning: {w.message}" for w in read],
            space=args.space,
            metric=args.metric,
            tail=args.tail,
            reference=args.reference,
            scored=args.scored,
            grouping=_grouping(args.grouping),
            tau=args.tau,
            fdr=args.fdr,
            n_random=args.n_random,
            storage_options=args.storage_options,
        )
    for w in [*read, *caught]:
        say(args, f"cmapdask: warning: {w.message}")
    with dask_client(args) as client, progress(args, client):
        job.compute().write(args.out, overwrite=args.overwrite)
    for row in job.result.attrs["cmapdask"]["genes"]:
        say(
            args,
            "cmapdask: query {query}: {n_up} up, {n_down} down genes used; "
            "{n_up_dropped} up and {n_down_dropped} down dropped".format(**row),
        )
    say(args, f"cmapdask: wrote {args.out}")
    return 0


def run_introspect(args) -> int:
    import os

    from cmapdask.connectivity.introspect import introspect
    from cmapdask.connectivity.results import _as_gctx
    from cmapdask.io.atomic import check_destination, publish_dir
    from cmapdask.io.gctx import write_gctx

    check_destination(args.out, overwrite=args.overwrite)  # refused before any work
    res = introspect(
        args.store,
        where=args.where,
        space=args.space,
        n_top=args.n_top,
        storage_options=args.storage_options,
    )
    with dask_client(args) as client, progress(args, client):
        with publish_dir(args.out, overwrite=args.overwrite, mark="introspect result") as tmp:
            for v in ("cs", "ncs", "ps", "ps_bkg"):
                m = res[v].rename(sig="query").rename(sig_ref="sig")
                write_gctx(_as_gctx(m, "sig"), os.path.join(tmp, f"{v}.gctx"))
    say(args, f"cmapdask: wrote {args.out}")
    return 0


def run_background(args) -> int:
    from cmapdask.connectivity.introspect import build_background
    from cmapdask.io.gmt import read_gene_sets

    pcls = read_gene_sets(args.pcl) if args.pcl else None
    with dask_client(args) as client, progress(args, client):
        url = build_background(
            args.store,
            reference=args.reference,
            space=args.space,
            pcls=pcls,
            n_top=args.n_top,
            storage_options=args.storage_options,
        )
    say(args, f"cmapdask: wrote {url}")
    return 0
