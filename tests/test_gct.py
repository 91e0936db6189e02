"""GCT text read/write against the Broad's fixtures, a plain-Python reference parser,
the GCTx versions of the same files, and hypothesis round trips."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmapdask.io.gct as gct_mod
from cmapdask.errors import CmapdaskError, GCTFormatError, InputError
from cmapdask.io.gct import read_gct, write_gct

FIXTURE_GCTS = sorted(
    str(p.relative_to(Path(__file__).resolve().parent / "data"))
    for p in (Path(__file__).resolve().parent / "data").rglob("*.gct")
)


# ----------------------------------------------------------------------------- reference


def reference_parse(path: Path) -> dict:
    """Independent, deliberately naive GCT parser: str.split and float(), nothing shared."""
    lines = path.read_text(encoding="latin-1").splitlines()
    version = lines[0].split("\t")[0].strip()
    counts = [int(c) for c in lines[1].split("\t") if c.strip()]
    if version == "#1.3":
        nrow, ncol, nrm, ncm = counts
    else:
        (nrow, ncol), nrm, ncm = counts, 1, 0
    header = lines[2].split("\t")
    col_meta = {}
    for line in lines[3 : 3 + ncm]:
        f = line.split("\t")
        col_meta[f[0]] = f[1 + nrm :]
    rows = [line.split("\t") for line in lines[3 + ncm :] if line.strip()]
    na = {"NaN", "nan", "NA", ""}
    matrix = np.array(
        [[math.nan if v in na else float(v) for v in r[1 + nrm :]] for r in rows], dtype=np.float64
    ).reshape(len(rows), ncol)
    return {
        "counts": (nrow, ncol, nrm, ncm),
        "sig": header[1 + nrm :],
        "gene": [r[0] for r in rows],
        "row_fields": header[1 : 1 + nrm],
        "row_meta": {name: [r[1 + k] for r in rows] for k, name in enumerate(header[1 : 1 + nrm])},
        "col_meta": col_meta,
        "matrix": matrix,
    }


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _texts(values) -> list:
    """Text metadata with missing as None (xarray turns None in object coords into NaN)."""
    return [None if _missing(v) else v for v in np.asarray(values).tolist()]


def _same_value(parsed, text: str) -> bool:
    """Does a parsed metadata value stand for this text cell?"""
    text = text.strip()
    if text in ("-666", "-666.0", ""):
        return _missing(parsed)
    if isinstance(parsed, str):
        return parsed == text
    return not _missing(parsed) and math.isclose(float(parsed), float(text), rel_tol=1e-12)


def assert_same_dataset(a: xr.Dataset, b: xr.Dataset, *, atol: float = 0.0) -> None:
    """ids, metadata names/values/kinds and the matrix agree (NaN where NaN)."""
    assert a.expr.dims == b.expr.dims == ("sig", "gene")
    assert a.expr.dtype == b.expr.dtype == np.float32
    assert a.sig.values.tolist() == b.sig.values.tolist()
    assert a.gene.values.tolist() == b.gene.values.tolist()
    assert all(type(v) is str for v in a.sig.values.tolist() + a.gene.values.tolist())
    fields = lambda ds: {k: ds[k].dims for k in ds.coords if k not in ("sig", "gene")}  # noqa: E731
    assert fields(a) == fields(b)
    for k in fields(a):
        va, vb = a[k].values, b[k].values
        assert va.dtype == vb.dtype, k
        if va.dtype.kind == "O":
            assert _texts(va) == _texts(vb), k
        else:
            np.testing.assert_array_equal(va, vb, err_msg=k)
    x, y = np.asarray(a.expr.values), np.asarray(b.expr.values)
    assert np.array_equal(np.isnan(x), np.isnan(y))
    if atol:
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)
    else:
        assert np.array_equal(x, y, equal_nan=True)


# ----------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", FIXTURE_GCTS)
def test_fixture_parses_like_reference(fixtures, name):
    path = fixtures / name
    ref = reference_parse(path)
    ds = read_gct(path)
    nrow, ncol, nrm, ncm = ref["counts"]
    assert ds.expr.shape == (ncol, nrow)  # transposed: signatures are the file's columns
    assert ds.expr.dtype == np.float32 and isinstance(ds.expr.data, np.ndarray)
    assert ds.sig.values.tolist() == ref["sig"]
    assert ds.gene.values.tolist() == ref["gene"]
    np.testing.assert_array_equal(ds.expr.values, ref["matrix"].T.astype(np.float32))
    sig_fields = [k for k in ds.coords if ds[k].dims == ("sig",) and k != "sig"]
    gene_fields = [k for k in ds.coords if ds[k].dims == ("gene",) and k != "gene"]
    assert len(sig_fields) == ncm and len(gene_fields) == nrm
    for field, cells in ref["col_meta"].items():
        values = ds[field].values.tolist()
        assert all(_same_value(v, c) for v, c in zip(values, cells, strict=True)), field
    for field, cells in ref["row_meta"].items():
        name_ = f"gene_{field}" if field in ref["col_meta"] else field
        values = ds[name_].values.tolist()
        assert all(_same_value(v, c) for v, c in zip(values, cells, strict=True)), field
    assert ds.attrs["cmapdask"]["source_format"] == "gct"


def test_trichostatin_files_are_v13(fixtures):
    for name in ("trichostatina_mcf7_10um_score.gct", "trichostatina_mcf7_10um_rank_full.gct"):
        ds = read_gct(fixtures / "cmapm" / name)
        assert ds.attrs["cmapdask"]["gct_version"] == "1.3"
        assert ds.expr.shape == (1, 22268)
        assert ds.sig.values.tolist() == ["ASG001_MCF7_6H:BRD-A19037878-001-04-9:10"]
    rank = read_gct(fixtures / "cmapm" / "trichostatina_mcf7_10um_rank_full.gct")
    assert sorted(rank.expr.values[0].astype(int).tolist()) == list(range(1, 22269))


def test_metadata_types_and_name_collision(fixtures):
    ds = read_gct(fixtures / "cmappy" / "mini_gctoo_for_testing.gct")
    # every field is on both axes: the gene (row) copy is renamed gene_<field>
    assert {"count_cv", "gene_count_cv", "distil_nsample", "gene_distil_nsample"} <= set(ds.coords)
    assert ds.distil_nsample.dtype == np.int64
    assert ds.distil_nsample.values.tolist() == [3, 3, 66, 2, 9, 111111]
    assert ds.distil_ss.dtype == np.float64
    assert ds.distil_ss.values[0] == pytest.approx(9.822065353)
    assert ds.zmad_ref.dtype == object and ds.zmad_ref.values.tolist() == ["population"] * 6
    assert ds.count_cv.values[0] == "14|15|14"
    assert all(_missing(v) for v in ds.mfc_plate_id.values.tolist())  # all -666
    assert ds.expr.sel(sig="LJP007_MCF7_24H:TRT_CP:BRD-K64857848:10").values.tolist() == [
        6.0,
        4.300000190734863,
        9.758319854736328,
        4.788599967956543,
        -4.788599967956543,
        -6.0,
    ]


def test_integer_like_ids_stay_strings(fixtures):
    ds = read_gct(fixtures / "cmappy" / "test_parse_gct_int_ids.gct")
    assert ds.sig.values.tolist() == ["1", "2"]
    assert ds.gene.values.tolist() == ["3", "11", "-3"]
    assert ds.chd1.values.tolist() == ["a", "b"]
    assert ds.rhd1.values.tolist() == ["e", "f", "c"]
    assert ds.expr.values.T.tolist() == [[5, 7], [13, 17], [-7, -11]]


def test_v12_fixtures(fixtures):
    ds = read_gct(fixtures / "cmappy" / "older_version_v1_2.gct")  # no final newline
    assert ds.attrs["cmapdask"]["gct_version"] == "1.2"
    assert ds.sig.values.tolist() == ["DLBCL.205", "DLBCL.206", "DLBCL.232"]
    assert ds.Description.values.tolist()[1] == "M87338 /FEATURE= /DEFINITION=HUMA"
    assert ds.expr.sel(gene="121_at").values.tolist() == pytest.approx([738.32, 330.59, 249.37])
    padded = read_gct(fixtures / "cmappy" / "test_v1point2_n5x10.gct")  # tab-padded header
    assert padded.expr.shape == (5, 10)
    assert padded.Description.values.tolist()[:2] == ["PSME1", "CISD1"]


# ----------------------------------------------------------------------------- GCT vs GCTx

# mini_gctoo_for_testing_nometa.gct was written with "%.4f": it agrees with its GCTx only to
# the rounding of 4 decimals (0.5e-4), not to float32 precision.
_TEXT_ROUNDING = {"mini_gctoo_for_testing_nometa.gct": 0.5e-4 + 1e-6}


def _gct_gctx_pairs():
    root = Path(__file__).resolve().parent / "data"
    return [n for n in FIXTURE_GCTS if (root / n).with_suffix(".gctx").exists()]


@pytest.mark.parametrize("name", _gct_gctx_pairs())
def test_gct_agrees_with_gctx(fixtures, name):
    gctx = pytest.importorskip("cmapdask.io.gctx")
    a = read_gct(fixtures / name)
    b = gctx.read_gctx((fixtures / name).with_suffix(".gctx")).compute()
    assert a.sig.values.tolist() == b.sig.values.tolist()
    assert a.gene.values.tolist() == b.gene.values.tolist()
    assert set(a.coords) == set(b.coords)
    for k in a.coords:
        if k in ("sig", "gene"):
            continue
        va, vb = a[k].values, b[k].values
        assert a[k].dims == b[k].dims, k
        if va.dtype.kind == "O" or vb.dtype.kind == "O":
            assert _texts(va) == _texts(vb), k
        else:
            # numbers stay numbers on both sides; a GCTx may hold them as float32, the text
            # as whole numbers or shortest decimals: equal to float32 precision
            assert va.dtype.kind in "if" and vb.dtype.kind in "if", k
            np.testing.assert_allclose(
                va.astype(np.float64), vb.astype(np.float64), rtol=2e-7, atol=0, err_msg=k
            )
    x, y = a.expr.values, b.expr.values
    assert np.array_equal(np.isnan(x), np.isnan(y))
    tol = _TEXT_ROUNDING.get(Path(name).name)
    if tol:
        np.testing.assert_allclose(x, y, rtol=0, atol=tol)
        assert not np.array_equal(x, y)  # the rounding is real, not a reading mistake
    else:
        assert np.array_equal(x, y, equal_nan=True)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "name",
    [
        "cmappy/mini_gctoo_for_testing.gct",
        "cmappy/test_parse_gct_int_ids.gct",
        "cmappy/row_meta_only_example_n2x1203.gct",
        "cmappy/col_meta_only_example_n355x355.gct",
        "cmapm/gctv13_01.gct",
    ],
)
def test_fixture_round_trip(fixtures, tmp_path, name):
    ds = read_gct(fixtures / name)
    out = tmp_path / "out.gct"
    assert write_gct(ds, out) == str(out)
    again = read_gct(out)
    assert_same_dataset(ds, again)
    # a second generation is byte-identical: the writer is deterministic
    write_gct(again, tmp_path / "out2.gct")
    assert (tmp_path / "out2.gct").read_bytes() == out.read_bytes()


def test_write_missing_as_minus_666_and_nan(tmp_path):
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), np.array([[1.5, np.nan]], np.float32))},
        coords={
            "sig": ["s1"],
            "gene": ["g1", "g2"],
            "dose": ("sig", np.array([np.nan])),
            "symbol": ("gene", np.array(["TP53", None], dtype=object)),
        },
    )
    write_gct(ds, tmp_path / "m.gct")
    lines = (tmp_path / "m.gct").read_text().splitlines()
    assert lines[:4] == ["#1.3", "2\t1\t1\t1", "id\tsymbol\ts1", "dose\t-666\t-666"]
    assert lines[4:] == ["g1\tTP53\t1.5", "g2\t-666\tNaN"]
    back = read_gct(tmp_path / "m.gct")
    assert _texts(back.symbol) == ["TP53", None]
    assert np.isnan(back.expr.values[0, 1])


def test_v12_write_read(fixtures, tmp_path):
    ds = read_gct(fixtures / "cmappy" / "test_v1point2_n5x10.gct")
    write_gct(ds, tmp_path / "v12.gct", version="1.2")
    text = (tmp_path / "v12.gct").read_text().splitlines()
    assert text[0] == "#1.2" and text[1] == "10\t5" and text[2].startswith("Name\tDescription\t")
    assert_same_dataset(ds, read_gct(tmp_path / "v12.gct"))

    full = read_gct(fixtures / "cmappy" / "mini_gctoo_for_testing.gct")
    with pytest.warns(UserWarning, match="v1.2 has no place"):
        write_gct(full, tmp_path / "drop.gct", version="1.2")
    back = read_gct(tmp_path / "drop.gct")
    assert list(back.coords) == ["sig", "gene", "Description"]
    assert all(_missing(v) for v in back.Description.values.tolist())
    np.testing.assert_array_equal(back.expr.values, full.expr.values)


def test_dataarray_and_dask_input_write_the_same_bytes(fixtures, tmp_path, monkeypatch):
    ds = read_gct(fixtures / "cmappy" / "col_meta_only_example_n355x355.gct")
    write_gct(ds, tmp_path / "numpy.gct")
    ref = (tmp_path / "numpy.gct").read_bytes()
    # several gene blocks, several signature chunk layouts (uneven included)
    monkeypatch.setattr(gct_mod, "_WRITE_BLOCK_BYTES", 355 * 4 * 37)
    for chunks in [(355, 355), (100, 355), (7, 355), (120, 50), (354, 1)]:
        lazy = ds.copy()
        lazy["expr"] = (("sig", "gene"), da.from_array(ds.expr.values, chunks=chunks))
        write_gct(lazy, tmp_path / "dask.gct")
        assert (tmp_path / "dask.gct").read_bytes() == ref, chunks
    bare = xr.DataArray(
        ds.expr.values, dims=("sig", "gene"), coords={"sig": ds.sig, "gene": ds.gene}
    )
    write_gct(bare, tmp_path / "bare.gct")
    assert_same_dataset(
        read_gct(tmp_path / "bare.gct"),
        ds[["expr"]].drop_vars([k for k in ds.coords if k not in ("sig", "gene")]),
    )


def test_write_computes_each_gene_block_once(fixtures, tmp_path, monkeypatch):
    from dask.callbacks import Callback

    ds = read_gct(fixtures / "cmappy" / "col_meta_only_example_n355x355.gct", chunks=50)
    monkeypatch.setattr(gct_mod, "_WRITE_BLOCK_BYTES", 355 * 4 * 100)  # 100 genes a block
    starts = []
    with Callback(start=lambda dsk: starts.append(1)):
        write_gct(ds, tmp_path / "x.gct")
    assert len(starts) == 4  # ceil(355 / 100) computes, nothing more


@pytest.mark.parametrize("chunks", [1, 2, 4, 6])
def test_chunks_option_is_dask_and_equal(fixtures, chunks):
    ref = read_gct(fixtures / "cmappy" / "mini_gctoo_for_testing.gct")
    with dask.config.set(scheduler=_no_compute):
        ds = read_gct(fixtures / "cmappy" / "mini_gctoo_for_testing.gct", chunks=chunks)
        assert isinstance(ds.expr.data, da.Array)
        assert ds.expr.data.chunks[1] == (6,)  # all genes in every chunk
        assert ds.expr.data.chunks[0][0] == chunks
    np.testing.assert_array_equal(ds.expr.values, ref.expr.values)


def _no_compute(*args, **kwargs):
    raise AssertionError("read_gct computed a dask graph")


def test_fsspec_urls_and_compression(fixtures, tmp_path):
    src = fixtures / "cmappy" / "mini_gctoo_for_testing.gct"
    ref = read_gct(src)
    assert_same_dataset(read_gct(f"file://{src}"), ref)
    gz = tmp_path / "mini.gct.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert_same_dataset(read_gct(gz), ref)
    url = "memory://cmapdask-test/mini.gct"
    write_gct(ref, url)
    assert_same_dataset(read_gct(url), ref)


def test_failed_write_leaves_nothing(fixtures, tmp_path, monkeypatch):
    ds = read_gct(fixtures / "cmappy" / "mini_gctoo_for_testing.gct")
    monkeypatch.setattr(gct_mod, "_WRITE_BLOCK_BYTES", 6 * 4 * 2)  # 3 gene blocks

    def boom(block):
        if (block == 9.0).any():  # the second gene block (genes 3-4)
            raise RuntimeError("disk full")
        return block

    lazy = ds.copy()
    blocks = da.from_array(ds.expr.values, chunks=(6, 2))
    lazy["expr"] = (("sig", "gene"), blocks.map_blocks(boom, meta=np.empty((0, 0), np.float32)))
    dest = tmp_path / "x.gct"
    with pytest.raises(RuntimeError, match="disk full"):
        write_gct(lazy, dest)
    assert list(tmp_path.iterdir()) == []
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        write_gct(lazy, dest)
    assert dest.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_quotes_in_text_round_trip(tmp_path):
    # Arrow will not write a double quote unquoted: that block goes through pandas
    ds = read_gct_text(tmp_path, GOOD)
    quoted = ds.assign_coords(sym=("gene", np.array(['5" UTR', "3' UTR"], dtype=object)))
    write_gct(quoted, tmp_path / "q.gct")
    assert (tmp_path / "q.gct").read_text().splitlines()[4].startswith('g1\t5" UTR\t1')
    assert_same_dataset(read_gct(tmp_path / "q.gct"), quoted)


def test_latin1_and_utf8_metadata(tmp_path):
    body = "#1.3\n1\t1\t1\t1\nid\tunit\ts1\nconc\t-666\t10 µM\ng1\tµg\t0.5\n"
    (tmp_path / "latin1.gct").write_bytes(body.encode("latin-1"))
    (tmp_path / "utf8.gct").write_bytes(body.encode("utf-8"))
    for name in ("latin1.gct", "utf8.gct"):
        ds = read_gct(tmp_path / name)
        assert ds.conc.values.tolist() == ["10 µM"]
        assert ds.unit.values.tolist() == ["µg"]
    assert read_gct(tmp_path / "latin1.gct").attrs["cmapdask"]["encoding"] == "latin-1"
    write_gct(read_gct(tmp_path / "latin1.gct"), tmp_path / "out.gct")
    assert "10 µM" in (tmp_path / "out.gct").read_bytes().decode("utf-8")  # written as UTF-8


def test_empty_axes(tmp_path):
    (tmp_path / "e.gct").write_text("#1.3\n2\t0\t1\t0\nid\tsym\ng1\tA\ng2\tB\n")
    ds = read_gct(tmp_path / "e.gct")
    assert ds.expr.shape == (0, 2) and ds.sym.values.tolist() == ["A", "B"]
    write_gct(ds, tmp_path / "e2.gct")
    assert_same_dataset(read_gct(tmp_path / "e2.gct"), ds)


# ----------------------------------------------------------------------------- malformed

GOOD = "#1.3\n2\t2\t1\t1\nid\tsym\ts1\ts2\nfld\t-666\ta\tb\ng1\tA\t1\t2\ng2\tB\t3\t4\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "file ends before the version line"),
        ("#1.4\n2\t2\n", r"line 1 should be '#1.3' or '#1.2'"),
        ("gene\ts1\n", r"line 1 should be '#1.3' or '#1.2'"),
        (GOOD.replace("2\t2\t1\t1", "2\t2\t1"), "line 2 should hold the 4 counts"),
        (GOOD.replace("2\t2\t1\t1", "2\tx\t1\t1"), "line 2 should hold the 4 counts"),
        (GOOD.replace("\ts2\n", "\n"), r"line 3 \(header\) has 3 fields"),
        (GOOD.replace("\tb\n", "\n"), r"line 4 \(column metadata\) has 3 fields, expected 4"),
        (GOOD.replace("g2\tB\t3\t4", "g2\tB\t3\t4\t5"), "line 6 has 5 fields, expected 4"),
        (GOOD.replace("g1\tA\t1\t2", "g1\tA\t1"), "line 5 has 3 fields, expected 4"),
        (GOOD.replace("g2\tB\t3\t4\n", ""), "says 2 data lines, the file has 1"),
        (GOOD + "g3\tC\t5\t6\n", "says 2 data lines, the file has 3"),
        (GOOD.replace("\t3\t4", "\tx3\t4"), r"line 6: non-numeric value 'x3' in column 's1'"),
        (GOOD.replace("g2\t", "g1\t"), "duplicate row id 'g1'"),
        (GOOD.replace("\ts2\n", "\ts1\n"), "duplicate column id 's1'"),
        ("#1.2\n1\t1\nName\tDescription\ts1\ng1\td\tnope\n", "line 4: non-numeric value 'nope'"),
        ("#1.3\n0\t1\t0\t2\nid\ts1\nf\ta\nf\tb\n", "duplicate column metadata field 'f'"),
    ],
)
def test_malformed_gct(tmp_path, text, message):
    path = tmp_path / "bad.gct"
    path.write_text(text)
    with pytest.raises(GCTFormatError, match=message) as info:
        read_gct(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_blank_lines_and_crlf_are_tolerated(tmp_path):
    (tmp_path / "crlf.gct").write_bytes((GOOD.replace("\n", "\r\n") + "\r\n\r\n").encode())
    (tmp_path / "lf.gct").write_text(GOOD)
    assert_same_dataset(read_gct(tmp_path / "crlf.gct"), read_gct(tmp_path / "lf.gct"))


def test_missing_file_and_bad_write_input(tmp_path):
    with pytest.raises(GCTFormatError, match="no such file"):
        read_gct(tmp_path / "nope.gct")
    ds = read_gct_text(tmp_path, GOOD)
    with pytest.raises(InputError, match="duplicate gene ids"):
        write_gct(ds.assign_coords(gene=["g", "g"]), tmp_path / "x.gct")
    with pytest.raises(InputError, match="tab or line break"):
        tabbed = np.array(["a\tb", "c"], dtype=object)
        write_gct(ds.assign_coords(sym=("gene", tabbed)), tmp_path / "x.gct")
    with pytest.raises(InputError, match="expr dims"):
        write_gct(ds.transpose(), tmp_path / "x.gct")
    with pytest.raises(InputError, match="version"):
        write_gct(ds, tmp_path / "x.gct", version="1.4")  # type: ignore[arg-type]
    assert not (tmp_path / "x.gct").exists()
    assert issubclass(GCTFormatError, CmapdaskError)


def read_gct_text(tmp_path, text: str) -> xr.Dataset:
    path = tmp_path / "in.gct"
    path.write_text(text)
    return read_gct(path)


# ----------------------------------------------------------------------------- property test

_id = st.text(alphabet="abcXYZ019:_-.", min_size=1, max_size=6)
_word = st.text(alphabet="abc xyzµ|:-.0123'\"", min_size=1, max_size=8).map(str.strip).filter(bool)


@st.composite
def datasets(draw):
    n_sig, n_gene = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    sig = draw(st.lists(_id, min_size=n_sig, max_size=n_sig, unique=True))
    gene = draw(st.lists(_id, min_size=n_gene, max_size=n_gene, unique=True))
    values = draw(
        st.lists(
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            min_size=n_sig * n_gene,
            max_size=n_sig * n_gene,
        )
    )
    coords = {"sig": sig, "gene": gene}
    # "shared" on both axes exercises the gene_<field> rename
    axes = (("sig", n_sig, ["shared", "dose"]), ("gene", n_gene, ["gene_shared", "sym"]))
    for dim, n, names in axes:
        for name in draw(st.lists(st.sampled_from(names), unique=True)):
            coords[name] = (dim, draw(_column(n)))
    expr = np.array(values, dtype=np.float32).reshape(n_sig, n_gene)
    return xr.Dataset({"expr": (("sig", "gene"), expr)}, coords=coords)


def _column(n):
    ints = st.lists(
        st.integers(-(2**40), 2**40).filter(lambda v: v != -666), min_size=n, max_size=n
    )
    floats = st.lists(
        st.one_of(st.just(math.nan), st.floats(-1e6, 1e6).filter(lambda v: v != -666)),
        min_size=n,
        max_size=n,
    )
    # text: at least one value that is not a number, so the field stays text
    texts = st.lists(st.one_of(st.none(), _word), min_size=n, max_size=n).filter(
        lambda vs: any(v is not None and not _is_number(v) for v in vs)
    )
    return st.one_of(
        ints.map(lambda v: np.array(v, dtype=np.int64)),
        floats.map(lambda v: np.array(v, dtype=np.float64)),
        texts.map(lambda v: np.array(v, dtype=object)),
    )


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


_FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # tmp_path is reused; each write replaces


def _expected_after_text(ds: xr.Dataset) -> xr.Dataset:
    """What text can carry: a float field of whole numbers and no NaN reads back as int64;
    a field with no value at all (every value -666) cannot show its kind and reads as text."""
    out = ds.copy()
    for k in ds.coords:
        v = ds[k].values
        if v.dtype.kind == "f" and np.isnan(v).all():
            out = out.assign_coords({k: (ds[k].dims, np.full(len(v), None, dtype=object))})
        elif v.dtype.kind == "f" and np.all(v == np.round(v)):
            out = out.assign_coords({k: (ds[k].dims, v.astype(np.int64))})
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(ds=datasets(), version=st.sampled_from(["1.3"]))
def test_round_trip_property(tmp_path, ds, version):
    path = tmp_path / "rt.gct"
    write_gct(ds, path, version=version)
    assert_same_dataset(read_gct(path), _expected_after_text(ds))


@settings(max_examples=20, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(ds=datasets())
def test_round_trip_property_v12(tmp_path, ds):
    keep = ds[["expr"]].drop_vars([k for k in ds.coords if k not in ("sig", "gene")])
    desc = np.array([f"d{i}" for i in range(ds.sizes["gene"])], dtype=object)
    keep = keep.assign_coords(Description=("gene", desc))
    path = tmp_path / "rt12.gct"
    write_gct(keep, path, version="1.2")
    assert_same_dataset(read_gct(path), keep)
    assert os.path.getsize(path) > 0
