"""Argument checks shared by the clustering modules (the dataset check and provenance
are the data model's: :mod:`cmapdask.model`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.errors import InputError


def _check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")


def _square(matrix: xr.DataArray, what: str, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    if (
        not isinstance(matrix, xr.DataArray)
        or matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
    ):
        raise InputError(f"{what}: need a square 2-D DataArray (pert, pert_ref)")
    r, c = matrix.dims
    ids = np.asarray([str(v) for v in matrix[r].values], dtype=object)
    if len(set(ids)) != ids.size:
        raise InputError(f"{what}: duplicate ids along {r!r}")
    other = np.asarray([str(v) for v in matrix[c].values], dtype=object)
    if set(ids) != set(other):
        raise InputError(f"{what}: rows and columns hold different ids")
    if not np.array_equal(other, ids):
        matrix = matrix.isel({c: pd.Index(other).get_indexer(ids)})
    m = np.asarray(matrix.values, dtype=dtype)
    return ids, m
