"""L1000 Level 3 -> 4 -> 5: quantile normalization, robust z per plate, MODZ consensus.

The thin xarray layer: it reads plates, control wells and replicate groups from signature
metadata (coordinates along ``sig``), checks them eagerly (metadata is in memory), and
hands lazy per-group work to :mod:`cmapdask.levels.groups`, which runs the numpy kernels
of :mod:`cmapdask.levels.kernels` block by block. Numbers follow ALGORITHMS.md §9.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from cmapdask.errors import InputError, MetadataError
from cmapdask.levels import groups, kernels
from cmapdask.levels.metadata import (
    DEFAULT_GROUP_BY,
    group_codes,
    landmark_index,
    level5_coords,
    plate_codes,
    provenance,
)

__all__ = [
    "DEFAULT_GROUP_BY",
    "STAT_COORDS",
    "quantile_normalize",
    "robust_zscore",
    "level4",
    "modz",
    "level5",
]


# Level 5 coordinates computed lazily from the data (the rest is metadata, in memory)
STAT_COORDS = (*kernels.STAT_FIELDS[1:], "distil_wt")


def _expr(ds: xr.Dataset) -> da.Array:
    """``expr`` as a dask array with all genes in each chunk (kernels need whole rows)."""
    if "expr" not in ds or ds["expr"].dims != ("sig", "gene"):
        raise InputError("dataset has no expr variable with dims ('sig', 'gene')")
    x = ds["expr"].data
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=("auto", -1))
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"expr is empty (shape {x.shape})")
    return x.rechunk({1: -1})


def _target_rows(x: da.Array, chunk_rows: int | None) -> int:
    if chunk_rows is not None and chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return chunk_rows or max(x.chunks[0])


def _with_expr(ds: xr.Dataset, data: da.Array, attrs: dict) -> xr.Dataset:
    out = ds.copy()
    out["expr"] = (("sig", "gene"), data)
    out.attrs = {**ds.attrs, "cmapdask": attrs}
    return out


# -- kernels bound to their options (module level, so they pickle to workers) --------------


def _qnorm_group(x, flags):
    return kernels.quantile_normalize(x)


def _robust_z_group(x, flags, *, mad_floor):
    return kernels.robust_z(x, reference=flags, mad_floor=mad_floor)


def _sorted_rows(x, ids):
    kernels.check_finite(x, ids[:, 0])
    return kernels.quantile_target_rows(x)


def _qnorm_apply(x, target):
    return kernels.quantile_apply(x, target[0])


def _robust_apply(x, ids, med, mad, *, mad_floor):
    kernels.check_finite(x, ids[:, 0])
    return kernels.robust_z_apply(x, med[0], mad[0], mad_floor)


def _row_ids(ds: xr.Dataset, x: da.Array) -> da.Array:
    """Signature ids aligned with ``x``'s chunks, so a task can name a bad signature."""
    return da.from_array(ds["sig"].values.astype(object)[:, None], chunks=(x.chunks[0], 1))


# -- Level 3 ------------------------------------------------------------------------------


def quantile_normalize(
    ds: xr.Dataset, *, plate_field: str | None = None, chunk_rows: int | None = None
) -> xr.Dataset:
    """Quantile-normalize ``expr`` (QNORM, ALGORITHMS.md §9): the Level 3 step.

    Each signature's values are replaced by the target distribution at their average
    (tie-aware) ranks; the target is the per-rank median of the row-sorted matrix.

    Parameters
    ----------
    ds : Dataset with ``expr`` (dims ``("sig", "gene")``).
    plate_field : str or None
        ``None`` (default): one target for the whole matrix. A field name (for example
        ``"det_plate"``): one target per plate, as the production pipeline runs per plate.
    chunk_rows : int, optional
        Target signatures per task for the per-plate path (default: the input chunk size).

    Returns
    -------
    Dataset
        ``ds`` with a lazy float32 ``expr``; provenance in ``attrs["cmapdask"]``.

    Raises
    ------
    MetadataError
        ``plate_field`` absent or with missing values.
    InputError
        At compute time, if ``expr`` holds NaN or infinity.

    Notes
    -----
    Whole matrix: two passes; the first sorts each signature and takes per-rank medians
    with ``dask.array.median`` (a rechunk to all signatures x a few genes, bounded by
    dask's chunk size), the second ranks each signature block. Per plate: one pass; each
    task holds the plates of one block (about ``chunk_rows`` signatures x all genes).
    """
    x = _expr(ds)
    if plate_field is None:
        sorted_rows = da.map_blocks(_sorted_rows, x, _row_ids(ds, x), dtype=np.float64)
        target = da.median(sorted_rows, axis=0)
        out = da.map_blocks(_qnorm_apply, x, target[None, :], dtype=np.float32)
    else:
        codes = plate_codes(ds, plate_field)
        plan = groups.plan_groups(codes, target_rows=_target_rows(x, chunk_rows))
        flags = np.ones(x.shape[0], dtype=bool)
        out = groups.map_groups_same(x, plan, _qnorm_group, flags=flags, ids=ds["sig"].values)
    return _with_expr(ds, out, provenance(ds, "qnorm", plate_field=plate_field))


