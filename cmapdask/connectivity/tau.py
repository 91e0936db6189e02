"""τ: connectivity relative to a reference compendium (ALGORITHMS.md §5).

Default: CLUE's binned form, a lookup table per reference column on a fixed grid of NCS
values, built once (``cmapdask background``) and interpolated at query time. Option: the
paper's exact formula against the reference queries' NCS.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from cmapdask.errors import InputError

__all__ = [
    "GRID",
    "INTROSPECT_GRID",
    "background_table",
    "background_tables",
    "tau_binned",
    "tau_exact",
    "tau_rows",
]

GRID = np.linspace(-4.0, 4.0, 10001)
# the Broad's runIntrospect tables: 10,000 points (ALGORITHMS.md §8)
INTROSPECT_GRID = np.linspace(-4.0, 4.0, 10000)


def background_table(values, *, grid=GRID) -> np.ndarray:
    """The lookup table T(v) on ``grid`` (default :data:`GRID`) for one reference column.

    Parameters
    ----------
    values : array-like
        The reference queries' NCS against this column (NaN = left out, e.g. another cell
        line). Only absolute values matter.
    grid : numpy.ndarray
        Increasing NCS values, symmetric about 0.

    Returns
    -------
    numpy.ndarray
        ``len(grid)`` values in [-100, 100]; all NaN if no value is left.

    Notes
    -----
    ``|v|`` below the smallest value takes the nearest value's F (0), so the table is
    defined everywhere; the straight line near zero (spec step 2) then applies.
    """
    x = np.abs(np.asarray(values, dtype=float).ravel())
    x = np.sort(x[~np.isnan(x)])
    if x.size == 0:
        return np.full(grid.shape, np.nan)
    u = np.unique(x)
    frac_below = np.searchsorted(x, u, side="left") / x.size
    a = np.abs(grid)
    hi = np.clip(np.searchsorted(u, a, side="left"), 0, u.size - 1)
    lo = np.clip(hi - 1, 0, u.size - 1)
    # nearest unique value; an exact midpoint goes to the larger one
    idx = np.where(np.abs(a - u[lo]) < np.abs(u[hi] - a), lo, hi)
    table = np.sign(grid) * 100.0 * frac_below[idx]
    table = np.where(a > u[-1], np.sign(grid) * 100.0, table)
    if u.size >= 2:
        k = int(np.searchsorted(grid, u[1], side="left")) - 1
        vstar = grid[k]
        if vstar > 0:
            near = a < vstar
            table[near] = grid[near] * table[k] / vstar
    return table


def background_tables(ncs_ref, *, query_cell=None, ref_cell=None) -> np.ndarray:
    """Tables for every column of a reference-query × reference NCS matrix.

    Parameters
    ----------
    ncs_ref : array ``(ref_query, ref)``
        Introspect NCS (already symmetrised at signature level).
    query_cell, ref_cell : array-like of str, optional
        Cell lines; where given, pairs from different cell lines are left out.

    Returns
    -------
    numpy.ndarray ``(ref, len(GRID))`` float32.

    Notes
    -----
    Holds the reference matrix (``ref_query * ref`` floats) and the tables (40 kB per
    reference column).
    """
    m = np.array(ncs_ref, dtype=float)
    if query_cell is not None and ref_cell is not None:
        qc = np.asarray(query_cell, dtype=object)[:, None]
        rc = np.asarray(ref_cell, dtype=object)[None, :]
        m[qc != rc] = np.nan
    out = np.empty((m.shape[1], GRID.size), dtype=np.float32)
    for j in range(m.shape[1]):
        out[j] = background_table(m[:, j])
    return out


def _interp_block(ncs, tables, grid=GRID):
    c = np.clip(np.asarray(ncs, dtype=float), grid[0], grid[-1])
    pos = (c - grid[0]) / (grid[1] - grid[0])
    i = np.clip(np.floor(pos).astype(np.int64), 0, grid.size - 2)
    f = pos - i
    cols = np.broadcast_to(np.arange(c.shape[1]), c.shape)
    t = tables.astype(float)
    out = t[cols, i] * (1 - f) + t[cols, i + 1] * f
    return np.where(np.isnan(ncs), np.nan, out)


def tau_binned(ncs, tables):
    """τ by linear interpolation of each column's table at ``clip(ncs, -4, 4)``.

    Parameters
    ----------
    ncs : numpy or dask array ``(query, sig)``
    tables : array ``(sig, len(GRID))``; NaN rows give NaN τ (no background).

    Notes
    -----
    Blockwise over signature chunks; a task holds its block and that block's tables.
    """
    if np.shape(tables)[-1] != GRID.size or np.shape(tables)[0] != np.shape(ncs)[1]:
        raise InputError(f"τ tables {np.shape(tables)} do not match scores {np.shape(ncs)}")
    if isinstance(ncs, da.Array):
        t = da.asarray(tables).rechunk((ncs.chunks[1], -1))
        return da.blockwise(
            _interp_block, "qs", ncs.rechunk({0: -1}), "qs", t, "sk", concatenate=True, dtype=float
        )
    return _interp_block(ncs, np.asarray(tables))


def _rows_block(ncs, grid):
    m = np.asarray(ncs, dtype=float)
    tables = np.stack([background_table(r, grid=grid) for r in m])
    return _interp_block(m.T, tables, grid).T


def tau_rows(ncs, *, grid=INTROSPECT_GRID):
    """τ of each row against a table built from that same row (the Broad's introspect).

    Parameters
    ----------
    ncs : numpy or dask array ``(query, sig)``
        Each query's NCS against every signature; the query's table
        (:func:`background_table` on ``grid``, all values, no cell-line mask) is
        interpolated at the query's own scores.

    Notes
    -----
    Blockwise over query chunks; a task holds whole rows.
    """
    if isinstance(ncs, da.Array):
        return ncs.rechunk({1: -1}).map_blocks(_rows_block, grid, dtype=float)
    return _rows_block(ncs, grid)


def _exact_block(ncs, ref):
    out = np.full(ncs.shape, np.nan)
    for j in range(ncs.shape[1]):
        r = np.abs(ref[:, j])
        r = np.sort(r[~np.isnan(r)])
        if r.size:
            x = ncs[:, j]
            out[:, j] = np.sign(x) * 100.0 * np.searchsorted(r, np.abs(x), "left") / r.size
    return np.where(np.isnan(ncs), np.nan, out)


def tau_exact(ncs, ref_ncs):
    """The paper's τ: ``sign(ncs) · 100 · #{i: |ncs_ref[i]| < |ncs|} / #ref`` per column.

    Parameters
    ----------
    ncs : numpy or dask array ``(query, sig)``
    ref_ncs : array ``(ref_query, sig)``; NaN entries are left out of the compendium.
    """
    if isinstance(ncs, da.Array):
        r = da.asarray(ref_ncs).rechunk((-1, ncs.chunks[1]))
        return da.blockwise(
            _exact_block, "qs", ncs.rechunk({0: -1}), "qs", r, "rs", concatenate=True, dtype=float
        )
    return _exact_block(np.asarray(ncs, dtype=float), np.asarray(ref_ncs, dtype=float))
