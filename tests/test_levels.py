"""L1000 levels: the Broad's fixtures, cmapPy's numbers, dask vs numpy, laziness, bad input."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata, spearmanr

from cmapdask.errors import InputError, MetadataError
from cmapdask.io.gct import read_gct
from cmapdask.io.gctx import read_gctx
from cmapdask.levels import kernels, level4, level5, modz, quantile_normalize, robust_zscore
from cmapdask.levels.groups import plan_groups

# -- helpers --------------------------------------------------------------------------------


def _raise_on_compute(dsk, keys, **kwargs):
    raise AssertionError("dask computed something while building a lazy result")


def _dataset(x, *, chunks=None, **sig_fields) -> xr.Dataset:
    n, g = x.shape
    data = da.from_array(x, chunks=(chunks or n, g)) if chunks is not False else x
    coords = {"sig": [f"s{i}" for i in range(n)], "gene": [f"g{j}" for j in range(g)]}
    coords.update({k: ("sig", np.asarray(v, dtype=object)) for k, v in sig_fields.items()})
    return xr.Dataset({"expr": (("sig", "gene"), data)}, coords=coords)


def _ref_robust_z(x, plates, controls=None, floor=0.1):
    """Plain per-plate loop: the numpy reference for the dask paths."""
    out = np.empty(x.shape, dtype=np.float64)
    for p in pd.unique(plates):
        rows = np.flatnonzero(plates == p)
        ref = x[rows] if controls is None else x[rows[controls[rows]]]
        ref = ref.astype(np.float64)
        med = np.median(ref, axis=0)
        mad = np.median(np.abs(ref - med), axis=0)
        out[rows] = (x[rows] - med) / (1.4826 * np.maximum(mad, floor))
    return out.astype(np.float32)


def _ref_qnorm(x):
    x = x.astype(np.float64)
    target = np.median(np.sort(x, axis=1), axis=0)
    return np.interp(rankdata(x, axis=1) - 1, np.arange(x.shape[1]), target).astype(np.float32)


def _ref_modz(x, keys, lm):
    """Per-group loop with scipy's spearmanr: (modz rows, weights, q75, ss_ngene) per key."""
    out = {}
    for k in pd.unique(keys):
        z = np.clip(x[keys == k].astype(np.float64), -10, 10)
        n = len(z)
        if n == 1:
            w, q75 = np.ones(1), np.nan
        else:
            c = spearmanr(z[:, lm].T).statistic
            c = np.array([[1.0, c], [c, 1.0]]) if n == 2 else c
            pairs = np.clip(c[np.triu_indices(n, 1)], 0, None)
            q75 = np.percentile(pairs, 75, method="hazen")
            np.fill_diagonal(c, 0)
            w = np.maximum(0.5 * np.clip(c, 0, None).sum(1), 0.01)
            w /= w.sum()
        m = w @ z
        out[k] = (m, w, q75, int((np.abs(m[lm]) * np.sqrt(n) >= 2).sum()))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# -- the Broad's fixtures ------------------------------------------------------------------


@pytest.mark.parametrize("plate_field", [None, "det_plate"])
def test_qnorm_matches_cmapm(fixtures, plate_field):
    ds = read_gctx(fixtures / "cmapm" / "gctv13_01.gctx")
    want = read_gctx(fixtures / "cmapm" / "gctv13_01_qnorm.gctx")
    got = quantile_normalize(ds, plate_field=plate_field).expr.values
    np.testing.assert_allclose(got, want.expr.values, rtol=0, atol=5e-7)


@pytest.mark.parametrize("plate_field", [None, "auto"])
def test_robust_z_matches_cmapm(fixtures, plate_field):
    ds = read_gctx(fixtures / "cmapm" / "gctv13_01.gctx")
    want = read_gctx(fixtures / "cmapm" / "gctv13_01_zs.gctx").expr.values
    got = robust_zscore(ds, plate_field=plate_field).expr.values
    # We compute in float64; the fixture was computed in single precision, so at |z| ~ 68
    # the two differ by one float32 ulp (7.6e-6). Relative agreement is ~1e-7.
    np.testing.assert_allclose(got, want, rtol=5e-7, atol=5e-6)


