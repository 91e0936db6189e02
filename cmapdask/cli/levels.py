"""``cmapdask level4`` and ``cmapdask level5``: L1000 signature processing, store to store.

SRC is a signature store (or a GCTx/GCT file); DEST is a new store, written atomically.
"""

from __future__ import annotations

import json
import time

from cmapdask.cli.options import json_object, positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, say

__all__ = ["register", "run_level4", "run_level5"]


def _common(p) -> None:
    p.add_argument("src", help="input store URL (or a GCTx/GCT file)")
    p.add_argument("dest", help="output store URL to create")
    p.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=None,
        help="signatures per task (default: the input's chunk size)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DEST if it is a store cmapdask wrote (never another folder or a file)",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for SRC and DEST (JSON)",
    )
    add_cluster_args(p)


def register(sub) -> None:
    p = sub.add_parser(
        "level4",
        help="Level 3 -> Level 4: robust z-scores per plate (ZSPC or ZSVC)",
        description="Robust z per gene within each plate, z = (x - median) / (1.4826 * "
        "max(MAD, floor)), against the whole plate (ZSPC) or its vehicle controls (ZSVC).",
    )
    _common(p)
    p.add_argument(
        "--reference",
        choices=["plate", "vehicle"],
        default="plate",
        help="plate population (ZSPC, default) or vehicle-control wells (ZSVC)",
    )
    p.add_argument(
        "--plate-field",
        default="auto",
        help="signature field naming the plate (default: rna_plate, else "
        "det_plate; 'none': the whole input is one plate)",
    )
    p.add_argument("--control-field", default="pert_type", help="field marking controls")
    p.add_argument("--control-value", default="ctl_vehicle", help="value of vehicle controls")
    p.add_argument("--mad-floor", type=float, default=0.1, help="floor on the MAD (default 0.1)")
    p.add_argument(
        "--min-reference",
        type=positive_int,
        default=2,
        help="fewest reference wells a plate may have (default 2)",
    )
    p.add_argument(
        "--normalize",
        choices=["none", "quantile"],
        default="none",
        help="quantile-normalize per plate first (input not yet Level 3)",
    )
    p.set_defaults(func=run_level4)

    p = sub.add_parser(
        "level5",
        help="Level 4 -> Level 5: MODZ consensus per replicate group, with replicate stats",
        description="MODZ (Spearman-weighted average of replicates on landmark genes) per "
        "replicate group; writes distil_nsample, distil_wt, distil_cc_q75/max/median, "
        "distil_ss_ngene and distil_tas as signature metadata.",
    )
    _common(p)
    p.add_argument(
        "--group-by",
        default=None,
        metavar="FIELD,FIELD,...",
        help="fields defining a replicate group (default: pert_id, dose, time, "
        "cell line, bead_batch)",
    )
    p.add_argument(
        "--landmarks",
        default=None,
        metavar="GRP",
        help="GRP file of landmark gene ids (default: from gene metadata)",
    )
    p.add_argument("--clip", type=float, default=10.0, help="clip z to [-clip, clip] (default 10)")
    p.add_argument(
        "--weight-floor", type=float, default=0.01, help="floor on replicate weights (default 0.01)"
    )
    p.set_defaults(func=run_level5)


def _open(args):
    src, opts = args.src, args.storage_options
    if str(src).endswith((".gct", ".gct.gz")):
        from cmapdask.io.gct import read_gct

        return read_gct(src, storage_options=opts)
    from cmapdask.io.gctx import is_gctx, read_gctx

    if str(src).endswith(".gctx") or is_gctx(src, opts):
        return read_gctx(src, storage_options=opts)
    from cmapdask.io.store import open_store

    return open_store(src, storage_options=opts)


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def _write(args, ds, label: str, t0: float) -> int:
    from cmapdask.io.store import write_store

    write_store(
        ds,
        args.dest,
        storage_options=args.storage_options,
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
        progress=not args.quiet,
        provenance={"source": str(args.src), "levels": _json_safe(ds.attrs.get("cmapdask"))},
    )
    n_sig, n_gene = ds["expr"].shape
    say(
        args,
        f"cmapdask: wrote {label} {args.dest}: {n_sig} signatures x {n_gene} genes "
        f"in {time.perf_counter() - t0:.1f} s",
    )
    return 0


def run_level4(args) -> int:
    from cmapdask.levels import level4

    t0 = time.perf_counter()
    plate_field = None if args.plate_field.lower() == "none" else args.plate_field
    with dask_client(args):
        ds = level4(
            _open(args),
            normalize=args.normalize,
            reference=args.reference,
            plate_field=plate_field,
            control_field=args.control_field,
            control_value=args.control_value,
            mad_floor=args.mad_floor,
            min_reference=args.min_reference,
            chunk_rows=args.chunk_rows,
        )
        return _write(args, ds, "Level 4", t0)


def run_level5(args) -> int:
    import dask

    from cmapdask.levels import STAT_COORDS, level5

    t0 = time.perf_counter()
    group_by = [f.strip() for f in args.group_by.split(",") if f.strip()] if args.group_by else None
    landmarks = None
    if args.landmarks:
        from cmapdask.io.gmt import read_grp

        landmarks = read_grp(args.landmarks, storage_options=args.storage_options)
    with dask_client(args):
        ds = level5(
            _open(args),
            group_by=group_by,
            landmarks=landmarks,
            clip=args.clip,
            weight_floor=args.weight_floor,
            chunk_rows=args.chunk_rows,
            statistics="persist",
        )
        # persisted above (one pass over the landmark columns); bring the small results
        # here so the store writer streams expr alone and finds plain metadata
        stats = dask.compute(*(ds[k].data for k in STAT_COORDS))
        ds = ds.assign_coords({k: ("sig", v) for k, v in zip(STAT_COORDS, stats, strict=False)})
        say(
            args,
            f"cmapdask: replicate statistics for {ds.sizes['sig']} groups in "
            f"{time.perf_counter() - t0:.1f} s",
        )
        return _write(args, ds, "Level 5", t0)
