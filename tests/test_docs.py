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


def _methods_cells() -> list[str]:
    import re

    text = (ROOT / "docs" / "methods.md").read_text()
    cells = re.findall(r"```\{code-cell\} python\n(.*?)```", text, re.S)
    return ["\n".join(ln for ln in c.splitlines() if not ln.startswith(":")) for c in cells]


def test_methods_rows_are_computed_not_typed():
    """Every measured figure of the methods table is an f-string of a code cell's value.

    Rows are the 4-tuples (score, reference, measured, TOL key) the cells add to ``rows``;
    the tolerance is looked up in the one ``TOL`` dict, never typed per row.
    """
    import ast

    trees = [ast.parse(c) for c in _methods_cells()]
    tol = None
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TOL":
                tol = ast.literal_eval(node.value)
    assert tol, "methods.md defines the TOL dict"
    rows = [
        n
        for tree in trees
        for n in ast.walk(tree)
        if isinstance(n, ast.Tuple) and len(n.elts) == 4 and isinstance(n.elts[3], ast.Constant)
    ]
    assert len(rows) >= 12  # loops add several rows from one tuple
    for row in rows:
        measured, key = row.elts[2], row.elts[3].value
        assert key in tol, f"row {ast.unparse(row)}: tolerance key {key!r} not in TOL"
        if isinstance(measured, ast.Constant):  # only rows without a Broad file
            assert key == "none" and not any(ch.isdigit() for ch in measured.value), (
                f"a typed figure: {ast.unparse(row)}"
            )
        else:
            assert isinstance(measured, ast.JoinedStr) and any(
                isinstance(v, ast.FormattedValue) for v in measured.values
            ), f"not computed: {ast.unparse(row)}"
