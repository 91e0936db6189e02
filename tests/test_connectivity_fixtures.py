"""Connectivity maths against the Broad's own outputs (fixtures/cmapm)."""

from __future__ import annotations

import numpy as np
import pytest

from cmapdask.connectivity.es import combine_wtcs, enrichment_scores
from cmapdask.connectivity.ranks import rank_descending
from tests._connectivity_helpers import read_gct_matrix, read_gctx, read_set_file


def _es_of(scores, ids, members, metric):
    pos = {g: i for i, g in enumerate(ids)}
    idx = np.array([pos[g] for g in members if g in pos], dtype=int)
    ranks = rank_descending(scores)
    es, lead = enrichment_scores(ranks[:, idx], scores[:, idx], scores.shape[1], metric=metric)
    return es, lead


@pytest.mark.parametrize(
    ("metric", "up", "dn", "wtcs"),
    [("wtcs", 0.7449, -0.8016, 0.7733), ("cs", 0.5516, -0.5585, 0.5551)],
)
def test_hdac_es_and_wtcs(fixtures, metric, up, dn, wtcs):
    d = fixtures / "cmapm"
    rids, _, mat = read_gct_matrix(d / "trichostatina_mcf7_10um_score.gct")
    scores = mat.T.astype(np.float32)
    up_set = read_set_file(d / "HDAC_UP.grp")["HDAC_UP"]
    dn_set = read_set_file(d / "HDAC_DN.grp")["HDAC_DN"]
    es_up, _ = _es_of(scores, rids, up_set, metric)
    es_dn, _ = _es_of(scores, rids, dn_set, metric)
    # the fixture's figures are printed to 4 decimals: the Broad's tolerance is 1e-4
    assert es_up[0] == pytest.approx(up, abs=5e-5)
    assert es_dn[0] == pytest.approx(dn, abs=5e-5)
    assert combine_wtcs(es_up, es_dn)[0] == pytest.approx(wtcs, abs=5e-5)


def test_hdac_rank_file_orders_scores_descending(fixtures):
    # The rank file was made from unrounded scores, so ties in the 4-decimal text may
    # be broken differently; it must still be a descending order of the printed scores
    # and agree with our ranks outside tie groups.
    d = fixtures / "cmapm"
    rids, _, mat = read_gct_matrix(d / "trichostatina_mcf7_10um_score.gct")
    rids2, _, rank = read_gct_matrix(d / "trichostatina_mcf7_10um_rank_full.gct")
    assert rids == rids2
    s, r = mat[:, 0], rank[:, 0].astype(int)
    assert sorted(r) == list(range(1, s.size + 1))
    assert np.all(np.diff(s[np.argsort(r)]) <= 0)
    ours = rank_descending(s)
    unique = np.unique(s, return_counts=True)
    untied = np.isin(s, unique[0][unique[1] == 1])
    np.testing.assert_array_equal(ours[untied], r[untied])


def test_contest_rank_convention(fixtures):
    d = fixtures / "cmapm"
    g1, s1, scores, _ = read_gctx(d / "contest_modzs_ezid_n10x10174.gctx")
    g2, s2, ranks, _ = read_gctx(d / "contest_rank_ezid_n10x10174.gctx")
    assert (g1, s1) == (g2, s2)
    np.testing.assert_array_equal(rank_descending(scores), ranks.astype(int))


def test_contest_wtcs_10x10(fixtures):
    d = fixtures / "cmapm"
    genes, sigs, scores, _ = read_gctx(d / "contest_modzs_ezid_n10x10174.gctx")
    rsigs, qids, expected, _ = read_gctx(d / "contest_results_n10x10.gctx")
    # results: rows signatures (rid), columns queries (cid); matrix on disk is (query, sig)
    assert rsigs == sigs or sorted(rsigs) == sorted(sigs)
    up = read_set_file(d / "contest_query_ezid_up_n10.gmt")
    dn = read_set_file(d / "contest_query_ezid_down_n10.gmt")
    scores = scores.astype(np.float32)
    got = np.empty((len(qids), len(sigs)))
    for qi, q in enumerate(qids):
        es_up, _ = _es_of(scores, genes, up[f"{q}_UP"], "wtcs")
        es_dn, _ = _es_of(scores, genes, dn[f"{q}_DN"], "wtcs")
        got[qi] = combine_wtcs(es_up, es_dn)
    order = [sigs.index(s) for s in rsigs]
    np.testing.assert_allclose(got[:, order], expected, atol=2e-7, rtol=0)
