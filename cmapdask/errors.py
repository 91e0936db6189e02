"""One error hierarchy: every failure a user can cause is a ``CmapdaskError``.

The CLI turns these into a single line and exit code 2 (75 for
:class:`InfrastructureError`, a transient failure); anything else is a bug.
Messages name the file (or store) and the problem.
"""

from __future__ import annotations

__all__ = [
    "require",
    "CmapdaskError",
    "FormatError",
    "GCTxFormatError",
    "GCTFormatError",
    "GeneSetFormatError",
    "MetadataError",
    "StoreError",
    "LockedError",
    "QueryError",
    "InputError",
    "InfrastructureError",
    "NonFiniteWarning",
    "TextWarning",
    "TransferError",
]


class CmapdaskError(Exception):
    """Base class of every error cmapdask raises on purpose."""


class FormatError(CmapdaskError):
    """A file is not in the format it claims to be."""


class GCTxFormatError(FormatError):
    """A GCTx (HDF5) file is corrupt, truncated, or breaks the layout of ALGORITHMS.md §10."""


class GCTFormatError(FormatError):
    """A GCT text file (v1.2 or v1.3) is malformed."""


class GeneSetFormatError(FormatError):
    """A GMT or GRP gene-set file is malformed."""


class MetadataError(CmapdaskError):
    """Metadata tables or ids disagree: duplicates, missing or extra ids, bad fields."""


class StoreError(CmapdaskError):
    """A Zarr signature store is missing, incomplete, or lacks a member that was asked for."""


class LockedError(StoreError):
    """Another live writer holds a collection's lock (``append``, ``rebuild``)."""


class QueryError(CmapdaskError):
    """A connectivity query is invalid: empty sets, overlapping up/down sets, bad options."""


class InputError(CmapdaskError):
    """Any other invalid argument or data (NaN where not allowed, k too large, ...)."""


class InfrastructureError(CmapdaskError):
    """A transient failure of infrastructure, not of the input: a scheduler that does not
    answer, dies or stalls, a storage server that times out. The CLI exits 75
    (``EX_TEMPFAIL``): running the same command again may succeed."""


class TransferError(InfrastructureError, ConnectionError):
    """A download or upload that failed after its retries (the network, the server)."""


class NonFiniteWarning(UserWarning):
    """A matrix holds NaN or infinite values (stored as they are; ``index`` refuses them)."""


class TextWarning(UserWarning):
    """Ids or metadata that are not UTF-8, decoded as latin-1 (io.meta.decode_bytes)."""


def require(module: str, extra: str, what: str):
    """``importlib.import_module(module)``, or one line naming the extra to install.

    For the optional features (``ml``: pictures and graph communities; ``cluster``: SLURM,
    PBS and Dask Gateway clusters): a missing package is the user's input to fix (exit 2),
    never a traceback.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"{what} needs the {module.split('.')[0]} package: pip install 'cmapdask[{extra}]'"
        ) from None