def test_level3_to_level4_matches_cmapm(fixtures):
    ds = read_gct(fixtures / "cmapm" / "level3_n376x490.gct")
    want = read_gct(fixtures / "cmapm" / "level4_n376x490.gct")
    assert list(ds.sig.values) == list(want.sig.values)
    got = level4(ds, plate_field=None).expr.values
    err = np.abs(got - want.expr.values)
    # The Level 3 text is rounded to 4 decimals but the Broad scored the unrounded values:
    # medians/MADs shift by ~5e-5, i.e. up to ~1e-3 relative where MAD is at the 0.1 floor.
    np.testing.assert_allclose(got, want.expr.values, rtol=2e-3, atol=1e-3)
    assert np.median(err) < 2e-4
    assert np.percentile(err, 90) < 1e-3


def test_modz_matches_cmapm(fixtures):
    ds = read_gctx(fixtures / "cmapm" / "distil" / "distil_gct_n6x978.gctx")
    want = read_gctx(fixtures / "cmapm" / "distil" / "modzs_gct_n3x978.gctx")
    got = modz(ds).compute()
    # align groups by their replicate ids
    pos = {d: i for i, d in enumerate(got.distil_id.values)}
    idx = [pos[d] for d in want.distil_id.values]
    got = got.isel(sig=idx)
    assert list(got.gene.values) == list(want.gene.values)
    np.testing.assert_allclose(got.expr.values, want.expr.values, rtol=0, atol=1.2e-6)
    assert got.distil_nsample.values.tolist() == [1, 3, 2]
    assert got.distil_wt.values.tolist() == ["1.00", "0.33,0.45,0.22", "0.50,0.50"]
    assert got.distil_ss_ngene.values.tolist() == want.distil_ss_ngene.values.astype(int).tolist()
    for field in ("distil_cc_q75", "distil_cc_max", "distil_cc_median"):
        w = np.asarray(want[field].values, dtype=float)  # 2-decimal text, -666 -> NaN
        np.testing.assert_allclose(got[field].values, w, rtol=0, atol=0.005 + 1e-9)
    assert np.isnan(got.distil_tas.values[0])
    # the 3-replicate TAS in the fixture used the wrong cc_q75 (README); check the 2-replicate
    np.testing.assert_allclose(got.distil_tas.values[2], want.distil_tas.values[2], rtol=1e-5)
    # group of one: passes through, clipped to [-10, 10]
    np.testing.assert_allclose(
        got.expr.values[0], np.clip(ds.expr.values[0], -10, 10), rtol=0, atol=0
    )


# -- cmapPy's small numbers ---------------------------------------------------------------

_CMAPPY = np.array([[4, 2, 6, 5], [2, 8, 5, 2], [3, 6, 9, 1]], dtype=np.float32)  # genes x A-D


def test_robust_z_population_cmappy():
    ds = _dataset(_CMAPPY.T.copy(), plate=["p"] * 4)
    z = robust_zscore(ds, plate_field="plate").expr.values.T
    want = np.array(
        [
            [-0.3372, -1.6862, 1.0117, 0.3372],
            [-0.6745, 2.0235, 0.6745, -0.6745],
            [-0.4047, 0.4047, 1.2141, -0.9443],
        ]
    )
    np.testing.assert_allclose(z, want, atol=5e-5)


@pytest.mark.parametrize(
    "f_col, checks",
    [
        ([7, 6, 6], {(0, 0): -4.7214, (1, 1): 0.6745, (2, 2): 20.2347, (2, 3): -33.7245}),
        ([8, 6, 6], {(0, 0): -26.9796, (1, 1): 0.6745}),
    ],
)
def test_robust_z_vehicle_cmappy(f_col, checks):
    x = np.column_stack([_CMAPPY, [8, 8, 6], f_col]).T.astype(np.float32)  # A-D, E, F
    kind = ["trt_cp"] * 4 + ["ctl_vehicle"] * 2
    ds = _dataset(x, det_plate=["p"] * 6, pert_type=kind)
    z = robust_zscore(ds, reference="vehicle").expr.values.T  # genes x samples
    for (gene, sample), value in checks.items():
        assert z[gene, sample] == pytest.approx(value, abs=5e-4)
    if f_col == [7, 6, 6]:
        np.testing.assert_allclose(z[:, 0], [-4.7214, -3.3725, -20.2347], atol=5e-4)
        np.testing.assert_allclose(z[:, 3], [-3.3725, -3.3725, -33.7245], atol=5e-4)


