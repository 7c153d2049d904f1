"""Auth by peer address and token, the Host guard, CORS and the rate limit."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from loki_api.app import create_app
from loki_api.runtime import Runtime
from loki_api.security import SecurityMiddleware, host_name, is_loopback_peer
from loki_api.settings import Settings

TOKEN = "t" * 32


def make_client(tmp_path: Path, peer: str, **settings: object) -> httpx.AsyncClient:
    config = Settings(loki_dir=tmp_path, **settings)  # type: ignore[arg-type]
    app = create_app(config, Runtime(config))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8420")


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(tmp_path, "203.0.113.7", token=TOKEN, host="0.0.0.0") as c:
        yield c


def scope(
    path: str, peer: str = "203.0.113.7", headers: dict[str, str] | None = None, query: str = ""
) -> dict:
    return {
        "type": "http",
        "path": path,
        "client": (peer, 1),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }


def test_loopback_peers() -> None:
    assert is_loopback_peer(scope("/", "127.0.0.1"))
    assert is_loopback_peer(scope("/", "127.8.9.1"))
    assert is_loopback_peer(scope("/", "::1"))
    assert is_loopback_peer(scope("/", "::ffff:127.0.0.1"))
    assert not is_loopback_peer(scope("/", "10.0.0.1"))
    assert not is_loopback_peer(scope("/", "testclient"))
    assert not is_loopback_peer({"type": "http", "path": "/"})


def test_host_name() -> None:
    assert host_name("localhost:8420") == "localhost"
    assert host_name("[::1]:8420") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"


@pytest.mark.anyio
async def test_remote_client_needs_the_token(remote: httpx.AsyncClient) -> None:
    denied = await remote.get("/api/status")
    assert denied.status_code == 401 and denied.json()["code"] == "UNAUTHORIZED"
    wrong = await remote.get("/api/status", headers={"Authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401
    bearer = await remote.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    api_key = await remote.get("/api/status", headers={"X-API-Key": TOKEN})
    assert api_key.status_code == 200


@pytest.mark.anyio
async def test_query_token_only_counts_on_the_event_stream(remote: httpx.AsyncClient) -> None:
    assert (await remote.get(f"/api/status?token={TOKEN}")).status_code == 401
    # On /api/events the token is accepted: a bad filter then proves the request got through.
    response = await remote.get(f"/api/events?token={TOKEN}&types=bogus")
    assert response.status_code == 400


def test_query_token_is_checked_by_the_middleware() -> None:
    middleware = SecurityMiddleware(lambda *a: None, Settings(token=TOKEN, host="0.0.0.0"))  # type: ignore[arg-type]
    assert middleware.check(scope("/api/events", query=f"token={TOKEN}")) is None
    assert middleware.check(scope("/api/events", query="token=nope")) is not None
    assert middleware.check(scope("/api/sessions", query=f"token={TOKEN}")) is not None


@pytest.mark.anyio
async def test_health_is_open_to_remote_clients(remote: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        # No lifespan here, so the watcher check may fail (503), but never 401.
        assert (await remote.get(path)).status_code in (200, 503)


@pytest.mark.anyio
async def test_remote_access_without_a_configured_token(tmp_path: Path) -> None:
    async with make_client(tmp_path, "198.51.100.2", host="0.0.0.0") as c:
        response = await c.get("/api/status", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401
    assert response.json()["error"].startswith("Remote access not configured")


@pytest.mark.anyio
async def test_no_auth_lets_remote_clients_in(tmp_path: Path) -> None:
    async with make_client(tmp_path, "198.51.100.2", host="0.0.0.0", auth=False) as c:
        assert (await c.get("/api/status")).status_code == 200


@pytest.mark.anyio
async def test_loopback_is_trusted_whatever_the_host_header_claims(tmp_path: Path) -> None:
    # Trust comes from the peer address: a remote peer claiming Host: localhost is still remote.
    async with make_client(tmp_path, "203.0.113.9", token=TOKEN) as c:
        response = await c.get("/api/status", headers={"Host": "localhost:8420"})
    assert response.status_code == 401
    async with make_client(tmp_path, "127.0.0.1", token=TOKEN) as c:
        assert (await c.get("/api/status")).status_code == 200


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0", "::"])
@pytest.mark.anyio
async def test_dns_rebinding_guard_whatever_the_bind_address(tmp_path: Path, bind: str) -> None:
    async with make_client(tmp_path, "127.0.0.1", host=bind) as c:
        evil = await c.get("/api/status", headers={"Host": "evil.example:8420"})
        assert evil.status_code == 403 and evil.json()["code"] == "FORBIDDEN"
        # The way in the attack needs: start a session with no token.
        started = await c.post("/api/sessions", json={}, headers={"Host": "evil.example"})
        assert started.status_code == 403
        stream = await c.get("/api/events?types=bogus", headers={"Host": "evil.example"})
        assert stream.status_code == 403
        for host in ("localhost:8420", "127.0.0.1:8420", "127.9.9.9", "[::1]:8420", "0.0.0.0:8420"):
            assert (await c.get("/api/status", headers={"Host": host})).status_code == 200


@pytest.mark.anyio
async def test_a_valid_token_is_judged_by_the_token_alone(tmp_path: Path) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}", "Host": "box.lan:8420"}
    async with make_client(tmp_path, "127.0.0.1", host="0.0.0.0", token=TOKEN) as c:
        assert (await c.get("/api/status", headers=bearer)).status_code == 200
        wrong = {**bearer, "Authorization": "Bearer " + "x" * 32}
        assert (await c.get("/api/status", headers=wrong)).status_code == 403
    async with make_client(tmp_path, "203.0.113.9", host="0.0.0.0", token=TOKEN) as c:
        # Remote peers need the token anyway; their Host is theirs to name.
        assert (await c.get("/api/status", headers=bearer)).status_code == 200


@pytest.mark.anyio
async def test_allowed_hosts_extend_the_loopback_names(tmp_path: Path) -> None:
    allowed = ("dev.box", "proxy.local:8080")
    async with make_client(tmp_path, "127.0.0.1", host="0.0.0.0", allowed_hosts=allowed) as c:
        for host in ("dev.box", "DEV.box:8420", "proxy.local:8080"):
            assert (await c.get("/api/status", headers={"Host": host})).status_code == 200
        for host in ("proxy.local:9000", "evil.dev.box"):
            assert (await c.get("/api/status", headers={"Host": host})).status_code == 403


@pytest.mark.anyio
async def test_the_guard_holds_without_auth_too(tmp_path: Path) -> None:
    async with make_client(tmp_path, "127.0.0.1", host="0.0.0.0", auth=False) as c:
        assert (await c.get("/api/status", headers={"Host": "evil.example"})).status_code == 403
    async with make_client(tmp_path, "198.51.100.2", host="0.0.0.0", auth=False) as c:
        assert (await c.get("/api/status", headers={"Host": "box.lan"})).status_code == 200


@pytest.mark.anyio
async def test_cors_allows_loopback_origins_by_default(tmp_path: Path) -> None:
    async with make_client(tmp_path, "127.0.0.1") as c:
        ok = await c.get("/api/status", headers={"Origin": "http://localhost:5173"})
        assert ok.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert ok.headers.get("access-control-allow-credentials") == "true"
        evil = await c.get("/api/status", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in evil.headers
        preflight = await c.options(
            "/api/sessions",
            headers={
                "Origin": "http://127.0.0.1:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"


@pytest.mark.anyio
async def test_cors_configured_origins_and_never_star(tmp_path: Path) -> None:
    origins = ("https://dash.example.com", "*")
    async with make_client(tmp_path, "127.0.0.1", cors_origins=origins) as c:
        ok = await c.get("/api/status", headers={"Origin": "https://dash.example.com"})
        assert ok.headers["access-control-allow-origin"] == "https://dash.example.com"
        other = await c.get("/api/status", headers={"Origin": "https://other.example"})
        assert other.headers.get("access-control-allow-origin") not in (
            "*",
            "https://other.example",
        )
        local = await c.get("/api/status", headers={"Origin": "http://localhost:3000"})
        assert "access-control-allow-origin" not in local.headers


@pytest.mark.anyio
async def test_no_cors(tmp_path: Path) -> None:
    async with make_client(tmp_path, "127.0.0.1", cors=False) as c:
        response = await c.get("/api/status", headers={"Origin": "http://localhost:5173"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.anyio
async def test_rate_limit(tmp_path: Path) -> None:
    async with make_client(tmp_path, "127.0.0.1", rate_limit=3) as c:
        answers = [await c.get("/api/status") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["x-ratelimit-limit"] == "3"
        assert answers[2].headers["x-ratelimit-remaining"] == "0"
        limited = answers[3]
        assert limited.json()["code"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) >= 1
        stream = await c.get("/api/events", params={"types": "bogus"})  # same budget
        assert stream.status_code == 429
        probe = await c.get("/health/live")  # probes are not limited
        assert probe.status_code == 200 and "x-ratelimit-limit" not in probe.headers


@pytest.mark.anyio
async def test_stream_refusals_carry_cors_headers(remote: httpx.AsyncClient) -> None:
    origin = "http://localhost:5173"
    refused = await remote.get("/api/events", headers={"Origin": origin})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == origin
