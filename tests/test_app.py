"""In-process tests of the app's request/response routes and its error shape."""

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loki_api.app import create_app
from loki_api.errors import exception_handlers
from loki_api.models import Health, LogEventData, Readiness, Status
from loki_api.params import json_response, query_choice, query_int, read_json
from loki_api.runtime import Runtime
from loki_api.settings import Settings

from .support import asgi_client


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return Runtime(Settings(loki_dir=tmp_path))


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(runtime) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]
    return body


@pytest.mark.anyio
async def test_health_live_ready(client: httpx.AsyncClient) -> None:
    health = msgspec.json.decode((await client.get("/health")).content, type=Health)
    assert health.status in ("healthy", "degraded")
    assert set(msgspec.structs.asdict(health.providers)) == {
        "claude",
        "codex",
        "gemini",
        "cline",
        "aider",
    }
    live = (await client.get("/health/live")).json()
    assert live["alive"] is True and live["uptime"] >= 0
    response = await client.get("/health/ready")
    ready = msgspec.json.decode(response.content, type=Readiness)
    assert response.status_code == 200 and ready.ready and ready.checks["stateDir"].ok


@pytest.mark.anyio
async def test_ready_and_health_fail_when_a_check_fails(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    runtime.add_check("watcher", lambda: "observer thread died")
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["watcher"] == {"ok": False, "detail": "observer thread died"}
    health = await client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"


@pytest.mark.anyio
async def test_status(client: httpx.AsyncClient, runtime: Runtime) -> None:
    runtime.bus.publish("log:info", LogEventData(level="info", message="x"))
    status = msgspec.json.decode((await client.get("/api/status")).content, type=Status)
    assert status.events.published == 1 and status.events.history_size == 1
    assert status.system.python.startswith("3.")
    assert status.uptime_formatted.endswith("s")


@pytest.mark.anyio
async def test_uptime_is_whole_milliseconds_as_in_the_original(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """SPEC §6: `uptime` on /health is integer milliseconds; /api/status adds seconds."""
    runtime.started_at = time.monotonic() - 2.5
    health = (await client.get("/health")).json()
    live = (await client.get("/health/live")).json()
    status = (await client.get("/api/status")).json()
    for uptime in (health["uptime"], live["uptime"], status["uptime"]):
        assert isinstance(uptime, int) and 2500 <= uptime < 60_000
    assert isinstance(status["uptimeSeconds"], float) and 2.5 <= status["uptimeSeconds"] < 60


@pytest.mark.anyio
async def test_event_history_and_stats(client: httpx.AsyncClient, runtime: Runtime) -> None:
    for n in range(150):
        runtime.bus.publish(
            "log:warn" if n % 2 else "log:info",
            LogEventData(level="info", message=str(n)),
            "s1" if n < 100 else "s2",
        )
    body = (await client.get("/api/events/history")).json()
    assert body["count"] == 100 and len(body["events"]) == 100
    assert body["events"][-1]["data"]["message"] == "149"
    body = (
        await client.get(
            "/api/events/history", params={"sessionId": "s2", "minLevel": "warn", "limit": 5}
        )
    ).json()
    assert [e["data"]["message"] for e in body["events"]] == ["141", "143", "145", "147", "149"]
    after = body["events"][2]["id"]
    body = (await client.get("/api/events/history", params={"after": after})).json()
    assert [e["data"]["message"] for e in body["events"]] == [str(n) for n in range(146, 150)]
    stats = (await client.get("/api/events/stats")).json()
    assert stats["published"] == 150 and stats["byType"] == {"log:info": 75, "log:warn": 75}
    assert set(stats) == {
        "subscribers",
        "historySize",
        "published",
        "delivered",
        "dropped",
        "byType",
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        {"types": "task:nope"},
        {"minLevel": "loud"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"after": "not-an-id"},
    ],
)
async def test_history_rejects_bad_parameters(client: httpx.AsyncClient, query: dict) -> None:
    assert_error(await client.get("/api/events/history", params=query), 400, "BAD_REQUEST")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query", [{"types": "task:nope"}, {"minLevel": "x"}, {"history": "-3"}, {"lastEventId": "abc"}]
)
async def test_stream_rejects_bad_parameters(client: httpx.AsyncClient, query: dict) -> None:
    assert_error(await client.get("/api/events", params=query), 400, "BAD_REQUEST")


@pytest.mark.anyio
async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/nothing"), 404, "NOT_FOUND")
    response = await client.delete("/health")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int = 0


async def echo(request: Request) -> Response:
    body = await read_json(request, Body)
    limit = query_int(request, "limit", default=10, maximum=100)
    mode = query_choice(request, "mode", ("a", "b"))
    return json_response({"name": body.name, "count": body.count, "limit": limit, "mode": mode})


@pytest.fixture
async def echo_client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        exception_handlers=exception_handlers(debug=False),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


@pytest.mark.anyio
async def test_read_json_and_query_helpers(echo_client: httpx.AsyncClient) -> None:
    ok = await echo_client.post("/echo?limit=5000&mode=a", json={"name": "x"})
    assert ok.json() == {"name": "x", "count": 0, "limit": 100, "mode": "a"}
    assert_error(
        await echo_client.post(
            "/echo", content=b"{bad", headers={"content-type": "application/json"}
        ),
        400,
        "BAD_REQUEST",
    )
    assert_error(
        await echo_client.post(
            "/echo", content=b"[1]", headers={"content-type": "application/json"}
        ),
        400,
        "BAD_REQUEST",
    )
    assert_error(
        await echo_client.post(
            "/echo",
            content=b"name=x",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    assert_error(
        await echo_client.post("/echo", json={"name": "x", "extra": 1}), 422, "VALIDATION_ERROR"
    )
    assert_error(await echo_client.post("/echo", json={"count": "three"}), 422, "VALIDATION_ERROR")
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    assert_error(
        await echo_client.post("/echo", content=big, headers={"content-type": "application/json"}),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    assert_error(
        await echo_client.post("/echo?mode=c", json={"name": "x"}), 422, "VALIDATION_ERROR"
    )
    assert_error(await echo_client.post("/echo?limit=1.5", json={"name": "x"}), 400, "BAD_REQUEST")


@pytest.mark.anyio
async def test_unexpected_errors_are_json_without_a_traceback(runtime: Runtime) -> None:
    app = create_app(runtime.settings, runtime)

    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internals")

    app.router.routes.append(Route("/boom", boom))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        response = await c.get("/boom")
    body = assert_error(response, 500, "INTERNAL_ERROR")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "details" not in body
