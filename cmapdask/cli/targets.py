"""``cmapdask targets``: which gene's loss does each compound mimic (target identification)."""

from __future__ import annotations

import sys
from typing import get_args

from cmapdask.cli.options import json_object
from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.model.types import Space

__all__ = ["register", "run_targets"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "targets",
        help="target identification: genes whose knockdown / knockout each compound mimics",
        description="Query STORE with every selected compound signature (its top and bottom "
        "genes), rank the genes with genetic perturbagens by tau (per cell line and "
        "summarised) and, where compoundinfo names targets, report how well the annotated "
        "targets rank (AUROC over compounds, hit rate in the top K). Needs the store's index "
        "and tau background (cmapdask index, cmapdask background).",
    )
    p.add_argument("store", metavar="STORE", help="signature store URL")
    p.add_argument(
        "--compounds",
        default="touchstone",
        metavar="EXPR",
        help="compound signatures to query with: touchstone (default), all, or a pandas "
        'expression over signature metadata, e.g. "pert_dose == 10 and is_exemplar_sig == 1"',
    )
    p.add_argument(
        "--classes",
        default="KD,CRISPR",
        metavar="C1,C2",
        help="genetic classes to rank: KD, CRISPR, OE or pert_types, comma separated "
        "(default KD,CRISPR: loss of function; add OE for agonists)",
    )
    p.add_argument(
        "--space",
        choices=get_args(Space),
        default="bing",
        help="feature space of the index and background (default bing)",
    )
    p.add_argument(
        "--reference",
        default="touchstone",
        help="NCS reference signatures: touchstone (default), all or an expression",
    )
    p.add_argument("--top-k", type=int, default=10, help="hit = a target within the top K")
    p.add_argument(
        "--out",
        default=None,
        metavar="TSV",
        help="write the whole table (every compound, cell line and gene) here; without it "
        "the summary rows ranked within --top-k are printed",
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the store URL",
    )
    add_cluster_args(p)
    p.set_defaults(func=run_targets)


def run_targets(args) -> int:
    from cmapdask.connectivity.targets import targets
    from cmapdask.io.atomic import publish_file

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    with dask_client(args):
        table = targets(
            args.store,
            compounds=args.compounds,
            classes=classes,
            space=args.space,
            reference=args.reference,
            top_k=args.top_k,
            storage_options=args.storage_options,
        )
    meta = table.attrs["cmapdask"]
    r = meta["recall"]
    n_cpd = table["pert_id"].nunique()
    say(
        args,
        f"cmapdask: {n_cpd} compounds x {table['gene_symbol'].nunique()} genes "
        f"({'/'.join(meta['classes'])}), {meta['n_queries']} query signatures",
    )
    if r["n_compounds"]:
        say(
            args,
            f"cmapdask: annotated targets: AUROC {r['auroc']:.3f} over {r['n_compounds']} "
            f"compounds, a target in the top {r['top_k']} for {r['hit_rate']:.0%}",
        )
    else:
        say(args, "cmapdask: no compound names a target among the ranked genes")
    if args.out:
        with publish_file(args.out, storage_options=args.storage_options) as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
        print(args.out)
    else:
        top = table[(table["cell_id"] == "summary") & (table["rank"] <= args.top_k)]
        top.to_csv(sys.stdout, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
    return 0
