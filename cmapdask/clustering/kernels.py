"""numpy maths of one block: z-scores, Gram partials, nearest centres, condensed
distances, kNN edges."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    # per signature: Euclidean k-means on z-scored rows follows Pearson correlation
    x = x.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return (x / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def _gram_block(x: np.ndarray) -> np.ndarray:
    """``(1, G + 1, G)``: column sums, then ``x^T x``, in float64, of one block of rows."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x.sum(axis=0)[None, :], x.T @ x], axis=0)[None]


def _min_d2(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre and squared distance per row (scikit-learn chunks the distance
    matrix to its working memory, so a block never holds rows x candidates at once)."""
    from sklearn.metrics import pairwise_distances_argmin_min

    idx, d = pairwise_distances_argmin_min(np.asarray(x, np.float64), centers)
    return idx, d * d


def _cost_block(x, centers):
    return np.array([_min_d2(x, centers)[1].sum()])


def _sample_block(x, centers, scale, seed, rnd, block):
    _, d2 = _min_d2(x, centers)
    keep = np.random.default_rng([seed, rnd, block]).random(d2.size) < np.minimum(1.0, scale * d2)
    return np.asarray(x, np.float64)[keep]


def _weight_block(x, centers):
    idx, _ = _min_d2(x, centers)
    return np.bincount(idx, minlength=centers.shape[0]).astype(np.float64)


def _nearest(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (z * z).sum(1)[:, None] - 2 * z @ centers.T + (centers * centers).sum(1)[None, :]
    lab = d.argmin(axis=1)
    return np.stack([lab, np.sqrt(np.maximum(d[np.arange(len(z)), lab], 0))], axis=1)


def _condensed_similarity(m: np.ndarray, *, block: int = 1024) -> np.ndarray:
    """``(M + M^T) / 2`` above the diagonal as scipy's condensed vector (float64), built
    a block of rows at a time so that no second ``P x P`` array exists."""
    p = m.shape[0]
    out = np.empty(p * (p - 1) // 2)
    for r0 in range(0, p, block):
        r1 = min(p, r0 + block)
        sym = (m[r0:r1].astype(np.float64) + m[:, r0:r1].T.astype(np.float64)) / 2
        for i in range(r0, r1):
            start = i * p - i * (i + 1) // 2
            out[start : start + p - i - 1] = sym[i - r0, i + 1 :]
    return out


def _knn_edges(idx: np.ndarray, sc: np.ndarray, min_score: float):
    """Undirected weighted edges ``(a, b, w)`` with ``a < b`` (weight: the larger direction)."""
    n = idx.shape[0]
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols, w = idx.ravel(), sc.ravel()
    keep = (cols >= 0) & (cols < n) & np.isfinite(w) & (w > min_score) & (cols != rows)
    a, b, w = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], w[keep]
    e = pd.DataFrame({"a": a, "b": b, "w": w}).groupby(["a", "b"], sort=True)["w"].max()
    return (
        e.index.get_level_values(0).to_numpy(np.int64),
        e.index.get_level_values(1).to_numpy(np.int64),
        e.to_numpy(np.float64),
    )


def _by_size(lab: np.ndarray) -> np.ndarray:
    """Renumber communities 0, 1, ... by decreasing size (ties: smallest member first)."""
    uniq, inv, cnt = np.unique(lab, return_inverse=True, return_counts=True)
    first = np.full(uniq.size, lab.size)
    np.minimum.at(first, inv, np.arange(lab.size))
    order = np.lexsort((first, -cnt))
    rank = np.empty(uniq.size, np.int32)
    rank[order] = np.arange(uniq.size)
    return rank[inv].astype(np.int32)
