"""``cmapdask similarity``: top-k neighbours, full matrices or perturbagen similarity of a store."""

from __future__ import annotations

import time
from typing import get_args

from cmapdask.cli.options import json_object, positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.errors import InputError, MetadataError
from cmapdask.model.types import SimilarityMetric, Space

__all__ = ["register", "run_similarity"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "similarity",
        help="all-by-all signature similarity: exact top-k neighbours or full matrices",
        description="Similarity of every signature of STORE with every other (or with "
        "--ref, or a --query-ids slice against the rest). Default output: the k most "
        "similar and k most opposite neighbours, written as the store member "
        "similarity/<metric>_<space> (or to --out). --full writes the whole matrix "
        "(sets up to tens of thousands); --pert writes perturbagen x perturbagen maxq "
        "summaries per cell line and across cell lines.",
    )
    p.add_argument("store", metavar="STORE", help="signature store URL")
    p.add_argument(
        "--metric",
        choices=get_args(SimilarityMetric),
        default="pearson",
        help="similarity metric (default pearson)",
    )
    p.add_argument("--k", type=positive_int, default=100, help="neighbours per tail (default 100)")
    p.add_argument(
        "--space",
        choices=get_args(Space),
        default="landmark",
        help="genes compared: 978 landmarks, BING or all (default landmark)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="URL",
        help="write to this Zarr URL instead of a member of STORE",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a Zarr result cmapdask wrote (never other files)",
    )
    p.add_argument(
        "--member", default=None, help="member name (default similarity/<metric>_<space>)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="write the full similarity matrix")
    mode.add_argument("--pert", action="store_true", help="perturbagen-level similarity (maxq)")
    p.add_argument("--gctx", default=None, metavar="PATH", help="with --full: also write a GCTx")
    q = p.add_mutually_exclusive_group()
    q.add_argument(
        "--ref",
        default=None,
        metavar="STORE2",
        help="queries-vs-reference: neighbours of STORE's signatures among STORE2's",
    )
    q.add_argument(
        "--query-ids",
        default=None,
        metavar="GRP",
        help="file of signature ids: these against the rest of STORE",
    )
    p.add_argument(
        "--block-size",
        type=positive_int,
        default=None,
        help="signatures per block (default: dask config cmapdask.similarity.block_rows, 4096)",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the store URLs",
    )
    add_cluster_args(p)
    p.set_defaults(func=run_similarity)


def _inputs(args):
    import dask

    from cmapdask.io.store import open_store

    ds = open_store(args.store, storage_options=args.storage_options)
    ref = None
    if args.ref:
        ref = open_store(args.ref, storage_options=args.storage_options)
    elif args.query_ids:
        from cmapdask.io.gmt import read_grp

        ids = read_grp(args.query_ids)
        known = ds.indexes["sig"]
        missing = [i for i in ids if i not in known]
        if missing:
            raise MetadataError(
                f"{args.query_ids}: {len(missing)} id(s) not in {args.store}, "
                f"e.g. {str(missing[0])!r}"
            )
        ref = ds.drop_sel(sig=ids)
        ds = ds.sel(sig=ids)
    block = args.block_size or dask.config.get("cmapdask.similarity.block_rows", 4096)
    return ds, ref, block


def run_similarity(args) -> int:
    from cmapdask.similarity import (
        pert_similarity,
        similarity,
        similarity_matrix,
        write_similarity,
    )

    if args.gctx and not args.full:
        raise InputError("--gctx needs --full")
    if args.pert and (args.ref or args.query_ids):
        raise InputError("--pert works on one store; drop --ref/--query-ids")
    if args.out:
        from cmapdask.io.atomic import check_destination

        check_destination(args.out, storage_options=args.storage_options, overwrite=args.overwrite)
    t0 = time.perf_counter()
    ds, ref, block = _inputs(args)
    if args.full:
        result = similarity_matrix(ds, ref, metric=args.metric, space=args.space, block_size=block)
    elif args.pert:
        result = pert_similarity(ds, metric=args.metric, space=args.space)
    else:
        result = similarity(
            ds, ref, metric=args.metric, k=args.k, space=args.space, block_size=block
        )
    store = None if args.out else args.store
    with dask_client(args):
        dest = write_similarity(
            result,
            store,
            out=args.out,
            name=args.member,
            gctx=args.gctx,
            storage_options=args.storage_options,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    say(
        args,
        f"cmapdask: wrote {dest} ({ds.sizes['sig']} signatures, {args.metric}, "
        f"{args.space}) in {time.perf_counter() - t0:.1f} s",
    )
    if not (args.full or args.pert):
        _report_invalid(args, dest)
    return 0


def _report_invalid(args, dest) -> None:
    """Signatures that could not be scored, read back from the small written ``valid``."""
    import numpy as np
    import xarray as xr

    from cmapdask.io.store.access import zarr_options

    opts = zarr_options(dest, args.storage_options)
    out = xr.open_zarr(dest, consolidated=False, storage_options=opts)
    valid = np.asarray(out["valid"].values, bool)
    if (~valid).any():
        bad = [str(s) for s in np.asarray(out["sig"].values)[~valid]]
        say(
            args,
            f"cmapdask: {len(bad)} signature(s) have non-finite values or no spread in "
            f"the {args.space} space and got no neighbours: {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else ""),
        )
