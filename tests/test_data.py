"""Data access: filters against plain pandas over the release's tables, SQL against pandas,
``matrix`` against ``read_gctx``, the command line, and the same on an S3 store."""

from __future__ import annotations

import subprocess
import sys
import uuid

import dask
import numpy as np
import pandas as pd
import pytest

import cmapdask
import cmapdask.data as cd
from cmapdask.cli import main
from cmapdask.errors import InputError, MetadataError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    design = cmapdask.synth_design(1500, genes="landmark", seed=3, n_cells=3)
    with dask.config.set(scheduler="threads"):
        paths = cmapdask.write_synthetic(root / "release", design)
        store = str(root / "store.zarr")
        cmapdask.convert(
            paths["gctx"],
            store,
            sig_info=paths["siginfo"],
            gene_info=paths["geneinfo"],
            compound_info=paths["compoundinfo"],
        )
    # the reference: the release's files as plain pandas reads them (-666 is missing)
    tables = {
        name: pd.read_csv(paths[name], sep="\t", dtype=str, keep_default_na=False).replace(
            "-666", np.nan
        )
        for name in ("siginfo", "geneinfo", "compoundinfo")
    }
    return {"store": store, "paths": paths, "tables": tables, "root": root}


def _ids(df, col="sig_id"):
    return sorted(df[col].astype(str))


def test_tables_member_kept_at_convert(release):
    assert "tables" in cmapdask.list_members(release["store"])
    assert cd.store_tables(release["store"]) == [
        "cellinfo",
        "compoundinfo",
        "geneinfo",
        "siginfo",
    ]


@pytest.mark.parametrize(
    ("kwargs", "pandas_filter"),
    [
        ({"cell_iname": "A549"}, lambda t: t.cell_iname == "A549"),
        (
            {"pert_type": "trt_cp,ctl_vehicle"},
            lambda t: t.pert_type.isin(["trt_cp", "ctl_vehicle"]),
        ),
        (
            {"cmap_name": ["synth-00001", "synth-00002"], "cell_iname": "PC3"},
            lambda t: t.cmap_name.isin(["synth-00001", "synth-00002"]) & (t.cell_iname == "PC3"),
        ),
        ({"is_touchstone": 1}, lambda t: t.is_touchstone == "1"),
        ({"pert_itime": "24h"}, lambda t: t.pert_itime == "24 h"),
    ],
)
def test_sigs_filters_equal_pandas(release, kwargs, pandas_filter):
    t = release["tables"]["siginfo"]
    want = t[pandas_filter(t)]
    assert len(want) > 0
    got = cd.sigs(release["store"], **kwargs)
    assert _ids(got) == _ids(want)


def test_dose_matches_in_any_spelling(release):
    t = release["tables"]["siginfo"]
    dose = next(d for d in t.pert_idose.dropna() if d.endswith(" uM"))
    want = _ids(t[t.pert_idose == dose])
    for spelling in (dose, dose.replace(" uM", " µM"), dose.replace(" uM", "uM"), dose.lower()):
        assert _ids(cd.sigs(release["store"], pert_idose=spelling)) == want, spelling


def test_moa_and_target_filters(release):
    t, c = release["tables"]["siginfo"], release["tables"]["compoundinfo"]
    moa = c.moa.iloc[0]
    perts = set(c.pert_id[c.moa == moa])
    assert _ids(cd.sigs(release["store"], moa=moa)) == _ids(t[t.pert_id.isin(perts)])
    got = cd.compounds(release["store"], moa=moa)
    assert sorted(got.pert_id) == sorted(perts)
    target = c.target.iloc[1]
    assert sorted(cd.compounds(release["store"], target=target).pert_id) == sorted(
        c.pert_id[c.target == target]
    )


def test_where_fields_and_limit(release):
    t = release["tables"]["siginfo"]
    got = cd.sigs(release["store"], where="tas > 0.3 and cell_iname == 'A549'", fields="all")
    want = t[(t.tas.astype(float) > 0.3) & (t.cell_iname == "A549")]
    assert _ids(got) == _ids(want)
    assert set(got.columns) >= set(t.columns)
    few = cd.sigs(release["store"], cell_iname="A549", limit=5)
    assert len(few) == 5 and list(few.columns[:2]) == ["sig_id", "pert_id"]
    with pytest.raises(InputError, match="limit"):
        cd.sigs(release["store"], limit=0)


