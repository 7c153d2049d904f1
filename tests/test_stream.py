"""The SSE stream against a real uvicorn server on a free port, with a real HTTP client.

Most tests run on each of the stream's write paths (the `write_path` fixture):
`direct` (uvicorn's httptools protocol, live batches written straight to the
transport), `asgi` (`--rate-limit` wraps `send`, so every write goes through
the ASGI `send`), and `h11` (uvicorn's other protocol; ASGI `send` too).
"""

import json
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import httpx
import pytest

from loki_api.models import LogEventData, TaskEventData
from loki_api.settings import Settings
from loki_api.sse import TOO_SLOW

from .support import (
    InProcessServer,
    SSEMessage,
    SSEReader,
    serve_in_process,
    sse_stream,
    wait_for,
)


def settings_for(loki_dir: Path, **overrides: object) -> Settings:
    return Settings(loki_dir=loki_dir, port=0, **overrides)  # type: ignore[arg-type]


# write path -> (settings that select it, uvicorn's HTTP protocol)
WRITE_PATHS: dict[str, tuple[dict[str, object], str]] = {
    "direct": ({}, "httptools"),
    "asgi": ({"rate_limit": 1_000_000}, "httptools"),
    "h11": ({}, "h11"),
}


@pytest.fixture(params=list(WRITE_PATHS))
def write_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def serve(
    loki_dir: Path, write_path: str = "direct", **overrides: object
) -> AbstractAsyncContextManager[InProcessServer]:
    settings, http = WRITE_PATHS[write_path]
    return serve_in_process(settings_for(loki_dir, **settings, **overrides), http=http)


@pytest.fixture
async def live(loki_dir: Path, write_path: str) -> AsyncIterator[InProcessServer]:
    async with serve(loki_dir, write_path) as srv:
        yield srv


def raw_stream(url: str, path: str = "/api/events", headers: bytes = b"") -> socket.socket:
    """A stream request on a socket with a tiny receive buffer, so it fills up fast."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    client.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (path.encode(), headers))
    return client


async def fill_socket(srv: InProcessServer) -> None:
    """Publish big events until the only subscriber's socket is full (it stops being live)."""
    bus = srv.runtime.bus
    await wait_for(lambda: bus.subscriber_count == 1 and bus.subscribers()[0].live)
    sub = bus.subscribers()[0]
    big = "x" * 16_384
    with anyio.fail_after(10):
        while sub.live:
            bus.publish("log:info", log(big))
            await anyio.sleep(0)
    assert sub.blocked and not sub.closed


def log(message: str, level: str = "info") -> LogEventData:
    return LogEventData(level=level, message=message)


