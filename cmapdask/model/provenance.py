"""The one provenance record of a result (``attrs["cmapdask"]``)."""

from __future__ import annotations

from cmapdask._version import __version__

__all__ = ["provenance_record"]


def provenance_record(method: str, **parameters) -> dict:
    """``{"method": method, "package_version": ..., **parameters}``.

    Every computed result records what made it (``method``), the package version, and its
    parameters, in that order; the keys of ``parameters`` are the function's own keyword
    names. No timestamps or host names (two identical runs store identical records).

    Examples
    --------
    >>> rec = provenance_record("kmeans", n_clusters=3)
    >>> list(rec), rec["n_clusters"]
    (['method', 'package_version', 'n_clusters'], 3)
    """
    return {"method": method, "package_version": __version__, **parameters}
