"""GMT / GRP gene sets and up/down query pairing, against cmapPy's and cmapM's fixtures."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmapdask.errors import CmapdaskError, GeneSetFormatError, InputError, QueryError
from cmapdask.io.gmt import (
    pair_up_down,
    read_gene_sets,
    read_gmt,
    read_grp,
    write_gmt,
    write_grp,
)


def _naive_gmt(path):
    """Reference: split every line on tabs, nothing else."""
    out = {}
    for line in path.read_text().splitlines():
        f = line.split("\t")
        out[f[0]] = [g for g in f[2:] if g]
    return out


# ----------------------------------------------------------------------------- fixtures


def test_cmappy_gmt_and_grp(fixtures):
    assert read_gmt(fixtures / "cmappy" / "test.gmt") == {
        "A": ["a1", "a3", "a2"],
        "B": ["b4", "b2", "b3"],
    }
    assert read_grp(fixtures / "cmappy" / "test.grp") == ["r", "d", "e"]  # '#a', '#f' skipped


@pytest.mark.parametrize(
    "name, message",
    [
        # spaces, not tabs: one field on line 1
        ("test_bad.gmt", r"line 1: expected name<TAB>description<TAB>genes\.\.\., found 1"),
        # b2 twice in set B
        ("test_bad2.gmt", r"line 2: set 'B' lists gene 'b2' more than once"),
    ],
)
def test_cmappy_malformed_gmt_rejected(fixtures, name, message):
    path = fixtures / "cmappy" / name
    with pytest.raises(GeneSetFormatError, match=message) as info:
        read_gmt(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(GeneSetFormatError):
        read_gene_sets(path)


def test_cmapm_grp_files(fixtures):
    up = read_grp(fixtures / "cmapm" / "HDAC_UP.grp")
    dn = read_grp(fixtures / "cmapm" / "HDAC_DN.grp")
    assert (len(up), len(dn)) == (14, 11)  # ALGORITHMS/fixtures README
    assert up[:2] == ["202284_s_at", "202838_at"]
    landmarks = read_grp(fixtures / "cmapm" / "landmark_gene_ids_n978.grp")
    assert len(landmarks) == len(set(landmarks)) == 978
    raw = (fixtures / "cmapm" / "landmark_gene_ids_n978.grp").read_text().split()
    assert landmarks == raw


def test_contest_gmts_pair_into_ten_queries(fixtures):
    up = read_gmt(fixtures / "cmapm" / "contest_query_ezid_up_n10.gmt")
    dn = read_gmt(fixtures / "cmapm" / "contest_query_ezid_down_n10.gmt")
    assert up == _naive_gmt(fixtures / "cmapm" / "contest_query_ezid_up_n10.gmt")
    assert dn == _naive_gmt(fixtures / "cmapm" / "contest_query_ezid_down_n10.gmt")
    queries = pair_up_down(up, dn)
    assert len(queries) == 10
    assert list(queries) == [name[: -len("_UP")] for name in up]
    for qid, (u, d) in queries.items():
        assert u == up[f"{qid}_UP"] and d == dn[f"{qid}_DN"]
        assert 100 <= len(u) <= 175 and 100 <= len(d) <= 175
    # the same sets in one collection pair the same way
    assert pair_up_down({**up, **dn}) == queries


def test_read_gene_sets_by_extension_and_sniffing(fixtures, tmp_path):
    assert read_gene_sets(fixtures / "cmapm" / "HDAC_UP.grp") == {
        "HDAC_UP": read_grp(fixtures / "cmapm" / "HDAC_UP.grp")
    }
    gmt = fixtures / "cmapm" / "contest_query_ezid_up_n10.gmt"
    assert read_gene_sets(gmt) == read_gmt(gmt)
    # no telling extension: sniffed from the first data line
    (tmp_path / "sets.txt").write_bytes(gmt.read_bytes())
    assert read_gene_sets(tmp_path / "sets.txt") == read_gmt(gmt)
    (tmp_path / "ids.txt").write_text("# comment\n\ng1\ng2\n")
    assert read_gene_sets(tmp_path / "ids.txt") == {"ids": ["g1", "g2"]}
    # compressed, and through an fsspec URL
    (tmp_path / "up.gmt.gz").write_bytes(gzip.compress(gmt.read_bytes()))
    assert read_gene_sets(tmp_path / "up.gmt.gz") == read_gmt(gmt)
    (tmp_path / "HDAC.grp.gz").write_bytes(gzip.compress(b"a\nb\n"))
    assert read_gene_sets(f"file://{tmp_path}/HDAC.grp.gz") == {"HDAC": ["a", "b"]}


# ----------------------------------------------------------------------------- GMT rules


@pytest.mark.parametrize(
    "text, message",
    [
        ("A\tdesc\ta\n\nA\tdesc\tb\n", r"line 3: set name 'A' already used on line 1"),
        ("A\tdesc\n", r"line 1: expected .* found 2 tab-separated field"),
        ("A\tdesc\t\t\n", r"line 1: set 'A' has no genes"),
        ("\tdesc\ta\n", r"line 1: empty set name"),
        ("\n\n", r"no gene sets in the file"),
        ("A\td\ta\tb\ta \n", r"set 'A' lists gene 'a' more than once"),
    ],
)
def test_malformed_gmt(tmp_path, text, message):
    path = tmp_path / "bad.gmt"
    path.write_text(text)
    with pytest.raises(GeneSetFormatError, match=message) as info:
        read_gmt(path)
    assert str(info.value).startswith(str(path))


def test_gmt_tolerates_blank_lines_trailing_tabs_and_crlf(tmp_path):
    path = tmp_path / "ok.gmt"
    path.write_bytes(b"A\tdesc\ta\tb\t\t\r\n\r\n  \nB\t\tc\r\n")
    assert read_gmt(path) == {"A": ["a", "b"], "B": ["c"]}


@pytest.mark.parametrize(
    "text, message",
    [
        ("# only a comment\n\n", "no ids in the file"),
        ("a\tb\n", r"line 1: a GRP line holds one id"),
    ],
)
def test_malformed_grp(tmp_path, text, message):
    path = tmp_path / "bad.grp"
    path.write_text(text)
    with pytest.raises(GeneSetFormatError, match=message):
        read_grp(path)


def test_missing_file(tmp_path):
    with pytest.raises(GeneSetFormatError, match="no such file"):
        read_gmt(tmp_path / "nope.gmt")
    with pytest.raises(GeneSetFormatError, match="no such file"):
        read_gene_sets(tmp_path / "nope.txt")
    assert issubclass(GeneSetFormatError, CmapdaskError)


def test_latin1_bytes_are_decoded(tmp_path):
    (tmp_path / "l1.gmt").write_bytes("S\t10 µM\tgµ1\tg2\n".encode("latin-1"))
    assert read_gmt(tmp_path / "l1.gmt") == {"S": ["gµ1", "g2"]}
    (tmp_path / "l1.grp").write_bytes("#µ\nµg\n".encode("latin-1"))
    assert read_grp(tmp_path / "l1.grp") == ["µg"]
    (tmp_path / "u8.grp").write_bytes("µg\n".encode())
    assert read_grp(tmp_path / "u8.grp") == ["µg"]


# ----------------------------------------------------------------------------- writing


def test_write_gmt_descriptions_and_atomic_output(tmp_path, fixtures):
    sets = read_gmt(fixtures / "cmappy" / "test.gmt")
    dest = tmp_path / "out.gmt"
    assert write_gmt(sets, dest, descriptions={"A": "this one is A"}) == str(dest)
    assert dest.read_text().splitlines() == ["A\tthis one is A\ta1\ta3\ta2", "B\tB\tb4\tb2\tb3"]
    assert read_gmt(dest) == sets
    assert [p.name for p in tmp_path.iterdir()] == ["out.gmt"]  # no temporary left behind


@pytest.mark.parametrize(
    "sets, message",
    [
        ({}, "no gene sets"),
        ({"A": []}, "set 'A' is empty"),
        ({"A": ["a", "a"]}, "lists 'a' more than once"),
        ({"A": ["a\tb"]}, "tab/line break"),
        ({"A\tB": ["a"]}, "tab/line break"),
        ({"A": [" a"]}, "surrounding spaces"),
    ],
)
def test_write_gmt_rejects_what_read_gmt_would(tmp_path, sets, message):
    with pytest.raises(InputError, match=message):
        write_gmt(sets, tmp_path / "x.gmt")
    assert not (tmp_path / "x.gmt").exists()


def test_write_grp(tmp_path, fixtures):
    ids = read_grp(fixtures / "cmapm" / "HDAC_DN.grp")
    write_grp(ids, tmp_path / "dn.grp")
    assert read_grp(tmp_path / "dn.grp") == ids
    for bad, message in ([["a", "a"], "more than once"], [["#a"], "comment"], [[], "empty"]):
        with pytest.raises(InputError, match=message):
            write_grp(bad, tmp_path / "bad.grp")
    url = "memory://cmapdask-test/ids.grp"
    write_grp(["x", "y"], url)
    assert read_grp(url) == ["x", "y"]


_gene = st.text(alphabet="ABCxyz0123456789_-.:µ", min_size=1, max_size=8).filter(
    lambda g: not g.startswith("#")
)
_sets = st.dictionaries(
    st.text(alphabet="ABCqr_09", min_size=1, max_size=6),
    st.lists(_gene, min_size=1, max_size=6, unique=True),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sets=_sets)
def test_gmt_round_trip_property(tmp_path, sets):
    write_gmt(sets, tmp_path / "p.gmt")
    back = read_gmt(tmp_path / "p.gmt")
    assert back == sets and list(back) == list(sets)
    first = next(iter(sets.values()))
    write_grp(first, tmp_path / "p.grp")
    assert read_grp(tmp_path / "p.grp") == first


# ----------------------------------------------------------------------------- pairing


def test_pair_by_suffix_case_insensitive():
    sets = {"q1_up": ["a"], "Q2_UP": ["c"], "q1_DN": ["b"], "Q2_dn": ["d"]}
    assert pair_up_down(sets) == {"q1": (["a"], ["b"]), "Q2": (["c"], ["d"])}


def test_pair_by_name_across_two_files():
    assert pair_up_down({"q1": ["a"], "q2": ["c"]}, {"q2": ["d"], "q1": ["b"]}) == {
        "q1": (["a"], ["b"]),
        "q2": (["c"], ["d"]),
    }


@pytest.mark.parametrize(
    "up, down, message",
    [
        ({"X_UP": ["a"], "Y_DN": ["b"]}, None, "up set 'X_UP' has no down set for query 'X'"),
        ({"X_UP": ["a"], "X_DN": ["b"], "Y_DN": ["c"]}, None, "down set 'Y_DN' has no up set"),
        ({"X_UP": ["a"], "misc": ["b"]}, None, "'misc' ends in neither _UP nor _DN"),
        ({"q1": ["a"]}, {"q2": ["b"]}, "up set 'q1' has no down set"),
        ({"q1": ["a"], "q1_UP": ["b"]}, {"q1": ["c"]}, "'q1' and 'q1_UP' both name query 'q1'"),
    ],
)
def test_unpaired_sets_are_query_errors(up, down, message):
    with pytest.raises(QueryError, match=message):
        pair_up_down(up, down)
