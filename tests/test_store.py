"""The Zarr signature store: convert, joins, atomic publish, members, S3, a real cluster."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from cmapdask.cli import main
from cmapdask.errors import GCTxFormatError, MetadataError, StoreError
from cmapdask.io.gctx import read_gctx, write_gctx
from cmapdask.io.store import (
    convert,
    has_member,
    list_members,
    open_member,
    open_store,
    write_member,
    write_store,
)
from tests.test_gctx import RaiseOnCompute


def assert_same_dataset(a: xr.Dataset, b: xr.Dataset) -> None:
    assert a.sizes == b.sizes
    np.testing.assert_array_equal(a["expr"].values, b["expr"].values)
    assert set(a.coords) == set(b.coords)
    for name in a.coords:
        x, y = (
            a[name].to_series().reset_index(drop=True),
            b[name].to_series().reset_index(drop=True),
        )
        assert x.dtype == y.dtype, name
        pd.testing.assert_series_equal(x, y, check_names=False)


@pytest.fixture
def small_release(tmp_path):
    """A 9-signature GCTx with ids only plus siginfo, geneinfo and compoundinfo tables."""
    rng = np.random.default_rng(3)
    sigs = [f"PLATE1:{c}{i}" for c in "AB" for i in range(5)][:9]
    genes = [str(g) for g in (5720, 466, 6009, 2101, 8726, 10058)]
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), rng.normal(size=(9, 6)).astype(np.float32))},
        coords={"sig": np.array(sigs, dtype=object), "gene": np.array(genes, dtype=object)},
    )
    gctx = write_gctx(ds, tmp_path / "rel_n9x6.gctx")
    sig = pd.DataFrame(
        {
            "sig_id": sigs[::-1],  # any order
            "pert_id": [
                "BRD-A",
                "BRD-B",
                "DMSO",
                "BRD-A",
                "BRD-C",
                "BRD-B",
                "DMSO",
                "BRD-A",
                "BRD-B",
            ],
            "pert_type": ["trt_cp"] * 9,
            "cell_iname": ["A375", "MCF7", "A375", "PC3", "MCF7", "A375", "PC3", "MCF7", "PC3"],
            "pert_idose": ["10 µM", "-666", "", "1 µM", "10 µM", "10 µM", "", "1 µM", "10 µM"],
            "tas": [0.1, 0.2, -666, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            "is_touchstone": [1, 0, 0, 1, 1, 0, 0, 1, 1],
        }
    )
    sig.to_csv(tmp_path / "siginfo.txt", sep="\t", index=False)
    pd.DataFrame(
        {
            "gene_id": genes,
            "gene_symbol": ["PSMB1", "ATF1", "RHEB", "ETV3", "RNF40", "DDR1"],
            "feature_space": ["landmark"] * 3 + ["best inferred"] * 2 + ["inferred"],
        }
    ).to_csv(tmp_path / "geneinfo.txt", sep="\t", index=False)
    pd.DataFrame(
        {
            "pert_id": ["BRD-A", "BRD-A", "BRD-B", "BRD-C"],
            "cmap_name": ["a", "a", "b", "c"],
            "target": ["HDAC1", "HDAC2", "EGFR", "-666"],
            "moa": ["HDAC inhibitor"] * 2 + ["EGFR inhibitor", "-666"],
        }
    ).to_csv(tmp_path / "compoundinfo.txt", sep="\t", index=False)
    return tmp_path, gctx, ds, sig


def test_convert_gctx_fixture_equals_source(tmp_path, fixtures):
    src = fixtures / "cmapm/gctv13_01.gctx"
    dest = convert(src, tmp_path / "s.zarr", chunk_rows=100)
    store = open_store(dest)
    assert_same_dataset(read_gctx(src), store)
    expr = zarr.open_group(str(dest))["expr"]
    # shards of 100 whole signatures, inner chunks of a few signatures
    assert expr.shards == (100, 978) and expr.dtype == np.float32
    assert expr.chunks[1] == 978 and 100 % expr.chunks[0] == 0 and expr.chunks[0] < 100
    prov = store.attrs["cmapdask"]
    assert prov["complete"] is True and prov["schema_version"] == 1
    assert prov["source"]["name"] == "gctv13_01.gctx"
    assert prov["source"]["size"] == src.stat().st_size
    import hashlib

    assert prov["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_checksum_failure_fails_the_conversion(tmp_path, fixtures, monkeypatch):
    import cmapdask.io.store.checksum as checksum_mod

    def broken():
        raise OSError("disk on fire")

    monkeypatch.setattr(checksum_mod.hashlib, "sha256", broken)
    with pytest.raises(StoreError, match="SHA-256.*disk on fire"):
        convert(fixtures / "cmapm/gctv13_01.gctx", tmp_path / "s.zarr")
    assert not list(tmp_path.iterdir())
    prov = open_store(
        convert(fixtures / "cmapm/gctv13_01.gctx", tmp_path / "n.zarr", checksum=False)
    ).attrs
    assert "sha256" not in prov["cmapdask"]["source"]


def test_all_nan_signatures_are_stored_as_chunks(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    x[4:8] = np.nan  # one whole chunk of missing signatures
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), x)},
        coords={
            "sig": np.array([f"s{i}" for i in range(10)], dtype=object),
            "gene": np.array([f"g{i}" for i in range(5)], dtype=object),
        },
    )
    dest = convert(write_gctx(ds, tmp_path / "nan_n10x5.gctx"), tmp_path / "s.zarr", chunk_rows=4)
    np.testing.assert_array_equal(open_store(dest)["expr"].values, x)
    assert (
        len(
            [
                p
                for p in (tmp_path / "s.zarr/expr").rglob("*")
                if p.is_file() and p.name != "zarr.json"
            ]
        )
        == 3
    )


def _malloc_faults() -> tuple[int, int]:
    """Page faults of five blocks written one after another, as a one-thread worker
    writes them (each block: a fresh chunk-sized array, as h5py's read gives, then
    blosc-zstd), without and with :func:`roomy_malloc` around each block."""
    import contextlib
    import resource

    import numcodecs.blosc
    from numcodecs import Blosc

    from cmapdask.io.malloc import roomy_malloc

    numcodecs.blosc.use_threads = False
    codec = Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)
    x = np.random.default_rng(0).normal(size=(512, 12328)).astype(np.float32)  # 24 MiB

    def faults(ctx):
        codec.encode(x.copy())
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            with ctx():
                codec.encode(x.copy())
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    return faults(contextlib.nullcontext), faults(roomy_malloc)


def _glibc_only():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")


def test_roomy_malloc_where_a_worker_pinned_the_thresholds():
    # dask's Nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, which makes every
    # block fault in fresh memory; roomy_malloc lets consecutive blocks reuse it
    import subprocess
    import sys

    _glibc_only()
    env = {**__import__("os").environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    probe = "from tests.test_store import _malloc_faults; print(*_malloc_faults())"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    pinned, roomy = map(int, out.stdout.split())
    # pinned: every block faults in its 24 MiB copy and its output (>= 6,000 pages each)
    # (restoring the thresholds after every block, as cmapdask once did, gave pinned / 7)
    assert pinned > 5 * 6000 and roomy < pinned / 15, (pinned, roomy)


def test_roomy_malloc_applies_in_nanny_workers(cluster_client):
    # the workers of a real cluster (a Nanny each) are where the thresholds are pinned
    import sys

    import cloudpickle

    _glibc_only()
    # the workers cannot import this test module: send the probe by value
    module = sys.modules[_malloc_faults.__module__]
    cloudpickle.register_pickle_by_value(module)
    try:
        got = cluster_client.run(_malloc_faults)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert got
    for pinned, roomy in got.values():
        assert roomy < pinned / 15, (pinned, roomy)


def test_default_chunks_whole_genes_multiple_of_file_chunks(tmp_path, fixtures):
    dest = convert(fixtures / "cmapm/gctv13_01.gctx", tmp_path / "s.zarr")
    expr = zarr.open_group(str(dest))["expr"]
    rows = expr.shards[0]
    assert expr.shards[1] == 978 and rows % 268 == 0 or rows == 371


def test_convert_joins_tables(small_release):
    d, gctx, ds, sig = small_release
    dest = convert(
        gctx,
        d / "s.zarr",
        sig_info=d / "siginfo.txt",
        gene_info=d / "geneinfo.txt",
        compound_info=d / "compoundinfo.txt",
    )
    s = open_store(dest)
    np.testing.assert_array_equal(s["expr"].values, ds["expr"].values)
    by_id = sig.set_index("sig_id")
    assert s["pert_id"].values.tolist() == by_id.loc[s["sig"].values, "pert_id"].tolist()
    assert s["tas"].dtype == np.float64 and np.isnan(
        s["tas"].values[list(s["sig"].values).index(sig.sig_id[2])]
    )
    assert s["is_touchstone"].dtype == np.int64
    assert s["pert_idose"].to_series().isna().sum() == 3  # -666 and empty are missing
    assert "10 µM" in s["pert_idose"].values.tolist()
    assert s["gene_symbol"].values.tolist() == ["PSMB1", "ATF1", "RHEB", "ETV3", "RNF40", "DDR1"]
    moa = dict(zip(s["pert_id"].values, s["moa"].values, strict=False))
    assert moa["BRD-A"] == "HDAC inhibitor" and moa["BRD-B"] == "EGFR inhibitor"
    assert pd.isna(moa["BRD-C"]) and pd.isna(moa["DMSO"])
    assert (
        dict(zip(s["pert_id"].values, s["target"].values, strict=False))["BRD-A"] == "HDAC1|HDAC2"
    )
    assert set(s.attrs["cmapdask"]["tables"]) == {"sig_info", "gene_info", "compound_info"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.iloc[1:], "1 sig id\\(s\\) of rel_n9x6.gctx have no row"),
        (
            lambda t: pd.concat([t, t.iloc[[0]].assign(sig_id="EXTRA")]),
            "1 sig_id value\\(s\\) are not in",
        ),
        (lambda t: pd.concat([t, t.iloc[[0]]]), "duplicate sig_id"),
        (lambda t: t.drop(columns="sig_id"), "no id column"),
    ],
)
def test_bad_tables_fail_and_leave_nothing(small_release, edit, message):
    d, gctx, _, sig = small_release
    edit(sig).to_csv(d / "bad_siginfo.txt", sep="\t", index=False)
    with pytest.raises(MetadataError, match=f"bad_siginfo.txt: .*{message}"):
        convert(gctx, d / "s.zarr", sig_info=d / "bad_siginfo.txt")
    assert not any(p.name.endswith(".zarr") or ".tmp-" in p.name for p in d.iterdir())


def test_extra_ids_can_be_ignored(small_release):
    d, gctx, _, sig = small_release
    pd.concat([sig, sig.iloc[[0]].assign(sig_id="EXTRA")]).to_csv(
        d / "big.txt", sep="\t", index=False
    )
    s = open_store(convert(gctx, d / "s.zarr", sig_info=d / "big.txt", extra_ids="ignore"))
    assert "EXTRA" not in s["sig"].values


def test_latin1_table(small_release):
    d, gctx, _, sig = small_release
    (d / "latin.txt").write_bytes(sig.to_csv(sep="\t", index=False).encode("latin-1"))
    s = open_store(convert(gctx, d / "s.zarr", sig_info=d / "latin.txt"))
    assert "10 µM" in s["pert_idose"].values.tolist()


def test_existing_destination_is_refused(tmp_path, fixtures):
    src = fixtures / "cmapm/distil/modzs_gct_n3x978.gctx"
    dest = convert(src, tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        convert(src, dest)
    convert(src, dest, overwrite=True)
    assert open_store(dest).sizes["sig"] == 3


def test_incomplete_store_refused(tmp_path, fixtures):
    dest = convert(fixtures / "cmapm/distil/modzs_gct_n3x978.gctx", tmp_path / "s.zarr")
    g = zarr.open_group(str(dest), mode="r+")
    meta = dict(g.attrs["cmapdask"])
    meta["complete"] = False
    g.attrs["cmapdask"] = meta
    with pytest.raises(StoreError, match="incomplete store"):
        open_store(dest)
    with pytest.raises(StoreError, match="no store here"):
        open_store(tmp_path / "nothing.zarr")


def test_failed_conversion_leaves_nothing(tmp_path, fixtures):
    src = tmp_path / "trunc.gctx"
    good = (fixtures / "cmapm/gctv13_01.gctx").read_bytes()
    src.write_bytes(good[: len(good) - 200_000])  # metadata intact? the matrix is not
    with pytest.raises(GCTxFormatError, match="trunc.gctx"):
        convert(src, tmp_path / "s.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunc.gctx"]


def test_open_store_is_lazy_and_subsets_cheaply(tmp_path, fixtures):
    dest = convert(fixtures / "cmapm/gctv13_01.gctx", tmp_path / "s.zarr", chunk_rows=50)
    with RaiseOnCompute():
        s = open_store(dest)
        sub = s.isel(sig=[0, 1, 370])["expr"] * 2
    assert s["expr"].data.npartitions == 8
    assert len(sub.data.__dask_graph__().layers) < 10
    np.testing.assert_array_equal(
        sub.values, read_gctx(fixtures / "cmapm/gctv13_01.gctx")["expr"].values[[0, 1, 370]] * 2
    )


def test_members_added_without_touching_expr(tmp_path, fixtures):
    dest = convert(fixtures / "cmapm/distil/modzs_gct_n3x978.gctx", tmp_path / "s.zarr")
    expr_files = sorted((tmp_path / "s.zarr/expr").rglob("*"))
    stamp = {p: p.stat().st_mtime_ns for p in expr_files}
    member = xr.Dataset({"rank": (("gene", "sig"), np.arange(6).reshape(3, 2).astype(np.int32))})
    write_member(dest, "index/landmark", member, provenance={"space": "landmark"})
    assert has_member(dest, "index/landmark") and not has_member(dest, "index/bing")
    assert list_members(dest) == ["index/landmark"]
    back = open_member(dest, "index/landmark")
    np.testing.assert_array_equal(back["rank"].values, member["rank"].values)
    assert back.attrs["cmapdask"]["space"] == "landmark"
    write_member(dest, "index/landmark", member * 2)  # replaced atomically
    np.testing.assert_array_equal(
        open_member(dest, "index/landmark")["rank"].values, member["rank"].values * 2
    )
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "s.zarr/expr").rglob("*"))} == stamp
    with pytest.raises(StoreError, match="no member 'similarity/x'"):
        open_member(dest, "similarity/x")
    assert open_store(dest).sizes["sig"] == 3


def test_memory_url(fixtures):
    src = fixtures / "cmapm/distil/modzs_gct_n3x978.gctx"
    dest = convert(src, "memory://stores/modz.zarr")
    assert_same_dataset(read_gctx(src), open_store(dest))
    write_member(dest, "similarity/t", xr.Dataset({"a": ("sig", np.arange(3))}))
    assert list_members(dest) == ["similarity/t"]


def test_write_store_round_trip_with_uneven_chunks(tmp_path):
    from tests.test_gctx import _dataset

    ds = _dataset(n_sig=11, n_gene=4, chunks=3)
    dest = write_store(ds, tmp_path / "w.zarr", chunk_rows=4, provenance={"made_by": "test"})
    back = open_store(dest)
    np.testing.assert_array_equal(back["expr"].values, ds["expr"].values)
    assert back["expr"].data.chunks[0] == (4, 4, 3)
    assert back.attrs["cmapdask"]["made_by"] == "test"
    assert back["pert_id"].to_series().isna().sum() == 1


def test_cli_convert_info_and_bad_input(tmp_path, fixtures, capsys):
    src = fixtures / "cmapm/distil/modzs_gct_n3x978.gctx"
    rc = main(["convert", str(src), str(tmp_path / "s.zarr"), "--scheduler", "none", "--quiet"])
    assert rc == 0
    assert main(["info", str(tmp_path / "s.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == {"sig": 3, "gene": 978}
    (tmp_path / "junk.gctx").write_bytes(b"not hdf5 at all")
    rc = main(
        [
            "convert",
            str(tmp_path / "junk.gctx"),
            str(tmp_path / "j.zarr"),
            "--scheduler",
            "none",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "junk.gctx" in err[0]
    assert not (tmp_path / "j.zarr").exists()


@pytest.mark.s3
def test_s3_convert_open_and_members(s3_server, fixtures):
    src = fixtures / "cmapm/gctv13_01.gctx"
    url = "s3://cmapdask-test/stores/gctv13.zarr"
    convert(src, url, storage_options=s3_server, chunk_rows=100)
    s = open_store(url, storage_options=s3_server)
    assert_same_dataset(read_gctx(src), s)
    write_member(
        url, "index/landmark", xr.Dataset({"r": ("sig", np.arange(371))}), storage_options=s3_server
    )
    assert list_members(url, storage_options=s3_server) == ["index/landmark"]
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    assert not [p for p in fs.ls("cmapdask-test/stores") if ".tmp-" in p]  # temporaries cleaned
    with pytest.raises(StoreError, match="already exists"):
        convert(src, url, storage_options=s3_server)
    # the GCTx itself can live on S3 too
    fs.put(str(src), "cmapdask-test/in/gctv13_01.gctx")
    remote = read_gctx(
        "s3://cmapdask-test/in/gctv13_01.gctx", storage_options=s3_server, sigs=[0, 5]
    )
    np.testing.assert_array_equal(remote["expr"].values, read_gctx(src, sigs=[0, 5])["expr"].values)


@pytest.mark.s3
def test_s3_incomplete_is_refused(s3_server, fixtures):
    url = "s3://cmapdask-test/stores/half.zarr"
    convert(fixtures / "cmapm/distil/modzs_gct_n3x978.gctx", url, storage_options=s3_server)
    g = zarr.open_group(url, mode="r+", storage_options=s3_server)
    g.attrs["cmapdask"] = {**dict(g.attrs["cmapdask"]), "complete": False}
    with pytest.raises(StoreError, match="incomplete"):
        open_store(url, storage_options=s3_server)


@pytest.mark.cluster
def test_convert_on_real_cluster_equals_local(tmp_path, fixtures, cluster_client):
    from distributed import get_task_stream

    src = fixtures / "cmapm/gctv13_01.gctx"
    with get_task_stream(cluster_client) as ts:
        on_cluster = convert(src, tmp_path / "c.zarr", chunk_rows=64)
    assert len(cluster_client.nthreads()) == 2
    workers = {t["worker"] for t in ts.data}
    assert len(ts.data) >= 6 and len(workers) == 2  # 6 chunks, spread over both workers
    import dask

    with dask.config.set(scheduler="sync"):
        local = convert(src, tmp_path / "l.zarr", chunk_rows=64)
    a, b = open_store(on_cluster), open_store(local)
    assert_same_dataset(a, b)
    for key in ("source", "chunk_rows", "schema_version"):
        assert a.attrs["cmapdask"][key] == b.attrs["cmapdask"][key]
    # byte-identical chunks
    ga, gb = zarr.open_group(str(on_cluster)), zarr.open_group(str(local))
    assert np.array_equal(ga["expr"][:], gb["expr"][:])


def test_remove_leftovers_of_killed_publishes(tmp_path):
    import os

    from cmapdask.io.atomic import publish_dir, remove_leftovers

    root = tmp_path / "v"
    (root / "index").mkdir(parents=True)
    (root / "expr").mkdir()
    with pytest.raises(RuntimeError), publish_dir(str(root / "index" / "all")) as tmp:
        os.makedirs(os.path.join(tmp, "c"))
        leftover = tmp
        raise RuntimeError("killed")  # a clean failure removes its own temporary ...
    assert not os.path.exists(leftover)
    # ... a SIGKILL does not: simulate what it leaves
    for p in (root / ".sim.tmp-0123456789ab", root / "index" / ".all.tmp-0123456789ab" / "c"):
        p.mkdir(parents=True)
    removed = remove_leftovers(str(root))
    assert len(removed) == 2
    assert sorted(os.listdir(root)) == ["expr", "index"] and os.listdir(root / "index") == []


def test_reopening_uses_cached_metadata_and_a_republished_store_is_read_afresh(tmp_path):
    from cmapdask.io.store import read

    def dataset(tag: str) -> xr.Dataset:
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        return xr.Dataset(
            {"expr": (("sig", "gene"), x)},
            coords={
                "sig": np.array([f"{tag}{i}" for i in range(4)], dtype=object),
                "gene": np.array(["1", "2", "3"], dtype=object),
                "cell_iname": ("sig", np.array(["A", "", "B", tag], dtype=object)),
            },
        )

    dest = tmp_path / "s.zarr"
    write_store(dataset("old"), dest)

    def cells(ds):
        return [None if pd.isna(v) else v for v in ds["cell_iname"].values.tolist()]

    first = open_store(dest)
    assert cells(first) == ["A", None, "B", "old"]
    reads = []
    real = read._open_group
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(read, "_open_group", lambda *a: reads.append(a) or real(*a))
        again = open_store(dest)
        # the cached coordinates: no group opened to read them (only the expr layout)
        assert len(reads) == 1
    assert again["sig"].values.tolist() == first["sig"].values.tolist()
    with pytest.raises(ValueError):  # the cache cannot be changed through a dataset
        read._COORDS[next(reversed(read._COORDS))]["cell_iname"].values[0] = "X"
    write_store(dataset("new"), dest, overwrite=True)
    fresh = open_store(dest)
    assert fresh["sig"].values.tolist() == [f"new{i}" for i in range(4)]
    assert cells(fresh) == ["A", None, "B", "new"]