def test_where_is_parsed_never_evaluated(release, tmp_path):
    flag = tmp_path / "ran"
    with pytest.raises(Exception, match="where|expression|@"):
        cd.sigs(release["store"], where=f"@pd.io.common.os.system('touch {flag}') == 0")
    assert not flag.exists()


def test_genes_cells_moas_targets(release):
    g = release["tables"]["geneinfo"]
    assert _ids(cd.genes(release["store"], feature_space="landmark"), "gene_id") == _ids(
        g[g.feature_space == "landmark"], "gene_id"
    )
    sym = g.gene_symbol.iloc[:3].tolist()
    assert sorted(cd.genes(release["store"], gene_symbol=",".join(sym)).gene_symbol) == sorted(sym)
    t = release["tables"]["siginfo"]
    cells = cd.cells(release["store"])
    assert (
        dict(zip(cells.cell_iname, cells.n_sigs, strict=True))
        == t.cell_iname.value_counts().to_dict()
    )
    c = release["tables"]["compoundinfo"]
    m = cd.moas(release["store"])
    assert (
        dict(zip(m.moa, m.n_compounds, strict=True)) == c.groupby("moa").pert_id.nunique().to_dict()
    )
    tg = cd.targets(release["store"])
    assert tg.n_compounds.sum() == c.groupby("target").pert_id.nunique().sum()


def test_unknown_field_and_table(release):
    with pytest.raises(MetadataError, match="no geneticinfo|pert_type"):
        cd.genetic_perts(release["store"], gene_id="1")  # derived: no such field
    assert cd.genetic_perts(release["store"]).empty


def test_sql_equals_pandas(release):
    t, c = release["tables"]["siginfo"], release["tables"]["compoundinfo"]
    got = cd.sql(
        release["store"], "SELECT cmap_name, count(*) AS n FROM siginfo GROUP BY 1 ORDER BY 1"
    )
    want = t.groupby("cmap_name").size()
    assert dict(zip(got.cmap_name, got.n, strict=True)) == want.to_dict()
    joined = cd.sql(
        release["store"],
        "SELECT s.sig_id, c.moa FROM siginfo s JOIN compoundinfo c USING (pert_id) "
        "ORDER BY s.sig_id",
    )
    ref = t.merge(c[["pert_id", "moa"]], on="pert_id").sort_values("sig_id")
    assert joined.sig_id.tolist() == ref.sig_id.tolist()
    assert joined.moa.tolist() == ref.moa.tolist()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "DROP TABLE siginfo",
        "SELECT 1; SELECT 2",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT nope FROM siginfo",
    ],
)
def test_sql_refuses(release, bad):
    with pytest.raises(InputError, match="SQL|SELECT|empty"):
        cd.sql(release["store"], bad)


def test_matrix_equals_read_gctx(release):
    t = release["tables"]["siginfo"]
    rng = np.random.default_rng(0)
    ids = t.sig_id.to_numpy()[rng.choice(len(t), 25, replace=False)]
    genes = release["tables"]["geneinfo"].gene_id.to_numpy()[[5, 1, 700]]
    ds = cd.matrix(release["store"], sigs=list(ids), genes=list(genes))
    ref = cmapdask.read_gctx(release["paths"]["gctx"], sigs=list(ids), genes=list(genes))
    assert list(ds.sig.values) == list(ids) and list(ds.gene.values) == list(genes)
    np.testing.assert_array_equal(ds.expr.values, ref.expr.values)
    sym = release["tables"]["geneinfo"].gene_symbol.iloc[[5, 1]].tolist()
    by_symbol = cd.matrix(release["store"], sigs=cd.sigs(release["store"], limit=3), genes=sym)
    assert list(by_symbol.gene.values) == list(genes[:2])
    assert cd.matrix(release["store"], space="landmark").sizes["gene"] == 978
    with pytest.raises(InputError, match="not in the store"):
        cd.matrix(release["store"], sigs=["nope"])


