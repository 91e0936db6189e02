"""MoA enrichment, MoA recall and annotations: direct references, chunk layouts, laziness,
calibration, and the planted MoA classes of the synthetic release."""

from __future__ import annotations

import json
import os

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import xarray as xr

from cmapdask import synthetic as sy
from cmapdask.annotations import (
    labels_from_sets,
    membership,
    read_annotations,
    sets_from_table,
    shuffle_sets,
)
from cmapdask.enrich import (
    bh,
    candidate_pcls,
    cluster_enrichment,
    enrich_ranked,
    enrichment_table,
    ks_statistics,
    moa_recall_approx,
    roc_curve,
    running_sum,
    write_pcl_gmt,
)
from cmapdask.errors import InputError, MetadataError
from cmapdask.io.gmt import read_gmt

_P_FIELDS_ALL = ("p_ks_top", "p_ks_bottom", "p_fisher_top", "p_fisher_bottom")

LAYOUTS = [(12,), (5, 7), (1, 4, 2, 5)]


class _NoCompute:
    """A scheduler that fails: proves a function built its result without computing."""

    def __call__(self, dsk, keys, **kwargs):
        raise AssertionError("computed while building a lazy result")


# ----------------------------------------------------------------------------- references


def _ref_walk_stats(pos, n, w=None):
    walk = running_sum(pos, n, w)
    return max(0.0, walk.max()), max(0.0, -walk.min())


def _ref_list(scores, labels, sets, n_top, self_label=None):
    """Direct, loop-based statistics of one list: ES, Fisher p (scipy.fisher_exact)."""
    ok = np.isfinite(scores)
    if self_label is not None:
        ok &= labels != self_label
    keep = np.flatnonzero(ok)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    n = order.size
    out = {}
    for name, members in sets.items():
        hit = np.array([labels[i] in set(members) for i in order])
        pos = np.flatnonzero(hit)
        if pos.size == 0:
            continue
        top, bot = _ref_walk_stats(pos, n)
        nt = min(n_top, n)
        k = int(hit[:nt].sum())
        table = [[k, nt - k], [pos.size - k, n - nt - (pos.size - k)]]
        p = scipy.stats.fisher_exact(table, alternative="greater")[1]
        out[name] = (pos.size, top, bot, k, p)
    return out


