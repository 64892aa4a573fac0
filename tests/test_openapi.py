"""GET /openapi.json is a valid OpenAPI 3.1 document of every endpoint, and it
is true: schemathesis runs it against a live ``karmchari serve``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import falcon.inspect
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from app.app import create_app
from tests.servers import ServiceProcess

METHODS = {"get", "post", "put", "patch", "delete"}
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))

# A refusal of invalid input is right whatever its 4xx; schemathesis's default
# list lacks 413 (a body over the limit). Not checked: that every schema-valid
# request is accepted. Some are refused by design, in ways a schema cannot
# state: the same job twice in one heartbeat batch, an Idempotency-Key reused
# with another body, a stale If-Match, an opaque cursor this service never gave.
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429"]
"""


@pytest.fixture
def document(client):
    response = client.simulate_get("/openapi.json")
    assert response.status_code == 200
    return response.json


def operations(document):
    return {(path, method) for path, item in document["paths"].items()
            for method in item if method in METHODS}


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_document_describes_every_route(document, config, store):
    routes = {(route.path, method.method.lower())
              for route in falcon.inspect.inspect_routes(create_app(config, store))
              for method in route.methods if not method.internal}
    assert operations(document) == routes


def test_every_request_and_response_has_a_schema(document):
    for path, method in operations(document):
        operation = document["paths"][path][method]
        body = operation.get("requestBody")
        if body is not None:
            for media in body["content"].values():
                assert "schema" in media, (path, method)
        for status, response in operation["responses"].items():
            if status in ("204", "302", "304"):
                assert "content" not in response, (path, method, status)
                continue
            assert response.get("content"), (path, method, status)
            for media in response["content"].values():
                assert "schema" in media, (path, method, status)


def test_document_names_the_configured_limits(document, config):
    jobs = document["paths"]["/v1/jobs"]["get"]["parameters"]
    limit = next(p for p in jobs if p["name"] == "limit")
    assert limit["schema"]["maximum"] == config.max_list_limit
    register = document["components"]["schemas"]["RegisterJob"]
    assert register["properties"]["type"]["enum"] == list(config.job_types)
    assert register["additionalProperties"] is False
    watch = document["components"]["schemas"]["Watch"]["properties"]
    assert watch["jobs"]["maxProperties"] == config.max_watch_jobs
    assert watch["wait"]["maximum"] == config.max_wait_seconds


@pytest.fixture
def short_wait_service(redis_url, key_prefix):
    """A live service whose long-poll waits at most one second (the document
    says so), so generated requests never wait long."""
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix,
                                  "KARMCHARI_MAX_WAIT_SECONDS": "1"}).start()
    yield service
    service.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(short_wait_service,
                                                                     tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    result = subprocess.run(
        [SCHEMATHESIS, "--no-color", "--config-file", str(config), "run",
         f"{short_wait_service.url}/openapi.json",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "100", "--workers", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    with urllib.request.urlopen(f"{short_wait_service.url}/openapi.json") as response:
        # schemathesis leaves out the URL it loaded the document from.
        count = len(operations(json.load(response)) - {("/openapi.json", "get")})
    assert f"Selected: {count}/{count}" in output and f"Tested: {count}" in output, output
    assert "Network Error" not in output, output
