"""``cmapdask demo``: the README's first command, end to end on a small release."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_finds_the_planted_moa_target_and_reversers(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmapdask",
            "demo",
            "--out",
            str(out),
            "--n-sigs",
            "3000",
            "--scheduler",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr  # progress and results go to stderr
    assert "start it with: cmapdask serve" in text  # the last step, not from a terminal
    hits = int(re.search(r"(\d+)/10 of the top perturbagens have the planted MoA", text).group(1))
    assert hits >= 6, text  # chance is about 3/10 (4 MoAs)
    # results by perturbagen class: the MoA's target is the strongest knockdown
    target = re.search(r"annotated target (G\d+)\)", text).group(1)
    for cls in ("CP", "KD", "CRISPR", "OE"):
        assert re.search(rf"^\s+{cls}\s+\S+\s+\S+\s+τ =", text, re.M), cls
    assert re.search(rf"^\s+KD\s+CGS001-{target[1:]}\s+{target}\s", text, re.M), text
    # target identification: the planted target of the first compound comes first
    rank = int(re.search(r"its planted target ranks (\d+) of 120", text).group(1))
    assert rank <= 3, text
    # disease query: the compounds that reverse the loss of an agonist's target
    m = re.search(r"(\d+)/10 of the restoring compounds are .* \(chance (\d+)%\)", text)
    assert int(m.group(1)) >= 4 and int(m.group(2)) < 40, text
    share = re.search(r"neighbours sharing the signature's MoA: (\d+)% \(chance (\d+)%\)", text)
    assert int(share.group(1)) > 2 * int(share.group(2)), text
    for path in (
        "store.zarr/index/landmark",
        "store.zarr/background/landmark",
        "store.zarr/similarity/pearson_landmark",
        "query/matrices/query/cs.gctx",
        "targets.tsv",
        "release/geneticinfo.txt",
    ):
        assert (out / path).exists(), path
    # a second run refuses to replace the folder without --force
    again = subprocess.run(
        [sys.executable, "-m", "cmapdask", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