def test_old_release_names(release, tmp_path):
    t = release["tables"]["siginfo"].rename(
        columns={"cmap_name": "pert_iname", "cell_iname": "cell_id"}
    )
    sig_info = tmp_path / "sig_info.txt"
    t.drop(columns=["pert_idose"]).rename(columns={"pert_dose": "pert_idose"}).to_csv(
        sig_info, sep="\t", index=False
    )
    store = str(tmp_path / "old.zarr")
    with dask.config.set(scheduler="threads"):
        cmapdask.convert(release["paths"]["gctx"], store, sig_info=sig_info)
    want = t[(t.pert_iname == "synth-00003") & (t.cell_id == "PC3")]
    got = cd.sigs(store, cmap_name="synth-00003", cell_iname="PC3")
    assert _ids(got) == _ids(want) and len(want)
    # a store without the tables member still answers, from its coordinates
    import shutil

    shutil.rmtree(f"{store}/tables")
    cd.tables._CACHE.clear()
    assert _ids(cd.sigs(store, cmap_name="synth-00003", cell_iname="PC3")) == _ids(want)


def test_cli(release, tmp_path, capsys):
    st = release["store"]
    assert main(["sigs", st, "--cell", "A549", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[0] == "sig_id" and len(lines) == 3
    tsv, pq, gctx = tmp_path / "a.tsv", tmp_path / "a.parquet", tmp_path / "a.gctx"
    assert main(["sigs", st, "--cmap-name", "synth-00002", "--out", str(tsv)]) == 0
    assert main(["sigs", st, "--cmap-name", "synth-00002", "--out", str(pq)]) == 0
    assert main(["sigs", st, "--cmap-name", "synth-00002", "--out", str(gctx)]) == 0
    a, b = pd.read_csv(tsv, sep="\t"), pd.read_parquet(pq)
    assert a.sig_id.tolist() == b.sig_id.tolist()
    ds = cmapdask.read_gctx(gctx)
    assert list(ds.sig.values) == a.sig_id.tolist()
    ref = cd.matrix(st, sigs=a.sig_id.tolist())
    np.testing.assert_array_equal(ds.expr.values, ref.expr.values)
    assert main(["compounds", st, "--moa", release["tables"]["compoundinfo"].moa.iloc[0]]) == 0
    assert main(["sql", st, "SELECT count(*) AS n FROM siginfo"]) == 0
    assert "1500" in capsys.readouterr().out
    assert main(["sql", st, "DELETE FROM siginfo"]) == 2
    assert main(["sigs", st, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "cmapdask: error:" in err


def test_cli_pipes_without_traceback(release):
    proc = subprocess.run(
        f"{sys.executable} -m cmapdask sigs {release['store']} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("sig_id") or "sig_id" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.s3
def test_s3_store(release, s3_server):
    url = f"s3://cmapdask-test/{uuid.uuid4().hex[:8]}/store.zarr"
    p = release["paths"]
    with dask.config.set(scheduler="threads"):
        cmapdask.convert(
            p["gctx"],
            url,
            sig_info=p["siginfo"],
            compound_info=p["compoundinfo"],
            storage_options=s3_server,
        )
    local = cd.sigs(
        release["store"], cell_iname="PC3", moa=release["tables"]["compoundinfo"].moa.iloc[0]
    )
    remote = cd.sigs(
        url,
        cell_iname="PC3",
        moa=release["tables"]["compoundinfo"].moa.iloc[0],
        storage_options=s3_server,
    )
    assert _ids(remote) == _ids(local)
    q = "SELECT pert_type, count(*) AS n FROM siginfo GROUP BY 1 ORDER BY 1"
    pd.testing.assert_frame_equal(
        cd.sql(url, q, storage_options=s3_server), cd.sql(release["store"], q)
    )
    ids = local.sig_id.tolist()[:7]
    np.testing.assert_array_equal(
        cd.matrix(url, sigs=ids, storage_options=s3_server).expr.values,
        cd.matrix(release["store"], sigs=ids).expr.values,
    )
