"""Maximum-quantile summaries: signatures → (pert, cell) → pert → PCL (ALGORITHMS.md §7)."""

from __future__ import annotations

import hashlib

import numpy as np

from cmapdask.errors import InputError

__all__ = ["maxq", "aggregate_maxq", "aggregate_sets", "pcl_members", "SummaryPlan", "LEVELS"]


def _hazen(sorted_vals: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    # MATLAB prctile == numpy "hazen": position n*q + 0.5 (1-based), clamped, interpolated
    pos = np.clip(n * q + 0.5, 1, n) - 1
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = pos - lo
    take = lambda k: np.take_along_axis(sorted_vals, k[..., None], axis=-1)[..., 0]  # noqa: E731
    return take(lo) * (1 - f) + take(hi) * f


def maxq(x, axis: int = -1) -> np.ndarray:
    """The 67th or the 33rd percentile, whichever is larger in magnitude (ties: 33rd).

    Examples
    --------
    >>> round(float(maxq(np.array([1.0, 2.0, 3.0]))), 6)
    2.51
    >>> round(float(maxq(np.array([-3.0, -2.0, 1.0]))), 6)
    -2.51
    """
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    s = np.sort(x, axis=-1)  # NaN sorts last; count only the values
    n = np.maximum((~np.isnan(x)).sum(axis=-1), 1)
    p_lo, p_hi = _hazen(s, n, 0.33), _hazen(s, n, 0.67)
    out = np.where(np.abs(p_lo) < np.abs(p_hi), p_hi, p_lo)
    return np.where((~np.isnan(x)).any(axis=-1), out, np.nan)


def aggregate_maxq(scores: np.ndarray, labels, *, min_members: int = 1):
    """maxq of ``scores`` (``(query, item)``) over the items sharing each label.

    Parameters
    ----------
    scores : numpy.ndarray ``(query, item)``
    labels : array-like ``(item,)`` of hashable labels; ``None`` items are left out.
    min_members : int
        Labels with fewer items are dropped (PCLs need 2).

    Returns
    -------
    (unique labels, numpy.ndarray ``(query, label)``)

    Notes
    -----
    Holds the input and one gathered copy; groups of equal size are summarised together,
    so the cost is a sort per distinct group size, not a Python loop per label.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=object)
    if scores.ndim != 2 or labels.shape != (scores.shape[1],):
        raise InputError(f"labels {labels.shape} do not match scores {scores.shape}")
    keep = np.array([lab is not None for lab in labels], dtype=bool)
    uniq, inv = np.unique(labels[keep].astype(str), return_inverse=True)
    items = np.flatnonzero(keep)
    order = np.argsort(inv, kind="stable")
    counts = np.bincount(inv, minlength=uniq.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((scores.shape[0], uniq.size), np.nan)
    for k in np.unique(counts):
        gs = np.flatnonzero(counts == k)
        idx = items[order[starts[gs][:, None] + np.arange(k)]]  # (n_groups_k, k)
        out[:, gs] = maxq(scores[:, idx], axis=-1)
    sel = counts >= min_members
    return uniq[sel].astype(object), out[:, sel]


def pcl_members(pcls: dict[str, list[str]], pert_ids) -> dict[str, np.ndarray]:
    """Indices into ``pert_ids`` of each PCL's members that are present."""
    pos: dict[str, list[int]] = {}
    for i, p in enumerate(pert_ids):
        pos.setdefault(str(p), []).append(i)
    return {
        name: np.array(sorted(i for m in set(members) for i in pos.get(m, [])), dtype=int)
        for name, members in pcls.items()
    }


def aggregate_sets(scores: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """maxq of ``scores`` (``(query, item)``) over each list of item indices.

    Sets may overlap (a perturbagen in two PCLs); sets of equal size are done together.
    """
    scores = np.asarray(scores, dtype=float)
    out = np.full((scores.shape[0], len(members)), np.nan)
    sizes = np.array([m.size for m in members], dtype=int)
    for k in np.unique(sizes):
        if k == 0:
            continue
        gs = np.flatnonzero(sizes == k)
        idx = np.stack([members[g] for g in gs])
        out[:, gs] = maxq(scores[:, idx], axis=-1)
    return out


LEVELS = ("pert_cell", "pert_summary", "pcl_cell", "pcl_summary")


def _groups(inverse: np.ndarray, n: int, values: np.ndarray | None = None) -> list:
    """``[values[inverse == k] for k in range(n)]`` in one sort, not n passes."""
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(n + 1))
    taken = order if values is None else values[order]
    return [taken[bounds[k] : bounds[k + 1]] for k in range(n)]


class SummaryPlan:
    """Which signatures feed which (pert, cell), pert and PCL rows; pure metadata.

    Parameters
    ----------
    pert_id, cell_id : array-like ``(sig,)``; signatures with a missing pert_id are left out.
    pcls : mapping of PCL name to pert_ids, optional.
    min_pcl_members : int
        A PCL (per cell line, or overall) needs this many members present (2 in CMap).
    """

    def __init__(self, pert_id, cell_id, pcls=None, *, min_pcl_members: int = 2):
        pert = np.array(["" if p is None else str(p) for p in pert_id], dtype=object)
        cell = np.array(["" if c is None else str(c) for c in cell_id], dtype=object)
        ok = pert != ""
        pc = np.array([f"{p}:{c}" for p, c in zip(pert, cell, strict=False)], dtype=object)
        self.pc_labels, pc_inv = np.unique(pc[ok].astype(str), return_inverse=True)
        self.pc_labels = self.pc_labels.astype(object)
        sig_idx = np.flatnonzero(ok)
        self.pc_members = _groups(pc_inv, self.pc_labels.size, sig_idx)
        first = [m[0] for m in self.pc_members]
        self.pc_pert = pert[first] if first else np.zeros(0, dtype=object)
        self.pc_cell = cell[first] if first else np.zeros(0, dtype=object)
        self.pert_labels, pert_inv = np.unique(self.pc_pert.astype(str), return_inverse=True)
        self.pert_labels = self.pert_labels.astype(object)
        self.pert_members = _groups(pert_inv, self.pert_labels.size)
        # a cheap deterministic token for dask (pickling the member lists to hash them
        # cost tens of seconds at 100k signatures)
        h = hashlib.sha1()
        for part in (pert, cell):
            h.update("\x1f".join(part.tolist()).encode())
        for name in sorted(pcls or {}):
            h.update(("\x1e" + str(name) + "\x1f" + "\x1f".join(map(str, pcls[name]))).encode())
        h.update(str(min_pcl_members).encode())
        self.token = h.hexdigest()
        self.pcl_cell_labels, self.pcl_cell_members = [], []
        self.pcl_labels, self.pcl_members = [], []
        pert_pos = {p: i for i, p in enumerate(self.pert_labels)}
        for name, perts in (pcls or {}).items():
            ps = {str(p) for p in perts}
            pidx = np.array(sorted(pert_pos[p] for p in ps if p in pert_pos), dtype=int)
            if pidx.size >= min_pcl_members:
                self.pcl_labels.append(str(name))
                self.pcl_members.append(pidx)
            in_pcl = np.isin(self.pc_pert.astype(str), list(ps))
            for c in np.unique(self.pc_cell[in_pcl].astype(str)):
                m = np.flatnonzero(in_pcl & (self.pc_cell.astype(str) == c))
                if m.size >= min_pcl_members:
                    self.pcl_cell_labels.append(f"{name}:{c}")
                    self.pcl_cell_members.append(m)
        self.pcl_labels = np.array(self.pcl_labels, dtype=object)
        self.pcl_cell_labels = np.array(self.pcl_cell_labels, dtype=object)

    def __dask_tokenize__(self):
        return ("SummaryPlan", self.token)

    def sizes(self) -> dict[str, int]:
        return {
            "pert_cell": self.pc_labels.size,
            "pert_summary": self.pert_labels.size,
            "pcl_cell": self.pcl_cell_labels.size,
            "pcl_summary": self.pcl_labels.size,
        }

    def labels(self, level: str) -> np.ndarray:
        return {
            "pert_cell": self.pc_labels,
            "pert_summary": self.pert_labels,
            "pcl_cell": self.pcl_cell_labels,
            "pcl_summary": self.pcl_labels,
        }[level]

    def cells(self, level: str):
        """Cell line of each row of a per-cell level (None for the summary levels)."""
        if level == "pert_cell":
            return self.pc_cell
        if level == "pcl_cell":
            return np.array([lab.rsplit(":", 1)[1] for lab in self.pcl_cell_labels], dtype=object)
        return None

    def apply(self, ncs: np.ndarray) -> dict[str, np.ndarray]:
        """Every level of ``(query, sig)`` NCS, in numpy."""
        pc = aggregate_sets(ncs, self.pc_members)
        pert = aggregate_sets(pc, self.pert_members)
        return {
            "pert_cell": pc,
            "pert_summary": pert,
            "pcl_cell": aggregate_sets(pc, self.pcl_cell_members),
            "pcl_summary": aggregate_sets(pert, self.pcl_members),
        }

    def apply_concat(self, ncs: np.ndarray) -> np.ndarray:
        levels = self.apply(ncs)
        return np.concatenate([levels[k] for k in LEVELS], axis=1)
