"""Synthetic release-shaped data: determinism, chunk independence, tables, planted structure."""

from __future__ import annotations

import json
import tracemalloc

import dask
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmapdask import synthetic as S
from cmapdask.cli import main
from cmapdask.errors import InputError
from cmapdask.io.gctx import read_gctx
from cmapdask.io.gmt import read_gmt
from cmapdask.io.tables import read_table

SMALL = S.synth_design(900, seed=7, n_moas=4, n_compounds=12, n_cells=3)


def _raise_on_compute(*args, **kwargs):
    raise AssertionError("something was computed")


# ----------------------------------------------------------------------------- genes


def test_embedded_landmarks_equal_the_fixture(fixtures):
    grp = (fixtures / "cmapm" / "landmark_gene_ids_n978.grp").read_text()
    expected = [line.strip() for line in grp.splitlines() if line.strip()]
    assert list(S.landmark_gene_ids()) == expected
    assert len(expected) == 978
    from importlib.resources import files

    assert files("cmapdask").joinpath("data/landmark_gene_ids_n978.txt").read_text() == grp


@pytest.mark.parametrize("genes,n", [("landmark", 978), ("bing", 10174), ("all", 12328)])
def test_gene_spaces(genes, n):
    ids = S.synth_gene_ids(genes)
    assert len(ids) == n and len(set(ids)) == n
    assert all(isinstance(g, str) and g.isdigit() and int(g) > 0 for g in ids)
    assert list(ids[:978]) == list(S.landmark_gene_ids())
    assert list(S.synth_gene_ids("all")[:n]) == list(ids)  # nested spaces
    info = S.synth_geneinfo(S.synth_design(1, genes=genes))
    assert tuple(info.columns) == S.GENEINFO_COLUMNS
    assert info["gene_id"].astype(str).tolist() == list(ids)
    counts = info["feature_space"].value_counts().to_dict()
    assert counts["landmark"] == 978
    assert counts.get("best inferred", 0) == (9196 if genes != "landmark" else 0)
    assert counts.get("inferred", 0) == (2154 if genes == "all" else 0)


def test_gene_values_do_not_depend_on_the_gene_space():
    kw = dict(seed=3, n_moas=3, n_compounds=6, n_cells=2)
    lm = S.synth_block(S.synth_design(40, genes="landmark", **kw), 0, 40)
    bing = S.synth_block(S.synth_design(40, genes="bing", **kw), 0, 40)
    full = S.synth_block(S.synth_design(40, genes="all", **kw), 0, 40)
    assert full.shape == (40, 12328) and bing.shape == (40, 10174)
    np.testing.assert_array_equal(full[:, :978], lm)
    np.testing.assert_array_equal(full[:, :10174], bing)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_data_other_seed_other_data():
    a = S.synth_block(SMALL, 0, SMALL.n_sigs)
    b = S.synth_block(S.synth_design(900, seed=7, n_moas=4, n_compounds=12, n_cells=3), 0, 900)
    c = S.synth_block(S.synth_design(900, seed=8, n_moas=4, n_compounds=12, n_cells=3), 0, 900)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    pd.testing.assert_frame_equal(
        S.synth_siginfo(SMALL),
        S.synth_siginfo(S.synth_design(900, seed=7, n_moas=4, n_compounds=12, n_cells=3)),
    )
    assert a.dtype == np.float32 and np.isfinite(a).all()
    assert np.abs(a).max() <= S.CLIP


def test_prefix_of_a_longer_run():
    short = S.synth_design(500, seed=2, n_moas=4, n_compounds=12)
    long = S.synth_design(1300, seed=2, n_moas=4, n_compounds=12)
    np.testing.assert_array_equal(S.synth_block(short, 0, 500), S.synth_block(long, 0, 500))
    pd.testing.assert_frame_equal(S.synth_siginfo(short), S.synth_siginfo(long, stop=500))


