"""The SDK against live servers.

- REST methods and error classes against a real `loki serve --simulate` child
  (`ServerProcess`): every error class comes from a real error answer where the
  server can produce one; the rest (401 from loopback is impossible, 413/415 the
  SDK never provokes, 429/5xx) are translated from `httpx.MockTransport` answers.
- The event stream against a real uvicorn in the test's process
  (`serve_in_process`), so the test publishes exactly the events it wants on the
  bus and compares what the client received with `/api/events/history`: across
  forced disconnects (a transport that cuts the connection mid-stream) and a
  server restart on the same port and loki dir. The sync client runs in a worker
  thread while the loop publishes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import loki_client
from loki_api.models import LogEventData, TaskEventData
from loki_api.settings import Settings
from loki_client import (
    AsyncLokiClient,
    BadRequest,
    Conflict,
    Event,
    LokiApiError,
    LokiClient,
    LokiConnectionError,
    LokiDecodeError,
    NotFound,
    SessionNotFound,
    StreamGap,
    ValidationError,
)

from .support import InProcessServer, ServerProcess, serve_in_process, wait_for

FAST = 0.05  # reconnect delay used by stream tests, instead of the server's 3 s hint


# ------------------------------------------------------------------------ helpers


def log(message: str, level: str = "info") -> LogEventData:
    return LogEventData(level=level, message=message)


def settings_for(loki_dir: Path, port: int = 0, **overrides: Any) -> Settings:
    return Settings(loki_dir=loki_dir, port=port, **overrides)


@pytest.fixture
async def live(loki_dir: Path) -> AsyncIterator[InProcessServer]:
    async with serve_in_process(settings_for(loki_dir)) as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ids(events: list[Event]) -> list[str]:
    return [event.id for event in events]


def history_ids(url: str) -> list[str]:
    with LokiClient(url) as client:
        return ids(client.event_history(limit=1000))


async def async_history_ids(url: str) -> list[str]:
    """For async tests, whose server shares the test's event loop (never block it)."""
    async with AsyncLokiClient(url) as client:
        return ids(await client.event_history(limit=1000))


def sessions_missing(url: str) -> bool:
    """True while the session routes are not in the server yet."""
    response = httpx.get(f"{url}/api/sessions", timeout=5)
    return response.status_code == 404 and response.json().get("code") == "NOT_FOUND"


@pytest.fixture
def client(server: ServerProcess) -> Iterator[LokiClient]:
    with LokiClient(server.url) as c:
        yield c


@pytest.fixture
def session_client(client: LokiClient) -> LokiClient:
    if sessions_missing(client.base_url):
        pytest.skip("session routes are not in the server yet (GET /api/sessions is 404)")
    return client


@pytest.fixture
def slow_server(loki_dir: Path) -> Iterator[ServerProcess]:
    """A simulated server whose sessions take long enough to pause, resume and stop."""
    with ServerProcess(
        loki_dir, "--simulate", "--stop-grace", "2", env={"LOKI_SIM_DELAY": "0.5"}
    ) as proc:
        if sessions_missing(proc.url):
            pytest.skip("session routes are not in the server yet (GET /api/sessions is 404)")
        yield proc


# ------------------------------------------------------- cutting connections


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, limit: int, on_cut: Callable[[], None]) -> None:
        self.inner, self.limit, self.on_cut = inner, limit, on_cut

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                self.inner.close()
                self.on_cut()
                raise httpx.ReadError("forced disconnect")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class _AsyncCutStream(httpx.AsyncByteStream):
    def __init__(
        self, inner: httpx.AsyncByteStream, limit: int, on_cut: Callable[[], None]
    ) -> None:
        self.inner, self.limit, self.on_cut = inner, limit, on_cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                await self.inner.aclose()
                self.on_cut()
                raise httpx.ReadError("forced disconnect")
            sent += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class CuttingTransport(httpx.HTTPTransport):
    """A real transport that cuts the n-th `/api/events` connection after `cuts[n]` bytes.

    It records every stream request, so tests can check what each one asked for.
    """

    def __init__(self, cuts: list[int]) -> None:
        super().__init__()
        self.cuts = list(cuts)
        self.stream_requests: list[httpx.Request] = []
        self.cut_count = 0

    def _cut(self) -> None:
        self.cut_count += 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/api/events":
            self.stream_requests.append(request)
            if self.cuts:
                assert isinstance(response.stream, httpx.SyncByteStream)
                response.stream = _CutStream(response.stream, self.cuts.pop(0), self._cut)
        return response


class AsyncCuttingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, cuts: list[int]) -> None:
        super().__init__()
        self.cuts = list(cuts)
        self.stream_requests: list[httpx.Request] = []
        self.cut_count = 0

    def _cut(self) -> None:
        self.cut_count += 1

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.url.path == "/api/events":
            self.stream_requests.append(request)
            if self.cuts:
                assert isinstance(response.stream, httpx.AsyncByteStream)
                response.stream = _AsyncCutStream(response.stream, self.cuts.pop(0), self._cut)
        return response


# ================================================================ REST: live server


def test_health_and_status(client: LokiClient) -> None:
    health = client.health()
    assert isinstance(health, loki_client.Health)
    assert health.status in ("healthy", "degraded")
    assert health.uptime >= 0
    status = client.status()
    assert isinstance(status, loki_client.Status)
    assert status.version == health.version
    assert status.system.python


def test_event_history_and_stats(client: LokiClient) -> None:
    assert client.event_history() == []  # a fresh loki dir
    stats = client.event_stats()
    assert isinstance(stats, loki_client.EventStats)
    assert stats.subscribers == 0


def test_token_and_url_from_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOKI_API_URL", server.url + "/")
    monkeypatch.setenv("LOKI_API_TOKEN", "t" * 32)
    with LokiClient() as client:
        assert client.base_url == server.url
        assert client._http.headers["authorization"] == "Bearer " + "t" * 32
        assert client.health().status in ("healthy", "degraded")
    monkeypatch.delenv("LOKI_API_URL")
    with LokiClient(token="x" * 32) as client:
        assert client.base_url == "http://127.0.0.1:8420"
        assert client._http.headers["authorization"] == "Bearer " + "x" * 32


def test_bad_limit_is_bad_request(client: LokiClient) -> None:
    with pytest.raises(BadRequest) as caught:
        client.event_history(limit=-1)
    err = caught.value
    assert (err.status, err.code) == (400, "BAD_REQUEST")
    assert "limit" in err.message
    assert isinstance(err.__cause__, type(None))  # a server answer, not a translated exception


def test_bad_event_type_is_bad_request(client: LokiClient) -> None:
    with pytest.raises(BadRequest, match="bogus"):
        client.event_history(types=["bogus"])
    with pytest.raises(BadRequest), client.events(types="bogus") as stream:
        next(stream)


def test_connection_refused_is_a_connection_error() -> None:
    with LokiClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(LokiConnectionError) as caught:
            client.health()
        assert isinstance(caught.value.__cause__, httpx.ConnectError)
        with pytest.raises(LokiConnectionError):
            next(iter(client.events()))


@pytest.mark.anyio
async def test_async_connection_refused_is_a_connection_error() -> None:
    async with AsyncLokiClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(LokiConnectionError):
            await client.status()


# --------------------------------------------------------------- sessions (live)


PRD = "# Demo\n\n## Build\n- First task\n- Second task\n"


