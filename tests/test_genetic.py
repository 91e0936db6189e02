"""Genetic perturbagens end to end: the synthetic release, classes, NCS groups, targets."""

from __future__ import annotations

import subprocess
import sys
import warnings

import dask
import numpy as np
import pandas as pd
import pytest

import cmapdask.synthetic as S
from cmapdask.connectivity import build_background, build_index, query, summarize
from cmapdask.connectivity.classes import filter_class, pert_class, split_by_class
from cmapdask.connectivity.results import ranked_table
from cmapdask.connectivity.summaries import maxq
from cmapdask.connectivity.targets import TARGET_COLUMNS, target_recall, targets
from cmapdask.errors import InputError
from cmapdask.io.store import open_store, write_store
from cmapdask.io.tables import join_compounds

# 8 plate sets, one per group: groups 1 and 5 are genetic (2 x 360 perturbagens of 120
# genes in 3 classes), the other 6 hold 48 compounds of 12 MoAs.
DESIGN = dict(n_sigs=3072, seed=1, n_moas=12, n_compounds=48, n_replicates=1, genetic=True)
POSCON = "SYN-K00000047"  # relabelled trt_poscon in the store, to mix every NCS type


# ----------------------------------------------------------------------------- the release


def test_genetic_plate_sets_layout_and_tables():
    d = S.synth_design(**DESIGN)
    sig = S.synth_siginfo(d)
    group = np.arange(d.n_sigs) // S.TILE  # one plate set per group here
    genetic = sig["pert_type"].isin(S.GENETIC_TYPES).to_numpy()
    assert (genetic <= (group % 4 == 1)).all() and genetic.sum() == 2 * 360
    assert set(sig.loc[group % 4 == 1, "pert_type"]) == {"ctl_vector", *S.GENETIC_TYPES}
    assert (sig.loc[genetic, "pert_time"] == 96).all() and sig.loc[
        genetic, "pert_dose"
    ].isna().all()
    # loss-of-function and overexpression of every gene, exemplars in Touchstone
    info = S.synth_geneticinfo(d)
    assert tuple(info.columns) == S.GENETICINFO_COLUMNS and len(info) == 3 * 120
    assert set(sig.loc[genetic, "pert_id"]) == set(info["pert_id"])
    assert (sig.loc[genetic, "is_touchstone"] == 1).all()
    assert (sig.loc[sig["pert_type"] == "ctl_vector", "is_null_sig"] == 1).all()
    # in larger releases only the first three passes over the genetic map are Touchstone
    big = S.synth_design(**{**DESIGN, "n_sigs": 24 * S.TILE})
    bsig = S.synth_siginfo(big)
    bgroup = np.arange(big.n_sigs) // S.TILE
    bgen = bsig["pert_type"].isin(S.GENETIC_TYPES).to_numpy()
    touch = bsig["is_touchstone"].to_numpy() == 1
    assert set(bgroup[bgen]) == {1, 5, 9, 13, 17, 21}
    assert set(bgroup[bgen & touch]) == {1, 5, 9}
    merged = sig[genetic].merge(info, on="pert_id", suffixes=("", "_info"))
    assert (merged["cmap_name"] == merged["cmap_name_info"]).all()
    assert (merged["cmap_name"] == "G" + merged["gene_id"].astype(str)).all()
    # planted targets are genes with genetic perturbagens: the first n_moas of the truth
    cpd = S.synth_compoundinfo(d).dropna(subset=["target"])
    truth = S.synth_genetic_truth(d)
    moa_target = dict(zip(truth["moa"], truth["gene_symbol"], strict=False))
    assert (cpd["target"] == cpd["moa"].map(moa_target)).all()
    assert set(cpd["target"]) <= set(info["cmap_name"])
    # the compound plates still hold every compound
    assert set(sig.loc[sig["pert_type"] == "trt_cp", "pert_id"]) == set(cpd["pert_id"])


