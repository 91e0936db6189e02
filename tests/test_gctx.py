"""GCTx reading and writing against the Broad's files, bad input, laziness."""

from __future__ import annotations

import shutil

import dask
import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cmapdask.errors import GCTxFormatError, InputError
from cmapdask.io import gctx as gctx_mod
from cmapdask.io.gctx import read_gctx, reference_chunks, write_gctx


def all_gctx(fixtures):
    return sorted(fixtures.rglob("*.gctx"))


class RaiseOnCompute:
    """A dask callback that fails the test if anything is computed."""

    def __enter__(self):
        self.cb = dask.callbacks.Callback(start=self._start)
        self.cb.__enter__()
        return self

    def _start(self, dsk):
        raise AssertionError("something was computed")

    def __exit__(self, *exc):
        self.cb.__exit__(*exc)


def test_every_fixture_gctx_parses(fixtures):
    files = all_gctx(fixtures)
    assert len(files) >= 17
    for f in files:
        ds = read_gctx(f)
        with h5py.File(f, "r") as h:
            n_sig, n_gene = h["/0/DATA/0/matrix"].shape
            raw = h["/0/DATA/0/matrix"][()]
            n_col_fields = len(h["/0/META/COL"]) - 1
            n_row_fields = len(h["/0/META/ROW"]) - 1
        assert ds.sizes == {"sig": n_sig, "gene": n_gene}, f.name
        assert ds["expr"].dtype == np.float32
        np.testing.assert_array_equal(ds["expr"].values, raw.astype(np.float32), err_msg=f.name)
        sig_fields = [k for k, c in ds.coords.items() if c.dims == ("sig",) and k != "sig"]
        gene_fields = [k for k, c in ds.coords.items() if c.dims == ("gene",) and k != "gene"]
        assert len(sig_fields) == n_col_fields and len(gene_fields) == n_row_fields, f.name
        assert all(isinstance(v, str) for v in ds["sig"].values)


def test_metadata_types_and_missing(fixtures):
    ds = read_gctx(fixtures / "cmapm/ncs_mcf7_frasor_er_n1x38773.gctx")
    # rows of this file are signatures of the query result: fields on the gene axis
    assert ds["raw_cs"].dtype == np.float64
    assert ds["is_null_sig"].dtype == np.int64
    assert ds["moa"].dtype == object
    # -666 in the file is missing, never the string "-666"
    assert not (ds["moa"].to_series() == "-666").any()
    assert ds["moa"].to_series().isna().sum() > 0
    ints = read_gctx(fixtures / "cmappy/test_parse_gctx_rid_entrez_id.gctx")
    assert all(isinstance(g, str) and g.isdigit() for g in ints["gene"].values)


def test_version_array_and_pytables_files(fixtures):
    ds = read_gctx(fixtures / "cmappy/mini_gctx_with_metadata_n2x3.gctx")
    assert ds.attrs["cmapdask"]["gctx_version"] == "GCTX1.0"
    ds = read_gctx(fixtures / "cmappy/col_meta_only_example_n355x355.gctx")
    assert ds.attrs["cmapdask"]["file_dtype"] == "float64"


@pytest.mark.parametrize("chunks", [None, (100, 978), (37, 978), (371, 978), (50, 500)])
def test_chunkings_equal_numpy(fixtures, chunks):
    f = fixtures / "cmapm/gctv13_01.gctx"
    with h5py.File(f, "r") as h:
        raw = h["/0/DATA/0/matrix"][()]
    ds = read_gctx(f, chunks=chunks)
    np.testing.assert_array_equal(ds["expr"].values, raw)
    np.testing.assert_allclose(ds["expr"].sum("gene").values, raw.sum(1), rtol=1e-5)


def test_default_chunks_are_multiples_of_file_chunks(fixtures):
    ds = read_gctx(fixtures / "cmapm/gctv13_01.gctx")
    file_rows = ds.attrs["cmapdask"]["file_chunks"][0]  # 268
    assert all(c % file_rows == 0 for c in ds["expr"].chunks[0][:-1])
    assert ds["expr"].chunks[1] == (978,)


def test_matrix_layout_matches_read(fixtures, tmp_path):
    f = fixtures / "cmapm/gctv13_01.gctx"
    shape, chunks = gctx_mod.matrix_layout(f)
    ds = read_gctx(f)
    assert shape == ds["expr"].shape and list(chunks) == ds.attrs["cmapdask"]["file_chunks"]
    (tmp_path / "junk.gctx").write_bytes(b"not hdf5")
    with pytest.raises(GCTxFormatError, match="junk.gctx"):
        gctx_mod.matrix_layout(tmp_path / "junk.gctx")