# -- Level 4 ------------------------------------------------------------------------------


def robust_zscore(
    ds: xr.Dataset,
    *,
    reference: Literal["plate", "vehicle"] = "plate",
    plate_field: str | None = "auto",
    control_field: str = "pert_type",
    control_value: str = "ctl_vehicle",
    mad_floor: float = 0.1,
    min_reference: int = 2,
    chunk_rows: int | None = None,
) -> xr.Dataset:
    """Robust z-scores per gene within each plate: the Level 3 -> 4 step (§9).

    ``z = (x - median_P) / (1.4826 * max(MAD_P, mad_floor))`` per gene, where P is the
    reference population of the signature's plate.

    Parameters
    ----------
    ds : Dataset with ``expr`` (Level 3) and plate metadata along ``sig``.
    reference : {"plate", "vehicle"}
        ``"plate"`` (ZSPC, the default): P is every signature of the plate.
        ``"vehicle"`` (ZSVC): P is the plate's vehicle-control wells, those whose
        ``control_field`` equals ``control_value``; every well is scored against them.
    plate_field : str or None
        ``"auto"`` (default): ``rna_plate`` if present, else ``det_plate``. ``None``: the
        whole matrix is one plate. Otherwise the name of a field along ``sig``.
    control_field, control_value : which wells are vehicle controls (``reference="vehicle"``).
    mad_floor : float
        Floor on the raw MAD before scaling (production default 0.1; 0 disables it).
    min_reference : int
        A plate whose reference population has fewer members is an error (default 2).
    chunk_rows : int, optional
        Target signatures per task (default: the input chunk size).

    Returns
    -------
    Dataset
        ``ds`` with lazy float32 Level 4 ``expr``, same signatures in the same order.

    Raises
    ------
    MetadataError
        Plate or control field absent, or plate values missing.
    InputError
        A plate with fewer than ``min_reference`` reference wells; bad options; NaN or
        infinity in ``expr`` (at compute time).

    Notes
    -----
    Per plate, each task holds the plates of one block (about ``chunk_rows`` signatures x
    all genes; a plate never spans two tasks) and reads each value once; signatures of a
    plate that are not contiguous in the input are gathered lazily (a dask shuffle).
    With ``plate_field=None`` the medians come from ``dask.array.median`` (a rechunk
    bounded by dask's chunk size), so memory does not grow with the number of signatures.
    """
    if reference not in ("plate", "vehicle"):
        raise InputError(f"reference must be 'plate' or 'vehicle', got {reference!r}")
    if not np.isfinite(mad_floor) or mad_floor < 0:
        raise InputError(f"mad_floor must be a finite number >= 0, got {mad_floor!r}")
    x = _expr(ds)
    flags = np.ones(x.shape[0], dtype=bool)
    if reference == "vehicle":
        if control_field not in ds.coords or ds[control_field].dims != ("sig",):
            raise MetadataError(f"no signature field {control_field!r} to find vehicle controls")
        flags = np.asarray(ds[control_field].values == control_value, dtype=bool)
    resolved = _resolve_plate_field(ds, plate_field)
    codes = np.zeros(x.shape[0], dtype=np.int64) if resolved is None else plate_codes(ds, resolved)
    _check_reference(ds, codes, flags, min_reference, resolved, reference)
    if resolved is None:
        ref = (x if flags.all() else x[np.flatnonzero(flags)]).astype(np.float64)
        med = da.median(ref, axis=0)
        mad = da.median(abs(ref - med), axis=0)
        out = da.map_blocks(
            _robust_apply,
            x,
            _row_ids(ds, x),
            med[None, :],
            mad[None, :],
            mad_floor=mad_floor,
            dtype=np.float32,
        )
    else:
        plan = groups.plan_groups(codes, target_rows=_target_rows(x, chunk_rows))
        kernel = functools.partial(_robust_z_group, mad_floor=mad_floor)
        out = groups.map_groups_same(x, plan, kernel, flags=flags, ids=ds["sig"].values)
    params = dict(reference=reference, plate_field=resolved, mad_floor=mad_floor)
    if reference == "vehicle":
        params.update(control_field=control_field, control_value=control_value)
    return _with_expr(ds, out, provenance(ds, "level4", **params))


