"""Inputs that once crashed the server (500) and now get a clear 4xx, pinned.

Found while fuzzing the API from its OpenAPI document (scripts/fuzz_api.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loki_api.app import create_app
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
