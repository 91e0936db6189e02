"""Signature metadata for the levels: plates, replicate groups, landmarks, Level 5 fields.

All of it works on the in-memory coordinates (one value per signature or gene), eagerly,
with pandas; nothing here touches ``expr``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.errors import MetadataError
from cmapdask.model.missing import is_missing
from cmapdask.model.provenance import provenance_record
from cmapdask.model.spaces import feature_genes

__all__ = [
    "DEFAULT_GROUP_BY",
    "plate_codes",
    "group_codes",
    "landmark_index",
    "level5_coords",
    "provenance",
]

# one slot per replicate-group key; the first field present in the data is used
DEFAULT_GROUP_BY: tuple[tuple[str, ...], ...] = (
    ("pert_id",),
    ("pert_dose", "pert_idose"),
    ("pert_time", "pert_itime"),
    ("cell_id", "cell_iname"),
    ("bead_batch",),
)
MISSING_TEXT = "-666"


def _sig_fields(ds: xr.Dataset) -> list[str]:
    return [k for k, v in ds.coords.items() if v.dims == ("sig",) and k != "sig"]


def plate_codes(ds: xr.Dataset, field: str) -> np.ndarray:
    """Plate number of each signature (by first appearance); missing plates are an error."""
    if field not in ds.coords or ds[field].dims != ("sig",):
        raise MetadataError(
            f"no signature field {field!r} to take plates from "
            f"(signature fields: {', '.join(_sig_fields(ds)) or 'none'})"
        )
    values = pd.Series(ds[field].values)
    if values.isna().any():
        raise MetadataError(
            f"{int(values.isna().sum())} signature(s) have no value for plate field {field!r} "
            f"(first: {ds['sig'].values[np.flatnonzero(values.isna())[0]]!r})"
        )
    codes, _ = pd.factorize(values)
    return codes.astype(np.int64)


def group_codes(ds: xr.Dataset, group_by: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Resolve the group fields and number each signature's replicate group.

    Groups are numbered by first appearance; a missing value is a value of its own.
    """
    available = set(_sig_fields(ds))
    if group_by is None:
        fields, absent = [], []
        for slot in DEFAULT_GROUP_BY:
            found = [f for f in slot if f in available]
            (fields.append(found[0]) if found else absent.append("/".join(slot)))
    else:
        if isinstance(group_by, str) or len(group_by) == 0:
            raise MetadataError("group_by must be a non-empty sequence of field names")
        fields = list(dict.fromkeys(group_by))
        absent = [f for f in fields if f not in available]
    if absent:
        raise MetadataError(
            f"replicate-group field(s) {', '.join(absent)} not in the signature metadata "
            f"(fields: {', '.join(sorted(available)) or 'none'}); choose them with group_by="
        )
    frame = pd.DataFrame({f: ds[f].values for f in fields})
    codes = frame.groupby(fields, sort=False, dropna=False).ngroup().to_numpy()
    return fields, codes.astype(np.int64)


def landmark_index(ds: xr.Dataset, landmarks: Sequence[str] | None) -> np.ndarray:
    """Positions of the landmark genes in ``ds.gene``."""
    genes = pd.Index(ds["gene"].values)
    if landmarks is not None:
        wanted = pd.Index(list(landmarks))
        pos = genes.get_indexer(wanted)
        if (pos < 0).any():
            missing = wanted[pos < 0]
            raise MetadataError(
                f"{len(missing)} landmark gene(s) not in the data "
                f"(first: {str(missing[0])!r}); the landmarks must be among expr's genes"
            )
        pos = np.unique(pos)
    else:  # the data model's one landmark rule
        try:
            pos = feature_genes(ds, "landmark")
        except MetadataError as e:
            raise MetadataError(
                f"cannot tell the landmark genes among {len(genes)} genes "
                f"({str(e).split(': ', 1)[-1].split(';')[0]}); pass landmarks="
            ) from None
    if len(pos) < 2:
        raise MetadataError(
            f"need at least 2 landmark genes for Spearman weights, found {len(pos)}"
        )
    return pos.astype(np.int64)


def _text(v) -> str:
    """A metadata value as CMap prints it in ids and joined fields (41.0 -> "41")."""
    if is_missing(v):
        return MISSING_TEXT
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{float(v):.7g}"
    return str(v)


def level5_coords(ds: xr.Dataset, fields: list[str], plan) -> dict:
    """Signature coordinates of the Level 5 dataset (one entry per replicate group)."""
    first = plan.order[np.r_[0, np.cumsum(plan.sizes)[:-1]]] if len(plan.sizes) else []
    ids = ds["sig"].values
    keys = [":".join(_text(ds[f].values[i]) for f in fields) for i in first]
    if len(set(keys)) != len(keys):  # distinct values that print alike (1 and "1")
        raise MetadataError(f"replicate groups {fields} give duplicate Level 5 ids")
    grouped_codes = plan.codes
    coords: dict = {"sig": np.array(keys, dtype=object)}
    for name in _sig_fields(ds):
        values = ds[name].values[plan.order]
        frame = pd.DataFrame({"g": grouped_codes, "v": values})
        if (frame.groupby("g", sort=True)["v"].nunique(dropna=False) <= 1).all():
            coords[name] = ("sig", ds[name].values[first])
            continue
        text = pd.Series([_text(v) for v in values])
        joined = text.groupby(grouped_codes, sort=True).agg(lambda s: "|".join(sorted(set(s))))
        coords[name] = ("sig", joined.to_numpy(dtype=object))
    starts = np.r_[0, np.cumsum(plan.sizes)]
    sorted_ids = ids[plan.order]
    coords["distil_id"] = (
        "sig",
        np.array(
            ["|".join(sorted_ids[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=False)],
            dtype=object,
        ),
    )
    coords["distil_nsample"] = ("sig", plan.sizes.astype(np.int64))
    return coords


def provenance(ds: xr.Dataset, step: str, **parameters) -> dict:
    """Provenance of a level step: the input's own provenance nested under ``input``."""
    return provenance_record(step, step=step, parameters=parameters, input=ds.attrs.get("cmapdask"))