def test_ks_statistics_match_the_walk():
    rng = np.random.default_rng(0)
    for n, g in [(50, 5), (20, 19), (7, 7), (300, 1)]:
        for weighted in (False, True):
            pos = np.array([np.sort(rng.choice(n, g, replace=False)) for _ in range(30)])
            w = rng.random((30, g)) if weighted else None
            top, bot = ks_statistics(pos, n, g, w)
            ref = np.array(
                [_ref_walk_stats(pos[i], n, None if w is None else w[i]) for i in range(30)]
            )
            np.testing.assert_allclose(top, ref[:, 0], atol=1e-12)
            np.testing.assert_allclose(bot, ref[:, 1], atol=1e-12)
    # flat, several set sizes at once
    sizes = np.array([3, 1, 6])
    flat = np.concatenate([np.sort(rng.choice(40, s, replace=False)) for s in sizes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    top, bot = ks_statistics(flat, 40, sizes, None, starts)
    for i, s in enumerate(sizes):
        rt, rb = _ref_walk_stats(flat[starts[i] : starts[i] + s], 40)
        assert top[i] == pytest.approx(rt) and bot[i] == pytest.approx(rb)


def test_signed_es_agrees_with_connectivity_kernel():
    es_mod = pytest.importorskip("cmapdask.connectivity.es")
    rng = np.random.default_rng(1)
    n = 200
    s = rng.standard_normal(n)
    ranks = np.empty(n, np.int64)
    ranks[np.argsort(-s, kind="stable")] = np.arange(1, n + 1)
    members = rng.choice(n, 15, replace=False)
    for metric, weight in (("cs", "unweighted"), ("wtcs", "weighted")):
        es_ref, _ = es_mod.es_of_members(
            ranks[None, :], s[None, :].astype(np.float32), members, n, metric=metric
        )
        da_ = xr.DataArray(
            s[None, :],
            dims=("query", "item"),
            coords={"query": ["q"], "item": [f"i{j}" for j in range(n)]},
        )
        res = enrich_ranked(
            da_, {"S": [f"i{j}" for j in members]}, weight=weight, exclude="none", permutations=10
        ).compute()
        assert float(res["es"].values[0, 0]) == pytest.approx(float(es_ref[0]), abs=1e-6)


def _lists(n_lists=12, n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_lists, n_items))
    x[0, 5] = np.nan  # left out of list 0
    x[1, :10] = x[1, 10:20]  # ties: broken by item order
    items = np.array([f"i{j:02d}" for j in range(n_items)], dtype=object)
    perts = np.array([f"p{j % 25:02d}" for j in range(n_items)], dtype=object)  # 2-3 sigs each
    sets = {
        "A": ["p00", "p01", "p02", "p03"],
        "B": ["p04", "p10", "p11"],
        "C": ["p20", "p21", "p22", "p23", "p24", "p05"],
        "D": ["zz"],
    }
    lists = np.array([f"p{j:02d}" for j in range(n_lists)], dtype=object)
    return x, items, perts, sets, lists


@pytest.mark.parametrize("layout", LAYOUTS)
def test_enrich_ranked_matches_direct_reference_over_chunk_layouts(layout):
    x, items, perts, sets, lists = _lists()
    arr = xr.DataArray(
        da.from_array(x, chunks=(layout, 60)),
        dims=("query", "sig"),
        coords={"query": lists, "sig": items, "pert_id": ("sig", perts)},
    )
    res = enrich_ranked(
        arr, sets, item_field="pert_id", n_top=8, permutations=200, exclude="self", null="items"
    ).compute()
    for r in range(x.shape[0]):
        ref = _ref_list(x[r], perts, sets, 8, self_label=lists[r])
        for s, name in enumerate(res["set"].values):
            if name not in ref:
                assert res["n_hits"].values[r, s] == 0 and np.isnan(res["es_top"].values[r, s])
                continue
            g, top, bot, k, p = ref[name]
            assert res["n_hits"].values[r, s] == g
            assert res["es_top"].values[r, s] == pytest.approx(top, abs=1e-12)
            assert res["es_bottom"].values[r, s] == pytest.approx(bot, abs=1e-12)
            assert res["k_top"].values[r, s] == k
            assert res["p_fisher_top"].values[r, s] == pytest.approx(p, rel=1e-9)
        q = bh(res["p_ks_top"].values[r])
        np.testing.assert_allclose(res["q_ks_top"].values[r], q, equal_nan=True)
    # serial (one chunk, numpy input) equals parallel
    serial = enrich_ranked(
        arr.compute(), sets, item_field="pert_id", n_top=8, permutations=200, null="items"
    ).compute()
    xr.testing.assert_identical(serial.drop_attrs(), res.drop_attrs())
    # the group null (several items per pert_id): serial equals parallel too
    grp = enrich_ranked(arr, sets, item_field="pert_id", n_top=8, permutations=200).compute()
    assert grp.attrs["cmapdask"]["null"] == "groups"
    serial = enrich_ranked(
        arr.compute(), sets, item_field="pert_id", n_top=8, permutations=200
    ).compute()
    xr.testing.assert_identical(serial.drop_attrs(), grp.drop_attrs())
    for f in ("es_top", "es_bottom", "k_top", "k_bottom", "n_hits"):  # statistics do not change
        xr.testing.assert_identical(grp[f], res[f])


def test_group_null_is_a_permutation_of_whole_labels():
    """The group-null p-values against a direct reference: random label sets drawn here,
    every item of each label placed by a brute-force walk."""
    from cmapdask.enrich import _random_subsets

    x, items, perts, sets, lists = _lists()
    r, b, n_top = 3, 300, 8
    arr = xr.DataArray(
        x[r : r + 1],
        dims=("query", "sig"),
        coords={"query": lists[r : r + 1], "sig": items, "pert_id": ("sig", perts)},
    )
    res = enrich_ranked(
        arr, sets, item_field="pert_id", n_top=n_top, permutations=b, seed=9
    ).compute()
    s = x[r]
    keep = np.flatnonzero(np.isfinite(s) & (perts != lists[r]))
    order = keep[np.argsort(-s[keep], kind="stable")]
    n = order.size
    ranked = perts[order]
    codes, uniq = pd.factorize(perts)
    labels = np.asarray(uniq)[np.unique(codes[order])]  # the labels in the list, by code
    for si, name in enumerate(res["set"].values):
        present = [lab for lab in labels if lab in set(sets[name])]
        if not present:
            continue
        m = len(present)
        draws = _random_subsets(np.random.default_rng([9, 0, m, 1]), labels.size, m, b)
        null_top, null_k = [], []
        for d in draws:
            pos = np.flatnonzero(np.isin(ranked, labels[d]))
            null_top.append(_ref_walk_stats(pos, n)[0])
            null_k.append(int((pos < n_top).sum()))
        obs = float(res["es_top"].values[0, si])
        want = (1 + (np.array(null_top) >= obs - 1e-12).sum()) / (1 + b)
        assert float(res["p_ks_top"].values[0, si]) == pytest.approx(want), name
        k = int(res["k_top"].values[0, si])
        assert float(res["p_fisher_top"].values[0, si]) == pytest.approx(
            (1 + (np.array(null_k) >= k).sum()) / (1 + b)
        )


def test_permutation_pvalue_is_the_rank_of_the_statistic_in_its_null():
    # a reference null built here, by a brute-force walk over random sets
    n, g, b = 80, 6, 300
    rng = np.random.default_rng(5)
    s = rng.standard_normal(n)
    items = np.array([f"i{j}" for j in range(n)], dtype=object)
    members = list(items[np.argsort(-s)[:g]])  # the top 6: strongly enriched at the top
    arr = xr.DataArray(s[None], dims=("l", "i"), coords={"l": ["x"], "i": items})
    res = enrich_ranked(arr, {"S": members}, permutations=b, exclude="none", seed=3).compute()
    from cmapdask.enrich import _random_subsets

    null = _random_subsets(np.random.default_rng([3, n, g]), n, g, b)
    ref_top = np.array([_ref_walk_stats(p, n)[0] for p in null])
    obs = float(res["es_top"].values[0, 0])
    assert obs == pytest.approx(1.0)
    expect = (1 + (ref_top >= obs - 1e-12).sum()) / (1 + b)
    assert float(res["p_ks_top"].values[0, 0]) == pytest.approx(expect)
    assert expect == pytest.approx(1 / (b + 1))


def test_enrich_ranked_is_lazy():
    x, items, perts, sets, lists = _lists()
    arr = xr.DataArray(
        da.from_array(x, chunks=(5, 60)),
        dims=("query", "sig"),
        coords={"query": lists, "sig": items, "pert_id": ("sig", perts)},
    )
    with dask.config.set(scheduler=_NoCompute()):
        res = enrich_ranked(arr, sets, item_field="pert_id")
    assert isinstance(res["es"].data, da.Array)


def test_calibration_shuffled_annotations_give_uniform_pvalues():
    # 400 null lists x 10 sets: the share of p < 0.05 must be 5 % within 4 binomial s.d.
    rng = np.random.default_rng(11)
    n_lists, n_items = 400, 300
    x = rng.standard_normal((n_lists, n_items))
    items = np.array([f"i{j}" for j in range(n_items)], dtype=object)
    sets = shuffle_sets(
        {f"S{k}": [str(i) for i in range(6 + 3 * k)] for k in range(10)}, items, seed=2
    )
    arr = xr.DataArray(
        da.from_array(x, chunks=(100, -1)),
        dims=("l", "i"),
        coords={"l": np.arange(n_lists), "i": items},
    )
    res = enrich_ranked(arr, sets, permutations=1000, n_top=30, exclude="none", seed=4).compute()
    m = n_lists * len(sets)
    tol = 4 * np.sqrt(0.05 * 0.95 / m)  # about 0.014
    for f in ("p_ks_top", "p_ks_bottom"):
        frac = (res[f].values < 0.05).mean()
        assert abs(frac - 0.05) < tol, (f, frac)
    # the Fisher test is discrete and conservative: never above nominal
    for f in ("p_fisher_top", "p_fisher_bottom"):
        assert (res[f].values < 0.05).mean() < 0.05 + tol
    # the analytic approximation is conservative too
    ana = enrich_ranked(arr, sets, pvalue="analytic", exclude="none").compute()
    assert (ana["p_ks_top"].values < 0.05).mean() < 0.05 + tol


def test_weighted_permutations_do_not_depend_on_chunks():
    x, items, perts, sets, lists = _lists()
    outs = []
    for layout in LAYOUTS:
        arr = xr.DataArray(
            da.from_array(x, chunks=(layout, 60)),
            dims=("query", "sig"),
            coords={"query": lists, "sig": items, "pert_id": ("sig", perts)},
        )
        outs.append(
            enrich_ranked(
                arr, sets, item_field="pert_id", weight="weighted", permutations=100
            ).compute()
        )
    for o in outs[1:]:
        xr.testing.assert_identical(o.drop_attrs(), outs[0].drop_attrs())


def test_enrich_bad_input():
    x, items, perts, sets, lists = _lists()
    arr = xr.DataArray(x, dims=("query", "sig"), coords={"query": lists, "sig": items})
    with pytest.raises(InputError, match="empty"):
        enrich_ranked(arr, {"A": []})
    with pytest.raises(InputError, match="no item belongs"):
        enrich_ranked(arr, sets)  # item ids are not pert ids
    with pytest.raises(InputError, match="item_field"):
        enrich_ranked(arr, sets, item_field="nope")
    with pytest.raises(InputError, match="analytic"):
        enrich_ranked(arr, sets, pvalue="analytic", weight="weighted")
    with pytest.raises(InputError, match="permutations"):
        enrich_ranked(arr, {"A": ["i01"]}, permutations=0)
    with pytest.raises(InputError, match="2-D"):
        enrich_ranked(arr[0], sets)


# ----------------------------------------------------------------------------- clusters


def test_cluster_enrichment_matches_fisher_exact():
    rng = np.random.default_rng(3)
    n = 120
    perts = np.array([f"p{i % 40}" for i in range(n)], dtype=object)
    clusters = rng.integers(0, 4, n)
    sets = {
        "A": [f"p{i}" for i in range(0, 12)],
        "B": [f"p{i}" for i in range(10, 30)],
        "C": ["p39"],
    }
    clusters[np.isin(perts, sets["A"])] = 0  # cluster 0 holds every item of A
    df = cluster_enrichment(clusters, perts, sets, background="all")
    for row in df.itertuples():
        inc = clusters == row.cluster
        ins = np.isin(perts, sets[row.set])
        a = int((inc & ins).sum())
        table = [[a, int((inc & ~ins).sum())], [int((~inc & ins).sum()), int((~inc & ~ins).sum())]]
        assert row.k == a
        assert row.p == pytest.approx(
            scipy.stats.fisher_exact(table, alternative="greater")[1], rel=1e-9
        )
    assert df.loc[(df.cluster == 0) & (df.set == "A"), "q"].iloc[0] < 0.05
    ann = cluster_enrichment(clusters, perts, sets)  # annotated background: fewer items
    assert ann["n_background"].iloc[0] == np.isin(perts, sum(sets.values(), [])).sum()
    with pytest.raises(InputError, match="annotated"):
        cluster_enrichment(np.zeros(3), ["x", "y", "z"], sets)


# ----------------------------------------------------------------------------- MoA recall


def _recall_inputs(n=90, k=None, seed=0, chunks=(30,)):
    rng = np.random.default_rng(seed)
    moa = np.array([f"M{i % 4}" for i in range(n)], dtype=object)
    moa[::11] = None  # unannotated
    moa[5] = "M0|M1"  # two MoAs: shares with both
    cells = np.array(["A", "B", "C"], dtype=object)[rng.integers(0, 3, n)]
    u = rng.standard_normal((4, 50))
    x = rng.standard_normal((n, 50)) * 2
    for i in range(n):
        if moa[i] is not None:
            x[i] += u[int(moa[i][1])]
    x[7] = np.nan  # invalid: no neighbours, nobody's neighbour
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), x.astype(np.float32))},
        coords={"sig": [f"s{i}" for i in range(n)], "gene": [f"g{j}" for j in range(50)]},
    )
    return ds, moa, cells


