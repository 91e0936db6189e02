"""The filter language: parsing, canonical text, recorded data, masks; never code."""

from __future__ import annotations

import json
import string

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from cmapdask.errors import InputError
from cmapdask.where import (
    And,
    Compare,
    Expr,
    Field,
    In,
    Literal,
    Not,
    Or,
    as_expr,
    from_data,
    parse,
    selection_from_record,
    selection_record,
)

# ------------------------------------------------------------------------------ strategies

names = st.one_of(
    st.sampled_from(["pert_id", "cell_id", "x", "is_touchstone", "and", "True", "in"]),
    st.text(string.ascii_letters + string.digits + "_ .`'\"-@()", min_size=1, max_size=8),
)
values = st.one_of(
    st.text(max_size=8),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
fields = names.map(Field)
literals = values.map(Literal)


@st.composite
def compares(draw):
    op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
    left = draw(fields)
    right = draw(st.one_of(fields, literals))
    if draw(st.booleans()):
        left, right = right, left
    return Compare(op, left, right)


leaves = st.one_of(
    compares(),
    st.builds(In, fields, st.lists(literals, min_size=1, max_size=4).map(tuple), st.booleans()),
)
exprs = st.recursive(
    leaves,
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None)
@given(exprs)
def test_text_round_trip(e):
    text = str(e)
    assert parse(text) == e
    assert str(parse(text)) == text


@settings(max_examples=100, deadline=None)
@given(exprs)
def test_data_round_trip_through_json(e):
    data = json.loads(json.dumps(e.to_data()))
    assert from_data(data) == e and Expr.from_data(data) == e
    assert selection_from_record(json.loads(json.dumps(selection_record(e)))) == e


FRAME = pd.DataFrame(
    {
        "s": ["a", "b", None, "c", np.nan, "b"],
        "x": [1.0, np.nan, 3.0, -2.0, 0.5, 3.0],
        "n": [1, 0, 1, 1, 0, 2],
        "mixed": ["1", 1, None, 2.5, "z", True],
    }
)
FIELD_NAMES = list(FRAME.columns)
frame_values = st.sampled_from(["a", "b", "c", "z", "1", 1, 0, 2, 3.0, -2.0, 0.5, True])


@st.composite
def frame_leaves(draw):
    f = Field(draw(st.sampled_from(FIELD_NAMES)))
    v = Literal(draw(frame_values))
    if f.name in ("x", "n") and isinstance(v.value, str):
        v = Literal(1)
    if draw(st.booleans()):
        return In(f, (v, Literal(draw(st.sampled_from([1, 3.0])))), draw(st.booleans()))
    return Compare(draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="])), f, v)


frame_exprs = st.recursive(
    frame_leaves(),
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=6,
)


def _row_value(row, e):  # a row-by-row reference of the documented meaning
    import operator

    ops = {
        "==": operator.eq,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }
    if isinstance(e, Not):
        return not _row_value(row, e.item)
    if isinstance(e, And):
        return all(_row_value(row, i) for i in e.items)
    if isinstance(e, Or):
        return any(_row_value(row, i) for i in e.items)

    def match(op, v, lit):
        if op == "!=":
            return not match("==", v, lit)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return False
        if isinstance(v, str) != isinstance(lit, str):
            return False
        return bool(ops[op](v, lit))

    if isinstance(e, In):
        hit = any(match("==", row[e.field.name], v.value) for v in e.values)
        return hit != e.negate
    return match(e.op, row[e.left.name], e.right.value)


@settings(max_examples=100, deadline=None)
@given(frame_exprs)
def test_mask_matches_row_by_row_meaning(e):
    got = e.mask(FRAME)
    rows = FRAME.astype(object).to_dict("records")
    want = [_row_value(r, e) for r in rows]
    assert got.tolist() == want
    # not (a == b) and a != b always select the same rows
    assert (Not(e).mask(FRAME) == ~got).all()


def test_missing_values_and_kinds():
    m = lambda t: parse(t).mask(FRAME).tolist()  # noqa: E731
    assert m("s == 'b'") == [False, True, False, False, False, True]
    assert m("s != 'b'") == [True, False, True, True, True, False]  # missing: !=
    assert m("x > 0") == [True, False, True, False, True, True]  # NaN: not > 0
    assert m("x <= 0") == [False, False, False, True, False, False]
    assert m("0 < x") == m("x > 0")
    assert m("s in ['a', 'c']") == [True, False, False, True, False, False]
    assert m("s not in ('a', 'c')") == [False, True, True, False, True, True]
    assert m("mixed == 1") == [False, True, False, False, False, True]  # True == 1
    assert m("mixed == '1'") == [True, False, False, False, False, False]
    assert m("mixed > 1") == [False, False, False, True, False, False]  # texts never
    assert m("`n` == 1 and (x == 3 or not s == 'a')") == [False, False, True, True, False, False]
    assert m("x == n") == [True, False, False, False, False, False]
    with pytest.raises(InputError, match="field 'n' is numeric, compared with text '1'"):
        m("n == '1'")
    with pytest.raises(InputError, match="no field 'nope'"):
        m("nope == 1")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("@pd.io.common.os.system('id') == 0", "unexpected '@'"),
        ("__import__('os').system('id') == 0", "unexpected '.'"),
        ("pd.io == 1", "unexpected '.'"),
        ("a + 1 == 2", "unexpected '+'"),
        ("a == 1 == 2", "chained comparisons"),
        ("1 == 1", "needs a field"),
        ("a in ()", "empty list"),
        ("a in b", "expected '(' or '['"),
        ("(a == 1", "expected ')'"),
        ("a == 'x", "unterminated text"),
        ("`a == 1", "unterminated name"),
        ("a == 1 & b == 2", "unexpected '&'"),
        ("a == 1e999", "out of range"),
        ("a == 1x", "bad number"),
        ("", "empty expression"),
        ("a == 1 and", "expected a field or a value"),
        ("not", "expected a field or a value"),
        ("a", "expected a comparison"),
    ],
)
def test_anything_else_is_an_error_naming_the_expression(text, where):
    with pytest.raises(InputError) as e:
        parse(text)
    assert where in str(e.value) and repr(text) in str(e.value)


