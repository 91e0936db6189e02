"""Error responses: an HTML page with a way back for browsers, one-line JSON for the API."""

from __future__ import annotations

import html
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, JSONResponse, Response

__all__ = ["error_response", "one_line", "wants_html"]


def one_line(text) -> str:
    return " ".join(str(text).split())[:500] or "bad request"


def wants_html(scope) -> bool:
    """A browser asking for a page (never the API, whose clients get JSON)."""
    path = scope.get("path", "")
    if path.startswith("/api/") or path == "/openapi.json":
        return False
    return "text/html" in Headers(scope=scope).get("accept", "")


def error_response(scope, status_code: int, detail, headers: dict | None = None) -> Response:
    """``{"detail": "one line"}``, or for browsers the same line on a page linking home."""
    detail = one_line(detail)
    headers = dict(headers or {})
    if status_code == 413:
        headers["Connection"] = "close"  # the unread body is not waited for
    if not wants_html(scope):
        return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)
    try:
        title = f"{status_code} {HTTPStatus(status_code).phrase}"
    except ValueError:
        title = str(status_code)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · cmapdask</title>"
        '<link rel="stylesheet" href="/static/app.css"></head><body><main class="error-page">'
        f'<h1>{html.escape(title)}</h1><p id="detail">{html.escape(detail)}</p>'
        '<p><a id="home" href="/">Back to the query page</a></p></main></body></html>'
    )
    return HTMLResponse(body, status_code=status_code, headers=headers)
