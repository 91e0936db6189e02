"""Import cost: ``import cmapdask`` and xarray's engine discovery (which imports every
backend's package), now and at a baseline revision, in the same run.

    python3 benchmarks/bench_import.py [--baseline REV] [--repeat 7]

Each figure is the median of ``--repeat`` fresh interpreters. ``import cmapdask`` is the
cumulative time ``python -X importtime`` reports for the package (target: under 0.5 s);
the engine discovery is ``xr.backends.list_engines()`` after ``import xarray``. The
baseline is the package as it was at ``REV`` (``git archive``), imported the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT = "import cmapdask"
ENGINES = """
import time, xarray
t = time.perf_counter(); xarray.backends.list_engines(); print(time.perf_counter() - t)
"""
HEAVY = """
import sys, cmapdask
print(",".join(m for m in ("numba", "h5py", "s3fs", "zarr", "xarray", "pyarrow", "fastapi",
                           "matplotlib", "plotly") if m in sys.modules) or "-")
"""


def _run(code: str, path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(path), "DASK_CONFIG": tempfile.mkdtemp()}
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
    )


def import_seconds(path: Path) -> float:
    err = _run(IMPORT, path, "-X", "importtime").stderr
    line = [x for x in err.splitlines() if x.rstrip().endswith("| cmapdask")][-1]
    return int(line.split("|")[1]) / 1e6


def measure(path: Path, repeat: int) -> dict:
    _run(IMPORT, path)  # bytecode written, files in the page cache
    imp = statistics.median(import_seconds(path) for _ in range(repeat))
    eng = statistics.median(float(_run(ENGINES, path).stdout) for _ in range(repeat))
    return {"import": imp, "engines": eng, "heavy": _run(HEAVY, path).stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=None, help="git revision to compare with")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rows = [("this tree", measure(ROOT, args.repeat))]
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline, "cmapdask"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            rows.append((f"baseline {args.baseline}", measure(Path(tmp), args.repeat)))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.repeat}")
    print(f"{'':22} {'import cmapdask':>15} {'list_engines':>13}  heavy modules loaded by import")
    for name, r in rows:
        print(f"{name:22} {r['import']:>13.3f} s {r['engines']:>11.3f} s  {r['heavy']}")
    if len(rows) == 2:
        a, b = rows[0][1], rows[1][1]
        print(
            f"{'baseline / this tree':22} {b['import'] / a['import']:>13.1f} x "
            f"{b['engines'] / a['engines']:>11.1f} x"
        )


if __name__ == "__main__":
    main()
