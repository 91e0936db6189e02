"""The shared data model: the one feature-space rule, missing values, checks, provenance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cmapdask.cli import main
from cmapdask.clustering import kmeans_signatures
from cmapdask.connectivity.index import space_genes
from cmapdask.errors import InputError, MetadataError
from cmapdask.io.store import convert, open_member, open_store
from cmapdask.model import (
    ConnectivityMetric,
    SimilarityMetric,
    Space,
    check_signatures,
    dataset_name,
    feature_genes,
    is_missing,
    labels,
    landmark_ids,
    provenance_record,
)
from cmapdask.similarity import similarity

EZID = "cmapm/contest_modzs_ezid_n10x10174.gctx"  # 10 x 10,174 BING genes, no gene metadata


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory, fixtures) -> str:
    """A store converted without --gene-info: Entrez ids, no gene field at all."""
    url = str(tmp_path_factory.mktemp("bare") / "s.zarr")
    convert(fixtures / EZID, url)
    return url


def _genes(n_lm=4, n_bing=3, n_inf=2):
    lm = list(landmark_ids()[:n_lm])
    other = [f"9{i:05d}" for i in range(n_bing + n_inf)]
    return lm + other


def _ds(genes, **gene_fields):
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"expr": (("sig", "gene"), rng.standard_normal((6, len(genes))).astype(np.float32))},
        coords={
            "sig": np.array([f"s{i}" for i in range(6)], dtype=object),
            "gene": np.array(genes, dtype=object),
            **{k: ("gene", np.asarray(v, dtype=object)) for k, v in gene_fields.items()},
        },
    )


# ----------------------------------------------------------------------------- spaces


def test_store_without_gene_info_uses_the_shipped_landmarks(bare_store):
    ds = open_store(bare_store)
    assert not [k for k, c in ds.coords.items() if c.dims == ("gene",) and k != "gene"]
    pos = feature_genes(ds, "landmark")
    assert pos.size == 978
    assert set(ds["gene"].values[pos]) == set(landmark_ids())
    np.testing.assert_array_equal(space_genes(ds, "landmark"), pos)
    res = similarity(ds, k=3).compute()  # default space landmark
    assert res.attrs["cmapdask"]["space"] == "landmark"
    x = ds["expr"].values[:, pos].astype(np.float64)
    want = np.corrcoef(x)
    np.fill_diagonal(want, -np.inf)
    top = res["top_score"].values[:, 0]
    np.testing.assert_allclose(top, want.max(axis=1), atol=1e-5)


def test_kmeans_on_a_store_without_gene_info(bare_store):
    ds = open_store(bare_store)
    res = kmeans_signatures(ds, n_clusters=2, n_components=3, n_init=1)
    assert res.sizes["gene"] == 978
    assert res.attrs["cmapdask"]["input"] == bare_store


def test_bing_without_gene_metadata_names_the_table_and_the_store(bare_store):
    ds = open_store(bare_store)
    for fn in (feature_genes, space_genes):
        with pytest.raises(MetadataError, match="geneinfo") as e:
            fn(ds, "bing")
        assert str(e.value).startswith(f"{bare_store}: ")
    with pytest.raises(MetadataError, match="geneinfo"):
        similarity(ds, k=3, space="bing")
    assert feature_genes(ds, "all").size == ds.sizes["gene"]


def test_landmark_without_metadata_or_landmark_ids_is_an_error():
    ds = _ds(["a", "b", "c"])
    with pytest.raises(MetadataError, match="feature_space"):
        feature_genes(ds, "landmark")
    with pytest.raises(InputError, match="unknown feature space"):
        feature_genes(ds, "genome")


@pytest.mark.parametrize(
    "fields",
    [
        {"feature_space": ["landmark"] * 4 + ["best inferred"] * 3 + ["inferred"] * 2},
        {"feature_space": ["Landmark"] * 4 + [" Best Inferred"] * 3 + ["INFERRED"] * 2},
        {"gene_feature_space": ["LANDMARK"] * 4 + ["best inferred"] * 3 + ["inferred"] * 2},
        {"pr_is_lm": [1] * 4 + [0] * 5, "pr_is_bing": [1] * 7 + [0] * 2},
        {"pr_is_lm": ["True"] * 4 + ["False"] * 5, "pr_is_bing": ["1"] * 7 + ["0"] * 2},
        {"PR_IS_LM": [1.0] * 4 + [0.0] * 5, "pr_is_bing": ["Y"] * 7 + ["N"] * 2},
    ],
)
def test_every_command_reads_the_same_spaces(fields):
    ds = _ds(["x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9"], **fields)
    for fn in (feature_genes, space_genes):
        np.testing.assert_array_equal(fn(ds, "landmark"), np.arange(4))
        np.testing.assert_array_equal(fn(ds, "bing"), np.arange(7))
        np.testing.assert_array_equal(fn(ds, "all"), np.arange(9))
    assert similarity(ds, k=2, space="bing").sizes["sig"] == 6
    assert kmeans_signatures(ds, n_clusters=2, n_components=2, n_init=1).sizes["gene"] == 4


def test_metadata_wins_over_the_shipped_list():
    genes = _genes()
    ds = _ds(genes, feature_space=["inferred"] * 2 + ["landmark"] * 7)
    np.testing.assert_array_equal(feature_genes(ds, "landmark"), np.arange(2, 9))


def test_cli_error_names_the_store_url_not_a_dict(bare_store, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "cmapdask", "similarity", bare_store, "--k", "3"]
        + ["--space", "bing", "--scheduler", "none"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(err) == 1
    assert err[0].startswith(f"cmapdask: error: {bare_store}: the bing space needs gene")
    assert "geneinfo" in err[0] and "{" not in err[0]


def test_cli_similarity_and_cluster_on_a_store_without_gene_info(fixtures, tmp_path):
    url = str(tmp_path / "s.zarr")
    convert(fixtures / EZID, url)
    common = ["--scheduler", "none"]
    assert main(["similarity", url, "--k", "3", *common]) == 0
    assert open_member(url, "similarity/pearson_landmark").sizes["rank"] == 3
    assert main(["cluster", url, "--k", "2", "--components", "3", "--name", "km", *common]) == 0
    assert open_member(url, "clusters/km").sizes["sig"] == 10


def test_cli_choices_come_from_the_types():
    from cmapdask.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    opts = {o: a for a in subs["similarity"]._actions for o in a.option_strings}
    assert tuple(opts["--space"].choices) == get_args(Space)
    assert tuple(opts["--metric"].choices) == get_args(SimilarityMetric)
    opts = {o: a for a in subs["query"]._actions for o in a.option_strings}
    assert tuple(opts["--metric"].choices) == get_args(ConnectivityMetric)


# ----------------------------------------------------------------------------- missing values


@pytest.mark.parametrize(
    "value",
    [None, np.nan, float("nan"), np.float32("nan"), pd.NA, pd.NaT, -666, -666.0, np.int64(-666)]
    + ["-666", " -666 ", "-666.0", "-666.000000", "", b"-666"],
)
def test_missing(value):
    assert is_missing(value)


@pytest.mark.parametrize(
    "value", [0, 0.0, -665, "BRD-K1", "nan-like", "666", np.float32(1.5), True, False, "None"]
)
def test_not_missing(value):
    assert not is_missing(value)


def test_labels_are_str_or_none():
    out = labels(np.array(["a", None, np.nan, "-666", 3, 4.5, ""], dtype=object))
    assert out.tolist() == ["a", None, None, None, "3", "4.5", None]
    assert out.dtype == object


# ----------------------------------------------------------------------------- checks, provenance


def test_dataset_check_and_name():
    ds = _ds(["a", "b"])
    check_signatures(ds)
    assert dataset_name(ds) == "signature dataset"
    ds.attrs["cmapdask"] = {"source": {"name": "x.gctx", "url": "s3://b/x.gctx"}}
    assert dataset_name(ds) == "s3://b/x.gctx"
    ds.attrs["store_url"] = "s3://b/s.zarr"
    assert dataset_name(ds) == "s3://b/s.zarr"
    with pytest.raises(MetadataError, match="s3://b/s.zarr: duplicate gene id 'a'"):
        check_signatures(ds.assign_coords(gene=np.array(["a", "a"], dtype=object)))
    with pytest.raises(InputError, match="dims"):
        check_signatures(ds.transpose("gene", "sig"))
    with pytest.raises(InputError, match="no signatures"):
        check_signatures(ds.isel(sig=slice(0, 0)))
    with pytest.raises(InputError, match="thing: expected an xarray Dataset"):
        check_signatures(ds["expr"], "thing")


def test_one_provenance_record_everywhere():
    from cmapdask import __version__
    from cmapdask.clustering import hierarchical_perts
    from cmapdask.enrich import enrich_ranked

    rec = provenance_record("m", a=1)
    assert rec == {"method": "m", "package_version": __version__, "a": 1}
    ds = _ds(_genes())
    results = [
        similarity(ds, k=2, space="all"),
        kmeans_signatures(ds, n_clusters=2, n_components=2, n_init=1, space="all"),
        hierarchical_perts(
            xr.DataArray(
                np.eye(3),
                dims=("pert", "pert_ref"),
                coords={"pert": list("abc"), "pert_ref": list("abc")},
            ),
            n_clusters=2,
        ),
        enrich_ranked(
            xr.DataArray(
                np.arange(6.0)[None, :],
                dims=("query", "sig"),
                coords={"query": ["q"], "sig": list("abcdef")},
            ),
            {"s": ["a", "b"]},
            permutations=10,
        ),
    ]
    for res in results:
        prov = res.attrs["cmapdask"]
        assert list(prov)[:2] == ["method", "package_version"]
        assert prov["package_version"] == __version__
