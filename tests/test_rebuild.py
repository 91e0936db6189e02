"""Nightly rebuilds: append, incremental = full, versions, kill/resume, real cluster, S3."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cmapdask.errors import InputError, MetadataError, StoreError
from cmapdask.io.gctx import write_gctx
from cmapdask.io.store import open_member
from cmapdask.rebuild import (
    append,
    current_version,
    list_versions,
    open_current,
    open_version,
    read_manifest,
    rebuild,
)
from cmapdask.rebuild.append import reconcile_fields
from cmapdask.rebuild.versions import retry
from cmapdask.synthetic import synth_dataset, synth_design

N_OLD, N_NEW, K = 200, 40, 10
MEMBER = "similarity/pearson_landmark"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rebuild_data")
    ds = synth_dataset(synth_design(N_OLD + N_NEW, seed=7), metadata="tables").compute()
    write_gctx(ds.isel(sig=slice(0, N_OLD)), d / "old.gctx")
    write_gctx(ds.isel(sig=slice(N_OLD, None)), d / "new.gctx")
    write_gctx(ds, d / "all.gctx")
    return {"dir": d, "ds": ds}


def _threads():
    return dask.config.set(scheduler="threads")


def _topk_reference(x: np.ndarray, k: int):
    """Plain numpy Pearson top-k (ties: smaller index first), self excluded."""
    z = x.astype(np.float64) - x.mean(1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c = z @ z.T
    np.fill_diagonal(c, np.nan)
    n = len(c)
    top = np.array([np.lexsort((np.arange(n), -np.nan_to_num(r, nan=-np.inf)))[:k] for r in c])
    bot = np.array([np.lexsort((np.arange(n), np.nan_to_num(r, nan=np.inf)))[:k] for r in c])
    return top, bot, np.take_along_axis(c, top, 1)


def _member(root, so=None):
    cur = open_current(root, storage_options=so)
    return cur, open_member(cur.attrs["store_url"], MEMBER, storage_options=so).compute()


def _staged(data, root, *, chunk_rows=30, block_size=48, so=None):
    """v1 from old.gctx published, v2 with new.gctx staged."""
    with _threads():
        append(root, data["dir"] / "old.gctx", chunk_rows=chunk_rows, storage_options=so)
        rebuild(root, k=K, block_size=block_size, storage_options=so)
        append(root, data["dir"] / "new.gctx", storage_options=so)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """A full rebuild from scratch of all signatures."""
    root = str(tmp_path_factory.mktemp("ref") / "coll")
    with _threads():
        append(root, data["dir"] / "all.gctx", chunk_rows=30)
        rebuild(root, k=K, block_size=48)
    return _member(root)


def _same(a, b):
    np.testing.assert_array_equal(a.top_index.values, b.top_index.values)
    np.testing.assert_array_equal(a.bottom_index.values, b.bottom_index.values)
    np.testing.assert_allclose(a.top_score.values, b.top_score.values, atol=1e-6)
    np.testing.assert_allclose(a.bottom_score.values, b.bottom_score.values, atol=1e-6)
    np.testing.assert_array_equal(a.top_id.values, b.top_id.values)
    np.testing.assert_array_equal(a.valid.values, b.valid.values)


@pytest.mark.parametrize("chunk_rows,block_size", [(30, 48), (64, 37), (500, None), (17, 200)])
def test_incremental_equals_full_and_numpy(data, reference, tmp_path, chunk_rows, block_size):
    root = str(tmp_path / "coll")
    _staged(data, root, chunk_rows=chunk_rows, block_size=block_size)
    with _threads():
        res = rebuild(root, k=K, block_size=block_size)
    assert (res.status, res.mode, res.n_new) == ("published", "incremental", N_NEW)
    cur, m = _member(root)
    ref_ds, ref_m = reference
    np.testing.assert_array_equal(cur["expr"].values, ref_ds["expr"].values)
    assert list(cur.indexes["sig"]) == list(ref_ds.indexes["sig"])
    for c in ref_ds.coords:
        assert cur[c].equals(ref_ds[c]), c
    _same(m, ref_m)
    top, bot, score = _topk_reference(data["ds"]["expr"].values, K)
    np.testing.assert_array_equal(m.top_index.values, top)
    np.testing.assert_array_equal(m.bottom_index.values, bot)
    np.testing.assert_allclose(m.top_score.values, score, atol=1e-5)
    # old rows gained new neighbours where they beat the old ones
    assert (m.top_index.values[:N_OLD] >= N_OLD).any()


def test_manifest_pointer_and_previous_version_unaffected(data, tmp_path):
    root = str(tmp_path / "coll")
    _staged(data, root)
    v1 = current_version(root)
    old = open_version(root, v1)
    old_expr = old["expr"].values.copy()
    old_m = open_member(old.attrs["store_url"], MEMBER).compute()
    with _threads():
        rebuild(root, k=K, block_size=48)
    v2 = current_version(root)
    assert v2 != v1
    # the previous version (sharing chunks, its last partial chunk rewritten in the new one)
    again = open_version(root, v1)
    np.testing.assert_array_equal(again["expr"].values, old_expr)
    np.testing.assert_array_equal(old_expr, data["ds"]["expr"].values[:N_OLD])
    _same(open_member(again.attrs["store_url"], MEMBER).compute(), old_m)
    man = read_manifest(root, v2)
    sha = hashlib.sha256((data["dir"] / "new.gctx").read_bytes()).hexdigest()
    assert man["inputs"]["gctx"]["sha256"] == sha
    assert man["status"] == "published" and man["parent"] == v1 and man["base_version"] == v1
    assert man["parameters"]["k"] == K and man["mode"] == "incremental"
    assert {"plan", "similarity", "members", "products", "append"} <= set(man["timings"])
    assert man["package_version"]
    assert not (tmp_path / "coll" / "work" / v2).exists()


def test_nothing_new_is_a_noop_and_full_republishes(data, tmp_path):
    root = str(tmp_path / "coll")
    _staged(data, root)
    with _threads():
        rebuild(root, k=K, block_size=48)
        n = len(list_versions(root))
        cur = current_version(root)
        res = rebuild(root, k=K, block_size=48)
        assert res.status == "nothing-new" and res.version == cur
        assert len(list_versions(root)) == n and current_version(root) == cur
        full = rebuild(root, k=K, block_size=48, full=True)
    assert full.mode == "full" and full.version != cur
    a = open_member(open_version(root, cur).attrs["store_url"], MEMBER).compute()
    _same(_member(root)[1], a)


def test_append_refuses_bad_input(data, tmp_path):
    d = data["dir"]
    root = str(tmp_path / "coll")
    with _threads():
        append(root, d / "old.gctx")
        with pytest.raises(MetadataError, match="already in"):
            append(root, d / "all.gctx")
        ds = data["ds"].isel(sig=slice(N_OLD, N_OLD + 5))
        write_gctx(ds.isel(gene=slice(0, 900)), d / "fewgenes.gctx")
        with pytest.raises(MetadataError, match="lacks 78 gene"):
            append(root, d / "fewgenes.gctx")
        bad = ds.assign_coords(pert_dose=("sig", np.array(["high"] * 5, dtype=object)))
        write_gctx(bad, d / "textdose.gctx")
        with pytest.raises(MetadataError, match="'pert_dose' is numeric .* but text"):
            append(root, d / "textdose.gctx")
        info = pd.DataFrame({"sig_id": list(ds.indexes["sig"]), "x": 1})
        info.to_csv(d / "info.txt", sep="\t", index=False)
        with pytest.raises(InputError, match="gene metadata is fixed"):
            append(root, d / "new.gctx", gene_info=d / "info.txt")
        assert len(list_versions(root)) == 1  # refused appends leave no version
        with pytest.raises(StoreError, match="no such collection"):
            rebuild(str(tmp_path / "nothing"))
        assert not (tmp_path / "nothing").exists()  # the lock created no folder


def test_reconcile_fields():
    old = {"a": np.array([1, 2]), "s": np.array(["x", None], dtype=object)}
    new = {"a": np.array([0.5]), "t": np.array(["y"], dtype=object)}
    out = reconcile_fields(old, new, 2, 1, where="w")
    np.testing.assert_array_equal(out["a"], [1.0, 2.0, 0.5])
    assert out["s"].tolist() == ["x", None, None] and out["t"].tolist() == [None, None, "y"]
    ints = reconcile_fields({"n": np.array([1])}, {"n": np.array([2])}, 1, 1, where="w")
    assert ints["n"].dtype == np.int64
    with pytest.raises(MetadataError, match="'s' is text"):
        reconcile_fields(old, {"s": np.array([3.0])}, 2, 1, where="w")


def test_graph_building_is_lazy(data, tmp_path):
    from cmapdask.rebuild.incremental import plan_blocks_incremental, topk_incremental

    root = str(tmp_path / "coll")
    _staged(data, root)
    v1 = current_version(root)
    ds = open_version(root, list_versions(root)[-1]["version"])
    prev = open_member(open_version(root, v1).attrs["store_url"], MEMBER)

    def boom(*a, **kw):
        raise AssertionError("computed while building the graph")

    with dask.config.set(scheduler=boom):
        tasks, layout = topk_incremental(
            ds, prev, N_OLD, str(tmp_path / "w"), metric="pearson", k=K, space="landmark", rows=48
        )
    old, new = plan_blocks_incremental(N_OLD, N_OLD + N_NEW, 48)
    assert len(tasks) == len(old) + len(new) == len(layout)
    assert [(lo, hi) for _, lo, hi in layout] == [*old, *new]


@pytest.mark.parametrize("n_old,n,rows", [(200, 240, 48), (192, 240, 48), (5, 6, 2), (10, 200, 7)])
def test_incremental_plan_fills_output_chunks(n_old, n, rows):
    from cmapdask.rebuild.incremental import plan_blocks_incremental

    old, new = plan_blocks_incremental(n_old, n, rows)
    blocks = [*old, *new]
    assert blocks[0][0] == 0 and blocks[-1][1] == n and old[-1][1] == n_old
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    for c in range(0, n, rows):  # each output chunk: at most one old and one new block
        inside = [b for b in blocks if c <= b[0] < c + rows]
        assert len(inside) <= 2 and all(hi <= c + rows for _, hi in inside)


def test_retry_of_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    assert retry(flaky, what="x", delay=0.001) == "ok" and len(calls) == 3
    with pytest.raises(FileNotFoundError):
        retry(lambda: open("/nonexistent/x"), what="x", delay=0.001)
    with pytest.raises(StoreError, match="failed after 2 attempts"):
        retry(
            lambda: (_ for _ in ()).throw(TimeoutError("slow")), what="x", attempts=2, delay=0.001
        )


@pytest.mark.slow  # every product of a rebuild, ~70 s; kill/resume and S3 end-to-end run in CI
def test_products_extended_shared_rebuilt_recomputed(data, tmp_path):
    """Index extended (= ranking every signature afresh), τ background shared while the
    reference set is unchanged and rebuilt when it changes, clusters recomputed."""
    from cmapdask import clustering
    from cmapdask.connectivity import (
        build_background,
        build_index,
        rank_descending,
        select_signatures,
    )
    from cmapdask.connectivity.index import space_genes

    d, ds = data["dir"], data["ds"]
    new = ds.isel(sig=slice(N_OLD, None))
    ref = "is_touchstone == 1 or pert_type == 'ctl_vehicle'"
    ts = select_signatures(new, ref)
    quiet = np.flatnonzero(~ts)[:10]
    rest = np.setdiff1d(np.arange(N_NEW), quiet)
    assert ts[rest].any()
    write_gctx(new.isel(sig=quiet), d / "new_quiet.gctx")
    write_gctx(new.isel(sig=rest), d / "new_rest.gctx")
    root = str(tmp_path / "coll")
    with _threads():
        append(root, d / "old.gctx", chunk_rows=30)
        rebuild(root, k=K, block_size=48)
        v1 = open_current(root).attrs["store_url"]
        build_index(v1, space="landmark", chunk_rows=64)
        perts = sorted(set(ds["pert_id"].values[ds["pert_type"].values == "trt_cp"]))
        pcls = {"PCL_A": perts[:4], "PCL_B": perts[4:9]}
        build_background(v1, reference=ref, space="landmark", pcls=pcls)
        nb = open_member(v1, MEMBER)
        clustering.write_clusters(
            clustering.graph_clusters(nb, method="louvain", k=5), v1, name="graph"
        )
        append(root, d / "new_quiet.gctx")
        r2 = rebuild(root, k=K, block_size=48)
        append(root, d / "new_rest.gctx")
        r3 = rebuild(root, k=K, block_size=48)
    how = [
        {p["member"]: p["how"] for p in read_manifest(root, r.version)["products"]}
        for r in (r2, r3)
    ]
    for h in how:
        assert h["index/landmark"].startswith("extended"), h
        assert h["clusters/graph"].startswith("recomputed"), h
        assert h[MEMBER].startswith("incremental"), h
    assert how[0]["background/landmark"].startswith("shared")
    assert how[1]["background/landmark"].startswith("rebuilt")
    cur = open_current(root)
    url = cur.attrs["store_url"]
    idx = open_member(url, "index/landmark")
    x = cur["expr"].values[:, space_genes(cur, "landmark")]
    assert idx.sizes["sig"] == N_OLD + N_NEW and idx.attrs["cmapdask"]["n_sig"] == N_OLD + N_NEW
    np.testing.assert_array_equal(idx["rank"].values, rank_descending(x).T)
    np.testing.assert_array_equal(idx["score"].values, x.T)
    bg = open_member(url, "background/landmark")
    want = select_signatures(cur, ref)
    assert list(bg["sig_bg"].values) == list(cur["sig"].values[want])
    # rebuilt with the same PCL sets: equal to building it afresh on a copy of the version
    shutil.copytree(url, tmp_path / "copy.zarr")
    with _threads():
        build_background(str(tmp_path / "copy.zarr"), reference=ref, space="landmark", pcls=pcls)
    fresh = open_member(str(tmp_path / "copy.zarr"), "background/landmark")
    assert bg.attrs["cmapdask"]["n_pcls"] == 2
    xr.testing.assert_equal(bg.compute(), fresh.compute())
    cl = open_member(url, "clusters/graph")
    ref = clustering.graph_clusters(open_member(url, MEMBER), method="louvain", k=5)
    np.testing.assert_array_equal(cl["cluster"].values, ref["cluster"].values)
    # the earlier versions still read as they were
    np.testing.assert_array_equal(
        open_member(v1, "index/landmark")["rank"].values, rank_descending(x[:N_OLD]).T
    )


def test_pert_matrix_and_hierarchical_clusters_recomputed(data, tmp_path):
    """A pert x pert similarity member and hierarchical clusters made from it are remade
    on the new version, equal to making them afresh there."""
    from cmapdask import clustering
    from cmapdask.similarity import pert_similarity, write_similarity

    root = str(tmp_path / "coll")
    pert, source = (
        "similarity/pearson_landmark_pert",
        "similarity/pearson_landmark_pert:pert_summary",
    )
    with _threads():
        append(root, data["dir"] / "old.gctx", chunk_rows=30)
        rebuild(root, k=K, block_size=48)
        v1 = open_current(root).attrs["store_url"]
        write_similarity(
            pert_similarity(open_current(root), cell_field="cell_iname"), v1, name=pert
        )
        mat = open_member(v1, pert)["pert_summary"]
        clustering.write_clusters(
            clustering.hierarchical_perts(mat, n_clusters=4, source=source), v1, name="perts"
        )
        append(root, data["dir"] / "new.gctx")
        res = rebuild(root, k=K, block_size=48)
    how = {p["member"]: p["how"] for p in read_manifest(root, res.version)["products"]}
    assert how[pert].startswith("recomputed"), how
    assert how["clusters/perts"].startswith("recomputed"), how
    cur = open_current(root)
    url = cur.attrs["store_url"]
    with _threads():
        want = pert_similarity(cur, cell_field="cell_iname").compute()
    got = open_member(url, pert).compute()
    np.testing.assert_array_equal(got["pert_summary"].values, want["pert_summary"].values)
    fresh = clustering.hierarchical_perts(got["pert_summary"], n_clusters=4)
    np.testing.assert_array_equal(
        open_member(url, "clusters/perts")["cluster"].values, fresh["cluster"].values
    )


# ------------------------------------------------------------------- kill and resume


def _cli(root, env=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cmapdask",
            "rebuild",
            root,
            "--scheduler",
            "none",
            "--k",
            str(K),
            "--block-size",
            "32",
            "--quiet",
        ],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def staged_template(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tpl") / "coll"
    _staged(data, str(root))
    _with_index(str(root))
    return root


def _with_index(root, so=None):
    """Give the published version a query index (small blocks: some shared, one partial)."""
    from cmapdask.connectivity import build_index

    with _threads():
        build_index(
            open_current(root, storage_options=so).attrs["store_url"],
            space="landmark",
            chunk_rows=64,
            storage_options=so,
        )


def _check_index(root, so=None):
    from cmapdask.connectivity import rank_descending
    from cmapdask.connectivity.index import space_genes

    cur = open_current(root, storage_options=so)
    idx = open_member(cur.attrs["store_url"], "index/landmark", storage_options=so)
    x = cur["expr"].values[:, space_genes(cur, "landmark")]
    np.testing.assert_array_equal(idx["rank"].values, rank_descending(x).T)
    np.testing.assert_array_equal(idx["score"].values, x.T)


@pytest.mark.parametrize(
    "kill",
    [
        "block:3",
        pytest.param("stage:2", marks=pytest.mark.slow),
        pytest.param("stage:4", marks=pytest.mark.slow),
        pytest.param("stage:5", marks=pytest.mark.slow),
        pytest.param("block:9", marks=pytest.mark.slow),
        pytest.param("stage:3", marks=pytest.mark.slow),
    ],
)
def test_sigkill_then_rerun_equals_uninterrupted(staged_template, reference, tmp_path, kill):
    root = tmp_path / "coll"
    shutil.copytree(staged_template, root)
    v1 = current_version(str(root))
    stop = threading.Event()
    seen = []

    def reader():  # readers of CURRENT always get a complete version with its products
        while not stop.is_set():
            cur, m = _member(str(root))
            seen.append((cur.attrs["version"], cur.sizes["sig"], m.sizes["sig"]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        killed = _cli(str(root), {"CMAPDASK_FAULT_KILL": kill})
    finally:
        stop.set()
        t.join()
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert current_version(str(root)) == v1  # killed before the switch
    assert seen and all(n == m for _, n, m in seen)
    done = _cli(str(root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "published"
    _same(_member(str(root))[1], reference[1])
    _check_index(str(root))
    leftovers = [d for _, dirs, files in os.walk(root) for d in dirs + files if ".tmp-" in d]
    assert not leftovers, leftovers


def test_rerun_removes_temporaries_of_a_killed_publish(staged_template, reference, tmp_path):
    root = tmp_path / "coll"
    shutil.copytree(staged_template, root)
    staged = root / "versions" / list_versions(str(root))[-1]["version"]
    left = staged / "similarity" / ".pearson_landmark.tmp-0123456789ab"
    left.mkdir(parents=True)  # what a SIGKILL during the member's publish leaves
    done = _cli(str(root))
    assert done.returncode == 0, done.stderr
    assert not left.exists()
    _same(_member(str(root))[1], reference[1])


# ------------------------------------------------------------------- real cluster, S3


@pytest.mark.slow
@pytest.mark.slow_ci
def test_worker_killed_mid_rebuild_on_real_cluster(data, reference, tmp_path, monkeypatch):
    from distributed import Client

    from tests.conftest import RealCluster

    marker = tmp_path / "killed"
    monkeypatch.setenv("CMAPDASK_FAULT_KILL", "block:2")
    monkeypatch.setenv("CMAPDASK_FAULT_ONCE", str(marker))
    root = str(tmp_path / "coll")
    with _threads():  # the staging happens locally, without the fault
        with monkeypatch.context() as m:
            m.delenv("CMAPDASK_FAULT_KILL")
            _staged(data, root)
    cluster = RealCluster(tmp_path, n_workers=2)  # its workers inherit the fault
    try:
        monkeypatch.delenv("CMAPDASK_FAULT_KILL")
        with Client(cluster.address, timeout="60s"):
            res = rebuild(root, k=K, block_size=16)
    finally:
        cluster.close()
    assert marker.exists(), "no worker was killed"
    assert res.status == "published"
    _same(_member(root)[1], reference[1])


@pytest.mark.slow
@pytest.mark.slow_ci
def test_end_to_end_on_s3(data, reference, s3_server):
    root = f"s3://cmapdask-test/{uuid.uuid4().hex[:8]}/coll"
    _staged(data, root, so=s3_server)
    with _threads():
        res = rebuild(root, k=K, block_size=48, storage_options=s3_server)
    assert res.mode == "incremental"
    cur, m = _member(root, s3_server)
    np.testing.assert_array_equal(cur["expr"].values, reference[0]["expr"].values)
    _same(m, reference[1])
    first = list_versions(root, storage_options=s3_server)[0]["version"]
    old = open_version(root, first, storage_options=s3_server)
    np.testing.assert_array_equal(old["expr"].values, data["ds"]["expr"].values[:N_OLD])