def test_genetic_values_chunk_independent_and_a_prefix():
    d = S.synth_design(**DESIGN)
    ref = S.synth_block(d, 0, d.n_sigs)
    np.testing.assert_array_equal(S.synth_expr(d, chunks=(500, 77, 1800, 695)).compute(), ref)
    longer = S.synth_design(**{**DESIGN, "n_sigs": 4000})
    np.testing.assert_array_equal(S.synth_block(longer, 0, d.n_sigs), ref)
    assert S.synth_siginfo(longer, stop=d.n_sigs).equals(S.synth_siginfo(d))


def test_genetic_off_keeps_the_compound_release():
    off = S.synth_design(**{**DESIGN, "genetic": False})
    assert off.n_genetic_genes == 0 and not S.synth_geneticinfo(off).shape[0]
    assert set(S.synth_siginfo(off)["pert_type"]) == {"trt_cp", "ctl_vehicle"}
    assert S.synth_compoundinfo(off)["target"].dropna().str.startswith("SYNT").all()
    with pytest.raises(InputError, match="n_genetic_genes"):
        S.synth_design(**{**DESIGN, "n_genetic_genes": 5})
    with pytest.raises(InputError, match="genetic_strength"):
        S.synth_design(**{**DESIGN, "genetic_strength": -1.0})


def test_planted_loss_of_function_mimics_inhibitors_and_opposes_agonists():
    d = S.synth_design(**DESIGN)
    x = S.synth_block(d, 0, d.n_sigs).astype(float)
    truth, genes = S.synth_truth(d), S.synth_genetic_truth(d)
    u = S.synth_moa_directions(d).values.astype(float)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    gi, pt = truth["gene_index"].to_numpy(), truth["pert_type"].to_numpy()
    proj = {}
    for a in range(d.n_moas):
        for cls in S.GENETIC_TYPES:
            rows = (gi == a) & (pt == cls)
            proj[a, cls] = float((x[rows] @ u[a]).mean())
        lof_sign = genes.loc[a, "lof_sign"]
        assert lof_sign == (-1 if a % 3 == 1 else 1)  # agonists: the loss opposes
        assert proj[a, "trt_sh.cgs"] * lof_sign > 5 and proj[a, "trt_xpr"] * lof_sign > 5
        assert proj[a, "trt_oe"] * lof_sign < -5  # overexpression: the other way
    # decoys carry none of the MoA directions; strength depends on the cell line
    decoy = gi >= d.n_moas
    assert np.abs(x[decoy] @ u.T).mean() < 1.5
    s = truth.loc[gi == 0, "gene_strength"].abs()
    assert s.nunique() > 1 and (s > 0).all()
    # genetic_strength=0: the same layout, no planted genetic signal
    off = S.synth_design(**{**DESIGN, "genetic_strength": 0.0})
    x0 = S.synth_block(off, 0, off.n_sigs).astype(float)
    assert (S.synth_truth(off)["gene_strength"] == 0).all()
    target = (gi >= 0) & (gi < d.n_moas)
    assert np.abs((x0[target] * u[gi[target]]).sum(axis=1)).mean() < 1.5
    np.testing.assert_array_equal(x0[gi < 0], x[gi < 0])  # compound plates unchanged


# ----------------------------------------------------------------------------- a store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = S.synth_design(**DESIGN)
    with dask.config.set(scheduler="threads"):
        ds = S.synth_dataset(d, metadata="tables").compute()
        extra = join_compounds(ds["pert_id"].values, S.synth_compoundinfo(d))
        ds = ds.assign_coords({k: ("sig", extra[k]) for k in ("moa", "target")})
        pt = ds["pert_type"].values.copy()
        pt[ds["pert_id"].values == POSCON] = "trt_poscon"
        ds = ds.assign_coords(pert_type=("sig", pt))
        url = str(tmp_path_factory.mktemp("genetic") / "store.zarr")
        write_store(ds, url)
        build_index(url, space="landmark")
        build_background(url, space="landmark")
    return url, d


def _moa_query(d, a=0):
    u = S.synth_moa_directions(d).isel(moa=a)
    order = np.argsort(-u.values, kind="stable")
    genes = u["gene"].values
    return list(genes[order[:50]]), list(genes[order[-50:]])


