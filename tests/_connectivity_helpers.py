"""Test-only readers and a plain per-signature ES reference for the connectivity tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def read_gct_matrix(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(row ids, column ids, genes x samples matrix) of a GCT v1.3 file without metadata."""
    with open(path) as fh:
        assert fh.readline().startswith("#1.3")
        nrow, ncol, nrm, ncm = (int(x) for x in fh.readline().split("\t")[:4])
        assert nrm == 0 and ncm == 0
        cids = fh.readline().rstrip("\n").split("\t")[1:]
        rids, rows = [], []
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            rids.append(parts[0])
            rows.append([float(x) for x in parts[1:]])
    return rids, cids, np.asarray(rows)


def read_gctx(path: Path) -> tuple[list[str], list[str], np.ndarray, dict]:
    """(gene ids, signature ids, signatures x genes matrix, row metadata) of a GCTx."""
    with h5py.File(path, "r") as h:
        mat = h["/0/DATA/0/matrix"][()]
        dec = lambda a: [x.decode().strip() for x in a]  # noqa: E731
        rids = dec(h["/0/META/ROW/id"][()])
        cids = dec(h["/0/META/COL/id"][()])
        rmeta = {k: dec(h["/0/META/ROW"][k][()]) for k in h["/0/META/ROW"] if k != "id"}
    return rids, cids, mat, rmeta


def read_set_file(path: Path) -> dict[str, list[str]]:
    """GMT (name -> ids) or GRP (stem -> ids)."""
    text = Path(path).read_text().splitlines()
    if str(path).endswith(".grp"):
        return {Path(path).stem: [x.strip() for x in text if x.strip() and not x.startswith("#")]}
    out = {}
    for line in text:
        parts = line.rstrip("\n").split("\t")
        out[parts[0]] = [x for x in parts[2:] if x]
    return out


def reference_es(scores: np.ndarray, genes_in_set: np.ndarray, *, weighted: bool):
    """Full GSEA walk over all N genes of one signature: (ES, leading-edge fraction).

    Independent of the O(G) kernel: sorts the whole signature and tracks the running sum
    at every position, hits and misses alike.
    """
    n = scores.size
    order = np.argsort(-scores, kind="stable")
    hit = np.zeros(n, bool)
    hit[genes_in_set] = True
    hit = hit[order]
    g = int(hit.sum())
    if g == 0:
        return 0.0, 0.0
    w = np.abs(scores[order]) if weighted else np.ones(n)
    if weighted and w[hit].sum() == 0:
        w = np.ones(n)
    # hits so far / misses so far at every position, not a float cumsum of steps, so
    # mathematically equal deviations stay equal and "first maximum" is well defined
    hits_w = np.cumsum(np.where(hit, w, 0.0)) / w[hit].sum()
    misses = np.cumsum(~hit) / (n - g if n > g else 1)
    path = np.concatenate([[0.0], hits_w - misses])
    dev = np.abs(path)
    k = int(np.flatnonzero(dev >= dev.max() - 1e-12)[0])
    es = path[k]
    if es >= 0:
        lead = hit[:k].sum() / g
    else:
        lead = hit[k:].sum() / g
    return float(es), float(lead)
