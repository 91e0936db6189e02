"""The command line, a real multi-process cluster, and MoA recovery on synthetic data."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from cmapdask.cli import main
from cmapdask.connectivity.index import build_index
from cmapdask.connectivity.query import query
from cmapdask.connectivity.results import summarize
from cmapdask.io.store import write_store
from cmapdask.synthetic import synth_dataset, synth_design, synth_truth
from tests.test_connectivity_query import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "s.zarr")
    ds = make_store(path, seed=5, n_sig=30)
    return path, ds


def _gmt(path, sets):
    with open(path, "w") as fh:
        for k, v in sets.items():
            fh.write("\t".join([k, "desc", *v]) + "\n")
    return str(path)


def test_cli_index_query_introspect_background(store, tmp_path, capsys):
    url, ds = store
    g = list(ds["gene"].values)
    assert (
        main(
            [
                "query",
                url,
                "--genes-up",
                ",".join(g[:5]),
                "--genes-down",
                ",".join(g[5:10]),
                "--out",
                str(tmp_path / "x"),
                "--space",
                "all",
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 2
    )
    assert "cmapdask index" in capsys.readouterr().err
    assert main(["index", url, "--space", "all", "--scheduler", "none", "--quiet"]) == 0
    assert (
        main(
            [
                "background",
                url,
                "--space",
                "all",
                "--reference",
                "all",
                "--n-top",
                "5",
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    up = _gmt(tmp_path / "up.gmt", {"q1_UP": g[:6], "q2_UP": g[10:16]})
    dn = _gmt(tmp_path / "dn.gmt", {"q1_DN": g[20:26] + ["MISSING"], "q2_DN": g[30:36]})
    out = str(tmp_path / "res")
    assert (
        main(
            [
                "query",
                url,
                "--up",
                up,
                "--down",
                dn,
                "--out",
                out,
                "--space",
                "all",
                "--scheduler",
                "none",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "1 down dropped" in err
    assert os.path.exists(os.path.join(out, "matrices/gutc/ps_pert_summary.gctx"))
    assert os.path.exists(os.path.join(out, "arfs/q2/query_result.parquet"))
    assert (
        main(
            [
                "introspect",
                url,
                "--space",
                "all",
                "--n-top",
                "5",
                "--out",
                str(tmp_path / "intro"),
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    assert os.path.exists(str(tmp_path / "intro" / "ncs.gctx"))
    # bad input is one line and exit code 2
    bad = _gmt(tmp_path / "bad.gmt", {"q1_DN": g[:6]})
    assert (
        main(
            [
                "query",
                url,
                "--up",
                up,
                "--down",
                bad,
                "--out",
                out,
                "--space",
                "all",
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 2
    )


@pytest.mark.cluster
def test_identical_on_multiprocess_cluster(store, cluster_client):
    # a real `dask scheduler` and two `dask worker` processes (tests/conftest.py)
    from distributed import get_task_stream

    url, ds = store
    build_index(url, space="all", chunk_rows=7)
    g = list(ds["gene"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = query(
            url,
            {"a": g[:6], "b": g[3:9]},
            {"a": g[20:26], "b": g[30:35]},
            space="all",
            chunk_rows=7,
        )
    local = res.compute(scheduler="sync")
    with get_task_stream(cluster_client) as ts:
        remote = res.compute()
    assert len({t["worker"] for t in ts.data}) == 2  # both worker processes took tasks
    for v in local.data_vars:
        np.testing.assert_array_equal(local[v].values, remote[v].values)


def test_moa_recovered_on_synthetic(tmp_path):
    design = synth_design(2304, seed=3, n_moas=4, n_compounds=16)
    ds = synth_dataset(design, metadata="tables").compute()
    url = str(tmp_path / "syn.zarr")
    write_store(ds, url)
    build_index(url, space="landmark")
    strong = np.flatnonzero(
        (ds["pert_type"].values == "trt_cp") & (ds["pert_idose"].values == "10 uM")
    )
    hits = []
    for k in (0, 7, 19):
        i = strong[k]
        order = np.argsort(-ds["expr"].values[i], kind="stable")
        genes = ds["gene"].values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = query(
                url, list(genes[order[:50]]), list(genes[order[-50:]]), space="landmark", tau="none"
            )
        summ = summarize(res).compute()
        ps = summ["ns_pert_summary"].values[0]
        perts = summ["pert_summary"].values
        truth = synth_truth(design)
        moa = dict(zip(truth["pert_id"].values, truth["moa"].values, strict=False))
        own = ds["pert_id"].values[i]
        ranked = [p for p in perts[np.argsort(-ps)] if p not in (own, "DMSO")]
        top = ranked[:3]
        hits.append(np.mean([moa[p] == moa[own] for p in top]))
    # 16 compounds in 4 MoAs: chance is 3/15 = 0.2 per slot
    assert np.mean(hits) >= 0.8, hits
