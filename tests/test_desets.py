"""Up/down query sets from a differential-expression table: library and command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cmapdask.connectivity.desets import de_gene_sets
from cmapdask.errors import InputError
from cmapdask.io.gmt import read_gmt
from cmapdask.io.store import write_store

N_GENE = 400


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(7)
    fs = np.array(["landmark"] * 100 + ["best inferred"] * 150 + ["inferred"] * 150, dtype=object)
    rng.shuffle(fs)
    ds = xr.Dataset(
        {"expr": (("sig", "gene"), rng.normal(size=(6, N_GENE)).astype(np.float32))},
        coords={
            "sig": np.array([f"S{i}" for i in range(6)], dtype=object),
            "gene": np.array([str(5000 + i) for i in range(N_GENE)], dtype=object),
            "feature_space": ("gene", fs),
            "gene_symbol": ("gene", np.array([f"Sym{i}" for i in range(N_GENE)], dtype=object)),
        },
    )
    path = str(tmp_path_factory.mktemp("de") / "s.zarr")
    write_store(ds, path)
    return path, ds


def _table(ds, seed=1, n=300):
    """A DESeq2-like result over genes given half by symbol (in other case), half by id."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(N_GENE, n, replace=False)
    genes = [
        ds["gene_symbol"].values[i].upper() if k % 2 else ds["gene"].values[i]
        for k, i in enumerate(pick)
    ]
    lfc = np.round(rng.normal(scale=2, size=n), 1)  # ties: table order decides
    return pd.DataFrame(
        {"": genes, "baseMean": 100.0, "log2FoldChange": lfc, "stat": lfc * 3}
    ), pick


def _reference(ds, pick, scores, n, t_up=0.0, t_dn=0.0, space=("landmark", "best inferred")):
    keep = [k for k, i in enumerate(pick) if ds["feature_space"].values[i] in space]
    ids = ds["gene"].values
    up = sorted((k for k in keep if scores[k] > t_up), key=lambda k: (-scores[k], k))[:n]
    dn = sorted((k for k in keep if scores[k] < -t_dn), key=lambda k: (scores[k], k))[:n]
    return [ids[pick[k]] for k in up], [ids[pick[k]] for k in dn]


def test_sets_are_the_top_and_bottom_of_the_space(store, tmp_path):
    url, ds = store
    df, pick = _table(ds)
    path = tmp_path / "treated_vs_ctl.csv"
    df.to_csv(path, index=False)
    lfc = df["log2FoldChange"].to_numpy()
    sets = de_gene_sets(path, url, n=40)
    up, dn = _reference(ds, pick, lfc, 40)
    assert sets == {"treated_vs_ctl_UP": up, "treated_vs_ctl_DN": dn}
    # thresholds, another score column, another space, a tab-separated file
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    sets = de_gene_sets(
        tmp_path / "t.tsv",
        url,
        score_column="stat",
        n=20,
        n_down=15,
        up_threshold=3.0,
        down_threshold=1.5,
        space="landmark",
        name="Q",
    )
    up, _ = _reference(ds, pick, lfc * 3, 20, t_up=3.0, space=("landmark",))
    _, dn = _reference(ds, pick, lfc * 3, 15, t_dn=1.5, space=("landmark",))
    assert sets == {"Q_UP": up, "Q_DN": dn}


def test_bad_tables_are_one_line(store, tmp_path):
    url, ds = store
    df, _ = _table(ds)
    cases = {
        "no score column 'padj'": dict(score_column="padj"),
        "no gene column 'symbol'": dict(gene_column="symbol"),
        "10-150 genes": dict(n=151),
    }
    df.to_csv(tmp_path / "a.csv", index=False)
    for message, kwargs in cases.items():
        with pytest.raises(InputError, match=message):
            de_gene_sets(tmp_path / "a.csv", url, **kwargs)
    nan = df.copy()
    nan.loc[3, "log2FoldChange"] = np.nan
    nan.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(InputError, match="1 rows have no numeric 'log2FoldChange'"):
        de_gene_sets(tmp_path / "nan.csv", url)
    dup = df.copy()
    dup.loc[5, ""] = f"sym{int(df.loc[4, '']) - 5000}"  # row 4 gives an id: its symbol
    dup.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputError, match="is listed twice"):
        de_gene_sets(tmp_path / "dup.csv", url)
    with pytest.raises(InputError, match="up genes .*at least 10"):
        de_gene_sets(tmp_path / "a.csv", url, up_threshold=1e9)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", "de-sets", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_up_and_down_gmt_and_refuses_in_one_line(store, tmp_path):
    url, ds = store
    df, pick = _table(ds, seed=2)
    df.to_csv(tmp_path / "de.csv", index=False)
    up_gmt, dn_gmt = tmp_path / "up.gmt", tmp_path / "dn.gmt"
    p = _cli(tmp_path / "de.csv", url, "--out-up", up_gmt, "--out-down", dn_gmt, "--n", "30")
    assert p.returncode == 0, p.stderr
    up, dn = _reference(ds, pick, df["log2FoldChange"].to_numpy(), 30)
    assert read_gmt(up_gmt) == {"de_UP": up} and read_gmt(dn_gmt) == {"de_DN": dn}
    # an existing output is refused (the output rule), as is a column that is not there
    for extra, message in (
        ((), "already exists"),
        (("--score-column", "padj", "--overwrite"), "no score column 'padj'"),
        (("--n", "5", "--overwrite"), "10-150 genes"),
    ):
        p = _cli(tmp_path / "de.csv", url, "--out-up", up_gmt, "--out-down", dn_gmt, *extra)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert message in p.stderr and "Traceback" not in p.stderr
    assert read_gmt(up_gmt) == {"de_UP": up}  # untouched by the refusals
