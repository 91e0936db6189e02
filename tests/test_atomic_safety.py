"""Never delete what is not ours; leave no litter (through the command line).

Destinations: ``query``/``introspect``/``similarity --out`` and ``convert DEST`` refuse an
existing non-empty folder without ``--overwrite``, and with it replace only what cmapdask
wrote; a plain file is never replaced. Killed writes (SIGKILL mid-write, by the fault
checkpoints of :mod:`cmapdask.rebuild.faults`) leave temporaries that a rerun removes,
locally and on S3, and a partial appended version never reads as complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cmapdask.cli import main
from cmapdask.connectivity.index import build_index
from cmapdask.errors import StoreError
from cmapdask.io.atomic import WRITING, _tmp_name, owner_alive, owner_token, url_to_fs
from cmapdask.io.gctx import write_gctx
from cmapdask.io.store import open_store
from cmapdask.rebuild import list_versions
from cmapdask.rebuild.versions import version_url
from cmapdask.synthetic import synth_dataset, synth_design
from tests.test_connectivity_query import make_store

REPO = Path(__file__).resolve().parents[1]
N = 120


@pytest.fixture(scope="module")
def gctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety_gctx")
    ds = synth_dataset(synth_design(N, seed=7), metadata="tables").compute()
    write_gctx(ds, d / "all.gctx")
    write_gctx(ds.isel(sig=slice(0, 90)), d / "old.gctx")
    write_gctx(ds.isel(sig=slice(90, None)), d / "new.gctx")
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("safety_store") / "s.zarr")
    ds = make_store(url, seed=5, n_sig=30)
    build_index(url, space="all")
    return url, [str(g) for g in ds["gene"].values]


def _cli(*argv, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", *map(str, argv)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _command(kind, store, out, overwrite=False):
    url, genes = store
    argv = {
        "query": [
            "query",
            url,
            "--genes-up",
            ",".join(genes[:5]),
            "--genes-down",
            ",".join(genes[5:10]),
            "--space",
            "all",
            "--tau",
            "none",
            "--fdr",
            "none",
        ],
        "introspect": ["introspect", url, "--space", "all", "--n-top", "5"],
        "similarity": ["similarity", url, "--k", "3", "--space", "all"],
    }[kind]
    return [*argv, "--out", str(out), "--scheduler", "none", "--quiet"] + (
        ["--overwrite"] if overwrite else []
    )


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cmapdask: error: "), err
    for w in words:
        assert w in err[0], err
    return err[0]


def _litter(root) -> list[str]:
    return [n for _, dirs, files in os.walk(root) for n in dirs + files if ".tmp-" in n]


@pytest.mark.parametrize("kind", ["query", "introspect", "similarity"])
def test_out_keeps_user_files_and_replaces_only_ours(kind, store, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    assert main(_command(kind, store, user)) == 2
    _one_error_line(capsys, str(user), "already exists")
    assert main(_command(kind, store, user, overwrite=True)) == 2
    _one_error_line(capsys, "not written by cmapdask")
    assert sorted(os.listdir(user)) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "precious"

    plain = tmp_path / "plain.txt"
    plain.write_text("precious")
    assert main(_command(kind, store, plain, overwrite=True)) == 2
    _one_error_line(capsys, "is a file")
    assert plain.read_text() == "precious"

    ours = tmp_path / "res"
    ours.mkdir()  # an empty folder is fine
    assert main(_command(kind, store, ours)) == 0
    first = sorted(os.listdir(ours))
    assert main(_command(kind, store, ours)) == 2  # ours, but no --overwrite
    _one_error_line(capsys, "--overwrite")
    assert main(_command(kind, store, ours, overwrite=True)) == 0
    assert sorted(os.listdir(ours)) == first
    assert not _litter(tmp_path)


def test_convert_overwrite_replaces_only_a_store(gctx, tmp_path, capsys):
    src = gctx / "old.gctx"
    base = ["--scheduler", "none", "--quiet", "--no-checksum"]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "keep.csv").write_text("a,b\n")
    assert main(["convert", str(src), str(folder), "--overwrite", *base]) == 2
    _one_error_line(capsys, "not written by cmapdask")
    assert (folder / "keep.csv").read_text() == "a,b\n"
    plain = tmp_path / "file.zarr"
    plain.write_text("x")
    assert main(["convert", str(src), str(plain), "--overwrite", *base]) == 2
    _one_error_line(capsys, "is a file")
    assert plain.read_text() == "x"
    dest = tmp_path / "s.zarr"
    assert main(["convert", str(src), str(dest), *base]) == 0
    assert main(["convert", str(gctx / "all.gctx"), str(dest), *base]) == 2
    _one_error_line(capsys, "already exists")
    assert main(["convert", str(gctx / "all.gctx"), str(dest), "--overwrite", *base]) == 0
    assert open_store(str(dest)).sizes["sig"] == N
    assert not _litter(tmp_path)


def test_killed_convert_rerun_cleans_up(gctx, tmp_path):
    dest = tmp_path / "s.zarr"
    argv = ["convert", gctx / "all.gctx", dest, "--chunk-rows", "10", "--scheduler", "none"]
    killed = _cli(*argv, "--quiet", env={"CMAPDASK_FAULT_KILL": "write:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not dest.exists()
    assert _litter(tmp_path), "the kill should have left a temporary"
    done = _cli(*argv, "--quiet")
    assert done.returncode == 0, done.stderr
    assert not _litter(tmp_path)
    assert open_store(str(dest)).sizes["sig"] == N


def test_live_writers_temporaries_are_left_alone(tmp_path):
    from cmapdask.io.atomic import publish_dir

    live = Path(_tmp_name(str(tmp_path / "out")))  # this process: alive
    live.mkdir()
    dead = tmp_path / f".out.tmp-{owner_token().rsplit('.', 3)[0]}.{os.getpid()}.1.ab"
    dead.mkdir()  # this pid, another start time: a dead process whose pid was reused
    assert owner_alive(live.name.partition(".tmp-")[2])
    with publish_dir(str(tmp_path / "out"), mark="test") as tmp:
        os.makedirs(tmp)
    assert live.exists() and not dead.exists()
    assert json.loads((tmp_path / "out" / ".cmapdask").read_text())["kind"] == "test"


@pytest.mark.parametrize("kill", ["append:1", "append:2"])
def test_partial_appended_version_is_not_complete(gctx, tmp_path, kill):
    root = tmp_path / "coll"
    opts = ["--scheduler", "none", "--quiet"]
    assert _cli("append", root, gctx / "old.gctx", "--chunk-rows", "25", *opts).returncode == 0
    killed = _cli("append", root, gctx / "new.gctx", *opts, env={"CMAPDASK_FAULT_KILL": kill})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = version_url(str(root), "v000002")
    assert os.path.exists(partial)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(partial)
    again = _cli("append", root, gctx / "new.gctx", *opts)  # the dead writer's lock is taken over
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["v000002"]
    assert open_store(partial).sizes["sig"] == N
    assert [m["version"] for m in list_versions(str(root))] == ["v000001", "v000002"]
    assert not _litter(root)


# ------------------------------------------------------------------------------ S3


def _s3_keys(fs, prefix):
    fs.invalidate_cache()
    return fs.find(prefix)


def test_killed_convert_on_s3_rerun_cleans_up(gctx, s3_server):
    prefix = f"cmapdask-test/safety-{uuid.uuid4().hex[:8]}"
    dest = f"s3://{prefix}/s.zarr"
    so = ["--storage-options", json.dumps(s3_server)]
    argv = ["convert", gctx / "all.gctx", dest, "--chunk-rows", "10", "--scheduler", "none", *so]
    killed = _cli(*argv, "--quiet", env={"CMAPDASK_FAULT_KILL": "write:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    fs, _ = url_to_fs(dest, s3_server)
    assert any(".tmp-" in k for k in _s3_keys(fs, prefix))
    done = _cli(*argv, "--quiet")
    assert done.returncode == 0, done.stderr
    keys = _s3_keys(fs, prefix)
    assert keys and not [k for k in keys if ".tmp-" in k or WRITING in k]
    assert open_store(dest, storage_options=s3_server).sizes["sig"] == N


def test_s3_publish_killed_mid_copy_does_not_block_a_rerun(gctx, s3_server):
    prefix = f"cmapdask-test/safety-{uuid.uuid4().hex[:8]}"
    dest = f"s3://{prefix}/s.zarr"
    fs, _ = url_to_fs(dest, s3_server)
    # what a kill during the server-side copy leaves: some objects and the writing marker
    dead = f"{owner_token().rsplit('.', 3)[0]}.{os.getpid()}.1.ab"
    fs.pipe_file(f"{prefix}/s.zarr/{WRITING}", json.dumps({"owner": dead}).encode())
    fs.pipe_file(f"{prefix}/s.zarr/expr/c/0/0", b"partial")
    so = ["--storage-options", json.dumps(s3_server)]
    done = _cli("convert", gctx / "old.gctx", dest, "--scheduler", "none", "--quiet", *so)
    assert done.returncode == 0, done.stderr
    assert open_store(dest, storage_options=s3_server).sizes["sig"] == 90
    assert not [k for k in _s3_keys(fs, prefix) if WRITING in k]
