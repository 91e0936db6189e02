"""Clustering: k-means on PCA against scikit-learn over chunk layouts, hierarchical and graph
clustering against scipy/brute force, planted MoA recovery, labels in the store."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from cmapdask import synthetic as sy
from cmapdask.annotations import labels_from_sets, sets_from_table
from cmapdask.clustering import (
    cluster_quality,
    graph_clusters,
    hierarchical_perts,
    kmeans_signatures,
    knn_from_matrix,
    write_clusters,
)
from cmapdask.errors import InputError


def _blobs(n=240, g=30, k=4, seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, g)) * 3
    truth = np.arange(n) % k
    x = (centers[truth] + rng.standard_normal((n, g))).astype(np.float32)
    expr = da.from_array(x, chunks=(chunks, g)) if chunks else x
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), expr)},
        coords={"sig": [f"s{i}" for i in range(n)], "gene": [f"g{j}" for j in range(g)]},
    )
    return ds, x, truth


@pytest.mark.parametrize("solver", ["covariance", "full"])
@pytest.mark.parametrize("chunks", [None, (240,), (100, 100, 40), (7, 113, 1, 119)])
def test_kmeans_matches_sklearn_over_chunk_layouts(chunks, solver):
    ds, x, truth = _blobs(chunks=chunks)
    res = kmeans_signatures(
        ds, n_clusters=4, n_components=5, space="all", scale="none", solver=solver, seed=1
    )
    assert res.attrs["cmapdask"]["solver"] == solver
    assert isinstance(res["cluster"].data, da.Array)  # labels are lazy after the fit
    # exact PCA against scikit-learn's (signs of components may differ)
    ref = PCA(n_components=5, svd_solver="full").fit(x)
    np.testing.assert_allclose(
        res["explained_variance_ratio"].values, ref.explained_variance_ratio_, rtol=1e-4
    )
    np.testing.assert_allclose(np.abs(res["components"].values), np.abs(ref.components_), atol=1e-3)
    z = ref.transform(x)
    km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(z)
    lab = res["cluster"].values
    assert adjusted_rand_score(km.labels_, lab) == 1.0
    assert adjusted_rand_score(truth, lab) == 1.0
    # distance is to the assigned centre, which is the nearest
    d = np.linalg.norm(z[:, None, :] - _align(res, ref)[None], axis=2)
    np.testing.assert_allclose(res["distance"].values, d.min(axis=1), rtol=1e-3, atol=1e-3)


def test_covariance_pca_matches_numpy_svd():
    from cmapdask.clustering import covariance_pca

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((301, 25)) @ rng.standard_normal((25, 25)) + 5).astype(np.float32)
    ref = PCA(n_components=6, svd_solver="full").fit(x.astype(np.float64))
    for chunks in [(301,), (100, 100, 101), (1, 150, 150)]:
        got = covariance_pca(da.from_array(x, chunks=(chunks, 25)), 6)
        np.testing.assert_allclose(got["explained_variance"], ref.explained_variance_, rtol=1e-6)
        np.testing.assert_allclose(
            got["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-6
        )
        np.testing.assert_allclose(got["mean"], ref.mean_, rtol=1e-6)
        np.testing.assert_allclose(
            np.abs((got["components"] * ref.components_).sum(axis=1)), 1, atol=1e-6
        )  # the same axes (up to sign)
    bad = x.copy()
    bad[3, 4] = np.inf
    assert covariance_pca(da.from_array(bad, chunks=(100, 25)), 3) == {"finite": False}


def _align(res, ref):
    # our centres in scikit-learn's component signs
    sign = np.sign((res["components"].values * ref.components_).sum(axis=1))
    return res["centers"].values * sign


def test_kmeans_sampled_init_and_zscore():
    ds, x, truth = _blobs(chunks=60, seed=3)
    res = kmeans_signatures(
        ds, n_clusters=4, n_components=4, space="all", init="sample-k-means++", init_sample=50
    )
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0
    prov = res.attrs["cmapdask"]
    assert prov["init"] == "sample-k-means++" and prov["n_clusters"] == 4


def test_kmeans_bad_input():
    ds, x, truth = _blobs()
    with pytest.raises(InputError, match="n_clusters"):
        kmeans_signatures(ds, n_clusters=1, space="all")
    with pytest.raises(InputError, match="exceeds"):
        kmeans_signatures(ds, n_clusters=500, space="all")
    with pytest.raises(InputError, match="init"):
        kmeans_signatures(ds, n_clusters=3, space="all", init="random")
    bad = ds.copy()
    bad["expr"] = bad["expr"].where(bad["sig"] != "s3")
    with pytest.raises(InputError, match="non-finite"):
        kmeans_signatures(bad, n_clusters=3, space="all")


def _pert_matrix(p=30, k=3, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.arange(p) % k
    m = rng.uniform(-0.2, 0.2, (p, p))
    m[truth[:, None] == truth[None, :]] += 0.6
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    m[0, 4] = m[4, 0] = np.nan  # never profiled together
    ids = np.array([f"P{i:02d}" for i in range(p)], dtype=object)
    return xr.DataArray(m, dims=("pert", "pert_ref"), coords={"pert": ids, "pert_ref": ids}), truth


@pytest.mark.parametrize("method", ["average", "complete", "single", "ward"])
def test_hierarchical_matches_scipy(method):
    mat, truth = _pert_matrix()
    res = hierarchical_perts(mat, method=method, n_clusters=3)
    m = mat.values.copy()
    np.fill_diagonal(m, np.nan)
    d = np.nanmax(m) - np.where(np.isfinite(m), m, np.nanmin(m))
    np.fill_diagonal(d, 0)
    ref = fcluster(linkage(squareform(d, checks=False), method=method), 3, criterion="maxclust")
    assert adjusted_rand_score(ref, res["cluster"].values) == 1.0
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0
    assert sorted(res["leaf_order"].values.tolist()) == list(range(30))
    # reordered columns give the same clusters (matched by id)
    shuffled = mat.isel(pert_ref=np.random.default_rng(0).permutation(30))
    again = hierarchical_perts(shuffled, method=method, n_clusters=3)
    assert adjusted_rand_score(again["cluster"].values, res["cluster"].values) == 1.0


def test_condensed_similarity_blocks():
    from cmapdask.clustering import _condensed_similarity

    rng = np.random.default_rng(3)
    m = rng.standard_normal((23, 23)).astype(np.float32)
    want = squareform((m.astype(np.float64) + m.T) / 2 * (1 - np.eye(23)), checks=False)
    for block in (1, 5, 23, 1024):
        np.testing.assert_array_equal(_condensed_similarity(m, block=block), want)


def test_hierarchical_bad_input():
    mat, _ = _pert_matrix()
    with pytest.raises(InputError, match="exactly one"):
        hierarchical_perts(mat)
    with pytest.raises(InputError, match="square"):
        hierarchical_perts(mat[:5], n_clusters=2)
    with pytest.raises(InputError, match="finite"):
        hierarchical_perts(mat * np.nan, n_clusters=2)
    with pytest.raises(InputError, match="method"):
        hierarchical_perts(mat, method="centroid", n_clusters=2)


def test_knn_graph_louvain_and_leiden():
    mat, truth = _pert_matrix(p=45)
    nb = knn_from_matrix(mat, k=6)
    m = mat.values.copy()
    np.fill_diagonal(m, -np.inf)
    m = np.where(np.isfinite(m), m, -np.inf)
    for i in range(45):  # brute-force top 6 (stable: ties by smaller index)
        assert nb["top_index"].values[i].tolist() == np.argsort(-m[i], kind="stable")[:6].tolist()
    res = graph_clusters(nb, method="louvain", seed=2)
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0
    assert res.attrs["cmapdask"]["modularity"] > 0.3
    assert res.attrs["cmapdask"]["method"] == "louvain"
    # communities are numbered by decreasing size
    sizes = np.bincount(res["cluster"].values)
    assert (np.diff(sizes) <= 0).all()
    with pytest.raises(InputError, match="lack"):
        graph_clusters(nb.drop_vars("top_score"))
    with pytest.raises(InputError, match="method"):
        graph_clusters(nb, method="spectral")


def test_leiden_matches_louvain_on_a_clear_graph_and_is_the_default():
    pytest.importorskip("leidenalg")
    import igraph as ig
    import leidenalg

    mat, truth = _pert_matrix(p=45)
    nb = knn_from_matrix(mat, k=6)
    lei = graph_clusters(nb, method="leiden", seed=1)
    assert adjusted_rand_score(truth, lei["cluster"].values) == 1.0
    prov = lei.attrs["cmapdask"]
    assert prov["method"] == "leiden" and prov["backend"] == "leidenalg"
    # the modularity reported is the partition's, recomputed here by igraph directly
    idx, sc = nb["top_index"].values, nb["top_score"].values
    edges = {}
    for i in range(45):
        for j, w in zip(idx[i], sc[i], strict=False):
            if j >= 0 and w > 0:
                key = (min(i, j), max(i, j))
                edges[key] = max(edges.get(key, -np.inf), w)
    g = ig.Graph(n=45, edges=list(edges), directed=False)
    g.es["weight"] = list(edges.values())
    ref = leidenalg.find_partition(
        g, leidenalg.RBConfigurationVertexPartition, weights="weight", seed=1, n_iterations=-1
    )
    assert adjusted_rand_score(ref.membership, lei["cluster"].values) == 1.0
    assert prov["modularity"] == pytest.approx(g.modularity(ref.membership, weights="weight"))
    assert prov["n_edges"] == len(edges)
    # same seed, same partition; "auto" picks Leiden when it is installed
    again = graph_clusters(nb, seed=1)
    assert again.attrs["cmapdask"]["method"] == "leiden"
    np.testing.assert_array_equal(again["cluster"].values, lei["cluster"].values)
    # a higher resolution splits the graph further
    fine = graph_clusters(nb, method="leiden", resolution=5.0, seed=1)
    assert np.unique(fine["cluster"].values).size > 3


def test_without_leidenalg_auto_falls_back_to_louvain(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "leidenalg", None)  # import fails as if not installed
    mat, truth = _pert_matrix(p=45)
    nb = knn_from_matrix(mat, k=6)
    res = graph_clusters(nb, seed=2)
    assert res.attrs["cmapdask"]["method"] == "louvain"
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0
    with pytest.raises(InputError, match="igraph and leidenalg"):
        graph_clusters(nb, method="leiden")


def test_cluster_quality_figures():
    lab = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    truth = np.array(["a", "a", "b", "b", "b", "b", None, "c"], dtype=object)
    q = cluster_quality(lab, truth, x=np.arange(16.0).reshape(8, 2), sample_size=8)
    assert q["purity"] == pytest.approx((2 + 3 + 1) / 7)
    assert q["adjusted_rand"] == pytest.approx(
        adjusted_rand_score(truth[[0, 1, 2, 3, 4, 5, 7]].astype(str), lab[[0, 1, 2, 3, 4, 5, 7]])
    )
    assert -1 <= q["silhouette"] <= 1 and q["silhouette_n"] == 8


# ----------------------------------------------------------------------------- synthetic release


def _has_leiden() -> bool:
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def strong():
    design = sy.synth_design(3000, seed=1, n_moas=8)
    ds = sy.synth_dataset(design, metadata="tables", chunks=1000)
    dose = np.nan_to_num(np.asarray(ds["pert_dose"].values, dtype=float))
    st = ds.isel(sig=np.flatnonzero(dose >= 3.0)).load()
    sets = sets_from_table(sy.synth_compoundinfo(design))
    return st, sets


def test_clustering_recovers_planted_moas(strong):
    from cmapdask.similarity import pert_similarity, similarity

    st, sets = strong
    truth = labels_from_sets(sets, st["pert_id"].values)
    st = st.chunk({"sig": 300})
    km = kmeans_signatures(st, n_clusters=8, n_components=20)
    q = cluster_quality(km["cluster"], truth, x=st["expr"].data, sample_size=500)
    assert q["adjusted_rand"] > 0.9  # measured 1.0 (chance: 0)
    nb = similarity(st, k=15)
    methods = ["louvain"] + (["leiden"] if _has_leiden() else [])
    for method in methods:
        gq = cluster_quality(graph_clusters(nb, method=method)["cluster"], truth)
        assert gq["adjusted_rand"] > 0.9, method  # measured 1.0 for both
    ps = pert_similarity(st)
    h = hierarchical_perts(ps["pert_summary"], n_clusters=8)
    hq = cluster_quality(h["cluster"], labels_from_sets(sets, h["pert"].values))
    assert hq["adjusted_rand"] > 0.9 and hq["purity"] > 0.95  # measured 1.0, 1.0


def test_labels_written_as_member_and_table(strong, tmp_path):
    from cmapdask.io.store import open_member, write_store

    st, sets = strong
    st = st.isel(sig=slice(0, 200))
    url = str(tmp_path / "s.zarr")
    write_store(st, url)
    res = kmeans_signatures(st.chunk({"sig": 64}), n_clusters=3, n_components=5)
    out = write_clusters(res, url, name="km3", table=tmp_path / "km3.tsv")
    back = open_member(url, "clusters/km3")
    np.testing.assert_array_equal(back["cluster"].values, res["cluster"].values)
    assert (
        back.attrs["cmapdask"]["method"] == "kmeans" and back.attrs["cmapdask"]["n_clusters"] == 3
    )
    table = pd.read_csv(out["table"], sep="\t")
    assert table["sig"].tolist() == st["sig"].values.tolist()
    assert table["cluster"].tolist() == res["cluster"].values.tolist()
    assert "pert_id" in table.columns
    # back as a coordinate of the signatures, with the provenance
    from cmapdask.clustering import with_cluster_coords
    from cmapdask.io.store import open_store

    ds = with_cluster_coords(open_store(url).isel(sig=slice(150, None)), url)
    assert ds["cluster_km3"].dims == ("sig",)
    np.testing.assert_array_equal(ds["cluster_km3"].values, res["cluster"].values[150:])
    assert ds["cluster_km3"].attrs["cmapdask"]["n_clusters"] == 3
    with pytest.raises(InputError, match="does not have"):
        with_cluster_coords(xr.Dataset(coords={"pert": ["a"]}), url, names=["km3"])
    write_clusters(res, name="pq", table=tmp_path / "km3.parquet")
    assert (
        pd.read_parquet(tmp_path / "km3.parquet")["cluster"].tolist() == table["cluster"].tolist()
    )
    with pytest.raises(InputError, match="store, a table"):
        write_clusters(res, name="x")


@pytest.mark.cluster
def test_kmeans_runs_on_the_active_multiprocess_cluster(cluster_client):
    """The fit runs on the real cluster in effect (scheduler + 2 worker processes) and gives
    the labels, centres and inertia of a serial fit."""
    from distributed import get_task_stream

    ds, x, truth = _blobs(n=600, g=40, k=5, seed=4, chunks=97)
    kw = dict(n_clusters=5, n_components=6, space="all", seed=3, n_init=1)
    with dask.config.set(scheduler="sync"):
        serial = kmeans_signatures(ds, **kw)
        serial_lab = serial["cluster"].values
    with get_task_stream(cluster_client) as ts:
        par = kmeans_signatures(ds, **kw)
        lab = par["cluster"].values
    workers = {t["worker"] for t in ts.data}
    assert len(ts.data) > 50 and len(workers) == 2  # the fit's tasks ran on both workers
    np.testing.assert_array_equal(lab, serial_lab)
    np.testing.assert_allclose(
        par["centers"].values, serial["centers"].values, rtol=1e-4, atol=1e-4
    )
    assert par.attrs["cmapdask"]["inertia"] == pytest.approx(
        serial.attrs["cmapdask"]["inertia"], rel=1e-5
    )
    assert adjusted_rand_score(truth, lab) == 1.0


def test_kmeans_parallel_init_finds_every_blob_with_tasks_independent_of_k():
    from dask.callbacks import Callback

    from cmapdask.clustering import kmeans_parallel_init

    class Count(Callback):
        def __init__(self):
            super().__init__()
            self.n = 0

        def _posttask(self, *args):
            self.n += 1

    rng = np.random.default_rng(0)
    counts = {}
    for k in (5, 60):
        centers = rng.standard_normal((k, 8)) * 20
        truth = np.arange(3000) % k
        x = centers[truth] + rng.standard_normal((3000, 8))
        z = da.from_array(x, chunks=400).persist()
        with Count() as c:
            init = kmeans_parallel_init(z, k, seed=1)
        counts[k] = c.n
        assert init.shape == (k, 8)
        # one initial centre per planted blob
        near = np.linalg.norm(init[:, None, :] - centers[None], axis=2).argmin(axis=1)
        assert np.unique(near).size == k
        # deterministic for a seed and a chunking
        np.testing.assert_array_equal(init, kmeans_parallel_init(z, k, seed=1))
    # the scheduler sees the same number of tasks at k = 60 as at k = 5
    assert counts[60] == counts[5], counts