def _resolve_plate_field(ds: xr.Dataset, plate_field: str | None) -> str | None:
    if plate_field != "auto":
        return plate_field
    for name in ("rna_plate", "det_plate"):
        if name in ds.coords and ds[name].dims == ("sig",):
            return name
    raise MetadataError(
        "no plate field: the signatures have neither 'rna_plate' nor 'det_plate'; "
        "name one with plate_field=, or plate_field=None for one plate"
    )


def _check_reference(ds, codes, flags, minimum, field, reference) -> None:
    counts = np.bincount(codes, weights=flags.astype(np.float64), minlength=codes.max() + 1)
    low = np.flatnonzero(counts < minimum)
    if low.size:
        name = (
            "the whole matrix"
            if field is None
            else f"plate {_first_of(ds, field, codes, low[0])!r}"
        )
        kind = "vehicle-control wells" if reference == "vehicle" else "signatures"
        raise InputError(
            f"{low.size} plate(s) have fewer than {minimum} {kind} to estimate the median "
            f"and MAD from ({name} has {int(counts[low[0]])}); remove them or lower "
            "min_reference"
        )


def _first_of(ds, field, codes, code):
    return ds[field].values[np.flatnonzero(codes == code)[0]]


def level4(
    ds: xr.Dataset,
    *,
    normalize: Literal["none", "quantile"] = "none",
    **robust_z_options,
) -> xr.Dataset:
    """Level 3 (or raw log2 expression) -> Level 4.

    ``normalize="none"`` (default): the input is already Level 3 (QNORM), so this is
    :func:`robust_zscore`. ``"quantile"``: quantile-normalize per plate first (the same
    plate field), for input that is not yet normalized. Other keyword options go to
    :func:`robust_zscore`; see its Notes for memory and scaling.
    """
    if normalize not in ("none", "quantile"):
        raise InputError(f"normalize must be 'none' or 'quantile', got {normalize!r}")
    if normalize == "quantile":
        field = _resolve_plate_field(ds, robust_z_options.get("plate_field", "auto"))
        ds = quantile_normalize(
            ds, plate_field=field, chunk_rows=robust_z_options.get("chunk_rows")
        )
    return robust_zscore(ds, **robust_z_options)


# -- Level 5 ------------------------------------------------------------------------------


