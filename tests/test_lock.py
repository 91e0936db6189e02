"""One writer per collection: the ``ROOT/LOCK`` of :mod:`cmapdask.io.lock`, with real
concurrent ``cmapdask append`` / ``rebuild`` processes, locally and on the moto S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cmapdask.errors import LockedError
from cmapdask.io.atomic import _HOST, url_to_fs
from cmapdask.io.gctx import write_gctx
from cmapdask.io.lock import collection_lock
from cmapdask.rebuild import append, list_versions, open_version
from cmapdask.synthetic import synth_dataset, synth_design

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lock_data")
    ds = synth_dataset(synth_design(100, seed=11), metadata="tables").compute()
    parts = {"base": slice(0, 60), "a": slice(60, 80), "b": slice(80, 100)}
    out = {}
    for name, sl in parts.items():
        write_gctx(ds.isel(sig=sl), d / f"{name}.gctx")
        out[name] = (d / f"{name}.gctx", [str(s) for s in ds["sig"].values[sl]])
    return out


def _popen(*argv, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "cmapdask", *map(str, argv), "--scheduler", "none", "--quiet"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(*argv, env=None):
    p = _popen(*argv, env=env)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def _collection(root, files, so=None):
    append(root, files["base"][0], chunk_rows=25, storage_options=so)


def _so_args(so):
    return ["--storage-options", json.dumps(so)] if so else []


def _check_both_appended(root, files, outs, so=None):
    """Every append that exited 0 made exactly one version, and the newest version holds
    the signatures of all of them: nothing lost."""
    versions = [m["version"] for m in list_versions(root, storage_options=so)]
    made = [out.split()[-1] for rc, out, _ in outs if rc == 0]
    assert len(made) == len(set(made)) == len(versions) - 1
    assert sorted(made) == versions[1:]
    last = open_version(root, versions[-1], storage_options=so)
    have = set(map(str, last.indexes["sig"]))
    for (rc, _, _), name in zip(outs, ("a", "b"), strict=True):
        assert (set(files[name][1]) <= have) == (rc == 0)
    assert last.sizes["sig"] == 60 + 20 * len(made)


def _two_appends(root, files, so=None, env=None):
    procs = [_popen("append", root, files[n][0], *_so_args(so), env=env) for n in ("a", "b")]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        outs.append((p.returncode, out, err))
    for rc, _, err in outs:
        assert rc in (0, 2), err
        if rc == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "holds the collection lock" in lines[0], err
    return outs


def test_two_appends_at_once_refuse_or_serialise(files, tmp_path):
    root = str(tmp_path / "coll")
    _collection(root, files)
    outs = _two_appends(root, files)  # no waiting: the second refuses or comes after
    assert any(rc == 0 for rc, _, _ in outs)
    _check_both_appended(root, files, outs)


def test_two_appends_at_once_with_waiting_both_land(files, tmp_path):
    root = str(tmp_path / "coll")
    _collection(root, files)
    outs = _two_appends(root, files, env={"DASK_CMAPDASK__LOCK__WAIT_SECONDS": "240"})
    assert [rc for rc, _, _ in outs] == [0, 0]
    _check_both_appended(root, files, outs)


def test_held_lock_refuses_append_and_rebuild(files, tmp_path):
    root = str(tmp_path / "coll")
    _collection(root, files)
    with collection_lock(root, command="test"):
        for argv in (("append", root, files["a"][0]), ("rebuild", root, "--k", "3")):
            rc, _, err = _run(*argv)
            assert rc == 2, err
            assert len(err.strip().splitlines()) == 1
            assert "another writer holds the collection lock (test by pid" in err
        with pytest.raises(LockedError):  # also within one process
            with collection_lock(root):
                pass
    assert not os.path.exists(os.path.join(root, "LOCK"))
    assert [m["version"] for m in list_versions(root)] == ["v000001"]


def _plant_lock(root, owner, age=0.0):
    path = os.path.join(root, "LOCK")
    with open(path, "w") as f:
        json.dump({"owner": owner, "host": owner.split(".")[0], "pid": 1, "command": "append"}, f)
    t = time.time() - age
    os.utime(path, (t, t))


def test_stale_locks_are_taken_over_after_the_rule(files, tmp_path):
    root = str(tmp_path / "coll")
    _collection(root, files)
    # a dead process on this host (this pid with another start time): taken over at once
    _plant_lock(root, f"{_HOST}.{os.getpid()}.1.ab")
    rc, out, err = _run("append", root, files["a"][0])
    assert rc == 0 and out.split() == ["v000002"], err
    # another host, refreshed just now: alive as far as anyone can tell
    _plant_lock(root, "elsewhere-node.4242.1.ab")
    env = {"DASK_CMAPDASK__LOCK__STALE_SECONDS": "30"}
    rc, _, err = _run("append", root, files["b"][0], env=env)
    assert rc == 2 and "elsewhere-node" in err, err
    # the same lock not refreshed for longer than stale_seconds: taken over
    _plant_lock(root, "elsewhere-node.4242.1.ab", age=120)
    rc, out, err = _run("append", root, files["b"][0], env=env)
    assert rc == 0 and out.split() == ["v000003"], err
    assert not os.path.exists(os.path.join(root, "LOCK"))


def test_heartbeat_keeps_a_long_holder_fresh(tmp_path):
    root = str(tmp_path / "coll")
    with collection_lock(root, stale_seconds=1):
        path = os.path.join(root, "LOCK")
        first = os.stat(path).st_mtime_ns
        deadline = time.monotonic() + 30
        while os.stat(path).st_mtime_ns == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.stat(path).st_mtime_ns > first  # refreshed every stale_seconds / 5
    assert not os.path.exists(path)


# ------------------------------------------------------------------------------ S3


def test_s3_lock_is_exclusive_and_stale_rule(s3_server):
    root = f"s3://cmapdask-test/lock-{uuid.uuid4().hex[:8]}/coll"
    fs, path = url_to_fs(f"{root}/LOCK", s3_server)
    with collection_lock(root, storage_options=s3_server, command="first"):
        assert json.loads(fs.cat(path))["command"] == "first"
        with pytest.raises(LockedError, match="first by pid"):
            with collection_lock(root, storage_options=s3_server):
                pass
    assert not fs.exists(path)
    # another host's lock, not refreshed for more than stale_seconds: taken over
    fs.pipe_file(path, json.dumps({"owner": "elsewhere-node.7.1.ab"}).encode())
    with pytest.raises(LockedError):
        with collection_lock(root, storage_options=s3_server, stale_seconds=60):
            pass
    time.sleep(2.5)  # S3 modification times are whole seconds
    with collection_lock(root, storage_options=s3_server, stale_seconds=1, command="new"):
        fs.invalidate_cache()
        assert json.loads(fs.cat(path))["command"] == "new"


def test_two_appends_at_once_on_s3(files, s3_server):
    root = f"s3://cmapdask-test/lock-{uuid.uuid4().hex[:8]}/coll"
    _collection(root, files, so=s3_server)
    outs = _two_appends(root, files, so=s3_server)
    assert any(rc == 0 for rc, _, _ in outs)
    _check_both_appended(root, files, outs, so=s3_server)
