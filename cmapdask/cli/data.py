"""``cmapdask sigs|compounds|genes|cells|genetic-perts|moas|sql``: data access like cmapBQ.

Each prints a table on the terminal, or writes ``--out`` (``.tsv``, ``.parquet``; for
``sigs`` also ``.gctx``: the matrix of the chosen signatures), published atomically.
"""

from __future__ import annotations

import os
import sys
from typing import get_args

from cmapdask.cli.options import choice_list, json_object, quantity_list, zero_one_list
from cmapdask.errors import InputError
from cmapdask.model.types import Space

__all__ = ["register"]

# command -> (function, help, [(option, keyword, help)])
_FILTERS = {
    "sigs": (
        "sigs",
        "signatures matching filters (siginfo rows; --out .gctx writes their matrix)",
        [
            ("--sig-id", "sig_id", "signature ids"),
            ("--pert-id", "pert_id", "perturbagen ids"),
            ("--cmap-name", "cmap_name", "perturbagen names (pert_iname in older releases)"),
            ("--pert-type", "pert_type", "perturbagen types, e.g. trt_cp,trt_sh.cgs"),
            ("--cell", "cell_iname", "cell lines (cell_iname / cell_id)"),
            ("--dose", "pert_idose", "doses, any spelling: '10 uM', '10 µM'"),
            ("--time", "pert_itime", "times, e.g. '24 h'"),
            ("--build-name", "build_name", "release build names"),
            ("--touchstone", "is_touchstone", "1 for Touchstone signatures, 0 for the rest"),
            ("--moa", "moa", "signatures of compounds with these MoAs"),
            ("--target", "target", "signatures of compounds with these targets"),
        ],
    ),
    "compounds": (
        "compounds",
        "compounds matching filters (compoundinfo rows)",
        [
            ("--pert-id", "pert_id", "compound ids"),
            ("--cmap-name", "cmap_name", "compound names"),
            ("--moa", "moa", "mechanisms of action, e.g. 'HDAC inhibitor'"),
            ("--target", "target", "target genes"),
        ],
    ),
    "genes": (
        "genes",
        "genes matching filters (geneinfo rows)",
        [
            ("--gene-id", "gene_id", "Entrez ids"),
            ("--symbol", "gene_symbol", "gene symbols"),
            ("--space", "feature_space", "landmark, best inferred, inferred, bing or all"),
        ],
    ),
    "cells": (
        "cells",
        "cell lines (cellinfo rows, or the store's cell lines with counts)",
        [
            ("--cell", "cell_iname", "cell line names"),
            ("--lineage", "cell_lineage", "lineages"),
            ("--disease", "primary_disease", "primary diseases"),
        ],
    ),
    "genetic-perts": (
        "genetic_perts",
        "genetic perturbagens: shRNA, CRISPR, overexpression",
        [
            ("--pert-id", "pert_id", "perturbagen ids"),
            ("--gene", "cmap_name", "gene symbols"),
            ("--pert-type", "pert_type", "trt_sh.cgs, trt_xpr, trt_oe"),
        ],
    ),
}


# filter values checked as they are parsed (one line, exit 2): a typo matches nothing
_TYPES = {
    "is_touchstone": zero_one_list,
    "pert_idose": quantity_list,
    "pert_itime": quantity_list,
    "feature_space": choice_list("landmark", "best inferred", "inferred", "bing", "all"),
}


def _store_opts(p) -> None:
    p.add_argument("store", metavar="STORE", help="signature store URL")
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the store URL",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write .tsv or .parquet")