def test_bad_recorded_data_is_an_error():
    for data in (
        "x",
        [],
        ["eval", "1"],
        ["==", {"field": "a"}],
        ["==", {"value": 1}, {"value": 2}],
        ["in", {"field": "a"}, []],
        ["==", {"field": "a"}, {"value": [1]}],
        ["==", {"field": "a"}, {"value": float("nan")}],
        ["and", ["==", {"field": "a"}, {"value": 1}]],
    ):
        with pytest.raises(InputError, match="recorded expression"):
            from_data(data)


def test_syntax_accepted():
    e = parse(' ( `pert id` == "x\\"y" )and not(b<=-1.5e3 or c in [1, \'a\',]) or d not in (True,)')
    assert e == Or(
        (
            And(
                (
                    Compare("==", Field("pert id"), Literal('x"y')),
                    Not(
                        Or(
                            (
                                Compare("<=", Field("b"), Literal(-1500.0)),
                                In(Field("c"), (Literal(1), Literal("a"))),
                            )
                        )
                    ),
                )
            ),
            In(Field("d"), (Literal(True),), negate=True),
        )
    )
    assert e.fields() == {"pert id", "b", "c", "d"}
    assert as_expr(e) is e and as_expr(str(e)) == e and as_expr(e.to_data()) == e
    assert Literal(1) != Literal(1.0) != Literal(True)  # kinds survive a round trip


def test_mask_over_dataset_coordinates():
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), np.zeros((3, 2), np.float32))},
        coords={
            "sig": np.array(["s1", "s2", "s3"], dtype=object),
            "gene": ["g1", "g2"],
            "cell_id": ("sig", np.array(["A", None, "B"], dtype=object)),
            "gene_symbol": ("gene", np.array(["X", "Y"], dtype=object)),
        },
    )
    assert parse("sig_id == 's2' or cell_id == 'B'").mask(ds).tolist() == [False, True, True]
    assert parse("gene_symbol == 'Y'").mask(ds, dim="gene").tolist() == [False, True]
    with pytest.raises(InputError, match="no field 'gene_symbol'"):
        parse("gene_symbol == 'Y'").mask(ds)
    assert parse("a == 1").mask({"a": [1, 2]}).tolist() == [True, False]
