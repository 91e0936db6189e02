"""The scored set (``cmapdask query --scored``, ``query(scored=...)``, the server's
``scored`` field): every output equals a query of a store holding only that set; a bad
filter and an empty set are one line (exit 2 / 400)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests._server_helpers import Server, planted_query, shared_store, wait_job

SPACE = "landmark"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


def _subset_store(full: str, keep: np.ndarray, dest: Path) -> str:
    """A store of only the signatures ``keep`` (written from the full store's data, its
    own index; the full store's τ background restricted to them, as CLUE's Touchstone
    background serves any subset of Touchstone)."""
    import dask

    from cmapdask import build_index, open_store
    from cmapdask.io.store import open_member, write_member, write_store

    ds = open_store(full)
    with dask.config.set(scheduler="threads"):
        write_store(ds.isel(sig=np.flatnonzero(keep)), str(dest))
        build_index(str(dest), space=SPACE)
        bg = open_member(full, f"background/{SPACE}")
        mine = np.isin(bg["sig_bg"].values, ds["sig"].values[keep])
        write_member(
            str(dest),
            f"background/{SPACE}",
            bg.isel(sig_bg=np.flatnonzero(mine)),
            family="background",
            provenance={"kind": "tau_background", "space": SPACE, "note": "test subset"},
        )
    return str(dest)


def _filter_and_mask(full: str):
    """A filter that cuts through the NCS groups (high-TAS signatures, the vehicle
    controls for FDR's null, Touchstone for τ), and the same set computed here with
    numpy, apart from the filter language."""
    from cmapdask import open_store

    ds = open_store(full)
    tas = np.asarray(ds["tas"].values, dtype=float)
    cut = float(np.median(tas))
    text = f"tas > {cut} or is_null_sig == 1 or is_touchstone == 1"
    keep = (
        (tas > cut)
        | (np.asarray(ds["is_null_sig"].values) == 1)
        | (np.asarray(ds["is_touchstone"].values) == 1)
    )
    assert 0 < keep.sum() < keep.size
    return text, keep


@pytest.fixture(scope="module")
def subsets(data, tmp_path_factory):
    from cmapdask import open_store

    root = tmp_path_factory.mktemp("scored")
    text, keep = _filter_and_mask(data["store"])
    ds = open_store(data["store"])
    touch = np.asarray(ds["is_touchstone"].values).astype(float) == 1
    assert 0 < touch.sum() < touch.size
    return {
        "filter": (text, _subset_store(data["store"], keep, root / "filter.zarr"), keep),
        "touchstone": ("touchstone", _subset_store(data["store"], touch, root / "ts.zarr"), touch),
    }


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", *args, "--scheduler", "none", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )


def _query_args(data, store: str, out: Path, *extra: str) -> list[str]:
    up, dn = planted_query(data["design"], moa=0)
    return [
        "query",
        store,
        "--space",
        SPACE,
        "--genes-up",
        ",".join(up),
        "--genes-down",
        ",".join(dn),
        "--pcl",
        data["pcl"],
        "--out",
        str(out),
        *extra,
    ]


# the records that name the store and the scored set; every other file must be equal
_RECORDS = {"config.yaml", "provenance.json", ".cmapdask"}


def _same_folders(a: Path, b: Path) -> None:
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert fa == fb
    compared = 0
    for rel in fa:
        if Path(rel).name in _RECORDS:
            continue
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        compared += 1
    assert compared > 20  # matrices, summaries, ranked tables, gene reports


def test_cli_scored_equals_subset_store(data, subsets, tmp_path):
    import h5py

    text, sub, keep = subsets["filter"]
    a, b = tmp_path / "scored", tmp_path / "subset"
    r = _cli(*_query_args(data, data["store"], a, "--scored", text))
    assert r.returncode == 0, r.stderr
    r = _cli(*_query_args(data, sub, b))
    assert r.returncode == 0, r.stderr
    _same_folders(a, b)
    with h5py.File(a / "matrices/gutc/ps_sig.gctx") as h:
        ps = h["/0/DATA/0/matrix"][()]
        assert ps.size == keep.sum() and np.isfinite(ps).any()  # τ from the background
    prov = json.loads((a / "provenance.json").read_text())
    assert prov["n_scored"] == int(keep.sum()) and "tas >" in prov["scored"]
    cfg = (a / "config.yaml").read_text()
    assert "scored:" in cfg and "n_scored: " + str(int(keep.sum())) in cfg


def test_python_api_scored_touchstone(data, subsets):
    import dask

    from cmapdask import open_store, query

    _, sub, keep = subsets["touchstone"]
    up, dn = planted_query(data["design"], moa=1, n=30)
    opts = {"space": SPACE, "reference": "touchstone", "fdr": "none"}
    with dask.config.set(scheduler="sync"):
        got = query(data["store"], up, dn, scored="touchstone", **opts).compute()
        via = open_store(data["store"]).cmap.query(up, dn, scored="touchstone", **opts).compute()
        want = query(sub, up, dn, **opts).compute()
        # scoring everything and then keeping Touchstone normalises NCS otherwise
        whole = query(data["store"], up, dn, **{**opts, "reference": "all"}).compute()
    assert got.attrs["cmapdask"]["scored"] == "touchstone"
    assert got.attrs["cmapdask"]["n_scored"] == int(keep.sum())
    for res in (got, via):
        assert list(res["sig"].values) == list(want["sig"].values)
        for v in want.data_vars:
            np.testing.assert_array_equal(res[v].values, want[v].values, err_msg=v)
        for c in want.coords:  # missing is missing (None or NaN: DEVELOPERS.md)
            a, b = res[c].values, want[c].values
            assert (pd.isna(a) == pd.isna(b)).all(), c
            np.testing.assert_array_equal(a[~pd.isna(a)], b[~pd.isna(b)], err_msg=c)
    assert np.isfinite(got["ps"].values).all()  # every Touchstone signature has a table
    part = whole["ncs"].sel(sig=want["sig"].values).values
    assert not np.allclose(part, want["ncs"].values)


def test_scored_reads_only_the_subsets_index_rows(data, monkeypatch):
    from cmapdask.connectivity import index as index_mod
    from cmapdask.connectivity.index import open_index

    h = open_index(data["store"], space=SPACE)
    genes = np.array([3, 17, 40, 41, 500])
    pos = np.array([0, 1, 2, 7, 90, 91, h.n_sig - 1])
    whole_r, whole_s = h.read_gene_major(genes, 0, h.n_sig)
    spans = []
    real = index_mod._read_rows

    def spy(arr, g, start, stop):
        spans.append((start, stop))
        return real(arr, g, start, stop)

    monkeypatch.setattr(index_mod, "_read_rows", spy)
    for gap in (0, 5, 1024):
        spans.clear()
        r, s = h.read_gene_major_at(genes, pos, gap=gap)
        np.testing.assert_array_equal(r, whole_r[:, pos])
        np.testing.assert_array_equal(s, whole_s[:, pos])
        read = set().union(*(range(a, b) for a, b in spans))
        if gap == 0:  # the chosen signatures and nothing else
            assert read == set(pos.tolist())
        assert min(read) == pos[0] and max(read) == pos[-1]
    r, s = h.read_gene_major_at(genes, np.array([], dtype=int))
    assert r.shape == (genes.size, 0) and s.shape == (genes.size, 0)


def test_cli_bad_or_empty_scored_set_is_one_line(data, tmp_path):
    for scored, words in (
        ("tas >", "scored"),
        ("no_such_field == 1", "no_such_field"),
        ("pert_type == 'NO-SUCH-TYPE'", "selects no signature"),
    ):
        r = _cli(*_query_args(data, data["store"], tmp_path / "x", "--scored", scored))
        assert r.returncode == 2, (scored, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def server(data, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("jobs_scored") / "jobs"
    srv = Server(data["store"], jobs, "--pcl", data["pcl"])
    yield srv
    srv.stop()


def test_server_scored_equals_subset_store(data, subsets, server, tmp_path):
    import httpx

    text, sub, _ = subsets["filter"]
    up, dn = planted_query(data["design"], moa=0)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        body = {"queries": [{"name": "query", "up": up, "down": dn}], "space": SPACE}
        r = client.post("/api/v1/queries", json={**body, "scored": text})
        assert r.status_code == 202, r.text
        status = wait_job(client, r.json()["id"])
        assert status["status"] == "done", status
        arc = client.get(f"/api/v1/queries/{status['id']}/result.tar.gz")
        assert arc.status_code == 200
        for scored, words in (("tas >", "scored"), ("pert_type == 'NONE'", "no signature")):
            bad = client.post("/api/v1/queries", json={**body, "scored": scored})
            assert bad.status_code == 400, bad.text
            detail = bad.json()["detail"]
            assert words in detail and "\n" not in detail
    with tarfile.open(fileobj=io.BytesIO(arc.content)) as tar:
        tar.extractall(tmp_path / "srv", filter="data")
    (folder,) = list((tmp_path / "srv").iterdir())
    r = _cli(*_query_args(data, sub, tmp_path / "subset"))
    assert r.returncode == 0, r.stderr
    _same_folders(folder, tmp_path / "subset")
    from cmapdask.where import parse

    assert json.loads((folder / "provenance.json").read_text())["scored"] == str(parse(text))
