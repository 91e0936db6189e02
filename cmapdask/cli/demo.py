"""``cmapdask demo``: the whole pipeline on a synthetic release, on a local cluster.

synth (compounds and genetic perturbagens) -> convert -> info -> query index and τ
background -> a query with the planted response of one MoA (by perturbagen class) ->
target identification (the genes whose loss a compound mimics) -> a "disease" query (a
planted loss-of-function signature reversed: which compounds restore it) -> similarity
top-k -> the server on the store (from a terminal), printing what a user would look at
after each step. Every step is the public API.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import get_args

from cmapdask.cli.options import positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.errors import InputError
from cmapdask.model.types import Space

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline on a synthetic release "
        "(synth, convert, info, index, query, targets, disease query, similarity)",
    )
    p.add_argument(
        "--out", default="cmapdask-demo", help="working folder (default ./cmapdask-demo)"
    )
    p.add_argument(
        "--n-sigs", type=positive_int, default=20_000, help="synthetic signatures (default 20000)"
    )
    p.add_argument(
        "--genes",
        choices=get_args(Space),
        default="landmark",
        help="genes of the synthetic release (default landmark)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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


def _design(args):
    from cmapdask.synthetic import synth_design

    return synth_design(args.n_sigs, genes=args.genes, seed=args.seed, genetic=True)


def _step(args, title: str):
    say(args, f"\n== {title}")
    return time.perf_counter()


def run_demo(args) -> int:
    from cmapdask.cli.store import run_info
    from cmapdask.io.store import convert
    from cmapdask.synthetic import write_synthetic

    out = os.path.abspath(args.out)
    if os.path.exists(out):
        if not args.force:
            raise InputError(f"{out}: already exists (use --force to replace it)")
        shutil.rmtree(out)
    raw, store = os.path.join(out, "release"), os.path.join(out, "store.zarr")
    with dask_client(args) as client:
        t = _step(args, f"1. synthetic release: {args.n_sigs} signatures ({args.genes})")
        design = _design(args)
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
    from cmapdask.connectivity.classes import filter_class, split_by_class
    from cmapdask.io.gmt import read_gene_sets
    from cmapdask.io.store import open_store
    from cmapdask.synthetic import synth_moa_directions

    space = "landmark"
    t = _step(args, f"4. query index ({space} space) and τ background from Touchstone signatures")
    build_index(store, space=space, progress=not args.quiet)
    pcls = read_gene_sets(paths["pcl"])
    build_background(store, space=space, pcls=pcls, progress=not args.quiet)
    say(args, f"   added index/{space} and background/{space} in {time.perf_counter() - t:.1f} s")

    # The planted response of the first MoA: its 50 most up and 50 most down genes.
    design = _design(args)
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
    cp = filter_class(summ, "CP")  # compounds; genetic classes below
    tau = cp["ps_pert_summary"].isel(query=0).to_series().dropna().sort_values(ascending=False)
    top = tau.head(10)
    say(args, "   top compounds by τ (pert summary):")
    for pert, value in top.items():
        say(args, f"     {pert:<16} τ = {value:6.1f}   moa = {moa_of.get(pert)}")
    hits = int((moa_of.reindex(top.index) == moa).sum())
    base = float((moa_of.reindex(tau.index) == moa).mean())
    say(args, f"   {hits}/10 of the top perturbagens have the planted MoA (chance {base:.0%})")
    say(args, "   strongest connection per perturbagen class (pert summary):")
    name_of = pd.Series(sig["cmap_name"].values, index=sig["pert_id"].values)
    name_of = name_of.groupby(level=0).first()
    for cls, part in split_by_class(summ.isel(query=0)).items():
        t = part["ps_pert_summary"].to_series().dropna()
        if cls in ("CTL", "OTHER") or t.empty:
            continue
        pert = str(t.idxmax())
        say(args, f"     {cls:<7} {pert:<16} {name_of.get(pert)!s:<12} τ = {t.max():6.1f}")


def _stage_targets(args, client, store, paths, out) -> None:
    """Target identification: the genes whose knockdown / knockout each compound mimics."""
    from cmapdask.connectivity.targets import targets
    from cmapdask.synthetic import synth_compoundinfo

    t = _step(args, "6. target identification: which gene's loss does each compound mimic?")
    table = targets(store, space="landmark")
    dest = os.path.join(out, "targets.tsv")
    table.to_csv(dest, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
    say(args, f"   wrote {dest} in {time.perf_counter() - t:.1f} s")
    info = synth_compoundinfo(_design(args)).set_index("pert_id")
    pert = str(info.index[0])  # the first compound of the first MoA (an inhibitor)
    rows = table[(table["pert_id"] == pert) & (table["cell_id"] == "summary")].head(5)
    target = info.loc[pert, "target"]
    say(args, f"   {pert} ({info.loc[pert, 'moa']}; annotated target {target}):")
    for r in rows.itertuples():
        mark = "   <- annotated target" if r.is_target else ""
        say(args, f"     {r.rank}. {r.gene_symbol:<8} {r.pert_class:<7} τ = {r.tau:6.1f}{mark}")
    rank = table.loc[
        (table["pert_id"] == pert) & (table["cell_id"] == "summary") & table["is_target"], "rank"
    ]
    say(args, f"   its planted target ranks {int(rank.min())} of {int(rows['n_genes'].iloc[0])}")
    r = table.attrs["cmapdask"]["recall"]
    say(
        args,
        f"   over {r['n_compounds']} compounds: AUROC of the annotated target {r['auroc']:.2f}, "
        f"in the top {r['top_k']} for {r['hit_rate']:.0%} (agonists' targets are at the "
        "bottom: their loss opposes them)",
    )


def _stage_disease(args, client, store, paths, out) -> None:
    """A disease signature: the planted loss of an agonist's target, reversed."""
    import numpy as np
    import pandas as pd

    from cmapdask.connectivity import query, summarize
    from cmapdask.connectivity.classes import filter_class
    from cmapdask.io.store import open_store
    from cmapdask.synthetic import synth_genetic_truth, synth_moa_directions

    design = _design(args)
    genes = synth_genetic_truth(design)
    g = genes[genes["lof_sign"] < 0].iloc[0]  # the target of the first agonist MoA
    u = synth_moa_directions(design).isel(moa=int(g["moa_index"]))
    loss = g["lof_sign"] * u.values  # what losing the gene does
    order = np.argsort(-loss, kind="stable")
    up, down = list(u["gene"].values[order[:50]]), list(u["gene"].values[order[-50:]])
    t = _step(
        args,
        f"7. disease query: the loss of {g['gene_symbol']} (50 up, 50 down genes); "
        "which compounds reverse it?",
    )
    res = query(store, {"disease": up}, {"disease": down}, space="landmark")
    summ = filter_class(summarize(res), "CP").isel(query=0)
    tau = summ["ps_pert_summary"].to_series().dropna().sort_values()
    say(args, f"   scored in {time.perf_counter() - t:.1f} s; most negative τ (restoring):")
    sig = open_store(store)
    moa_of = pd.Series(sig["moa"].values, index=sig["pert_id"].values).groupby(level=0).first()
    top = tau.head(10)
    for pert, value in top.items():
        say(args, f"     {pert:<16} τ = {value:6.1f}   moa = {moa_of.get(pert)}")
    hits = int((moa_of.reindex(top.index) == g["moa"]).sum())
    base = float((moa_of.reindex(tau.index) == g["moa"]).mean())
    say(
        args,
        f"   {hits}/10 of the restoring compounds are {g['moa']}s of {g['gene_symbol']} "
        f"(chance {base:.0%})",
    )


def _stage_similarity(args, client, store, paths, out) -> None:
    """Top-k Pearson neighbours of every signature, and how often they share a MoA."""
    import numpy as np

    from cmapdask.io.store import open_member, open_store
    from cmapdask.similarity import similarity, write_similarity

    k, name = 20, "similarity/pearson_landmark"
    t = _step(args, f"8. similarity: top and bottom {k} Pearson neighbours of every signature")
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
    _step(args, "9. the query app, data browser and REST API (cmapdask serve)")
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
_LATER_STAGES: list = [
    _stage_query,
    _stage_targets,
    _stage_disease,
    _stage_similarity,
    _stage_serve,
]
