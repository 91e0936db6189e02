"""Introspect against the Broad's sig_introspect_tool output (tests/data/cmapm/introspect)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from cmapdask.cli import main
from cmapdask.connectivity.index import build_index
from cmapdask.connectivity.introspect import introspect
from cmapdask.connectivity.tau import INTROSPECT_GRID, _interp_block, background_table, tau_rows
from cmapdask.io.gctx import read_gctx
from cmapdask.io.gmt import read_gene_sets
from cmapdask.io.store import convert
from tests._connectivity_helpers import reference_es

FILES = ("cs", "ncs", "ps_bkg", "ps")


def _dir(fixtures):
    return fixtures / "cmapm" / "introspect"


def broad(fixtures, name, ids):
    """The Broad's matrix as (query, signature) in the order of ``ids``."""
    ds = read_gctx(_dir(fixtures) / "introspect_result" / f"{name}_n10x10.gctx").compute()
    assert list(ds["sig"].values) == list(ds["gene"].values)
    o = [list(ds["sig"].values).index(s) for s in ids]
    return ds["expr"].values.astype(float)[np.ix_(o, o)]


@pytest.fixture(scope="module")
def store(fixtures, tmp_path_factory):
    d = _dir(fixtures) / "build"
    path = str(tmp_path_factory.mktemp("introspect") / "s.zarr")
    convert(str(d / "modzs_n10x10174.gctx"), path, sig_info=str(d / "siginfo.txt"))
    build_index(path, space="all", chunk_rows=4)  # uneven blocks: 4, 4, 2
    return path


@pytest.fixture(scope="module")
def reference(fixtures):
    """Plain numpy: the unsymmetrised NCS (query, sig) from a full GSEA walk per pair.

    The Broad's up.gmt / dn.gmt are the queries (each signature's top / bottom 50); all ten
    signatures are one pert_type:cell_id group, so NCS divides each query's row by its
    mean positive (negative) WTCS.
    """
    ds = read_gctx(_dir(fixtures) / "build" / "modzs_n10x10174.gctx").compute()
    x = ds["expr"].values.astype(float)
    ids = [str(s) for s in ds["sig"].values]
    pos = {str(g): i for i, g in enumerate(ds["gene"].values)}
    res = _dir(fixtures) / "introspect_result"
    up, dn = read_gene_sets(str(res / "up.gmt")), read_gene_sets(str(res / "dn.gmt"))
    w = np.zeros((10, 10))
    for i, q in enumerate(ids):
        u = np.array([pos[g] for g in up[f"{q}_UP"]])
        d = np.array([pos[g] for g in dn[f"{q}_DN"]])
        for j in range(10):
            eu = reference_es(x[j], u, weighted=True)[0]
            ed = reference_es(x[j], d, weighted=True)[0]
            w[i, j] = (eu - ed) / 2 if np.sign(eu) != np.sign(ed) else 0.0
    ncs = np.zeros_like(w)
    for i, r in enumerate(w):
        mu_pos = max(0.01, r[r > 0].mean()) if (r > 0).any() else np.nan
        mu_neg = max(0.01, -r[r < 0].mean()) if (r < 0).any() else np.nan
        ncs[i] = np.where(r > 0, r / mu_pos, np.where(r < 0, r / mu_neg, 0.0))
    return ids, w, ncs


def tables_at(ncs, at):
    """Each query row's table (built from its row of ``ncs``) read at ``at``."""
    tables = np.stack([background_table(r, grid=INTROSPECT_GRID) for r in ncs])
    return _interp_block(at.T, tables, INTROSPECT_GRID).T


def tau_tolerance(ncs, ulps=4):
    """How far τ moves when NCS moves by a few float32 ulps: the files' precision.

    A table rises from 90 to 100 over the one grid step above a query's largest |NCS|,
    so a last-bit difference in NCS moves τ by up to ~0.003 there and by nothing
    elsewhere; 1e-4 more covers the files' float32 rounding of τ itself.
    """
    step = ulps * np.spacing(np.abs(ncs).astype(np.float32)).astype(float)
    return np.abs(tables_at(ncs, ncs + step) - tables_at(ncs, ncs - step)) + 1e-4


def check_against_broad(got, fixtures, reference):
    ids, w, ncs = reference
    want = {v: broad(fixtures, v, ids) for v in FILES}
    np.testing.assert_allclose(got["cs"], want["cs"], atol=3e-7)
    np.testing.assert_allclose(got["ncs"], want["ncs"], atol=1e-6)
    tol = tau_tolerance(ncs)
    assert np.all(np.abs(got["ps_bkg"] - want["ps_bkg"]) <= tol)
    assert np.all(np.abs(got["ps"] - want["ps"]) <= (tol + tol.T) / 2)


def test_reference_is_the_broads(fixtures, reference):
    """The numpy reference itself reproduces the Broad's files (τ in runIntrospect's order)."""
    ids, w, ncs = reference
    ps_bkg = tables_at(ncs, ncs)
    got = {"cs": (w + w.T) / 2, "ncs": (ncs + ncs.T) / 2, "ps_bkg": ps_bkg}
    got["ps"] = (ps_bkg + ps_bkg.T) / 2
    check_against_broad(got, fixtures, reference)
    # ps_bkg is per query and unsymmetrised: far from symmetric
    assert np.abs(ps_bkg - ps_bkg.T).max() > 10


# a store, its index and introspect: ~2 min together; CI checks the same numbers
# through the numpy reference and the dask tau rows above
@pytest.mark.slow
@pytest.mark.parametrize("chunk_rows", [3, 10])
def test_introspect_reproduces_the_broad(store, fixtures, reference, chunk_rows):
    res = introspect(store, space="all", n_top=50, chunk_rows=chunk_rows)
    assert [str(s) for s in res["sig"].values] == reference[0]  # the file's order
    check_against_broad({v: res[v].values.astype(float) for v in FILES}, fixtures, reference)
    np.testing.assert_array_equal(res["ps"].values, res["ps"].values.T)


@pytest.mark.parametrize("chunks", [(10, 10), (3, 10), ((4, 4, 2), 10), ((1, 6, 3), (7, 3))])
def test_tau_rows_dask_against_numpy(reference, chunks):
    ncs = reference[2]
    want = tables_at(ncs, ncs)
    np.testing.assert_array_equal(tau_rows(ncs), want)
    got = tau_rows(da.from_array(ncs, chunks=chunks)).compute()
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_cli_introspect_writes_the_broads_files(store, fixtures, reference, tmp_path):
    out = tmp_path / "intro"
    args = ["introspect", store, "--space", "all", "--out", str(out)]
    assert main([*args, "--scheduler", "none", "--quiet"]) == 0
    got = {}
    for v in FILES:
        ds = read_gctx(out / f"{v}.gctx").compute()
        # written as the Broad writes it: columns (the file's sig axis) are the queries
        o = [list(ds["sig"].values).index(s) for s in reference[0]]
        p = [list(ds["gene"].values).index(s) for s in reference[0]]
        got[v] = ds["expr"].values.astype(float)[np.ix_(o, p)]
    check_against_broad(got, fixtures, reference)
