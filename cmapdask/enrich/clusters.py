"""Over-representation of annotation sets in clusters (hypergeometric, BH)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.stats

from cmapdask.annotations import membership
from cmapdask.enrich.kernels import bh
from cmapdask.errors import InputError
from cmapdask.model.missing import labels as _labels

__all__ = ["cluster_enrichment"]


def cluster_enrichment(
    clusters,
    item_labels,
    sets: Mapping[str, Sequence[str]],
    *,
    background: Literal["annotated", "all"] = "annotated",
) -> pd.DataFrame:
    """Hypergeometric over-representation of each set in each cluster.

    Parameters
    ----------
    clusters
        Cluster label per item (negative integers or ``None``: unclustered, left out).
    item_labels
        Id per item matched with set members (``pert_id`` of each signature, or the
        perturbagen itself).
    sets
        ``{set name: member ids}``.
    background
        ``"annotated"``: items in at least one set (the usual MoA universe);
        ``"all"``: every clustered item.

    Returns
    -------
    pandas.DataFrame
        ``cluster, set, k, cluster_size, set_size, n_background, expected, fold, p, q``
        for every (cluster, set) pair with ``k >= 1``; ``p = P(X >= k)``, X
        hypergeometric; ``q`` is BH over all (cluster, set) pairs of the background
        (pairs with k = 0 have p = 1 and count in the correction). Sorted by p.

    Notes
    -----
    In memory, O(items + memberships); the counts are one ``bincount``. The
    hypergeometric treats items as independent draws: with several signatures per
    compound (which cluster together) the p-values of signature clusters are too small;
    cluster perturbagens (:func:`cmapdask.clustering.hierarchical_perts`) for calibrated
    ones.
    """
    cl = pd.Series(np.asarray(clusters, dtype=object))
    labels = _labels(item_labels)
    if len(cl) != labels.size:
        raise InputError(f"{len(cl)} cluster labels for {labels.size} items")
    if background not in ("annotated", "all"):
        raise InputError(f"background must be 'annotated' or 'all', not {background!r}")
    ok = cl.notna().to_numpy() & ~cl.isin([-1]).to_numpy()
    names, it, st = membership(sets, labels)
    annotated = np.zeros(labels.size, bool)
    annotated[it] = True
    bg = ok & (annotated if background == "annotated" else True)
    if not bg.any():
        raise InputError("cluster_enrichment: no clustered item is annotated")
    codes, uniq = pd.factorize(cl.where(bg, None), sort=True)
    m = int(bg.sum())
    n_cl, n_set = len(uniq), len(names)
    sel = bg[it]
    cnt = np.bincount(codes[it[sel]] * n_set + st[sel], minlength=n_cl * n_set).reshape(n_cl, n_set)
    size_c = np.bincount(codes[bg], minlength=n_cl)
    size_s = np.bincount(st[sel], minlength=n_set)
    p = scipy.stats.hypergeom.sf(cnt - 1, m, size_s[None, :], size_c[:, None])
    q = bh(p.ravel()).reshape(p.shape)
    ci, si = np.nonzero(cnt)
    expected = size_c[ci] * size_s[si] / m
    df = pd.DataFrame(
        {
            "cluster": np.asarray(uniq, dtype=object)[ci],
            "set": np.array(names, dtype=object)[si],
            "k": cnt[ci, si],
            "cluster_size": size_c[ci],
            "set_size": size_s[si],
            "n_background": m,
            "expected": expected,
            "fold": cnt[ci, si] / expected,
            "p": p[ci, si],
            "q": q[ci, si],
        }
    )
    return df.sort_values(["p", "cluster", "set"], kind="stable").reset_index(drop=True)