def test_weighted_average_cmappy():
    reps = np.array([[1, 2, 3], [2, 8, 6], [6, 8, 9]], dtype=np.float32)  # A, B, C
    ds = _dataset(reps, pert_id=["x"] * 3)
    out = modz(ds, group_by=["pert_id"], landmarks=["g0", "g1", "g2"]).compute()
    np.testing.assert_allclose(out.expr.values[0], [3.125, 5.75, 6.0], atol=1e-6)
    assert out.distil_wt.values[0] == "0.38,0.25,0.38"
    _, w, _ = kernels.modz_groups(reps, np.array([3]), slice(None))
    np.testing.assert_allclose(w, [0.375, 0.25, 0.375])  # raw weight of A is 0.75
    _, w, _ = kernels.modz_groups(reps, np.array([3]), slice(None), weight_floor=0.85)
    np.testing.assert_allclose(w, [1 / 3] * 3)  # the floor lifts every raw weight to 0.85
    one = modz(ds.isel(sig=[1]), group_by=["pert_id"], landmarks=["g0", "g1", "g2"])
    np.testing.assert_array_equal(one.expr.values[0], reps[1])


# -- dask against numpy over chunk layouts --------------------------------------------------


def _plates(rng, n, sizes):
    labels = np.repeat([f"P{i}" for i in range(len(sizes))], sizes)[:n]
    return labels


@pytest.mark.parametrize("in_chunks", [(40,), (7, 13, 1, 19), (3,) * 13 + (1,)])
@pytest.mark.parametrize("chunk_rows", [1, 9, 100])
@pytest.mark.parametrize("shuffle", [False, True])
def test_robust_z_dask_equals_numpy(rng, in_chunks, chunk_rows, shuffle):
    x = rng.normal(5, 2, size=(40, 12)).astype(np.float32)
    x[:, 3] = 1.0  # a constant gene: MAD 0, the floor decides
    plates = _plates(rng, 40, [11, 4, 17, 8])
    if shuffle:  # plates interleaved in the input: grouped lazily, returned in input order
        plates = rng.permutation(plates)
    controls = np.zeros(40, dtype=bool)
    for p in np.unique(plates):
        controls[np.flatnonzero(plates == p)[:3]] = True
    kind = np.where(controls, "ctl_vehicle", "trt_cp")
    ds = _dataset(x, chunks=in_chunks, rna_plate=plates, pert_type=kind)
    ds["expr"] = ds.expr.chunk({"sig": in_chunks})
    got = robust_zscore(ds, chunk_rows=chunk_rows).expr.values
    np.testing.assert_array_equal(got, _ref_robust_z(x, plates))
    got = robust_zscore(ds, reference="vehicle", chunk_rows=chunk_rows).expr.values
    np.testing.assert_array_equal(got, _ref_robust_z(x, plates, controls))
    got = quantile_normalize(ds, plate_field="rna_plate", chunk_rows=chunk_rows).expr.values
    want = np.concatenate([_ref_qnorm(x[plates == p]) for p in pd.unique(plates)])
    order = np.concatenate([np.flatnonzero(plates == p) for p in pd.unique(plates)])
    np.testing.assert_array_equal(got[order], want)


@pytest.mark.parametrize("in_chunks", [(30,), (4, 11, 2, 13)])
def test_whole_matrix_paths_dask_equals_numpy(rng, in_chunks):
    x = rng.normal(0, 1, size=(30, 20)).astype(np.float32)
    x[5, :10] = x[5, 0]  # ties inside a signature: average ranks
    ds = _dataset(x)
    ds["expr"] = ds.expr.chunk({"sig": in_chunks})
    np.testing.assert_array_equal(quantile_normalize(ds).expr.values, _ref_qnorm(x))
    got = robust_zscore(ds, plate_field=None).expr.values
    np.testing.assert_array_equal(got, _ref_robust_z(x, np.zeros(30)))


