"""CLUE's LoopBack filters against plain pandas over a release-shaped table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cmapdask.data.loopback import count, model_table, parse_filter, records, select
from cmapdask.errors import InputError


@pytest.fixture(scope="module")
def tables():
    from cmapdask import synthetic as syn

    design = syn.synth_design(900, genes="landmark", seed=4, genetic=True)
    siginfo = syn.synth_siginfo(design).reset_index(drop=True)
    cells = siginfo.groupby("cell_iname").size().rename("n_sigs").reset_index()
    return {
        "siginfo": siginfo,
        "compoundinfo": syn.synth_compoundinfo(design),
        "geneticinfo": syn.synth_geneticinfo(design),
        "geneinfo": syn.synth_geneinfo(design),
        "cellinfo": cells,
    }


@pytest.fixture(scope="module")
def sigs(tables):
    return model_table(tables, "sigs")


def run(df, flt, model="sigs"):
    return select(df, parse_filter(json.dumps(flt), df.columns, model))


def test_equality_and_aliases(sigs):
    pert = sigs["pert_id"].iloc[7]
    got = run(sigs, {"where": {"pert_id": pert}, "limit": 100000})
    assert got["sig_id"].tolist() == sigs.loc[sigs.pert_id == pert, "sig_id"].tolist()
    # the 2020 names are aliases of CLUE's
    cell = sigs["cell_id"].iloc[0]
    a = run(sigs, {"where": {"cell_iname": cell}, "limit": 100000})
    b = run(sigs, {"where": {"cell_id": {"eq": cell}}, "limit": 100000})
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == (sigs.cell_id == cell).sum() > 0
    assert "pert_iname" in sigs and "cmap_name" not in sigs


@pytest.mark.parametrize(
    "op,value,expect",
    [
        ("neq", "trt_cp", lambda s: s.pert_type != "trt_cp"),
        ("inq", ["trt_sh.cgs", "trt_oe"], lambda s: s.pert_type.isin(["trt_sh.cgs", "trt_oe"])),
        ("nin", ["trt_cp"], lambda s: ~s.pert_type.isin(["trt_cp"])),
        ("like", "^trt_(?:sh|xpr)", lambda s: s.pert_type.str.contains("^trt_(?:sh|xpr)")),
        ("nlike", "cp$", lambda s: ~s.pert_type.str.contains("cp$")),
        ("ilike", "^TRT_OE", lambda s: s.pert_type.str.contains("^trt_oe", case=False)),
    ],
)
def test_text_operators(sigs, op, value, expect):
    got = run(sigs, {"where": {"pert_type": {op: value}}, "limit": 100000})
    assert got["sig_id"].tolist() == sigs.loc[expect(sigs), "sig_id"].tolist()


@pytest.mark.parametrize(
    "op,value,expect",
    [
        ("gt", 0.2, lambda s: s.tas > 0.2),
        ("gte", 0.2, lambda s: s.tas >= 0.2),
        ("lt", 0.1, lambda s: s.tas < 0.1),
        ("lte", 0.1, lambda s: s.tas <= 0.1),
        ("between", [0.1, 0.3], lambda s: (s.tas >= 0.1) & (s.tas <= 0.3)),
    ],
)
def test_numeric_operators(sigs, op, value, expect):
    got = run(sigs, {"where": {"tas": {op: value}}, "limit": 100000})
    assert got["sig_id"].tolist() == sigs.loc[expect(sigs).fillna(False), "sig_id"].tolist()
    assert 0 < len(got) < len(sigs)


def test_and_or(sigs):
    cell = sigs["cell_id"].iloc[0]
    flt = {
        "where": {
            "or": [{"pert_type": "trt_oe"}, {"and": [{"cell_id": cell}, {"tas": {"gt": 0.3}}]}]
        },
        "limit": 100000,
    }
    want = (sigs.pert_type == "trt_oe") | ((sigs.cell_id == cell) & (sigs.tas > 0.3))
    assert run(sigs, flt)["sig_id"].tolist() == sigs.loc[want, "sig_id"].tolist()


def test_fields_order_skip_limit_count(sigs):
    flt = {"fields": ["sig_id", "tas"], "order": ["tas DESC", "sig_id ASC"], "skip": 5}
    got = run(sigs, {**flt, "limit": 10})
    want = sigs.sort_values(["tas", "sig_id"], ascending=[False, True], kind="stable")
    want = want[["sig_id", "tas"]].iloc[5:15].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    # object form: true picks, false drops
    picked = run(sigs, {"fields": {"sig_id": True, "pert_id": True}, "limit": 3})
    assert list(picked.columns) == ["sig_id", "pert_id"]
    dropped = run(sigs, {"fields": {"sig_id": False}, "limit": 3})
    assert "sig_id" not in dropped and "pert_id" in dropped
    assert run(sigs, {"order": "tas", "limit": 1})["tas"].iloc[0] == sigs.tas.min()
    assert len(run(sigs, {})) == min(len(sigs), 1000)
    where = parse_filter(json.dumps({"where": {"pert_type": "trt_cp"}}), sigs.columns, "sigs")
    assert count(sigs, where.where) == (sigs.pert_type == "trt_cp").sum()


def test_list_fields_match_any_element(tables):
    perts = model_table(tables, "perts")
    moa = next(m for ms in perts["moa"] for m in ms)
    got = run(perts, {"where": {"moa": moa}, "limit": 100000}, "perts")
    assert len(got) and all(moa in ms for ms in got["moa"])
    assert len(got) == sum(moa in ms for ms in perts["moa"] if isinstance(ms, list))
    assert set(perts["pert_type"]) >= {"trt_cp", "trt_oe"}
    rec = records(got.head(2))
    assert isinstance(rec[0]["moa"], list) and json.dumps(rec)


@pytest.mark.parametrize(
    "flt,message",
    [
        ({"where": {"pert_idd": "x"}}, "unknown field 'pert_idd'"),
        ({"where": {"pert_id": {"regexp": "x"}}}, "unknown operator 'regexp'"),
        ({"include": "x"}, "unknown key 'include'"),
        ({"fields": ["sig_id", "nope"]}, "unknown field 'nope'"),
        ({"order": "tas SIDEWAYS"}, "is not 'field ASC'"),
        ({"limit": -1}, "limit must be an integer"),
        ({"where": {"pert_id": {"inq": "x"}}}, "needs a list"),
        ({"where": {"pert_id": {"like": "("}}}, "not a regular expression"),
        ({"where": {"tas": {"gt": "high"}}}, "a number is needed"),
        ({"where": {"or": []}}, "non-empty list"),
        ("[1, 2]", "must be a JSON object"),
        ("{nope", "not JSON"),
    ],
)
def test_every_unknown_is_refused_by_name(sigs, flt, message):
    text = flt if isinstance(flt, str) else json.dumps(flt)
    with pytest.raises(InputError, match=message):
        select(sigs, parse_filter(text, sigs.columns, "sigs"))


def test_missing_values_follow_mongo(sigs):
    df = sigs.copy()
    df.loc[df.index[:3], "pert_idose"] = None
    null = run(df, {"where": {"pert_idose": None}, "limit": 100000})
    assert len(null) == df.pert_idose.isna().sum()
    not_null = run(df, {"where": {"pert_idose": {"neq": None}}, "limit": 100000})
    assert len(not_null) == df.pert_idose.notna().sum()
    assert np.array_equal(
        run(df, {"where": {"pert_idose": {"neq": "10 uM"}}, "limit": 100000})["sig_id"],
        df.loc[df.pert_idose != "10 uM", "sig_id"],
    )
