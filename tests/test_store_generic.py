"""Stores for generic tools: consolidated metadata (store and members) and ids as Python
``str`` objects when opened through cmapdask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from cmapdask.clustering import kmeans_signatures, write_clusters
from cmapdask.connectivity.index import build_index
from cmapdask.io.store import list_members, open_member, open_store
from cmapdask.similarity.api import similarity
from cmapdask.similarity.write import write_similarity
from tests.test_connectivity_query import make_store

MEMBERS = ("index/all", "similarity/pearson_all", "clusters/km")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("generic") / "s.zarr")
    make_store(url, n_sig=30)
    build_index(url, space="all")
    ds = open_store(url)
    write_similarity(similarity(ds, k=3, space="all"), store=url)
    km = kmeans_signatures(ds, n_clusters=3, n_components=4, space="all", n_init=1)
    write_clusters(km, url, name="km")
    assert list_members(url) == sorted(MEMBERS)
    return url


@pytest.mark.parametrize("member", ["", *MEMBERS])
def test_generic_tools_open_store_and_members_without_warnings(store, member):
    url = f"{store}/{member}" if member else store
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata" (or any other) warning
        ds = xr.open_zarr(url)
        g = zarr.open_group(url, mode="r")
        assert set(ds.variables) == {k for k, _ in g.arrays()}
    if not member:  # the store's consolidated view lists every member and its arrays
        nodes = {k for k, _ in g.members(max_depth=None)}
        assert {*MEMBERS, "similarity/pearson_all/top_id", "index/all/rank"} <= nodes
        assert ds.sizes == {"sig": 30, "gene": 40}


def test_replacing_a_member_refreshes_the_consolidated_view(store):
    ds = open_store(store)
    write_similarity(similarity(ds, k=5, space="all"), store=store)
    g = zarr.open_group(store, mode="r")
    assert g["similarity/pearson_all/top_id"].shape == (30, 5)


@pytest.mark.parametrize("member", MEMBERS)
def test_ids_are_python_str_objects_through_cmapdask(store, member):
    ds = open_member(store, member)
    text = [k for k, v in ds.variables.items() if v.dtype.kind in "OTU"]
    assert "sig" in text or "gene" in text
    for k in text:
        values = np.asarray(ds[k].values)
        assert values.dtype == object, k
        assert all(isinstance(v, str) or v is None for v in values.ravel().tolist()), k
        assert values.astype(str).dtype.kind == "U"  # the TypeError the issue reported
    if member.startswith("similarity"):
        top = ds["top_id"].values
        assert set(top.ravel().tolist()) <= set(open_store(store)["sig"].values.tolist())