def test_session_lifecycle_and_tasks(session_client: LokiClient, loki_dir: Path) -> None:
    client = session_client
    prd = loki_dir / "prd.md"
    prd.write_text(PRD)
    started = client.start_session(str(prd), provider="claude", verbose=True)
    assert isinstance(started, loki_client.SessionActionResponse)
    sid = started.session_id

    listing = client.list_sessions()
    assert sid in [s.id for s in listing.sessions]
    assert listing.total >= 1
    assert client.list_sessions(limit=0, offset=0).sessions == []

    detail = client.get_session(sid)
    assert isinstance(detail, loki_client.SessionDetail)
    assert detail.session.id == sid and detail.session.provider == "claude"

    # The simulator (LOKI_SIM_DELAY=0.02) finishes quickly.
    def finished() -> bool:
        return client.get_session(sid).session.status in ("completed", "failed")

    anyio.run(wait_for, finished, 30.0)
    assert client.get_session(sid).session.status == "completed"
    assert client.list_sessions(status="completed").sessions[0].id == sid

    tasks = client.get_tasks(sid)
    assert isinstance(tasks, loki_client.SessionTaskList)
    assert tasks.pagination.total == len(tasks.tasks) >= 2
    assert tasks.summary.completed == tasks.summary.total
    first = tasks.tasks[0]
    assert client.get_task(sid, first.id) == first
    assert client.get_tasks(sid, limit=1).pagination.has_more is True
    assert client.get_tasks(sid, status="completed", limit=1, offset=1).pagination.offset == 1

    all_tasks = client.list_tasks(limit=50)
    assert isinstance(all_tasks, loki_client.TaskList)
    assert first.id in [t.id for t in all_tasks.tasks]
    assert isinstance(client.active_tasks(), loki_client.TaskQueue)
    assert isinstance(client.queued_tasks(), loki_client.TaskQueue)

    history = client.event_history(session_id=sid, types=["session:started"])
    assert [e.type for e in history] == ["session:started"]
    assert isinstance(history[0].data, loki_client.SessionEventData)
    logs = client.event_history(session_id=sid, min_level="warn", limit=1000)
    assert all(e.type in ("log:warn", "log:error") for e in logs if e.type.startswith("log:"))

    with pytest.raises(Conflict) as not_running:
        client.pause_session(sid)
    assert not_running.value.status == 409

    deleted = client.delete_session(sid)
    assert isinstance(deleted, loki_client.DeleteResponse)
    with pytest.raises(SessionNotFound):
        client.get_session(sid)


def test_session_errors_are_typed(session_client: LokiClient, loki_dir: Path) -> None:
    client = session_client
    with pytest.raises(SessionNotFound) as missing:
        client.get_session("session_does_not_exist")
    assert isinstance(missing.value, NotFound)
    assert (missing.value.status, missing.value.code) == (404, "SESSION_NOT_FOUND")
    with pytest.raises(SessionNotFound):
        client.stop_session("session_does_not_exist")
    with pytest.raises(ValidationError) as bad_provider:
        client.start_session(provider="nonsense")
    assert "Invalid provider" in bad_provider.value.message
    assert bad_provider.value.status == 422
    with pytest.raises(ValidationError):
        client.start_session(str(loki_dir / "no-such-prd.md"))
    with pytest.raises(ValidationError):
        client.start_session(timeout=0)  # typed options: the server still checks values
    with pytest.raises(BadRequest):
        client.list_sessions(limit=-5)
    with pytest.raises(ValidationError):
        client.list_sessions(status="sleeping")
    with pytest.raises(ValueError):
        client.get_session("")


def test_pause_resume_input_stop(slow_server: ServerProcess) -> None:
    with LokiClient(slow_server.url) as client:
        sid = client.start_session().session_id
        with pytest.raises(loki_client.SessionAlreadyRunning) as limit:
            client.start_session()
        assert limit.value.details.get("sessionId") == sid
        anyio.run(wait_for, lambda: client.get_session(sid).session.status == "running", 15.0)
        with pytest.raises(Conflict):
            client.resume_session(sid)  # not paused
        assert client.pause_session(sid).status == "paused"
        assert client.resume_session(sid).status == "running"
        accepted = client.inject_input(sid, "use PostgreSQL", context="constraints")
        assert accepted.session_id == sid
        with pytest.raises(Conflict):
            client.delete_session(sid)  # still running
        assert client.stop_session(sid).status == "stopping"
        anyio.run(
            wait_for,
            lambda: client.get_session(sid).session.status in ("stopped", "completed", "failed"),
            15.0,
        )


