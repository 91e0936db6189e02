"""Cluster labels out (store member, table) and back in (coordinates)."""

from __future__ import annotations

import os

import dask
import numpy as np
import pandas as pd
import xarray as xr

from cmapdask.errors import InputError
from cmapdask.io.pending import deferrable

__all__ = ["clusters_table", "write_clusters", "with_cluster_coords"]


def clusters_table(
    result: xr.Dataset, *, fields: tuple[str, ...] = ("pert_id", "cell_iname", "cell_id")
) -> pd.DataFrame:
    """Labels as a table: the id column (``sig`` or ``pert``), ``cluster``, and any of "
    "``fields``."""
    dim = result["cluster"].dims[0]
    (lab,) = dask.compute(result["cluster"].data)
    df = pd.DataFrame(
        {dim: np.asarray(result[dim].values, dtype=object), "cluster": np.asarray(lab)}
    )
    for f in fields:
        if f in result.coords and result[f].dims == (dim,):
            df[f] = result[f].values
    return df


@deferrable("cluster labels", lambda a: a["store"] or a["table"])
def write_clusters(
    result: xr.Dataset,
    store=None,
    *,
    name: str,
    table=None,
    storage_options: dict | None = None,
    compute: bool = True,
) -> dict[str, str]:
    """Write cluster labels as the store member ``clusters/<name>`` and/or a table.

    Parameters
    ----------
    result
        From :func:`kmeans_signatures`, :func:`hierarchical_perts` or
        :func:`graph_clusters`.
    store
        Store URL; the labels (and centres, linkage ...) become member ``clusters/<name>``
        with the result's provenance, published atomically.
    name
        Member name below ``clusters/``.
    table
        Path of a table of labels (``.parquet`` for Parquet, anything else TSV), written
        atomically.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Notes
    -----
    Computes the lazy labels chunk by chunk while writing; memory O(n) for the table.
    """
    from cmapdask.io.atomic import publish_file

    if store is None and table is None:
        raise InputError("write_clusters: give a store, a table path, or both")
    if not name or "/" in name.strip("/"):
        raise InputError(f"write_clusters: invalid name {name!r}")
    out = {}
    if store is not None:
        from cmapdask.io.store import write_member

        ds = result.reset_coords(drop=True)  # metadata stays with the store, labels here
        out["member"] = write_member(
            store,
            f"clusters/{name}",
            ds,
            family="clusters",
            storage_options=storage_options,
            provenance=result.attrs.get("cmapdask", {}),
        )
    if table is not None:
        df = clusters_table(result)
        with publish_file(table, storage_options=storage_options) as tmp:
            if str(table).endswith(".parquet"):
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, sep="\t", index=False)
        out["table"] = os.fspath(table)
    return out


def with_cluster_coords(
    ds: xr.Dataset,
    store,
    *,
    names: list[str] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """``ds`` with the labels of stored clusterings as coordinates ``cluster_<name>``.

    Parameters
    ----------
    ds
        Signatures (or any dataset whose dimension matches the clustering's: ``sig`` for
        k-means and signature graphs, ``pert`` for perturbagen clusterings).
    store
        Store URL holding members ``clusters/<name>`` (:func:`write_clusters`).
    names
        Clusterings to attach (default: every ``clusters/*`` member).

    Returns
    -------
    xarray.Dataset
        ``cluster_<name>`` along the matching dimension, int32, ``-1`` where an id has no
        label; each coordinate's ``attrs["cmapdask"]`` is the clustering's provenance.

    Notes
    -----
    Reads the label arrays only (``4 n`` bytes each).
    """
    from cmapdask.io.store import list_members, open_member

    if names is None:
        names = [
            m.split("/", 1)[1]
            for m in list_members(store, storage_options=storage_options)
            if m.startswith("clusters/")
        ]
    out = ds
    for name in names:
        member = open_member(store, f"clusters/{name}", storage_options=storage_options)
        if "cluster" not in member:
            raise InputError(f"{store}: member clusters/{name} holds no cluster labels")
        dim = member["cluster"].dims[0]
        if dim not in ds.dims:
            raise InputError(f"clusters/{name} labels {dim!r}, which the dataset does not have")
        lab = pd.Series(
            np.asarray(member["cluster"].values, dtype=np.int64),
            index=[str(v) for v in member[dim].values],
        )
        vals = lab.reindex([str(v) for v in ds[dim].values]).fillna(-1).to_numpy(np.int32)
        coord = xr.DataArray(
            vals, dims=(dim,), attrs={"cmapdask": dict(member.attrs.get("cmapdask", {}))}
        )
        out = out.assign_coords({f"cluster_{name}": coord})
    return out
