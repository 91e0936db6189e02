"""Bad input refused at the door with one line and exit code 2; filters are data, not code.

Every case here is a row of docs/errors.md.
"""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import zarr

from cmapdask.cli import main
from cmapdask.connectivity.index import build_index
from tests.test_connectivity_query import make_store

INJECT = "@pd.io.common.os.system('touch {f}') == 0"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("safety") / "s.zarr")
    ds = make_store(path, seed=3, n_sig=24)
    with dask.config.set(scheduler="threads"):
        build_index(path, space="all", chunk_rows=10)
    return path, ds


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("cmapdask: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["introspect", "background", "query"])
def test_filter_text_is_not_code(store, tmp_path, capsys, command):
    url, ds = store
    flag = tmp_path / "ran"
    expr = INJECT.format(f=flag)
    g = list(ds["gene"].values)
    args = {
        "introspect": ["introspect", url, "--out", str(tmp_path / "o"), "--where", expr],
        "background": ["background", url, "--reference", expr],
        "query": [
            "query",
            url,
            "--genes-up",
            ",".join(g[:5]),
            "--genes-down",
            ",".join(g[5:10]),
            "--out",
            str(tmp_path / "o"),
            "--reference",
            expr,
        ],
    }[command]
    rc = main([*args, "--space", "all", "--scheduler", "none", "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2
    assert not flag.exists()  # the shell command never ran
    assert repr(expr) in line and "unexpected '@'" in line
    assert not (tmp_path / "o").exists()


def test_filter_selects_by_fields(store, tmp_path, capsys):
    url, ds = store
    out = tmp_path / "o"
    where = "cell_id in ('MCF7', 'PC3') and not pert_type == 'trt_sh'"
    rc = main(
        ["introspect", url, "--out", str(out), "--where", where, "--space", "all"]
        + ["--n-top", "5", "--scheduler", "none", "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    from cmapdask.io.gctx import read_gctx

    got = list(read_gctx(str(out / "cs.gctx"))["sig"].values)
    want = ds["sig"].values[
        np.isin(ds["cell_id"].values, ["MCF7", "PC3"]) & (ds["pert_type"].values != "trt_sh")
    ]
    assert sorted(got) == sorted(want.tolist())


def test_filter_unknown_field_names_it(store, tmp_path, capsys):
    url, _ = store
    rc = main(
        ["introspect", url, "--out", str(tmp_path / "o"), "--where", "cel_id == 'MCF7'"]
        + ["--space", "all", "--scheduler", "none", "--quiet"]
    )
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "no field 'cel_id'" in line and "cell_id" in line


# ------------------------------------------------------------------------------ rebuild


def _set_reference(member_url, value):
    g = zarr.open_group(member_url, mode="r+")
    meta = dict(g.attrs["cmapdask"])
    meta["reference"] = value
    g.attrs["cmapdask"] = meta


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from cmapdask.io.gctx import write_gctx
    from cmapdask.synthetic import synth_dataset, synth_design

    d = tmp_path_factory.mktemp("safety_rebuild")
    ds = synth_dataset(synth_design(90, seed=2), metadata="tables").compute()
    for name, sl in (("old", slice(0, 60)), ("new1", slice(60, 75)), ("new2", slice(75, 90))):
        write_gctx(ds.isel(sig=sl), d / f"{name}.gctx")
    return d, ds


def _rebuild_args(root):
    return ["rebuild", root, "--k", "5", "--block-size", "32", "--scheduler", "none", "--quiet"]


def test_rebuild_stored_reference_is_parsed_not_evaluated(collection, tmp_path, capsys):
    from cmapdask.connectivity.introspect import build_background
    from cmapdask.rebuild import open_current, read_manifest

    d, ds = collection
    root = str(tmp_path / "coll")
    flag = tmp_path / "ran"
    with dask.config.set(scheduler="threads"):
        assert main(["append", root, str(d / "old.gctx"), "--quiet", "--scheduler", "none"]) == 0
        assert main(_rebuild_args(root)) == 0
        v1 = open_current(root).attrs["store_url"]
        build_index(v1, space="landmark")
        build_background(v1, reference="pert_type == 'ctl_vehicle'", space="landmark", n_top=5)
    member = f"{v1}/background/landmark"
    rec = zarr.open_group(member, mode="r").attrs["cmapdask"]["reference"]
    assert rec == ["==", {"field": "pert_type"}, {"value": "ctl_vehicle"}]  # data, not text

    # a store written before references were data: the text is parsed, and still works
    _set_reference(member, "pert_type == 'ctl_vehicle'")
    assert main(["append", root, str(d / "new1.gctx"), "--quiet", "--scheduler", "none"]) == 0
    with dask.config.set(scheduler="threads"):
        assert main(_rebuild_args(root)) == 0, capsys.readouterr().err
    cur = open_current(root).attrs
    how = {p["member"]: p["how"] for p in read_manifest(root, cur["version"])["products"]}
    assert how["background/landmark"].split()[0] in ("shared", "rebuilt")

    # an edited store carrying code: refused naming the member and the text; nothing runs
    v2 = cur["store_url"]
    expr = INJECT.format(f=flag)
    _set_reference(f"{v2}/background/landmark", expr)
    assert main(["append", root, str(d / "new2.gctx"), "--quiet", "--scheduler", "none"]) == 0
    capsys.readouterr()
    with dask.config.set(scheduler="threads"):
        rc = main(_rebuild_args(root))
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and not flag.exists()
    assert "background/landmark" in line and repr(expr) in line
    assert open_current(root).attrs["store_url"] == v2  # not switched


def test_option_counts_refuse_zero_and_negatives(capsys):
    for argv in (
        ["convert", "a.gctx", "b.zarr", "--chunk-rows", "0"],
        ["convert", "a.gctx", "b.zarr", "--chunk-rows", "-5"],
        ["rebuild", "x", "--block-size", "0"],
        ["index", "x", "--chunk-rows", "0"],
        ["similarity", "x", "--k", "0"],
        ["append", "x", "y.gctx", "--chunk-rows", "ten"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        line = _one_line(capsys.readouterr().err)
        assert e.value.code == 2
        assert argv[-2] in line and repr(argv[-1]) in line, line


def test_manifest_json_is_data():  # the recorded form is plain JSON, nothing callable
    from cmapdask.where import parse, selection_record

    rec = selection_record("is_touchstone == 1 or cell_id in ['A', 'B']")
    assert json.loads(json.dumps(rec)) == rec
    assert selection_record("touchstone") == "touchstone" and selection_record(None) == "all"
    assert parse("is_touchstone == 1").to_data() == ["==", {"field": "is_touchstone"}, {"value": 1}]


# ------------------------------------------------------------------------------ the door


@pytest.fixture(scope="module")
def gctx(tmp_path_factory):
    from cmapdask.io.gctx import write_gctx
    from cmapdask.synthetic import synth_dataset, synth_design

    d = tmp_path_factory.mktemp("door")
    ds = synth_dataset(synth_design(12, seed=1), metadata="tables").compute()
    write_gctx(ds, d / "ok.gctx")
    write_gctx(ds.isel(sig=slice(0, 0)), d / "empty.gctx")
    bad = ds.copy(deep=True)
    bad["expr"].values[3, 5] = np.nan
    bad["expr"].values[7, 1] = np.inf
    write_gctx(bad, d / "nonfinite.gctx")
    return d, ds


def _cli(argv, capsys):
    rc = main([*argv, "--scheduler", "none", "--quiet"])
    return rc, capsys.readouterr().err


def test_table_header_repeated_or_two_id_columns(gctx, tmp_path, capsys):
    d, ds = gctx
    sig = ds["sig"].values
    for header, col in (
        ("sig_id\tpert_id\tpert_id", "'pert_id'"),
        ("sig_id\tsig_id\tx", "'sig_id'"),
    ):
        t = tmp_path / "siginfo.txt"
        t.write_text(header + "\n" + "".join(f"{s}\ta\tb\n" for s in sig))
        out = tmp_path / "s.zarr"
        rc, err = _cli(["convert", str(d / "ok.gctx"), str(out), "--sig-info", str(t)], capsys)
        line = _one_line(err)
        assert rc == 2 and f"column {col} appears twice in the header" in line
        assert "siginfo.txt" in line and not out.exists()


def test_empty_matrix_refused(gctx, tmp_path, capsys):
    d, _ = gctx
    rc, err = _cli(["convert", str(d / "empty.gctx"), str(tmp_path / "e.zarr")], capsys)
    assert rc == 2 and "empty.gctx: the matrix is empty" in _one_line(err)
    assert not (tmp_path / "e.zarr").exists()


def test_nonfinite_warned_at_convert_and_refused_by_index(gctx, tmp_path, capsys):
    d, ds = gctx
    out = tmp_path / "n.zarr"
    rc, err = _cli(["convert", str(d / "nonfinite.gctx"), str(out)], capsys)
    first = str(ds["sig"].values[3])
    assert rc == 0 and err.strip() == (
        f"cmapdask: warning: {out}: 2 signature(s) hold NaN or infinite values, e.g. "
        f"{first!r}; `cmapdask index` refuses such a store"
    )
    rc, err = _cli(["index", str(out), "--space", "all"], capsys)
    line = _one_line(err)
    assert rc == 2 and "2 signature(s) have NaN or infinite scores" in line and repr(first) in line
    assert not (out / "index").exists()  # refused before anything was written
    # a store converted clean records it, and index trusts the record
    rc, err = _cli(["convert", str(d / "ok.gctx"), str(tmp_path / "ok.zarr")], capsys)
    assert rc == 0 and not err
    meta = zarr.open_group(str(tmp_path / "ok.zarr"), mode="r").attrs["cmapdask"]
    assert meta["nonfinite"] == {"n_sig": 0}


def test_destination_under_a_file(gctx, store, tmp_path, capsys):
    d, _ = gctx
    (tmp_path / "afile").write_text("x")
    rc, err = _cli(["convert", str(d / "ok.gctx"), str(tmp_path / "afile" / "x.zarr")], capsys)
    line = _one_line(err)
    assert rc == 2 and "is a file, not a folder" in line and "afile" in line
    url, ds = store
    g = list(ds["gene"].values)
    rc, err = _cli(
        ["query", url, "--genes-up", ",".join(g[:5]), "--genes-down", ",".join(g[5:10])]
        + ["--out", str(tmp_path / "afile" / "res"), "--space", "all"],
        capsys,
    )
    assert rc == 2 and "is a file, not a folder" in _one_line(err)


def test_append_missing_file_or_folder(tmp_path, capsys):
    root = str(tmp_path / "coll")
    rc, err = _cli(["append", root, str(tmp_path / "missing.gctx")], capsys)
    assert rc == 2 and "missing.gctx: no such file" in _one_line(err)
    rc, err = _cli(["append", root, str(tmp_path)], capsys)
    assert rc == 2 and "is a folder, not a GCTx file" in _one_line(err)


def test_s3_destination_missing_bucket_or_refused_endpoint(gctx, s3_server, capsys):
    d, _ = gctx
    so = json.dumps(s3_server)
    rc, err = _cli(
        ["convert", str(d / "ok.gctx"), "s3://no-such-bucket/x.zarr", "--storage-options", so],
        capsys,
    )
    assert rc == 2 and "bucket 'no-such-bucket' does not exist" in _one_line(err)
    from tests.conftest import _free_port

    closed = {
        **s3_server,
        "client_kwargs": {
            **s3_server["client_kwargs"],
            "endpoint_url": f"http://127.0.0.1:{_free_port()}",
        },
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    rc, err = _cli(
        ["convert", str(d / "ok.gctx"), "s3://cmapdask-test/x.zarr"]
        + ["--storage-options", json.dumps(closed)],
        capsys,
    )
    # nothing listening: infrastructure, not input (a rerun may succeed): exit 75
    assert rc == 75 and "cannot reach the object store" in _one_line(err)


def test_s3_source_gets_the_storage_options(gctx, s3_server, tmp_path, capsys):
    import s3fs

    d, ds = gctx
    s3fs.S3FileSystem(**s3_server).put(str(d / "ok.gctx"), "cmapdask-test/src/ok.gctx")
    out = tmp_path / "from_s3.zarr"
    rc, err = _cli(
        ["convert", "s3://cmapdask-test/src/ok.gctx", str(out)]
        + ["--storage-options", json.dumps(s3_server)],
        capsys,
    )
    assert rc == 0, err
    from cmapdask.io.store import open_store

    assert list(open_store(str(out))["sig"].values) == list(ds["sig"].values)


def test_s3_destination_wrong_credentials(gctx, tmp_path, capsys):
    """A server that checks keys (moto with authentication on) refuses unknown ones."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import _free_port, _stop, _wait_port

    d, _ = gctx
    moto = str(Path(sys.executable).parent / "moto_server")  # this environment's
    port = _free_port()
    with open(tmp_path / "moto.log", "w") as log:
        proc = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        )
        try:
            _wait_port(port, proc)
            so = {
                "key": "wrong",
                "secret": "wrong",
                "client_kwargs": {
                    "endpoint_url": f"http://127.0.0.1:{port}",
                    "region_name": "us-east-1",
                },
            }
            rc, err = _cli(
                ["convert", str(d / "ok.gctx"), "s3://cmapdask-test/x.zarr"]
                + ["--storage-options", json.dumps(so)],
                capsys,
            )
        finally:
            _stop([proc])
    line = _one_line(err)
    assert rc == 2 and "access to bucket 'cmapdask-test' refused (check the credentials)" in line


def test_library_counts_refuse_zero(gctx, tmp_path):
    from cmapdask.errors import InputError
    from cmapdask.io.store import convert
    from cmapdask.rebuild import rebuild

    d, _ = gctx
    with pytest.raises(InputError, match="chunk_rows must be a positive integer, got 0"):
        convert(d / "ok.gctx", str(tmp_path / "x.zarr"), chunk_rows=0)
    with pytest.raises(InputError, match="block_size must be a positive integer, got 0"):
        rebuild(str(tmp_path / "coll"), block_size=0)
    assert not (tmp_path / "x.zarr").exists()


def test_append_counts_nonfinite_so_index_refuses(gctx, tmp_path, capsys):
    """A clean collection extended with a NaN signature no longer claims to be clean."""
    from cmapdask.rebuild import append

    d, ds = gctx
    from cmapdask.io.gctx import write_gctx

    old, new = ds.isel(sig=slice(0, 8)), ds.isel(sig=slice(8, None)).copy(deep=True)
    new["expr"].values[2, 0] = np.nan
    write_gctx(old, tmp_path / "old.gctx")
    write_gctx(new, tmp_path / "new.gctx")
    root = str(tmp_path / "coll")
    with dask.config.set(scheduler="threads"):
        append(root, tmp_path / "old.gctx")
        vid = append(root, tmp_path / "new.gctx")
    from cmapdask.rebuild.versions import version_url

    url = version_url(root, vid)
    meta = zarr.open_group(str(url), mode="r").attrs["cmapdask"]
    first = str(new["sig"].values[2])
    assert meta["nonfinite"] == {"n_sig": 1, "first": first}
    rc, err = _cli(["index", str(url), "--space", "all"], capsys)
    assert rc == 2 and repr(first) in _one_line(err)


def test_destination_in_an_unwritable_folder(gctx, tmp_path, capsys, monkeypatch):
    """As root every folder is writable, so the permission answer is simulated."""
    import os

    import cmapdask.io.atomic as atomic

    d, _ = gctx
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(
            atomic.os, "access", lambda p, m: False if str(p) == str(ro) else real(p, m)
        )
    rc, err = _cli(["convert", str(d / "ok.gctx"), str(ro / "x.zarr")], capsys)
    assert rc == 2 and f"no permission to write in {ro}" in _one_line(err)
    assert not (ro / "x.zarr").exists()
