"""Similarity engine against brute-force numpy, over chunk layouts, metrics and modes."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.stats
import xarray as xr

from cmapdask.errors import InputError, MetadataError
from cmapdask.similarity import plan_blocks, similarity, similarity_matrix
from cmapdask.similarity.kernels import merge_topk, standardize
from cmapdask.similarity.plan import merge_tree

METRICS = ["pearson", "spearman", "cosine"]
LAYOUTS = [(120,), (50, 50, 20), (7, 33, 1, 40, 39)]  # whole, even-ish, uneven with a tiny block
SPACE = {"landmark": slice(0, 25), "bing": slice(0, 35), "all": slice(0, 40)}


def make_ds(n=120, g=40, seed=0, chunks=None, bad=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, g)).astype(np.float32)
    x[:, :10] += rng.standard_normal((n, 1)).astype(np.float32)  # some shared structure
    if bad:
        x[10] = x[3]  # an exact duplicate: ties that only the index can break
        x[11] = x[4] * 2 + 1  # same ranks as row 4: Spearman ties too
        x[20, :] = 1.5  # zero variance
        x[30, 5] = np.nan  # a non-finite value
        x[40, :] = np.nan  # all NaN
    fs = np.array(["landmark"] * 25 + ["best inferred"] * 10 + ["inferred"] * 5, dtype=object)
    expr = da.from_array(x, chunks=(chunks or (n,), g)) if chunks else x
    return xr.Dataset(
        {"expr": (("sig", "gene"), expr)},
        coords={
            "sig": np.array([f"s{i}" for i in range(n)], dtype=object),
            "gene": np.array([f"g{j}" for j in range(g)], dtype=object),
            "feature_space": ("gene", fs),
        },
    )


def reference(x, y, metric):
    """float64 brute force: full similarity, NaN for invalid rows/columns."""

    def std(a):
        a = a.astype(np.float64)
        ok = np.isfinite(a).all(1)
        a = np.where(ok[:, None], a, 0)
        if metric == "spearman":
            a = scipy.stats.rankdata(a, axis=1)
        if metric != "cosine":
            ok &= a.max(1) > a.min(1)
            a = a - a.mean(1, keepdims=True)
        nrm = np.linalg.norm(a, axis=1)
        ok &= nrm > 0
        return np.where(ok[:, None], a / np.where(nrm > 0, nrm, 1)[:, None], np.nan)

    return std(x) @ std(y).T


def check_topk(full, got_idx, got_score, k, largest, self_mode, tol=1e-5):
    n = full.shape[0]
    for i in range(n):
        row = full[i].copy()
        if self_mode:
            row[i] = np.nan
        cand = np.flatnonzero(np.isfinite(row))
        gi, gs = got_idx[i], got_score[i]
        if not np.isfinite(full[i]).any():  # invalid row: nothing at all
            assert (gi == -1).all() and np.isnan(gs).all()
            continue
        order = cand[np.lexsort((cand, -row[cand] if largest else row[cand]))][:k]
        m = len(order)
        assert (gi[m:] == -1).all() and np.isnan(gs[m:]).all()
        gi, gs = gi[:m], gs[:m]
        assert len(set(gi.tolist())) == m and np.isfinite(row[gi]).all()
        np.testing.assert_allclose(gs, row[gi], atol=tol)  # score is the true score
        np.testing.assert_allclose(gs, row[order], atol=tol)  # and the k best scores
        diff = gi != order
        assert np.all(np.abs(row[gi[diff]] - row[order[diff]]) < tol), (i, gi, order)
        ties = gs[1:] == gs[:-1]
        assert np.all(gi[1:][ties] > gi[:-1][ties]), "exact ties not broken by index"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunks", LAYOUTS)
def test_self_topk_matches_bruteforce(metric, chunks):
    ds = make_ds(chunks=chunks)
    k = 10
    res = similarity(ds, metric=metric, k=k, space="landmark", split_every=2)
    assert res["top_score"].chunks[0] == chunks  # blocks follow storage chunks
    res = res.compute()
    x = ds["expr"].values[:, SPACE["landmark"]]
    full = reference(x, x, metric)
    for largest, pre in ((True, "top"), (False, "bottom")):
        check_topk(full, res[f"{pre}_index"].values, res[f"{pre}_score"].values, k, largest, True)
        ids = res[f"{pre}_id"].values
        idx = res[f"{pre}_index"].values
        assert all((ids[a, b] == "") == (idx[a, b] < 0) for a in range(0, 120, 7) for b in range(k))
        assert ids[0, 0] == f"s{idx[0, 0]}"
    bad = [30, 40] if metric == "cosine" else [20, 30, 40]  # a constant row has a direction
    assert res["valid"].values.sum() == 120 - len(bad)
    assert not res["valid"].values[bad].any()
    # invalid signatures are nobody's neighbour
    assert not np.isin(res["top_index"].values, bad).any()


@pytest.mark.parametrize("metric", METRICS)
def test_symmetric_in_both_directions(metric):
    res = similarity(make_ds(chunks=(7, 33, 1, 40, 39)), metric=metric, k=15, space="bing")
    res = res.compute()
    seen = 0
    for pre in ("top", "bottom"):
        idx, sc = res[f"{pre}_index"].values, res[f"{pre}_score"].values
        lookup = {
            (i, j): s for i in range(120) for j, s in zip(idx[i], sc[i], strict=False) if j >= 0
        }
        for (i, j), s in lookup.items():
            if (j, i) in lookup:
                assert lookup[(j, i)] == s
                seen += 1
    assert seen > 100


@pytest.mark.parametrize("metric", METRICS)
def test_chunk_layouts_agree(metric):
    outs = [
        similarity(make_ds(chunks=c), metric=metric, k=12, space="all").compute() for c in LAYOUTS
    ]
    outs.append(similarity(make_ds(), metric=metric, k=12, space="all", block_size=16).compute())
    # BLAS may round a product differently at another place in a block, so only neighbours
    # whose true scores tie within float32 rounding (duplicates, affine copies) may swap
    x = make_ds()["expr"].values
    full = reference(x, x, metric)
    for o in outs[1:]:
        for pre in ("top", "bottom"):
            a, b = o[f"{pre}_index"].values, outs[0][f"{pre}_index"].values
            sa, sb = o[f"{pre}_score"].values, outs[0][f"{pre}_score"].values
            np.testing.assert_allclose(sa, sb, atol=1e-6)
            rows, cols = np.nonzero(a != b)
            assert rows.size < 0.02 * a.size
            np.testing.assert_allclose(
                full[rows, a[rows, cols]], full[rows, b[rows, cols]], atol=1e-6
            )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "qchunks,rchunks", [((45,), (75,)), ((20, 25), (8, 60, 7)), ((1, 44), (75,))]
)
def test_query_vs_reference(metric, qchunks, rchunks):
    ds = make_ds(chunks=(120,))
    q = ds.isel(sig=slice(0, 45)).chunk({"sig": qchunks})
    r = ds.isel(sig=slice(45, 120)).chunk({"sig": rchunks})
    res = similarity(q, r, metric=metric, k=20, space="bing").compute()
    x = ds["expr"].values[:, SPACE["bing"]]
    full = reference(x[:45], x[45:], metric)
    check_topk(full, res["top_index"].values, res["top_score"].values, 20, True, False)
    check_topk(full, res["bottom_index"].values, res["bottom_score"].values, 20, False, False)
    assert res["top_id"].values[0, 0] == f"s{45 + res['top_index'].values[0, 0]}"
    assert res["ref_valid"].sizes["sig_ref"] == 75


def test_query_uses_reference_gene_ids():
    ds = make_ds(bad=False)
    ref = ds.isel(gene=np.random.default_rng(1).permutation(40))  # genes in another order
    a = similarity(ds, ref, k=5, space="landmark").compute()
    b = similarity(ds, ds, k=5, space="landmark").compute()
    np.testing.assert_array_equal(a["top_index"].values, b["top_index"].values)
    with pytest.raises(MetadataError, match="lacks 25 gene"):
        similarity(ds, ds.isel(gene=slice(25, 40)), k=5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunks", LAYOUTS)
def test_full_matrix(metric, chunks):
    ds = make_ds(chunks=chunks)
    m = similarity_matrix(ds, metric=metric, space="landmark")
    assert m.dims == ("sig", "sig_ref") and m.chunks[0] == chunks
    x = ds["expr"].values[:, :25]
    np.testing.assert_allclose(m.values, reference(x, x, metric), atol=1e-5)
    q = similarity_matrix(ds.isel(sig=slice(0, 30)), ds, metric=metric, space="landmark")
    np.testing.assert_allclose(q.values, reference(x[:30], x, metric), atol=1e-5)


def test_lazy_until_asked():
    def boom(*args, **kwargs):
        raise AssertionError("computed while building the graph")

    ds = make_ds(chunks=(50, 50, 20))
    with dask.config.set(scheduler=boom):
        res = similarity(ds, k=5)
        m = similarity_matrix(ds)
    assert all(isinstance(v.data, da.Array) for v in res.data_vars.values())
    assert isinstance(m.data, da.Array)
    assert res["top_index"].compute().shape == (120, 5)


def test_no_nxn_in_graph():
    """Every task output is bounded by the block, never by N x N."""
    res = similarity(make_ds(n=120, bad=False), k=3, block_size=10)
    plan_pairs = res.attrs["cmapdask"]["n_block_pairs"]
    assert plan_pairs == 12 * 13 // 2
    assert max(res["top_score"].chunks[0]) == 10


def test_bad_input_errors():
    ds = make_ds()
    with pytest.raises(InputError, match="k=120 is larger than the 119"):
        similarity(ds, k=120)
    similarity(ds, k=119)  # the largest allowed
    with pytest.raises(InputError, match="k=76"):
        similarity(ds.isel(sig=slice(0, 10)), ds.isel(sig=slice(45, 120)), k=76)
    with pytest.raises(InputError, match="positive integer"):
        similarity(ds, k=0)
    with pytest.raises(InputError, match="unknown metric"):
        similarity(ds, metric="kendall", k=3)
    with pytest.raises(InputError, match="unknown feature space"):
        similarity(ds, space="genome", k=3)
    with pytest.raises(MetadataError, match="feature_space"):
        similarity(ds.drop_vars("feature_space"), k=3)
    similarity(ds.drop_vars("feature_space"), k=3, space="all")
    dup = ds.assign_coords(
        sig=np.array(["s0"] * 2 + [f"s{i}" for i in range(2, 120)], dtype=object)
    )
    with pytest.raises(MetadataError, match="duplicate sig id 's0'"):
        similarity(dup, k=3)
    with pytest.raises(InputError, match="no signatures"):
        similarity(ds.isel(sig=slice(0, 0)), k=1)


def test_invalid_rows_get_missing_scores():
    res = similarity(make_ds(), k=4).compute()
    for i in (20, 30, 40):
        assert np.isnan(res["top_score"].values[i]).all()
        assert (res["top_index"].values[i] == -1).all()
        assert all(v == "" for v in res["bottom_id"].values[i])


def test_fewer_candidates_than_k_are_padded():
    ds = make_ds(n=6, bad=False)
    ds["expr"][2:] = np.nan
    res = similarity(ds, k=5, space="all").compute()
    assert res["top_index"].values[0].tolist() == [1, -1, -1, -1, -1]


def test_standardize_matches_scipy():
    x = np.random.default_rng(3).standard_normal((5, 30)).astype(np.float32)
    x[1, :4] = x[1, 4]  # ties in ranks
    for metric, ref in (("pearson", np.corrcoef(x)), ("spearman", scipy.stats.spearmanr(x.T)[0])):
        z, ok = standardize(x, metric)
        assert ok.all() and z.dtype == np.float32
        np.testing.assert_allclose(z @ z.T, ref, atol=1e-6)
    z, ok = standardize(np.zeros((2, 3)), "cosine")
    assert not ok.any() and (z == 0).all()


def test_merge_is_order_free():
    rng = np.random.default_rng(5)
    m, k = 7, 6
    scores = np.round(rng.standard_normal((m, 30)), 1).astype(np.float32)  # many ties
    idx = np.tile(rng.permutation(30), (m, 1))
    parts = [
        (scores[:, s], idx[:, s], scores[:, s], idx[:, s])
        for s in (slice(0, 10), slice(10, 25), slice(25, 30))
    ]
    a = merge_topk(parts, k)
    b = merge_topk([merge_topk(parts[::-1][:2], k), parts[0]], k)
    for q in range(4):
        np.testing.assert_array_equal(a[q], b[q])
    for r in range(m):
        order = np.lexsort((idx[r], -scores[r]))[:k]
        np.testing.assert_array_equal(a[1][r], idx[r][order])


def test_plan_covers_every_pair_once():
    chunks = (3, 0, 5, 1, 4)
    p = plan_blocks(chunks)
    assert len(p.pairs) == 15 and p.flops == sum(
        2 * chunks[i] * chunks[j] for i in range(5) for j in range(i, 5)
    )
    for r, src in enumerate(p.sources):
        partners = sorted(j if side == "row" else i for i, j, side in src)
        assert partners == list(range(5))
        assert all((i == r) if side == "row" else (j == r) for i, j, side in src)
    q = plan_blocks((2, 2), (3, 3, 3))
    assert q.mode == "query" and len(q.pairs) == 6 and len(q.sources[1]) == 3
    for n in (1, 2, 7, 64, 65):
        levels = merge_tree(n, 8)
        assert levels[0][-1][1] == n and len(levels[-1]) == 1
        for prev, lvl in zip(levels, levels[1:], strict=False):
            assert lvl[-1][1] == len(prev)


# ------------------------------------------------------------------------------ writing


def counting_scheduler():
    calls = []

    def get(dsk, keys, **kwargs):
        calls.append(keys)
        return dask.get(dsk, keys, **kwargs)

    return get, calls


def test_write_member_and_zarr(tmp_path):
    from cmapdask.io.store import open_member, open_store, write_store
    from cmapdask.similarity.write import write_similarity

    ds = make_ds(chunks=(50, 50, 20))
    write_store(ds, tmp_path / "s.zarr")
    st = open_store(str(tmp_path / "s.zarr"))
    res = similarity(st, metric="spearman", k=6, block_size=32)
    get, calls = counting_scheduler()
    with dask.config.set(scheduler=get):
        dest = write_similarity(res, str(tmp_path / "s.zarr"))
    assert len(calls) == 1  # one pass over the graph, nothing computed to guess dtypes
    assert dest.endswith("similarity/spearman_landmark")
    back = open_member(str(tmp_path / "s.zarr"), "similarity/spearman_landmark").compute()
    direct = similarity(ds, metric="spearman", k=6, block_size=32).compute()
    np.testing.assert_array_equal(back["top_index"].values, direct["top_index"].values)
    np.testing.assert_array_equal(back["top_score"].values, direct["top_score"].values)
    assert [str(v) for v in back["bottom_id"].values[0]] == [
        str(v) for v in direct["bottom_id"].values[0]
    ]
    prov = back.attrs["cmapdask"]
    assert (
        prov["metric"] == "spearman" and prov["k"] == 6 and prov["member"].startswith("similarity/")
    )

    m = similarity_matrix(st, metric="cosine", space="all")
    write_similarity(m, out=str(tmp_path / "full.zarr"), gctx=str(tmp_path / "full.gctx"))
    z = xr.open_zarr(tmp_path / "full.zarr", consolidated=False)["similarity"].values
    x = ds["expr"].values
    np.testing.assert_allclose(z, reference(x, x, "cosine"), atol=1e-5, equal_nan=True)
    import h5py

    with h5py.File(tmp_path / "full.gctx") as f:
        np.testing.assert_allclose(f["0/DATA/0/matrix"][:], z, atol=0, equal_nan=True)
    with pytest.raises(InputError, match="exactly one"):
        write_similarity(res)


# --------------------------------------------------------------------------- perturbagens


def test_pert_similarity_matches_bruteforce():
    from cmapdask.connectivity.summaries import maxq
    from cmapdask.similarity import pert_similarity

    ds = make_ds(n=60, bad=False, chunks=(13, 47))
    rng = np.random.default_rng(7)
    pert = rng.choice(["pA", "pB", "pC", "pD", "pE"], 60).astype(object)
    cell = rng.choice(["c1", "c2", "c3"], 60).astype(object)
    pert[5], cell[6] = None, None  # left out
    ds = ds.assign_coords(pert_id=("sig", pert), cell_id=("sig", cell))
    res = pert_similarity(ds, metric="spearman", space="bing")
    assert isinstance(res["pert_summary"].data, da.Array)
    res = res.compute()
    x = ds["expr"].values[:, :35]
    full = reference(x, x, "spearman")
    for ci, c in enumerate(res["cell"].values):
        for ai, a in enumerate(res["pert"].values):
            for bi, b in enumerate(res["pert_ref"].values):
                vals = [
                    full[i, j]
                    for i in range(60)
                    for j in range(60)
                    if i != j and cell[i] == cell[j] == c and pert[i] == a and pert[j] == b
                ]
                exp = maxq(np.array(vals)) if vals else np.nan
                np.testing.assert_allclose(res["pert_cell"].values[ci, ai, bi], exp, atol=1e-5)
    exp_sum = maxq(res["pert_cell"].values.astype(float), axis=0)
    np.testing.assert_allclose(res["pert_summary"].values, exp_sum, atol=1e-6)
    with pytest.raises(MetadataError, match="pert_id"):
        pert_similarity(ds.drop_vars("pert_id"))


# ------------------------------------------------------------------------------- biology


def test_neighbours_share_moa_on_synthetic_release():
    synthetic = pytest.importorskip("cmapdask.synthetic")
    design = synthetic.synth_design(3000, seed=1, n_moas=12)
    ds = synthetic.synth_dataset(design, metadata="tables", chunks=(700, 1300, 1000))
    moa_of = dict(
        zip(*synthetic.synth_compoundinfo(design)[["pert_id", "moa"]].T.values, strict=False)
    )
    moa = np.array([moa_of.get(p) for p in ds["pert_id"].values], dtype=object)
    res = similarity(ds, k=10, metric="pearson").compute()
    has = np.array([m is not None for m in moa])
    nb = res["top_index"].values[has]
    same = (moa[nb] == moa[has][:, None]).mean()
    labels = moa[has]
    _, counts = np.unique(labels.astype(str), return_counts=True)
    chance = ((counts / counts.sum()) ** 2).sum()
    assert same > 5 * chance, (same, chance)
    # opposites are not enriched for the same MoA
    assert (moa[res["bottom_index"].values[has]] == moa[has][:, None]).mean() < 2 * chance


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture
def small_store(tmp_path):
    from cmapdask.io.store import write_store

    url = str(tmp_path / "s.zarr")
    write_store(make_ds(chunks=(50, 50, 20)), url)
    return url


def test_cli_similarity(small_store, tmp_path, capsys):
    from cmapdask.cli import main
    from cmapdask.io.store import open_member

    assert (
        main(
            [
                "similarity",
                small_store,
                "--metric",
                "cosine",
                "--k",
                "7",
                "--space",
                "bing",
                "--block-size",
                "40",
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    got = open_member(small_store, "similarity/cosine_bing").compute()
    exp = similarity(make_ds(), metric="cosine", k=7, space="bing").compute()
    np.testing.assert_array_equal(got["top_index"].values, exp["top_index"].values)

    ids = tmp_path / "q.grp"
    ids.write_text("s3\ns20\ns100\n")
    out = str(tmp_path / "q.zarr")
    assert (
        main(
            [
                "similarity",
                small_store,
                "--k",
                "5",
                "--query-ids",
                str(ids),
                "--out",
                out,
                "--scheduler",
                "none",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "1 signature(s) have non-finite values or no spread" in err and "s20" in err
    q = xr.open_zarr(out, consolidated=False).compute()
    assert q.sizes["sig"] == 3 and q.sizes["sig_ref"] == 117
    assert "s3" not in set(q["top_id"].values.ravel().tolist())  # the rest only
    assert q["top_id"].values[0, 0] == "s10"  # s10 duplicates s3

    assert (
        main(
            [
                "similarity",
                small_store,
                "--full",
                "--out",
                str(tmp_path / "f.zarr"),
                "--gctx",
                str(tmp_path / "f.gctx"),
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "f.gctx").exists()

    from cmapdask.io.store import write_store
    from cmapdask.similarity import pert_similarity

    ref_url = str(tmp_path / "ref.zarr")
    write_store(make_ds(n=90, seed=9, chunks=(40, 50)), ref_url)
    assert (
        main(
            [
                "similarity",
                small_store,
                "--ref",
                ref_url,
                "--k",
                "6",
                "--out",
                str(tmp_path / "r.zarr"),
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    got = xr.open_zarr(tmp_path / "r.zarr", consolidated=False).compute()
    exp = similarity(make_ds(), make_ds(n=90, seed=9), k=6).compute()
    np.testing.assert_array_equal(got["top_index"].values, exp["top_index"].values)
    assert [str(v) for v in got["bottom_id"].values[7]] == [
        str(v) for v in exp["bottom_id"].values[7]
    ]
    assert got.attrs["cmapdask"]["mode"] == "query"

    rng = np.random.default_rng(2)
    pds = make_ds(bad=False).assign_coords(
        pert_id=("sig", rng.choice(["pA", "pB", "pC"], 120).astype(object)),
        cell_id=("sig", rng.choice(["c1", "c2"], 120).astype(object)),
    )
    purl = str(tmp_path / "p.zarr")
    write_store(pds, purl)
    assert (
        main(
            ["similarity", purl, "--pert", "--metric", "spearman", "--scheduler", "none", "--quiet"]
        )
        == 0
    )
    got = open_member(purl, "similarity/spearman_landmark_pert").compute()
    exp = pert_similarity(pds, metric="spearman").compute()
    np.testing.assert_allclose(got["pert_summary"].values, exp["pert_summary"].values, atol=1e-6)
    assert got.attrs["cmapdask"]["aggregate"] == "maxq"

    assert main(["similarity", small_store, "--k", "500", "--scheduler", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "k=500 is larger than the 119" in err[0]
    ids.write_text("s3\nnope\n")
    assert main(["similarity", small_store, "--query-ids", str(ids), "--scheduler", "none"]) == 2
    assert "'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------ distributed


def test_one_worker_and_many_agree():
    from distributed import Client, LocalCluster

    ds = make_ds(chunks=(7, 33, 1, 40, 39))
    expected = similarity(ds, k=9, space="bing").compute(scheduler="sync")
    for n in (1, 3):
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            got = similarity(ds, k=9, space="bing").compute()
        for v in ("top_index", "bottom_index", "top_score", "bottom_id", "valid"):
            np.testing.assert_array_equal(got[v].values, expected[v].values)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    """A real ``dask scheduler`` and two ``dask worker`` processes on loopback."""
    import json
    import subprocess
    import time

    d = tmp_path_factory.mktemp("cluster")
    sched_file = d / "scheduler.json"
    dask_cmd = [str(Path(sys.executable).parent / "dask")]  # this environment's, never PATH's
    procs = [
        subprocess.Popen(
            [
                *dask_cmd,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        addr = json.loads(sched_file.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [
                    *dask_cmd,
                    "worker",
                    addr,
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--memory-limit",
                    "1GB",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        from distributed import Client

        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.cluster
def test_real_multiprocess_cluster(real_cluster, small_store):
    from distributed import Client
    from threadpoolctl import threadpool_limits

    from cmapdask.cli import main
    from cmapdask.io.store import open_member, open_store

    # distributed's workers run BLAS on one thread; OpenBLAS's float32 products round
    # differently on two, so the reference runs as the workers do
    with threadpool_limits(1, user_api="blas"):
        expected = similarity(make_ds(), metric="spearman", k=8, block_size=30).compute(
            scheduler="sync"
        )
    with Client(real_cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        got = similarity(open_store(small_store), metric="spearman", k=8, block_size=30).compute()
    for v in ("top_index", "bottom_index", "top_score", "bottom_score", "top_id", "valid"):
        np.testing.assert_array_equal(got[v].values, expected[v].values)
    # the command line attached to the same cluster
    assert (
        main(
            [
                "similarity",
                small_store,
                "--metric",
                "spearman",
                "--k",
                "8",
                "--block-size",
                "30",
                "--scheduler",
                real_cluster,
                "--quiet",
            ]
        )
        == 0
    )
    back = open_member(small_store, "similarity/spearman_landmark").compute()
    np.testing.assert_array_equal(back["top_index"].values, expected["top_index"].values)


@pytest.mark.parametrize("shape,k", [((37, 53), 5), ((20, 20), 19), ((6, 4), 10), ((50, 300), 40)])
def test_block_topk_exact_with_many_ties(shape, k):
    from cmapdask.similarity.topk import block_topk

    rng = np.random.default_rng(shape[0])
    c = np.round(rng.standard_normal(shape), 1).astype(np.float32)  # heavy ties
    c[0, :3] = -0.0
    cols, rows = np.arange(shape[1]) * 3 + 7, np.arange(shape[0]) * 2
    for diagonal in [False, True] if shape[0] == shape[1] else [False]:
        cc = c.copy()
        (ts, ti, bs, bi), col = block_topk(cc, cols, rows, k, diagonal=diagonal, both=not diagonal)
        np.testing.assert_array_equal(cc, c)  # the block is left as it was
        for r in range(shape[0]):
            j = np.array([q for q in range(shape[1]) if not (diagonal and q == r)])
            s = c[r, j] + np.float32(0)
            top = j[np.lexsort((j, -s))][:k]
            bot = j[np.lexsort((j, s))][:k]
            np.testing.assert_array_equal(ti[r], cols[top])
            np.testing.assert_array_equal(bi[r], cols[bot])
            np.testing.assert_array_equal(ts[r], c[r, top])
        if col is not None:
            for q in range(shape[1]):
                s = c[:, q] + np.float32(0)
                i = np.arange(shape[0])
                np.testing.assert_array_equal(col[1][q], rows[i[np.lexsort((i, -s))][:k]])
                np.testing.assert_array_equal(col[3][q], rows[i[np.lexsort((i, s))][:k]])


@pytest.mark.parametrize(
    "shape,k,rnd", [((700, 1000), 30, None), ((1000, 1000), 64, 2), ((640, 2000), 100, None)]
)
def test_block_topk_exact_at_block_scale(shape, k, rnd):
    """Sizes where the lane and row-group thresholds are used (not every score a candidate)."""
    from cmapdask.similarity.topk import _n_groups, block_topk

    assert _n_groups(k, shape[0]) and _n_groups(k, shape[1])
    rng = np.random.default_rng(k)
    c = rng.standard_normal(shape).astype(np.float32)
    if rnd:
        c = np.round(c, rnd).astype(np.float32)  # ties at the thresholds
    cols, rows = np.arange(shape[1]) + 5000, np.arange(shape[0]) * 3
    for diagonal in [False, True] if shape[0] == shape[1] else [False]:
        (ts, ti, bs, bi), col = block_topk(c, cols, rows, k, diagonal=diagonal, both=not diagonal)
        for r in range(shape[0]):
            j = np.flatnonzero(np.arange(shape[1]) != (r if diagonal else -1))
            s = c[r, j]
            np.testing.assert_array_equal(ti[r], cols[j[np.lexsort((j, -s))][:k]])
            np.testing.assert_array_equal(bi[r], cols[j[np.lexsort((j, s))][:k]])
            np.testing.assert_array_equal(bs[r], np.sort(s)[:k])
        if col is not None:
            i = np.arange(shape[0])
            for q in range(shape[1]):
                s = c[:, q]
                np.testing.assert_array_equal(col[1][q], rows[i[np.lexsort((i, -s))][:k]])
                np.testing.assert_array_equal(col[3][q], rows[i[np.lexsort((i, s))][:k]])
                np.testing.assert_array_equal(col[0][q], -np.sort(-s)[:k])


@pytest.mark.parametrize("metric", METRICS)
def test_engine_at_block_scale(metric):
    """Blocks large enough for the thresholded kernel, uneven, self and query modes."""
    ds = make_ds(n=1500, g=40, seed=4, chunks=(700, 560, 240))
    x = ds["expr"].values[:, SPACE["landmark"]]
    full = reference(x, x, metric)
    res = similarity(ds, metric=metric, k=25, space="landmark").compute()
    for largest, pre in ((True, "top"), (False, "bottom")):
        check_topk(full, res[f"{pre}_index"].values, res[f"{pre}_score"].values, 25, largest, True)
    q = similarity(
        ds.isel(sig=slice(0, 300)),
        ds.isel(sig=slice(300, 1500)),
        metric=metric,
        k=25,
        space="landmark",
    ).compute()
    check_topk(full[:300, 300:], q["top_index"].values, q["top_score"].values, 25, True, False)
    check_topk(
        full[:300, 300:], q["bottom_index"].values, q["bottom_score"].values, 25, False, False
    )


def test_count_invalid_reports_unscorable():
    from cmapdask.similarity import count_invalid

    n, ids = count_invalid(similarity(make_ds(chunks=(50, 50, 20)), k=3))
    assert (n, ids) == (3, ["s20", "s30", "s40"])
    n, ids = count_invalid(similarity(make_ds(), metric="cosine", k=3))
    assert (n, ids) == (2, ["s30", "s40"])  # a constant row still has a direction


# ------------------------------------------------------------------------ properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def layouts(draw, n=60):
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=6)))
    edges = [0, *cuts, n]
    return tuple(b - a for a, b in zip(edges, edges[1:], strict=False))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=layouts(),
    metric=st.sampled_from(METRICS),
    k=st.integers(1, 59),
    perm_seed=st.integers(0, 2**16),
)
def test_invariant_to_chunking_and_order(chunks, metric, k, perm_seed):
    """Any blocking gives the brute-force answer; reordering signatures permutes it."""
    ds = make_ds(n=60, bad=False, chunks=chunks)
    res = similarity(ds, metric=metric, k=k, space="landmark", split_every=3).compute()
    x = ds["expr"].values[:, :25]
    full = reference(x, x, metric)
    check_topk(full, res["top_index"].values, res["top_score"].values, k, True, True)
    check_topk(full, res["bottom_index"].values, res["bottom_score"].values, k, False, True)
    perm = np.random.default_rng(perm_seed).permutation(60)
    shuffled = similarity(ds.isel(sig=perm), metric=metric, k=k, space="landmark").compute()
    back = shuffled.sel(sig=res["sig"].values)
    np.testing.assert_allclose(back["top_score"].values, res["top_score"].values, atol=1e-6)
    ids = back["top_id"].values.astype(object)
    same = ids == res["top_id"].values.astype(object)
    # only neighbours tied within float32 rounding may swap places
    rows, cols = np.nonzero(~same)
    a = np.array([int(s[1:]) for s in ids[rows, cols]], dtype=int)
    b = res["top_index"].values[rows, cols]
    np.testing.assert_allclose(full[rows, a], full[rows, b], atol=1e-6)