# ===================================================== errors: translated answers


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "BAD_REQUEST", loki_client.BadRequest),
        (401, "UNAUTHORIZED", loki_client.Unauthorized),
        (403, "FORBIDDEN", loki_client.Forbidden),
        (404, "NOT_FOUND", loki_client.NotFound),
        (404, "SESSION_NOT_FOUND", loki_client.SessionNotFound),
        (405, "METHOD_NOT_ALLOWED", loki_client.LokiApiError),
        (409, "CONFLICT", loki_client.Conflict),
        (409, "SESSION_ALREADY_RUNNING", loki_client.SessionAlreadyRunning),
        (413, "PAYLOAD_TOO_LARGE", loki_client.PayloadTooLarge),
        (415, "UNSUPPORTED_MEDIA_TYPE", loki_client.UnsupportedMediaType),
        (422, "VALIDATION_ERROR", loki_client.ValidationError),
        (429, "RATE_LIMITED", loki_client.RateLimited),
        (500, "INTERNAL_ERROR", loki_client.ServerError),
        (500, "CLI_ERROR", loki_client.ServerError),
        (501, "NOT_IMPLEMENTED", loki_client.ServerError),
        (503, "SERVICE_UNAVAILABLE", loki_client.ServiceUnavailable),
        (503, "PROVIDER_NOT_AVAILABLE", loki_client.ProviderNotAvailable),
    ],
)
def test_every_error_code_maps_to_its_class(
    status: int, code: str, expected: type[LokiApiError]
) -> None:
    body = {"error": f"went wrong: {code}", "code": code, "details": {"sessionId": "s1"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"Retry-After": "7"})

    with LokiClient("http://loki.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(LokiApiError) as caught:
            client.list_sessions()
    err = caught.value
    assert type(err) is expected
    assert (err.status, err.code, err.message) == (status, code, f"went wrong: {code}")
    assert err.details == {"sessionId": "s1"}
    assert code in str(err)
    if isinstance(err, loki_client.RateLimited):
        assert err.retry_after == 7.0


def test_unauthorized_and_bearer_token() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer " + "s" * 32:
            return httpx.Response(
                401, json={"error": "Remote access not configured", "code": "UNAUTHORIZED"}
            )
        return httpx.Response(200, json={"sessions": [], "total": 0, "running": 0})

    transport = httpx.MockTransport(handler)
    with LokiClient("http://loki.test", transport=transport) as anonymous:
        with pytest.raises(loki_client.Unauthorized) as caught:
            anonymous.list_sessions()
    assert caught.value.status == 401
    with LokiClient("http://loki.test", token="s" * 32, transport=transport) as client:
        assert client.list_sessions().total == 0
    assert seen == [None, "Bearer " + "s" * 32]


def test_non_json_error_answer_is_classified_by_status() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(502, text="<html>Bad Gateway</html>")
    )
    with LokiClient("http://loki.test", transport=transport) as client:
        with pytest.raises(loki_client.ServerError) as caught:
            client.status()
    assert caught.value.status == 502 and "Bad Gateway" in caught.value.message


def test_unexpected_answer_is_a_decode_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"nope": 1}))
    with LokiClient("http://loki.test", transport=transport) as client:
        with pytest.raises(LokiDecodeError):
            client.status()


def test_unhealthy_health_is_a_result_not_an_error() -> None:
    body = {
        "status": "unhealthy",
        "version": "0.1.0",
        "uptime": 1000,
        "providers": {},
        "activeSession": None,
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json=body))
    with LokiClient("http://loki.test", transport=transport) as client:
        assert client.health().status == "unhealthy"


def test_requests_are_built_as_the_spec_says() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"sessionId": "a/b", "status": "running", "message": "ok"})

    with LokiClient("http://loki.test/", transport=httpx.MockTransport(handler)) as client:
        client.start_session("prd.md", provider="codex", dry_run=True, timeout=5)
        client.inject_input("a/b", "hello", context="ctx")
        client.stop_session("a/b")
    start, inject, stop = requests
    assert (start.method, start.url.path) == ("POST", "/api/sessions")
    assert json.loads(start.content) == {
        "provider": "codex",
        "prdPath": "prd.md",
        "options": {"dryRun": True, "timeout": 5},
    }
    assert inject.url.raw_path == b"/api/sessions/a%2Fb/input"
    assert json.loads(inject.content) == {"input": "hello", "context": "ctx"}
    assert stop.url.raw_path == b"/api/sessions/a%2Fb/stop"


