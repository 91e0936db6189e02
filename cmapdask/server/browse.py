"""Browsing a store's metadata: signatures, compounds, genes, cells, MoAs, neighbours.

All browsing logic of the server lives here, so it can be swapped for the data-access
filter functions when they exist. Everything is read once from the store's coordinates
(``open_store``) into pandas tables; lookups by id go through those tables' indexes, never
through a path built from the request.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from cmapdask.errors import MetadataError, StoreError
from cmapdask.io.store import has_member, list_members, open_member, open_store

__all__ = ["Catalogue", "page"]

# Signature fields shown in lists (those the store has); the rest appear on detail pages.
SIG_FIELDS = [
    "pert_id",
    "cmap_name",
    "pert_iname",
    "pert_type",
    "cell_id",
    "cell_iname",
    "pert_idose",
    "pert_itime",
    "moa",
    "target",
    "is_touchstone",
]
GENE_FIELDS = ["gene_symbol", "gene_title", "feature_space", "gene_type"]


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _split(v) -> list[str]:
    """``"A|B"`` (the siginfo/compoundinfo list convention) as ``["A", "B"]``."""
    return [p.strip() for p in _text(v).split("|") if p.strip()]


def _plain(v):
    """A JSON-ready scalar: numpy numbers as Python numbers, NaN/None as None."""
    if v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts."""
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def page(df: pd.DataFrame, limit: int, offset: int) -> dict:
    """One page of a table: ``{"total", "offset", "limit", "items"}``."""
    return {
        "total": int(len(df)),
        "offset": offset,
        "limit": limit,
        "items": records(df.iloc[offset : offset + limit]),
    }


def _contains(df: pd.DataFrame, cols: list[str], text: str | None) -> pd.DataFrame:
    if not text:
        return df
    needle = text.strip().lower()
    hit = np.zeros(len(df), dtype=bool)
    for c in cols:
        if c in df:
            hit |= df[c].map(_text).str.lower().str.contains(needle, regex=False).to_numpy()
    return df[hit]


def _equals(df: pd.DataFrame, field: str, value: str | None) -> pd.DataFrame:
    if value is None or field not in df:
        return df
    return df[df[field].map(_text) == value]