@pytest.mark.anyio
async def test_framing_headers_and_connect_preamble(live: InProcessServer) -> None:
    async with httpx.AsyncClient(base_url=live.url) as client:
        async with client.stream("GET", "/api/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            chunks = response.aiter_raw()
            first = await anext(chunks)
            assert first.startswith(b": connected")
            assert b"\nretry: 3000\n\n" in first
            event = live.runtime.bus.publish(
                "task:completed",
                TaskEventData(task_id="t1", title="Build it", status="completed"),
                "s1",
            )
            frame = await anext(chunks)
    lines = frame.decode().split("\n")
    assert lines[0] == f"id: {event.id}"
    assert lines[1] == "event: task:completed"
    envelope = json.loads(lines[2].removeprefix("data: "))
    assert envelope == {
        "id": event.id,
        "type": "task:completed",
        "timestamp": event.timestamp,
        "sessionId": "s1",
        "data": {"taskId": "t1", "title": "Build it", "status": "completed"},
    }
    assert lines[3:] == ["", ""]


@pytest.mark.anyio
async def test_head_answers_like_a_get_without_subscribing(live: InProcessServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=5) as client:
        head = await client.head("/api/events", params={"types": "log:info"})
        bad = await client.head("/api/events", params={"types": "nope"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/event-stream")
    assert bad.status_code == 400
    assert live.runtime.bus.subscriber_count == 0


@pytest.mark.anyio
async def test_history_replay_then_live(live: InProcessServer) -> None:
    bus = live.runtime.bus
    for n in range(5):
        bus.publish("log:info", log(f"old {n}"))
    async with sse_stream(live.url, params={"history": 3}) as reader:
        replayed = [await reader.next() for _ in range(3)]
        assert [m.json()["data"]["message"] for m in replayed] == ["old 2", "old 3", "old 4"]
        bus.publish("log:info", log("new"))
        assert (await reader.next()).json()["data"]["message"] == "new"
        assert "replayed 3 historical events" in reader.comments
        assert reader.retry == 3000


@pytest.mark.anyio
async def test_filters_on_the_stream(live: InProcessServer) -> None:
    bus = live.runtime.bus
    params = {"sessionId": "s1", "types": "log:warn,log:error,task:created", "minLevel": "error"}
    async with sse_stream(live.url, params=params) as reader:
        bus.publish("log:error", log("other session", "error"), "s2")
        bus.publish("log:warn", log("too quiet", "warn"), "s1")
        bus.publish("log:info", log("wrong type"), "s1")
        bus.publish("task:created", TaskEventData(task_id="1", title="t", status="pending"), "s1")
        bus.publish("log:error", log("wanted", "error"), "s1")
        first, second = await reader.next(), await reader.next()
    assert (first.event, second.event) == ("task:created", "log:error")
    assert second.json()["data"]["message"] == "wanted"


@pytest.mark.anyio
async def test_last_event_id_resumes_without_gap_or_duplicate(live: InProcessServer) -> None:
    bus = live.runtime.bus
    async with sse_stream(live.url) as reader:
        for n in range(3):
            bus.publish("log:info", log(str(n)))
        seen = [await reader.next() for _ in range(3)]
    resume_from = seen[1].id
    for n in range(3, 6):
        bus.publish("log:info", log(str(n)))  # published while disconnected
    async with sse_stream(live.url, headers={"Last-Event-ID": resume_from}) as reader:
        replay = [await reader.next() for _ in range(4)]
        bus.publish("log:info", log("6"))
        live_one = await reader.next()
    got = [m.json()["data"]["message"] for m in [*replay, live_one]]
    assert got == ["2", "3", "4", "5", "6"]
    assert "replayed" not in " ".join(reader.comments)


@pytest.mark.anyio
async def test_resume_across_a_server_restart(loki_dir: Path) -> None:
    async with serve_in_process(settings_for(loki_dir)) as first:
        async with sse_stream(first.url) as reader:
            first.runtime.bus.publish("log:info", log("a"))
            last_seen = (await reader.next()).id
            first.runtime.bus.publish("log:info", log("b"))  # missed by the client
            first.runtime.bus.publish("log:info", log("c"))
    async with serve_in_process(settings_for(loki_dir)) as second:
        async with sse_stream(second.url, params={"lastEventId": last_seen}) as reader:
            second.runtime.bus.publish("log:info", log("d"))
            got = [await reader.next() for _ in range(3)]
    assert [m.json()["data"]["message"] for m in got] == ["b", "c", "d"]
    seqs = [int(m.id.split("_")[1]) for m in got]
    assert seqs == sorted(seqs) and seqs[0] == int(last_seen.split("_")[1]) + 1


@pytest.mark.anyio
async def test_disconnect_unsubscribes_at_once(live: InProcessServer) -> None:
    bus = live.runtime.bus
    async with sse_stream(live.url) as reader:
        await wait_for(lambda: bus.subscriber_count == 1)
        bus.publish("log:info", log("x"))
        await reader.next()
    await wait_for(lambda: bus.subscriber_count == 0, timeout=5)


@pytest.mark.anyio
async def test_shutdown_ends_streams_promptly(loki_dir: Path, write_path: str) -> None:
    with anyio.fail_after(10):
        async with serve(loki_dir, write_path) as srv:
            async with sse_stream(srv.url) as reader:
                srv.server.should_exit = True
                with pytest.raises(EOFError):
                    await reader.next()


@pytest.mark.anyio
async def test_slow_reader_is_cut_off_while_a_fast_one_keeps_receiving(
    loki_dir: Path, write_path: str
) -> None:
    async with serve(loki_dir, write_path, max_pending=20) as srv:
        bus = srv.runtime.bus
        slow = raw_stream(srv.url)  # never reads
        try:
            async with sse_stream(srv.url) as fast:
                await wait_for(lambda: bus.subscriber_count == 2)
                big = "x" * 32_768
                received = 0
                for n in range(300):
                    bus.publish("log:info", log(f"{n} {big}"))
                    if n % 10 == 9:  # the fast reader keeps up between bursts
                        for _ in range(10):
                            await fast.next()
                            received += 1
                    await anyio.sleep(0)
                assert received == 300
                await wait_for(lambda: bus.subscriber_count == 1)
                async with httpx.AsyncClient(base_url=srv.url) as client:
                    stats = (await client.get("/api/events/stats")).json()
                assert stats["dropped"] >= 1 and stats["subscribers"] == 1
        finally:
            slow.close()


FRAME = re.compile(rb"id: evt_\d+_\d+\nevent: log:info\ndata: (.*?)\n\n")


@pytest.mark.anyio
async def test_a_stream_whose_socket_fills_up_catches_up_without_gap_or_duplicate(
    loki_dir: Path, write_path: str
) -> None:
    async with serve(loki_dir, write_path) as srv:
        bus = srv.runtime.bus
        client = raw_stream(srv.url)
        client.setblocking(False)
        try:
            await wait_for(lambda: bus.subscriber_count == 1)
            sub = bus.subscribers()[0]
            await wait_for(lambda: sub.live)
            # Straight to uvicorn's transport on the direct path only.
            direct = sub.writer._direct  # type: ignore[union-attr]
            assert (direct is not None) == (write_path == "direct")
            big = "x" * 16_384
            sent = 0
            with anyio.fail_after(10):
                while sub.live:  # the client reads nothing: its socket fills up
                    bus.publish("log:info", log(f"{sent} {big}"))
                    sent += 1
                    await anyio.sleep(0)
            for _ in range(20):  # these wait on its own list
                bus.publish("log:info", log(f"{sent} {big}"))
                sent += 1
            assert len(sub.pending) > 0 and not sub.closed
            data = b""
            with anyio.fail_after(10):
                # Until every frame is in, the last one whole (its chunk ends the data).
                while data.count(b"\nevent: log:info\n") < sent or not data.endswith(b"\n\n\r\n"):
                    try:
                        data += client.recv(1 << 20)
                    except BlockingIOError:
                        await anyio.sleep(0.001)
            got = [
                int(m.split(b'"message":"', 1)[1].split(b" ", 1)[0]) for m in FRAME.findall(data)
            ]
            assert got == list(range(sent))
            await wait_for(lambda: sub.live)  # caught up: back to the shared batches
            bus.publish("log:info", log("after"))
            with anyio.fail_after(5):
                while b'"message":"after"' not in data:
                    try:
                        data += client.recv(1 << 20)
                    except BlockingIOError:
                        await anyio.sleep(0.001)
        finally:
            client.close()


@pytest.mark.anyio
async def test_a_client_that_pipelined_a_request_and_left_is_unsubscribed(
    live: InProcessServer,
) -> None:
    # uvicorn marks only the newest request of a closed connection as disconnected.
    bus = live.runtime.bus
    port = int(live.url.rsplit(":", 1)[1])
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(
        b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    await wait_for(lambda: bus.subscriber_count == 1 and bus.subscribers()[0].live)
    client.close()
    with anyio.fail_after(10):
        while bus.subscriber_count:
            bus.publish("log:info", log("anyone there?"))
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_stream_sends_cors_headers_to_allowed_origins_only(live: InProcessServer) -> None:
    async with sse_stream(live.url, headers={"Origin": "http://localhost:5173"}) as reader:
        assert reader.response.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert reader.response.headers["access-control-allow-credentials"] == "true"
    async with sse_stream(live.url, headers={"Origin": "http://evil.example"}) as reader:
        assert "access-control-allow-origin" not in reader.response.headers
    async with httpx.AsyncClient(base_url=live.url) as client:
        bad = await client.get(
            "/api/events", params={"types": "nope"}, headers={"Origin": "http://127.0.0.1:3000"}
        )
    assert bad.status_code == 400 and bad.json()["code"] == "BAD_REQUEST"
    assert bad.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"


@pytest.mark.anyio
async def test_many_streams_each_get_every_event_in_order(live: InProcessServer) -> None:
    bus = live.runtime.bus
    async with sse_stream(live.url) as a, sse_stream(live.url) as b:
        await wait_for(lambda: bus.subscriber_count == 2)
        for n in range(200):
            bus.publish("log:info", log(str(n)))
            if n % 50 == 0:
                await anyio.sleep(0)
        for reader in (a, b):
            got = [(await reader.next()).json()["data"]["message"] for _ in range(200)]
            assert got == [str(n) for n in range(200)]


@pytest.mark.anyio
async def test_the_runtime_sends_keepalives_and_heartbeats(loki_dir: Path) -> None:
    directory = loki_dir / ".loki" / "sessions" / "hb1"
    directory.mkdir(parents=True)
    (directory / "session.json").write_text(
        '{"id": "hb1", "status": "running", "startedAt": "2026-01-01T00:00:00.000Z"}'
    )
    (directory / "tasks.json").write_text('{"tasks": [{"id": "t", "status": "pending"}]}')
    settings = settings_for(loki_dir, keepalive=0.05, heartbeat=0.05)
    async with serve_in_process(settings) as srv:
        async with sse_stream(srv.url, params={"types": "heartbeat"}) as reader:
            beat = await reader.next(timeout=5)
            assert beat.event == "heartbeat"
            assert beat.json()["sessionId"] == "hb1"
            assert beat.json()["data"]["queuedTasks"] == 1
            # Comments are collected while reading; heartbeats keep the reader going.
            await reader.until(lambda _: "ping" in reader.comments, timeout=5)


# ------------------------------------------------------------ cut off means disconnected


async def overflow(srv: InProcessServer) -> None:
    """Fill the only stream's socket, then publish until it is cut off."""
    bus = srv.runtime.bus
    await fill_socket(srv)
    with anyio.fail_after(10):
        while not bus.cutoffs:
            bus.publish("log:info", log("y" * 16_384))
            await anyio.sleep(0)


TCP_ESTABLISHED = 1  # tcpi_state of Linux's struct tcp_info


@pytest.fixture
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung-up stream that is never read is reset after 0.1 s instead of 1 s: the
    same reset, sooner (a reader that reads after the cut-off keeps the default)."""
    from loki_api import direct_write

    monkeypatch.setattr(direct_write, "HANGUP_LINGER", 0.1)


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def read_to_end(client: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: (data, True if it closed cleanly)."""
    client.settimeout(timeout)
    data = b""
    try:
        while chunk := client.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        return data, False
    return data, True


@pytest.mark.parametrize("reads", [False, True], ids=["never-reads", "reads-after"])
@pytest.mark.anyio
async def test_a_cut_off_reader_is_disconnected_at_once(
    loki_dir: Path, write_path: str, reads: bool, request: pytest.FixtureRequest
) -> None:
    if not reads:
        request.getfixturevalue("short_linger")
    async with serve(loki_dir, write_path, max_pending=20) as srv:
        bus, state = srv.runtime.bus, srv.server.server_state
        client = raw_stream(srv.url)
        try:
            await overflow(srv)
            cut_at = time.monotonic()
            assert bus.subscriber_count == 0
            if reads:
                # It reads what is left: the final comment, then the end of the connection.
                data, clean = await anyio.to_thread.run_sync(read_to_end, client)
                closed_after = time.monotonic() - cut_at
            else:
                # Its request task and its TCP connection end without it ever reading:
                # the client's own socket leaves ESTABLISHED (a reset after the linger).
                await wait_for(lambda: not state.tasks and not state.connections, timeout=3)
                await wait_for(lambda: tcp_state(client) != TCP_ESTABLISHED, timeout=3)
                read_to_end(client)  # ends (reset, or closed): no timeout waiting for more
        finally:
            client.close()
    if reads:
        assert clean, "the connection was reset although the client read everything"
        assert data.endswith(TOO_SLOW + b"\r\n0\r\n\r\n")
        assert closed_after < 2.0


@pytest.mark.anyio
async def test_keepalive_pings_count_toward_the_bound(
    loki_dir: Path, write_path: str, short_linger: None
) -> None:
    async with serve(loki_dir, write_path, max_pending=5, keepalive=0.05) as srv:
        bus = srv.runtime.bus
        client = raw_stream(srv.url)
        try:
            await fill_socket(srv)
            assert len(bus.subscribers()[0].pending) < 5
            # No more events: the pings alone take it past its bound.
            await wait_for(lambda: bus.cutoffs == 1, timeout=5)
            await wait_for(lambda: not srv.server.server_state.connections, timeout=3)
        finally:
            client.close()


@pytest.mark.anyio
async def test_a_socket_full_for_longer_than_the_send_deadline_is_cut_off(
    loki_dir: Path, write_path: str, short_linger: None
) -> None:
    async with serve(loki_dir, write_path, send_deadline=0.3) as srv:
        bus = srv.runtime.bus
        client = raw_stream(srv.url)
        try:
            await fill_socket(srv)
            blocked_at = time.monotonic()
            await wait_for(lambda: bus.cutoffs == 1, timeout=5)
            assert time.monotonic() - blocked_at >= 0.25
            assert bus.subscriber_count == 0
            await wait_for(lambda: not srv.server.server_state.connections, timeout=3)
        finally:
            client.close()


@pytest.mark.anyio
async def test_the_direct_path_engages_on_this_uvicorn(
    live: InProcessServer, write_path: str
) -> None:
    # direct_write.py reads private attributes of uvicorn's request cycle; pyproject.toml
    # pins the uvicorn range this passed on. If an upgrade breaks them, the direct path
    # silently falls back to `send`: this test says so loudly.
    import uvicorn

    bus = live.runtime.bus
    async with sse_stream(live.url):
        await wait_for(lambda: bus.subscriber_count == 1 and bus.subscribers()[0].live)
        stream = bus.subscribers()[0].writer
        direct, cycle = stream._direct, stream._cycle  # type: ignore[union-attr]
    assert cycle is not None, f"uvicorn {uvicorn.__version__}: its request cycle changed"
    if write_path == "direct":
        assert direct is not None, f"uvicorn {uvicorn.__version__}: direct writes disengaged"
    else:
        assert direct is None


# ------------------------------------------------------------------ gaps are said


def gap_of(msg: SSEMessage) -> dict[str, object]:
    assert msg.event == "gap" and msg.id is None
    return msg.json()  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_resuming_from_before_the_history_says_the_gap_first(loki_dir: Path) -> None:
    async with serve(loki_dir, history=5) as srv:
        bus = srv.runtime.bus
        ids = [bus.publish("log:info", log(str(n))).id for n in range(10)]
        bus.publish("task:created", TaskEventData(task_id="t", title="t", status="pending"))
        # Type filters do not hide the gap.
        async with sse_stream(
            srv.url, headers={"Last-Event-ID": ids[1]}, params={"types": "task:created"}
        ) as reader:
            gap = gap_of(await reader.next())
            assert (await reader.next()).event == "task:created"
    # Held: 6..9 and the task (5 events); 2..5 fell out of history.
    assert gap == {"lastEventId": ids[1], "resumedFrom": ids[6], "missed": 4}


@pytest.mark.anyio
async def test_no_gap_when_nothing_was_missed(loki_dir: Path) -> None:
    async with serve(loki_dir, history=5) as srv:
        bus = srv.runtime.bus
        ids = [bus.publish("log:info", log(str(n))).id for n in range(10)]
        async with sse_stream(srv.url, headers={"Last-Event-ID": ids[4]}) as reader:
            first = await reader.next()
    assert first.event == "log:info" and first.id == ids[5]


@pytest.mark.parametrize(
    "header", ["abc", "evt_99999_1", "evt_8_1", "evt_²_1", "x" * 5000, "evt_0_0, evt_1_1"]
)
@pytest.mark.anyio
async def test_a_last_event_id_header_that_is_not_ours_is_a_gap_not_an_error(
    loki_dir: Path, header: str
) -> None:
    async with serve(loki_dir, history=5) as srv:
        bus = srv.runtime.bus
        ids = [bus.publish("log:info", log(str(n))).id for n in range(10)]
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            # `evt_8_1`: a held sequence number, but not the id we gave it.
            async with client.stream(
                "GET", "/api/events", headers={"Last-Event-ID": header.encode("utf-8")}
            ) as response:
                assert response.status_code == 200
                reader = SSEReader(response)
                gap = gap_of(await reader.next())
                replay = [await reader.next() for _ in range(5)]
            bad_query = await client.get("/api/events", params={"lastEventId": "abc"})
    assert gap["resumedFrom"] == ids[5] and gap["missed"] is None
    assert isinstance(gap["lastEventId"], str) and len(gap["lastEventId"]) <= 200
    assert [m.id for m in replay] == ids[5:]
    assert bad_query.status_code == 400
