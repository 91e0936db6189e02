"""``cmapdask demo``: the whole pipeline on a synthetic release, on a local cluster.

synth -> convert -> info -> query index and τ background -> a query with the planted
response of one MoA -> similarity top-k -> the server on the store (from a terminal),
printing what a user would look at after each step. Every step is the public API.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.errors import InputError

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline on a synthetic release "
        "(synth, convert, info, index, query, similarity)",
    )
    p.add_argument(
        "--out", default="cmapdask-demo", help="working folder (default ./cmapdask-demo)"
    )
    p.add_argument(
        "--n-sigs", type=int, default=20_000, help="synthetic signatures (default 20000)"
    )
    p.add_argument("--genes", choices=["landmark", "bing", "all"], default="landmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="last step: serve the demo store (cmapdask serve) until interrupted "
        "(default: when run from a terminal)",
    )
    p.add_argument("--port", type=int, default=8000, help="port of the last step's server")
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
            paths["gctx"],
            store,
            sig_info=paths["siginfo"],
            gene_info=paths["geneinfo"],
            compound_info=paths["compoundinfo"],
            progress=not args.quiet,
        )
        say(args, f"   wrote {store} in {time.perf_counter() - t:.1f} s")

        _step(args, "3. cmapdask info")
        info_args = type("A", (), {"target": store, "json": False, "storage_options": None})()
        run_info(info_args)

        for stage in _LATER_STAGES:
            stage(args, client, store, paths, out)
    say(args, f"\ndone: everything is under {out}")
    return 0


def _stage_query(args, client, store, paths, out) -> None:
    """Index, τ background, then the planted direction of one MoA as a query."""
    import numpy as np
    import pandas as pd

    from cmapdask.connectivity import build_background, build_index, query, summarize, write_result
    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.io.store import open_store
    from cmapdask.synthetic import synth_design, synth_moa_directions

    space = "landmark"
    t = _step(args, f"4. query index ({space} space) and τ background from Touchstone signatures")
    build_index(store, space=space, progress=not args.quiet)
    pcls = read_gene_sets(paths["pcl"])
    build_background(store, space=space, pcls=pcls, progress=not args.quiet)
    say(args, f"   added index/{space} and background/{space} in {time.perf_counter() - t:.1f} s")

    # The planted response of the first MoA: its 50 most up and 50 most down genes.
    design = synth_design(args.n_sigs, genes=args.genes, seed=args.seed)
    u = synth_moa_directions(design).isel(moa=0)
    moa = str(u["moa"].values)
    order = np.argsort(-u.values, kind="stable")
    up, down = list(u["gene"].values[order[:50]]), list(u["gene"].values[order[-50:]])
    t = _step(args, f"5. query: the planted signature of {moa!r} (50 up, 50 down genes)")
    res = query(store, {"demo": up}, {"demo": down}, space=space)
    summ = summarize(res, pcls=pcls)
    folder = write_result(res, os.path.join(out, "query"), summaries=summ)
    say(args, f"   wrote {folder} in {time.perf_counter() - t:.1f} s")

    sig = open_store(store)
    moa_of = pd.Series(sig["moa"].values, index=sig["pert_id"].values).groupby(level=0).first()
    tau = summ["ps_pert_summary"].isel(query=0).to_series().dropna().sort_values(ascending=False)
    top = tau.head(10)
    say(args, "   top perturbagens by τ (pert summary):")
    for pert, value in top.items():
        say(args, f"     {pert:<16} τ = {value:6.1f}   moa = {moa_of.get(pert)}")
    hits = int((moa_of.reindex(top.index) == moa).sum())
    base = float((moa_of.reindex(tau.index) == moa).mean())
    say(args, f"   {hits}/10 of the top perturbagens have the planted MoA (chance {base:.0%})")


def _stage_similarity(args, client, store, paths, out) -> None:
    """Top-k Pearson neighbours of every signature, and how often they share a MoA."""
    import numpy as np

    from cmapdask.io.store import open_member, open_store
    from cmapdask.similarity import similarity, write_similarity

    k, name = 20, "similarity/pearson_landmark"
    t = _step(args, f"6. similarity: top and bottom {k} Pearson neighbours of every signature")
    ds = open_store(store)
    res = similarity(ds, k=k, metric="pearson", space="landmark")
    dest = write_similarity(res, store, name=name, progress=not args.quiet)
    say(args, f"   wrote {dest} in {time.perf_counter() - t:.1f} s")

    nb = open_member(store, name)
    moa = np.asarray(ds["moa"].values, dtype=object)
    known = np.array([isinstance(m, str) and m != "" for m in moa])
    top = nb["top_index"].values[known]
    same = (moa[top] == moa[known][:, None]).mean()
    _, counts = np.unique(moa[known].astype(str), return_counts=True)
    chance = float(((counts / counts.sum()) ** 2).sum())
    say(
        args, f"   top-{k} neighbours sharing the signature's MoA: {same:.0%} (chance {chance:.0%})"
    )


def _stage_serve(args, client, store, paths, out) -> None:
    """The store as CLUE on this machine: ``cmapdask serve`` until interrupted."""
    port = getattr(args, "port", 8000)
    cmd = f"cmapdask serve {store} --pcl {paths['pcl']} --port {port}"
    serve = getattr(args, "serve", None)
    if serve is None:
        serve = sys.stdin.isatty() and sys.stdout.isatty()
    _step(args, "7. the query app, data browser and REST API (cmapdask serve)")
    if not serve:
        say(args, f"   start it with: {cmd}")
        return
    import uvicorn

    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.server.app import ServerSettings, create_app

    app = create_app(
        ServerSettings(store, jobs_dir=os.path.join(out, "jobs"), pcls=read_gene_sets(paths["pcl"]))
    )
    say(args, f"   serving {store} at http://127.0.0.1:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# Stages after convert and info: each takes (args, client, store, paths, out).
_LATER_STAGES: list = [_stage_query, _stage_similarity, _stage_serve]
