"""Normalized connectivity score (ALGORITHMS.md §4).

WTCS is divided, per query and per signature group (``pert_type:cell_id`` by default),
by the mean positive (negative) WTCS of the group's reference members. Groups whose
reference members give no mean borrow the median mean of related groups, by a fixed
deterministic rule that is recorded (the reference code samples at random there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import dask
import dask.array as da
import numba
import numpy as np

from cmapdask.errors import InputError

__all__ = [
    "MU_FLOOR",
    "NCSNormalizer",
    "group_labels",
    "group_stats",
    "fit_ncs",
    "apply_ncs",
]

MU_FLOOR = 0.01
_CP_ALIASES = {"trt_poscon": "trt_cp", "ctl_vehicle": "trt_cp"}
Grouping = Literal["pert_type_cell", "global"]
# fallback rules, in the order tried; their codes are stored per (query, group)
RULES = ("own", "pert_type", "cell_id", "all", "none")


def group_labels(pert_type, cell_id, *, grouping: Grouping = "pert_type_cell") -> np.ndarray:
    """``pert_type:cell_id`` labels (trt_poscon and ctl_vehicle count as trt_cp).

    Parameters
    ----------
    pert_type, cell_id : array-like of str
        Per-signature metadata.
    grouping : {"pert_type_cell", "global"}
        ``"pert_type_cell"``: CMap's groups. ``"global"``: one group for every signature.

    Examples
    --------
    >>> group_labels(["trt_poscon", "trt_sh"], ["MCF7", "A375"]).tolist()
    ['trt_cp:MCF7', 'trt_sh:A375']
    """
    pt = np.asarray(pert_type, dtype=object)
    if grouping == "global":
        return np.full(pt.shape, "all:all", dtype=object)
    if grouping != "pert_type_cell":
        raise InputError(f"grouping must be 'pert_type_cell' or 'global', not {grouping!r}")
    cell = np.asarray(cell_id, dtype=object)
    if pt.shape != cell.shape:
        raise InputError("pert_type and cell_id must have one value per signature")
    return np.array(
        [f"{_CP_ALIASES.get(str(p), str(p))}:{c}" for p, c in zip(pt, cell, strict=False)],
        dtype=object,
    )


def _partial_stats(w, codes, ref, n_groups):
    # (1, query, 4, group): sum and count of positive, then of negative reference scores
    out = np.zeros((1, w.shape[0], 4, n_groups))
    sel = ref.astype(bool)
    wr, cr = (w, codes) if sel.all() else (w[:, sel], codes[sel])
    for k, mask in ((0, wr > 0), (2, wr < 0)):
        for q in range(w.shape[0]):
            m = mask[q]
            out[0, q, k] = np.bincount(cr[m], weights=wr[q, m], minlength=n_groups)
            out[0, q, k + 1] = np.bincount(cr[m], minlength=n_groups)
    return out


def group_stats(wtcs, codes, is_ref, n_groups: int):
    """Sums and counts of the positive and negative reference WTCS per (query, group).

    Parameters
    ----------
    wtcs : numpy or dask array, ``(query, sig)``
    codes : int array ``(sig,)`` with values in ``[0, n_groups)``
    is_ref : bool array ``(sig,)``
    n_groups : int

    Returns
    -------
    array ``(query, 4, group)``: positive sum, positive count, negative sum, negative count
    (dask-backed when ``wtcs`` is).

    Notes
    -----
    One pass over the scores; holds ``query * group`` partial sums per signature chunk.
    """
    if isinstance(wtcs, da.Array):
        wtcs = wtcs.rechunk({0: -1})
        codes = da.asarray(codes).rechunk((wtcs.chunks[1],))
        is_ref = da.asarray(is_ref).rechunk((wtcs.chunks[1],))
        nq = wtcs.shape[0]
        parts = [
            da.from_delayed(
                dask.delayed(_partial_stats)(w, c, r, n_groups),
                shape=(1, nq, 4, n_groups),
                dtype=float,
            )
            for w, c, r in zip(
                wtcs.to_delayed().ravel(),
                codes.to_delayed().ravel(),
                is_ref.to_delayed().ravel(),
                strict=False,
            )
        ]
        return da.concatenate(parts, axis=0).sum(axis=0)
    return _partial_stats(np.asarray(wtcs, float), np.asarray(codes), np.asarray(is_ref), n_groups)[
        0
    ]


@dataclass
class NCSNormalizer:
    """μ⁺ and μ⁻ per (query, group) and the rule that produced each (see :data:`RULES`)."""

    groups: np.ndarray
    mu_pos: np.ndarray
    mu_neg: np.ndarray
    rule_pos: np.ndarray
    rule_neg: np.ndarray
    provenance: dict = field(default_factory=dict)


def _fallback(mu, group_pt, group_cell):
    mu = mu.copy()
    rule = np.where(np.isnan(mu), -1, 0).astype(np.int8)
    defined = ~np.isnan(mu)
    for g in np.flatnonzero((~defined).any(axis=0)):
        for code, peers in (
            (1, group_pt == group_pt[g]),
            (2, group_cell == group_cell[g]),
            (3, np.ones_like(group_pt, dtype=bool)),
        ):
            todo = rule[:, g] == -1
            if not todo.any():
                break
            vals = np.where(defined[:, peers], mu[:, peers], np.nan)[todo]
            ok = (~np.isnan(vals)).any(axis=1)
            med = np.full(ok.shape, np.nan)
            if ok.any():
                med[ok] = np.nanmedian(vals[ok], axis=1)
            idx = np.flatnonzero(todo)[ok]
            mu[idx, g] = med[ok]
            rule[idx, g] = code
        left = rule[:, g] == -1
        mu[left, g] = 1.0  # no reference score of this sign anywhere: leave unnormalized
        rule[left, g] = 4
    return mu, rule


def fit_ncs(stats: np.ndarray, groups: np.ndarray) -> NCSNormalizer:
    """μ± per (query, group) from :func:`group_stats` output, with the fallback rule.

    Parameters
    ----------
    stats : numpy.ndarray ``(query, 4, group)``
    groups : array of ``"pert_type:cell_id"`` labels, one per group code

    Returns
    -------
    NCSNormalizer
        ``mu_pos``/``mu_neg`` are ``max(0.01, mean)`` where the group's reference members
        have scores of that sign; elsewhere the median μ of the groups with the same
        pert_type, else the same cell_id, else all groups (``rule_*`` codes 1, 2, 3;
        0 = own mean; 4 = no reference score of that sign at all, μ = 1).
    """
    stats = np.asarray(stats, dtype=float)
    groups = np.asarray(groups, dtype=object)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(stats[:, 1] > 0, stats[:, 0] / stats[:, 1], np.nan)
        neg = np.where(stats[:, 3] > 0, -stats[:, 2] / stats[:, 3], np.nan)
    pos = np.where(np.isnan(pos), np.nan, np.maximum(MU_FLOOR, pos))
    neg = np.where(np.isnan(neg), np.nan, np.maximum(MU_FLOOR, neg))
    parts = [str(g).split(":", 1) + [""] for g in groups]
    gpt = np.array([p[0] for p in parts], dtype=object)
    gcell = np.array([p[1] for p in parts], dtype=object)
    mu_pos, rule_pos = _fallback(pos, gpt, gcell)
    mu_neg, rule_neg = _fallback(neg, gpt, gcell)
    counts = {
        f"{sign}_{RULES[c]}": int((r == c).sum())
        for sign, r in (("pos", rule_pos), ("neg", rule_neg))
        for c in range(len(RULES))
    }
    prov = {"mu_floor": MU_FLOOR, "fallback_order": list(RULES[1:4]), "rule_counts": counts}
    return NCSNormalizer(groups, mu_pos, mu_neg, rule_pos, rule_neg, prov)


def _normalize_block(w, codes, mu_pos, mu_neg):
    w = np.asarray(w)
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(float)
    out = np.empty(w.shape, dtype=float)
    if w.ndim == 2 and w.size:
        _normalize_kernel(
            w,
            np.asarray(codes, dtype=np.int64),
            np.asarray(mu_pos, dtype=float),
            np.asarray(mu_neg, dtype=float),
            out,
        )
    elif w.size:
        w = w.astype(float)
        pos, neg = w > 0, w < 0
        mp, mn = mu_pos[:, codes], mu_neg[:, codes]
        out[...] = 0.0
        out[pos] = w[pos] / mp[pos]
        out[neg] = w[neg] / mn[neg]
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
def _normalize_kernel(w, codes, mu_pos, mu_neg, out):  # pragma: no cover
    # one pass, no (query, sig) gathers of mu or boolean masks; NaN WTCS gives 0 as before
    for q in range(w.shape[0]):
        for i in range(w.shape[1]):
            x = np.float64(w[q, i])
            if x > 0:
                out[q, i] = x / mu_pos[q, codes[i]]
            elif x < 0:
                out[q, i] = x / mu_neg[q, codes[i]]
            else:
                out[q, i] = 0.0


def apply_ncs(wtcs, codes, norm: NCSNormalizer):
    """NCS = WTCS / μ⁺ (positive), WTCS / μ⁻ (negative), 0 for 0; lazy for dask input.

    Notes
    -----
    Blockwise over signature chunks; each task holds one ``(query, sig)`` block.
    """
    if isinstance(wtcs, da.Array):
        wtcs = wtcs.rechunk({0: -1})
        codes = da.asarray(codes).rechunk((wtcs.chunks[1],))
        fn = partial(_normalize_rows, mu_pos=norm.mu_pos, mu_neg=norm.mu_neg)
        return da.map_blocks(fn, wtcs, codes[None, :], dtype=float)
    return _normalize_block(wtcs, np.asarray(codes), norm.mu_pos, norm.mu_neg)


def _normalize_rows(w, codes2d, *, mu_pos, mu_neg):
    return _normalize_block(w, codes2d[0], mu_pos, mu_neg)