def _exact_auroc(ds, moa, cells):
    from sklearn.metrics import roc_auc_score

    from cmapdask.similarity import similarity_matrix

    m = similarity_matrix(ds, space="all").values
    n = m.shape[0]
    ok = np.isfinite(np.diag(m)) & np.array([v is not None for v in moa])
    sets = [set(v.split("|")) if v else set() for v in moa]
    i, j = np.nonzero(~np.eye(n, dtype=bool) & ok[:, None] & ok[None, :])
    y = np.array([bool(sets[a] & sets[b]) for a, b in zip(i, j, strict=False)])
    out = {"all": roc_auc_score(y, m[i, j])}
    for c in np.unique(cells):
        sel = (cells[i] == c) & (cells[j] == c)
        out[c] = roc_auc_score(y[sel], m[i, j][sel])
    return out


@pytest.mark.parametrize("chunks", [(90,), (30, 30, 30), (7, 50, 1, 32)])
def test_moa_recall_approx_exact_with_complete_lists(chunks):
    from cmapdask.similarity import similarity

    ds, moa, cells = _recall_inputs()
    ref = _exact_auroc(ds, moa, cells)
    nb = similarity(ds, k=50, space="all")  # 2k covers all 88 candidates
    nb = nb.assign(
        {
            v: nb[v].chunk({"sig": chunks})
            for v in ("top_index", "top_score", "bottom_index", "bottom_score")
        }
    )
    res = moa_recall_approx(nb, moa, cells=cells, bins=20000).compute()
    for g, want in ref.items():
        got = res.sel(group=g)
        assert abs(float(got["auroc"]) - want) <= float(got["auroc_bin_error"]) + 1e-9, (
            g,
            float(got["auroc"]),
            want,
        )
        assert float(got["auroc_min"]) - 1e-9 <= want <= float(got["auroc_max"]) + 1e-9
    assert res["n_pos"].sel(group="all") > 0


