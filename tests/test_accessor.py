"""``ds.cmap`` and the package exports: each method gives exactly the functional result."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import cmapdask
from cmapdask.errors import InputError
from tests.test_connectivity_query import make_store

pytestmark = pytest.mark.filterwarnings("ignore:.*CMap queries use 10-150")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("acc") / "s.zarr")
    make_store(path, n_sig=30, n_gene=40)
    cmapdask.build_index(path, space="all")
    return path


def _sets(ds):
    genes = ds["gene"].values
    return {"q": list(genes[:5])}, {"q": list(genes[5:11])}


def test_every_export_is_a_function_of_the_api():
    import cmapdask.rebuild  # noqa: F401  (importing a subpackage must not shadow a function)
    import cmapdask.similarity  # noqa: F401

    for name in cmapdask.__all__:
        value = getattr(cmapdask, name)
        assert not isinstance(value, type(sys)), f"cmapdask.{name} is a module"
    assert callable(cmapdask.similarity) and callable(cmapdask.rebuild)


def test_heavy_dependencies_are_imported_only_when_used():
    # s3fs is imported (cmapdask sets its timeouts and retries); the rest only on use
    heavy = ("sklearn", "dask_ml", "matplotlib", "duckdb", "fastapi", "uvicorn")
    code = f"import sys, cmapdask; print(*(m in sys.modules for m in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * len(heavy)


def test_query_same_as_functional(store):
    ds = cmapdask.open_store(store)
    up, dn = _sets(ds)
    a = ds.cmap.query(up, dn, space="all", tau="none").compute()
    b = cmapdask.query(store, up, dn, space="all", tau="none").compute()
    xr.testing.assert_identical(a, b)


def test_query_on_a_subset_keeps_its_signatures(store):
    ds = cmapdask.open_store(store)
    sub = ds.isel(sig=[7, 2, 20])
    up, dn = _sets(ds)
    a = sub.cmap.query(up, dn, space="all", tau="none")
    full = cmapdask.query(store, up, dn, space="all", tau="none")
    assert list(a["sig"].values) == list(sub["sig"].values)
    np.testing.assert_array_equal(a["cs"].values, full["cs"].sel(sig=sub["sig"].values).values)


def test_query_needs_a_store(store):
    ds = cmapdask.open_store(store).load()
    ds.attrs.pop("store_url")
    with pytest.raises(InputError, match="not opened from a store"):
        ds.cmap.query({"q": ["1000"]}, {"q": ["1001"]})


def test_similarity_same_as_functional(store):
    ds = cmapdask.open_store(store)
    a = ds.cmap.similarity(k=5, space="all").compute()
    b = cmapdask.similarity(ds, k=5, space="all").compute()
    xr.testing.assert_identical(a, b)
    m = ds.cmap.similarity_matrix(space="all")
    np.testing.assert_array_equal(m.values, cmapdask.similarity_matrix(ds, space="all").values)


def test_levels_same_as_functional(store):
    ds = cmapdask.open_store(store)
    a = ds.cmap.robust_zscore(plate_field=None).compute()
    b = cmapdask.robust_zscore(ds, plate_field=None).compute()
    xr.testing.assert_identical(a, b)


def test_writers_round_trip(store, tmp_path):
    ds = cmapdask.open_store(store)
    path = ds.cmap.to_gctx(tmp_path / "x.gctx")
    back = cmapdask.read_gctx(path)
    np.testing.assert_array_equal(back["expr"].values, ds["expr"].values)
    dest = ds.cmap.to_store(str(tmp_path / "copy.zarr"))
    np.testing.assert_array_equal(cmapdask.open_store(dest)["expr"].values, ds["expr"].values)