@pytest.mark.anyio
async def test_async_errors_are_the_same_classes() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json={"error": "Session not found: x", "code": "SESSION_NOT_FOUND"}
        )

    async with AsyncLokiClient(
        "http://loki.test", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(SessionNotFound):
            await client.get_session("x")


# ============================================================= the event stream


@pytest.mark.anyio
async def test_async_stream_yields_typed_events_with_filters(live: InProcessServer) -> None:
    bus = live.runtime.bus
    bus.publish("log:info", log("old"), "s1")
    async with AsyncLokiClient(live.url) as client:
        async with client.events(
            session_id="s1", types=["log:info", "task:created"], history=5
        ) as stream:
            first = await anext(stream)
            assert first.data == log("old")
            bus.publish("log:info", log("other session"), "s2")
            bus.publish("log:warn", log("wrong type", "warn"), "s1")
            bus.publish(
                "task:created", TaskEventData(task_id="t", title="T", status="pending"), "s1"
            )
            second = await anext(stream)
    assert second.type == "task:created"
    assert isinstance(second.data, TaskEventData) and second.data.title == "T"
    assert second.session_id == "s1"
    assert stream.last_event_id == second.id


@pytest.mark.anyio
async def test_async_stream_survives_forced_disconnects(live: InProcessServer) -> None:
    bus = live.runtime.bus
    for n in range(3):
        bus.publish("log:info", log(f"before {n}"))
    # Cut the first connection mid-event, the second inside its preamble, and the
    # third after a few events; the fourth is left alone.
    transport = AsyncCuttingTransport([700, 30, 900])
    received: list[Event] = []

    async def publish() -> None:
        for n in range(40):
            bus.publish("log:info", log(f"live {n} " + "x" * 50))
            await anyio.sleep(0.005)

    with anyio.fail_after(20):
        async with AsyncLokiClient(live.url, transport=transport) as client:
            async with client.events(history=2, reconnect_delay=FAST) as stream:
                received.append(await anext(stream))  # subscribed: now publish
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish)
                    async for event in stream:
                        received.append(event)
                        if event.data.message.startswith("live 39"):
                            break
            assert stream.connections >= 4
    history = await async_history_ids(live.url)
    assert ids(received) == history[1:]  # history=2 replayed "before 1" and "before 2"
    # History is replayed through the anchor on the first connection, never again.
    first, *later = transport.stream_requests
    assert first.headers["last-event-id"] == "evt_1_0"  # just before "before 1"
    resumed_from = [request.headers["last-event-id"] for request in later]
    assert resumed_from[0] in ids(received) and resumed_from == sorted(
        resumed_from, key=lambda i: int(i.split("_")[1])
    )
    assert all("history" not in request.url.params for request in transport.stream_requests)


def test_sync_stream_survives_forced_disconnects(live_thread: ThreadedServer) -> None:
    transport = CuttingTransport([500, 30, 800])
    received: list[Event] = []
    live_thread.start_publishing(40)
    with LokiClient(live_thread.url, transport=transport) as client:
        with client.events(history=100, reconnect_delay=FAST) as stream:
            for event in stream:
                received.append(event)
                if event.data.message == "live 39":
                    break
        assert stream.connections >= 4
    live_thread.wait_published()
    history = history_ids(live_thread.url)
    # history=100 covers what was published before the stream subscribed.
    assert ids(received) == history
    later = transport.stream_requests[1:]
    assert [r.headers["last-event-id"] for r in later][-1] in ids(received)