def test_moa_recall_approx_bounds_hold_with_short_lists_and_are_lazy():
    from cmapdask.similarity import similarity

    ds, moa, cells = _recall_inputs(seed=2)
    ref = _exact_auroc(ds, moa, cells)
    nb = similarity(ds, k=5, space="all").persist()
    with dask.config.set(scheduler=_NoCompute()):
        lazy = moa_recall_approx(nb, moa, cells=cells)
    assert isinstance(lazy["auroc"].data, da.Array)
    res = lazy.compute()
    full = moa_recall_approx(similarity(ds, k=50, space="all"), moa, cells=cells).compute()
    for g, want in ref.items():
        r = res.sel(group=g)
        assert float(r["auroc_min"]) - 1e-9 <= want <= float(r["auroc_max"]) + 1e-9
        # the pair counts do not depend on k: every candidate pair is counted once
        assert float(r["n_pos"]) == float(full.sel(group=g)["n_pos"])
        assert float(r["n_neg"]) == float(full.sel(group=g)["n_neg"])
    fpr, tpr = roc_curve(res["hist"].sel(group="all").values)
    assert fpr[0] == 0 and tpr[-1] == pytest.approx(1) and np.all(np.diff(fpr) >= 0)


def test_moa_recall_approx_bad_input():
    from cmapdask.similarity import similarity

    ds, moa, cells = _recall_inputs(n=30)
    nb = similarity(ds, k=3, space="all")
    with pytest.raises(InputError, match="labels"):
        moa_recall_approx(nb, moa[:-1])
    with pytest.raises(InputError, match="no signature has a MoA"):
        moa_recall_approx(nb, [None] * 30)
    with pytest.raises(InputError, match="lack"):
        moa_recall_approx(nb.drop_vars("bottom_index"), moa)


