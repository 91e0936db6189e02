"""Enrichment score, WTCS and leading edge on sorted hit ranks (ALGORITHMS.md §2-3).

The kernels work on the ranks and scores of a set's own genes only: after sorting the G
hit ranks of a signature, ES is one O(G) pass, never a walk over all N genes. Arrays are
signature-major ``(sig, gene_in_set)`` here; the query engine gathers them from the
gene-major index.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np

from cmapdask.errors import InputError

__all__ = ["enrichment_scores", "combine_wtcs", "Metric", "Tail"]

Metric = Literal["wtcs", "cs"]
Tail = Literal["both", "up", "down"]


@numba.njit(nogil=True, cache=True)
def _walk(keys, weights, shift, mask, n_genes, weighted, es, lead):  # pragma: no cover - jit
    n_sig, g = keys.shape
    miss = float(n_genes - g) if n_genes > g else 1.0
    for i in range(n_sig):
        total = 0.0
        if weighted:
            for j in range(g):
                total += abs(weights[i, j])
        use_w = weighted and total > 0.0
        if not use_w:
            total = float(g)
        cum = 0.0
        best = 0.0
        best_abs = -1.0
        jstar = 0
        for j in range(g):
            key = keys[i, j]
            rank = key >> shift
            w = abs(weights[i, key & mask]) if use_w else 1.0
            cum += w
            after = cum / total - (rank - (j + 1)) / miss
            before = after - w / total
            e = before if abs(after) < abs(before) else after
            # a rounding-level gain does not displace an earlier maximum: "first" must
            # not depend on summation order
            if abs(e) > best_abs + 1e-12:
                best_abs = abs(e)
                best = e
                jstar = j + 1
        es[i] = best
        lead[i] = jstar / g if best >= 0 else (g - jstar + 1) / g


def enrichment_scores(
    ranks: np.ndarray,
    scores: np.ndarray,
    n_genes: int,
    *,
    metric: Metric = "wtcs",
) -> tuple[np.ndarray, np.ndarray]:
    """ES and leading-edge fraction of one gene set in many signatures.

    Parameters
    ----------
    ranks : numpy.ndarray
        ``(sig, G)`` ranks (1 = top, within a space of ``n_genes``) of the set's genes.
    scores : numpy.ndarray or None
        ``(sig, G)`` scores of the same genes (their absolute values are the hit weights);
        may be ``None`` for ``metric="cs"``.
    n_genes : int
        N, the size of the feature space the ranks were taken in.
    metric : {"wtcs", "cs"}
        ``"wtcs"``: weighted KS, hit weight ``|score|`` (GSEA exponent 1).
        ``"cs"``: unweighted KS, every hit weighs 1.

    Returns
    -------
    es, leadf : numpy.ndarray
        float64 arrays of length ``sig``. An empty set gives ES 0 and leading edge 0.
        A weighted set whose hit scores are all 0 falls back to equal weights.

    Notes
    -----
    Holds a few ``(sig, G)`` arrays; time ``O(sig * G log G)`` (one sort of G keys per
    signature, done by numpy's vectorised sort).
    """
    ranks = np.asarray(ranks)
    if scores is None:  # unweighted: the weights are never read
        if metric == "wtcs":
            raise InputError("the weighted metric 'wtcs' needs the scores")
        scores = np.zeros((ranks.shape[0], 1), dtype=np.float32) if ranks.ndim == 2 else ranks
        scores = np.broadcast_to(scores[:, :1], ranks.shape) if ranks.ndim == 2 else scores
    scores = np.asarray(scores)
    if ranks.shape != scores.shape or ranks.ndim != 2:
        raise InputError(f"ranks {ranks.shape} and scores {scores.shape} must be equal 2-D")
    if metric not in ("wtcs", "cs"):
        raise InputError(f"metric must be 'wtcs' or 'cs', not {metric!r}")
    n_sig, g = ranks.shape
    es = np.zeros(n_sig)
    lead = np.zeros(n_sig)
    if g == 0 or n_sig == 0:
        return es, lead
    # pack (rank, position in set) into one integer so a plain sort carries the weights
    shift = max(int(g - 1).bit_length(), 1)
    fits32 = (int(n_genes) + 1) << shift < np.iinfo(np.int32).max
    kdt = np.int32 if fits32 else np.int64
    keys = (ranks.astype(kdt) << kdt(shift)) | np.arange(g, dtype=kdt)
    keys.sort(axis=1)
    w = scores if metric == "cs" and scores.strides[1] == 0 else np.ascontiguousarray(
        scores, dtype=np.float32)
    _walk(keys, w.astype(np.float32, copy=False), kdt(shift),
          kdt((1 << shift) - 1), int(n_genes), metric == "wtcs", es, lead)
    return es, lead


def combine_wtcs(es_up: np.ndarray, es_dn: np.ndarray, *, tail: Tail = "both") -> np.ndarray:
    """Combine the two ES into WTCS (or CS) (ALGORITHMS.md §3).

    Parameters
    ----------
    es_up, es_dn : array-like
        ES of the up and the down set (``es_dn`` is ignored for ``tail="up"`` and
        ``es_up`` for ``tail="down"``).
    tail : {"both", "up", "down"}
        ``"both"``: ``(up - down) / 2`` where the signs differ (sign(0) = 0), else 0.
        ``"up"``: ``es_up``. ``"down"``: ``-es_dn``.

    Examples
    --------
    >>> combine_wtcs(np.array([0.5, 0.5, 0.0]), np.array([-0.3, 0.2, 0.0])).tolist()
    [0.4, 0.0, 0.0]
    """
    if tail == "up":
        return np.asarray(es_up, dtype=float)
    if tail == "down":
        return -np.asarray(es_dn, dtype=float)
    if tail != "both":
        raise InputError(f"tail must be 'both', 'up' or 'down', not {tail!r}")
    es_up = np.asarray(es_up, dtype=float)
    es_dn = np.asarray(es_dn, dtype=float)
    return np.where(np.sign(es_up) != np.sign(es_dn), (es_up - es_dn) / 2, 0.0)
