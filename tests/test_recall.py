"""Exact MoA recall (ALGORITHMS.md §13) in the blockwise similarity pass, against a brute-force
numpy reference over every pair: chunk layouts (uneven included), cell lines, two stores, the
per-MoA table, laziness, the synthetic release with k = 20, and the ``recall`` command."""

from __future__ import annotations

import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import xarray as xr

from cmapdask import synthetic as sy
from cmapdask.annotations import labels_from_sets, sets_from_table
from cmapdask.enrich import moa_recall_approx
from cmapdask.errors import InputError
from cmapdask.similarity import similarity
from cmapdask.similarity.api import feature_genes
from cmapdask.similarity.recall import moa_recall, partner_pairs, recall_labels, recall_tables

# ----------------------------------------------------------------------------- reference


def _z(x):
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x).all(axis=1)
    x = np.where(ok[:, None], x, 0.0)
    ok &= np.ptp(x, axis=1) > 0
    x = x - x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1)
    return np.divide(x, n[:, None], out=np.zeros_like(x), where=ok[:, None]), ok


def _incidence(labels, moas):
    sets = [set() if v is None else set(v.split("|")) for v in labels]
    return np.array([[m in s for m in moas] for s in sets], dtype=bool).reshape(len(sets), -1)


def _auc(scores, positive):
    """Mann-Whitney AUROC, ties half (scipy's average ranks)."""
    p, n = positive.sum(), (~positive).sum()
    if p == 0 or n == 0:
        return np.nan
    r = scipy.stats.rankdata(scores)
    return (r[positive].sum() - p * (p + 1) / 2) / (p * n)


def brute(x, moa, cells=None, y=None, ymoa=None, ycells=None, self_col=None):
    """Every pair by brute force (float64 Pearson): group AUROCs and the per-MoA table."""
    selfmode = y is None
    zx, vx = _z(x)
    if selfmode:
        zy, vy, ymoa, ycells = zx, vx, moa, cells
        self_col = np.arange(len(moa))
    else:
        zy, vy = _z(y)
        self_col = np.full(len(moa), -1) if self_col is None else np.asarray(self_col)
    s = zx @ zy.T
    moas = sorted({p for v in [*moa, *ymoa] if v is not None for p in v.split("|")})
    mx, my = _incidence(moa, moas), _incidence(ymoa, moas)
    rp, cp = vx & mx.any(axis=1), vy & my.any(axis=1)
    mask = rp[:, None] & cp[None, :]
    mask &= np.arange(len(cp))[None, :] != self_col[:, None]
    if selfmode:
        mask &= np.triu(np.ones(mask.shape, dtype=bool), 1)
    same = (mx.astype(int) @ my.T.astype(int)) > 0
    groups = {
        "all": (_auc(s[mask], same[mask]), int((mask & same).sum()), int((mask & ~same).sum()))
    }
    if cells is not None:
        cx, cy = np.asarray(cells, dtype=object), np.asarray(ycells, dtype=object)
        for c in sorted(set(cx.tolist()) | set(cy.tolist())):
            cm = mask & (cx[:, None] == c) & (cy[None, :] == c)
            groups[c] = (_auc(s[cm], same[cm]), int((cm & same).sum()), int((cm & ~same).sum()))
    table = {}
    for q, m in enumerate(moas):
        rin, cin = mx[:, q], my[:, q]
        pos = mask & rin[:, None] & cin[None, :]
        neg = mask & ~same & (rin[:, None] | cin[None, :])
        sel = pos | neg
        prs = []
        for r in np.flatnonzero(rp & rin):
            others = vy & (np.arange(len(cp)) != self_col[r])  # every valid signature
            v = np.sort(s[r, others])
            ts = np.flatnonzero(others & cp & cin)
            lo = np.searchsorted(v, s[r, ts], side="left")
            hi = np.searchsorted(v, s[r, ts], side="right")
            n_o = others.sum() - 1
            if n_o > 0:
                prs.append(100 * (lo + 0.5 * (hi - lo - 1)) / n_o)
        prs = np.concatenate(prs) if prs else np.empty(0)
        table[m] = {
            "pairs": int(pos.sum()),
            "n_neg": int(neg.sum()),
            "auroc": _auc(s[sel], pos[sel]),
            "median_percentile": np.median(prs) if prs.size else np.nan,
            "n_ranked": int(prs.size),
            "n_sigs": int((rp & rin).sum()),
        }
    return groups, table, len(cp)


