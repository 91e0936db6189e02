"""CLUE's API on ``cmapdask serve``: a CLUE client's request sequence against a real
uvicorn process, LoopBack filters against pandas over the store's tables, and every
unknown field, operator or parameter refused by name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests._server_helpers import Server, planted_query, shared_store

httpx = pytest.importorskip("httpx")
KEY = "clue-user-key"
LEVELS = [
    f"{s}_{k}_{a}" for s in ("ns", "ps") for k in ("pert", "pcl") for a in ("cell", "summary")
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def server(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("clue_server")
    srv = Server(data["store"], root / "jobs", "--token", KEY, "--pcl", data["pcl"])
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    # the token guards every route: CLUE's clients send their user_key with each request
    with httpx.Client(base_url=server.url, timeout=60, headers={"user_key": KEY}) as c:
        yield c


def test_token_on_the_command_line_is_deprecated(server, client):
    assert "--token is deprecated: it shows in `ps`" in server.text(full=True)
    assert client.get("/api/perts", headers={"user_key": ""}).status_code == 401


@pytest.fixture(scope="module")
def siginfo(data):
    """The store's siginfo with CLUE's names, by plain pandas (the oracle)."""
    from cmapdask.data.tables import read_tables, to_frame

    df = to_frame(read_tables(data["store"])["siginfo"])
    return df.rename(columns={"cmap_name": "pert_iname", "cell_iname": "cell_id"})


def _gmt(path: Path, name: str, genes: list[str]) -> Path:
    path.write_text(f"{name}\tplanted\t" + "\t".join(genes) + "\n")
    return path


def _read(path) -> pd.DataFrame:
    from cmapdask.io.gctx import read_gctx

    ds = read_gctx(str(path))
    # CLUE's matrices: rows (our "gene") the perturbagen x cell rows, columns the queries
    return pd.DataFrame(
        ds["expr"].values.T, index=ds["gene"].values.astype(str), columns=ds["sig"].values
    )


# ----------------------------------------------------------------------------- jobs


def test_clue_client_sequence_equals_cmapdask_query(data, server, client, tmp_path):
    up, dn = planted_query(data["design"], moa=0)
    up_gmt = _gmt(tmp_path / "up.gmt", "planted", up)
    dn_gmt = _gmt(tmp_path / "dn.gmt", "planted", dn)
    form = {
        "name": "my_analysis",
        "tool_id": "sig_gutc_tool",
        "data_type": "L1000",
        "dataset": "Touchstone",
        "ignoreWarnings": "true",
    }

    def files():
        return {
            "uptag-cmapfile": ("up.gmt", up_gmt.read_bytes(), "text/plain"),
            "dntag-cmapfile": ("dn.gmt", dn_gmt.read_bytes(), "text/plain"),
        }

    # the server's token is CLUE's user_key
    nokey = {"user_key": ""}
    assert client.post("/api/jobs", data=form, files=files(), headers=nokey).status_code == 401
    bad = client.post("/api/jobs", data=form, files=files(), headers={"user_key": "nope"})
    assert bad.status_code == 401 and "user_key" in bad.json()["detail"]
    r = client.post("/api/jobs", data=form, files=files(), headers={"user_key": KEY})
    assert r.status_code == 200, r.text
    job_id = r.json()["result"]["job_id"]
    # the same key as a query parameter (an identical request answers with the same job)
    again = client.post("/api/jobs", data=form, files=files(), params={"user_key": KEY})
    assert again.status_code == 200, again.text

    deadline = time.monotonic() + 300
    while True:
        s = client.get(f"/api/jobs/findByJobId/{job_id}", headers={"user_key": KEY}).json()
        if s["status"] == "completed" and s["download_status"] == "completed":
            break
        assert s["status"] in ("pending", "running", "completed"), s
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    assert s["errorMessage"] == "" and s["params"]["name"] == "my_analysis"
    assert s["params"]["tool_id"] == "sig_gutc_tool" and s["job_id"] == job_id
    assert s["download_url"].startswith(f"//127.0.0.1:{server.port}/")

    tgz = httpx.get("http:" + s["download_url"], timeout=60, headers={"user_key": KEY})
    assert tgz.status_code == 200
    out = tmp_path / "untar"
    with tarfile.open(fileobj=io.BytesIO(tgz.content), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    first = sorted(p for p in out.iterdir() if p.is_dir())[0]
    gutc = first / "matrices" / "gutc"
    for level in LEVELS:
        assert (gutc / f"{level}.gctx").is_file(), level
    assert (first / "arfs").is_dir()
    served = _read(gutc / "ps_pert_cell.gctx")

    # the same gene sets through `cmapdask query`
    ref = tmp_path / "cli"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "cmapdask", "query", data["store"], "--up", str(up_gmt)]
    cmd += ["--down", str(dn_gmt), "--out", str(ref), "--space", "landmark", "--tau", "exact"]
    cmd += ["--reference", "touchstone", "--pcl", data["pcl"], "--scheduler", "none", "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    want = _read(ref / "matrices" / "gutc" / "ps_pert_cell.gctx")
    assert served.shape == want.shape and served.shape[0] > 5
    pd.testing.assert_index_equal(served.index, want.index)
    np.testing.assert_array_equal(served.to_numpy(), want.to_numpy())
    assert np.isfinite(served.to_numpy()).sum() > 5


def test_jobs_refuse_what_clue_would_not_run(data, client, tmp_path):
    up, dn = planted_query(data["design"], moa=1)
    files = {
        "uptag-cmapfile": ("up.gmt", f"q\td\t{chr(9).join(up)}\n".encode(), "text/plain"),
        "dntag-cmapfile": ("dn.gmt", f"q\td\t{chr(9).join(dn)}\n".encode(), "text/plain"),
    }
    h = {"user_key": KEY}
    for form, message in [
        ({"tool_id": "sig_queryl1k_tool"}, "tool_id"),
        ({"data_type": "P100"}, "data_type"),
        ({"dataset": "Nope"}, "dataset"),
        ({"ts_version": "1.0"}, "unknown form field 'ts_version'"),
    ]:
        r = client.post("/api/jobs", data=form, files=files, headers=h)
        assert r.status_code == 400 and message in r.json()["detail"], r.text
    r = client.post("/api/jobs", data={}, files=files, headers=h, params={"priority": "1"})
    assert r.status_code == 400 and "'priority'" in r.json()["detail"]
    assert client.get("/api/jobs/findByJobId/" + "x" * 30).status_code == 404


# ------------------------------------------------------------------------ metadata


def _get(client, model, flt=None, **params):
    if flt is not None:
        params["filter"] = json.dumps(flt)
    r = client.get(f"/api/{model}", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list)
    return body


def _ids(rows, key="sig_id"):
    return [row[key] for row in rows]


ALL = 100_000


@pytest.mark.parametrize(
    "where,expect",
    [
        ({"pert_type": "trt_cp"}, lambda s: s.pert_type == "trt_cp"),
        ({"pert_type": {"neq": "trt_cp"}}, lambda s: s.pert_type != "trt_cp"),
        (
            {"pert_id": {"inq": ["DMSO", "SYN-K00000000"]}},
            lambda s: s.pert_id.isin(["DMSO", "SYN-K00000000"]),
        ),
        ({"pert_type": {"nin": ["trt_cp"]}}, lambda s: ~s.pert_type.isin(["trt_cp"])),
        ({"tas": {"gt": 0.2}}, lambda s: s.tas > 0.2),
        ({"tas": {"gte": 0.2}}, lambda s: s.tas >= 0.2),
        ({"tas": {"lt": 0.05}}, lambda s: s.tas < 0.05),
        ({"tas": {"lte": 0.05}}, lambda s: s.tas <= 0.05),
        ({"pert_iname": {"like": "^synth-0000"}}, lambda s: s.pert_iname.str.match("synth-0000")),
        ({"pert_iname": {"ilike": "^SYNTH-0001"}}, lambda s: s.pert_iname.str.match("synth-0001")),
        ({"cmap_name": "DMSO"}, lambda s: s.pert_iname == "DMSO"),  # the 2020 name, an alias
        (
            {"and": [{"pert_type": "trt_cp"}, {"or": [{"tas": {"gt": 0.3}}, {"nsample": 2}]}]},
            lambda s: (s.pert_type == "trt_cp") & ((s.tas > 0.3) | (s.nsample == 2)),
        ),
    ],
)
def test_where_against_pandas(client, siginfo, where, expect):
    want = siginfo.loc[expect(siginfo).fillna(False).astype(bool), "sig_id"].tolist()
    assert 0 < len(want) < len(siginfo)
    got = _get(client, "sigs", {"where": where, "limit": ALL})
    assert _ids(got) == want
    r = client.get("/api/sigs/count", params={"where": json.dumps(where)})
    assert r.json() == {"count": len(want)}


def test_fields_order_skip_limit(client, siginfo):
    flt = {"fields": ["sig_id", "tas"], "order": ["tas DESC", "sig_id ASC"], "skip": 7}
    got = _get(client, "sigs", {**flt, "limit": 12})
    want = siginfo.sort_values(["tas", "sig_id"], ascending=[False, True], kind="stable")
    want = want[["sig_id", "tas"]].iloc[7:19]
    assert [list(r) for r in got] == [["sig_id", "tas"]] * 12
    assert got == want.to_dict(orient="records")
    # offset is skip's other name; the object form of fields
    assert _get(client, "sigs", {**flt, "offset": 7, "limit": 12}) == got
    picked = _get(client, "sigs", {"fields": {"sig_id": True, "pert_id": True}, "limit": 2})
    assert [sorted(r) for r in picked] == [["pert_id", "sig_id"]] * 2
    dropped = _get(client, "sigs", {"fields": {"tas": False}, "limit": 2})
    assert "tas" not in dropped[0] and "sig_id" in dropped[0]
    assert (
        _ids(_get(client, "sigs", {"order": "sig_id DESC", "limit": 3}))
        == sorted(siginfo.sig_id, reverse=True)[:3]
    )
    assert client.get("/api/sigs/count").json() == {"count": len(siginfo)}


def test_every_model_answers_with_clue_names(data, client, siginfo):
    from cmapdask.io.gmt import read_gene_sets

    perts = _get(client, "perts", {"where": {"pert_type": "trt_cp"}, "limit": 3})
    assert {"pert_id", "pert_iname", "pert_type", "moa", "target"} <= set(perts[0])
    assert isinstance(perts[0]["moa"], list)
    moa = next(m for p in perts for m in p["moa"])
    hits = _get(client, "perts", {"where": {"moa": moa}, "limit": ALL})
    assert hits and all(moa in p["moa"] for p in hits)
    cells = _get(client, "cells", {"limit": ALL})
    assert sorted(c["cell_id"] for c in cells) == sorted(siginfo.cell_id.unique())
    genes = _get(client, "genes", {"where": {"feature_space": "landmark"}, "limit": 2})
    assert {"gene_id", "gene_symbol"} <= set(genes[0])
    pcls = read_gene_sets(data["pcl"])
    got = _get(client, "pcls", {"limit": ALL})
    assert {p["pcl_id"] for p in got} == set(pcls)
    assert client.get("/api/pcls/count").json() == {"count": len(pcls)}
    # a Level 5 store has no profiles: refused, never an empty answer
    r = client.get("/api/profiles")
    assert r.status_code == 400 and "Level 3/4" in r.json()["detail"]


@pytest.mark.parametrize(
    "path,params,message",
    [
        ("/api/sigs", {"filter": '{"where": {"pert_idd": "x"}}'}, "unknown field 'pert_idd'"),
        ("/api/sigs", {"filter": '{"where": {"tas": {"regexp": 1}}}'}, "unknown operator"),
        ("/api/sigs", {"filter": '{"include": "perts"}'}, "unknown key 'include'"),
        ("/api/sigs", {"filter": '{"fields": ["nope"]}'}, "unknown field 'nope'"),
        ("/api/sigs", {"filter": '{"order": "nope DESC"}'}, "unknown field 'nope'"),
        ("/api/sigs", {"filter": '{"where": {"tas": {"gt": "high"}}}'}, "a number is needed"),
        ("/api/sigs", {"filter": "{nope"}, "not JSON"),
        ("/api/sigs", {"where": '{"pert_id": "x"}'}, "unknown query parameter 'where'"),
        ("/api/sigs", {"filter[where][pert_id]": "x"}, "unknown query parameter"),
        ("/api/sigs/count", {"where": '{"nope": 1}'}, "unknown field 'nope'"),
        ("/api/sigs/count", {"filter": "{}"}, "unknown query parameter 'filter'"),
        ("/api/perts", {"filter": '{"where": {"moa": {"near": 1}}}'}, "unknown operator"),
        # the native API refuses what it does not take, too
        ("/api/v1/sigs", {"filter": '{"where": {}}'}, "unknown query parameter 'filter'"),
        ("/api/v1/compounds", {"pert_idd": "x"}, "unknown query parameter 'pert_idd'"),
        ("/api/v1/info", {"verbose": "1"}, "unknown query parameter 'verbose'"),
    ],
)
def test_unknown_is_a_400_naming_it(client, path, params, message):
    r = client.get(path, params=params)
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]


def test_native_api_kept(client):
    info = client.get("/api/v1/info", params={"user_key": KEY}).json()
    assert info["token_required"] is True and info["n_pcls"] > 0
    page = client.get("/api/v1/sigs", params={"limit": 2}).json()
    assert set(page) == {"total", "offset", "limit", "items"}


def test_profiles_of_a_level4_store(tmp_path):
    """``/api/profiles`` answers a Level 4 store's rows (CLUE's ``distil_id``), filtered
    and counted like every other model, equal to the store's own column metadata."""
    from cmapdask.cli import main
    from cmapdask.io.gctx import read_gctx
    from cmapdask.io.store import write_store

    fixtures = Path(__file__).parent / "data" / "cmapm"
    l3, l4 = tmp_path / "l3.zarr", tmp_path / "l4.zarr"
    ds = read_gctx(str(fixtures / "gctv13_01.gctx"))
    write_store(ds, str(l3))
    assert main(["level4", str(l3), str(l4), "--scheduler", "none", "--quiet"]) == 0
    plates = pd.Series(ds["det_plate"].values.astype(str), index=ds["sig"].values.astype(str))
    plate = plates.iloc[-1]
    srv = Server(str(l4), tmp_path / "jobs")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            rows = _get(c, "profiles", {"where": {"det_plate": plate}, "limit": ALL})
            assert sorted(r["distil_id"] for r in rows) == sorted(plates.index[plates == plate])
            assert c.get("/api/profiles/count").json() == {"count": len(plates)}
            ids = _get(c, "profiles", {"fields": ["distil_id"], "order": "distil_id DESC"})
            assert [r["distil_id"] for r in ids] == sorted(plates.index, reverse=True)[: len(ids)]
            # Level 4 rows are not CLUE's signatures: the sigs model still answers them
            # by their own id, and an unknown field is refused by name
            r = c.get("/api/profiles", params={"filter": '{"where": {"sig_idd": 1}}'})
            assert r.status_code == 400 and "sig_idd" in r.json()["detail"]
    finally:
        srv.stop()
