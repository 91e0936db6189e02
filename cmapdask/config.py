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
    """Bounded waits for ``s3://`` from ``cmapdask.storage``: ``{"config_kwargs": ...,
    "retries": n}`` (botocore's timeouts and attempts; s3fs's retries of a failed call).

    Applied when cmapdask is imported (in the CLI and in every worker that runs a
    cmapdask task): ``config_kwargs`` as fsspec's default for ``s3`` (options a caller
    passes explicitly win), ``retries`` as ``s3fs.S3FileSystem.retries``.
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
        import s3fs
    except ImportError:  # pragma: no cover
        return
    d = storage_defaults()
    fsspec.config.conf.setdefault("s3", {}).setdefault("config_kwargs", d["config_kwargs"])
    s3fs.S3FileSystem.retries = max(1, d["retries"])


_apply_storage_defaults()


def get(key: str, default=None):
    """``dask.config.get("cmapdask." + key)``."""
    return dask.config.get(f"cmapdask.{key}", default=default)
