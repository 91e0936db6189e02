"""GCT text read/write speed: prints figures, asserts nothing.

    python3 benchmarks/bench_gct.py [--sigs 2000] [--repeat 3]

For the fixtures 22,268 x 1 (trichostatin A) and 978 x 371 (gctv13_01), and a synthetic
978 x --sigs Level-5-like file, prints the best-of-N time of ``read_gct`` and, measured in
the same run, of a plain-Python line-splitting parser (the baseline ``read_gct`` replaces)
and their ratio; then the time of ``write_gct``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from cmapdask.io.gct import read_gct, write_gct

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def naive_read(path: Path) -> np.ndarray:
    """Line-by-line str.split + float(): what a parser without pandas' C reader does."""
    lines = path.read_text().splitlines()
    nrow, ncol, nrm, ncm = (int(c) for c in lines[1].split("\t")[:4])
    rows = lines[3 + ncm :]
    return np.array(
        [[math.nan if v == "NaN" else float(v) for v in r.split("\t")[1 + nrm :]] for r in rows],
        dtype=np.float32,
    ).T


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sigs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        n_gene = 978
        synth = xr.Dataset(
            {"expr": (("sig", "gene"), rng.standard_normal((args.sigs, n_gene), np.float32))},
            coords={
                "sig": [f"SIG{i:07d}" for i in range(args.sigs)],
                "gene": [str(1000 + i) for i in range(n_gene)],
                "pert_iname": ("sig", np.array([f"cpd{i % 97}" for i in range(args.sigs)], object)),
                "pert_idose": ("sig", rng.choice([0.1, 1.0, 10.0], args.sigs)),
                "gene_symbol": ("gene", np.array([f"G{i}" for i in range(n_gene)], object)),
            },
        )
        synth_path = Path(tmp) / "synthetic.gct"
        t_write = best(lambda: write_gct(synth, synth_path), args.repeat)
        files = [
            ("trichostatin 22268x1", FIXTURES / "cmapm" / "trichostatina_mcf7_10um_score.gct"),
            ("gctv13_01 978x371", FIXTURES / "cmapm" / "gctv13_01.gct"),
            (f"synthetic 978x{args.sigs}", synth_path),
        ]
        print(f"{'file':<26}{'MB':>7}{'read_gct s':>12}{'naive s':>10}{'ratio':>8}")
        for label, path in files:
            t_ours = best(lambda p=path: read_gct(p), args.repeat)
            t_naive = best(lambda p=path: naive_read(p), args.repeat)
            mb = path.stat().st_size / 2**20
            print(f"{label:<26}{mb:>7.1f}{t_ours:>12.3f}{t_naive:>10.3f}{t_naive / t_ours:>7.1f}x")
        mb = synth_path.stat().st_size / 2**20
        print(f"write_gct synthetic 978x{args.sigs}: {t_write:.3f} s ({mb / t_write:.1f} MB/s)")


if __name__ == "__main__":
    main()
