"""The one gene-matching rule of queries (connectivity.validation.GeneTable): ids, then
symbols exactly, then symbols in any case; every given gene accounted for."""

from __future__ import annotations

import numpy as np
import pytest

from cmapdask.connectivity.validation import GeneTable, prepare_queries
from cmapdask.errors import QueryError

IDS = ["1", "2", "3", "51026", "7", "8"]
SYMBOLS = ["A1BG", "Abc", "ABC", "G51026", "7", None]  # "Abc"/"ABC" fold alike; "7" is an id


def test_lookup_order_and_case():
    t = GeneTable(IDS, SYMBOLS)
    assert t.lookup("51026") == 3 and t.lookup(" 51026 ") == 3
    assert t.lookup("G51026") == 3 and t.lookup("g51026") == 3
    assert t.lookup("a1bg") == 0
    assert t.lookup("Abc") == 1 and t.lookup("ABC") == 2  # exact symbols win
    assert t.lookup("abc") is None  # folds to two genes: no guess
    assert t.lookup("7") == 4 and t.lookup("nope") is None


def test_account_every_gene():
    t = GeneTable(IDS, SYMBOLS)
    rows = t.account(["g51026", "NOPE", "1", "51026", "2"], space_ids=["51026", "1"], space="bing")
    assert [(r["given"], r["gene_id"], r["status"]) for r in rows] == [
        ("g51026", "51026", "in_space"),
        ("NOPE", None, "unknown"),
        ("1", "1", "in_space"),
        ("51026", "51026", "duplicate"),
        ("2", "2", "outside"),
    ]
    assert rows[0]["symbol"] == "G51026" and rows[1]["symbol"] is None
    assert {r["space"] for r in rows} == {"bing"}


def test_prepare_queries_matches_the_same_way():
    up = ["g51026", "a1bg", "NOPE"]
    with pytest.warns(UserWarning, match="CMap queries use"):
        qs = prepare_queries({"q": (up, ["abc", "Abc"])}, IDS, gene_symbols=SYMBOLS)
    assert qs.up[0].tolist() == [3, 0] and qs.down[0].tolist() == [1]
    assert qs.report[0]["up_dropped"] == "NOPE" and qs.report[0]["down_dropped"] == "abc"
    np.testing.assert_array_equal(qs.union, [0, 1, 3])
    with pytest.raises(QueryError, match="both the up and the down set"):
        prepare_queries({"q": (["g51026", "1"], ["51026"])}, IDS, gene_symbols=SYMBOLS)