def test_subset_by_ids_and_positions(fixtures):
    f = fixtures / "cmapm/gctv13_01.gctx"
    full = read_gctx(f)
    sig_ids = list(full["sig"].values[[5, 300, 2]])
    gene_ids = list(full["gene"].values[[10, 0]])
    sub = read_gctx(f, sigs=sig_ids, genes=gene_ids)
    assert list(sub["sig"].values) == sig_ids
    np.testing.assert_array_equal(
        sub["expr"].values, full["expr"].values[np.ix_([5, 300, 2], [10, 0])]
    )
    assert sub["det_plate"].values.tolist() == full["det_plate"].values[[5, 300, 2]].tolist()
    pos = read_gctx(f, sigs=[5, 300, 2], genes=[10, 0])
    np.testing.assert_array_equal(pos["expr"].values, sub["expr"].values)
    with pytest.raises(InputError, match="not in the file"):
        read_gctx(f, sigs=["nope"])


def test_open_and_subset_compute_nothing(fixtures):
    with RaiseOnCompute():
        ds = read_gctx(fixtures / "cmapm/gctv13_01.gctx", chunks=(50, 978))
        sub = ds.isel(sig=[3, 200])
        sub = sub.sel(gene=ds["gene"].values[:5])
        _ = sub["expr"] * 2


def test_subset_reads_only_its_chunks(fixtures, monkeypatch):
    reads = []
    original = gctx_mod._LazyMatrix.__getitem__

    def spy(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(gctx_mod._LazyMatrix, "__getitem__", spy)
    ds = read_gctx(fixtures / "cmapm/gctv13_01.gctx", chunks=(50, 978))
    _ = ds.isel(sig=[3, 7, 120])["expr"].values
    rows = sorted({k[0].start for k in reads})
    assert rows == [0, 100], reads  # sigs 3, 7 in block 0-50; 120 in block 100-150
    assert len(reads) == 2


def _dataset(n_sig=7, n_gene=5, seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_sig, n_gene)).astype(np.float32)
    x[0, 0] = np.nan
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), x)},
        coords={
            "sig": np.array([f"S{i}:µ" for i in range(n_sig)], dtype=object),
            "gene": np.array([str(100 + i) for i in range(n_gene)], dtype=object),
            "pert_id": ("sig", np.array(["BRD-1", None] + ["BRD-2"] * (n_sig - 2), dtype=object)),
            "dose": ("sig", np.array([1.5, np.nan] + [10.0] * (n_sig - 2))),
            "nsample": ("sig", np.arange(n_sig, dtype=np.int64)),
            "gene_symbol": ("gene", np.array([f"G{i}" for i in range(n_gene)], dtype=object)),
        },
    )
    if chunks:
        ds = ds.chunk({"sig": chunks})
    return ds


@pytest.mark.parametrize("chunks", [None, 2, 3, 7])
def test_write_read_round_trip(tmp_path, chunks):
    ds = _dataset(chunks=chunks)
    path = write_gctx(ds, tmp_path / "x_n7x5.gctx")
    back = read_gctx(path)
    np.testing.assert_array_equal(back["expr"].values, ds["expr"].values)
    for name in ds.coords:
        a, b = ds[name].to_series(), back[name].to_series()
        assert a.dtype == b.dtype, name
        pd.testing.assert_series_equal(
            a.reset_index(drop=True), b.reset_index(drop=True), check_names=False
        )
    assert [p.name for p in tmp_path.iterdir()] == ["x_n7x5.gctx"]  # no temporary left


def test_written_layout_is_the_reference(tmp_path):
    ds = _dataset(n_sig=300, n_gene=1200)
    write_gctx(ds, tmp_path / "x.gctx")
    with h5py.File(tmp_path / "x.gctx", "r") as h:
        m = h["/0/DATA/0/matrix"]
        assert m.shape == (300, 1200) and m.dtype == np.float32
        assert m.chunks == reference_chunks(300, 1200) == (262, 1000)
        assert m.maxshape == (None, None)
        assert h.attrs["version"] == b"GCTX1.0"
        assert h["/0/META/COL/pert_id"].compression == "gzip"
        assert h["/0/META/COL/pert_id"].compression_opts == 6
        assert h["/0/META/COL/pert_id"][1] == b"-666"
        assert h["/0/META/COL/dose"][1] == -666


def test_write_streams_larger_than_one_block(tmp_path):
    import dask.array as da

    big = (
        da.random.default_rng(1).standard_normal((3000, 978), chunks=(700, 978)).astype(np.float32)
    )
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), big)},
        coords={"sig": [f"s{i}" for i in range(3000)], "gene": [f"g{i}" for i in range(978)]},
    )
    write_gctx(ds, tmp_path / "big.gctx")
    np.testing.assert_array_equal(read_gctx(tmp_path / "big.gctx")["expr"].values, big.compute())


def test_xarray_backend(fixtures):
    ds = xr.open_dataset(fixtures / "cmapm/gctv13_01.gctx", engine="gctx")
    assert ds["expr"].dims == ("sig", "gene") and ds.sizes["sig"] == 371
    assert isinstance(ds["expr"].data, dask.array.Array)
    # sniffed, not by extension: a copy with another name still opens with no engine
    sub = xr.open_dataset(fixtures / "cmapm/gctv13_01.gctx", engine="gctx", sigs=[0, 1])
    assert sub.sizes["sig"] == 2


