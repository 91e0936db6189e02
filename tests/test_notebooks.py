"""What a notebook attached to a Dask cluster meets: ``xr.open_dataset(url,
engine="cmapdask")`` for stores and members, workers whose versions must match the
client's, and the nightly workflow's scaling arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from tests._server_helpers import planted_query, shared_store
from tests.conftest import RealCluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


def test_engine_opens_a_store_as_open_store_does(data):
    from cmapdask import open_store

    store = data["store"]
    want = open_store(store)
    got = xr.open_dataset(store, engine="cmapdask", chunks={})
    xr.testing.assert_identical(got, want)
    assert got["expr"].chunks == want["expr"].chunks  # dask, in the store's chunks
    lazy = xr.open_dataset(store, engine="cmapdask")  # xarray's default: lazy indexing
    xr.testing.assert_identical(lazy.isel(sig=[3, 1]), want.isel(sig=[3, 1]))
    # a local store is recognised without naming the engine
    xr.testing.assert_identical(xr.open_dataset(store, chunks={}), want)


def test_engine_opens_a_member_as_open_member_does(data):
    from cmapdask import open_member

    store, name = data["store"], "similarity/pearson_landmark"
    got = xr.open_dataset(store, engine="cmapdask", member=name)
    xr.testing.assert_identical(got.compute(), open_member(store, name).compute())


@pytest.mark.slow  # a store converted and queried on moto: ~2 min; local engine tests run in CI
@pytest.mark.s3
def test_engine_on_object_storage(data, s3_server, tmp_path):
    import dask

    from cmapdask import open_member, open_store
    from cmapdask.io.store import convert

    opts = s3_server
    url = "s3://cmapdask-test/notebook-engine.zarr"
    src = open_store(data["store"])
    with dask.config.set(scheduler="threads"):
        from cmapdask.io.store import write_store

        write_store(src.isel(sig=slice(0, 120)), url, storage_options=opts)
        from cmapdask import build_index

        build_index(url, space="landmark", storage_options=opts)
    assert convert  # the same layer as convert writes
    got = xr.open_dataset(url, engine="cmapdask", storage_options=opts, chunks={})
    xr.testing.assert_identical(got, open_store(url, storage_options=opts))
    m = xr.open_dataset(url, engine="cmapdask", member="index/landmark", storage_options=opts)
    xr.testing.assert_identical(
        m.compute(), open_member(url, "index/landmark", storage_options=opts).compute()
    )


@pytest.mark.cluster
def test_workers_of_another_release_are_refused_in_one_line(tmp_path, data):
    """A worker whose cmapdask says 9.9.0: the CLI exits 2 naming it, the library raises."""
    patch = tmp_path / "patch_version.py"
    patch.write_text("import cmapdask\ncmapdask.__version__ = '9.9.0'\n")
    up, dn = planted_query(data["design"])
    (tmp_path / "up.gmt").write_text("q\tq\t" + "\t".join(up) + "\n")
    (tmp_path / "dn.gmt").write_text("q\tq\t" + "\t".join(dn) + "\n")
    cluster = RealCluster(tmp_path, n_workers=1, worker_args=("--preload", str(patch)))
    try:
        cmd = [sys.executable, "-m", "cmapdask", "query", data["store"], "--up"]
        cmd += [str(tmp_path / "up.gmt"), "--down", str(tmp_path / "dn.gmt")]
        r = subprocess.run(
            [
                *cmd,
                "--space",
                "landmark",
                "--out",
                str(tmp_path / "out"),
                "--scheduler",
                cluster.address,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip() and "dashboard" not in x]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "cmapdask 9.9.0" in lines[0] and "worker tcp://127.0.0.1:" in lines[0]
        assert not (tmp_path / "out").exists()

        from distributed import Client

        from cmapdask import InputError, open_store
        from cmapdask.environment import check_workers

        with Client(cluster.address, timeout="60s") as client:
            with pytest.raises(InputError, match=r"runs cmapdask 9\.9\.0, this client"):
                check_workers(client)
            with pytest.raises(InputError, match="cmapdask 9.9.0"):
                open_store(data["store"])  # the default client is checked on opening
    finally:
        cluster.close()


@pytest.mark.cluster
def test_matching_workers_pass_and_patch_levels_warn(real_cluster, monkeypatch):
    from distributed import Client

    from cmapdask import environment

    with Client(real_cluster.address, timeout="60s") as client:
        got = environment.check_workers(client)
        assert len(got) == len(real_cluster.workers)
        mine = environment.local_versions()
        bumped = mine["numpy"].rsplit(".", 1)[0] + ".999"
        monkeypatch.setattr(environment, "local_versions", lambda: {**mine, "numpy": bumped})
        with pytest.warns(UserWarning, match="patch level"):
            environment.check_workers(client)


def test_nightly_workflow_scales_to_the_workers_asked_for(monkeypatch):
    """``--workers N`` is N workers on jobqueue clusters, whatever the processes per job."""
    sys.path.insert(0, str(ROOT / "workflows"))
    try:
        import nightly_rebuild
    finally:
        sys.path.remove(str(ROOT / "workflows"))

    calls = {}

    class FakeCluster:
        def __init__(self):
            calls["made"] = True

        def scale(self, n=None, jobs=0, memory=None, cores=None):
            calls["scale"] = {"n": n, "jobs": jobs}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    import dask_jobqueue
    import distributed

    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", FakeCluster)

    class FakeClient:
        dashboard_link = "http://x"

        def __init__(self, cluster):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(distributed, "Client", FakeClient)
    with nightly_rebuild.cluster_client("slurm", 8):
        pass
    assert calls["scale"] == {"n": 8, "jobs": 0}
