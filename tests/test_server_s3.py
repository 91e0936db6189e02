"""``cmapdask serve`` on an ``s3://`` store (moto on loopback) with jobs on a remote Dask
scheduler: the API's results equal the functional API's on a local copy of the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests._server_helpers import Server, planted_query, shared_store, wait_job  # noqa: E402

pytestmark = [pytest.mark.s3, pytest.mark.cluster, pytest.mark.slow]


def test_s3_store_and_remote_scheduler(s3_server, real_cluster, tmp_path_factory, tmp_path):
    import s3fs

    from cmapdask import query, read_gmt, summarize
    from cmapdask.server.jobs import summary_tables

    data = shared_store(tmp_path_factory)
    url = "s3://cmapdask-test/stores/served.zarr"
    fs = s3fs.S3FileSystem(**s3_server)
    fs.put(data["store"] + "/", url, recursive=True)
    srv = Server(
        url,
        tmp_path / "jobs",
        "--pcl",
        data["pcl"],
        "--storage-options",
        json.dumps(s3_server),
        "--scheduler",
        real_cluster.address,
    )
    try:
        up, dn = planted_query(data["design"])
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            info = c.get("/api/v1/info").json()
            assert info["store"] == url and info["similarity"]
            r = c.post("/api/v1/queries", json={"queries": [{"name": "q", "up": up, "down": dn}]})
            assert r.status_code == 202, r.text
            status = wait_job(c, r.json()["id"], timeout=300)
            assert status["status"] == "done", (status, srv.text())
            rows = c.get(
                f"/api/v1/queries/{status['id']}/results",
                params={"level": "pert_summary", "limit": 1000},
            ).json()["items"]
            sig = c.get("/api/v1/sigs", params={"limit": 1}).json()["items"][0]["sig_id"]
            nb = c.get(f"/api/v1/sigs/{sig}/neighbours", params={"k": 3}).json()
            assert len(nb["top"]) == 3
        assert real_cluster.address in srv.text(full=True)  # it attached to the remote scheduler
    finally:
        srv.stop()
    res = query(data["store"], {"q": up}, {"q": dn}, space="landmark")
    want = summary_tables(summarize(res, pcls=read_gmt(data["pcl"])).compute(), "q")
    want = want["pert_summary"]
    assert [x["id"] for x in rows] == want["id"].tolist()
    got = np.array([np.nan if x["tau"] is None else x["tau"] for x in rows])
    assert np.array_equal(got, want["tau"].to_numpy(), equal_nan=True)
    assert np.array_equal([x["ncs"] for x in rows], want["ncs"].to_numpy())
