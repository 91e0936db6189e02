"""``cmapdask synth``: write a release-shaped synthetic data set (cmapdask.synthetic)."""

from __future__ import annotations

from typing import get_args

from cmapdask.cli.options import positive_int
from cmapdask.cli.runtime import add_cluster_args, dask_client, say
from cmapdask.errors import InputError
from cmapdask.model.types import Space

__all__ = ["register", "run_synth"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic Level-5 data with planted MoA and target structure",
        description="Write a GCTx with ids only, siginfo.txt, geneinfo.txt, compoundinfo.txt, "
        "geneticinfo.txt and pcl.gmt (2020 release column names) into OUTDIR. Genetic "
        "perturbagens (shRNA consensus, CRISPR, overexpression of the MoAs' targets and of "
        "decoy genes) are on every fourth plate-set group unless --no-genetic. "
        "Deterministic by --seed; memory is bounded by --block-size. The planted "
        "structure is documented in cmapdask.synthetic.",
    )
    p.add_argument(
        "outdir",
        metavar="OUTDIR",
        help="folder to write, a path or fsspec URL (created if missing)",
    )
    p.add_argument("--n-sigs", type=positive_int, required=True, help="number of signatures")
    p.add_argument(
        "--genes",
        choices=get_args(Space),
        default="landmark",
        help="gene space: 978 landmarks, 10,174 BING or all 12,328 (default landmark)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--n-moas", type=positive_int, default=None, help="mechanisms of action")
    p.add_argument("--n-compounds", type=positive_int, default=None, help="compounds")
    p.add_argument(
        "--n-cells", type=positive_int, default=9, help="cell lines, 1 to 16 (default 9)"
    )
    p.add_argument(
        "--n-replicates",
        type=positive_int,
        default=3,
        help="replicate plate sets per condition group (default 3)",
    )
    p.add_argument(
        "--no-genetic",
        dest="genetic",
        action="store_false",
        help="compounds and vehicles only: no shRNA, CRISPR or overexpression signatures "
        "(and no geneticinfo.txt): the compound-only layout, byte for byte",
    )
    p.add_argument(
        "--n-genetic-genes",
        type=int,
        default=None,
        help="genes with genetic perturbagens (default max(120, 2 x MoAs), at most 978)",
    )
    p.add_argument(
        "--genetic-strength",
        type=float,
        default=1.0,
        help="scale of the planted genetic effects (default 1; 0: no signal)",
    )
    p.add_argument(
        "--block-size",
        type=positive_int,
        default=None,
        help="signatures generated per block (default: about 64 MB of values)",
    )
    p.add_argument(
        "--compression",
        choices=["none", "gzip"],
        default="none",
        help="GCTx matrix compression (default none, the reference layout)",
    )
    p.add_argument(
        "--force", action="store_true", help="write into OUTDIR even if it already holds files"
    )
    add_cluster_args(p)
    p.set_defaults(func=run_synth)


def run_synth(args) -> int:
    from cmapdask.io.atomic import check_parent, url_to_fs
    from cmapdask.synthetic import synth_design, write_synthetic

    design = synth_design(
        args.n_sigs,
        genes=args.genes,
        seed=args.seed,
        n_moas=args.n_moas,
        n_compounds=args.n_compounds,
        n_cells=args.n_cells,
        n_replicates=args.n_replicates,
        genetic=args.genetic,
        n_genetic_genes=args.n_genetic_genes,
        genetic_strength=args.genetic_strength,
    )
    check_parent(args.outdir)
    fs, path = url_to_fs(args.outdir)
    if fs.exists(path) and not fs.isdir(path):
        raise InputError(f"{args.outdir}: exists and is not a folder")
    if fs.isdir(path) and fs.ls(path) and not args.force:
        raise InputError(f"{args.outdir}: folder is not empty (use --force to write into it)")
    say(
        args,
        f"cmapdask: synthetic {design.n_sigs} x {design.n_genes} ({design.genes}), "
        f"{design.n_moas} MoAs, {design.n_compounds} compounds, "
        + (f"{design.n_genetic_genes} genes knocked down, " if design.genetic else "")
        + f"seed {design.seed}",
    )
    with dask_client(args):
        paths = write_synthetic(
            args.outdir,
            design,
            block_size=args.block_size,
            compression=args.compression,
            progress=not args.quiet,
        )
    for path in paths.values():
        print(path)
    return 0
