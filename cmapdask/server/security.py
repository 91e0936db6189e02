"""What makes a shared server safe: the token, same-origin writes, bounded bodies, headers.

One ASGI middleware in front of every route (:class:`Guard`), so a route added later is
protected without saying so. Its refusals are the app's error responses
(:func:`cmapdask.server.errorpages.error_response`): an HTML page for browsers, one-line
JSON for API clients.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qsl, quote

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse

from cmapdask.server.errorpages import error_response

__all__ = ["Guard", "DEFAULT_MAX_BODY", "TOKEN_COOKIE", "OPEN_PATHS", "cookie_value", "valid"]

DEFAULT_MAX_BODY = 8 << 20  # bytes: 25 queries of 1000 genes, or two 1 MiB uploads, fit
TOKEN_COOKIE = "cmapdask_session"
# what needs no token: the login page, a health check and the static assets
OPEN_PATHS = ("/login", "/health")
OPEN_PREFIXES = ("/static/",)
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make form posts Origin: null
]


def cookie_value(token: str) -> str:
    """The login cookie: derived from the token, so the cookie never holds the token."""
    return hmac.new(token.encode(), b"cmapdask login cookie", hashlib.sha256).hexdigest()


def valid(token: str, given: list[str]) -> bool:
    want = token.encode()
    return any(secrets.compare_digest(g.encode(), want) for g in given if g)


def _given(token: str, headers: Headers, query: str) -> bool:
    """Bearer header, CLUE's user_key (header or query parameter) or the login cookie."""
    auth = headers.get("authorization", "")
    given = [auth[7:].strip() if auth[:7].lower() == "bearer " else ""]
    given.append(headers.get("user_key", "").strip())
    given += [v.strip() for k, v in parse_qsl(query) if k == "user_key"]
    if valid(token, given):
        return True
    cookie = _cookies(headers.get("cookie", "")).get(TOKEN_COOKIE, "")
    return bool(cookie) and secrets.compare_digest(cookie.encode(), cookie_value(token).encode())


def _cookies(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        k, _, v = part.strip().partition("=")
        out.setdefault(k, v)
    return out


def _same_origin(scope, headers: Headers, allowed: set[str]) -> bool:
    """A write comes from this server's own pages (or an origin named by --cors-origin).

    Browsers send ``Origin`` with every cross-origin POST (form posts included) and
    ``Sec-Fetch-Site``; API clients send neither and are let through.
    """
    origin = headers.get("origin")
    if origin is not None:
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        return origin == own or origin in allowed
    return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


class _TooLarge(HTTPException):
    pass


class Guard:
    """ASGI middleware: token, same-origin writes, body limit and security headers."""

    def __init__(self, app, *, token: str | None, max_body: int, cors_origins=()):
        self.app, self.token, self.max_body = app, token, int(max_body)
        self.allowed = set(cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, secured)
        seen = 0
        limit = self.max_body

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # raised inside the route's body read: the app answers it as a 413
                    raise _TooLarge(413, f"the request body is larger than {limit} bytes")
            return message

        await self.app(scope, counted, secured)

    def refusal(self, scope):
        """The response refusing this request before any of its body is read, or None."""
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        if method in _WRITES and not _same_origin(scope, headers, self.allowed):
            return error_response(
                scope,
                403,
                "a request from another site may not change anything here "
                "(cmapdask serve --cors-origin ORIGIN allows one)",
            )
        if self.token is not None and not (
            path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or _given(self.token, headers, scope.get("query_string", b"").decode("latin-1"))
        ):
            if method in ("GET", "HEAD") and "text/html" in headers.get("accept", ""):
                target = path + (
                    "?" + scope["query_string"].decode() if scope["query_string"] else ""
                )
                return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
            return error_response(
                scope,
                401,
                "a valid token is needed: Authorization: Bearer TOKEN, CLUE's user_key "
                "(header or query parameter), or log in at /login",
                headers={"WWW-Authenticate": "Bearer"},
            )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(scope, 400, "Content-Length is not a number")
            if int(length) > self.max_body:
                return error_response(
                    scope, 413, f"the request body is larger than {self.max_body} bytes"
                )
        return None
