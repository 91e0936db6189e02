"""Nightly rebuilds: immutable store versions, appending, incremental similarity, the pipeline.

Layers: :mod:`.versions` (layout, manifests, the atomically switched ``CURRENT`` pointer),
:mod:`.append` (a new version with more signatures), :mod:`.incremental` (new x all
similarity folded into existing top-k lists, resumable block by block) and
:mod:`.pipeline` (the stages of the nightly job).
"""

from __future__ import annotations

from cmapdask.rebuild.append import append
from cmapdask.rebuild.pipeline import RebuildResult, rebuild
from cmapdask.rebuild.versions import (
    current_version,
    list_versions,
    open_current,
    open_version,
    read_manifest,
    version_url,
)

__all__ = [
    "append",
    "rebuild",
    "RebuildResult",
    "open_current",
    "open_version",
    "current_version",
    "list_versions",
    "read_manifest",
    "version_url",
]
