"""Pictures of clustering and enrichment results (matplotlib, Agg backend; PNG or SVG by suffix).

- :func:`plot_clustered_heatmap`: a perturbagen x perturbagen matrix in dendrogram order
  with a MoA colour bar on each side;
- :func:`plot_running_sum`: the running-sum walk of a set in a ranked list, hits as ticks;
- :func:`plot_roc`: ROC curves from :func:`cmapdask.moa_recall` histograms (or the estimate
  ``enrich.moa_recall_approx``).

Each function writes one file atomically and returns its path.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from cmapdask.errors import InputError, require

__all__ = ["plot_clustered_heatmap", "plot_running_sum", "plot_roc"]


def _figure():
    matplotlib = require("matplotlib", "ml", "pictures (heatmaps, running sums, ROC curves)")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    from cmapdask.io.atomic import publish_file

    ext = os.path.splitext(str(path))[1].lower()
    if ext not in (".png", ".svg"):
        raise InputError(f"{path}: pictures are written as .png or .svg")
    with publish_file(path) as tmp:
        fig.savefig(tmp, format=ext[1:], dpi=150, bbox_inches="tight")
    _figure().close(fig)
    return str(path)


def _colours(labels):
    plt = _figure()
    names = sorted({str(v) for v in labels if v is not None})
    cmap = plt.get_cmap("tab20", max(len(names), 1))
    lut = {n: cmap(i % 20) for i, n in enumerate(names)}
    grey = (0.85, 0.85, 0.85, 1.0)
    return np.array([lut.get(str(v), grey) if v is not None else grey for v in labels]), lut


def plot_clustered_heatmap(
    matrix: xr.DataArray, clusters: xr.Dataset, path, *, moa=None, title: str = ""
) -> str:
    """Heatmap of ``matrix`` in the leaf order of :func:`~cmapdask.clustering.hierarchical_perts`.

    ``moa``: annotation per row (``None``: none), drawn as colour bars. Computes the matrix
    (P x P; legible up to a few thousand perturbagens).
    """
    plt = _figure()
    order = np.asarray(clusters["leaf_order"].values)
    m = np.asarray(matrix.values, dtype=float)[np.ix_(order, order)]
    fig = plt.figure(figsize=(8, 7.5))
    ax = fig.add_axes([0.12, 0.05, 0.72, 0.72])
    lim = np.nanmax(np.abs(m)) if np.isfinite(m).any() else 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    if moa is not None:
        col, lut = _colours(np.asarray(moa, dtype=object)[order])
        top = fig.add_axes([0.12, 0.78, 0.72, 0.025])
        top.imshow(col[None, :, :], aspect="auto")
        left = fig.add_axes([0.09, 0.05, 0.025, 0.72])
        left.imshow(col[:, None, :], aspect="auto")
        for a in (top, left):
            a.set_axis_off()
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in lut.values()][:20]
        fig.legend(handles, list(lut)[:20], loc="upper right", fontsize=6, frameon=False)
    fig.colorbar(im, cax=fig.add_axes([0.86, 0.05, 0.02, 0.3]))
    fig.suptitle(title or str(matrix.name or ""), y=0.85)
    return _save(fig, path)


def plot_running_sum(scores, members, path, *, title: str = "") -> str:
    """Running-sum walk of the items ``members`` (boolean mask or indices) in one list of
    ``scores`` (ranked highest first; NaN left out)."""
    from cmapdask.enrich import running_sum

    plt = _figure()
    s = np.asarray(scores, dtype=float)
    mask = np.zeros(s.size, bool)
    mask[np.asarray(members)] = True
    keep = np.flatnonzero(np.isfinite(s))
    order = keep[np.argsort(-s[keep], kind="stable")]
    pos = np.flatnonzero(mask[order])
    if pos.size == 0:
        raise InputError(f"{path}: no member of the set is in the list")
    walk = running_sum(pos, order.size)
    fig, (a1, a2) = plt.subplots(
        2, 1, figsize=(7, 4), sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    a1.plot(np.arange(walk.size), walk, color="tab:green")
    a1.axhline(0, color="k", lw=0.5)
    a1.set_ylabel("running sum")
    a2.vlines(pos, 0, 1, color="k", lw=0.7)
    a2.set_yticks([])
    a2.set_xlabel("rank in list")
    fig.suptitle(title)
    return _save(fig, path)


def plot_roc(recall: xr.Dataset, path, *, groups=None, title: str = "") -> str:
    """ROC curves of a :func:`cmapdask.moa_recall` result (AUROC in the legend)."""
    from cmapdask.enrich import roc_curve

    plt = _figure()
    res = recall.compute()
    fig, ax = plt.subplots(figsize=(5, 5))
    for g in groups or res["group"].values.tolist():
        fpr, tpr = roc_curve(res["hist"].sel(group=g).values)
        ax.plot(fpr, tpr, label=f"{g} (AUROC {float(res['auroc'].sel(group=g)):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    ax.set_xlabel("false positive rate (different MoA)")
    ax.set_ylabel("true positive rate (same MoA)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    return _save(fig, path)
