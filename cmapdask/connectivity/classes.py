"""Perturbagen classes: results by class, as CLUE shows them.

CLUE lists connections by perturbagen class: compounds (``CP``), shRNA knockdowns
(``KD``), CRISPR knockouts (``CRISPR``), overexpression (``OE``) and ligands (``LIG``).
The release names them by ``pert_type`` (``trt_cp``, ``trt_sh.cgs``, ``trt_xpr``,
``trt_oe``, ...); :data:`PERT_CLASSES` maps one onto the other. Classes only label and
split results: NCS groups stay ``pert_type:cell_id`` (ALGORITHMS.md §4).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from cmapdask.errors import InputError

__all__ = [
    "PERT_CLASSES",
    "CLASS_NAMES",
    "LOSS_OF_FUNCTION",
    "pert_class",
    "level_field",
    "filter_class",
    "split_by_class",
]

# pert_type -> class; ``ctl_*`` types are ``CTL``, anything else unknown ``OTHER``.
PERT_CLASSES = {
    "trt_cp": "CP",
    "trt_poscon": "CP",
    "trt_sh": "KD",
    "trt_sh.cgs": "KD",
    "trt_sh.css": "KD",
    "trt_si": "KD",
    "trt_xpr": "CRISPR",
    "trt_oe": "OE",
    "trt_oe.mut": "OE",
    "trt_lig": "LIG",
}
# What CLUE calls each class in its tables and filters.
CLASS_NAMES = {
    "CP": "compound",
    "KD": "knock-down",
    "CRISPR": "CRISPR knock-out",
    "OE": "over-expression",
    "LIG": "ligand",
    "CTL": "control",
    "OTHER": "other",
}
LOSS_OF_FUNCTION = ("KD", "CRISPR")


def pert_class(pert_type) -> np.ndarray:
    """The class (``CP``, ``KD``, ``CRISPR``, ``OE``, ``LIG``, ``CTL``, ``OTHER``) of each
    ``pert_type``.

    Examples
    --------
    >>> pert_class(["trt_cp", "trt_sh.cgs", "trt_xpr", "trt_oe", "ctl_vehicle"]).tolist()
    ['CP', 'KD', 'CRISPR', 'OE', 'CTL']
    """
    pt = np.asarray(pert_type, dtype=object).ravel()
    out = [
        PERT_CLASSES.get(str(p), "CTL" if str(p).startswith("ctl_") else "OTHER")
        if p is not None and p == p
        else "OTHER"
        for p in pt.tolist()
    ]
    return np.array(out, dtype=object)


def level_field(summaries: xr.Dataset, level: str, field: str) -> np.ndarray | None:
    """A row field of a summary level under either of its names (``<level>_<field>``,
    or ``<field>`` along the level's dimension); ``None`` if absent."""
    for name in (f"{level}_{field}", field):
        if name in summaries.coords and summaries[name].dims == (level,):
            return np.asarray(summaries[name].values, dtype=object)
    return None


def _classes_of(summaries: xr.Dataset, level: str) -> np.ndarray:
    if level not in summaries.dims:
        raise InputError(f"summaries have no level {level!r}")
    cls = level_field(summaries, level, "pert_class")
    if cls is None:
        pt = level_field(summaries, level, "pert_type")
        if pt is None:
            raise InputError(
                f"summaries have no pert_type or pert_class for {level!r}: they were made "
                "from a result without a pert_type signature field"
            )
        cls = pert_class(pt)
    return cls


def filter_class(
    summaries: xr.Dataset, classes: str | Iterable[str], *, level: str = "pert_summary"
) -> xr.Dataset:
    """The rows of one summary level whose class is in ``classes`` (other levels kept).

    Parameters
    ----------
    summaries : xarray.Dataset
        From :func:`cmapdask.connectivity.results.summarize`.
    classes : str or iterable of str
        Class codes (``"KD"``) or pert_types (``"trt_sh.cgs"``), mixed as you like.
    level : {"pert_cell", "pert_summary"}
    """
    want = {classes} if isinstance(classes, str) else set(classes)
    cls = _classes_of(summaries, level)
    pt = level_field(summaries, level, "pert_type")
    keep = np.isin(cls.astype(str), list(want))
    if pt is not None:
        keep |= np.isin(pt.astype(str), list(want))
    return summaries.isel({level: np.flatnonzero(keep)})


def split_by_class(summaries: xr.Dataset, *, level: str = "pert_summary") -> dict:
    """``{class: summaries restricted to that class at level}``, classes in sorted order.

    Each part equals :func:`filter_class` with that class; together they hold every row.
    """
    cls = _classes_of(summaries, level).astype(str)
    return {c: summaries.isel({level: np.flatnonzero(cls == c)}) for c in sorted(set(cls.tolist()))}
