"""Schema fuzzing of ``cmapdask serve`` with schemathesis: no 5xx, every error a 4xx
with a one-line message, every response as the OpenAPI document says."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests._server_helpers import Server, planted_query, shared_store, wait_job  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    data = shared_store(tmp_path_factory)
    jobs = tmp_path_factory.mktemp("fuzzjobs") / "jobs"
    # a small queue, so that fuzzing cannot pile up work; one finished job to read
    srv = Server(data["store"], jobs, "--pcl", data["pcl"], "--max-queue", "4")
    up, dn = planted_query(data["design"])
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/api/v1/queries", json={"queries": [{"up": up, "down": dn}]})
        srv.job = wait_job(c, r.json()["id"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, fuzz_server):
    if "job_id" in (case.path_parameters or {}) and case.path_parameters["job_id"] == "0":
        case.path_parameters["job_id"] = fuzz_server.job["id"]  # reach a real job sometimes
    response = case.call(base_url=fuzz_server.url, timeout=60)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail
