"""Exact PCA of a tall dask array from its Gram matrix, in one pass over the rows."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from cmapdask.clustering.kernels import _gram_block

__all__ = ["covariance_pca"]

_COVARIANCE_MAX_GENES = 4096  # Gram partials of (G + 1) x G float64: 134 MB at this size


def covariance_pca(x: da.Array, n_components: int) -> dict:
    """Exact PCA of a tall matrix from its Gram matrix, in one pass over the rows.

    Parameters
    ----------
    x
        ``(n, G)`` dask array, chunks of whole rows (G columns in each block).
    n_components
        Components kept.

    Returns
    -------
    dict
        ``mean`` (G), ``components`` (``n_components x G``, unit rows, each signed so its
        largest absolute loading is positive), ``explained_variance`` and
        ``explained_variance_ratio`` (``n_components``; variance with ``n - 1``
        denominator, ratio of the total), ``finite`` (False when ``x`` holds a non-finite
        value).

    Notes
    -----
    One task per block computes that block's column sums and ``x^T x`` in float64
    (``8 (G + 1) G`` bytes: 7.6 MB for the 978 landmarks); the partials are summed in a
    tree and the ``G x G`` covariance is diagonalised in this process (``O(G^3)``).
    Meant for ``G`` up to a few thousand; randomized PCA suits wider data.
    """
    n, g = x.shape
    x = x.rechunk({1: -1})
    parts = x.map_blocks(
        _gram_block,
        chunks=((1,) * x.numblocks[0], (g + 1,), (g,)),
        new_axis=[1],
        dtype=np.float64,
        meta=np.empty((0, 0, 0)),
    )
    (tot,) = dask.compute(parts.sum(axis=0))
    if not np.isfinite(tot).all():
        return {"finite": False}
    mean = tot[0] / n
    cov = (tot[1:] - n * np.outer(mean, mean)) / max(n - 1, 1)
    cov = (cov + cov.T) / 2
    val, vec = np.linalg.eigh(cov)
    val, vec = np.maximum(val[::-1], 0.0), vec[:, ::-1]
    comps = vec[:, :n_components].T
    flip = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(flip == 0, 1.0, flip)[:, None]
    total = float(np.trace(cov))
    ev = val[:n_components]
    return {
        "finite": True,
        "mean": mean,
        "components": comps,
        "explained_variance": ev,
        "explained_variance_ratio": ev / total if total > 0 else np.zeros_like(ev),
    }
