"""Index + query engine over a real (small, random) store, against plain references."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import xarray as xr

from cmapdask.connectivity.es import combine_wtcs
from cmapdask.connectivity.index import build_index, open_index, space_genes
from cmapdask.connectivity.query import query
from cmapdask.errors import QueryError, StoreError
from cmapdask.io.store import write_store
from tests._connectivity_helpers import reference_es

N_SIG, N_GENE = 45, 40


def make_store(path, seed=0, n_sig=N_SIG, n_gene=N_GENE, null=False):
    rng = np.random.default_rng(seed)
    expr = np.round(rng.normal(size=(n_sig, n_gene)), 1).astype(np.float32)  # ties
    fs = np.array(
        ["landmark"] * 12 + ["best inferred"] * 18 + ["inferred"] * (n_gene - 30), dtype=object
    )
    rng.shuffle(fs)
    cells = np.array(["MCF7", "A375", "PC3"], dtype=object)[rng.integers(0, 3, n_sig)]
    ptype = np.array(["trt_cp", "trt_sh", "trt_poscon"], dtype=object)[rng.integers(0, 3, n_sig)]
    pert = np.array([f"P{i}" for i in rng.integers(0, 8, n_sig)], dtype=object)
    coords = {
        "sig": np.array([f"S{i:03d}" for i in range(n_sig)], dtype=object),
        "gene": np.array([f"{1000 + i}" for i in range(n_gene)], dtype=object),
        "feature_space": ("gene", fs),
        "gene_symbol": ("gene", np.array([f"SYM{i}" for i in range(n_gene)], dtype=object)),
        "pert_type": ("sig", ptype),
        "cell_id": ("sig", cells),
        "pert_id": ("sig", pert),
        "is_touchstone": ("sig", (rng.random(n_sig) < 0.7).astype(np.int64)),
    }
    if null:
        coords["is_null_sig"] = ("sig", (np.arange(n_sig) % 4 == 0).astype(np.int64))
    ds = xr.Dataset({"expr": (("sig", "gene"), expr)}, coords=coords)
    write_store(ds, str(path), chunk_rows=10)
    return ds


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("conn") / "s.zarr"
    ds = make_store(path)
    return str(path), ds


def _queries(ds, sel, seed=1):
    rng = np.random.default_rng(seed)
    genes = ds["gene"].values[sel]
    out_up, out_dn = {}, {}
    for q in range(4):
        pick = rng.permutation(genes.size)
        nu, nd = 3 + q, 5 - q
        out_up[f"q{q}"] = list(genes[pick[:nu]])
        out_dn[f"q{q}"] = list(genes[pick[nu : nu + nd]])
    out_up["q0"] = out_up["q0"] + ["NOT_A_GENE"]  # dropped and reported
    return out_up, out_dn


def _reference(ds, sel, up, dn, metric, tail="both"):
    """Plain per-signature loop: full GSEA walk over the space for every signature."""
    expr = ds["expr"].values[:, sel].astype(float)
    pos = {g: i for i, g in enumerate(ds["gene"].values[sel])}
    names = list(up)
    cs = np.zeros((len(names), expr.shape[0]))
    eu, ed = np.zeros_like(cs), np.zeros_like(cs)
    for qi, q in enumerate(names):
        iu = np.array([pos[g] for g in up[q] if g in pos])
        idn = np.array([pos[g] for g in dn[q] if g in pos])
        for i in range(expr.shape[0]):
            eu[qi, i] = reference_es(expr[i], iu, weighted=metric == "wtcs")[0]
            ed[qi, i] = reference_es(expr[i], idn, weighted=metric == "wtcs")[0]
        cs[qi] = combine_wtcs(eu[qi], ed[qi], tail=tail)
    return cs, eu, ed


def _ncs_reference(cs, ds, ref):
    pt = np.array(
        ["trt_cp" if p in ("trt_poscon", "ctl_vehicle") else p for p in ds["pert_type"].values]
    )
    labels = np.array([f"{p}:{c}" for p, c in zip(pt, ds["cell_id"].values, strict=False)])
    out = np.zeros_like(cs)
    for q in range(cs.shape[0]):
        for g in set(labels):
            m = labels == g
            r = cs[q, m & ref]
            mp = max(0.01, r[r > 0].mean()) if (r > 0).any() else np.nan
            mn = max(0.01, -r[r < 0].mean()) if (r < 0).any() else np.nan
            x = cs[q, m]
            out[q, m] = np.where(x > 0, x / mp, np.where(x < 0, x / mn, 0))
    return out


@pytest.mark.parametrize("space", ["landmark", "bing", "all"])
@pytest.mark.parametrize("chunk_rows", [7, 16, 45])
def test_query_matches_reference(store, space, chunk_rows):
    url, ds = store
    build_index(url, space=space, chunk_rows=chunk_rows)
    sel = space_genes(ds, space)
    up, dn = _queries(ds, sel)
    for metric in ("wtcs", "cs"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = query(url, up, dn, space=space, metric=metric, chunk_rows=chunk_rows)
        cs, eu, ed = _reference(ds, sel, up, dn, metric)
        np.testing.assert_allclose(res["cs"].values, cs, atol=1e-6)
        np.testing.assert_allclose(res["cs_up"].values, eu, atol=1e-6)
        np.testing.assert_allclose(res["cs_dn"].values, ed, atol=1e-6)
        ncs_ref = _ncs_reference(cs, ds, np.ones(N_SIG, bool))
        ok = ~np.isnan(ncs_ref)  # groups without a reference mean use the fallback
        np.testing.assert_allclose(res["ncs"].values[ok], ncs_ref[ok], atol=1e-5)
    rep = res.attrs["cmapdask"]["genes"][0]
    assert rep["up_dropped"] == "NOT_A_GENE" and rep["n_up_dropped"] == 1


@pytest.mark.parametrize("tail", ["up", "down"])
def test_one_tailed_and_symbols(store, tail):
    url, ds = store
    build_index(url, space="all", chunk_rows=16)
    sel = space_genes(ds, "all")
    up, dn = _queries(ds, sel)
    sym = dict(zip(ds["gene"].values, ds["gene_symbol"].values, strict=False))
    up_sym = {k: [sym.get(g, g) for g in v] for k, v in up.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = query(url, up_sym, dn, space="all", tail=tail)
    cs, _, _ = _reference(ds, sel, up, dn, "wtcs", tail=tail)
    np.testing.assert_allclose(res["cs"].values, cs, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = query(url, up, None, space="all")
    np.testing.assert_allclose(
        one["cs"].values,
        res["cs_up"].values if tail == "up" else _reference(ds, sel, up, dn, "wtcs", tail="up")[0],
        atol=1e-6,
    )


def test_query_is_lazy(store):
    url, ds = store
    build_index(url, space="all", chunk_rows=16)
    up, dn = _queries(ds, space_genes(ds, "all"))

    def boom(*a, **k):
        raise AssertionError("computed while building the query")

    with warnings.catch_warnings(), dask.config.set(scheduler=boom):
        warnings.simplefilter("ignore")
        res = query(url, up, dn, space="all", reference="touchstone")
    for v in res.data_vars.values():
        assert dask.is_dask_collection(v.data)
    assert np.isfinite(res["ncs"].values).all()


def test_errors(store, tmp_path):
    url, ds = store
    other = tmp_path / "o.zarr"
    make_store(other, seed=3)
    with pytest.raises(StoreError, match="cmapdask index"):
        open_index(str(other), space="bing")
    build_index(url, space="all", chunk_rows=16)
    g = list(ds["gene"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(QueryError, match="both"):
            query(url, {"a": g[:5]}, {"a": g[4:9]}, space="all")
        with pytest.raises(QueryError, match="identical"):
            query(url, {"a": g[:5]}, {"a": g[:5]}, space="all")
        with pytest.raises(QueryError, match="empty"):
            query(url, {"a": ["nope"]}, {"a": g[:5]}, space="all")
    with pytest.warns(UserWarning, match="10-150"):
        query(url, {"a": g[:5]}, {"a": g[5:10]}, space="all")


def test_fsspec_store_same_as_local(store):
    # memory:// goes through Zarr's async store (the remote path), local through pread
    url, ds = store
    mem = "memory://conn_query/s.zarr"
    write_store(ds, mem, chunk_rows=10)
    build_index(url, space="all", chunk_rows=16)
    build_index(mem, space="all", chunk_rows=16)
    up, dn = _queries(ds, space_genes(ds, "all"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = query(url, up, dn, space="all", chunk_rows=16)
        b = query(mem, up, dn, space="all", chunk_rows=16)
    np.testing.assert_array_equal(a["cs"].values, b["cs"].values)
    np.testing.assert_array_equal(a["leadf_dn"].values, b["leadf_dn"].values)