def register(sub) -> None:
    for command, (func, help_text, options) in _FILTERS.items():
        p = sub.add_parser(command, help=help_text, description=help_text)
        _store_opts(p)
        for flag, key, h in options:
            kind = _TYPES.get(key, str)
            p.add_argument(flag, dest=key, type=kind, default=None, metavar="V[,V...]", help=h)
        p.add_argument("--where", default=None, help='field expression, e.g. "tas > 0.3"')
        p.add_argument("--all-fields", action="store_true", help="every field, not the main ones")
        p.add_argument("--limit", type=_positive, default=None, help="at most N rows")
        if command == "sigs":
            p.add_argument(
                "--space",
                choices=get_args(Space),
                default=None,
                help="with --out .gctx: the genes of this feature space (default all)",
            )
        p.set_defaults(func=_run_filter, _function=func, _keys=[k for _, k, _ in options])

    p = sub.add_parser("moas", help="MoAs (or targets) with their number of compounds")
    _store_opts(p)
    p.add_argument(
        "--by", choices=["moa", "target"], default="moa", help="count by moa (default) or target"
    )
    p.set_defaults(func=_run_counts)

    p = sub.add_parser(
        "sql",
        help="SQL over the store's tables (DuckDB)",
        description="Answer one SELECT over siginfo, geneinfo, compoundinfo, cellinfo "
        "(and instinfo, geneticinfo when kept), e.g. "
        '"SELECT cmap_name, count(*) FROM siginfo GROUP BY 1".',
    )
    _store_opts(p)
    p.add_argument("query", metavar="SQL", help="one SELECT statement")
    p.set_defaults(func=_run_sql)

    from cmapdask.data.download import RELEASES

    p = sub.add_parser(
        "download",
        help="fetch a public release's files (LINCS 2020, GEO), resuming, and convert them",
        description="Download RELEASE's files into DEST (resuming partial files, checking "
        "sizes), optionally converting the Level 5 matrix into a store with its tables.",
    )
    p.add_argument(
        "release", metavar="RELEASE", choices=list(RELEASES), help=f"one of {', '.join(RELEASES)}"
    )
    p.add_argument(
        "dest", metavar="DEST", nargs="?", default=None, help="local folder for the files"
    )
    p.add_argument(
        "--files",
        nargs="+",
        metavar="PATTERN",
        default=None,
        help="file names, roles (level5, siginfo, ...) or wildcards "
        "(default: Level 5 matrices and tables)",
    )
    p.add_argument("--base-url", default=None, help="a mirror of the release (https:// or s3://)")
    p.add_argument(
        "--source-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the source",
    )
    p.add_argument(
        "--convert",
        default=None,
        metavar="STORE",
        help="convert the downloaded Level 5 matrix into this store",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for --convert's store",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list the catalog's files (or --files' choice) by level with sizes, and exit",
    )
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=_run_download)


def _positive(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _run_filter(args) -> int:
    import cmapdask.data as data

    kwargs = {k: getattr(args, k) for k in args._keys if getattr(args, k) is not None}
    df = getattr(data, args._function)(
        args.store,
        **kwargs,
        where=args.where,
        fields="all" if args.all_fields else "priority",
        limit=args.limit,
        storage_options=args.storage_options,
    )
    if args.out and args.out.endswith(".gctx"):
        if args._function != "sigs":
            raise InputError(f"{args.out}: only `cmapdask sigs` writes a matrix (.gctx)")
        if df.empty:
            raise InputError(f"{args.out}: no signature matches; nothing written")
        from cmapdask.io.gctx import write_gctx

        ds = data.matrix(
            args.store, sigs=df, space=args.space, storage_options=args.storage_options
        )
        write_gctx(ds, args.out)
        print(
            f"cmapdask: wrote {args.out}: {ds.sizes['sig']} signatures x {ds.sizes['gene']} genes",
            file=sys.stderr,
        )
        return 0
    return _emit(df, args.out)


def _run_counts(args) -> int:
    import cmapdask.data as data

    fn = data.moas if args.by == "moa" else data.targets
    return _emit(fn(args.store, storage_options=args.storage_options), args.out)


def _run_sql(args) -> int:
    from cmapdask.data import sql

    return _emit(sql(args.store, args.query, storage_options=args.storage_options), args.out)


def _emit(df, out) -> int:
    if out is None:
        import pandas as pd

        with pd.option_context(
            "display.max_rows", 200, "display.width", 200, "display.max_columns", 30
        ):
            try:
                print(df.to_string(index=False) if len(df) else "(no rows)", flush=True)
            except BrokenPipeError:  # `| head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if len(df) > 200 and sys.stdout.isatty():
            print(f"... {len(df)} rows", file=sys.stderr)
        return 0
    from cmapdask.io.atomic import publish_file

    ext = os.path.splitext(out)[1].lower()
    if ext not in (".tsv", ".txt", ".parquet"):
        raise InputError(f"{out}: write .tsv, .txt or .parquet (or .gctx for sigs)")
    with publish_file(out) as tmp:
        if ext == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep="\t", index=False, na_rep="-666")
    print(f"cmapdask: wrote {out}: {len(df)} rows", file=sys.stderr)
    return 0


def _run_download(args) -> int:
    from cmapdask.data.download import download, release_listing

    if args.list:
        print(release_listing(args.release, args.files))
        return 0
    if args.dest is None:
        raise InputError("download: DEST (a local folder) is needed, unless --list")
    paths = download(
        args.release,
        args.dest,
        files=args.files,
        base_url=args.base_url,
        storage_options=args.source_options,
        convert_to=args.convert,
        convert_storage_options=args.storage_options,
        quiet=args.quiet,
    )
    for path in paths.values():
        print(path)
    return 0