@pytest.mark.parametrize("chunks", [900, 384, 100, (1, 383, 2, 500, 14), (899, 1), (450, 450)])
def test_dask_equals_numpy_reference_for_any_chunks(chunks):
    ref = S.synth_block(SMALL, 0, SMALL.n_sigs)
    arr = S.synth_expr(SMALL, chunks=chunks)
    assert arr.shape == ref.shape and arr.dtype == np.float32
    np.testing.assert_array_equal(arr.compute(scheduler="threads"), ref)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=12))
def test_any_split_of_the_rows_gives_the_same_values(sizes):
    ref = S.synth_block(SMALL, 0, SMALL.n_sigs)
    bounds = np.minimum(np.cumsum([0, *sizes]), SMALL.n_sigs)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        np.testing.assert_array_equal(S.synth_block(SMALL, int(lo), int(hi)), ref[lo:hi])
        sig = S.synth_siginfo(SMALL, start=int(lo), stop=int(hi))
        assert len(sig) == hi - lo


def test_iter_blocks_matches_and_bounds_block_size():
    ref = S.synth_block(SMALL, 0, SMALL.n_sigs)
    ids = S.synth_siginfo(SMALL)["sig_id"].tolist()
    got_ids, got = [], []
    for sig_ids, block in S.iter_synth_blocks(SMALL, block_size=250):
        assert len(sig_ids) == block.shape[0] <= 250
        got_ids.extend(sig_ids)
        got.append(block)
    assert got_ids == ids
    np.testing.assert_array_equal(np.concatenate(got), ref)


# ----------------------------------------------------------------------------- memory, laziness


def test_a_block_regenerates_only_the_plate_sets_it_overlaps(monkeypatch):
    calls = []
    real = S._tile_values

    def counting(design, tile, *args, **kwargs):
        calls.append(tile.t)
        return real(design, tile, *args, **kwargs)

    monkeypatch.setattr(S, "_tile_values", counting)
    S.synth_block(SMALL, 400, 500)
    assert calls == [1]
    calls.clear()
    S.synth_block(SMALL, 380, 390)
    assert calls == [0, 1]


