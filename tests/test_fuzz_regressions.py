"""Inputs that once crashed the server (500) and now get a clear 4xx, pinned.

Found while fuzzing the API from its OpenAPI document (scripts/fuzz_api.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from loki_api.app import create_app
from loki_api.routes.openapi import spec_json
from loki_api.settings import Settings


@pytest.fixture
async def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = create_app(Settings(loki_dir=tmp_path))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        "limit=²",  # str.isdigit() is True, int() refuses it
        "limit=١٢",  # non-ASCII digits are not an integer parameter
        "after=evt_²_1",
        "after=evt_" + "9" * 5000 + "_1",  # past int()'s digit limit
    ],
)
async def test_bad_numbers_are_400(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/api/events/history?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "BAD_REQUEST"


@pytest.mark.anyio
async def test_huge_limit_is_capped_not_a_crash(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/events/history?limit=" + "9" * 5000)
    assert response.status_code == 200, response.text
    assert response.json() == {"events": [], "count": 0}


@pytest.mark.anyio
async def test_leading_zeros_are_one_number(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/events/history?limit=" + "0" * 5000 + "1")
    assert response.status_code == 200, response.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/sessions", "GET, HEAD, POST"),  # GET and POST are separate routes
        ("OPTIONS", "/api/sessions/abc", "DELETE, GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ],
)
async def test_405_allow_lists_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"


# ------------------------- document and behaviour agree (schemathesis --checks all)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        # The document's patterns and enums refuse an empty value; so does the server.
        ("/api/events/history?after=", 400, "BAD_REQUEST"),
        ("/api/events/history?limit=", 400, "BAD_REQUEST"),
        ("/api/sessions?status=", 422, "VALIDATION_ERROR"),
        ("/api/sessions?offset=", 400, "BAD_REQUEST"),
        ("/api/tasks?status=", 422, "VALIDATION_ERROR"),
    ],
)
async def test_empty_query_values_are_refused_as_documented(
    client: httpx.AsyncClient, path: str, status: int, code: str
) -> None:
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_the_document_refuses_a_zero_timeout_like_the_server() -> None:
    """`options.timeout` 0 is a 422: the document says so (exclusiveMinimum)."""
    spec = json.loads(spec_json())
    timeout = spec["components"]["schemas"]["SessionOptions"]["properties"]["timeout"]
    assert {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e9} in timeout["anyOf"]


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0, -1, 1e9])
async def test_a_timeout_outside_the_document_is_422(
    client: httpx.AsyncClient, timeout: float
) -> None:
    response = await client.post("/api/sessions", json={"options": {"timeout": timeout}})
    assert response.status_code == 422, response.text
    assert "timeout" in response.json()["error"]
