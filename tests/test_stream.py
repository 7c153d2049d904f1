"""The SSE stream against a real uvicorn server on a free port, with a real HTTP client."""

import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from loki_api.models import LogEventData, TaskEventData
from loki_api.settings import Settings

from .support import InProcessServer, serve_in_process, sse_stream, wait_for


def settings_for(loki_dir: Path, **overrides: object) -> Settings:
    return Settings(loki_dir=loki_dir, port=0, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def live(loki_dir: Path) -> AsyncIterator[InProcessServer]:
    async with serve_in_process(settings_for(loki_dir)) as srv:
        yield srv


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
async def test_shutdown_ends_streams_promptly(loki_dir: Path) -> None:
    with anyio.fail_after(10):
        async with serve_in_process(settings_for(loki_dir)) as srv:
            async with sse_stream(srv.url) as reader:
                srv.server.should_exit = True
                with pytest.raises(EOFError):
                    await reader.next()


@pytest.mark.anyio
async def test_slow_reader_is_cut_off_while_a_fast_one_keeps_receiving(loki_dir: Path) -> None:
    async with serve_in_process(settings_for(loki_dir, max_pending=20)) as srv:
        bus = srv.runtime.bus
        port = int(srv.url.rsplit(":", 1)[1])
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # then never reads
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
    loki_dir: Path,
) -> None:
    async with serve_in_process(settings_for(loki_dir)) as srv:
        bus = srv.runtime.bus
        port = int(srv.url.rsplit(":", 1)[1])
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        client.setblocking(False)
        try:
            await wait_for(lambda: bus.subscriber_count == 1)
            sub = bus.subscribers()[0]
            await wait_for(lambda: sub.live)
            assert sub.writer._direct is not None  # type: ignore[union-attr]  # straight to uvicorn
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