def test_generation_memory_is_bounded_by_the_block():
    design = S.synth_design(20000, seed=1, n_moas=8, n_compounds=200)
    block = 1000
    total = design.n_sigs * design.n_genes * 4  # 78 MB
    tracemalloc.start()
    try:
        n = 0
        for _, values in S.iter_synth_blocks(design, block_size=block):
            n += values.shape[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == design.n_sigs
    # one block (3.9 MB) + one plate set + cached direction tables, far below the total
    assert peak < 8 * block * design.n_genes * 4 < total


def test_expr_and_dataset_are_lazy():
    with dask.config.set(scheduler=_raise_on_compute):
        arr = S.synth_expr(SMALL, chunks=100)
        ds = S.synth_dataset(SMALL, chunks=(500, 400))
        ds_meta = S.synth_dataset(SMALL, metadata="tables")
        with pytest.raises(AssertionError, match="computed"):
            arr.sum().compute()
    assert ds.expr.chunks == ((500, 400), (978,))
    assert ds_meta.expr.data.npartitions >= 1


def test_dataset_follows_the_data_model():
    ds = S.synth_dataset(SMALL, chunks=300, metadata="tables")
    assert ds.expr.dims == ("sig", "gene") and ds.expr.dtype == np.float32
    assert ds.sig.dtype == object and all(isinstance(s, str) for s in ds.sig.values)
    assert ds.gene.dtype == object and list(ds.gene.values) == list(S.landmark_gene_ids())
    assert ds["pert_dose_unit"].dtype == object
    vehicle = ds["pert_type"].values == "ctl_vehicle"
    # missing text: None in the arrays we build (xarray itself stores None as NaN)
    assert pd.isna(ds["pert_idose"].values[vehicle]).all()
    assert all(isinstance(v, str) for v in ds["pert_idose"].values[~vehicle])
    assert np.isnan(ds["pert_dose"].values[vehicle]).all()
    assert ds["nsample"].dtype == np.int64 and ds["tas"].dtype == np.float64
    assert ds.attrs["cmapdask"]["parameters"]["seed"] == 7
    np.testing.assert_array_equal(ds.expr.values, S.synth_block(SMALL, 0, SMALL.n_sigs))
    assert list(S.synth_dataset(SMALL).coords) == ["sig", "gene"]  # ids only, like a release


# ----------------------------------------------------------------------------- tables


def test_siginfo_columns_ids_and_derived_fields():
    sig = S.synth_siginfo(SMALL)
    assert tuple(sig.columns) == S.SIGINFO_COLUMNS
    assert len(sig) == SMALL.n_sigs and sig["sig_id"].is_unique
    assert not sig["sig_id"].str.contains("/").any()
    assert set(sig["pert_type"]) == {"trt_cp", "ctl_vehicle"}
    vehicle = sig["pert_type"] == "ctl_vehicle"
    assert (sig.loc[vehicle, "pert_id"] == "DMSO").all()
    assert sig.loc[vehicle, "pert_dose"].isna().all()
    assert sig.loc[vehicle, "pert_idose"].isna().all()
    assert vehicle.sum() == 24 * (SMALL.n_sigs // S.TILE) + -(-(SMALL.n_sigs % S.TILE) // 16)
    assert set(sig.loc[~vehicle, "pert_dose"]) == set(S.DOSES_UM)
    assert set(sig.loc[~vehicle, "pert_dose_unit"]) == {"uM"}
    idose = sig["pert_dose"].dropna().map(lambda d: f"{d:g} uM")
    assert (sig["pert_idose"].dropna() == idose).all()
    assert (sig["pert_itime"] == sig["pert_time"].astype(str) + " h").all()
    assert set(sig["cell_iname"]) <= set(S.CELL_LINES[: SMALL.n_cells])
    assert (sig["is_null_sig"] == vehicle.astype(int)).all()
    assert (sig["is_ncs_sig"] == sig["is_exemplar_sig"]).all()
    # ss_ngene is the count of landmarks with |x| >= 2 in the matrix; tas follows §9
    values = S.synth_block(SMALL, 0, SMALL.n_sigs)
    np.testing.assert_array_equal(sig["ss_ngene"], (np.abs(values) >= 2).sum(axis=1))
    cc = np.maximum(sig["cc_q75"].clip(0, 1), 0.001)
    tas = np.sqrt(np.maximum(sig["ss_ngene"], 0.001) * cc / 978)
    np.testing.assert_allclose(sig["tas"], tas, atol=6e-5)
    assert sig["nsample"].between(2, 4).all()
    dets = sig["det_plate"].str.split("|")
    assert (dets.map(len) == sig["nsample"]).all()


def test_exemplars_touchstone_and_replicates():
    design = S.synth_design(4 * S.TILE * 3, seed=11, n_moas=5, n_compounds=40, n_cells=4)
    sig = S.synth_siginfo(design)
    truth = S.synth_truth(design)
    sig["group"] = truth.loc[sig["sig_id"], "group"].to_numpy()
    key = ["group", "pert_id", "pert_idose"]
    per = sig.fillna({"pert_idose": "-"}).groupby(key)["is_exemplar_sig"].sum()
    assert (per == 1).all()  # one exemplar per (group, perturbagen, dose)
    touch = sig[sig["is_touchstone"] == 1]
    assert len(touch) > 0
    assert (touch["is_exemplar_sig"] == 1).all() and (touch["pert_dose"] == 10.0).all()
    assert (touch["pert_type"] == "trt_cp").all()
    assert set(truth.loc[touch["sig_id"], "moa_index"]) == set(range(design.n_moas))
    # replicate plate sets of a group share cell line, time and perturbagens
    plates = sig.groupby("group")[["cell_iname", "pert_time"]].nunique()
    assert (plates == 1).all().all()


def test_compoundinfo_and_pcl_agree():
    cpd = S.synth_compoundinfo(SMALL)
    assert tuple(cpd.columns) == S.COMPOUNDINFO_COLUMNS
    assert cpd["pert_id"].is_unique and len(cpd) == SMALL.n_compounds + 1
    sig = S.synth_siginfo(SMALL)
    assert set(sig["pert_id"]) <= set(cpd["pert_id"])
    pcl = S.synth_pcl(SMALL)
    assert len(pcl) == SMALL.n_moas
    moa_of = dict(zip(cpd["pert_id"], cpd["moa"], strict=False))
    members = []
    for name, (desc, perts) in pcl.items():
        assert name.startswith("CP_") and name == S.pcl_name(desc) and " " not in name
        assert {moa_of[p] for p in perts} == {desc} and len(perts) >= 2
        members.extend(perts)
    assert sorted(members) == sorted(cpd.loc[cpd["pert_id"] != "DMSO", "pert_id"])
    assert pd.isna(moa_of["DMSO"])
    truth = S.synth_truth(SMALL)
    treated = truth["pert_type"] == "trt_cp"
    expected = truth.loc[treated, "pert_id"].map(moa_of).to_numpy()
    assert (truth.loc[treated, "moa"].to_numpy() == expected).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_sigs=0), "n_sigs"),
        (dict(n_sigs=10, seed=-1), "seed"),
        (dict(n_sigs=10, genes="bogus"), "genes"),
        (dict(n_sigs=10, n_moas=5, n_compounds=4), "n_moas"),
        (dict(n_sigs=10, n_cells=17), "n_cells"),
        (dict(n_sigs=10.5), "integer"),
        (dict(n_sigs=10, n_replicates=0), "n_replicates"),
    ],
)
def test_bad_parameters_raise_input_error(kwargs, match):
    n = kwargs.pop("n_sigs")
    with pytest.raises(InputError, match=match):
        S.synth_design(n, **kwargs)


