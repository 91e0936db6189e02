"""Virtual stores (convert --virtual): expr read from the GCTx's own chunks in place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings

import dask
import h5py
import numpy as np
import pytest
import xarray as xr

import cmapdask
from cmapdask.connectivity.index import build_index
from cmapdask.connectivity.query import query
from cmapdask.errors import StoreError
from cmapdask.io.gctx import MATRIX_PATH
from cmapdask.io.store import convert, open_store, store_info, write_member

N_SIG, N_GENE = 53, 41


def _dataset(seed=0, n_sig=N_SIG, n_gene=N_GENE, nan=True):
    rng = np.random.default_rng(seed)
    expr = rng.normal(size=(n_sig, n_gene)).astype(np.float32)
    if nan:
        expr[3, 5] = np.nan
    fs = np.array(["landmark"] * 12 + ["best inferred"] * (n_gene - 12), dtype=object)
    coords = {
        "sig": np.array([f"S{i:03d}" for i in range(n_sig)], dtype=object),
        "gene": np.array([f"{1000 + i}" for i in range(n_gene)], dtype=object),
        "feature_space": ("gene", fs),
        "pert_type": ("sig", np.array(["trt_cp", "trt_sh"], dtype=object)[np.arange(n_sig) % 2]),
        "cell_id": ("sig", np.array(["MCF7", "PC3", "A375"], dtype=object)[np.arange(n_sig) % 3]),
        "pert_id": ("sig", np.array([f"P{i % 7}" for i in range(n_sig)], dtype=object)),
    }
    return xr.Dataset({"expr": (("sig", "gene"), expr)}, coords=coords)


# layouts of the matrix, as h5py.create_dataset keywords
LAYOUTS = {
    "chunked_f4": {"dtype": "<f4", "chunks": (10, N_GENE)},
    "gene_split_uneven": {"dtype": "<f4", "chunks": (7, 9)},
    "contiguous_f4": {"dtype": "<f4"},
    "contiguous_f8": {"dtype": "<f8"},
    "big_endian_f8": {"dtype": ">f8", "chunks": (6, N_GENE)},
    "gzip_shuffle_f8": {
        "dtype": "<f8",
        "chunks": (8, 20),
        "compression": "gzip",
        "shuffle": True,
        "fletcher32": True,
    },
}


def _gctx(path, ds=None, *, unwritten_rows=None, **layout) -> str:
    """A GCTx whose matrix has the given HDF5 layout (metadata by cmapdask.write_gctx)."""
    ds = _dataset() if ds is None else ds
    cmapdask.write_gctx(ds, str(path))
    values = ds["expr"].values
    with h5py.File(path, "r+") as f:
        del f[MATRIX_PATH]
        m = f.create_dataset(MATRIX_PATH, shape=values.shape, fillvalue=0.5, **layout)
        if unwritten_rows is None:
            m[...] = values
        else:  # chunks never written read as the fill value
            keep = np.ones(values.shape[0], bool)
            keep[unwritten_rows] = False
            m[keep] = values[keep]
    return str(path)


@pytest.fixture(autouse=True)
def _sync():
    with dask.config.set(scheduler="sync"):
        yield


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_values_equal_copied_store(tmp_path, layout):
    src = _gctx(tmp_path / "x.gctx", **LAYOUTS[layout])
    copied = open_store(convert(src, tmp_path / "c.zarr", chunk_rows=20))
    v = convert(src, tmp_path / "v.zarr", virtual=True, chunk_rows=20)
    virt = open_store(v)
    assert virt["expr"].dtype == np.float32
    np.testing.assert_array_equal(virt["expr"].values, copied["expr"].values)
    # blocks of whole signatures, multiples of the file's chunk rows
    rows = LAYOUTS[layout].get("chunks", (1,))[0]
    assert all(c % rows == 0 for c in virt["expr"].chunks[0][:-1])
    assert virt["expr"].chunks[1] == (N_GENE,)
    # partial reads: slices across chunk edges, fancy indexing, a single signature
    for sel in (
        (slice(5, 17), slice(3, 30)),
        ([0, 9, 10, 52], slice(None)),
        (slice(None), [40, 2, 17]),
        (31, slice(None)),
    ):
        np.testing.assert_array_equal(
            virt["expr"].data[sel].compute(), copied["expr"].data[sel].compute()
        )
    for k, c in copied.coords.items():
        np.testing.assert_array_equal(virt[k].values, c.values)
    assert "expr" not in os.listdir(v)
    prov = virt.attrs["cmapdask"]
    assert prov["virtual"]["url"] == src and prov["source"]["sha256"]


def test_unwritten_chunks_read_as_fill_value(tmp_path):
    src = _gctx(tmp_path / "x.gctx", unwritten_rows=slice(10, 20), dtype="<f4", chunks=(10, 7))
    virt = open_store(convert(src, tmp_path / "v.zarr", virtual=True))
    with h5py.File(src) as f:
        assert f[MATRIX_PATH].id.get_num_chunks() < 60
        ref = f[MATRIX_PATH][...]
    np.testing.assert_array_equal(virt["expr"].values, ref)
    assert (virt["expr"].values[10:20] == 0.5).all()


def _broad_files(fixtures):
    return sorted(str(p.relative_to(fixtures)) for p in fixtures.rglob("*.gctx"))


@pytest.mark.slow  # every Broad file twice: ~30 s; the layout cases run in CI
def test_broad_files_contiguous_chunked_and_gzip(tmp_path, fixtures):
    seen = set()
    for i, name in enumerate(_broad_files(fixtures)):
        src = fixtures / name
        virt = open_store(convert(src, tmp_path / f"v{i}.zarr", virtual=True))
        copied = open_store(convert(src, tmp_path / f"c{i}.zarr"))
        np.testing.assert_array_equal(virt["expr"].values, copied["expr"].values, err_msg=name)
        assert set(virt.coords) == set(copied.coords), name
        v = virt.attrs["cmapdask"]["virtual"]
        seen.add((v["layout"], v["dtype"], tuple(v["filters"])))
    # the Broad's files cover contiguous float64, chunked float32 and gzip-chunked ones
    assert ("contiguous", "<f8", ()) in seen
    assert ("chunked", "<f4", ()) in seen
    assert any(f == (1,) for _, _, f in seen)


def test_query_and_similarity_identical(tmp_path):
    ds = _dataset(nan=False)
    src = _gctx(tmp_path / "x.gctx", ds, dtype="<f8", chunks=(5, 41), compression="gzip")
    urls = {
        "copy": convert(src, tmp_path / "c.zarr", chunk_rows=10),
        "virtual": convert(src, tmp_path / "v.zarr", virtual=True, chunk_rows=10),
    }
    rng = np.random.default_rng(3)
    genes = ds["gene"].values
    up = {f"q{i}": list(rng.choice(genes, 5, replace=False)) for i in range(3)}
    dn = {
        k: [g for g in rng.choice(genes, 9, replace=False) if g not in v][:4] for k, v in up.items()
    }
    out = {}
    for kind, url in urls.items():
        build_index(url, space="all", chunk_rows=10)  # a member written on the virtual store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = query(url, up, dn, space="all", metric="wtcs")
        sim = cmapdask.similarity(open_store(url), k=5, space="all").compute()
        out[kind] = (res, sim)
    for name in ("cs", "ncs"):
        np.testing.assert_array_equal(out["virtual"][0][name].values, out["copy"][0][name].values)
    xr.testing.assert_identical(out["virtual"][1], out["copy"][1])


def test_members_on_a_virtual_store(tmp_path):
    src = _gctx(tmp_path / "x.gctx", dtype="<f4", chunks=(10, 41))
    v = convert(src, tmp_path / "v.zarr", virtual=True)
    labels = xr.Dataset({"label": ("sig", np.arange(N_SIG) % 3)}, coords={"sig": _dataset().sig})
    write_member(v, "clusters/k3", labels)
    info = store_info(v)
    assert info["members"] == ["clusters/k3"]
    assert info["codecs"][0] == "virtual:chunked:<f4" and info["chunks"][1] == N_GENE


def test_changed_source_detected(tmp_path):
    src = _gctx(tmp_path / "x.gctx", dtype="<f4", chunks=(10, 41))
    v = convert(src, tmp_path / "v.zarr", virtual=True)
    open_store(v)
    st = os.stat(src)
    with h5py.File(src, "r+") as f:
        f[MATRIX_PATH][0, 0] = 42.0
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # whatever the clock did
    with pytest.raises(StoreError, match=r"x\.gctx: the source of this virtual store changed"):
        open_store(v)
    os.remove(src)
    with pytest.raises(StoreError, match=r"x\.gctx: the source of the virtual store is gone"):
        open_store(v)


def test_unsupported_filter_refused_with_advice(tmp_path):
    src = _gctx(tmp_path / "lzf.gctx", dtype="<f4", chunks=(10, 41), compression="lzf")
    with pytest.raises(StoreError, match=r"lzf\.gctx: .*lzf.*without --virtual"):
        convert(src, tmp_path / "v.zarr", virtual=True)
    assert not (tmp_path / "v.zarr").exists()
    gct = tmp_path / "x.gct"
    cmapdask.write_gct(_dataset(), str(gct))
    with pytest.raises(cmapdask.CmapdaskError, match="without --virtual"):
        convert(gct, tmp_path / "v.zarr", virtual=True)


@pytest.mark.s3
@pytest.mark.parametrize("layout", ["gzip_shuffle_f8", "contiguous_f4", "gene_split_uneven"])
def test_s3_virtual_equals_copied(tmp_path, s3_server, layout):
    import s3fs

    src = _gctx(tmp_path / "x.gctx", **LAYOUTS[layout])
    fs = s3fs.S3FileSystem(**s3_server)
    prefix = f"cmapdask-test/{uuid.uuid4().hex[:8]}"
    fs.put(src, f"{prefix}/x.gctx")
    s3_src = f"s3://{prefix}/x.gctx"
    copied = open_store(convert(src, tmp_path / "c.zarr"))
    # store on S3 beside its source: the store's options read the source too
    url = convert(
        s3_src,
        f"s3://{prefix}/v.zarr",
        virtual=True,
        chunk_rows=16,
        storage_options=s3_server,
        src_storage_options=s3_server,
    )
    virt = open_store(url, storage_options=s3_server)
    assert virt.attrs["cmapdask"]["virtual"]["url"] == s3_src
    assert virt.attrs["cmapdask"]["virtual"]["source"]["etag"]
    np.testing.assert_array_equal(virt["expr"].values, copied["expr"].values)
    np.testing.assert_array_equal(
        virt["expr"][[1, 30, 44]].values, copied["expr"][[1, 30, 44]].values
    )
    # a local store whose source is on S3: the source's options from the configuration
    local = convert(
        s3_src, tmp_path / "v.zarr", virtual=True, src_storage_options=s3_server, checksum=False
    )
    with dask.config.set({"cmapdask.virtual.storage_options": s3_server}):
        np.testing.assert_array_equal(open_store(local)["expr"].values, copied["expr"].values)
    # a replaced object is detected by its ETag
    with h5py.File(src, "r+") as f:
        f[MATRIX_PATH][0, 0] = 42.0
    fs.put(src, f"{prefix}/x.gctx")
    with pytest.raises(StoreError, match="x.gctx: the source of this virtual store changed"):
        open_store(url, storage_options=s3_server)


@pytest.mark.cluster
def test_read_on_worker_processes(tmp_path, cluster_client):
    src = _gctx(tmp_path / "x.gctx", **LAYOUTS["gzip_shuffle_f8"])
    copied = open_store(convert(src, tmp_path / "c.zarr", chunk_rows=16))
    virt = open_store(convert(src, tmp_path / "v.zarr", virtual=True, chunk_rows=16))
    assert virt["expr"].data.numblocks[0] > 1
    got = cluster_client.compute(virt["expr"].data).result()  # tasks on worker processes
    np.testing.assert_array_equal(got, copied["expr"].values)


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_cli_convert_virtual_info_and_sigs(tmp_path):
    src = _gctx(tmp_path / "x.gctx", **LAYOUTS["gzip_shuffle_f8"])
    sig_info = tmp_path / "siginfo.txt"
    ds = _dataset()
    sig_info.write_text(
        "sig_id\tpert_iname\tcell_iname\n"
        + "".join(f"{s}\tcpd{i % 4}\tC{i % 3}\n" for i, s in enumerate(ds.sig.values))
    )
    dest = tmp_path / "v.zarr"
    r = _cli("convert", "--virtual", "--sig-info", sig_info, src, dest, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli("info", dest, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["shape"] == {"sig": N_SIG, "gene": N_GENE}
    assert info["codecs"] == ["virtual:chunked:<f8", "shuffle", "deflate", "fletcher32"]
    assert info["provenance"]["virtual"]["url"] == src
    out = tmp_path / "cpd1.gctx"
    r = _cli("sigs", dest, "--cmap-name", "cpd1", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = cmapdask.read_gctx(str(out))
    want = ds.isel(sig=np.arange(N_SIG) % 4 == 1)
    assert list(got.sig.values) == list(want.sig.values)
    np.testing.assert_array_equal(got["expr"].values, want["expr"].values)
    # a changed source: one line, exit 2
    with h5py.File(src, "r+") as f:
        f[MATRIX_PATH][0, 0] = 42.0
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    r = _cli("sigs", dest, "--cmap-name", "cpd1", "--out", tmp_path / "again.gctx", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("cmapdask: error: ") and "x.gctx" in r.stderr
    assert r.stderr.count("\n") == 1
