"""Array layer: every score path against a plain per-signature reference."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.stats import false_discovery_control

from cmapdask.connectivity.es import combine_wtcs, enrichment_scores
from cmapdask.connectivity.fdr import fdr_bh, fdr_null, random_query_pvalues
from cmapdask.connectivity.ncs import apply_ncs, fit_ncs, group_labels, group_stats
from cmapdask.connectivity.ranks import rank_descending, rank_signatures
from cmapdask.connectivity.summaries import aggregate_maxq, maxq
from cmapdask.connectivity.tau import GRID, background_table, tau_binned, tau_exact
from cmapdask.errors import InputError
from tests._connectivity_helpers import read_gctx, reference_es

CHUNKS = [(7, 7, 6), (5, 1, 14), (20,)]


def _scores(rng, n_sig=20, n_gene=60):
    # rounded so that ties occur: the stable rank must break them by gene order
    return np.round(rng.normal(size=(n_sig, n_gene)), 1).astype(np.float32)


@pytest.mark.parametrize("metric", ["wtcs", "cs"])
@pytest.mark.parametrize("g", [0, 1, 5, 30, 60])
def test_es_matches_full_walk(metric, g):
    rng = np.random.default_rng(g)
    s = _scores(rng)
    s[3, :] = 0.0  # all-zero signature: weighted falls back to equal weights
    idx = rng.choice(s.shape[1], size=g, replace=False)
    r = rank_descending(s)
    es, lead = enrichment_scores(r[:, idx], s[:, idx], s.shape[1], metric=metric)
    for i in range(s.shape[0]):
        e_ref, l_ref = reference_es(s[i].astype(float), idx, weighted=metric == "wtcs")
        assert es[i] == pytest.approx(e_ref, abs=1e-12)
        assert lead[i] == pytest.approx(l_ref, abs=1e-12)
    assert np.all(np.abs(es) <= 1)


def test_es_bad_input():
    with pytest.raises(InputError):
        enrichment_scores(np.ones((2, 3)), np.ones((2, 4)), 10)
    with pytest.raises(InputError):
        rank_descending(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("chunks", CHUNKS)
def test_rank_signatures_dask(chunks):
    s = _scores(np.random.default_rng(1))
    d = rank_signatures(da.from_array(s, chunks=(chunks, (25, 35))))
    np.testing.assert_array_equal(d.compute(), rank_descending(s))


def test_wtcs_combination_rules():
    up = np.array([0.5, 0.5, 0.0, 0.0, -0.4, 0.3])
    dn = np.array([-0.3, 0.2, 0.0, -0.2, 0.1, 0.0])
    np.testing.assert_allclose(combine_wtcs(up, dn), [0.4, 0, 0, 0.1, -0.25, 0.15])
    np.testing.assert_allclose(combine_wtcs(up, dn, tail="up"), up)
    np.testing.assert_allclose(combine_wtcs(up, dn, tail="down"), -dn)


def _ncs_reference(w, labels, ref):
    """Per query, per group loop straight from ALGORITHMS.md §4 (no fallback needed)."""
    out = np.zeros_like(w)
    for q in range(w.shape[0]):
        for g in set(labels):
            m = labels == g
            r = w[q, m & ref]
            mp = max(0.01, r[r > 0].mean())
            mn = max(0.01, -r[r < 0].mean())
            x = w[q, m]
            out[q, m] = np.where(x > 0, x / mp, np.where(x < 0, x / mn, 0))
    return out


@pytest.mark.parametrize("chunks", CHUNKS)
def test_ncs_against_reference_and_dask(chunks):
    rng = np.random.default_rng(3)
    w = np.round(rng.uniform(-1, 1, size=(3, 20)), 2)
    w[:, ::6] = 0.0
    pt = np.array(["trt_cp", "trt_sh", "trt_poscon", "ctl_vehicle"] * 5)
    cell = np.array(["A", "A", "B", "B", "B"] * 4)
    labels = group_labels(pt, cell)
    assert set(labels) == {"trt_cp:A", "trt_cp:B", "trt_sh:A", "trt_sh:B"}
    ref = np.ones(20, bool)
    ref[[2, 10, 19]] = False
    groups, codes = np.unique(labels, return_inverse=True)
    for g in groups:  # every group's reference has both signs for every query
        first = np.flatnonzero((labels == g) & ref)[:2]
        w[:, first] = np.abs(w[:, first]) + 0.01
        w[:, first[1]] *= -1
    expected = _ncs_reference(w, labels, ref)
    stats = group_stats(w, codes, ref, groups.size)
    norm = fit_ncs(stats, groups)
    assert (norm.rule_pos == 0).all() and (norm.rule_neg == 0).all()
    np.testing.assert_allclose(apply_ncs(w, codes, norm), expected, atol=1e-12)
    wd = da.from_array(w, chunks=((3,), chunks))
    sd = group_stats(wd, codes, ref, groups.size)
    assert isinstance(sd, da.Array)
    np.testing.assert_allclose(sd.compute(), stats)
    out = apply_ncs(wd, da.from_array(codes, chunks=chunks), norm)
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute(), expected, atol=1e-12)


def test_ncs_fallback_rules():
    # groups: trt_cp:A (ref), trt_cp:B (no ref -> same pert_type), trt_sh:A (no ref, only
    # sh group -> same cell A), trt_xx:C (nothing shared -> all groups)
    w = np.array([[0.5, 0.3, -0.2, 0.4, 0.1, -0.6, 0.2, 0.9, 0.3]])
    pt = ["trt_cp", "trt_cp", "trt_cp", "trt_cp", "trt_sh", "trt_sh", "trt_xx", "trt_oe", "trt_oe"]
    cell = ["A", "A", "A", "B", "A", "A", "C", "D", "D"]
    ref = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1], bool)
    labels = group_labels(pt, cell)
    groups, codes = np.unique(labels, return_inverse=True)
    norm = fit_ncs(group_stats(w, codes, ref, groups.size), groups)
    g = {lab: i for i, lab in enumerate(groups)}
    assert norm.mu_pos[0, g["trt_cp:A"]] == pytest.approx(0.4)
    assert norm.rule_pos[0, g["trt_cp:B"]] == 1 and norm.mu_pos[0, g["trt_cp:B"]] == 0.4
    assert norm.rule_pos[0, g["trt_sh:A"]] == 2 and norm.mu_pos[0, g["trt_sh:A"]] == 0.4
    assert norm.rule_pos[0, g["trt_xx:C"]] == 3
    assert norm.mu_pos[0, g["trt_xx:C"]] == pytest.approx(np.median([0.4, 0.6]))
    # trt_oe:D has a positive but no negative reference score: μ⁻ borrowed, recorded
    assert norm.rule_neg[0, g["trt_oe:D"]] == 3
    assert norm.provenance["rule_counts"]["pos_own"] == 2


def test_ncs_fixture_constant_ratio(fixtures):
    _, _, m, meta = read_gctx(fixtures / "cmapm" / "ncs_mcf7_frasor_er_n1x38773.gctx")
    ncs = m[0].astype(float)
    raw = np.array(meta["raw_cs"], dtype=float)
    ref = np.array(meta["is_ncs_sig"]) == "1"
    labels = group_labels(meta["pert_type"], meta["cell_iname"], grouping="global")
    groups, codes = np.unique(labels, return_inverse=True)
    # The slice cannot pin μ (it was computed over the full database), so take μ± from
    # the ratio of one signature of each sign, then every other signature must follow.
    norm = fit_ncs(group_stats(raw[None], codes, ref, groups.size), groups)
    ip, ineg = np.flatnonzero(raw > 0)[0], np.flatnonzero(raw < 0)[0]
    norm.mu_pos[:] = raw[ip] / ncs[ip]
    norm.mu_neg[:] = raw[ineg] / ncs[ineg]
    assert 1 / norm.mu_pos[0, 0] == pytest.approx(3.39, abs=0.01)
    assert 1 / norm.mu_neg[0, 0] == pytest.approx(3.255, abs=0.01)
    got = apply_ncs(raw[None], codes, norm)[0]
    # raw_cs is printed to 4 decimals: |error| <= 5e-5 * 3.4 plus the anchor's rounding
    np.testing.assert_allclose(got, ncs, atol=1e-3, rtol=1e-3)
    assert np.all(ncs[raw == 0] == 0)


def test_maxq_against_numpy():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 7, 20):
        x = rng.normal(size=(4, n))
        lo = np.percentile(x, 33, method="hazen", axis=1)
        hi = np.percentile(x, 67, method="hazen", axis=1)
        np.testing.assert_allclose(maxq(x), np.where(np.abs(lo) < np.abs(hi), hi, lo))


def test_aggregate_maxq_against_loop():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 30))
    labels = np.array([f"p{i}" for i in rng.integers(0, 9, size=30)], dtype=object)
    labels[4] = None
    uniq, got = aggregate_maxq(x, labels, min_members=2)
    for j, lab in enumerate(uniq):
        m = labels == lab
        assert m.sum() >= 2
        np.testing.assert_allclose(got[:, j], maxq(x[:, m]))
    counts = {lab: (labels == lab).sum() for lab in set(labels) if lab is not None}
    assert set(uniq) == {k for k, v in counts.items() if v >= 2}


def test_background_table_definition():
    x = np.array([0.5, 1.0, 1.0, 2.0, np.nan, -3.0])
    t = background_table(x)
    assert t.shape == GRID.shape
    assert np.all(np.abs(t) <= 100) and np.all(np.diff(t) >= -1e-9)
    at = lambda v: t[np.argmin(np.abs(GRID - v))]  # noqa: E731
    assert at(3.5) == 100 and at(-3.5) == -100
    assert at(1.0) == pytest.approx(20.0) and at(2.0) == pytest.approx(60.0)
    assert at(1.4) == pytest.approx(20.0) and at(1.6) == pytest.approx(60.0)
    assert at(-2.0) == pytest.approx(-60.0)
    # near zero: a line through the origin up to the last grid point below 1.0
    k = np.flatnonzero(GRID < 1.0)[-1]
    near = np.abs(GRID) < GRID[k]
    np.testing.assert_allclose(t[near], GRID[near] * t[k] / GRID[k], atol=1e-9)
    assert at(0.0) == 0 and t[k] == pytest.approx(20.0)
    assert np.isnan(background_table([np.nan])).all()


@pytest.mark.parametrize("chunks", CHUNKS)
def test_tau_binned_and_exact(chunks):
    rng = np.random.default_rng(7)
    ref = rng.normal(scale=1.5, size=(40, 20))
    ref[rng.random(ref.shape) < 0.1] = np.nan
    ncs = rng.normal(scale=2, size=(3, 20))
    ncs[0, 0] = 5.0
    tables = np.stack([background_table(ref[:, j]) for j in range(20)])
    expected = np.array(
        [
            [np.interp(np.clip(ncs[q, j], -4, 4), GRID, tables[j]) for j in range(20)]
            for q in range(3)
        ]
    )
    np.testing.assert_allclose(tau_binned(ncs, tables), expected, atol=1e-9)
    exact = np.array(
        [
            [
                np.sign(ncs[q, j])
                * 100
                * np.mean(np.abs(ref[~np.isnan(ref[:, j]), j]) < abs(ncs[q, j]))
                for j in range(20)
            ]
            for q in range(3)
        ]
    )
    np.testing.assert_allclose(tau_exact(ncs, ref), exact, atol=1e-12)
    nd = da.from_array(ncs, chunks=((3,), chunks))
    np.testing.assert_allclose(tau_binned(nd, tables).compute(), expected, atol=1e-9)
    np.testing.assert_allclose(tau_exact(nd, ref).compute(), exact, atol=1e-12)
    # binned τ approximates the exact one
    assert np.nanmax(np.abs(tau_binned(ncs, tables) - exact)) < 15


def test_fdr_null_properties():
    rng = np.random.default_rng(8)
    obs = np.concatenate([rng.normal(size=300), rng.normal(3, 0.5, size=20)])
    null = rng.normal(size=200)
    x = np.concatenate([obs, null])
    is_null = np.r_[np.zeros(obs.size, bool), np.ones(null.size, bool)]
    q = fdr_null(x, is_null)
    assert np.all((q >= 0) & (q <= 1))
    for sign in (1, -1):
        m = np.sign(x) == sign
        o = np.argsort(np.abs(x[m]))
        assert np.all(np.diff(q[m][o]) <= 1e-12)  # monotone in |NCS|
    assert q[np.argmax(x)] == 0.0  # the ramp reaches 0 at the most extreme score
    assert np.median(q[obs.size - 20 : obs.size]) < 0.5 * np.median(q[:300])
    # a tail with too few nulls gets q = 1
    assert np.all(fdr_null(np.array([1.0, 2.0, 3.0, -1.0]), np.array([0, 0, 0, 1], bool)) == 1)


def test_bh_and_random_pvalues():
    rng = np.random.default_rng(9)
    p = rng.uniform(size=50) ** 2
    np.testing.assert_allclose(fdr_bh(p), false_discovery_control(p), atol=1e-12)
    x = np.array([2.0, -1.0, 0.0])
    r = np.array([[3.0, -2.0, 1.0], [1.0, 0.5, 0.0], [-3.0, -0.5, 0.0]])
    np.testing.assert_allclose(random_query_pvalues(x, r), [0.5, 0.5, 1.0])


@pytest.mark.parametrize("metric", ["wtcs", "cs"])
def test_gene_major_kernel_equals_signature_major(metric):
    """The index is read gene-major; its kernel transposes tiles itself and must give
    exactly what the signature-major kernel gives (uneven last tile included)."""
    from cmapdask.connectivity.es import _TILE, es_of_sets
    from cmapdask.connectivity.ranks import rank_descending

    rng = np.random.default_rng(4)
    n_sig, n_genes = 3 * _TILE + 7, 300
    x = np.round(rng.normal(size=(n_sig, n_genes)), 1).astype(np.float32)  # ties
    ranks = rank_descending(x)
    union = rng.choice(n_genes, 60, replace=False)
    sets = [np.arange(0, 12), np.arange(12, 40), np.array([41, 7, 55]), np.arange(40, 60)]
    r, s = ranks[:, union], x[:, union]
    want = es_of_sets(r, s, sets, n_genes, metric=metric)
    got = es_of_sets(
        np.ascontiguousarray(r.T),
        np.ascontiguousarray(s.T),
        sets,
        n_genes,
        metric=metric,
        layout="gene",
    )
    for a, b in zip(want, got, strict=False):
        np.testing.assert_array_equal(a, b)
    assert np.abs(want[0]).max() > 0


@pytest.mark.parametrize("metric", ["wtcs", "cs"])
@pytest.mark.parametrize("n_sig", [1, 17, 40])
def test_sparse_bitset_kernel_against_full_walk(metric, n_sig):
    """Few hits in many bitset words (runs of empty words, BING-sized N) and several
    sets of a gene-major block, each against the full walk, in tiles of any fill."""
    from cmapdask.connectivity.es import es_of_sets

    rng = np.random.default_rng(n_sig)
    n_genes = 3000
    x = np.round(rng.normal(size=(n_sig, n_genes)), 2).astype(np.float32)
    x[0, :] = 0.0  # all-zero signature: weighted falls back to equal weights
    ranks = rank_descending(x)
    sets = [rng.choice(n_genes, g, replace=False) for g in (1, 3, 25, 150)]
    union = np.unique(np.concatenate(sets))
    cols = [np.searchsorted(union, s) for s in sets]
    es, lead = es_of_sets(
        np.ascontiguousarray(ranks[:, union].T),
        np.ascontiguousarray(x[:, union].T),
        cols,
        n_genes,
        metric=metric,
        layout="gene",
    )
    for k, s in enumerate(sets):
        for i in range(n_sig):
            e_ref, l_ref = reference_es(x[i].astype(float), s, weighted=metric == "wtcs")
            assert es[k, i] == pytest.approx(e_ref, abs=1e-12)
            assert lead[k, i] == pytest.approx(l_ref, abs=1e-12)
