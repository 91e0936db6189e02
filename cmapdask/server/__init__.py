"""``cmapdask serve``: the REST API, query jobs and pages over one signature store.

``app`` builds the FastAPI application, ``jobs`` runs queries through the functional API,
``browse`` reads the store's metadata for the browsing endpoints, ``models`` holds the
typed requests and responses. Needs the ``serve`` extra (FastAPI, uvicorn, Jinja2,
plotly).
"""

from __future__ import annotations

__all__ = ["create_app", "ServerSettings"]


def __getattr__(name):
    if name in __all__:
        from cmapdask.server import app

        return getattr(app, name)
    raise AttributeError(name)
