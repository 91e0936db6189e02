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

# defaults only: a user's YAML files and DASK_CMAPDASK__* variables still win; nothing is
# written to the user's configuration folder and no other library's default is touched
dask.config.update_defaults(_defaults)

__all__ = ["get", "storage_defaults", "storage_options"]


def storage_defaults() -> dict:
    """Bounded waits for ``s3://`` from ``cmapdask.storage``: ``{"config_kwargs": ...,
    "retries": n}`` (botocore's timeouts and attempts; s3fs's retries of a failed call).

    Applied to the filesystems cmapdask opens (:func:`storage_options`), never as a
    process-wide default: importing cmapdask changes no fsspec or s3fs setting.
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


_S3 = ("s3://", "s3a://")


def storage_options(url, options: dict | None = None) -> dict | None:
    """``options`` for the filesystem of ``url`` with cmapdask's bounded waits added.

    For ``s3://`` URLs, botocore's timeouts and attempts (``cmapdask.storage``) fill in
    ``config_kwargs`` keys the caller did not set; any other URL gets ``options`` as given.
    The result travels with the tasks, so workers use the client's settings.
    """
    if not str(url).startswith(_S3):
        return options
    out = dict(options or {})
    mine = storage_defaults()["config_kwargs"]
    out["config_kwargs"] = {**mine, **(out.get("config_kwargs") or {})}
    return out


def get(key: str, default=None):
    """``dask.config.get("cmapdask." + key)``."""
    return dask.config.get(f"cmapdask.{key}", default=default)