def test_class_split_equals_filtering_by_pert_type(store):
    url, d = store
    up, down = _moa_query(d)
    with dask.config.set(scheduler="threads"):
        res = query(url, {"q": up}, {"q": down}, space="landmark")
        summ = summarize(res).compute()
    ds = open_store(url)
    type_of = pd.Series(ds["pert_type"].values, index=ds["pert_id"].values)
    type_of = type_of[~type_of.index.duplicated()]
    for level in ("pert_summary", "pert_cell"):
        perts = (
            summ[level].values
            if level == "pert_summary"
            else summ["pert_cell_pert_id"].values
            if "pert_cell_pert_id" in summ.coords
            else summ["pert_id"].values
        )
        types = type_of.reindex(perts).to_numpy()
        parts = split_by_class(summ, level=level)
        assert set(parts) == {"CP", "CTL", "KD", "CRISPR", "OE"}
        assert sum(p.sizes[level] for p in parts.values()) == summ.sizes[level]
        for cls, part in parts.items():
            want = np.flatnonzero(pert_class(types) == cls)
            expect = summ.isel({level: want})
            assert list(part[level].values) == list(expect[level].values)
            for v in (f"ns_{level}", f"ps_{level}"):
                np.testing.assert_array_equal(part[v].values, expect[v].values)
            assert filter_class(summ, cls, level=level).identical(part)
    # by pert_type, and classes that name several types
    kd = filter_class(summ, "trt_sh.cgs")
    assert set(type_of.reindex(kd["pert_summary"].values)) == {"trt_sh.cgs"}
    cp = filter_class(summ, "CP")
    assert set(type_of.reindex(cp["pert_summary"].values)) == {"trt_cp", "trt_poscon"}
    table = ranked_table(res.compute(), None, "q")
    assert (table["pert_class"].to_numpy() == pert_class(table["pert_type"])).all()


def _reference_ncs(wtcs, pert_type, cell, is_ref):
    """ALGORITHMS.md §4 written out: groups, own means, fallback medians, division."""
    alias = {"trt_poscon": "trt_cp", "ctl_vehicle": "trt_cp"}
    gtype = np.array([alias.get(p, p) for p in pert_type], dtype=object)
    labels = np.array([f"{t}:{c}" for t, c in zip(gtype, cell, strict=True)], dtype=object)
    groups = sorted(set(labels))
    out = np.zeros_like(wtcs)
    for q in range(wtcs.shape[0]):
        w = wtcs[q]
        own = {}
        for g in groups:
            m = (labels == g) & is_ref
            pos, neg = w[m & (w > 0)], w[m & (w < 0)]
            own[g] = (
                max(0.01, pos.mean()) if pos.size else None,
                max(0.01, -neg.mean()) if neg.size else None,
            )
        for g in groups:
            mu = []
            for k in (0, 1):
                value = own[g][k]
                t, c = g.split(":", 1)
                for peers in (
                    [h for h in groups if h.split(":", 1)[0] == t],
                    [h for h in groups if h.split(":", 1)[1] == c],
                    groups,
                ):
                    if value is not None:
                        break
                    vals = [own[h][k] for h in peers if own[h][k] is not None]
                    value = float(np.median(vals)) if vals else None
                mu.append(1.0 if value is None else value)
            m = labels == g
            out[q, m] = np.where(w[m] > 0, w[m] / mu[0], np.where(w[m] < 0, w[m] / mu[1], 0.0))
    return out, groups