def test_bad_ranges_and_chunks_raise_input_error():
    with pytest.raises(InputError, match="outside"):
        S.synth_block(SMALL, 0, SMALL.n_sigs + 1)
    with pytest.raises(InputError, match="outside"):
        S.synth_siginfo(SMALL, start=5, stop=2)
    with pytest.raises(InputError, match="chunks"):
        S.synth_expr(SMALL, chunks=(100, 100))
    with pytest.raises(InputError, match="block_size"):
        next(S.iter_synth_blocks(SMALL, block_size=0))


# ----------------------------------------------------------------------------- planted structure


@pytest.fixture(scope="module")
def planted():
    design = S.synth_design(6 * S.TILE, seed=5, n_moas=6, n_compounds=60, n_cells=4)
    return design, S.synth_block(design, 0, design.n_sigs).astype(np.float64), S.synth_truth(design)


def test_same_moa_signatures_correlate_more_than_different_moa(planted):
    design, x, truth = planted
    strong = np.flatnonzero(truth["pert_dose"].to_numpy() >= 3.33)
    z = x[strong] - x[strong].mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    corr = z @ z.T
    moa = truth["moa_index"].to_numpy()[strong]
    cpd = truth["pert_id"].to_numpy(dtype=object)[strong]
    cell = truth["cell_iname"].to_numpy(dtype=object)[strong]
    iu = np.triu_indices(len(strong), 1)

    def mean(mask):
        return corr[iu][mask[iu]].mean()

    same_moa = moa[:, None] == moa[None]
    same_cpd = cpd[:, None] == cpd[None]
    other_cell = cell[:, None] != cell[None]
    across = mean(same_moa & ~same_cpd & other_cell)  # the MoA alone, not cell or compound
    unrelated = mean(~same_moa & other_cell)
    assert across > 0.15 and abs(unrelated) < 0.05
    assert mean(same_cpd) > mean(same_moa & ~same_cpd)  # compound-specific component
    # nearest neighbour of a strong signature shares its MoA
    np.fill_diagonal(corr, -np.inf)
    assert (moa[corr.argmax(axis=1)] == moa).mean() > 0.9


