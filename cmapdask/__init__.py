"""cmapdask: the Connectivity Map's analysis at cluster scale on Dask.

The functional API lives here; ``ds.cmap`` (registered on import) is a doorway to it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmapdask")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from cmapdask import config  # noqa: E402,F401  (registers the dask config defaults)
from cmapdask.errors import (  # noqa: E402
    CmapdaskError,
    GCTFormatError,
    GCTxFormatError,
    GeneSetFormatError,
    InputError,
    MetadataError,
    QueryError,
    StoreError,
)
from cmapdask.io.gct import read_gct, write_gct  # noqa: E402
from cmapdask.io.gctx import read_gctx, write_gctx  # noqa: E402
from cmapdask.io.gmt import (  # noqa: E402
    pair_up_down,
    read_gene_sets,
    read_gmt,
    read_grp,
    write_gmt,
    write_grp,
)
from cmapdask.io.store import (  # noqa: E402
    convert,
    has_member,
    list_members,
    open_member,
    open_store,
    write_member,
    write_store,
)
from cmapdask.io.tables import read_table, write_table  # noqa: E402

__all__ = [
    "__version__",
    # errors
    "CmapdaskError",
    "GCTFormatError",
    "GCTxFormatError",
    "GeneSetFormatError",
    "InputError",
    "MetadataError",
    "QueryError",
    "StoreError",
    # files
    "read_gctx",
    "write_gctx",
    "read_gct",
    "write_gct",
    "read_gmt",
    "write_gmt",
    "read_grp",
    "write_grp",
    "read_gene_sets",
    "pair_up_down",
    "read_table",
    "write_table",
    # the store
    "convert",
    "open_store",
    "write_store",
    "write_member",
    "open_member",
    "has_member",
    "list_members",
]