def _check(res, ref, n_cols):
    groups, moas = recall_tables(res)
    bref, tref = ref
    assert groups["group"].tolist() == list(bref)
    for row in groups.itertuples():
        auc, n_pos, n_neg = bref[row.group]
        assert (row.n_pos, row.n_neg) == (n_pos, n_neg)
        assert row.auroc_bound <= 0.005
        # the proven binning bound, plus float32 rounding of near-tied scores
        assert abs(row.auroc - auc) <= row.auroc_bound + 1e-5, row
    assert moas["moa"].tolist() == list(tref)
    step = 100.0 / max(n_cols - 2, 1)  # one rank in a row: a float32 near-tie may swap it
    for row in moas.itertuples():
        t = tref[row.moa]
        assert (row.pairs, row.n_neg, row.n_ranked, row.n_sigs) == (
            t["pairs"],
            t["n_neg"],
            t["n_ranked"],
            t["n_sigs"],
        )
        assert abs(row.auroc - t["auroc"]) <= row.auroc_bound + 1e-5
        assert abs(row.median_percentile - t["median_percentile"]) <= step + 1e-9
    return groups, moas


def _toy(n=240, g=40, seed=0):
    """Labelled signatures: 4 MoAs with planted directions, unannotated and multi-MoA
    signatures, one constant and one non-finite signature, three cell lines."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 5, n)
    x = rng.normal(size=(5, g))[lab] * 0.6 + rng.normal(size=(n, g))
    moa = np.array([f"M{v}" if v < 4 else None for v in lab], dtype=object)
    moa[::23] = "M0|M2"
    x[7] = 3.0
    x[11, 4] = np.nan
    cells = np.array([f"c{c}" for c in rng.integers(0, 3, n)], dtype=object)
    ids = np.array([f"s{i:04d}" for i in range(n)], dtype=object)
    return x.astype(np.float32), moa, cells, ids


def _ds(x, moa, cells, ids, chunks=None):
    expr = x if chunks is None else da.from_array(x, chunks=(chunks, -1))
    return xr.Dataset(
        {"expr": (("sig", "gene"), expr)},
        coords={
            "sig": ids,
            "gene": [f"g{i}" for i in range(x.shape[1])],
            "moa": ("sig", moa),
            "cell": ("sig", cells),
        },
    )


# ----------------------------------------------------------------------------- kernels and labels


def test_partner_pairs_are_every_same_moa_pair_but_self():
    lab = recall_labels(np.array(["A", "B", None, "A|B", "C", "A"], dtype=object))
    s, t = partner_pairs(lab, 0, 6)
    got = sorted(zip(s.tolist(), t.tolist(), strict=True))
    want = [(0, 3), (0, 5), (1, 3), (3, 0), (3, 1), (3, 5), (5, 0), (5, 3)]
    assert got == want
    s2, t2 = partner_pairs(lab, 3, 5)
    assert sorted(zip(s2.tolist(), t2.tolist(), strict=True)) == [(3, 0), (3, 1), (3, 5)]


# ----------------------------------------------------------------------------- one store


@pytest.mark.parametrize(
    "block_size, chunks",
    [(None, None), (240, None), (64, None), (70, None), (None, (50, 120, 30, 40))],
)
def test_recall_equals_brute_force_over_chunk_layouts(block_size, chunks):
    x, moa, cells, ids = _toy()
    ds = _ds(x, moa, cells, ids, chunks)
    res = moa_recall(ds, moa="moa", cells="cell", space="all", block_size=block_size)
    groups, moas = _check(res.compute(), brute(x, moa, cells)[:2], 240)
    assert len(groups) == 4 and len(moas) == 4
    # signature 7 (constant) and 11 (NaN) are in no pair
    assert groups["n_pos"].iloc[0] + groups["n_neg"].iloc[0] < (240 - 2) * 239 // 2


def test_recall_is_lazy_and_records_provenance():
    x, moa, cells, ids = _toy(n=120)

    def boom(*args, **kwargs):
        raise AssertionError("computed")

    with dask.config.set(scheduler=boom):
        res = moa_recall(_ds(x, moa, cells, ids, 50), moa=moa, cells=cells, space="all")
    assert isinstance(res["auroc"].data, da.Array)
    prov = res.attrs["cmapdask"]
    assert prov["method"] == "moa_recall" and prov["mode"] == "self"
    assert prov["n_block_pairs"] == 6  # upper triangle of 3 blocks


def test_recall_bad_input():
    x, moa, cells, ids = _toy(n=60)
    ds = _ds(x, moa, cells, ids)
    with pytest.raises(InputError, match="labels"):
        moa_recall(ds, moa=moa[:-1], space="all")
    with pytest.raises(InputError, match="no signature has a MoA"):
        moa_recall(ds, moa=[None] * 60, space="all")
    with pytest.raises(InputError, match="coordinate"):
        moa_recall(ds, moa="nope", space="all")
    with pytest.raises(InputError, match="bins"):
        moa_recall(ds, moa="moa", space="all", bins=1)


# ----------------------------------------------------------------------------- two stores


@pytest.mark.parametrize("block_size", [None, 45])
def test_two_stores_equal_brute_force(block_size):
    x, moa, cells, ids = _toy(n=200, seed=3)
    q, r = np.arange(0, 130), np.arange(90, 200)  # 40 signatures in both: never self-paired
    dq = _ds(x[q], moa[q], cells[q], ids[q])
    dr = _ds(x[r], moa[r], cells[r], ids[r])
    res = moa_recall(dq, dr, moa="moa", cells="cell", space="all", block_size=block_size)
    self_col = np.array([i - 90 if i >= 90 else -1 for i in q])
    ref = brute(x[q], moa[q], cells[q], x[r], moa[r], cells[r], self_col)
    _check(res.compute(), ref[:2], len(r))
    assert res.attrs["cmapdask"]["mode"] == "query"


# ----------------------------------------------------------------------------- synthetic release


def _synthetic(n):
    design = sy.synth_design(n, seed=0)
    ds = sy.synth_dataset(design, metadata="tables").compute()
    sets = sets_from_table(sy.synth_compoundinfo(design))
    return ds, labels_from_sets(sets, ds["pert_id"].values)


def _synthetic_case(n, block_size):
    ds, moa = _synthetic(n)
    cells = ds["cell_iname"].values
    x = ds["expr"].values[:, feature_genes(ds, "landmark")]
    ref = brute(x, moa, cells)
    res = moa_recall(ds, moa=moa, cells=cells, block_size=block_size).compute()
    groups, moas = _check(res, ref[:2], n)
    # the neighbour-list estimate at k = 20 is far off; its interval still holds the truth
    approx = moa_recall_approx(similarity(ds, k=20), moa, cells=cells).compute()
    a = approx.sel(group="all")
    exact = ref[0]["all"][0]
    assert float(a["auroc_min"]) <= exact <= float(a["auroc_max"])
    return abs(groups["auroc"].iloc[0] - exact), abs(float(a["auroc"]) - exact)


def test_synthetic_release_k20_small():
    d_exact, d_approx = _synthetic_case(900, 256)
    assert d_exact <= 0.005


@pytest.mark.slow
def test_synthetic_release_k20_3000_signatures():
    d_exact, d_approx = _synthetic_case(3000, 1024)
    assert d_exact <= 0.005 < d_approx
    print(f"|delta AUROC| exact {d_exact:.2e}, neighbour-list estimate {d_approx:.3f}")


# ----------------------------------------------------------------------------- command line


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_recall_on_converted_synthetic_release(tmp_path, capsys):
    from cmapdask.annotations import read_annotations
    from cmapdask.cli import main
    from cmapdask.io.store import open_store

    out, store = tmp_path / "rel", tmp_path / "s.zarr"
    common = ["--scheduler", "none", "--quiet"]
    args = ["--n-sigs", "360", "--seed", "2", "--n-moas", "3", "--n-compounds", "12"]
    assert main(["synth", str(out), *args, *common]) == 0
    tables = [f"--{t}-info={out / (t + 'info.txt')}" for t in ("sig", "gene", "compound")]
    gctx = str(next(out.glob("*.gctx")))
    assert main(["convert", gctx, str(store), *tables, "--chunk-rows", "150", *common]) == 0
    tsv, ann = tmp_path / "r.tsv", out / "compoundinfo.txt"
    # where the user meets it: a real process
    p = _cli("recall", store, "--annotations", ann, "--out", tsv, *common)
    assert p.returncode == 0, p.stderr
    assert "exact within" in p.stdout and "AUROC" in p.stdout
    groups = pd.read_csv(tsv, sep="\t")
    moas = pd.read_csv(tmp_path / "r.moa.tsv", sep="\t")
    # the same numbers as brute force over the store's signatures
    ds = open_store(str(store)).compute()
    moa = labels_from_sets(read_annotations(ann), ds["pert_id"].values)
    cells = ds["cell_id"].values if "cell_id" in ds.coords else ds["cell_iname"].values
    x = ds["expr"].values[:, feature_genes(ds, "landmark")]
    bref, tref, n = brute(x, moa, cells)
    assert groups["group"].tolist() == list(bref) and len(groups) > 1
    for row in groups.itertuples():
        assert abs(row.auroc - bref[row.group][0]) <= row.auroc_bound + 1e-5
        assert (row.n_pos, row.n_neg) == bref[row.group][1:]
    assert moas["moa"].tolist() == list(tref)
    for row in moas.itertuples():
        assert row.pairs == tref[row.moa]["pairs"]
        assert abs(row.median_percentile - tref[row.moa]["median_percentile"]) <= 100 / (n - 2)
    # the estimate is only an explicitly named option, and prints its interval
    assert main(["similarity", str(store), "--k", "20", *common]) == 0
    capsys.readouterr()
    rc = main(
        ["recall", str(store), f"--annotations={ann}", "--approximate", f"--out={tsv}"]
        + ["--overwrite", *common]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "estimate" in printed and "only known within" in printed
    est = pd.read_csv(tsv, sep="\t")
    assert {"auroc_estimate", "auroc_min", "auroc_max"} <= set(est.columns)
    assert "auroc" not in est.columns
    assert main(["recall", str(store), f"--annotations={ann}", "--member", "x", *common]) == 2
    assert capsys.readouterr().err.startswith("cmapdask: error:")
