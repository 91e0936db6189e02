"""Every public writer with ``compute=False``: nothing read, written or computed until
``.compute()``, which then writes what the direct call writes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cmapdask.io.gctx import read_gctx, write_gctx
from cmapdask.io.pending import PendingWrite
from cmapdask.io.store import open_store, write_store
from tests.test_connectivity_query import make_store
from tests.test_gctx import RaiseOnCompute

# provenance stamps that differ between two runs by design (the clock)
_CLOCK = {"created", "timings", "write_id"}


def _unclocked(obj):
    if isinstance(obj, dict):
        return {k: _unclocked(v) for k, v in obj.items() if k not in _CLOCK}
    if isinstance(obj, list):
        return [_unclocked(v) for v in obj]
    return obj


def _snapshot(path) -> dict:
    """What a write left at ``path``: every file, JSON without clock stamps, GCTx as data."""
    path = str(path)
    files = (
        [
            (os.path.relpath(os.path.join(d, f), path), os.path.join(d, f))
            for d, _, fs in os.walk(path)
            for f in fs
        ]
        if os.path.isdir(path)
        else [("", path)]
    )
    out = {}
    for rel, full in sorted(files):
        if ".tmp-" in rel or rel.endswith("LOCK"):
            continue
        if full.endswith(".json") or os.path.basename(full) == ".cmapdask":
            with open(full) as fh:
                out[rel] = _unclocked(json.load(fh))
        elif full.endswith(".gctx"):
            ds = read_gctx(full).compute()
            out[rel] = (
                ds["expr"].values.tobytes(),
                {k: list(map(str, c.values)) for k, c in ds.coords.items()},
            )
        else:
            with open(full, "rb") as fh:
                out[rel] = fh.read()
    return out


def _remove(path) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def check_deferred(writer, dest, *args, **kwargs):
    """``writer(..., compute=False)`` touches nothing; ``.compute()`` equals the direct call."""
    dest = str(dest)
    before = _snapshot(dest) if os.path.exists(dest) else None
    with RaiseOnCompute():
        pending = writer(*args, **kwargs, compute=False)
    assert isinstance(pending, PendingWrite)
    assert "pending" in repr(pending) and not pending.done
    after = _snapshot(dest) if os.path.exists(dest) else None
    assert after == before, f"{writer.__name__}(compute=False) touched {dest}"
    got = pending.compute()
    assert pending.done and pending.compute() == got  # runs once
    deferred = _snapshot(dest)
    assert deferred != before
    return got, deferred


def check_same(writer, dest, *args, reset=None, **kwargs):
    got, deferred = check_deferred(writer, dest, *args, **kwargs)
    (reset or (lambda: _remove(dest)))()
    direct = writer(*args, **kwargs)
    assert direct == got
    assert _snapshot(dest) == deferred


def _ds(n_sig=12, n_gene=7, seed=0):
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"expr": (("sig", "gene"), rng.normal(size=(n_sig, n_gene)).astype(np.float32))},
        coords={
            "sig": np.array([f"s{i}" for i in range(n_sig)], dtype=object),
            "gene": np.array([f"g{i}" for i in range(n_gene)], dtype=object),
            "pert_id": ("sig", np.array([f"P{i % 3}" for i in range(n_sig)], dtype=object)),
        },
    )


@pytest.fixture
def store(tmp_path):
    url = str(tmp_path / "s.zarr")
    make_store(url, seed=3, n_sig=24)
    return url


def test_pending_write_repr_and_once(tmp_path):
    calls = []
    p = PendingWrite(tmp_path / "x", "a thing", lambda: calls.append(1) or "url")
    assert repr(p) == f"<PendingWrite (pending): a thing -> {tmp_path / 'x'}>"
    assert p.compute() == "url" and p.compute() == "url" and calls == [1]
    assert "written" in repr(p)


def test_files(tmp_path):
    ds = _ds()
    lazy = ds.chunk({"sig": 5})
    from cmapdask.io.gct import write_gct
    from cmapdask.io.gmt import write_gmt, write_grp
    from cmapdask.io.tables import write_table

    check_same(write_gctx, tmp_path / "a.gctx", lazy, tmp_path / "a.gctx")
    check_same(write_gct, tmp_path / "a.gct", lazy, tmp_path / "a.gct")
    check_same(write_gmt, tmp_path / "a.gmt", {"s": ["g1", "g2"]}, tmp_path / "a.gmt")
    check_same(write_grp, tmp_path / "a.grp", ["g1", "g2"], tmp_path / "a.grp")
    df = pd.DataFrame({"sig_id": ["a", "b"], "x": [1.0, np.nan]})
    check_same(write_table, tmp_path / "t.txt", df, tmp_path / "t.txt")


def test_store_member_convert_tables(tmp_path, fixtures):
    from cmapdask.data.tables import write_tables
    from cmapdask.io.store import convert, write_member

    lazy = _ds().chunk({"sig": 5})
    dest = str(tmp_path / "w.zarr")
    check_same(write_store, dest, lazy, dest, chunk_rows=4)
    check_same(convert, tmp_path / "c.zarr", fixtures / "cmapm/gctv13_01.gctx", tmp_path / "c.zarr")
    s = open_store(dest)
    member = s[["expr"]].rename(expr="twice") * 2
    check_same(write_member, os.path.join(dest, "extra"), dest, "extra", member)
    df = pd.DataFrame({"sig_id": s["sig"].values, "n": np.arange(s.sizes["sig"])})
    check_same(write_tables, os.path.join(dest, "tables"), dest, {"siginfo": df})


def test_similarity_clusters(tmp_path, store):
    from cmapdask.clustering import kmeans_signatures
    from cmapdask.clustering.write import write_clusters
    from cmapdask.similarity import similarity
    from cmapdask.similarity.write import write_similarity

    ds = open_store(store)
    sim = similarity(ds, k=3, space="all")
    out = str(tmp_path / "sim.zarr")
    check_same(write_similarity, out, sim, out=out)
    km = kmeans_signatures(ds, n_clusters=2, n_components=3, space="all")
    table = str(tmp_path / "labels.tsv")
    check_same(write_clusters, table, km, name="km", table=table)


def test_index_background_result(tmp_path, store):
    from cmapdask.connectivity.index import build_index
    from cmapdask.connectivity.introspect import build_background
    from cmapdask.connectivity.query import query
    from cmapdask.connectivity.results import write_result

    check_same(build_index, os.path.join(store, "index", "all"), store, space="all")
    pcls = {"A": ["P0", "P1"], "B": ["P2", "P3"]}
    bg = os.path.join(store, "background", "all")
    kw = {"space": "all", "reference": "all", "pcls": pcls, "n_top": 3}
    check_same(build_background, bg, store, **kw)
    genes = open_store(store)["gene"].values.tolist()
    res = query(store, {"q": genes[:5]}, {"q": genes[10:15]}, space="all")
    out = str(tmp_path / "res")
    check_same(write_result, out, res, out)


def test_append(tmp_path):
    from cmapdask.rebuild.append import append

    src = write_gctx(_ds(), tmp_path / "a.gctx")
    root = str(tmp_path / "root")
    check_same(append, root, root, src, chunk_rows=5)