@pytest.mark.parametrize("reference", ["all", "touchstone"])
def test_ncs_groups_for_genetic_types_follow_the_spec(store, reference):
    url, d = store
    up, down = _moa_query(d, 1)
    up2, down2 = _moa_query(d, 4)
    with dask.config.set(scheduler="threads"):
        res = query(
            url, {"a": up, "b": up2}, {"a": down, "b": down2}, space="landmark", reference=reference
        ).compute()
    ds = open_store(url)
    pt = np.asarray(ds["pert_type"].values, dtype=object)
    cell = np.asarray(ds["cell_iname"].values, dtype=object)
    is_ref = np.ones(pt.size, bool) if reference == "all" else ds["is_touchstone"].values == 1
    ref, groups = _reference_ncs(res["cs"].values.astype(float), pt, cell, is_ref)
    kinds = {g.split(":")[0] for g in groups}
    assert kinds == {"trt_cp", "trt_sh.cgs", "trt_xpr", "trt_oe", "ctl_vector"}
    np.testing.assert_allclose(res["ncs"].values, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- targets


def _targets(url, **kw):
    with dask.config.set(scheduler="threads"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return targets(url, space="landmark", **kw)


@pytest.fixture(scope="module")
def tables(store):
    url, _ = store
    return _targets(url), _targets(url, classes=("KD", "CRISPR", "OE"))


def test_planted_targets_are_recovered(store, tables):
    url, d = store
    lof, every = tables
    # every class: the target's loss (inhibitors, antagonists) or its overexpression
    # (agonists) is the compound's strongest genetic connection
    r = every.attrs["cmapdask"]["recall"]
    assert r["n_compounds"] >= 20 and r["auroc"] >= 0.9 and r["hit_rate"] >= 0.9, r
    # loss of function only: inhibitors and antagonists find it, agonists find its opposite
    per, summary = target_recall(lof)
    info = S.synth_compoundinfo(d).set_index("pert_id")
    agonist = per["pert_id"].map(info["moa"]).str.split(" ").str[1] == "agonist"
    assert agonist.any() and (~agonist).any()
    assert per.loc[~agonist, "auroc"].mean() >= 0.9, per
    assert per.loc[agonist, "auroc"].mean() <= 0.1, per
    assert lof.attrs["cmapdask"]["recall"] == summary
    # per cell line too (cells with both the compound and the gene's perturbagens)
    cells = sorted(set(lof["cell_id"]) - {"summary"})
    assert cells
    for c in cells:
        _, rc = target_recall(every, cell_id=c)
        assert rc["n_compounds"] == 0 or rc["auroc"] >= 0.8, (c, rc)


def test_shuffled_annotations_give_chance(store, tables):
    url, _ = store
    lof, _ = tables
    genes = np.array(sorted(set(lof["gene_symbol"])), dtype=object)
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(5):
        shuffled = {p: [str(rng.choice(genes))] for p in sorted(set(lof["pert_id"]))}
        t = lof.copy()
        t["is_target"] = [
            g in shuffled[p] for p, g in zip(t["pert_id"], t["gene_symbol"], strict=True)
        ]
        per, r = target_recall(t)
        aucs.append(r["auroc"])
    # each compound's AUROC is the normalised rank of an independently drawn gene: about
    # uniform on [0, 1] (sd 0.29); the mean of 5 x ~24 compounds has sd about 0.027, so
    # 0.5 +- 0.1 is over 3.5 sd while the planted annotations give >= 0.9 above
    assert abs(np.mean(aucs) - 0.5) < 0.1, aucs
    # the API's annotations argument marks the same rows (one compound, to stay quick)
    one = "SYN-K00000000"
    only = f"pert_id == '{one}' and is_touchstone == 1"
    api = _targets(url, compounds=only, annotations={one: shuffled[one]})
    assert set(api.loc[api["is_target"], "gene_symbol"]) == set(shuffled[one])
    _, r = target_recall(api)
    expect, _ = target_recall(t[t["pert_id"] == one])
    assert r["n_compounds"] == 1 and r["auroc"] == pytest.approx(expect["auroc"].iloc[0])


def test_target_table_shape_and_ranks(store, tables):
    url, d = store
    lof, _ = tables
    assert tuple(lof.columns) == TARGET_COLUMNS
    n_genes = d.n_genetic_genes
    for (_, _), g in lof.groupby(["pert_id", "cell_id"]):
        assert len(g) == n_genes == g["gene_symbol"].nunique()
        ranked = g.dropna(subset=["tau"]).sort_values("rank")
        assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
        assert ranked["tau"].is_monotonic_decreasing
        assert set(g["pert_class"].dropna()) <= {"KD", "CRISPR"}
    assert (lof["gene_id"] == lof["gene_symbol"].str[1:]).all()
    cpd = S.synth_compoundinfo(d).set_index("pert_id")
    summ = lof[lof["cell_id"] == "summary"]
    assert (summ["is_target"] == (summ["gene_symbol"] == summ["pert_id"].map(cpd["target"]))).all()
    ds = open_store(url)
    touch = ds["is_touchstone"].values == 1
    cp = np.isin(ds["pert_type"].values, ["trt_cp", "trt_poscon"])
    assert set(summ["pert_id"]) == set(ds["pert_id"].values[touch & cp])


def test_targets_equal_query_and_summaries_of_one_compound(store, tables):
    """The summary τ of a compound and gene is maxq over the compound's queries and the
    gene's perturbagens of one class of summarize(query(...)), best class."""
    url, _ = store
    lof, _ = tables
    ds = open_store(url)
    pert = "SYN-K00000003"
    rows = np.flatnonzero((ds["pert_id"].values == pert) & (ds["is_touchstone"].values == 1))
    ranks = ds["expr"].values[rows]
    genes = ds["gene"].values
    ups, downs = {}, {}
    for i, x in zip(rows, ranks, strict=True):
        order = np.argsort(-x, kind="stable")
        ups[str(i)], downs[str(i)] = list(genes[order[:50]]), list(genes[order[-50:]])
    with dask.config.set(scheduler="threads"):
        summ = summarize(
            query(url, ups, downs, space="landmark", reference="touchstone", fdr="none")
        ).compute()
    kd = filter_class(summ, ["KD", "CRISPR"])
    name = pd.Series(ds["cmap_name"].values, index=ds["pert_id"].values)
    name = name[~name.index.duplicated()]
    tau = kd["ps_pert_summary"].values  # (query, pert)
    sym = name.reindex(kd["pert_summary"].values).to_numpy()
    cls = pert_class(
        pd.Series(ds["pert_type"].values, index=ds["pert_id"].values)
        .groupby(level=0)
        .first()
        .reindex(kd["pert_summary"].values)
    )
    got = lof[(lof["pert_id"] == pert) & (lof["cell_id"] == "summary")].set_index("gene_symbol")
    for g in got.index[:10].tolist() + got.index[-5:].tolist():
        best = max(maxq(tau[:, (sym == g) & (cls == c)].ravel()) for c in ("KD", "CRISPR"))
        assert got.loc[g, "tau"] == pytest.approx(best, abs=1e-4), g


def test_targets_bad_input(store):
    url, _ = store
    with pytest.raises(InputError, match="classes"):
        _targets(url, classes=("CP",))
    with pytest.raises(InputError, match="selects no compound"):
        _targets(url, compounds="pert_type == 'trt_sh.cgs'")


def test_targets_cli(store, tmp_path):
    url, _ = store
    out = tmp_path / "t.tsv"
    cmd = [sys.executable, "-m", "cmapdask", "targets", url, "--space", "landmark"]
    first = "is_touchstone == 1 and pert_id < 'SYN-K00000012'"  # one compound per MoA
    proc = subprocess.run(
        [*cmd, "--compounds", first, "--classes", "KD,CRISPR,OE", "--out", str(out)]
        + ["--scheduler", "none"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "annotated targets: AUROC 1.000" in proc.stderr or "AUROC 0.9" in proc.stderr
    t = pd.read_csv(out, sep="\t")
    assert tuple(t.columns) == TARGET_COLUMNS
    assert set(t["cell_id"]) > {"summary"} and t["pert_id"].nunique() == 12
    assert (t.loc[t["is_target"] & (t["cell_id"] == "summary"), "rank"] == 1).mean() > 0.8
    # without --out: the top rows on stdout; bad input: one line, exit 2
    proc = subprocess.run(
        [*cmd, "--compounds", "pert_id == 'SYN-K00000000'", "--top-k", "3", "--scheduler", "none"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split("\t") == list(TARGET_COLUMNS) and len(lines) == 4
    assert lines[1].split("\t")[TARGET_COLUMNS.index("is_target")] == "True"
    bad = subprocess.run(
        [*cmd, "--classes", "XX", "--scheduler", "none"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("cmapdask: error:")
