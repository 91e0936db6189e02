"""Files the Broad wrote, read as cmapPy reads them: missing spellings, ids with '/',
GCT text named .gctx, plain-string messages, and a store without NCS group fields."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cmapdask.cli import main
from cmapdask.io.gct import read_gct
from cmapdask.io.gctx import read_gctx, write_gctx
from cmapdask.io.meta import TEXT_NA
from cmapdask.io.store import open_store

MINI = "cmappy/mini_gctoo_for_testing.gct"


def _edit_gct(src, dest, cells: dict[tuple[int, int], str]) -> None:
    """Copy a GCT, replacing the tab-separated field (line, field), both 0-based."""
    lines = src.read_text().split("\n")
    for (i, j), text in cells.items():
        fields = lines[i].split("\t")
        fields[j] = text
        lines[i] = "\t".join(fields)
    dest.write_text("\n".join(lines))


# mini_gctoo: 5 column fields (lines 3-7), 5 row fields (fields 1-5), data from field 6.
# Line 7 is column field zmad_ref; data line 8 is the first gene.
_COL_FIELD, _ROW_FIELD, _DATA = (7, 8), (9, 5), (8, 7)


@pytest.mark.parametrize("spelling", sorted(TEXT_NA - {""}) + ["NAN", "nAn", "-NAN"])
def test_gct_missing_spellings_in_data_and_both_metadata_blocks(fixtures, tmp_path, spelling):
    src = fixtures / MINI
    meta = spelling if spelling in TEXT_NA else "NA"  # metadata: cmapPy's list, exactly
    path = tmp_path / "na.gct"
    _edit_gct(src, path, {_DATA: spelling, _COL_FIELD: meta, _ROW_FIELD: meta})
    ref, ds = read_gct(src), read_gct(path)
    # data: that one cell is missing, everything else as in the Broad's file
    got, want = ds["expr"].values, ref["expr"].values.copy()
    want[1, 0] = np.nan  # GCT column 2 = signature 1, data line 1 = gene 0
    np.testing.assert_array_equal(got, want)
    # column metadata (zmad_ref of signature 2) and row metadata (gene 1) are missing,
    # not the string: the same in both blocks
    assert pd.isna(ds["zmad_ref"].values[2]) and ds["zmad_ref"].values[1] == "population"
    assert pd.isna(ds["gene_zmad_ref"].values[1]) and ds["gene_zmad_ref"].values[0] == "population"


def test_gct_inf_spellings_are_numbers_and_words_are_refused(fixtures, tmp_path):
    src = fixtures / MINI
    path = tmp_path / "inf.gct"
    _edit_gct(src, path, {(8, 6): "Inf", (9, 6): "-INFINITY", (10, 6): " 2.5 "})
    ds = read_gct(path)
    assert ds["expr"].values[0, :3].tolist() == [np.inf, -np.inf, 2.5]
    _edit_gct(src, path, {(9, 7): "abc"})
    assert main(["info", str(path)]) == 2


def test_gct_metadata_minus_666_variants(fixtures, tmp_path):
    path = tmp_path / "m.gct"
    _edit_gct(fixtures / MINI, path, {(4, 6): "-666.0", (4, 7): "-666.00"})
    ds = read_gct(path)
    assert np.isnan(ds["distil_nsample"].values[:2]).all()
    assert ds["distil_nsample"].values[2] == 66


def test_gct_text_named_gctx_is_read_by_content(fixtures, tmp_path, capsys):
    src = fixtures / "cmapm" / "gctv13_01.gct"
    disguised = tmp_path / "gctv13_01.gctx"
    disguised.write_bytes(src.read_bytes())
    assert main(["info", str(disguised)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gct: ") and "371 signatures x 978 genes" in out
    store = str(tmp_path / "s.zarr")
    assert main(["convert", str(disguised), store, "--scheduler", "none", "--quiet"]) == 0
    got, want = open_store(store), read_gctx(fixtures / "cmapm" / "gctv13_01.gctx")
    np.testing.assert_array_equal(got["expr"].values, want["expr"].values)
    assert got["sig"].values.tolist() == want["sig"].values.tolist()
    assert open_store(store).attrs["cmapdask"]["source"]["format"] == "gct"


def test_neither_format_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.gctx"
    junk.write_text("not a matrix\n")
    assert main(["convert", str(junk), str(tmp_path / "s.zarr"), "--scheduler", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nor GCT text" in err


def test_messages_print_plain_strings(fixtures, tmp_path, capsys):
    # ids from numpy arrays used to print as np.str_('...')
    src = fixtures / "cmapm" / "gctv13_01.gctx"
    ids = read_gctx(src)["sig"].values
    table = tmp_path / "siginfo.txt"
    pd.DataFrame({"sig_id": ids[1:], "x": 1}).to_csv(table, sep="\t", index=False)
    dest = str(tmp_path / "s.zarr")
    assert main(["convert", str(src), dest, "--sig-info", str(table), "--scheduler", "none"]) == 2
    err = capsys.readouterr().err
    assert f"e.g. '{ids[0]}'" in err and "np.str_" not in err
    # duplicate ids in a GCTx
    import h5py

    ds = read_gctx(src).isel(sig=slice(0, 3)).load()
    write_gctx(ds.assign_coords(sig=np.array(["a", "b", "c"], dtype=object)), tmp_path / "d.gctx")

    with h5py.File(tmp_path / "d.gctx", "r+") as f:
        f["/0/META/COL/id"][2] = b"a"
    assert main(["info", str(tmp_path / "d.gctx")]) == 2
    err = capsys.readouterr().err
    assert "e.g. 'a' appears 2 times" in err and "np.str_" not in err


def _store_without_groups(path, *, slash_ids=False):
    rng = np.random.default_rng(3)
    n_sig, n_gene = 24, 60
    sig = [f"4724_OK/SW-cl.{i}_S235_RRLS[+80]SLR" if slash_ids else f"S{i}" for i in range(n_sig)]
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), rng.normal(size=(n_sig, n_gene)).astype(np.float32))},
        coords={
            "sig": np.array(sig, dtype=object),
            "gene": np.array([f"{100 + i}" for i in range(n_gene)], dtype=object),
            "pert_id": ("sig", np.array([f"P/{i % 6}" for i in range(n_sig)], dtype=object)),
        },
    )
    gctx = str(path / "in.gctx")
    write_gctx(ds, gctx)
    store = str(path / "s.zarr")
    assert main(["convert", gctx, store, "--scheduler", "none", "--quiet"]) == 0
    assert main(["index", store, "--space", "all", "--scheduler", "none", "--quiet"]) == 0
    return store, ds


def test_query_cli_offers_grouping_for_stores_without_group_fields(tmp_path, capsys):
    store, ds = _store_without_groups(tmp_path)
    genes = ds["gene"].values.tolist()
    args = ["query", store, "--genes-up", ",".join(genes[:10])]
    args += ["--genes-down", ",".join(genes[10:20]), "--space", "all", "--scheduler", "none"]
    assert main([*args, "--out", str(tmp_path / "r1"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--grouping global" in err and err.count("\n") == 1
    assert main([*args, "--out", str(tmp_path / "r2"), "--quiet", "--grouping", "global"]) == 0
    assert main([*args, "--out", str(tmp_path / "r3"), "--quiet", "--grouping", "pert_id"]) == 0
    ncs1 = read_gctx(tmp_path / "r2" / "matrices" / "gutc" / "ns_sig.gctx")["expr"].values
    ncs2 = read_gctx(tmp_path / "r3" / "matrices" / "gutc" / "ns_sig.gctx")["expr"].values
    assert np.isfinite(ncs1).all() and not np.allclose(ncs1, ncs2)


def test_ids_with_slash_end_to_end(tmp_path):
    # real P100 ids: convert, index, query and the result folder all carry them as data
    store, ds = _store_without_groups(tmp_path, slash_ids=True)
    assert open_store(store)["sig"].values.tolist() == ds["sig"].values.tolist()
    genes = ds["gene"].values.tolist()
    up = tmp_path / "up.gmt"
    up.write_text("a/b\tdesc\t" + "\t".join(genes[:8]) + "\n")
    dn = tmp_path / "dn.gmt"
    dn.write_text("a/b\tdesc\t" + "\t".join(genes[8:16]) + "\n")
    out = tmp_path / "res"
    args = ["query", store, "--up", str(up), "--down", str(dn), "--out", str(out)]
    assert main([*args, "--space", "all", "--grouping", "global", "--scheduler", "none"]) == 0
    ns = read_gctx(out / "matrices" / "gutc" / "ns_sig.gctx")
    assert ns["gene"].values.tolist() == ds["sig"].values.tolist()
    assert ns["sig"].values.tolist() == ["a/b"] and np.isfinite(ns["expr"].values).all()
    pert = read_gct(out / "arfs" / "a_b" / "pert_id_summary.gct")
    assert sorted(pert["gene"].values.tolist()) == sorted({f"P/{i % 6}" for i in range(24)})
    ranked = pd.read_parquet(out / "arfs" / "a_b" / "query_result.parquet")
    assert set(ranked["sig_id"]) == set(ds["sig"].values.tolist())
