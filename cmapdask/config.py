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

__all__ = ["get", "storage_defaults"]


def storage_defaults() -> dict:
    """fsspec defaults for ``s3://`` from ``cmapdask.storage`` (timeouts and retries).

    Applied to fsspec's global config when cmapdask is imported (in the CLI and in every
    worker that runs a cmapdask task), so every S3 request has bounded waits. Options a
    caller passes explicitly (``storage_options``) win over these.
    """
    c = dask.config.get("cmapdask.storage", default={}) or {}
    return {
        "retries": int(c.get("retries", 2)),
        "config_kwargs": {
            "connect_timeout": float(c.get("connect_timeout", 10)),
            "read_timeout": float(c.get("read_timeout", 40)),
            "retries": {"max_attempts": int(c.get("attempts", 2)), "mode": "standard"},
        },
    }


def _apply_storage_defaults() -> None:
    try:
        import fsspec.config
    except ImportError:  # pragma: no cover
        return
    conf = fsspec.config.conf.setdefault("s3", {})
    for key, value in storage_defaults().items():
        conf.setdefault(key, value)


_apply_storage_defaults()


def get(key: str, default=None):
    """``dask.config.get("cmapdask." + key)``."""
    return dask.config.get(f"cmapdask.{key}", default=default)