def test_moa_directions_dose_time_and_vehicles(planted):
    design, x, truth = planted
    u = S.synth_moa_directions(design)
    assert u.dims == ("moa", "gene") and u.shape == (design.n_moas, design.n_genes)
    np.testing.assert_allclose((u.values != 0).mean(axis=1), S.MOA_SUPPORT, atol=0.002)
    proj = x @ (u.values / np.linalg.norm(u.values, axis=1, keepdims=True)).T.astype(np.float64)
    treated = truth["moa_index"].to_numpy() >= 0
    moa = truth["moa_index"].to_numpy()
    strong = treated & (truth["pert_dose"].to_numpy() == 10.0)
    assert (proj[strong].argmax(axis=1) == moa[strong]).mean() > 0.95
    own = proj[treated, moa[treated]]
    doses = truth["pert_dose"].to_numpy()[treated]
    by_dose = [own[doses == d].mean() for d in S.DOSES_UM]
    assert np.all(np.diff(by_dose) > 0)  # stronger with dose
    assert np.corrcoef(own, truth["strength"].to_numpy()[treated])[0, 1] > 0.9
    vehicle = ~treated
    assert np.abs(proj[vehicle]).mean() < 1.0 < np.abs(own[doses == 10.0]).mean() / 5


# ----------------------------------------------------------------------------- files and CLI


