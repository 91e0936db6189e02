"""The nightly rebuild's query-index extension on object storage (moto server on loopback).

Small on purpose (40 genes): the index is gene-major, so every gene row is an object.
"""

from __future__ import annotations

import uuid

import dask
import numpy as np
import pytest

from cmapdask.connectivity import build_index, rank_descending
from cmapdask.io.gctx import write_gctx
from cmapdask.io.store import open_member
from cmapdask.rebuild import append, open_current, read_manifest, rebuild
from tests.test_connectivity_query import make_store

pytestmark = pytest.mark.s3

N_OLD, N_NEW, K = 50, 12, 5


@pytest.mark.slow  # ~40 s; the S3 end-to-end rebuild runs in CI
def test_index_extended_on_s3(s3_server, tmp_path):
    ds = make_store(tmp_path / "all.zarr", seed=3, n_sig=N_OLD + N_NEW)
    old, new = tmp_path / "old.gctx", tmp_path / "new.gctx"
    write_gctx(ds.isel(sig=slice(0, N_OLD)), old)
    write_gctx(ds.isel(sig=slice(N_OLD, None)), new)
    root = f"s3://cmapdask-test/{uuid.uuid4().hex[:8]}/coll"
    so = s3_server
    with dask.config.set(scheduler="threads"):
        append(root, old, chunk_rows=20, storage_options=so)
        rebuild(root, k=K, space="all", block_size=20, storage_options=so)
        v1 = open_current(root, storage_options=so).attrs["store_url"]
        build_index(v1, space="all", chunk_rows=16, storage_options=so)
        append(root, new, storage_options=so)
        res = rebuild(root, k=K, space="all", block_size=20, storage_options=so)
    how = {
        p["member"]: p["how"]
        for p in read_manifest(root, res.version, storage_options=so)["products"]
    }
    assert how["index/all"].startswith("extended"), how
    cur = open_current(root, storage_options=so)
    idx = open_member(cur.attrs["store_url"], "index/all", storage_options=so)
    x = ds["expr"].values
    np.testing.assert_array_equal(idx["rank"].values, rank_descending(x).T)
    np.testing.assert_array_equal(idx["score"].values, x.T)
    # the first version's index is untouched
    np.testing.assert_array_equal(
        open_member(v1, "index/all", storage_options=so)["rank"].values,
        rank_descending(x[:N_OLD]).T,
    )