@pytest.mark.parametrize("in_chunks", [(57,), (17, 1, 25, 14), (5,) * 11 + (2,)])
@pytest.mark.parametrize("chunk_rows", [1, 8, 1000])
@pytest.mark.parametrize("shuffle", [False, True])
def test_modz_dask_equals_numpy(rng, in_chunks, chunk_rows, shuffle):
    n, g = 57, 30
    x = rng.normal(0, 4, size=(n, g)).astype(np.float32)  # some beyond the clip at 10
    sizes = [3, 1, 2, 5, 3, 3, 4, 1, 8, 3, 3, 3, 3, 4, 3, 2, 3, 3]  # sum 57
    pert = np.repeat([f"BRD-{i}" for i in range(len(sizes))], sizes)
    if shuffle:
        pert = rng.permutation(pert)
    lm = np.arange(0, g, 2)
    ds = _dataset(
        x,
        pert_id=pert,
        pert_dose=np.full(n, 10.0),
        pert_time=np.full(n, 24.0),
        cell_id=["MCF7"] * n,
        bead_batch=["b1"] * n,
    )
    ds["expr"] = ds.expr.chunk({"sig": in_chunks})
    out = modz(ds, landmarks=ds.gene.values[lm], chunk_rows=chunk_rows).compute()
    ref = _ref_modz(x, pert, lm)
    assert out.sizes["sig"] == len(ref)
    for i, key in enumerate(pd.unique(pert)):
        m, w, q75, ss = ref[key]
        assert out.sig.values[i] == f"{key}:10:24:MCF7:b1"
        np.testing.assert_allclose(out.expr.values[i], m, rtol=1e-6, atol=1e-6)
        assert out.distil_wt.values[i] == ",".join(f"{v:.2f}" for v in w)
        np.testing.assert_allclose(out.distil_cc_q75.values[i], q75, atol=1e-12, equal_nan=True)
        assert out.distil_ss_ngene.values[i] == ss
        assert out.distil_nsample.values[i] == len(w)
        ids = out.distil_id.values[i].split("|")
        assert ids == list(ds.sig.values[pert == key])


def test_plan_groups_whole_groups_per_chunk():
    codes = np.array([0, 0, 1, 2, 2, 2, 1, 3])
    plan = plan_groups(codes, target_rows=3)
    assert plan.sizes.tolist() == [2, 2, 3, 1]
    assert plan.chunks == (2, 2, 3, 1) and plan.groups_per_chunk == (1, 1, 1, 1)
    assert plan.order.tolist() == [0, 1, 2, 6, 3, 4, 5, 7]
    plan = plan_groups(codes, target_rows=5)
    assert plan.chunks == (4, 4) and plan.groups_per_chunk == (2, 2)
    assert plan_groups(np.array([0, 0, 1]), target_rows=1).is_identity


# -- laziness and a real multi-process cluster ----------------------------------------------


def test_public_functions_are_lazy(rng):
    x = rng.normal(size=(12, 6)).astype(np.float32)
    plates = np.repeat(["a", "b", "c"], 4)
    ds = _dataset(
        x,
        chunks=5,
        rna_plate=plates,
        pert_id=plates,
        pert_dose=np.ones(12),
        pert_time=np.ones(12),
        cell_id=["c"] * 12,
        bead_batch=["b"] * 12,
        pert_type=np.tile(["ctl_vehicle", "trt_cp"], 6),
    )
    with dask.config.set(scheduler=_raise_on_compute):
        results = [
            quantile_normalize(ds),
            quantile_normalize(ds, plate_field="rna_plate"),
            robust_zscore(ds),
            robust_zscore(ds, plate_field=None, reference="vehicle"),
            level4(ds, normalize="quantile"),
            level5(ds, landmarks=list(ds.gene.values)),
        ]
    for r in results:
        assert isinstance(r.expr.data, da.Array)
    stats = results[-1]
    assert all(isinstance(stats[k].data, da.Array) for k in ("distil_cc_q75", "distil_wt"))
    with (
        pytest.raises(AssertionError, match="computed"),
        dask.config.set(scheduler=_raise_on_compute),
    ):
        _ = results[2].expr.values  # the guard itself works


@pytest.mark.cluster
def test_on_multiprocess_cluster(rng, cluster_client):
    # a real `dask scheduler` and two `dask worker` processes (tests/conftest.py)
    x = rng.normal(0, 3, size=(48, 16)).astype(np.float32)
    plates = rng.permutation(np.repeat(["p1", "p2", "p3"], [20, 12, 16]))
    pert = np.repeat([f"k{i}" for i in range(16)], 3)
    ds = _dataset(x, chunks=10, rna_plate=plates, pert_id=pert)
    from distributed import get_task_stream

    with get_task_stream(cluster_client) as ts:
        z = robust_zscore(ds, chunk_rows=16).expr.values
        out = modz(ds, group_by=["pert_id"], landmarks=list(ds.gene.values), chunk_rows=7)
        out = out.compute()
    assert len({t["worker"] for t in ts.data}) == 2  # both worker processes did work
    np.testing.assert_array_equal(z, _ref_robust_z(x, plates))
    ref = _ref_modz(x, pert, np.arange(16))
    np.testing.assert_allclose(
        out.expr.values, np.stack([ref[k][0] for k in pd.unique(pert)]), rtol=1e-6, atol=1e-6
    )


