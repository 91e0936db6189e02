"""CLUE's result folder as CLUE writes it (ALGORITHMS.md §12), through the command line."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml

from cmapdask.cli import main
from cmapdask.enrich import read_ranked_lists
from cmapdask.io.gct import read_gct
from cmapdask.io.gctx import read_gctx
from cmapdask.io.gmt import read_gmt
from tests.test_connectivity_query import make_store

PCLS = {"PCL_A": ["P0", "P1", "P2"], "PCL_B": ["P3", "P4", "P5"]}
LEVELS = ("pert_cell", "pert_summary", "pcl_cell", "pcl_summary")


def _gmt(path, sets):
    with open(path, "w") as fh:
        for k, v in sets.items():
            fh.write("\t".join([k, "desc", *v]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    url = str(tmp / "s.zarr")
    ds = make_store(url, seed=7, n_sig=30)
    assert main(["index", url, "--space", "all", "--scheduler", "none", "--quiet"]) == 0
    g = ds["gene"].values.tolist()
    up = _gmt(tmp / "up.gmt", {"q1_UP": g[:6], "q2_UP": g[10:16]})
    dn = _gmt(tmp / "dn.gmt", {"q1_DN": g[20:26] + ["MISSING"], "q2_DN": g[30:36]})
    pcl = _gmt(tmp / "pcl.gmt", PCLS)
    out = str(tmp / "res")
    args = ["query", url, "--up", up, "--down", dn, "--pcl", pcl, "--out", out]
    # no τ background, and --quiet: the folder itself must say that τ is NaN
    assert main([*args, "--space", "all", "--scheduler", "none", "--quiet"]) == 0
    return url, ds, out, (up, dn)


def test_layout_is_clues(result):
    _, _, out, _ = result
    files = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    clue = {
        "config.yaml",
        "success.txt",
        "matrices/query/up.gmt",
        "matrices/query/dn.gmt",
        *(f"matrices/query/{v}.gctx" for v in ("cs", "cs_up", "cs_dn", "leadf_up", "leadf_dn")),
        *(f"matrices/gutc/{v}_sig.gctx" for v in ("cs", "ns", "ps")),
        "matrices/gutc/query_info.txt",
        *(f"matrices/gutc/{k}_{lvl}.gctx" for k in ("ns", "ps") for lvl in LEVELS),
        *(
            f"arfs/{q}/{f}"
            for q in ("q1", "q2")
            for f in (
                "pert_id_cell.gct",
                "pert_id_summary.gct",
                "pcl_cell.gct",
                "pcl_summary.gct",
                "query_info.txt",
            )
        ),
    }
    # .cmapdask marks the folder as ours (a later --overwrite may replace it, nothing else)
    ours = {"query_info.tsv", "report.txt", "provenance.json", ".cmapdask"} | {
        f"arfs/{q}/query_result.{e}" for q in ("q1", "q2") for e in ("parquet", "tsv")
    }
    assert files == clue | ours
    cfg = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert cfg["metric"] == "wtcs" and cfg["es_tail"] == "both" and cfg["feature_space"] == "all"
    assert open(os.path.join(out, "success.txt")).read().strip() == "success"
    info = pd.read_csv(os.path.join(out, "matrices/gutc/query_info.txt"), sep="\t")
    assert info.columns.tolist() == ["cid", "desc", "query_id"]
    assert info["query_id"].tolist() == ["q1", "q2"]
    arf = pd.read_csv(os.path.join(out, "arfs/q1/query_info.txt"), sep="\t")
    assert arf["query_id"].tolist() == ["q1"] and arf["n_down_dropped"].tolist() == [1]


def test_submitted_sets_are_kept_and_requery_the_same(result, tmp_path):
    url, ds, out, _ = result
    g = ds["gene"].values.tolist()
    q_up = read_gmt(os.path.join(out, "matrices/query/up.gmt"))
    q_dn = read_gmt(os.path.join(out, "matrices/query/dn.gmt"))
    # as submitted: the gene outside the space too
    assert q_up == {"q1": g[:6], "q2": g[10:16]}
    assert q_dn == {"q1": [*g[20:26], "MISSING"], "q2": g[30:36]}
    again = str(tmp_path / "again")
    args = ["query", url, "--up", os.path.join(out, "matrices/query/up.gmt")]
    args += ["--down", os.path.join(out, "matrices/query/dn.gmt"), "--out", again]
    assert main([*args, "--space", "all", "--scheduler", "none", "--quiet"]) == 0
    a = read_gctx(os.path.join(out, "matrices/query/cs.gctx"))["expr"].values
    b = read_gctx(os.path.join(again, "matrices/query/cs.gctx"))["expr"].values
    np.testing.assert_array_equal(a, b)


def test_summary_row_fields_are_the_broads(result):
    _, ds, out, _ = result
    g = os.path.join(out, "matrices", "gutc")
    pc = read_gctx(os.path.join(g, "ns_pert_cell.gctx"))
    assert {"pert_id", "cell_id"} <= set(pc.coords) and "pert_cell_pert_id" not in pc.coords
    for rid, p, c in zip(
        pc["gene"].values, pc["pert_id"].values, pc["cell_id"].values, strict=True
    ):
        assert rid == f"{p}:{c}"
    ps = read_gctx(os.path.join(g, "ps_pert_summary.gctx"))
    assert ps["pert_id"].values.tolist() == ps["gene"].values.tolist()
    for lvl in ("pcl_cell", "pcl_summary"):
        m = read_gctx(os.path.join(g, f"ns_{lvl}.gctx"))
        assert "pcl_size" in m.coords and (m["pcl_size"].values >= 2).all()
    summ = read_gctx(os.path.join(g, "ns_pcl_summary.gctx"))
    present = {p for p in ds["pert_id"].values}
    for name, size in zip(summ["gene"].values, summ["pcl_size"].values, strict=True):
        assert size == len(present & set(PCLS[name]))
    # the folder's reader (enrichment of query results) reads the new layout
    lists = read_ranked_lists(out, variable="ns_pert_cell")
    assert lists["pert_id"].values.tolist() == pc["pert_id"].values.tolist()


def test_missing_tau_is_said_in_the_folder(result):
    _, _, out, _ = result
    report = open(os.path.join(out, "report.txt")).read()
    assert "no tau background" in report and "ps_sig and every ps_* summary" in report
    assert "query q1: 6 up, 6 down genes used; 0 up and 1 down dropped" in report
    for q in ("q1", "q2"):
        assert np.isnan(read_gct(os.path.join(out, "arfs", q, "pert_id_summary.gct")).expr).all()


@pytest.mark.parametrize(
    "names, message",
    [
        (("a b", "a_b"), "query ids 'a b' and 'a_b' both become the result folder arfs/a_b"),
        (("X", "x"), "query ids 'X' and 'x' both become the result folder arfs/x"),
        (("..", "q"), "query id '..' cannot name a result folder"),
    ],
)
def test_clashing_query_ids_are_refused_before_computing(tmp_path, capsys, names, message):
    # a store with no index at all: the clash must be reported first, nothing computed
    url = str(tmp_path / "s.zarr")
    ds = make_store(url, n_sig=12)
    g = ds["gene"].values.tolist()
    up = _gmt(tmp_path / "up.gmt", {names[0]: g[:5], names[1]: g[5:10]})
    dn = _gmt(tmp_path / "dn.gmt", {names[0]: g[10:15], names[1]: g[15:20]})
    out = tmp_path / "res"
    args = ["query", url, "--up", up, "--down", dn, "--out", str(out), "--space", "all"]
    assert main([*args, "--scheduler", "none", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "index" not in err
    assert not out.exists()
