"""``cmapdask convert`` and ``cmapdask info``."""

from __future__ import annotations

import json
import sys
import time
import warnings

from cmapdask.cli.options import SO_HELP, json_object, positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.errors import NonFiniteWarning, StoreError, TextWarning

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a GCTx/GCT file (plus release tables) into a Zarr signature store",
        description="Convert SRC (GCTx or GCT) into a new Zarr v3 signature store at DEST "
        "(local path, memory://, s3://). DEST appears only when complete.",
    )
    p.add_argument("src", help="GCTx or GCT file (path or fsspec URL)")
    p.add_argument("dest", help="store URL to create")
    p.add_argument("--sig-info", help="siginfo table (TSV or Parquet, id column sig_id)")
    p.add_argument("--gene-info", help="geneinfo table (id column gene_id)")
    p.add_argument("--compound-info", help="compoundinfo table (id column pert_id)")
    p.add_argument(
        "--ignore-extra-ids", action="store_true", help="allow table rows whose id is not in SRC"
    )
    p.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=None,
        help="signatures per chunk (default ~32 MiB)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DEST if it is a store cmapdask wrote (never another folder or a file)",
    )
    p.add_argument("--no-checksum", action="store_true", help="skip the source SHA-256")
    p.add_argument(
        "--virtual",
        action="store_true",
        help="reference SRC's chunks in place instead of copying them (GCTx only; SRC must "
        "stay unchanged; copy for stores read often or remotely, see README)",
    )
    p.add_argument(
        "--src-storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for SRC (default: those of --storage-options when SRC and DEST "
        "are on the same kind of storage)",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help='fsspec options for DEST, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'',
    )
    add_cluster_args(p)
    p.set_defaults(func=run_convert)

    p = sub.add_parser(
        "info", help="shape, fields, chunking and provenance of a GCTx/GCT file or a store"
    )
    p.add_argument("target", help="GCTx/GCT file or store URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--storage-options", type=json_object, default=None, metavar="JSON", help=SO_HELP
    )
    p.set_defaults(func=run_info)


def run_convert(args) -> int:
    from cmapdask.io.store import convert, store_info

    t0 = time.perf_counter()
    with dask_client(args), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", NonFiniteWarning)
        warnings.simplefilter("always", TextWarning)
        convert(
            args.src,
            args.dest,
            sig_info=args.sig_info,
            gene_info=args.gene_info,
            compound_info=args.compound_info,
            storage_options=args.storage_options,
            extra_ids="ignore" if args.ignore_extra_ids else "error",
            chunk_rows=args.chunk_rows,
            overwrite=args.overwrite,
            checksum=not args.no_checksum,
            virtual=args.virtual,
            src_storage_options=_src_options(args),
            progress=not args.quiet,
        )
    for w in seen:  # ours as one line; anything else as Python would show it
        if issubclass(w.category, (NonFiniteWarning, TextWarning)):
            print(f"cmapdask: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    info = store_info(args.dest, storage_options=args.storage_options)
    say(
        args,
        f"cmapdask: wrote {args.dest}: {info['shape']['sig']} signatures x "
        f"{info['shape']['gene']} genes in {time.perf_counter() - t0:.1f} s",
    )
    return 0


def _src_options(args):
    """--src-storage-options, else --storage-options for a remote source (the usual case:
    one object store holds both)."""
    if args.src_storage_options is not None:
        return args.src_storage_options
    return args.storage_options if "://" in str(args.src) else None


def file_info(path, storage_options=None) -> dict:
    """Summary of a GCTx or GCT file (metadata only; the matrix is not read)."""
    from cmapdask.io.gct import is_gct, read_gct
    from cmapdask.io.gctx import is_gctx, read_gctx

    if is_gctx(path, storage_options):
        ds = read_gctx(path, storage_options=storage_options)
        kind = "gctx"
    elif is_gct(path, storage_options):  # by content: GCT text may be named .gctx
        ds = read_gct(path, storage_options=storage_options)
        kind = "gct"
    else:
        return {}
    return {
        "kind": kind,
        "path": str(path),
        "shape": {"sig": ds.sizes["sig"], "gene": ds.sizes["gene"]},
        "dask_chunks": [list(c) for c in ds["expr"].chunks] if ds["expr"].chunks else None,
        "sig_fields": sorted(k for k, c in ds.coords.items() if c.dims == ("sig",) and k != "sig"),
        "gene_fields": sorted(
            k for k, c in ds.coords.items() if c.dims == ("gene",) and k != "gene"
        ),
        "provenance": ds.attrs.get("cmapdask", {}),
    }


def run_info(args) -> int:
    from cmapdask.io.store import store_info

    info = file_info(args.target, args.storage_options)
    if not info:
        try:
            info = store_info(args.target, storage_options=args.storage_options)
        except StoreError as e:
            raise StoreError(
                f"{args.target}: neither a GCTx/GCT file nor a cmapdask store ({e})"
            ) from None
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"{info['kind']}: {info.get('url') or info.get('path')}")
    print(f"  shape       {info['shape']['sig']} signatures x {info['shape']['gene']} genes")
    if info["kind"] == "store":
        shards = f" in shards of {info['shards']}" if info.get("shards") else ""
        print(f"  chunks      {info['chunks']}{shards} {info['dtype']} {'+'.join(info['codecs'])}")
        if info.get("stored_bytes") is not None:
            print(f"  stored      {info['stored_bytes'] / 2**20:.1f} MiB")
        print(f"  members     {', '.join(info['members']) or '(none)'}")
    print(f"  sig fields  {', '.join(info['sig_fields']) or '(none)'}")
    print(f"  gene fields {', '.join(info['gene_fields']) or '(none)'}")
    prov = info.get("provenance") or {}
    for key in ("package_version", "created", "source", "tables"):
        if key in prov and prov[key]:
            print(f"  {key:<11} {json.dumps(prov[key], default=str)}")
    return 0
