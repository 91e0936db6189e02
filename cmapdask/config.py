"""Defaults under dask's ``cmapdask`` config namespace (see cmapdask.yaml).

Cluster operators override them in YAML (``~/.config/dask/cmapdask.yaml``) or with
environment variables such as ``DASK_CMAPDASK__STORE__CHUNK_MB=64``.
"""

from __future__ import annotations

import os

import dask.config
import yaml

_fn = os.path.join(os.path.dirname(__file__), "cmapdask.yaml")
with open(_fn) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)
try:  # a commented copy for operators to edit; a read-only home is fine
    dask.config.ensure_file(source=_fn)
except OSError:
    pass

__all__ = ["get"]


def get(key: str, default=None):
    """``dask.config.get("cmapdask." + key)``."""
    return dask.config.get(f"cmapdask.{key}", default=default)
