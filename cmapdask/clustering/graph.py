"""Leiden or Louvain communities of a k-nearest-neighbour graph."""

from __future__ import annotations

from typing import Literal

import dask
import numpy as np
import xarray as xr

from cmapdask.clustering.common import _check_int, _square
from cmapdask.clustering.kernels import _by_size, _knn_edges
from cmapdask.errors import InputError, require
from cmapdask.model.provenance import provenance_record

__all__ = ["knn_from_matrix", "graph_clusters"]

Community = Literal["auto", "leiden", "louvain"]


def knn_from_matrix(matrix: xr.DataArray, *, k: int = 10) -> xr.Dataset:
    """Top-k neighbour lists (``top_index``, ``top_score``; dims ``sig``, ``rank``) of each row
    of a square similarity matrix, itself left out (for :func:`graph_clusters`)."""
    ids, m = _square(matrix, "knn_from_matrix")
    _check_int("k", k)
    if k >= ids.size:
        raise InputError(f"k={k} must be smaller than the {ids.size} items")
    m = m.copy()
    np.fill_diagonal(m, -np.inf)
    m = np.where(np.isfinite(m), m, -np.inf)
    idx = np.argsort(-m, axis=1, kind="stable")[:, :k]
    sc = np.take_along_axis(m, idx, axis=1)
    idx = np.where(np.isfinite(sc), idx, -1)
    return xr.Dataset(
        {
            "top_index": (("sig", "rank"), idx),
            "top_score": (("sig", "rank"), np.where(idx >= 0, sc, np.nan)),
        },
        coords={"sig": ids, "rank": np.arange(1, k + 1)},
    )


def _leiden_backend() -> str | None:
    """``"leidenalg"`` when igraph and leidenalg import, else ``None``."""
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401
    except ImportError:
        return None
    return "leidenalg"


def _communities_leiden(n, a, b, w, resolution, seed):
    import igraph as ig
    import leidenalg

    g = ig.Graph(n=n, edges=np.column_stack([a, b]).tolist(), directed=False)
    g.es["weight"] = w.tolist()
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights="weight",
        resolution_parameter=float(resolution),
        seed=int(seed),
        n_iterations=-1,
    )
    lab = np.asarray(part.membership, dtype=np.int64)
    modularity = float(
        g.modularity(part.membership, weights="weight", resolution=float(resolution))
    )
    return lab, modularity


def _communities_louvain(n, a, b, w, resolution, seed):
    nx = require("networkx", "ml", "Louvain graph clusters")

    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from(zip(a.tolist(), b.tolist(), w.tolist(), strict=False))
    comms = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
    lab = np.empty(n, np.int64)
    for i, c in enumerate(comms):
        lab[list(c)] = i
    modularity = float(nx.community.modularity(g, comms, weight="weight", resolution=resolution))
    return lab, modularity


def graph_clusters(
    neighbours: xr.Dataset,
    *,
    method: Community = "auto",
    k: int | None = None,
    resolution: float = 1.0,
    min_score: float = 0.0,
    seed: int = 0,
) -> xr.Dataset:
    """Leiden or Louvain communities of the k-nearest-neighbour graph.

    Parameters
    ----------
    neighbours
        ``top_index``/``top_score`` with dims ``("sig", "rank")``: a
        :func:`cmapdask.similarity.similarity` result, or :func:`knn_from_matrix` of a
        perturbagen matrix.
    method
        ``"leiden"``: the Leiden algorithm (Traag et al. 2019: refined, well-connected
        communities) with the modularity objective (``RBConfigurationVertexPartition``),
        from the ``leidenalg`` and ``igraph`` packages (C++; iterated until stable).
        ``"louvain"``: networkx's Louvain modularity optimisation (pure Python).
        ``"auto"``: Leiden where ``igraph`` and ``leidenalg`` are installed, else Louvain;
        the method used is in the provenance.
    k
        Use only the first k neighbours of each list (default all).
    resolution
        Modularity resolution (> 1: smaller communities).
    min_score
        Edges with a score at or below this are dropped (only positive similarity links).
    seed
        Random state of the community search.

    Returns
    -------
    xarray.Dataset
        ``cluster`` (``sig``, int32; communities numbered by decreasing size; a node with
        no edge is its own community); method, parameters, number of edges and modularity
        in ``attrs["cmapdask"]``.

    Notes
    -----
    Reads the neighbour lists (``N x k`` indices and scores) into memory and builds an
    undirected graph of at most ``N k`` edges (weight: the larger score of the two
    directions). Leiden (igraph/leidenalg) holds the graph in C structures (about
    100 bytes per edge) and takes seconds per million edges, so it suits the kNN graph
    of hundreds of thousands of signatures; networkx's Louvain is pure Python (about a
    minute and a few hundred bytes of Python objects per million edges), so keep it to
    pert-level graphs or tens of thousands of signatures.
    """
    if method not in ("auto", "louvain", "leiden"):
        raise InputError(f"method must be 'auto', 'leiden' or 'louvain', not {method!r}")
    for v in ("top_index", "top_score"):
        if v not in neighbours:
            raise InputError(f"graph_clusters: neighbour lists lack {v!r}")
    if not isinstance(resolution, (int, float, np.floating)) or not resolution > 0:
        raise InputError(f"resolution must be a positive number, got {resolution!r}")
    backend = _leiden_backend()
    if method == "auto":
        method = "leiden" if backend else "louvain"
    if method == "leiden" and backend is None:
        raise InputError(
            "Leiden needs the igraph and leidenalg packages: pip install 'cmapdask[ml]', "
            "or use method='louvain'"
        )
    idx, sc = dask.compute(neighbours["top_index"].data, neighbours["top_score"].data)
    idx, sc = np.asarray(idx), np.asarray(sc, dtype=np.float64)
    if k is not None:
        _check_int("k", k)
        idx, sc = idx[:, :k], sc[:, :k]
    n = idx.shape[0]
    a, b, w = _knn_edges(idx, sc, min_score)
    run = _communities_leiden if method == "leiden" else _communities_louvain
    lab, modularity = run(n, a, b, w, resolution, seed)
    out = xr.Dataset(
        {"cluster": (("sig",), _by_size(lab))}, coords={"sig": neighbours["sig"].values}
    )
    out.attrs["cmapdask"] = provenance_record(
        method,
        backend="leidenalg" if method == "leiden" else "networkx",
        k=int(idx.shape[1]),
        resolution=float(resolution),
        min_score=float(min_score),
        seed=int(seed),
        n_edges=int(a.size),
        modularity=modularity,
        input=str(neighbours.attrs.get("cmapdask", {}).get("metric", "")),
    )
    return out
