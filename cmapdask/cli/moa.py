"""``cmapdask cluster``, ``cmapdask enrich``, ``cmapdask recall``: clustering and MoA enrichment."""

from __future__ import annotations

import json
from typing import get_args

from cmapdask.cli.options import SO_HELP, json_object, positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, progress, say
from cmapdask.errors import InputError
from cmapdask.model.types import SimilarityMetric, Space

__all__ = ["register", "run_cluster", "run_enrich", "run_recall"]


def _annotation_args(p, required=True) -> None:
    p.add_argument(
        "--annotations",
        required=required,
        metavar="FILE",
        help="compoundinfo table, Repurposing-Hub TSV or GMT of MoAs/PCLs",
    )
    p.add_argument(
        "--format",
        choices=["auto", "compoundinfo", "repurposing", "gmt"],
        default="auto",
        help="of --annotations (auto: .gmt is GMT, anything else a table)",
    )
    p.add_argument(
        "--field",
        choices=["moa", "target"],
        default="moa",
        help="table annotations: moa or target (multi-valued with '|')",
    )


def register(subparsers) -> None:
    c = subparsers.add_parser(
        "cluster",
        help="cluster signatures (k-means on PCA) or perturbagens (hierarchical, graph)",
        description="Cluster the signatures of STORE (--method kmeans), the perturbagens of a "
        "pert x pert member (--method hierarchical, --matrix similarity/<name>_pert) or the "
        "kNN graph of a neighbour member (--method graph|leiden|louvain, --neighbours). Labels "
        "become the member clusters/<NAME> (and --table).",
    )
    c.add_argument("store", metavar="STORE", help="signature store URL")
    c.add_argument(
        "--method",
        choices=["kmeans", "hierarchical", "graph", "leiden", "louvain"],
        default="kmeans",
        help="graph: Leiden where igraph and leidenalg are installed, else Louvain",
    )
    c.add_argument("--k", type=positive_int, default=None, help="clusters (kmeans, hierarchical)")
    c.add_argument(
        "--components", type=positive_int, default=50, help="kmeans: principal components"
    )
    c.add_argument(
        "--space",
        choices=get_args(Space),
        default="landmark",
        help="feature space (default landmark)",
    )
    c.add_argument(
        "--init",
        choices=["k-means||", "sample-k-means++"],
        default="k-means||",
        help="kmeans: initialisation (k-means|| over every signature, or k-means++ on a sample)",
    )
    c.add_argument(
        "--solver",
        choices=["auto", "covariance", "randomized", "full"],
        default="auto",
        help="kmeans: PCA solver (auto: one-pass covariance up to 4,096 genes)",
    )
    c.add_argument(
        "--n-init", type=positive_int, default=3, help="kmeans: initialisations kept best of"
    )
    c.add_argument(
        "--matrix", default=None, metavar="MEMBER", help="hierarchical: pert x pert member"
    )
    c.add_argument("--variable", default="pert_summary", help="hierarchical: variable of --matrix")
    c.add_argument(
        "--linkage",
        choices=["average", "complete", "single", "ward"],
        default="average",
        help="hierarchical: linkage (default average)",
    )
    c.add_argument(
        "--neighbours", default=None, metavar="MEMBER", help="graph: top-k neighbour member"
    )
    c.add_argument(
        "--resolution", type=float, default=1.0, help="graph: modularity resolution (default 1)"
    )
    c.add_argument("--name", required=True, help="member name below clusters/")
    c.add_argument("--table", default=None, metavar="PATH", help="also write labels (TSV/.parquet)")
    c.add_argument(
        "--heatmap", default=None, metavar="PNG|SVG", help="hierarchical: clustered heatmap"
    )
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _annotation_args(c, required=False)
    c.add_argument(
        "--storage-options", type=json_object, default=None, metavar="JSON", help=SO_HELP
    )
    add_cluster_args(c)
    c.set_defaults(func=run_cluster)

    e = subparsers.add_parser(
        "enrich",
        help="MoA/PCL enrichment of ranked lists or of clusters",
        description="Ranked lists: every row of VARIABLE in SOURCE (a query result folder "
        "written by cmapdask query, one of its GCTx matrices, a Zarr query result, or a "
        "store member given with --member) is a list; each annotation set is tested at the "
        "top and bottom (KS running sum with permutation p, Fisher top-N, BH). Clusters: "
        "--clusters MEMBER tests over-representation per cluster (hypergeometric, BH).",
    )
    e.add_argument(
        "source",
        metavar="SOURCE",
        help="query result folder, GCTx or Zarr result; or a store (--member/--clusters)",
    )
    e.add_argument("--member", default=None, help="store member holding the lists")
    e.add_argument(
        "--variable",
        default=None,
        help="lists: ps (tau, default), ncs, cs, ps_pert_summary, ... ; in a store "
        "member or Zarr the first of ps, pert_summary, ncs",
    )
    e.add_argument(
        "--clusters", default=None, metavar="MEMBER", help="cluster member (clusters/NAME)"
    )
    e.add_argument("--item-field", default=None, help="coordinate matched to set members (pert_id)")
    e.add_argument(
        "--n-top", type=positive_int, default=100, help="items in the Fisher test's top and bottom"
    )
    e.add_argument(
        "--permutations", type=positive_int, default=1000, help="random sets per set size"
    )
    e.add_argument(
        "--pvalue",
        choices=["permutation", "analytic"],
        default="permutation",
        help="permutation (default) or the asymptotic KS tail (unweighted only)",
    )
    e.add_argument(
        "--weight",
        choices=["unweighted", "weighted"],
        default="unweighted",
        help="unweighted: classic KS; weighted: each hit weighs its absolute score (as in WTCS)",
    )
    e.add_argument(
        "--exclude",
        choices=["self", "none"],
        default="self",
        help="self: leave a list's own perturbagen out of it (default)",
    )
    e.add_argument(
        "--null",
        choices=["auto", "items", "groups"],
        default="auto",
        help="random sets of items, or of labels with all their items (groups: "
        "several signatures per compound); auto picks groups when labels repeat",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    e.add_argument("--max-q", type=float, default=1.0, help="keep rows with some q at most this")
    e.add_argument(
        "--running-sum",
        default=None,
        metavar="PNG|SVG",
        help="ranked lists: running-sum plot of the most enriched (list, set) pair",
    )
    e.add_argument("--out", required=True, metavar="TSV", help="result table (TSV or .parquet)")
    e.add_argument(
        "--pcl-gmt",
        default=None,
        metavar="GMT",
        help="with --clusters on a pert matrix member (--member): write candidate PCLs",
    )
    _annotation_args(e)
    e.add_argument(
        "--storage-options", type=json_object, default=None, metavar="JSON", help=SO_HELP
    )
    add_cluster_args(e)
    e.set_defaults(func=run_enrich)

    r = subparsers.add_parser(
        "recall",
        help="MoA recall: exact AUROC of same- vs different-MoA signature pairs",
        description="Exact MoA recall (ALGORITHMS.md 13) over every pair of annotated "
        "signatures of STORE (or every pair of a STORE signature with a --ref signature), "
        "computed in one blockwise similarity pass: AUROC overall and per cell line, and per "
        "MoA its pairs, AUROC and median percentile rank of same-MoA partners. AUROCs come "
        "with a proven binning bound (auroc_bound). --approximate instead estimates the "
        "AUROC from stored top-k neighbour members and prints the interval it is known in.",
    )
    r.add_argument("store", metavar="STORE", help="signature store URL")
    r.add_argument("--ref", default=None, metavar="STORE", help="reference store (two stores)")
    r.add_argument(
        "--metric",
        choices=get_args(SimilarityMetric),
        default="pearson",
        help="similarity (default pearson)",
    )
    r.add_argument(
        "--space",
        choices=get_args(Space),
        default="landmark",
        help="feature space (default landmark)",
    )
    r.add_argument("--block-size", type=int, default=None, help="signatures per block")
    r.add_argument("--bins", type=int, default=1 << 16, help="AUROC score bins (bound shrinks)")
    r.add_argument("--moa-bins", type=int, default=4096, help="per-MoA AUROC score bins")
    r.add_argument(
        "--approximate",
        action="store_true",
        help="estimate from neighbour lists (--member) instead; prints its error interval",
    )
    r.add_argument(
        "--member",
        action="append",
        default=None,
        help="--approximate: neighbour member (repeatable; default: every similarity member)",
    )
    r.add_argument(
        "--pert-field", default="pert_id", help="signature field matched to the annotations"
    )
    r.add_argument("--cell-field", default=None, help="default cell_id, else cell_iname")
    r.add_argument("--out", default=None, metavar="TSV", help="AUROC per group (default: stdout)")
    r.add_argument(
        "--moa-out",
        default=None,
        metavar="TSV",
        help="per-MoA table (default: next to --out as NAME.moa.tsv)",
    )
    r.add_argument("--roc", default=None, metavar="PNG|SVG", help="ROC plot")
    _annotation_args(r)
    r.add_argument(
        "--storage-options", type=json_object, default=None, metavar="JSON", help=SO_HELP
    )
    add_cluster_args(r)
    r.set_defaults(func=run_recall)


def _sets(args):
    from cmapdask.annotations import read_annotations

    return read_annotations(args.annotations, format=args.format, field=args.field)


def _write_table(df, path) -> None:
    from cmapdask.io.atomic import publish_file

    with publish_file(path) as tmp:
        if str(path).endswith(".parquet"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep="\t", index=False)


def run_cluster(args) -> int:
    from cmapdask import clustering
    from cmapdask.io.store import open_member, open_store

    so = args.storage_options
    if args.heatmap and args.method != "hierarchical":
        raise InputError("--heatmap draws the matrix of --method hierarchical")
    with dask_client(args):
        if args.method == "kmeans":
            if not args.k:
                raise InputError("--method kmeans needs --k")
            ds = open_store(args.store, storage_options=so)
            res = clustering.kmeans_signatures(
                ds,
                n_clusters=args.k,
                n_components=args.components,
                space=args.space,
                init=args.init,
                solver=args.solver,
                n_init=args.n_init,
                seed=args.seed,
            )
            truth_ids = ds["pert_id"].values if "pert_id" in ds.coords else None
        elif args.method == "hierarchical":
            if not (args.k and args.matrix):
                raise InputError("--method hierarchical needs --k and --matrix MEMBER")
            mat = open_member(args.store, args.matrix, storage_options=so)
            if args.variable not in mat:
                raise InputError(
                    f"{args.store}: member {args.matrix!r} has no variable {args.variable!r}"
                )
            mat = mat[args.variable]
            res = clustering.hierarchical_perts(
                mat, method=args.linkage, n_clusters=args.k, source=f"{args.matrix}:{args.variable}"
            )
            truth_ids = res["pert"].values
        else:
            if not args.neighbours:
                raise InputError(f"--method {args.method} needs --neighbours MEMBER")
            nb = open_member(args.store, args.neighbours, storage_options=so)
            res = clustering.graph_clusters(
                nb,
                method="auto" if args.method == "graph" else args.method,
                resolution=args.resolution,
                seed=args.seed,
            )
            ds = open_store(args.store, storage_options=so)
            ids = res["sig"].values
            if "pert_id" in ds.coords and set(ids) <= set(ds["sig"].values):
                truth_ids = ds["pert_id"].sel(sig=ids).values  # signature graph
            else:
                truth_ids = ids  # a perturbagen graph (its items are pert_ids)
        out = clustering.write_clusters(
            res, args.store, name=args.name, table=args.table, storage_options=so
        )
        quality, moa = {}, None
        if args.annotations and truth_ids is not None:
            from cmapdask.annotations import labels_from_sets

            moa = labels_from_sets(_sets(args), truth_ids)
            quality = clustering.cluster_quality(res["cluster"], moa)
        if args.heatmap:
            from cmapdask.plots import plot_clustered_heatmap

            plot_clustered_heatmap(mat, res, args.heatmap, moa=moa)
    say(
        args,
        f"cmapdask: wrote {out.get('member')}" + (f" and {out['table']}" if "table" in out else ""),
    )
    if quality:
        print(json.dumps(quality))
    return 0


def _open_lists(args):
    from cmapdask.enrich import read_ranked_lists
    from cmapdask.io.store import open_member

    if args.member:
        ds = open_member(args.source, args.member, storage_options=args.storage_options)
        var = args.variable or next((v for v in ("ps", "pert_summary", "ncs") if v in ds), None)
        if var is None or var not in ds or ds[var].ndim != 2:
            raise InputError(
                f"{args.source}: member {args.member!r} has no list variable "
                f"{args.variable or 'ps/pert_summary/ncs'!r}"
            )
        return ds[var]
    return read_ranked_lists(
        args.source, variable=args.variable, storage_options=args.storage_options
    )


def run_enrich(args) -> int:
    from cmapdask import enrich

    sets = _sets(args)
    with dask_client(args) as client:
        if args.clusters:
            from cmapdask.io.store import open_member, open_store

            cl = open_member(args.source, args.clusters, storage_options=args.storage_options)
            dim = cl["cluster"].dims[0]
            if dim == "sig":
                ds = open_store(args.source, storage_options=args.storage_options)
                field = args.item_field or "pert_id"
                if field not in ds.coords:
                    raise InputError(f"{args.source}: no signature field {field!r}")
                items = ds[field].sel(sig=cl["sig"].values).values
            else:
                items = cl[dim].values
            df = enrich.cluster_enrichment(cl["cluster"].values, items, sets)
            if args.pcl_gmt:
                if not args.member:
                    raise InputError("--pcl-gmt needs --member (the pert x pert matrix member)")
                mat = open_member(args.source, args.member, storage_options=args.storage_options)
                var = args.variable or "pert_summary"
                cand = enrich.candidate_pcls(
                    mat[var], cl["cluster"].sel({dim: mat[mat[var].dims[0]].values}).values, sets
                )
                enrich.write_pcl_gmt(cand, args.pcl_gmt)
                say(args, f"cmapdask: {len(cand)} candidate PCLs in {args.pcl_gmt}")
        else:
            lists = _open_lists(args)
            item_field = args.item_field
            if (
                item_field is None
                and "pert_id" in lists.coords
                and lists["pert_id"].dims == (lists.dims[1],)
            ):
                item_field = "pert_id"
            res = enrich.enrich_ranked(
                lists,
                sets,
                item_field=item_field,
                n_top=args.n_top,
                permutations=args.permutations,
                pvalue=args.pvalue,
                weight=args.weight,
                exclude=args.exclude,
                null=args.null,
                seed=args.seed,
            )
            with progress(args, client):
                df = enrich.enrichment_table(res, max_q=args.max_q)
            if args.running_sum and len(df):
                best = df.sort_values(
                    ["q_ks_top", "p_ks_top", "es_top"], ascending=[True, True, False]
                ).iloc[0]
                _plot_best(lists, sets, best, item_field, args)
    _write_table(df, args.out)
    say(args, f"cmapdask: wrote {len(df)} rows to {args.out}")
    return 0


def _plot_best(lists, sets, best, item_field, args) -> None:
    import numpy as np

    from cmapdask.plots import plot_running_sum

    ldim, idim = lists.dims
    row = lists.sel({ldim: best["list"]})
    scores = np.asarray(row.values, dtype=float)
    labels = row[item_field].values if item_field else row[idim].values
    members = {str(m) for m in sets[best["set"]]}
    mask = np.array([str(v) in members for v in labels])
    if args.exclude == "self":  # as the test did: the list's own perturbagen is not in it
        scores = np.where(np.array([str(v) == str(best["list"]) for v in labels]), np.nan, scores)
    plot_running_sum(
        scores,
        np.flatnonzero(mask & np.isfinite(scores)),
        args.running_sum,
        title=f"{best['list']}: {best['set']} (q = {best['q_ks_top']:.2g})",
    )
    say(args, f"cmapdask: wrote {args.running_sum}")


def _moa_out(args) -> str | None:
    if args.moa_out or not args.out:
        return args.moa_out
    out = str(args.out)
    for ext in (".tsv", ".txt", ".parquet"):
        if out.endswith(ext):
            return out[: -len(ext)] + ".moa" + ext
    return out + ".moa.tsv"


def _labelled(args, url, sets):
    from cmapdask.annotations import labels_from_sets
    from cmapdask.io.store import open_store

    ds = open_store(url, storage_options=args.storage_options)
    if args.pert_field not in ds.coords:
        raise InputError(f"{url}: no signature field {args.pert_field!r}")
    cell_field = args.cell_field or ("cell_id" if "cell_id" in ds.coords else "cell_iname")
    cells = ds[cell_field].values if cell_field in ds.coords else None
    return ds, labels_from_sets(sets, ds[args.pert_field].values), cells


def run_recall(args) -> int:
    if args.approximate:
        return _run_recall_approx(args)
    if args.member:
        raise InputError("--member names neighbour lists: it goes with --approximate")
    from cmapdask.similarity.recall import moa_recall, recall_tables

    sets = _sets(args)
    ds, moa, cells = _labelled(args, args.store, sets)
    ref, ref_moa, ref_cells = (None, None, None)
    if args.ref:
        ref, ref_moa, ref_cells = _labelled(args, args.ref, sets)
    with dask_client(args) as client:
        res = moa_recall(
            ds,
            ref,
            moa=moa,
            ref_moa=ref_moa,
            cells=cells,
            ref_cells=ref_cells,
            metric=args.metric,
            space=args.space,
            block_size=args.block_size,
            bins=args.bins,
            moa_bins=args.moa_bins,
        )
        with progress(args, client):
            res = res.compute()
    groups, moas = recall_tables(res)
    groups.insert(1, "metric", args.metric)
    groups.insert(2, "space", args.space)
    moa_out = _moa_out(args)
    if args.out:
        _write_table(groups, args.out)
    if moa_out:
        _write_table(moas, moa_out)
    if not args.out:
        print(groups.to_csv(sep="\t", index=False), end="")
        if not moa_out:
            print()
            print(moas.to_csv(sep="\t", index=False), end="")
    a = groups.iloc[0]
    ranked = moas["median_percentile"].dropna()
    summary = (
        f"cmapdask: MoA recall ({args.metric}, {args.space}"
        f"{', against ' + str(args.ref) if args.ref else ''}): AUROC {a['auroc']:.4f}"
        f" (exact within {a['auroc_bound']:.1e}) over {int(a['n_pos']):,} same-MoA and"
        f" {int(a['n_neg']):,} different-MoA pairs; {len(groups) - 1} cell line(s);"
        f" {len(moas)} MoA(s)"
    )
    if len(ranked):
        summary += f", median same-MoA percentile rank {ranked.median():.1f} (median of MoAs)"
    if args.out:
        print(summary)
        say(args, f"cmapdask: wrote {args.out}" + (f" and {moa_out}" if moa_out else ""))
    else:
        say(args, summary)
    if args.roc:
        from cmapdask.plots import plot_roc

        plot_roc(res, args.roc, title=f"{args.store} ({args.metric}, {args.space})")
    return 0


def _run_recall_approx(args) -> int:
    import pandas as pd

    from cmapdask.annotations import labels_from_sets
    from cmapdask.enrich import moa_recall_approx
    from cmapdask.io.store import list_members, open_member, open_store

    if args.ref:
        raise InputError("--approximate reads one store's neighbour lists; --ref is exact only")
    so = args.storage_options
    sets = _sets(args)
    ds = open_store(args.store, storage_options=so)
    if args.pert_field not in ds.coords:
        raise InputError(f"{args.store}: no signature field {args.pert_field!r}")
    cell_field = args.cell_field or ("cell_id" if "cell_id" in ds.coords else "cell_iname")
    cells = ds[cell_field].values if cell_field in ds.coords else None
    members = args.member or [
        m for m in list_members(args.store, storage_options=so) if m.startswith("similarity/")
    ]
    rows, first = [], None
    with dask_client(args):
        for name in members:
            nb = open_member(args.store, name, storage_options=so)
            if "top_index" not in nb or "ref_valid" in nb:
                if args.member:
                    raise InputError(
                        f"{args.store}: member {name!r} is not a self-similarity neighbour list"
                    )
                continue
            ids = ds[args.pert_field].sel(sig=nb["sig"].values).values
            c = None if cells is None else ds[cell_field].sel(sig=nb["sig"].values).values
            res = moa_recall_approx(nb, labels_from_sets(sets, ids), cells=c).compute()
            first = first if first is not None else (name, res)
            prov = nb.attrs.get("cmapdask", {})
            for g in res["group"].values:
                r = res.sel(group=g)
                rows.append(
                    {
                        "member": name,
                        "metric": prov.get("metric"),
                        "space": prov.get("space"),
                        "group": g,
                        "auroc_estimate": float(r["auroc"]),
                        "auroc_min": float(r["auroc_min"]),
                        "auroc_max": float(r["auroc_max"]),
                        "n_pos": int(r["n_pos"]),
                        "n_neg": int(r["n_neg"]),
                    }
                )
    if not rows:
        raise InputError(
            f"{args.store}: no self-similarity neighbour member (run cmapdask similarity)"
        )
    df = pd.DataFrame(rows)
    if args.out:
        _write_table(df, args.out)
    else:
        print(df.to_csv(sep="\t", index=False), end="")
    for row in df[df["group"] == "all"].itertuples():
        msg = (
            f"cmapdask: {row.member}: AUROC estimate {row.auroc_estimate:.4f} from neighbour"
            f" lists; the exact value is only known within [{row.auroc_min:.4f},"
            f" {row.auroc_max:.4f}] (error up to"
            f" {max(row.auroc_max - row.auroc_estimate, row.auroc_estimate - row.auroc_min):.4f};"
            " run without --approximate for the exact AUROC)"
        )
        if args.out:
            print(msg)
        else:
            say(args, msg)
    if args.roc and first is not None:
        from cmapdask.plots import plot_roc

        plot_roc(first[1], args.roc, title=first[0])
    return 0
