"""The Zarr signature store: one Zarr v3 group per collection of signatures.

Layout::

    STORE/                      root group; attrs["cmapdask"] holds provenance and "complete"
      expr                      float32 (sig, gene): shards of whole signatures (all
                                genes) made of inner chunks of a few signatures, blosc-zstd
                                (cmapdask.io.store.shards); written once, never rewritten
      sig, gene                 ids (variable-length UTF-8)
      <field>                   metadata coordinates along sig or gene
      index/<space>/            query index (cmapdask.connectivity)      } members, each a
      similarity/<name>/        top-k neighbours (cmapdask.similarity)   } group written by
      clusters/<name>/          labels (cmapdask.clustering)             } write_member

Writers never expose a partial result: a new store is written beside its destination and
published in one step (cmapdask.io.atomic), and ``attrs["cmapdask"]["complete"]`` is set
last; :func:`open_store` refuses a store without it. Members are published the same way,
so adding one never touches ``expr``.

The package, one module per part: :mod:`~cmapdask.io.store.layout` (schema, chunk policy,
provenance record), :mod:`~cmapdask.io.store.access` (reaching the Zarr groups),
:mod:`~cmapdask.io.store.write` (stores and members),
:mod:`~cmapdask.io.store.shards` (``expr``'s shards, encoded and decoded),
:mod:`~cmapdask.io.store.publish`
(complete flags, consolidated metadata), :mod:`~cmapdask.io.store.read` (opening),
:mod:`~cmapdask.io.store.conversion` (GCTx/GCT in, tables joined),
:mod:`~cmapdask.io.store.info` and :mod:`~cmapdask.io.store.checksum`.
"""

from cmapdask.io.store.access import _is_local_url, _open_group, quiet_zarr, zarr_options
from cmapdask.io.store.conversion import _join_tables, convert
from cmapdask.io.store.info import store_info
from cmapdask.io.store.layout import (
    SCHEMA_VERSION,
    _provenance,
    _strings_to_str,
    store_chunk_rows,
)
from cmapdask.io.store.publish import (
    _check_complete,
    consolidate,
    ensure_parent_groups,
    mark_complete_remote,
    set_provenance,
)
from cmapdask.io.store.read import has_member, list_members, open_member, open_store
from cmapdask.io.store.write import write_member, write_store

__all__ = [
    "SCHEMA_VERSION",
    "convert",
    "open_store",
    "write_store",
    "write_member",
    "open_member",
    "has_member",
    "list_members",
    "store_chunk_rows",
    "store_info",
    "quiet_zarr",
    "zarr_options",
    "ensure_parent_groups",
    "set_provenance",
    "mark_complete_remote",
    "consolidate",
]

# the private names other cmapdask modules use (data.tables, io.virtual)
_SHARED = (_check_complete, _is_local_url, _join_tables, _open_group, _provenance, _strings_to_str)