# -- bad input ------------------------------------------------------------------------------


def test_nan_is_a_clear_error_at_compute(rng):
    x = rng.normal(size=(8, 5)).astype(np.float32)
    x[6, 2] = np.nan
    ds = _dataset(x, chunks=3, rna_plate=["a"] * 4 + ["b"] * 4, pert_id=["p"] * 8)
    for lazy in (
        robust_zscore(ds),
        robust_zscore(ds, plate_field=None),
        quantile_normalize(ds),
        modz(ds, group_by=["pert_id"], landmarks=list(ds.gene.values)),
    ):
        with pytest.raises(InputError, match="NaN or infinite.*'s6'"):
            _ = lazy.expr.values


def test_bad_plates_and_groups(rng):
    x = rng.normal(size=(6, 4)).astype(np.float32)
    ds = _dataset(x, rna_plate=["a"] * 5 + ["b"], pert_type=["trt_cp"] * 6, pert_id=["p"] * 6)
    with pytest.raises(InputError, match="fewer than 2 signatures.*plate 'b' has 1"):
        robust_zscore(ds)
    assert robust_zscore(ds, min_reference=1).expr.shape == (6, 4)
    with pytest.raises(InputError, match="vehicle-control wells"):
        robust_zscore(ds, reference="vehicle")
    with pytest.raises(MetadataError, match="no signature field 'plate_x'"):
        robust_zscore(ds, plate_field="plate_x")
    with pytest.raises(MetadataError, match="neither 'rna_plate' nor 'det_plate'"):
        robust_zscore(ds.drop_vars("rna_plate"))
    with pytest.raises(MetadataError, match="no signature field 'pert_type'"):
        robust_zscore(ds.drop_vars("pert_type"), reference="vehicle")
    missing = ds.assign_coords(rna_plate=("sig", np.array(["a", None] * 3, dtype=object)))
    with pytest.raises(MetadataError, match="3 signature.*no value for plate field"):
        robust_zscore(missing)
    with pytest.raises(MetadataError, match="pert_dose/pert_idose.*group_by="):
        modz(ds, landmarks=list(ds.gene.values))
    with pytest.raises(MetadataError, match="landmark gene.*'nope'"):
        modz(ds, group_by=["pert_id"], landmarks=["g0", "nope"])
    with pytest.raises(MetadataError, match="cannot tell the landmark genes"):
        modz(ds, group_by=["pert_id"])
    with pytest.raises(InputError, match="reference must be"):
        robust_zscore(ds, reference="controls")
    with pytest.raises(InputError, match="expr is empty"):
        robust_zscore(ds.isel(sig=[]), plate_field=None)


def test_missing_group_value_is_its_own_group(rng):
    x = rng.normal(size=(4, 3)).astype(np.float32)
    dose = np.array([1.0, np.nan, np.nan, 1.0])
    ds = _dataset(x, pert_id=["p"] * 4)
    ds = ds.assign_coords(pert_dose=("sig", dose))
    out = modz(ds, group_by=["pert_id", "pert_dose"], landmarks=list(ds.gene.values))
    assert out.sig.values.tolist() == ["p:1", "p:-666"]
    assert out.distil_nsample.values.tolist() == [2, 2]


# -- command line -----------------------------------------------------------------------------