class Catalogue:
    """The store's metadata as tables, loaded once and shared by every request.

    Parameters
    ----------
    store : str
        Store URL.
    storage_options : dict, optional
        fsspec options for ``store``.

    Notes
    -----
    Holds the signature and gene metadata in memory (about 1 KB per signature); the
    similarity member is opened lazily and only one signature's row is read per request.
    """

    def __init__(self, store, *, storage_options: dict | None = None):
        self.store = str(store)
        self.storage_options = storage_options
        ds = open_store(self.store, storage_options=storage_options)
        self.n_sig, self.n_gene = int(ds.sizes["sig"]), int(ds.sizes["gene"])
        sig = {"sig_id": ds["sig"].values}
        for k, c in ds.coords.items():
            if c.dims == ("sig",) and k != "sig":
                sig[k] = c.values
        self.sigs = pd.DataFrame(sig)
        self.sigs.index = pd.Index(self.sigs["sig_id"].astype(str))
        if "cell_id" not in self.sigs and "cell_iname" in self.sigs:
            self.sigs["cell_id"] = self.sigs["cell_iname"]
        gene = {"gene_id": ds["gene"].values}
        for k, c in ds.coords.items():
            if c.dims == ("gene",) and k != "gene":
                gene[k] = c.values
        self.genes = pd.DataFrame(gene)
        self.genes.index = pd.Index(self.genes["gene_id"].astype(str))
        self.members = list_members(self.store, storage_options=storage_options)
        self.spaces = [m.split("/", 1)[1] for m in self.members if m.startswith("index/")]
        self._lock = threading.Lock()
        self._similarity = None
        self.compounds = self._compounds()
        self.cells = self._group("cell_id", "cell")
        self.moas = self._moas()

    # ------------------------------------------------------------------ derived tables

    def _first(self, field):
        return (
            self.sigs.groupby("pert_id", sort=True)[field].first() if field in self.sigs else None
        )

    def _compounds(self) -> pd.DataFrame:
        if "pert_id" not in self.sigs:
            return pd.DataFrame(columns=["pert_id", "n_sigs"])
        g = self.sigs.groupby("pert_id", sort=True)
        out = pd.DataFrame({"pert_id": g.size().index, "n_sigs": g.size().to_numpy()})
        for f in ("cmap_name", "pert_iname", "pert_type", "moa", "target"):
            col = self._first(f)
            if col is not None:
                out[f] = col.map(_text).to_numpy()
        if "cell_id" in self.sigs:
            out["n_cells"] = g["cell_id"].nunique().to_numpy()
        out.index = pd.Index(out["pert_id"].astype(str))
        return out

    def _group(self, field, name) -> pd.DataFrame:
        if field not in self.sigs:
            return pd.DataFrame(columns=[name, "n_sigs"])
        g = self.sigs.groupby(self.sigs[field].map(_text), sort=True)
        out = pd.DataFrame({name: g.size().index, "n_sigs": g.size().to_numpy()})
        if "pert_id" in self.sigs:
            out["n_perts"] = g["pert_id"].nunique().to_numpy()
        out = out[out[name] != ""]
        out.index = pd.Index(out[name])
        return out

    def _moas(self) -> pd.DataFrame:
        if "moa" not in self.compounds:
            return pd.DataFrame(columns=["moa", "n_perts"])
        rows = {}
        for pert, moa in zip(self.compounds["pert_id"], self.compounds["moa"], strict=True):
            for m in _split(moa):
                rows.setdefault(m, []).append(pert)
        out = pd.DataFrame(
            {
                "moa": sorted(rows),
                "n_perts": [len(rows[m]) for m in sorted(rows)],
                "pert_ids": ["|".join(rows[m][:50]) for m in sorted(rows)],
            }
        )
        out.index = pd.Index(out["moa"])
        return out

    def targets(self) -> pd.DataFrame:
        """Targets of compounds (``target`` split on ``|``), with their compounds."""
        rows: dict[str, list[str]] = {}
        if "target" in self.compounds:
            for pert, t in zip(self.compounds["pert_id"], self.compounds["target"], strict=True):
                for x in _split(t):
                    rows.setdefault(x, []).append(pert)
        names = sorted(rows)
        return pd.DataFrame(
            {
                "target": names,
                "n_perts": [len(rows[t]) for t in names],
                "pert_ids": ["|".join(rows[t][:50]) for t in names],
            }
        )

    # ----------------------------------------------------------------------- listings

    def list_sigs(self, *, q=None, pert_id=None, cell=None, pert_type=None, moa=None):
        df = self.sigs
        if any(v is not None for v in (pert_id, cell, pert_type, moa)):
            # the data-access filters: one rule for field names (cell_iname / cell_id),
            # spellings and MoA lists, the same as `cmapdask sigs` and cmapdask.data.sigs
            from cmapdask.data import sigs

            try:
                hit = sigs(
                    self.store,
                    pert_id=pert_id,
                    cell_iname=cell,
                    pert_type=pert_type,
                    moa=moa,
                    storage_options=self.storage_options,
                )
            except MetadataError:  # the store has no such field: nothing matches
                hit = pd.DataFrame({"sig_id": []})
            df = df[df.index.isin(hit["sig_id"].astype(str))]
        df = _contains(df, ["sig_id", "pert_id", "cmap_name", "pert_iname", "cell_id"], q)
        return df[[c for c in ["sig_id", *SIG_FIELDS] if c in df]]

    def list_compounds(self, *, q=None, moa=None, target=None, pert_type=None):
        df = self.compounds
        if moa is not None and "moa" in df:
            df = df[df["moa"].map(lambda v: moa in _split(v))]
        if target is not None and "target" in df:
            df = df[df["target"].map(lambda v: target in _split(v))]
        df = _equals(df, "pert_type", pert_type)
        return _contains(df, ["pert_id", "cmap_name", "pert_iname", "moa", "target"], q)

    def list_genes(self, *, q=None, feature_space=None):
        df = _equals(self.genes, "feature_space", feature_space)
        df = _contains(df, ["gene_id", "gene_symbol", "gene_title"], q)
        return df[[c for c in ["gene_id", *GENE_FIELDS] if c in df]]

    def list_cells(self, *, q=None):
        return _contains(self.cells, ["cell"], q)

    def list_moas(self, *, q=None):
        return _contains(self.moas, ["moa", "pert_ids"], q)

    def list_targets(self, *, q=None):
        return _contains(self.targets(), ["target"], q)

    # ------------------------------------------------------------------------ details

    def sig(self, sig_id: str) -> dict | None:
        if sig_id not in self.sigs.index:
            return None
        return records(self.sigs.loc[[sig_id]])[0]

    def compound(self, pert_id: str) -> dict | None:
        if pert_id not in self.compounds.index:
            return None
        out = records(self.compounds.loc[[pert_id]])[0]
        out["moas"] = _split(out.get("moa"))
        out["targets"] = _split(out.get("target"))
        sigs = self.list_sigs(pert_id=pert_id)
        out["signatures"] = records(sigs.head(500))
        out["connections"] = self.compound_connections(pert_id)
        return out

    def similarity_member(self) -> str | None:
        """The first signature-by-signature neighbour member (``similarity/...``)."""
        names = [m for m in self.members if m.startswith("similarity/")]
        for name in names:
            ds = self._open_similarity(name)
            if ds is not None:
                return name
        return None

    def _open_similarity(self, name):
        with self._lock:
            if self._similarity is not None and self._similarity[0] == name:
                return self._similarity[1]
            if not has_member(self.store, name, storage_options=self.storage_options):
                return None
            ds = open_member(self.store, name, storage_options=self.storage_options)
            if "top_index" not in ds or ds["top_index"].dims[0] != "sig":
                return None
            if int(ds.sizes["sig"]) != self.n_sig:
                return None
            self._similarity = (name, ds)
            return ds

    def neighbours(self, sig_id: str, *, k: int = 20) -> dict | None:
        """Most similar and most opposite signatures of one signature, with metadata."""
        if sig_id not in self.sigs.index:
            return None
        name = self.similarity_member()
        if name is None:
            raise StoreError(
                f"{self.store}: no similarity member; build one with `cmapdask similarity`"
            )
        ds = self._similarity[1]
        row = int(self.sigs.index.get_loc(sig_id))
        out = {"sig_id": sig_id, "member": name}
        for side in ("top", "bottom"):
            if f"{side}_index" not in ds:
                out[side] = []
                continue
            idx = np.asarray(ds[f"{side}_index"][row].values)[:k]
            score = np.asarray(ds[f"{side}_score"][row].values)[:k]
            keep = (idx >= 0) & (idx < self.n_sig) & np.isfinite(score)
            meta = self.sigs.iloc[idx[keep]]
            meta = meta[[c for c in ["sig_id", *SIG_FIELDS] if c in meta]].copy()
            meta.insert(1, "score", score[keep].astype(float))
            out[side] = records(meta)
        return out

    def compound_connections(self, pert_id: str, *, n: int = 10) -> list[dict]:
        """Compounds whose signatures are most often top neighbours of this compound's."""
        name = self.similarity_member() if "pert_id" in self.sigs else None
        if name is None:
            return []
        ds = self._similarity[1]
        rows = np.flatnonzero(self.sigs["pert_id"].map(_text).to_numpy() == pert_id)[:200]
        if not rows.size:
            return []
        idx = np.asarray(ds["top_index"].values[rows]).ravel()
        score = np.asarray(ds["top_score"].values[rows]).ravel()
        keep = (idx >= 0) & (idx < self.n_sig) & np.isfinite(score)
        perts = self.sigs["pert_id"].map(_text).to_numpy()[idx[keep]]
        df = pd.DataFrame({"pert_id": perts, "score": score[keep]})
        df = df[df["pert_id"] != pert_id]
        if df.empty:
            return []
        g = df.groupby("pert_id")["score"].agg(["size", "mean"]).reset_index()
        g = g.rename(columns={"size": "n_neighbours", "mean": "mean_score"})
        g = g.sort_values(["n_neighbours", "mean_score", "pert_id"], ascending=[False, False, True])
        g = g.head(n)
        if "cmap_name" in self.compounds:
            g["cmap_name"] = self.compounds["cmap_name"].reindex(g["pert_id"]).to_numpy()
        if "moa" in self.compounds:
            g["moa"] = self.compounds["moa"].reindex(g["pert_id"]).to_numpy()
        return records(g)

    def search(self, q: str, *, limit: int = 20) -> dict:
        """Free text over compounds, MoAs, targets, cell lines and genes."""
        return {
            "q": q,
            "compounds": page(self.list_compounds(q=q), limit, 0),
            "moas": page(self.list_moas(q=q), limit, 0),
            "targets": page(self.list_targets(q=q), limit, 0),
            "cells": page(self.list_cells(q=q), limit, 0),
            "genes": page(self.list_genes(q=q), limit, 0),
        }