# ----------------------------------------------------------------------------- annotations


def test_annotation_readers(tmp_path):
    ci = tmp_path / "compoundinfo.txt"
    ci.write_text(
        "pert_id\tcmap_name\ttarget\tmoa\n"
        "BRD-1\ta\tHDAC1|HDAC2\tHDAC inhibitor\n"
        "BRD-1\ta\tHDAC3\tHDAC inhibitor\n"
        "BRD-2\tb\tMTOR\tMTOR inhibitor|PI3K inhibitor\n"
        "BRD-3\tc\t-666\t-666\n"
    )
    assert read_annotations(ci) == {
        "HDAC inhibitor": ["BRD-1"],
        "MTOR inhibitor": ["BRD-2"],
        "PI3K inhibitor": ["BRD-2"],
    }
    assert read_annotations(ci, field="target")["HDAC3"] == ["BRD-1"]
    hub = tmp_path / "repurposing_drugs.txt"
    hub.write_text(
        "!Drug Repurposing Hub\n!version 3/24/2020\n"
        "pert_iname\tclinical_phase\tmoa\ttarget\n"
        "vorinostat\tLaunched\tHDAC inhibitor\tHDAC1|HDAC2\n"
        "sirolimus\tLaunched\tMTOR inhibitor\tMTOR\n"
    )
    assert read_annotations(hub, format="repurposing") == {
        "HDAC inhibitor": ["vorinostat"],
        "MTOR inhibitor": ["sirolimus"],
    }
    gmt = tmp_path / "pcl.gmt"
    gmt.write_text("CP_HDAC\tHDAC inhibitor\tBRD-1\tBRD-9\n")
    assert read_annotations(gmt) == {"CP_HDAC": ["BRD-1", "BRD-9"]}
    assert labels_from_sets({"X": ["a"], "Y": ["a", "b"]}, ["a", "b", "c"]).tolist() == [
        "X|Y",
        "Y",
        None,
    ]
    names, it, st = membership({"X": ["a"], "Y": ["a", "b"]}, ["b", "a", None, "a"])
    assert names == ["X", "Y"] and it.tolist() == [0, 1, 1, 3, 3] and st.tolist() == [1, 0, 1, 0, 1]
    with pytest.raises(MetadataError, match="no id column"):
        sets_from_table(pd.DataFrame({"moa": ["x"]}), source="t.txt")
    with pytest.raises(MetadataError, match="no such file"):
        read_annotations(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- synthetic release


@pytest.fixture(scope="module")
def planted():
    from cmapdask.similarity import pert_similarity

    design = sy.synth_design(3000, seed=1, n_moas=8)
    ds = sy.synth_dataset(design, metadata="tables", chunks=1000)
    dose = np.nan_to_num(np.asarray(ds["pert_dose"].values, dtype=float))
    strong = ds.isel(sig=np.flatnonzero(dose >= 3.0)).load()
    sets = sets_from_table(sy.synth_compoundinfo(design))
    ps = pert_similarity(strong).compute()
    return design, strong, sets, ps


def test_enrichment_finds_each_planted_moa_for_its_members(planted):
    design, strong, sets, ps = planted
    m = ps["pert_summary"].chunk({"pert": 20})
    res = enrich_ranked(m, sets, n_top=10, permutations=1000)
    tab = enrichment_table(res)
    truth = dict(zip(*sy.synth_compoundinfo(design)[["pert_id", "moa"]].T.values, strict=False))
    own = tab[[truth[lst] == s for lst, s in zip(tab["list"], tab["set"], strict=False)]]
    assert len(own) == len(ps["pert"])  # every compound's own MoA was tested
    assert (own["q_ks_top"] < 0.05).all()  # KS: 75 of 75 at FDR < 0.05
    assert (own["q_fisher_top"] < 0.05).all()
    assert (own["es_top"] > 0.8).mean() > 0.9
    # and it is the most enriched set at the top of every compound's list
    best = tab.sort_values(["list", "es_top"], ascending=[True, False]).groupby("list").head(1)
    assert all(truth[lst] == s for lst, s in zip(best["list"], best["set"], strict=False))


def test_moa_recall_approx_on_planted_classes(planted):
    from cmapdask.similarity import similarity

    design, strong, sets, ps = planted
    labels = labels_from_sets(sets, strong["pert_id"].values)
    nb = similarity(strong, k=200)
    res = moa_recall_approx(nb, labels, cells=strong["cell_iname"].values).compute()
    assert float(res["auroc_min"].sel(group="all")) >= 0.9  # measured: 0.99999
    assert (res["auroc"].values >= 0.9).all()


def test_candidate_pcls_recover_planted_classes(planted, tmp_path):
    from cmapdask.clustering import hierarchical_perts

    design, strong, sets, ps = planted
    h = hierarchical_perts(ps["pert_summary"], n_clusters=8)
    cand = candidate_pcls(ps["pert_summary"], h["cluster"].values, sets)
    assert len(cand) == 8
    assert (cand["shared_fraction"] == 1).all() and sorted(cand["annotation"]) == sorted(sets)
    assert (cand["q"] < 0.05).all() and (cand["internal"] > 0.1).all()
    path = write_pcl_gmt(cand, tmp_path / "cand.gmt")
    back = read_gmt(path)
    assert sorted(map(sorted, back.values())) == sorted(map(sorted, sets.values()))


# ----------------------------------------------------------------------------- CLI and plots


def test_cli_cluster_enrich_recall_and_plots(planted, tmp_path, capsys):
    from cmapdask.cli import main
    from cmapdask.io.store import write_store
    from cmapdask.similarity import pert_similarity, similarity, write_similarity

    design, strong, sets, ps = planted
    st = strong.isel(sig=slice(0, 300))
    url = str(tmp_path / "s.zarr")
    write_store(st, url)
    write_similarity(similarity(st, k=100), url)
    write_similarity(pert_similarity(st), url)
    ann = tmp_path / "compoundinfo.txt"
    sy.synth_compoundinfo(design).fillna("-666").to_csv(ann, sep="\t", index=False)
    common = ["--annotations", str(ann), "--scheduler", "none", "--quiet"]
    assert (
        main(
            [
                "cluster",
                url,
                "--method",
                "hierarchical",
                "--k",
                "8",
                "--matrix",
                "similarity/pearson_landmark_pert",
                "--name",
                "h8",
                "--heatmap",
                str(tmp_path / "h.png"),
                *common,
            ]
        )
        == 0
    )
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert q["adjusted_rand"] > 0.9
    assert (tmp_path / "h.png").stat().st_size > 1000
    # signature clusterings: k-means and the kNN graph (Leiden where installed)
    assert (
        main(
            [
                "cluster",
                url,
                "--method",
                "kmeans",
                "--k",
                "8",
                "--components",
                "20",
                "--name",
                "km8",
                "--table",
                str(tmp_path / "km8.tsv"),
                *common,
            ]
        )
        == 0
    )
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert q["adjusted_rand"] > 0.8  # measured 1.0
    assert len(pd.read_csv(tmp_path / "km8.tsv", sep="\t")) == 300
    assert (
        main(
            [
                "cluster",
                url,
                "--method",
                "graph",
                "--neighbours",
                "similarity/pearson_landmark",
                "--name",
                "g",
                *common,
            ]
        )
        == 0
    )
    q = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert q["adjusted_rand"] > 0.8  # measured 1.0 (Leiden)
    assert (
        main(
            [
                "cluster",
                url,
                "--method",
                "graph",
                "--name",
                "x",
                "--heatmap",
                str(tmp_path / "x.png"),
                *common,
            ]
        )
        == 2
    )
    assert "--heatmap" in capsys.readouterr().err
    assert (
        main(
            [
                "recall",
                url,
                "--out",
                str(tmp_path / "r.tsv"),
                "--roc",
                str(tmp_path / "roc.svg"),
                *common,
            ]
        )
        == 0
    )
    rec = pd.read_csv(tmp_path / "r.tsv", sep="\t")
    assert (rec["auroc"] > 0.9).all() and (tmp_path / "roc.svg").read_text().startswith("<?xml")
    assert (
        main(
            [
                "enrich",
                url,
                "--member",
                "similarity/pearson_landmark_pert",
                "--n-top",
                "10",
                "--permutations",
                "200",
                "--out",
                str(tmp_path / "e.tsv"),
                *common,
            ]
        )
        == 0
    )
    assert len(pd.read_csv(tmp_path / "e.tsv", sep="\t")) > 0
    assert (
        main(
            [
                "enrich",
                url,
                "--clusters",
                "clusters/h8",
                "--member",
                "similarity/pearson_landmark_pert",
                "--pcl-gmt",
                str(tmp_path / "c.gmt"),
                "--out",
                str(tmp_path / "c.tsv"),
                *common,
            ]
        )
        == 0
    )
    assert len(read_gmt(tmp_path / "c.gmt")) >= 6
    # bad input: one line, exit code 2
    assert main(["cluster", url, "--method", "kmeans", "--name", "x", *common]) == 2
    assert "needs --k" in capsys.readouterr().err


def test_running_sum_plot(tmp_path):
    from cmapdask.plots import plot_running_sum

    s = np.random.default_rng(0).standard_normal(100)
    out = plot_running_sum(s, np.argsort(-s)[:5], tmp_path / "rs.png", title="top 5")
    assert os.path.getsize(out) > 1000
    with pytest.raises(InputError, match="png or .svg"):
        plot_running_sum(s, [1], tmp_path / "rs.pdf")


# ----------------------------------------------------------------------------- a real query result


@pytest.fixture(scope="module")
def query_result(tmp_path_factory):
    """A connectivity query of the synthetic release: each compound's strongest-dose
    signature (top/bottom 50 landmarks) is one query, named by its pert_id; τ from a
    background built over every signature; written as CLUE's result folder too."""
    import warnings

    from cmapdask.connectivity import build_background, build_index, query, write_result
    from cmapdask.io.store import write_store

    tmp = tmp_path_factory.mktemp("query")
    design = sy.synth_design(1200, seed=2, n_moas=4, n_compounds=16)
    ds = sy.synth_dataset(design, metadata="tables").compute()
    url = str(tmp / "syn.zarr")
    write_store(ds, url)
    build_index(url, space="landmark")
    build_background(url, reference="all", space="landmark")
    sets = sets_from_table(sy.synth_compoundinfo(design))
    strong = (ds["pert_type"].values == "trt_cp") & (ds["pert_idose"].values == "10 uM")
    genes = ds["gene"].values
    up, dn = {}, {}
    for p in sorted({m for ms in sets.values() for m in ms}):
        i = np.flatnonzero(strong & (ds["pert_id"].values == p))[0]
        order = np.argsort(-ds["expr"].values[i], kind="stable")
        up[p], dn[p] = list(genes[order[:50]]), list(genes[order[-50:]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = query(url, up, dn, space="landmark")
    folder = str(tmp / "result")
    write_result(res, folder)
    truth = {p: m for m, ps in sets.items() for p in ps}
    return design, res, folder, sets, truth


def _own_moa_rows(tab, truth):
    return tab[[truth[lst] == s for lst, s in zip(tab["list"], tab["set"], strict=False)]]


def test_query_result_by_tau_finds_each_members_moa(query_result):
    design, res, folder, sets, truth = query_result
    er = enrich_ranked(res["ps"], sets, item_field="pert_id", n_top=50, permutations=1000)
    tab = enrichment_table(er)
    own = _own_moa_rows(tab, truth)
    assert len(own) == 16  # one query per compound, its own MoA tested in each
    # measured: q_ks_top and q_fisher_top 0.004-0.020 (group null, smallest p 1/1001, BH
    # over 4 sets) and no other MoA below 0.05; the query's own compound is left out
    assert (own["q_ks_top"] < 0.05).all() and (own["q_fisher_top"] < 0.05).all()
    perts = res["pert_id"].values
    for row in own.itertuples():  # hits: the signatures of the MoA's other compounds
        others = set(sets[row.set]) - {row.list}
        assert row.n_hits == np.isin(perts, list(others)).sum()
    best = tab.sort_values(["list", "es_top"], ascending=[True, False]).groupby("list").head(1)
    assert all(truth[lst] == s for lst, s in zip(best["list"], best["set"], strict=False))
    # the same lists read back from the result folder give the same enrichment
    from cmapdask.enrich import read_ranked_lists

    lists = read_ranked_lists(folder)
    assert lists.dims == ("query", "sig") and "pert_id" in lists.coords
    np.testing.assert_allclose(lists.values, res["ps"].values, rtol=1e-6)
    again = enrich_ranked(
        lists.chunk({"query": 5}), sets, item_field="pert_id", n_top=50, permutations=1000
    ).compute()
    xr.testing.assert_allclose(
        again[["es_top", "p_ks_top", "q_ks_top", "q_fisher_top"]].drop_attrs(),
        er[["es_top", "p_ks_top", "q_ks_top", "q_fisher_top"]].compute().drop_attrs(),
    )
    with pytest.raises(InputError, match="unknown result variable"):
        read_ranked_lists(folder, variable="nope")
    with pytest.raises(InputError, match="has no gutc/ps_pert_summary"):
        read_ranked_lists(folder, variable="ps_pert_summary")  # written without summaries


def test_cli_enrich_accepts_a_query_result(query_result, tmp_path, capsys):
    from cmapdask.cli import main

    design, res, folder, sets, truth = query_result
    ann = tmp_path / "compoundinfo.txt"
    sy.synth_compoundinfo(design).fillna("-666").to_csv(ann, sep="\t", index=False)
    out = tmp_path / "enrich.tsv"
    assert (
        main(
            [
                "enrich",
                folder,
                "--annotations",
                str(ann),
                "--n-top",
                "50",
                "--out",
                str(out),
                "--running-sum",
                str(tmp_path / "rs.svg"),
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    tab = pd.read_csv(out, sep="\t")
    own = _own_moa_rows(tab, truth)
    assert len(own) == 16 and (own["q_ks_top"] < 0.05).all()
    assert (tmp_path / "rs.svg").read_text().startswith("<?xml")
    # one GCTx of the folder works as well; a missing folder is one line, exit code 2
    assert (
        main(
            [
                "enrich",
                os.path.join(folder, "matrices", "gutc", "ns_sig.gctx"),
                "--annotations",
                str(ann),
                "--out",
                str(tmp_path / "ns.tsv"),
                "--max-q",
                "0.05",
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    ns = pd.read_csv(tmp_path / "ns.tsv", sep="\t")
    assert set(_own_moa_rows(ns, truth)["list"]) == set(truth)
    capsys.readouterr()
    assert (
        main(
            [
                "enrich",
                str(tmp_path / "missing"),
                "--annotations",
                str(ann),
                "--out",
                str(tmp_path / "x.tsv"),
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 2
    )
    assert "not a query result folder" in capsys.readouterr().err


def test_calibration_shuffled_annotations_on_a_query_result(query_result):
    """Shuffled MoA annotations (random compounds per set) on the τ lists of a real query:
    with the group null about 5 % of p fall below 0.05. (Random items instead of random
    compounds give 41-46 % for KS: a compound's signatures move together.)"""
    design, res, folder, sets, truth = query_result
    lists = res["ps"].compute()
    perts = sorted(truth)
    fr = {f: [] for f in _P_FIELDS_ALL}
    n_shuffles = 40
    for k in range(n_shuffles):
        sh = shuffle_sets(sets, perts, seed=100 + k)
        r = enrich_ranked(
            lists, sh, item_field="pert_id", n_top=50, permutations=200, seed=k
        ).compute()
        assert r.attrs["cmapdask"]["null"] == "groups"
        for f in fr:
            fr[f].append(r[f].values.ravel())
    for f, v in fr.items():
        v = np.concatenate(v)
        v = v[np.isfinite(v)]
        frac = (v < 0.05).mean()
        # 2,560 tests (16 lists x 4 sets x 40 shuffles), correlated within a shuffle:
        # tolerance 6 binomial s.d. (0.026). Measured: KS top 0.059, bottom 0.048; top-N
        # counts 0.035 and 0.034 (discrete, so at or below nominal)
        tol = 6 * np.sqrt(0.05 * 0.95 / v.size)
        if f.startswith("p_ks"):
            assert abs(frac - 0.05) < tol, (f, frac)
        else:
            assert frac < 0.05 + tol, (f, frac)