# ------------------------------------------------------------------------- bad input


def test_not_hdf5(tmp_path):
    p = tmp_path / "bad.gctx"
    p.write_text("id\tx\n")
    with pytest.raises(GCTxFormatError, match="bad.gctx: not a readable HDF5 file"):
        read_gctx(p)


def test_truncated(tmp_path, fixtures):
    src = fixtures / "cmapm/gctv13_01.gctx"
    p = tmp_path / "trunc.gctx"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(GCTxFormatError, match="trunc.gctx"):
        _ = read_gctx(p)["expr"].values


def test_no_matrix(tmp_path):
    p = tmp_path / "nomatrix.gctx"
    with h5py.File(p, "w") as h:
        h.create_dataset("/0/META/ROW/id", data=np.array([b"a"]))
    with pytest.raises(GCTxFormatError, match="no /0/DATA/0/matrix"):
        read_gctx(p)


def _write_raw(p, n_sig=3, n_gene=4, col_ids=None, row_ids=None, extra=None):
    with h5py.File(p, "w") as h:
        h.attrs["version"] = "GCTX1.0"
        h.create_dataset("/0/DATA/0/matrix", data=np.zeros((n_sig, n_gene), np.float32))
        h.create_dataset(
            "/0/META/COL/id", data=np.array(col_ids or [f"s{i}".encode() for i in range(n_sig)])
        )
        h.create_dataset(
            "/0/META/ROW/id", data=np.array(row_ids or [f"g{i}".encode() for i in range(n_gene)])
        )
        for k, v in (extra or {}).items():
            h.create_dataset(k, data=v)


def test_id_count_mismatch(tmp_path):
    p = tmp_path / "count.gctx"
    _write_raw(p, col_ids=[b"a", b"b"])
    with pytest.raises(GCTxFormatError, match=r"count.gctx: 2 column \(signature\) ids .* for 3"):
        read_gctx(p)


def test_duplicate_ids(tmp_path):
    p = tmp_path / "dup.gctx"
    _write_raw(p, row_ids=[b"g", b"h", b"g", b"i"])
    with pytest.raises(GCTxFormatError, match="dup.gctx: 1 duplicate row .*'g'"):
        read_gctx(p)


def test_metadata_length_mismatch(tmp_path):
    p = tmp_path / "meta.gctx"
    _write_raw(p, extra={"/0/META/COL/cell_id": np.array([b"A549"])})
    with pytest.raises(GCTxFormatError, match="meta.gctx: metadata field /0/META/COL/cell_id"):
        read_gctx(p)


def test_latin1_metadata_decodes(tmp_path):
    p = tmp_path / "latin.gctx"
    _write_raw(p, extra={"/0/META/COL/pert_idose": np.array([b"10 \xb5M", b"1 \xb5M", b"-666"])})
    ds = read_gctx(p)
    assert ds["pert_idose"].values[:2].tolist() == ["10 µM", "1 µM"]
    assert pd.isna(ds["pert_idose"].values[2])


def test_write_failure_leaves_nothing(tmp_path):
    ds = _dataset()
    ds = ds.assign_coords({"dose/unit": ("sig", np.arange(ds.sizes["sig"]))})
    with pytest.raises(InputError, match="'/' is not allowed in field names"):
        write_gctx(ds, tmp_path / "out.gctx")
    assert list(tmp_path.iterdir()) == []

    class Boom(Exception):
        pass

    def bad_block(b):
        raise Boom

    import dask.array as da

    broken = _dataset(chunks=2)
    broken["expr"] = (
        ("sig", "gene"),
        da.map_blocks(bad_block, broken["expr"].data, dtype=np.float32),
    )
    with pytest.raises(Boom):
        write_gctx(broken, tmp_path / "out.gctx")
    assert list(tmp_path.iterdir()) == []


def test_remote_gctx_read(tmp_path, fixtures):
    # any fsspec URL: the in-memory filesystem stands in for object storage here
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/fx/gctv13_01.gctx", (fixtures / "cmapm/gctv13_01.gctx").read_bytes())
    ds = read_gctx("memory://fx/gctv13_01.gctx", sigs=[0, 1, 2])
    local = read_gctx(fixtures / "cmapm/gctv13_01.gctx", sigs=[0, 1, 2])
    np.testing.assert_array_equal(ds["expr"].values, local["expr"].values)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_ids_with_slash_are_data(tmp_path):
    # real P100 ids hold '/'; they are values of META/*/id, not HDF5 names
    ds = _dataset()
    sig = ["4724_OK/SW-cl.2_S235_RRLS[+80]SLR"] + list(ds["sig"].values[1:])
    ds = ds.assign_coords(sig=np.array(sig, dtype=object))
    write_gctx(ds, tmp_path / "p100.gctx")
    back = read_gctx(tmp_path / "p100.gctx")
    assert back["sig"].values.tolist() == sig
    np.testing.assert_array_equal(back["expr"].values, ds["expr"].values)
