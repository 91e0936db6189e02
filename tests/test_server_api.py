"""``cmapdask serve`` against a real uvicorn server on loopback: results equal
``cmapdask query``'s bit for bit, errors are one-line 4xx, jobs survive a restart."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests._server_helpers import Server, planted_query, shared_store, wait_job  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def server(data, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("jobs") / "jobs"
    srv = Server(data["store"], jobs, "--pcl", data["pcl"])
    srv.jobs_dir = jobs
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def two_queries(data):
    up0, dn0 = planted_query(data["design"], moa=0)
    up1, dn1 = planted_query(data["design"], moa=1, n=30)
    return {"planted0": (up0, dn0), "planted1": (up1, dn1)}


@pytest.fixture(scope="module")
def done_job(client, two_queries):
    body = {
        "queries": [{"name": k, "up": u, "down": d} for k, (u, d) in two_queries.items()],
        "space": "landmark",
    }
    r = client.post("/api/v1/queries", json=body)
    assert r.status_code == 202, r.text
    status = wait_job(client, r.json()["id"])
    assert status["status"] == "done", status
    return status


def _gmt(path: Path, sets: dict) -> str:
    path.write_text("".join("\t".join([k, "na", *v]) + "\n" for k, v in sets.items()))
    return str(path)


def _cluster_option() -> str:
    text = subprocess.run(
        [sys.executable, "-m", "cmapdask", "query", "--help"], capture_output=True, text=True
    ).stdout
    return "--scheduler" if "--scheduler" in text else "--cluster"


def _gctx(path) -> tuple[np.ndarray, list, list]:
    with h5py.File(path, "r") as h:
        return (
            h["/0/DATA/0/matrix"][()],
            list(h["/0/META/ROW/id"][()]),
            list(h["/0/META/COL/id"][()]),
        )


def _all_rows(client, job_id, **params) -> list[dict]:
    rows, offset = [], 0
    while True:
        r = client.get(
            f"/api/v1/queries/{job_id}/results", params={**params, "limit": 1000, "offset": offset}
        )
        assert r.status_code == 200, r.text
        page = r.json()
        rows += page["items"]
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return rows


def test_results_equal_cli_bit_for_bit(data, client, done_job, two_queries, tmp_path):
    up = _gmt(tmp_path / "up.gmt", {k: u for k, (u, _) in two_queries.items()})
    dn = _gmt(tmp_path / "dn.gmt", {k: d for k, (_, d) in two_queries.items()})
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "cmapdask", "query", data["store"], "--space", "landmark"]
        + ["--up", up, "--down", dn, "--pcl", data["pcl"], "--out", str(out)]
        + [_cluster_option(), "none", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    job = done_job["id"]

    # the CLUE folder as .tar.gz: the same files, the same matrices and tables
    r = client.get(f"/api/v1/queries/{job}/result.tar.gz")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        tar.extractall(tmp_path / "srv", filter="data")
    (folder,) = list((tmp_path / "srv").iterdir())
    cli_files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    srv_files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert srv_files == cli_files
    # byte for byte, two processes apart: every file but the marker .cmapdask, which
    # holds the time the folder was published (tests/test_server_jobs.py says why)
    for rel in cli_files:
        if rel != ".cmapdask":
            assert (out / rel).read_bytes() == (folder / rel).read_bytes(), rel
    n_gctx = 0
    for rel in cli_files:
        if rel.endswith(".gctx"):
            a, b = _gctx(out / rel), _gctx(folder / rel)
            assert a[1] == b[1] and a[2] == b[2], rel
            assert a[0].dtype == b[0].dtype and np.array_equal(a[0], b[0], equal_nan=True), rel
            n_gctx += 1
        elif rel.endswith(".parquet"):
            # values bit for bit; the order of metadata columns follows the store's
            # coordinate order, which is not fixed between processes
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / rel),
                pd.read_parquet(folder / rel),
                check_exact=True,
                check_like=True,
            )
    assert n_gctx >= 10

    # one matrix as GCTx download
    name = "gutc/ps_pert_summary"
    assert name in done_job["matrices"]
    r = client.get(f"/api/v1/queries/{job}/gctx", params={"matrix": name})
    assert r.status_code == 200
    (tmp_path / "m.gctx").write_bytes(r.content)
    a, b = _gctx(tmp_path / "m.gctx"), _gctx(out / "matrices" / "gutc" / "ps_pert_summary.gctx")
    assert np.array_equal(a[0], b[0], equal_nan=True) and a[1] == b[1] and a[2] == b[2]

    # JSON: every signature's τ, NCS and WTCS equal the CLI's ranked table, in its order
    for i, q in enumerate(two_queries):
        (ranked,) = list(out.rglob(f"*{q}*/*.parquet")) or [None]
        assert ranked is not None, cli_files
        ref = pd.read_parquet(ranked)
        rows = _all_rows(client, job, query=i, level="sig")
        assert [x["sig_id"] for x in rows] == ref["sig_id"].tolist()
        for col in ("tau", "ncs", "wtcs"):
            got = np.array([np.nan if x[col] is None else x[col] for x in rows])
            assert np.array_equal(got, ref[col].to_numpy(np.float64), equal_nan=True), col

    # pert summary τ in JSON equals the GCTx the CLI wrote
    ps, rid, cid = _gctx(out / "matrices" / "gutc" / "ps_pert_summary.gctx")
    rid = [x.decode().strip() for x in rid]
    cid = [x.decode().strip() for x in cid]
    for i, q in enumerate(two_queries):
        rows = _all_rows(client, job, query=i, level="pert_summary")
        tau = {x["id"]: x["tau"] for x in rows}
        ref = ps[cid.index(q)]  # HDF5 holds columns x rows
        want = {p: None if np.isnan(v) else float(v) for p, v in zip(rid, ref, strict=True)}
        assert tau == want


def test_planted_moa_on_top_and_heatmap(client, done_job, data):
    job = done_job["id"]
    top = client.get(f"/api/v1/queries/{job}/results", params={"level": "pert_summary"}).json()
    taus = [0.0 if x["tau"] is None else x["tau"] for x in top["items"]]  # NaN ranks as 0
    assert taus == sorted(taus, reverse=True)
    assert top["items"][0]["moa"] == "SYN000 inhibitor"
    hm = client.get(f"/api/v1/queries/{job}/heatmap", params={"n": 5}).json()
    assert hm["perts"] == [x["id"] for x in top["items"][:5]]
    assert len(hm["tau"]) == 5 and all(len(r) == len(hm["cells"]) for r in hm["tau"])
    pc = _all_rows(client, job, level="pert_cell")
    want = {(x["pert_id"], x["cell_id"]): x["tau"] for x in pc}
    for p, row in zip(hm["perts"], hm["tau"], strict=True):
        for c, v in zip(hm["cells"], row, strict=True):
            assert v == want.get((p, c)), (p, c)
    # sorting, filtering, TSV download
    asc = client.get(
        f"/api/v1/queries/{job}/results",
        params={"level": "pert_cell", "sort": "ncs", "descending": "false", "limit": 1000},
    ).json()["items"]
    ncs = [x["ncs"] for x in asc]
    assert ncs == sorted(ncs)
    cell = asc[0]["cell_id"]
    only = _all_rows(client, job, level="pert_cell", cell=cell)
    assert only and {x["cell_id"] for x in only} == {cell}
    tsv = client.get(f"/api/v1/queries/{job}/results.tsv", params={"level": "pert_summary"})
    assert tsv.status_code == 200
    df = pd.read_csv(io.StringIO(tsv.text), sep="\t")
    assert df["id"].tolist() == [x["id"] for x in _all_rows(client, job, level="pert_summary")]


def test_upload_gmt_same_as_json(client, done_job, two_queries):
    both = {}
    for k, (u, d) in two_queries.items():
        both[f"{k}_UP"], both[f"{k}_DN"] = u, d
    text = "".join("\t".join([k, "na", *v]) + "\n" for k, v in both.items())
    r = client.post(
        "/api/v1/queries/files",
        files={"up": ("x.gmt", text.encode())},
        data={"space": "landmark"},
    )
    assert r.status_code == 202, r.text
    status = wait_job(client, r.json()["id"])
    assert status["status"] == "done" and status["queries"] == list(two_queries)
    for i in range(2):
        a = _all_rows(client, status["id"], query=i, level="sig")
        b = _all_rows(client, done_job["id"], query=i, level="sig")
        assert a == b


@pytest.mark.parametrize(
    ("method", "url", "kw", "code", "words"),
    [
        ("post", "/api/v1/queries", {"json": {"queries": []}}, 422, "at least 1"),
        ("post", "/api/v1/queries", {"json": {"queries": [{"up": []}]}}, 400, "empty"),
        ("post", "/api/v1/queries", {"json": {"queries": [{"up": ["7849"]}], "x": 1}}, 422, "x"),
        (
            "post",
            "/api/v1/queries",
            {"json": {"queries": [{"up": ["NOPE1", "NOPE2"]}]}},
            400,
            "empty",
        ),
        (
            "post",
            "/api/v1/queries",
            {"json": {"queries": [{"name": "../x", "up": ["1"]}]}},
            422,
            "name",
        ),
        (
            "post",
            "/api/v1/queries",
            {"json": {"queries": [{"name": "a_UP", "up": ["1"]}]}},
            400,
            "_UP",
        ),
        ("post", "/api/v1/queries", {"json": {"queries": [{}]}}, 400, "up list"),
        (
            "post",
            "/api/v1/queries",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "json",
        ),
        (
            "post",
            "/api/v1/queries",
            {"json": {"queries": [{"up": ["1"]}], "space": "bing"}},
            400,
            "bing",
        ),
        ("post", "/api/v1/queries/files", {"files": {"up": ("a.gmt", b"\xff\xfe")}}, 400, "UTF-8"),
        (
            "post",
            "/api/v1/queries/files",
            {"files": {"up": ("a.grp", b"# nothing\n")}},
            400,
            "no genes",
        ),
        ("get", "/api/v1/queries/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", {}, 404, "no job"),
        ("get", "/api/v1/queries/..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
        ("get", "/api/v1/sigs/NOPE", {}, 404, "no signature"),
        ("get", "/api/v1/compounds/NOPE", {}, 404, "no compound"),
        ("get", "/api/v1/sigs?limit=0", {}, 422, "limit"),
        ("get", "/api/v1/search", {}, 422, "q"),
    ],
)
def test_bad_requests_are_one_line_4xx(client, method, url, kw, code, words):
    r = getattr(client, method)(url, **kw)
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    assert words.lower() in detail.lower()


def test_overlap_refused_and_sizes_warned(client, two_queries):
    up, dn = two_queries["planted0"]
    r = client.post("/api/v1/queries", json={"queries": [{"up": up, "down": dn[:-1] + [up[0]]}]})
    assert r.status_code == 400 and "both the up and the down set" in r.json()["detail"]
    small = {"queries": [{"up": up[:5], "down": dn}]}
    r = client.post("/api/v1/queries", json=small)
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == (
        "query 'query': 5 up genes in the landmark space; CLUE's queries use 10-150 "
        "(allow_any_size runs it anyway)"
    )
    r = client.post("/api/v1/queries", json={**small, "allow_any_size": True})
    assert r.status_code == 202
    assert any("5 up genes in the landmark space" in w for w in r.json()["warnings"])
    r = client.post("/api/v1/queries", json={"queries": [{"up": up}, {"name": "b", "down": dn}]})
    assert r.status_code == 400 and "same lists" in r.json()["detail"]
    chk = client.post(
        "/api/v1/genes/check", json={"up": [*up[:3], "NOTAGENE"], "down": [up[0]]}
    ).json()
    assert chk["up"]["unknown"] == ["NOTAGENE"] and chk["overlap"] == [up[0]]
    assert chk["ok"] is False and any("unknown" in x for x in chk["messages"])


def test_browse(client, data):
    from cmapdask import open_member, open_store

    ds = open_store(data["store"])
    info = client.get("/api/v1/info").json()
    assert info["n_sig"] == ds.sizes["sig"] and info["spaces"] == ["landmark"]
    # pagination: pages concatenate to the whole list
    whole = client.get("/api/v1/sigs", params={"limit": 1000}).json()
    assert whole["total"] == ds.sizes["sig"]
    parts = []
    for off in range(0, whole["total"], 250):
        parts += client.get("/api/v1/sigs", params={"limit": 250, "offset": off}).json()["items"]
    assert parts == whole["items"]
    assert [x["sig_id"] for x in parts] == list(ds["sig"].values)
    # filters
    cell = str(ds["cell_iname"].values[0])
    sub = client.get("/api/v1/sigs", params={"cell": cell, "limit": 1000}).json()
    assert sub["total"] == int((ds["cell_iname"].values == cell).sum())
    comp = client.get("/api/v1/compounds", params={"moa": "SYN000 inhibitor", "limit": 1000}).json()
    perts = set(ds["pert_id"].values[ds["moa"].values == "SYN000 inhibitor"])
    assert {x["pert_id"] for x in comp["items"]} == perts
    one = sorted(perts)[0]
    c = client.get(f"/api/v1/compounds/{one}").json()
    assert c["moas"] == ["SYN000 inhibitor"] and c["targets"]
    assert {s["sig_id"] for s in c["signatures"]} == set(ds["sig"].values[ds["pert_id"] == one])
    assert c["connections"] and all(x["pert_id"] != one for x in c["connections"])
    genes = client.get("/api/v1/genes", params={"q": str(ds["gene_symbol"].values[0])}).json()
    assert str(ds["gene"].values[0]) in {g["gene_id"] for g in genes["items"]}
    cells = client.get("/api/v1/cells", params={"limit": 1000}).json()
    assert {x["cell"] for x in cells["items"]} == set(ds["cell_iname"].values)
    moas = client.get("/api/v1/moas").json()
    assert "SYN000 inhibitor" in {x["moa"] for x in moas["items"]}
    found = client.get("/api/v1/search", params={"q": "inhibitor"}).json()
    assert found["compounds"]["total"] >= len(perts) and found["moas"]["total"] >= 1
    # neighbours equal the similarity member, most similar first
    nb_member = open_member(data["store"], "similarity/pearson_landmark")
    sig = str(ds["sig"].values[7])
    nb = client.get(f"/api/v1/sigs/{sig}/neighbours", params={"k": 5}).json()
    assert [x["sig_id"] for x in nb["top"]] == [str(v) for v in nb_member["top_id"].values[7][:5]]
    assert [x["score"] for x in nb["bottom"]] == [
        float(v) for v in nb_member["bottom_score"].values[7][:5]
    ]


def test_pages_and_assets_are_local(client, done_job):
    import plotly

    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    r = client.get("/static/vendor/plotly.min.js")
    assert r.status_code == 200 and r.content == js.read_bytes()
    for url in ("/", f"/jobs/{done_job['id']}", "/search?q=inhib", "/compounds/SYN-K00000000"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert '<script src="http' not in r.text and 'stylesheet" href="http' not in r.text
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/queries", "/api/v1/queries/{job_id}", "/api/v1/sigs/{sig_id}/neighbours"):
        assert path in schema["paths"]


def test_results_survive_restart_and_token(data, server, client, done_job, two_queries):
    before = _all_rows(client, done_job["id"], level="pert_summary")
    server.stop()
    env = {"CMAPDASK_TOKEN": "s3cret"}  # the token from the environment
    again = Server(data["store"], server.jobs_dir, "--pcl", data["pcl"], env=env)
    try:
        with httpx.Client(base_url=again.url, timeout=60) as c:
            assert c.get(f"/api/v1/queries/{done_job['id']}").status_code == 401
            c.headers["Authorization"] = "Bearer s3cret"
            s = c.get(f"/api/v1/queries/{done_job['id']}").json()
            assert s["status"] == "done"
            assert _all_rows(c, done_job["id"], level="pert_summary") == before
            up, dn = two_queries["planted1"]
            body = {"queries": [{"up": up, "down": dn}]}
            r = c.post("/api/v1/queries", json=body, headers={"Authorization": ""})
            assert r.status_code == 401 and "token" in r.json()["detail"]
            r = c.post("/api/v1/queries", json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = c.post("/api/v1/queries", json=body)
            assert r.status_code == 202, r.text
            assert wait_job(c, r.json()["id"])["status"] == "done"
            assert "access-control-allow-origin" not in {
                k.lower() for k in c.get("/api/v1/info", headers={"Origin": "http://x"}).headers
            }
    finally:
        again.stop()


def test_job_queue_bound_cancel_and_requeue(tmp_path):
    from cmapdask.server.jobs import JobManager, QueueFull

    req = {"queries": [{"name": "q", "up": ["1"], "down": None}]}
    mgr = JobManager(tmp_path / "jobs", "unused", max_queue=2)  # workers not started
    a = mgr.submit(req, queries=["q"], genes=[], warnings=[])
    b = mgr.submit(req, queries=["q"], genes=[], warnings=[])
    with pytest.raises(QueueFull, match="queue is full"):
        mgr.submit(req, queries=["q"], genes=[], warnings=[])
    assert len(a.id) >= 32 and a.id != b.id and a.dir.name == a.id
    mgr.cancel(b)
    assert b.status == "cancelled" and mgr.waiting() == 1
    mgr.submit(req, queries=["q"], genes=[], warnings=[])  # room again
    assert mgr.get("../" + a.id) is None and mgr.get(a.id) is a
    # a new manager over the same folder knows every job and queues the unfinished again
    (tmp_path / "jobs" / "not-a-job").mkdir()
    again = JobManager(tmp_path / "jobs", "unused", max_queue=2)
    assert again.get(a.id).status == "queued" and again.get(b.id).status == "cancelled"
    assert again.get("not-a-job") is None and again.waiting() == 2


def test_serve_refuses_a_missing_store(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cmapdask", "serve", str(tmp_path / "nope.zarr")]
        + ["--scheduler", "none", "--jobs-dir", str(tmp_path / "jobs"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("cmapdask: error:") and "nope.zarr" in line
