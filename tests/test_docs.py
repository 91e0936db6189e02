"""The documentation site builds with warnings as errors, executing every tutorial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_every_page_built(built):
    pages = {p.relative_to(built).as_posix() for p in built.rglob("*.html")}
    for src in (ROOT / "docs").rglob("*.md"):
        rel = src.relative_to(ROOT / "docs")
        if rel.parts[0] in ("_build", "jupyter_execute") or rel.name in (
            "ALGORITHMS.md",
            "errors.md",
        ):
            continue
        assert rel.with_suffix(".html").as_posix() in pages, rel


def test_reference_lists_every_public_function_and_command(built):
    import cmapdask
    from cmapdask.cli import build_parser

    api = (built / "reference" / "api.html").read_text()
    missing = [n for n in cmapdask.__all__ if not n.startswith("__") and f"cmapdask.{n}" not in api]
    assert not missing, missing
    cli = (built / "reference" / "cli.html").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices, "no commands"
    assert not [c for c in sub.choices if f">{c}<" not in cli and f"cmapdask {c}" not in cli]


def test_glossary_covers_the_terms(built):
    text = (ROOT / "docs" / "concepts.md").read_text()
    for term in (
        "Level",
        "landmark",
        "BING",
        "Touchstone",
        "Introspect",
        "WTCS",
        "NCS",
        "τ",
        "FDR",
        "pert × cell",
        "PCL",
        "MoA",
        "TAS",
        "MODZ",
        "Replicate statistics",
        "Feature space",
        "Store",
        "Members",
        "CURRENT",
    ):
        assert term in text, term


def test_tutorials_ran(built):
    html = (built / "tutorials" / "disease-query.html").read_text()
    assert "of the 20 most negative" in html and "Traceback" not in html


@pytest.mark.parametrize(
    "page,outputs",
    [
        ("similarity-recall", ["dashboard: http", "neighbours share the MoA", "overall AUROC 0."]),
        ("clustering", ["communities: 8", "MoAs are the significant top hit of a cluster"]),
        ("nightly-rebuild", ["published v000002 incremental 100 new of 500", "current: v000003"]),
        ("data-access", ["wrote agonists.gctx", "identical values: True", "level5_beta_trt_cp"]),
        (
            "remote-cluster",
            ["dashboard: http", "have the planted MoA", "neighbours sharing their signature"],
        ),
    ],
)
def test_each_tutorial_produced_its_key_output(built, page, outputs):
    html = (built / "tutorials" / f"{page}.html").read_text()
    assert "Traceback" not in html, page
    for text in outputs:
        assert text in html, (page, text)
