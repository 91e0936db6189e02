"""Introspect, τ backgrounds, summaries and the CLUE-style result folder on a small store."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest

from cmapdask.connectivity.index import build_index
from cmapdask.connectivity.introspect import build_background, introspect
from cmapdask.connectivity.query import query
from cmapdask.connectivity.results import summarize, write_result
from cmapdask.connectivity.summaries import maxq
from cmapdask.connectivity.tau import background_table, tau_binned
from tests._connectivity_helpers import reference_es
from tests.test_connectivity_query import make_store

PCLS = {"PCL_A": ["P0", "P1", "P2"], "PCL_B": ["P3", "P4"], "PCL_C": ["P7", "NOPE"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("bg") / "s.zarr")
    ds = make_store(path, seed=11, n_sig=36, null=True)
    build_index(path, space="all", chunk_rows=10)
    return path, ds


def test_introspect_against_reference(store):
    url, ds = store
    intro = introspect(url, where="is_touchstone == 1", space="all", n_top=5)
    sel = np.flatnonzero(ds["is_touchstone"].values == 1)
    expr = ds["expr"].values[sel].astype(float)
    n = expr.shape[1]
    order = np.argsort(-expr, axis=1, kind="stable")
    raw = np.zeros((sel.size, sel.size))
    for i in range(sel.size):
        up, dn = order[i, :5], order[i, n - 5 :]
        for j in range(sel.size):
            eu = reference_es(expr[j], up, weighted=True)[0]
            ed = reference_es(expr[j], dn, weighted=True)[0]
            raw[i, j] = (eu - ed) / 2 if np.sign(eu) != np.sign(ed) else 0.0
    cs = intro["cs"].values
    np.testing.assert_allclose(cs, (raw + raw.T) / 2, atol=1e-6)
    for v in ("cs", "ncs", "ps"):
        m = intro[v].values
        np.testing.assert_allclose(m, m.T, atol=1e-6)
    assert np.all(np.abs(intro["ps"].values[np.isfinite(intro["ps"].values)]) <= 100)


def test_background_tau_and_summaries(store, tmp_path):
    url, ds = store
    build_background(url, reference="is_touchstone == 1", space="all", pcls=PCLS, n_top=5)
    genes = list(ds["gene"].values)
    up = {"a": genes[:6], "b": genes[10:14]}
    dn = {"a": genes[20:26], "b": genes[30:37]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = query(url, up, dn, space="all", reference="touchstone")
        exact = query(url, up, dn, space="all", reference="touchstone", tau="exact")
    from cmapdask.io.store import open_member

    bg = open_member(url, "background/all")
    ref_ids = list(bg["sig_bg"].values)
    ncs = res["ncs"].values
    pos = [list(ds["sig"].values).index(s) for s in ref_ids]
    # τ at the signature level: a table per background signature, interpolated
    want = tau_binned(ncs[:, pos], bg["tables_sig"].values)
    np.testing.assert_allclose(res["ps"].values[:, pos], want, atol=1e-4)
    others = np.setdiff1d(np.arange(ds.sizes["sig"]), pos)
    assert np.isnan(res["ps"].values[:, others]).all()
    # tables were built from the cell-masked symmetric introspect NCS
    intro = introspect(url, where="is_touchstone == 1", space="all", n_top=5)
    m = intro["ncs"].values.astype(float)
    cells = intro["cell_id"].values
    m[cells[:, None] != cells[None, :]] = np.nan
    np.testing.assert_allclose(
        bg["tables_sig"].values[:, ::50],
        np.stack([background_table(m[:, j]) for j in range(m.shape[1])])[:, ::50],
        atol=1e-3,
    )
    # exact τ: fraction of the reference compendium below |ncs|
    ref = bg["ncs_ref"].values.astype(float)
    j = 0
    col = np.abs(ref[:, j][~np.isnan(ref[:, j])])
    x = ncs[0, pos[j]]
    assert exact["ps"].values[0, pos[j]] == pytest.approx(
        np.sign(x) * 100 * np.mean(col < abs(x)), abs=1e-3
    )
    # FDR against the null signatures is present
    assert np.isfinite(res["fdr_q_nlog10"].values).all()
    summ = summarize(res, pcls=PCLS)
    pc = summ["ns_pert_cell"]
    for k, lab in enumerate(pc["pert_cell"].values[:5]):
        p, c = lab.split(":")
        mask = (ds["pert_id"].values == p) & (ds["cell_id"].values == c)
        np.testing.assert_allclose(pc.values[:, k], maxq(ncs[:, mask]), atol=1e-5)
    assert "PCL_C" not in summ["pcl_summary"].values  # one member present only
    ps_lvl = summ["ps_pert_summary"].values
    assert np.isfinite(ps_lvl).any() and np.nanmax(np.abs(ps_lvl)) <= 100
    out = write_result(res, str(tmp_path / "res"), summaries=summ)
    for f in (
        "matrices/query/cs.gctx",
        "matrices/query/leadf_dn.gctx",
        "matrices/gutc/ps_sig.gctx",
        "matrices/gutc/ns_pcl_summary.gctx",
        "arfs/a/query_result.parquet",
        "arfs/b/query_result.tsv",
        "query_info.tsv",
    ):
        assert os.path.exists(os.path.join(out, f)), f
    with h5py.File(os.path.join(out, "matrices/query/cs.gctx")) as h:
        # rows (rid) are signatures, columns (cid) queries; on disk (query, sig)
        assert h["/0/DATA/0/matrix"].shape == (2, ds.sizes["sig"])
        np.testing.assert_allclose(h["/0/DATA/0/matrix"][()], res["cs"].values, atol=1e-6)
    # CLUE's per-query tables: τ of that query to 2 decimals, one column, ids only
    from cmapdask.io.gct import read_gct

    for level, fn in (("pert_summary", "pert_id_summary"), ("pcl_cell", "pcl_cell")):
        arf = read_gct(os.path.join(out, "arfs", "b", f"{fn}.gct"))
        want = summ[f"ps_{level}"].sel(query="b")
        assert arf["sig"].values.tolist() == ["b"] and list(arf.coords) == ["sig", "gene"]
        assert arf["gene"].values.tolist() == want[level].values.tolist()
        np.testing.assert_array_equal(arf["expr"].values[0], np.round(want.values, 2))
    assert np.isfinite(read_gct(os.path.join(out, "arfs/a/pert_id_summary.gct")).expr).any()
    t = pd.read_parquet(os.path.join(out, "arfs/a/query_result.parquet"))
    assert {"sig_id", "tau", "ncs", "fdr_q_nlog10", "pert_id", "cell_id"} <= set(t.columns)
    assert len(t) == ds.sizes["sig"]


def test_random_query_fdr_and_lazy_summaries(store):
    import dask

    url, ds = store
    genes = list(ds["gene"].values)
    up, dn = {"a": genes[:6]}, {"a": genes[20:26]}

    def boom(*a, **k):
        raise AssertionError("computed while building")

    with warnings.catch_warnings(), dask.config.set(scheduler=boom):
        warnings.simplefilter("ignore")
        res = query(url, up, dn, space="all", fdr="random", n_random=15, tau="none")
        summ = summarize(res, pcls=PCLS)
        lazy_null = query(url, up, dn, space="all", fdr="null")
    assert all(dask.is_dask_collection(v.data) for v in lazy_null.data_vars.values())
    assert all(dask.is_dask_collection(v.data) for v in summ.data_vars.values())
    q = res["fdr_q_nlog10"].values
    assert np.all(np.isfinite(q)) and np.all(q >= -1e-12)  # -log10(1 + eps) < 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = query(url, up, dn, space="all", fdr="random", n_random=15, tau="none")
        other = query(url, up, dn, space="all", fdr="random", n_random=15, tau="none", seed=9)
    np.testing.assert_array_equal(again["fdr_q_nlog10"].values, q)
    assert not np.array_equal(other["fdr_q_nlog10"].values, q)
    assert "random queries" in res.attrs["cmapdask"]["fdr"]
    np.testing.assert_allclose(
        summ["ns_pert_summary"].values,
        summarize(res.compute(), pcls=PCLS)["ns_pert_summary"].values,
    )
