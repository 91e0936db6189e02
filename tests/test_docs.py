"""The documentation site builds with warnings as errors, executing every tutorial."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
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


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
def test_reference_lists_every_public_function_and_command(built):
    import cmapdask
    from cmapdask.cli import build_parser

    api = (built / "reference" / "api.html").read_text()
    missing = [n for n in cmapdask.__all__ if not n.startswith("__") and f"cmapdask.{n}" not in api]
    assert not missing, missing
    sys.path.insert(0, str(ROOT / "docs"))
    import _generate

    for module in _generate.SUBMODULES:  # cmapdask.data.*, downloads included
        names = _generate.submodule_names(module)
        assert names and not [n for n in names if f"{module}.{n}" not in api], module
    assert "cmapdask.data.download.download" in api and "cmapdask.data.sigs" in api
    cli = (built / "reference" / "cli.html").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices, "no commands"
    assert not [c for c in sub.choices if f">{c}<" not in cli and f"cmapdask {c}" not in cli]


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
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


def test_glossary_and_faq_answer_what_clue_users_ask():
    concepts = (ROOT / "docs" / "concepts.md").read_text()
    faq = (ROOT / "docs" / "faq.md").read_text()
    for cell in ("A375", "A549", "HA1E", "HCC515", "HEPG2", "HT29", "MCF7", "PC3", "VCAP"):
        assert cell in concepts and cell in faq, cell
    for text in ("Data levels 1 and 2", "Exemplar signature", "10 to 150 genes", "|τ| ≥ 90"):
        assert text in concepts, text
    for text in ("τ of −95", "τ is not a p-value", "10 to 150", "Level 1", "TAS", "exemplar"):
        assert text in faq, text


def test_release_notes_are_days_of_the_history():
    notes = (ROOT / "docs" / "release-notes.md").read_text()
    days = re.findall(r"^## (\d{4}-\d{2}-\d{2})$", notes, flags=re.M)
    log = subprocess.run(
        ["git", "log", "--format=%ad", "--date=short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if log.returncode != 0:
        pytest.skip("not a git checkout")
    history = set(log.stdout.split())
    assert days and days == sorted(days, reverse=True) and set(days) <= history, days
    assert min(history) in days  # from the first day on


def test_citation_is_cff_1_2_citing_the_broads_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    for key in ("message", "title", "authors"):
        assert cff[key], key
    for person in cff["authors"] + [a for r in cff["references"] for a in r["authors"]]:
        assert person.get("name") or person.get("family-names"), person
    (paper,) = cff["references"]
    assert paper["type"] == "article" and paper["authors"][0]["family-names"] == "Subramanian"
    assert paper["doi"] == "10.1016/j.cell.2017.10.049" and paper["year"] == 2017
    assert re.fullmatch(r"10\.\d{4,9}/\S+", paper["doi"])


def test_every_option_of_every_command_has_help():
    from cmapdask.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        (command, action.option_strings or action.dest)
        for command, parser in sub.choices.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert not missing, missing


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
def test_site_works_offline(built):
    """No page loads a script or style sheet from the network: MathJax is in the site."""
    remote = re.compile(
        r"<(?:script[^>]*\ssrc|link[^>]*\shref)=[\"'](?:https?:)?//[^\"']+", re.IGNORECASE
    )
    pages = list(built.rglob("*.html"))
    found = {p.name: m for p in pages if (m := remote.findall(p.read_text()))}
    assert pages and not found, found
    methods = (built / "methods.html").read_text()
    assert 'src="_static/mathjax/tex-chtml.js"' in methods
    assert (built / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
    fonts = built / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("*.woff")), "MathJax's fonts are not in the site"


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
def test_code_blocks_wrap_instead_of_being_cut(built):
    assert "_static/cmapdask.css" in (built / "getting-started.html").read_text()
    css = (built / "_static" / "cmapdask.css").read_text()
    assert "white-space: pre-wrap" in css and "overflow-x: auto" in css


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
def test_tutorials_ran(built):
    html = (built / "tutorials" / "disease-query.html").read_text()
    assert "of the 20 most negative" in html and "Traceback" not in html


@pytest.mark.slow  # the whole site built and executed: minutes (CI: -m slow)
@pytest.mark.parametrize(
    "page,outputs",
    [
        ("similarity-recall", ["dashboard: http", "neighbours share the MoA", "overall AUROC 0."]),
        ("clustering", ["communities: 8", "MoAs are the significant top hit of a cluster"]),
        ("nightly-rebuild", ["published v000002 incremental 100 new of 500", "current: v000003"]),
        (
            "first-real-query",
            [
                "35.5 GB  level5/level5_beta_trt_cp_n720216x12328.gctx",
                "treated_vs_ctl_UP: 100 genes, treated_vs_ctl_DN: 100 genes",
                "20 of the 20 most negative WTCS are signatures of the reversed MoA",
                "MoA sets (not CLUE's PCLs)",
            ],
        ),
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
