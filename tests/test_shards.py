"""Sharded ``expr``: cmapdask's own shard encoder/decoder against numpy and against zarr's
sharding codec, over several layouts; reading chosen signatures reads only their inner
chunks; corrupt or missing shards give one clear error."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

import cmapdask
from cmapdask.errors import StoreError
from cmapdask.io.store.read import _sharded, take_sigs
from cmapdask.io.store.shards import ShardedMatrix, sharded_matrix

pytestmark = pytest.mark.filterwarnings("ignore::cmapdask.errors.NonFiniteWarning")


def _dataset(n_sig: int, n_gene: int, seed: int = 0) -> tuple[xr.Dataset, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n_sig, n_gene)).astype(np.float32)
    x[3 % n_sig, 1 % n_gene] = np.nan  # NaN is data, not the fill value's business
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), dask.array.from_array(x, chunks=(max(1, n_sig // 3), -1)))},
        coords={
            "sig": np.array([f"S{i}" for i in range(n_sig)], dtype=object),
            "gene": np.array([str(i) for i in range(n_gene)], dtype=object),
        },
    )
    return ds, x


# (signatures, genes, shard rows, inner KiB): shards and inner chunks that do and do not
# divide the signatures, one signature per inner chunk, one inner chunk per shard
LAYOUTS = [
    (1000, 50, 128, 4),
    (997, 33, 100, 1),
    (50, 7, 50, 0.01),
    (3, 978, None, 256),
    (300, 20, 7, 256),
]


@pytest.mark.parametrize("n_sig,n_gene,rows,kb", LAYOUTS)
def test_shards_equal_numpy_and_zarr(tmp_path, n_sig, n_gene, rows, kb):
    ds, x = _dataset(n_sig, n_gene)
    dest = tmp_path / "s.zarr"
    with dask.config.set({"scheduler": "threads", "cmapdask.store.inner_kb": kb}):
        cmapdask.write_store(ds, dest, chunk_rows=rows)
    arr = zarr.open_group(str(dest), mode="r")["expr"]
    assert arr.shards is not None and arr.shards[0] % arr.chunks[0] == 0
    # zarr's own sharding codec reads what cmapdask wrote
    np.testing.assert_array_equal(arr[:], x)
    store = cmapdask.open_store(dest)
    assert store["expr"].data.chunks[0][0] == arr.shards[0]  # one task per shard
    np.testing.assert_array_equal(store["expr"].values, x)
    rng = np.random.default_rng(1)
    pos = rng.integers(0, n_sig, size=min(40, 2 * n_sig))  # unsorted, with repeats
    np.testing.assert_array_equal(take_sigs(store, pos)["expr"].values, x[pos])
    assert take_sigs(store, pos)["sig"].values.tolist() == [f"S{i}" for i in pos]
    np.testing.assert_array_equal(take_sigs(store, pos[:0])["expr"].values, x[:0])
    m = _sharded(str(dest), None)
    np.testing.assert_array_equal(m[pos[:5], 2:4], x[pos[:5], 2:4])
    np.testing.assert_array_equal(m[int(pos[0])], x[int(pos[0])])


def test_reads_shards_written_by_zarr(tmp_path):
    x = np.random.default_rng(2).standard_normal((95, 12)).astype(np.float32)
    arr = zarr.create_array(
        str(tmp_path / "z.zarr"),
        shape=x.shape,
        dtype="float32",
        chunks=(4, 12),
        shards=(20, 12),
        fill_value=np.nan,
        compressors=(BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
    )
    arr[:] = x
    m = sharded_matrix(arr, str(tmp_path / "z.zarr"), None)
    assert m is not None and (m.shard_rows, m.inner) == (20, 4)
    np.testing.assert_array_equal(m[:], x)
    np.testing.assert_array_equal(m.take(np.array([0, 19, 20, 94])), x[[0, 19, 20, 94]])


def test_other_codecs_are_left_to_zarr(tmp_path):
    arr = zarr.create_array(
        str(tmp_path / "z.zarr"), shape=(10, 3), dtype="float32", chunks=(2, 3), shards=(4, 3)
    )
    assert sharded_matrix(arr, str(tmp_path / "z.zarr"), None) is None  # zstd, not blosc
    plain = zarr.create_array(str(tmp_path / "p.zarr"), shape=(10, 3), dtype="float32")
    assert sharded_matrix(plain, str(tmp_path / "p.zarr"), None) is None


def test_chosen_signatures_read_only_their_inner_chunks(tmp_path, monkeypatch):
    ds, x = _dataset(4000, 64)
    dest = tmp_path / "s.zarr"
    with dask.config.set({"scheduler": "threads", "cmapdask.store.inner_kb": 1}):
        cmapdask.write_store(ds, dest, chunk_rows=2000)
    store = cmapdask.open_store(dest)
    m = _sharded(str(dest), None)
    assert (m.shard_rows, m.inner) == (2000, 4)
    asked: list = []
    real = ShardedMatrix._fetch

    def fetch(self, fs, reqs):
        asked.extend(reqs)
        return real(self, fs, reqs)

    monkeypatch.setattr(ShardedMatrix, "_fetch", fetch)
    pos = np.array([5, 6, 1999, 2001, 3333])
    np.testing.assert_array_equal(take_sigs(store, pos)["expr"].values, x[pos])
    tails = [r for r in asked if r[1] is not None and r[1] < 0]
    chunks = [r for r in asked if r[1] is not None and r[1] >= 0]
    assert len(tails) == 2 and all(r[2] is None for r in tails)  # one index per shard
    # chunks 1 (5, 6), 499 (1999), 0 (2001), 833 (3333): no whole shard, nothing else
    assert len(chunks) == 4 and not [r for r in asked if r[1] is None]
    inner_bytes = 4 * 64 * 4
    assert sum(b - a for _, a, b in chunks) < 4 * inner_bytes * 1.2
    # most of a shard asked: the whole shard in one request
    asked.clear()
    pos = np.arange(0, 2000, 2)
    np.testing.assert_array_equal(take_sigs(store, pos)["expr"].values, x[pos])
    assert len(asked) == 1 and asked[0][1] is None


def test_take_sigs_on_moto_s3(s3_server):
    opts = s3_server
    ds, x = _dataset(1500, 40)
    url = "s3://cmapdask-test/shards/s.zarr"
    with dask.config.set({"scheduler": "threads", "cmapdask.store.inner_kb": 1}):
        cmapdask.write_store(ds, url, storage_options=opts, chunk_rows=500)
        store = cmapdask.open_store(url, storage_options=opts)
        pos = np.random.default_rng(3).integers(0, 1500, 60)
        got = take_sigs(store, pos, storage_options=opts)["expr"].values
        np.testing.assert_array_equal(got, x[pos])
        np.testing.assert_array_equal(store["expr"].values, x)


def _shard_file(dest) -> str:
    return os.path.join(str(dest), "expr", "c", "1", "0")


def test_corrupt_or_missing_shard_is_one_clear_error(tmp_path):
    ds, _ = _dataset(300, 10)
    dest = tmp_path / "s.zarr"
    with dask.config.set({"scheduler": "threads", "cmapdask.store.inner_kb": 0.1}):
        cmapdask.write_store(ds, dest, chunk_rows=100)
    path = _shard_file(dest)
    good = open(path, "rb").read()
    bad = bytearray(good)
    bad[-10] ^= 0xFF  # inside the index: its checksum fails
    open(path, "wb").write(bytes(bad))
    store = cmapdask.open_store(dest)
    with pytest.raises(StoreError, match=r"expr shard 1 is corrupt"):
        store["expr"].compute()
    bad = bytearray(good)
    bad[5] ^= 0xFF  # inside the first inner chunk's blosc header
    open(path, "wb").write(bytes(bad))
    with pytest.raises(StoreError, match=r"expr shard 1.* (does not decode|corrupt)"):
        take_sigs(store, [100])["expr"].compute()
    open(path, "wb").write(good[:20])
    with pytest.raises(StoreError, match=r"expr shard 1 is missing or truncated"):
        store["expr"].compute()
    os.remove(path)
    with pytest.raises(StoreError, match=r"expr shard 1 is missing"):
        take_sigs(store, [150])["expr"].compute()