def test_cli_level4_level5_store_to_store(fixtures, tmp_path, capsys):
    from cmapdask.cli import main
    from cmapdask.io.store import open_store, write_store

    src = tmp_path / "l3.zarr"
    write_store(read_gctx(fixtures / "cmapm" / "gctv13_01.gctx"), str(src))
    l4 = tmp_path / "l4.zarr"
    assert main(["level4", str(src), str(l4), "--scheduler", "none", "--quiet"]) == 0
    want = read_gctx(fixtures / "cmapm" / "gctv13_01_zs.gctx").expr.values
    np.testing.assert_allclose(open_store(str(l4)).expr.values, want, rtol=5e-7, atol=5e-6)

    l4q = tmp_path / "l4q.zarr"
    rc = main(
        [
            "level4",
            str(src),
            str(l4q),
            "--scheduler",
            "none",
            "--quiet",
            "--plate-field",
            "none",
            "--normalize",
            "quantile",
            "--chunk-rows",
            "50",
        ]
    )
    assert rc == 0
    x = read_gctx(fixtures / "cmapm" / "gctv13_01.gctx").expr.values
    want = _ref_robust_z(_ref_qnorm(x), np.zeros(len(x)))
    np.testing.assert_array_equal(open_store(str(l4q)).expr.values, want)

    src = tmp_path / "distil.zarr"
    distil = read_gctx(fixtures / "cmapm" / "distil" / "distil_gct_n6x978.gctx")
    write_store(distil, str(src))
    grp = tmp_path / "lm.grp"  # this file's genes are Affymetrix probe ids, all landmarks
    grp.write_text("\n".join(distil.gene.values) + "\n")
    l5 = tmp_path / "l5.zarr"
    rc = main(
        ["level5", str(src), str(l5), "--scheduler", "none", "--quiet", "--landmarks", str(grp)]
    )
    assert rc == 0
    got = open_store(str(l5))
    want = read_gctx(fixtures / "cmapm" / "distil" / "modzs_gct_n3x978.gctx")
    np.testing.assert_allclose(got.expr.values, want.expr.values, rtol=0, atol=1.2e-6)
    assert got.distil_ss_ngene.values.tolist() == [138, 303, 306]
    assert got.distil_wt.values.tolist() == ["1.00", "0.33,0.45,0.22", "0.50,0.50"]
    assert got.attrs["cmapdask"]["levels"]["step"] == "level5"

    rc = main(
        [
            "level5",
            str(src),
            str(tmp_path / "bad.zarr"),
            "--scheduler",
            "none",
            "--quiet",
            "--group-by",
            "pert_id,nope",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope" in err[0]
    assert not (tmp_path / "bad.zarr").exists()


@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_average_ranks_equals_scipy(n, m, levels, seed):
    x = np.random.default_rng(seed).integers(0, levels, size=(n, m)).astype(np.float32)
    np.testing.assert_array_equal(kernels.average_ranks(x), rankdata(x, axis=1))


@given(st.integers(0, 2**31))
@settings(max_examples=15, deadline=None)
def test_modz_invariant_to_signature_order(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, size=(12, 8)).astype(np.float32)
    pert = np.repeat(["a", "b", "c", "d"], [3, 2, 1, 6])
    ds = _dataset(x, chunks=5, pert_id=pert)
    perm = rng.permutation(12)
    a = modz(ds, group_by=["pert_id"], landmarks=list(ds.gene.values)).compute()
    b = modz(ds.isel(sig=perm), group_by=["pert_id"], landmarks=list(ds.gene.values)).compute()
    b = b.sel(sig=a.sig.values)
    np.testing.assert_allclose(b.expr.values, a.expr.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.distil_cc_q75.values, a.distil_cc_q75.values, atol=1e-12)


@pytest.mark.parametrize(
    "in_chunks, out_chunks",
    [
        ((10, 3, 17), (30,)),
        ((30,), (1,) * 30),
        ((4, 4, 4, 18), (7, 13, 10)),
    ],
)
def test_gather_rows_equals_numpy(rng, in_chunks, out_chunks):
    from cmapdask.levels.groups import gather_rows

    x = rng.normal(size=(30, 4)).astype(np.float32)
    order = rng.permutation(30)
    got = gather_rows(da.from_array(x, chunks=(in_chunks, 4)), order, out_chunks)
    assert got.chunks[0] == out_chunks
    np.testing.assert_array_equal(got.compute(), x[order])


def test_persisted_statistics_are_not_recomputed(rng, monkeypatch):
    x = rng.normal(size=(12, 6)).astype(np.float32)
    ds = _dataset(x, chunks=4, pert_id=np.repeat(["a", "b", "c", "d"], 3))
    calls = []
    real = kernels.modz_groups
    monkeypatch.setattr(kernels, "modz_groups", lambda *a, **k: calls.append(1) or real(*a, **k))
    with dask.config.set(scheduler="sync"):
        out = modz(ds, group_by=["pert_id"], landmarks=list(ds.gene.values), statistics="persist")
        n = len(calls)
        assert n > 0
        lazy = modz(ds, group_by=["pert_id"], landmarks=list(ds.gene.values)).expr.values
        np.testing.assert_array_equal(out.expr.values, lazy)
        _ = out.distil_cc_q75.values
    assert len(calls) == 2 * n  # only the lazy call ranked again