@pytest.mark.anyio
async def test_drop_before_any_event_resumes_from_the_anchor(live: InProcessServer) -> None:
    bus = live.runtime.bus
    bus.publish("log:info", log("already old"))
    transport = AsyncCuttingTransport([30])  # inside the ": connected" preamble
    async with AsyncLokiClient(live.url, transport=transport) as client:
        async with client.events(reconnect_delay=0.3) as stream:

            async def publish_during_the_gap() -> None:
                await wait_for(lambda: transport.cut_count == 1)
                await wait_for(lambda: bus.subscriber_count == 0)  # the server saw the drop
                bus.publish("log:info", log("during the gap"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_during_the_gap)
                with anyio.fail_after(10):
                    event = await anext(stream)
    assert event.data.message == "during the gap"
    anchor = transport.stream_requests[0].headers["last-event-id"]
    assert anchor == (await async_history_ids(live.url))[0]  # newest when iteration began


@pytest.mark.anyio
async def test_async_stream_resumes_across_a_server_restart(loki_dir: Path) -> None:
    port = free_port()
    received: list[Event] = []
    with anyio.fail_after(30):
        async with AsyncLokiClient(f"http://127.0.0.1:{port}") as client:
            stream = client.events(history=10, reconnect_delay=FAST)
            async with serve_in_process(settings_for(loki_dir, port)) as first:
                first.runtime.bus.publish("log:info", log("a"))
                received.append(await anext(stream))
                first.runtime.bus.publish("log:info", log("b"))
                received.append(await anext(stream))
                first.runtime.bus.publish("log:info", log("c"))  # read now or replayed later
            # The server is gone: the stream ended cleanly and reconnection is refused.
            async with serve_in_process(settings_for(loki_dir, port)) as second:
                bus = second.runtime.bus
                bus.publish("log:info", log("d"))  # published before the client is back
                received.append(await anext(stream))
                received.append(await anext(stream))
                await wait_for(lambda: bus.subscriber_count == 1)
                bus.publish("log:info", log("e"))
                received.append(await anext(stream))
                await stream.aclose()
                await wait_for(lambda: bus.subscriber_count == 0)
                history = await async_history_ids(second.url)
    assert [e.data.message for e in received] == ["a", "b", "c", "d", "e"]
    assert ids(received) == history
    assert stream.connections == 2


def test_sync_stream_resumes_across_a_server_restart(loki_dir: Path) -> None:
    port = free_port()
    received: list[Event] = []
    with LokiClient(f"http://127.0.0.1:{port}") as client:
        with ThreadedServer(loki_dir, port) as first:
            first.publish("log:info", log("a"))
            stream = client.events(history=10, reconnect_delay=FAST)
            received.append(next(stream))
            first.publish("log:info", log("b"))  # read now or replayed after the restart
        with ThreadedServer(loki_dir, port) as second:
            second.publish("log:info", log("c"))  # published before the client is back
            second.publish("log:info", log("d"))
            received.extend(next(stream) for _ in range(3))
            second.wait(lambda: second.runtime.bus.subscriber_count == 1)
            second.publish("log:info", log("e"))
            received.append(next(stream))
            stream.close()
            second.wait(lambda: second.runtime.bus.subscriber_count == 0)
            history = history_ids(second.url)
    assert [e.data.message for e in received] == ["a", "b", "c", "d", "e"]
    assert ids(received) == history
    assert stream.connections == 2


def test_stream_starts_when_entered(live_thread: ThreadedServer) -> None:
    live_thread.publish("log:info", log("before"))
    with LokiClient(live_thread.url) as client, client.events() as stream:
        live_thread.publish("log:info", log("after entering, before iterating"))
        assert next(stream).data.message == "after entering, before iterating"


def test_stream_resumes_across_a_real_server_restart(loki_dir: Path) -> None:
    """`loki serve --simulate` stopped (SIGTERM) and started again on the same port and dir."""
    port = free_port()
    args = ("--simulate", "--port", str(port))
    received: list[Event] = []

    def read_until_completed(stream: loki_client.EventStream, session_id: str) -> None:
        for event in stream:
            received.append(event)
            if event.type == "session:completed" and event.session_id == session_id:
                return

    with LokiClient(f"http://127.0.0.1:{port}") as client, ServerProcess(loki_dir, *args) as first:
        if sessions_missing(first.url):
            pytest.skip("session routes are not in the server yet (GET /api/sessions is 404)")
        with client.events(reconnect_delay=0.1) as stream:
            read_until_completed(stream, client.start_session().session_id)
            first.stop()  # graceful: the stream ends cleanly, reconnection is refused
            with ServerProcess(loki_dir, *args) as second:
                assert second.url == first.url == client.base_url
                read_until_completed(stream, client.start_session().session_id)
                assert stream.connections == 2
                history = ids(client.event_history(limit=1000))
    assert len(set(ids(received))) == len(received)
    assert ids(received) == history[: len(received)]


@pytest.mark.anyio
async def test_async_break_and_cancel_close_the_connection(live: InProcessServer) -> None:
    bus = live.runtime.bus
    async with AsyncLokiClient(live.url) as client:
        bus.publish("log:info", log("one"))
        async with client.events(history=1) as stream:
            async for _event in stream:
                assert bus.subscriber_count == 1
                break
        await wait_for(lambda: bus.subscriber_count == 0, 5)

        # Cancelled while waiting for an event that never comes.
        with anyio.move_on_after(0.5) as scope:
            async for _event in client.events():
                pass
        assert scope.cancelled_caught
        await wait_for(lambda: bus.subscriber_count == 0, 5)
        stats = await client.event_stats()
    assert stats.subscribers == 0


def test_sync_break_closes_the_connection(live_thread: ThreadedServer) -> None:
    with LokiClient(live_thread.url) as client:
        live_thread.start_publishing(1)
        for _event in client.events(history=1):
            assert client.event_stats().subscribers == 1
            break
        live_thread.wait(lambda: live_thread.runtime.bus.subscriber_count == 0)
        with client.events(history=1) as stream:
            next(stream)
        live_thread.wait(lambda: live_thread.runtime.bus.subscriber_count == 0)
        assert client.event_stats().subscribers == 0


def test_stream_gives_up_after_max_retries(loki_dir: Path) -> None:
    port = free_port()
    with LokiClient(f"http://127.0.0.1:{port}") as client:
        with ThreadedServer(loki_dir, port) as srv:
            srv.publish("log:info", log("a"))
            stream = client.events(history=1, reconnect_delay=0.01, max_retries=2)
            next(stream)
        with pytest.raises(LokiConnectionError):
            next(stream)
    assert stream.connections == 1


# ------------------------------------------------- a server in a thread (sync tests)


class ThreadedServer:
    """`serve_in_process` on its own event loop in a thread, for the blocking client.

    `publish` hands events to that loop; `wait` polls a condition from the test thread.
    """

    def __init__(self, loki_dir: Path, port: int = 0) -> None:
        self.settings = settings_for(loki_dir, port)
        self.url = ""
        self.runtime: Any = None
        self._portal_cm: Any = None
        self._portal: Any = None
        self._stop: anyio.Event | None = None
        self._publisher: threading.Thread | None = None

    def __enter__(self) -> ThreadedServer:
        from anyio.from_thread import start_blocking_portal

        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        ready = threading.Event()

        async def run() -> None:
            self._stop = anyio.Event()
            async with serve_in_process(self.settings) as srv:
                self.url, self.runtime = srv.url, srv.runtime
                ready.set()
                await self._stop.wait()

        self._future = self._portal.start_task_soon(run)
        if not ready.wait(15):
            raise TimeoutError("in-process server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._publisher is not None:
            self._publisher.join(15)
        assert self._stop is not None
        self._portal.call(self._stop.set)
        self._future.result(15)
        self._portal_cm.__exit__(None, None, None)

    def publish(self, type: str, data: Any, session_id: str | None = None) -> Event:
        event: Event = self._portal.call(self.runtime.bus.publish, type, data, session_id)
        return event

    def start_publishing(self, count: int, interval: float = 0.005) -> None:
        """Publish `live 0` ... `live <count-1>` from a background thread."""

        def run() -> None:
            for n in range(count):
                self.publish("log:info", log(f"live {n}"))
                threading.Event().wait(interval)

        # Give the stream a moment to subscribe first, so it sees every event live
        # or through its anchor.
        self._publisher = threading.Thread(target=run, daemon=True)
        self._publisher.start()

    def wait_published(self) -> None:
        assert self._publisher is not None
        self._publisher.join(15)

    def wait(self, condition: Any, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError("condition not met")
            time.sleep(0.01)


@pytest.fixture
def live_thread(loki_dir: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(loki_dir) as srv:
        yield srv


@pytest.mark.parametrize("history", [0, 3])
@pytest.mark.anyio
async def test_a_filtered_stream_with_nothing_matching_yet_sees_no_false_gap(
    loki_dir: Path, history: int
) -> None:
    # The history no longer reaches seq 1: resuming from "before everything" would be a gap.
    async with serve_in_process(settings_for(loki_dir, history=5)) as srv:
        for n in range(20):
            srv.runtime.bus.publish("log:info", log(str(n)))
        with anyio.fail_after(10):
            async with AsyncLokiClient(srv.url) as client:
                async with client.events(types=["task:created"], history=history) as stream:
                    srv.runtime.bus.publish(
                        "task:created", TaskEventData(task_id="t", title="t", status="pending")
                    )
                    event = await anext(stream)
    assert event.type == "task:created"


@pytest.mark.anyio
async def test_a_stream_resuming_past_the_history_reports_the_gap(loki_dir: Path) -> None:
    async with serve_in_process(settings_for(loki_dir, history=5)) as srv:
        bus = srv.runtime.bus
        gaps: list[StreamGap] = []
        first = bus.publish("log:info", log("first"))
        with anyio.fail_after(10):
            async with AsyncLokiClient(srv.url) as client:
                stream = client.events(on_gap=gaps.append, reconnect_delay=0.01)
                stream._resume.anchor = first.id  # as if it had seen `first` and then dropped
                for n in range(10):
                    bus.publish("log:info", log(str(n)))
                async with stream:
                    got = [await anext(stream) for _ in range(5)]
    assert [e.data.message for e in got] == ["5", "6", "7", "8", "9"]
    assert gaps == [StreamGap(last_event_id=first.id, resumed_from=got[0].id, missed=5)]


# ----------------------------------------------- answers that are not the API's (SPEC §9)

HTML_PAGE = b"<html><body><h1>Sign in to the guest Wi-Fi</h1></body></html>"


def _html(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=HTML_PAGE, headers={"content-type": "text/html"})


def test_an_html_page_instead_of_json_is_a_clear_error() -> None:
    with LokiClient("http://loki.test", transport=httpx.MockTransport(_html)) as client:
        with pytest.raises(LokiDecodeError) as caught:
            client.health()
    assert "text/html" in str(caught.value) and "application/json" in str(caught.value)


def test_an_html_page_on_the_stream_raises_instead_of_reconnecting() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/api/events/history":
            return httpx.Response(200, json={"events": [], "count": 0})
        return _html(request)

    with LokiClient("http://loki.test", transport=httpx.MockTransport(handler)) as client:
        stream = client.events(reconnect_delay=0)
        with pytest.raises(LokiDecodeError) as caught:
            next(stream)
    assert "text/html" in str(caught.value) and "text/event-stream" in str(caught.value)
    assert calls.count("/api/events") == 1  # one attempt, not a reconnect loop


@pytest.mark.anyio
async def test_the_async_stream_raises_on_a_wrong_content_type_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/events/history":
            return httpx.Response(200, json={"events": [], "count": 0})
        return httpx.Response(200, text="{}", headers={"content-type": "application/json"})

    async with AsyncLokiClient(
        "http://loki.test", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(LokiDecodeError, match="text/event-stream"):
            async for _ in client.events(reconnect_delay=0):
                pass


def test_start_session_options_are_typed_keywords() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(201, json={"sessionId": "s1", "status": "running", "message": ""})

    with LokiClient("http://loki.test", transport=httpx.MockTransport(handler)) as client:
        client.start_session("prd.md", dry_run=True, timeout=2.5)
        with pytest.raises(TypeError):
            client.start_session(no_such_option=True)  # type: ignore[call-arg]
    assert json.loads(bodies[0]) == {
        "provider": "claude",
        "prdPath": "prd.md",
        "options": {"dryRun": True, "timeout": 2.5},
    }


def test_a_users_mypy_sees_the_sdks_types(tmp_path: Path) -> None:
    """py.typed: results are typed for a user's mypy, and options are checked."""
    from mypy import api as mypy_api

    user = tmp_path / "user.py"
    user.write_text(
        "from loki_client import Health, LokiClient\n"
        "client = LokiClient()\n"
        "health: Health = client.health()\n"
        "reveal_type(client.get_tasks('s1').tasks[0].created_at)\n"
        "client.start_session(dry_run='yes')\n"
    )
    out, _, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(user)]
    )
    assert 'Revealed type is "str"' in out or 'Revealed type is "builtins.str"' in out, out
    assert 'Argument "dry_run" to "start_session" of "LokiClient" has incompatible type' in out
    assert out.count("error:") == 1, out
