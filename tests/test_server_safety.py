"""A shared ``cmapdask serve`` against real uvicorn processes: every route but /health and
/static needs the token (the app's own route table enumerated, so a new route cannot slip
through), writes from another origin are refused, a body over --max-body is a 413 before it
is sent, security headers on every response, error pages, /docs with no external URL."""

from __future__ import annotations

import re
import socket

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests._server_helpers import Server, planted_query, shared_store  # noqa: E402

TOKEN = "t0ken-for-tests"
LIMIT = 65536  # --max-body of the guarded server
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def guarded(data, tmp_path_factory):
    """A server with a token (from --token-file) and a small body limit."""
    root = tmp_path_factory.mktemp("guarded")
    (root / "token").write_text(TOKEN + "\n")
    srv = Server(
        data["store"],
        root / "jobs",
        "--token-file",
        str(root / "token"),
        "--max-body",
        str(LIMIT),
        env={"CMAPDASK_TOKEN": ""},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def open_server(data, tmp_path_factory):
    """A server with no token (the token variable emptied)."""
    root = tmp_path_factory.mktemp("open")
    srv = Server(data["store"], root / "jobs", env={"CMAPDASK_TOKEN": ""})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def routes(data, tmp_path_factory):
    """Every (method, path) of the app's route table, path parameters filled in."""
    from fastapi.routing import APIRoute
    from starlette.routing import Mount, Route

    from cmapdask.server.app import ServerSettings, create_app

    jobs = tmp_path_factory.mktemp("routes") / "jobs"  # the app is built, never started
    app = create_app(ServerSettings(data["store"], jobs_dir=str(jobs)))
    out = []

    def walk(routes, prefix=""):
        for r in routes:
            if isinstance(r, Mount):
                assert r.path == "/static", r.path  # the only mount: assets, open
            elif hasattr(r, "original_router"):  # an included router (FastAPI >= 0.16x)
                walk(r.original_router.routes, prefix + r.include_context.prefix)
            else:
                assert isinstance(r, APIRoute | Route), r
                path = re.sub(r"\{[^}]+\}", "x", prefix + r.path)
                out.extend((m, path) for m in sorted(r.methods - {"HEAD"}))

    walk(app.routes)
    return out


def _bearer(token=TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_needs_the_token(guarded, routes):
    from cmapdask.server.security import OPEN_PATHS, OPEN_PREFIXES

    assert len(routes) > 30 and ("POST", "/api/v1/queries") in routes
    assert ("POST", "/api/jobs") in routes and ("GET", "/api/perts/count") in routes
    open_ = {(m, p) for m, p in routes if p in OPEN_PATHS or p.startswith(OPEN_PREFIXES)}
    assert open_ == {
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/health"),
        ("GET", "/static/vendor/plotly.min.js"),
    }
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        for method, path in sorted(set(routes) - open_):
            for headers in ({}, _bearer("wrong"), {"user_key": "wrong"}):
                r = c.request(method, path, headers={"Accept": "application/json", **headers})
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert "token" in r.json()["detail"]
        # unknown URLs too: nothing tells a stranger what exists
        assert c.get("/no/such/page").status_code == 401
        # open: the health check, the login page and the static assets
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/login").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        # with the token: header, CLUE's user_key (header or query parameter)
        assert c.get("/api/v1/info", headers=_bearer()).json()["token_required"] is True
        assert c.get("/api/v1/info", headers={"user_key": TOKEN}).status_code == 200
        assert c.get("/api/v1/info", params={"user_key": TOKEN}).status_code == 200
        assert c.get("/", headers=_bearer()).status_code == 200


def test_browsers_log_in_with_a_cookie(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        r = c.get("/jobs/abc?x=1", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fjobs%2Fabc%3Fx%3D1"
        page = c.get(r.headers["location"], headers={"Accept": "text/html"})
        assert page.status_code == 200 and 'name="next" value="/jobs/abc?x=1"' in page.text
        bad = c.post("/login", data={"token": "wrong", "next": "/search"})
        assert bad.status_code == 401 and "not the server" in bad.text
        assert "cmapdask_session" not in c.cookies
        ok = c.post("/login", data={"token": TOKEN, "next": "/search"})
        assert ok.status_code == 303 and ok.headers["location"] == "/search"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert c.get("/search", headers={"Accept": "text/html"}).status_code == 200
        assert c.get("/api/v1/info").status_code == 200
        # never an open redirect
        out = c.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert out.headers["location"] == "/"
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        c.cookies.set("cmapdask_session", "forged")
        assert c.get("/api/v1/info").status_code == 401


def test_cross_origin_writes_refused(guarded, open_server, data):
    up, dn = planted_query(data["design"])
    body = {"queries": [{"up": up, "down": dn}]}
    files = {"up": ("a.gmt", b"q_UP\t\t" + b"\t".join(g.encode() for g in up) + b"\n")}
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        for kw in ({"json": body}, {"files": files}):
            url = "/api/v1/queries" if "json" in kw else "/api/v1/queries/files"
            for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
                r = c.post(url, headers=headers, **kw)
                assert r.status_code == 403, (url, headers, r.text)
                assert "another site" in r.json()["detail"]
        # a form post of another page (what a browser sends): refused too
        r = c.post("/login", data={"token": "x"}, headers={"Origin": EVIL})
        assert r.status_code == 403
        r = c.delete("/api/v1/queries/abc", headers={"Origin": EVIL})
        assert r.status_code == 403
        # the server's own pages may (a refusal of another kind proves it got through)
        r = c.post("/api/v1/queries", json={"queries": []}, headers={"Origin": open_server.url})
        assert r.status_code == 422
        assert c.get("/api/v1/info", headers={"Origin": EVIL}).status_code == 200  # a read
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        r = c.post("/api/v1/queries", json=body, headers={"Origin": EVIL, **_bearer()})
        assert r.status_code == 403


def _raw(url: str, head: bytes, body_parts, timeout: float = 30.0) -> tuple[bytes, int]:
    """Send a request's head, then body parts while no answer has come; return the
    answer and how many parts were sent before it (fewer than all: the server
    answered without waiting for the body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        answer, sent = b"", 0
        for i, part in enumerate([*body_parts, None]):
            s.settimeout(10.0 if i == 0 else 1.0)  # the head alone may be answered
            try:
                answer = s.recv(65536)
            except TimeoutError:
                answer = b""
            if answer or part is None:
                break
            s.sendall(part)
            sent += 1
        s.settimeout(timeout)
        while answer:  # the answer, to the close its Connection: close promises
            try:
                more = s.recv(65536)
            except ConnectionResetError:  # the unread body reset the closed connection
                break
            if not more:
                break
            answer += more
    return answer, sent


def test_oversized_body_is_a_413_before_it_is_sent(guarded):
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    # a Content-Length over the limit: answered at once, the body never sent
    head = (
        b"POST /api/v1/queries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + b"Content-Length: 50000000\r\n\r\n"
    )
    answer, sent = _raw(guarded.url, head, [b"{"] + [b" " * 65536] * 800)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent == 0  # answered on the head alone
    assert f"larger than {LIMIT} bytes".encode() in answer
    # a chunked body: counted as it streams, refused once over the limit (the stream
    # is never finished: 100 more chunks would follow)
    head = (
        b"POST /api/v1/queries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    answer, sent = _raw(guarded.url, head, [chunk] * 105)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert LIMIT // 0x4000 <= sent < 105, sent  # counted as it came, not waited for
    # a multipart upload over the limit, as a client sends it
    with httpx.Client(base_url=guarded.url, timeout=30, headers=_bearer()) as c:
        r = c.post("/api/v1/queries/files", files={"up": ("a.gmt", b"x" * (LIMIT + 1))})
        assert r.status_code == 413 and "larger than" in r.json()["detail"]
        r = c.post("/api/jobs", files={"uptag-cmapfile": ("a.gmt", b"x" * (LIMIT + 1))})
        assert r.status_code == 413
        assert c.get("/health").status_code == 200  # and the server goes on


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def test_headers_on_every_response(guarded, open_server):
    cases = [
        (guarded, "/", {}),  # a redirect to the login page
        (guarded, "/api/v1/info", {}),  # 401
        (guarded, "/api/v1/info", _bearer()),
        (guarded, "/static/app.js", {}),
        (guarded, "/docs", _bearer()),
        (open_server, "/", {}),
        (open_server, "/nope", {"Accept": "text/html"}),  # 404 page
        (open_server, "/api/v1/sigs/NOPE", {}),  # 404 JSON
        (open_server, "/static/vendor/plotly.min.js", {}),
    ]
    for srv, path, headers in cases:
        r = httpx.get(srv.url + path, headers={"Accept": "text/html", **headers}, timeout=30)
        for k, v in SECURITY_HEADERS.items():
            assert r.headers.get(k) == v, (path, k, r.headers)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


def test_error_pages_html_for_browsers_json_for_the_api(open_server):
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        r = c.get("/no/such/page", headers={"Accept": "text/html,application/xhtml+xml"})
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert '<a id="home" href="/">' in r.text and "no page at this address" in r.text
        r = c.get("/compounds/NOPE", headers={"Accept": "text/html"})
        assert r.status_code == 404 and "no compound with this id" in r.text
        r = c.get("/no/such/page")
        assert r.status_code == 404 and r.json() == {"detail": "no page at this address"}
        # the API answers JSON whatever a browser accepts
        r = c.get("/api/v1/sigs/NOPE", headers={"Accept": "text/html"})
        assert r.json() == {"detail": "no signature with this id"}
        # a bad upload names the upload, never the server's temporary file
        r = c.post("/api/v1/queries/files", files={"up": ("a.gmt", b"\tdesc\tg1\tg2\n")})
        detail = r.json()["detail"]
        assert r.status_code == 400 and detail.startswith("the up file: line 1"), detail
        assert "/tmp" not in detail and "cmapdask-upload" not in detail and ".gmt" not in detail


def test_docs_work_offline(open_server):
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert any(r.endswith("swagger-ui-bundle.js") for r in refs), refs
        for ref in refs:
            assert ref.startswith("/") and not ref.startswith("//"), ref
            assert c.get(ref).status_code == 200, ref
        assert "http://" not in page.text and "https://" not in page.text
        assert c.get("/openapi.json").json()["paths"]
        assert c.get("/redoc").status_code == 404  # ReDoc loaded from a CDN: not served


def test_token_options(data, tmp_path):
    import subprocess
    import sys

    def serve(*extra):
        return subprocess.run(
            [sys.executable, "-m", "cmapdask", "serve", data["store"], "--scheduler", "none"]
            + ["--jobs-dir", str(tmp_path / "jobs"), "--quiet", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )

    (tmp_path / "empty").write_text("\n")
    for extra, words in [
        (["--token-file", str(tmp_path / "nope")], "cannot be read"),
        (["--token-file", str(tmp_path / "empty")], "first line is empty"),
        (["--token-file", str(tmp_path / "empty"), "--token", "x"], "give one"),
        (["--max-body", "0"], "--max-body"),
    ]:
        proc = serve(*extra)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert words in line and "Traceback" not in proc.stderr