def test_cli_writes_a_release_shaped_folder(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(
        [
            "synth",
            str(out),
            "--n-sigs",
            "700",
            "--seed",
            "4",
            "--n-moas",
            "3",
            "--n-compounds",
            "9",
            "--n-replicates",
            "1",
            "--block-size",
            "250",
            "--scheduler",
            "none",
            "--quiet",
        ]
    )
    assert rc == 0
    # genetic perturbagens are on by default in the CLI (group 1: the second plate set)
    design = S.synth_design(700, seed=4, n_moas=3, n_compounds=9, n_replicates=1, genetic=True)
    printed = capsys.readouterr().out.split()
    gctx = out / "synth_landmark_n700x978.gctx"
    assert str(gctx) in printed
    ds = read_gctx(gctx)
    assert list(ds.coords) == ["sig", "gene"]
    np.testing.assert_array_equal(ds.expr.values, S.synth_block(design, 0, 700))
    assert list(ds.gene.values) == list(S.landmark_gene_ids())

    sig = pd.read_csv(out / "siginfo.txt", sep="\t", dtype=str, keep_default_na=False)
    assert tuple(sig.columns) == S.SIGINFO_COLUMNS
    assert sig["sig_id"].tolist() == list(ds.sig.values)
    vehicle = sig["pert_type"] != "trt_cp"
    assert (sig.loc[vehicle, ["pert_idose", "pert_dose", "pert_dose_unit"]] == "-666").all().all()
    assert set(sig.loc[~vehicle, "pert_idose"]) == {f"{d:g} uM" for d in S.DOSES_UM}
    assert set(sig["pert_type"]) == {"trt_cp", "ctl_vehicle", "ctl_vector", *S.GENETIC_TYPES}
    expected = S.synth_siginfo(design)
    np.testing.assert_allclose(sig["tas"].astype(float), expected["tas"])
    np.testing.assert_array_equal(sig["ss_ngene"].astype(int), expected["ss_ngene"])

    gene = pd.read_csv(out / "geneinfo.txt", sep="\t", dtype=str, keep_default_na=False)
    assert tuple(gene.columns) == S.GENEINFO_COLUMNS and len(gene) == 978
    assert (gene["ensembl_id"] == "-666").all()
    cpd = pd.read_csv(out / "compoundinfo.txt", sep="\t", dtype=str, keep_default_na=False)
    assert tuple(cpd.columns) == S.COMPOUNDINFO_COLUMNS and len(cpd) == 10
    gen = pd.read_csv(out / "geneticinfo.txt", sep="\t", dtype=str, keep_default_na=False)
    assert tuple(gen.columns) == S.GENETICINFO_COLUMNS
    assert set(gen["pert_id"]) >= set(sig.loc[sig["pert_type"].isin(S.GENETIC_TYPES), "pert_id"])
    # every planted target is a gene with genetic perturbagens
    assert set(cpd["target"].replace("-666", np.nan).dropna()) <= set(gen["cmap_name"])
    lines = (out / "pcl.gmt").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        name, desc, *perts = line.split("\t")
        assert name == S.pcl_name(desc)
        assert set(cpd.loc[cpd["pert_id"].isin(perts), "moa"]) == {desc}
    assert json.loads((out / "synth.json").read_text())["parameters"]["n_compounds"] == 9
    # the project's own readers take the files back
    back = read_table(out / "siginfo.txt")
    for col in S.SIGINFO_COLUMNS:
        a, b = back[col].to_numpy(dtype=object), expected[col].to_numpy(dtype=object)
        assert (pd.isna(a) == pd.isna(b)).all(), col
        ok = ~pd.isna(a)
        if pd.api.types.is_float_dtype(expected[col]):
            np.testing.assert_allclose(a[ok].astype(float), b[ok].astype(float), rtol=1e-6)
        else:
            assert (a[ok] == b[ok]).all(), col
    assert read_gmt(out / "pcl.gmt") == {k: v for k, (_, v) in S.synth_pcl(design).items()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "x"
    with pytest.raises(SystemExit) as exit_:  # refused by the option's type, before any work
        main(["synth", str(out), "--n-sigs", "0", "--scheduler", "none", "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n-sigs" in err
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["synth", str(out), "--n-sigs", "5", "--scheduler", "none", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            [
                "synth",
                str(out),
                "--n-sigs",
                "5",
                "--force",
                "--genes",
                "bing",
                "--scheduler",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "synth_bing_n5x10174.gctx").exists() and (out / "keep.txt").exists()


def test_write_to_an_fsspec_url_and_refuse_a_file(tmp_path):
    import fsspec

    design = S.synth_design(300, seed=1, n_moas=2, n_compounds=4)
    with dask.config.set(scheduler="threads"):
        paths = S.write_synthetic("memory://synth-test/out", design, block_size=128)
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/synth-test/out", detail=False)) == sorted(
        p.rsplit("/", 1)[1] for p in paths.values()
    )
    np.testing.assert_array_equal(
        read_gctx(paths["gctx"]).expr.values, S.synth_block(design, 0, 300)
    )
    text = fs.cat(paths["siginfo"]).decode()
    assert text.count("\n") == 301 and text.startswith("sig_id\tpert_id\t")
    fs.rm("/synth-test", recursive=True)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        S.write_synthetic(afile, design)


@settings(max_examples=8, deadline=None)
@given(
    n_sigs=st.integers(1, 800),
    seed=st.integers(0, 2**63),
    n_moas=st.integers(1, 8),
    extra=st.integers(0, 70),
    n_cells=st.integers(1, 16),
    n_replicates=st.integers(1, 4),
    chunk=st.integers(1, 700),
)
def test_invariants_hold_for_any_design(n_sigs, seed, n_moas, extra, n_cells, n_replicates, chunk):
    design = S.synth_design(
        n_sigs,
        seed=seed,
        n_moas=n_moas,
        n_compounds=n_moas + extra,
        n_cells=n_cells,
        n_replicates=n_replicates,
    )
    sig = S.synth_siginfo(design)
    truth = S.synth_truth(design)
    assert len(sig) == n_sigs and sig["sig_id"].is_unique
    assert truth.index.tolist() == sig["sig_id"].tolist()
    cpd = S.synth_compoundinfo(design)
    assert set(sig["pert_id"]) <= set(cpd["pert_id"])
    moa_of = dict(zip(cpd["pert_id"], cpd["moa"], strict=False))
    treated = truth["pert_type"] == "trt_cp"
    assert (truth.loc[treated, "moa"] == truth.loc[treated, "pert_id"].map(moa_of)).all()
    assert (truth.loc[~treated, "strength"] == 0).all()
    assert (truth.loc[treated, "strength"] > 0).all()
    sig["group"] = truth["group"].to_numpy()
    per = sig.fillna({"pert_idose": "-"}).groupby(["group", "pert_id", "pert_idose"])
    assert (per["is_exemplar_sig"].sum() == 1).all()
    ref = S.synth_block(design, 0, n_sigs)
    got = S.synth_expr(design, chunks=chunk).compute(scheduler="sync")
    np.testing.assert_array_equal(got, ref)
    assert np.isfinite(ref).all() and ref.dtype == np.float32
