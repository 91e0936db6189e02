"""False discovery rates for NCS (ALGORITHMS.md §6)."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from cmapdask.errors import InputError

__all__ = ["EPS", "fdr_null", "fdr_bh", "random_query_pvalues", "nlog10"]

EPS = float(np.finfo(float).eps)  # MATLAB eps


def _ecdf(data: np.ndarray):
    # fraction strictly below, through the unique values, PCHIP-interpolated
    s = np.sort(data)
    u = np.unique(s)
    f = np.searchsorted(s, u, side="left") / s.size
    if u.size == 1:
        return lambda x: np.zeros_like(np.asarray(x, dtype=float))
    p = PchipInterpolator(u, f)
    return lambda x: p(np.clip(x, u[0], u[-1]))


def _tail_q(x_all, x_obs, x_null, positive):
    if x_obs.size <= 2 or x_null.size <= 2:
        return np.ones(x_all.size)
    fo, fn = _ecdf(x_obs), _ecdf(x_null)
    if positive:
        q = (1 - fn(x_all)) / (1 - fo(x_all) + EPS)
    else:
        q = fn(x_all) / (fo(x_all) + EPS)
    q = np.clip(q, EPS, 1.0)
    mag = np.abs(x_all)
    order = np.argsort(mag, kind="stable")
    # the score with the smallest q (the least extreme one on ties), then a ramp to 0
    qmin = q.min()
    at = mag[q == qmin].min()
    top = mag.max()
    beyond = mag > at
    if top > at:
        q[beyond] = qmin * (top - mag[beyond]) / (top - at)
    # monotone: q never rises as |NCS| grows
    q[order] = np.minimum.accumulate(q[order])
    return q


def fdr_null(ncs, is_null) -> np.ndarray:
    """q-values of one query's NCS against the null signatures, per tail.

    Parameters
    ----------
    ncs : array ``(sig,)``
    is_null : bool array ``(sig,)``: rows flagged ``is_null_sig``.

    Returns
    -------
    numpy.ndarray ``(sig,)`` of q in [0, 1]; 1 for NCS 0, NaN for NaN.

    Notes
    -----
    Holds one query's scores; a sort per tail.
    """
    x = np.asarray(ncs, dtype=float)
    null = np.asarray(is_null, dtype=bool)
    if null.shape != x.shape:
        raise InputError("is_null must have one value per signature")
    q = np.ones(x.shape)
    q[np.isnan(x)] = np.nan
    for positive in (True, False):
        sel = (x > 0) if positive else (x < 0)
        if sel.any():
            q[sel] = _tail_q(x[sel], x[sel & ~null], x[sel & null], positive)
    return q


def random_query_pvalues(ncs, ncs_random) -> np.ndarray:
    """Nominal p-values of one query from size-matched random queries.

    ``p = (1 + #{random: same sign and |ncs_rand| >= |ncs|}) / (1 + n_random)`` per
    signature; NCS 0 gives p = 1.

    Parameters
    ----------
    ncs : array ``(sig,)``
    ncs_random : array ``(n_random, sig)``
    """
    x = np.asarray(ncs, dtype=float)
    r = np.asarray(ncs_random, dtype=float)
    same = np.sign(r) == np.sign(x)[None, :]
    hits = (same & (np.abs(r) >= np.abs(x)[None, :])).sum(axis=0)
    p = (1 + hits) / (1 + r.shape[0])
    return np.where(x == 0, 1.0, np.where(np.isnan(x), np.nan, p))


def fdr_bh(p) -> np.ndarray:
    """Benjamini-Hochberg q-values (NaN left out)."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        m = ok.size
        adj = p[order] * (m / np.arange(1, m + 1))  # as scipy's false_discovery_control
        q[order] = np.minimum(1.0, np.minimum.accumulate(adj[::-1])[::-1])
    return q


def nlog10(q) -> np.ndarray:
    """``-log10(q + eps)``, the ``fdr_q_nlog10`` field (lazy for dask input)."""
    if not hasattr(q, "dask"):
        q = np.asarray(q, dtype=float)
    return -np.log10(q + EPS)