def modz(
    ds: xr.Dataset,
    *,
    group_by: Sequence[str] | None = None,
    landmarks: Sequence[str] | None = None,
    clip: float = 10.0,
    weight_floor: float = 0.01,
    chunk_rows: int | None = None,
    statistics: Literal["lazy", "persist"] = "lazy",
) -> xr.Dataset:
    """MODZ consensus of each replicate group, with replicate statistics: Level 4 -> 5.

    Per group (§9): clip z to ``[-clip, clip]``; Spearman correlations between the
    replicates on landmark genes; weights ``0.5 * sum`` of the positive off-diagonal
    correlations, floored at ``weight_floor`` and normalized; MODZ = weighted sum over all
    genes. A group of one passes through (clipped), with weight 1 and missing
    correlations.

    Parameters
    ----------
    ds : Dataset with Level 4 ``expr`` and replicate metadata along ``sig``.
    group_by : sequence of str, optional
        Fields whose values define a replicate group. Default: perturbagen, dose, time,
        cell line and bead batch, each the first present of ``DEFAULT_GROUP_BY``'s
        alternatives (``pert_id``; ``pert_dose``/``pert_idose``; ``pert_time``/
        ``pert_itime``; ``cell_id``/``cell_iname``; ``bead_batch``). Missing values form
        their own value (all wells with a missing dose group together).
    landmarks : sequence of str, optional
        Landmark gene ids. Default: genes whose ``pr_is_lmark`` is 1/true, else whose
        ``feature_space`` is ``"landmark"``, else all genes when there are exactly 978.
    clip, weight_floor : float
        CMap's defaults 10 and 0.01.
    chunk_rows : int, optional
        Target Level 4 signatures per task (default: the input chunk size).
    statistics : {"lazy", "persist"}
        ``"lazy"`` (default): nothing is computed. ``"persist"``: compute the replicate
        statistics and weights now (one pass over the landmark columns, kept in memory or
        on the cluster: O(n_sig) numbers) so that computing or writing ``expr`` later is a
        plain weighted sum and the statistics are not computed twice.

    Returns
    -------
    Dataset
        One signature per group, in order of each group's first appearance, ``sig`` id the
        group values joined by ``":"``; lazy float32 ``expr``; coordinates ``distil_id``
        (replicate ids joined by ``"|"``), ``distil_nsample`` (int), and lazy
        ``distil_wt`` (CMap's text, two decimals), ``distil_cc_q75``, ``distil_cc_max``,
        ``distil_cc_median`` (float, NaN for one replicate), ``distil_ss_ngene`` (int) and
        ``distil_tas`` (float, NaN for one replicate). Other signature fields keep their
        value where a group agrees, else become the sorted distinct values joined by ``"|"``.

    Raises
    ------
    MetadataError
        Group fields or landmark genes missing.
    InputError
        Bad options; NaN or infinity in ``expr`` (at compute time).

    Notes
    -----
    Two passes, each task holding the groups of one block (about ``chunk_rows``
    signatures x all genes; a group never spans two tasks): the statistics and weights
    read only the landmark columns (ranks, Spearman); ``expr`` reads every value once and
    takes the weights from the first pass. Signatures of a group that are not contiguous in the
    input are gathered lazily (a dask shuffle). Group metadata is built eagerly from the
    in-memory coordinates (pandas, linear in the number of signatures).
    """
    if not (np.isfinite(clip) and clip > 0):
        raise InputError(f"clip must be a positive number, got {clip!r}")
    if not (np.isfinite(weight_floor) and weight_floor >= 0):
        raise InputError(f"weight_floor must be a number >= 0, got {weight_floor!r}")
    if statistics not in ("lazy", "persist"):
        raise InputError(f"statistics must be 'lazy' or 'persist', got {statistics!r}")
    x = _expr(ds)
    fields, codes = group_codes(ds, group_by)
    lm = landmark_index(ds, landmarks)
    plan = groups.plan_groups(codes, target_rows=_target_rows(x, chunk_rows))
    ids = ds["sig"].values
    stats = groups.replicate_statistics(
        x, plan, ids=ids, landmarks=lm, clip=clip, weight_floor=weight_floor
    )
    if statistics == "persist":
        stats = stats.persist()
    expr = groups.modz_from_statistics(x, plan, stats, ids=ids, clip=clip)
    coords = level5_coords(ds, fields, plan)
    for i, name in enumerate(kernels.STAT_FIELDS[1:], start=1):
        dtype = np.int64 if name == "distil_ss_ngene" else np.float64
        coords[name] = ("sig", stats[:, i].astype(dtype))
    coords["distil_wt"] = ("sig", stats[:, -2])
    out = xr.Dataset({"expr": (("sig", "gene"), expr)}, coords=coords)
    out = out.assign_coords({k: v for k, v in ds.coords.items() if v.dims == ("gene",)})
    params = dict(
        group_by=list(fields), n_landmarks=int(len(lm)), clip=clip, weight_floor=weight_floor
    )
    out.attrs = {**ds.attrs, "cmapdask": provenance(ds, "level5", **params)}
    return out


level5 = modz
