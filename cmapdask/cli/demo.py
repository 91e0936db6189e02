"""``cmapdask demo``: the whole pipeline on a synthetic release, on a local cluster.

synth -> convert -> info -> query index -> a connectivity query -> similarity top-k,
printing what a user would look at after each step. Every step is the public API.
"""

from __future__ import annotations

import os
import shutil
import time

from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.errors import InputError

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline on a synthetic release (synth, convert, info, index, query, similarity)",
    )
    p.add_argument("--out", default="cmapdask-demo", help="working folder (default ./cmapdask-demo)")
    p.add_argument("--n-sigs", type=int, default=20_000, help="synthetic signatures (default 20000)")
    p.add_argument("--genes", choices=["landmark", "bing", "all"], default="landmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    add_cluster_args(p)
    p.set_defaults(func=run_demo)


def _step(args, title: str):
    say(args, f"\n== {title}")
    return time.perf_counter()


def run_demo(args) -> int:
    from cmapdask.cli.store import run_info
    from cmapdask.io.store import convert
    from cmapdask.synthetic import synth_design, write_synthetic

    out = os.path.abspath(args.out)
    if os.path.exists(out):
        if not args.force:
            raise InputError(f"{out}: already exists (use --force to replace it)")
        shutil.rmtree(out)
    raw, store = os.path.join(out, "release"), os.path.join(out, "store.zarr")
    with dask_client(args) as client:
        t = _step(args, f"1. synthetic release: {args.n_sigs} signatures ({args.genes})")
        design = synth_design(args.n_sigs, genes=args.genes, seed=args.seed)
        paths = write_synthetic(raw, design, progress=not args.quiet)
        say(args, f"   wrote {raw} in {time.perf_counter() - t:.1f} s")

        t = _step(args, "2. convert to a Zarr store, joining siginfo, geneinfo and compoundinfo")
        convert(
            paths["gctx"], store, sig_info=paths["siginfo"], gene_info=paths["geneinfo"],
            compound_info=paths["compoundinfo"], progress=not args.quiet,
        )
        say(args, f"   wrote {store} in {time.perf_counter() - t:.1f} s")

        _step(args, "3. cmapdask info")
        info_args = type("A", (), {"target": store, "json": False, "storage_options": None})()
        run_info(info_args)

        for stage in _LATER_STAGES:
            stage(args, client, store, paths, out)
    say(args, f"\ndone: everything is under {out}")
    return 0


# Stages added by later capabilities (query index and query, similarity): each takes
# (args, client, store, paths, out) and prints its own results.
_LATER_STAGES: list = []
