"""The resuming event stream's decisions, against a scripted server (`httpx.MockTransport`).

Live behaviour (real disconnects, restarts, closing) is in `test_client.py`; here
the server's answers are scripted so every branch is exact: what each
connection asks for, duplicates dropped, which failures are retried, backoff.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from loki_client import (
    AsyncLokiClient,
    BadRequest,
    EventsMissed,
    LogEventData,
    LokiClient,
    LokiConnectionError,
    LokiDecodeError,
    RateLimited,
    ServiceUnavailable,
    StreamGap,
)
from loki_client._base import seq_of
from loki_client._sse import ServerSentEvent
from loki_client._stream import MAX_BACKOFF, _Resume


def frame(seq: int, message: str = "", type: str = "log:info") -> bytes:
    event_id = f"evt_{seq}_1732341234567"
    envelope = {
        "id": event_id,
        "type": type,
        "timestamp": "2026-11-23T05:00:00.000Z",
        "sessionId": None,
        "data": {"level": "info", "message": message or str(seq)},
    }
    return f"id: {event_id}\nevent: {type}\ndata: {json.dumps(envelope)}\n\n".encode()


PREAMBLE = b": connected to loki-api\nretry: 3000\n\n"
Script = list[Callable[[httpx.Request], httpx.Response]]


def scripted(
    history: list[int], connections: Script, seen: list[httpx.Request]
) -> httpx.MockTransport:
    """`/api/events/history` answers with `history` seqs; each `/api/events` takes the next
    scripted answer. Every stream request is recorded in `seen`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/events/history":
            events = [
                {
                    "id": f"evt_{seq}_1",
                    "type": "log:info",
                    "timestamp": "t",
                    "data": {"level": "info", "message": "old"},
                }
                for seq in history
            ]
            return httpx.Response(200, json={"events": events, "count": len(events)})
        seen.append(request)
        if not connections:
            raise httpx.ConnectError("no more scripted connections")
        return connections.pop(0)(request)

    return httpx.MockTransport(handler)


def stream_of(*frames: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(
        200, content=PREAMBLE + b"".join(frames), headers={"content-type": "text/event-stream"}
    )


def answer(status: int, code: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json={"error": code.lower(), "code": code})


def test_resumes_with_last_event_id_and_drops_duplicates() -> None:
    seen: list[httpx.Request] = []
    transport = scripted(
        [7],
        [
            stream_of(frame(8), frame(9)),  # ends cleanly (e.g. server shutdown)
            answer(503, "SERVICE_UNAVAILABLE"),  # still restarting
            stream_of(frame(9), frame(10)),  # a misbehaving replay of 9: dropped
        ],
        seen,
    )
    with LokiClient("http://loki.test", transport=transport) as client:
        with client.events(types=["log:info"], reconnect_delay=0) as stream:
            got = [next(stream) for _ in range(3)]
    assert [seq_of(e.id) for e in got] == [8, 9, 10]
    assert isinstance(got[0].data, LogEventData)
    assert [r.headers.get("last-event-id") for r in seen] == [
        "evt_7_1",
        "evt_9_1732341234567",
        "evt_9_1732341234567",
    ]
    assert all(r.url.params["types"] == "log:info" for r in seen)
    assert all("history" not in r.url.params for r in seen)
    assert stream.connections == 2


def test_history_anchor_sits_just_before_the_replayed_events() -> None:
    seen: list[httpx.Request] = []
    transport = scripted([40, 41, 42], [stream_of(frame(40), frame(41), frame(42))], seen)
    with LokiClient("http://loki.test", transport=transport) as client:
        with client.events(history=3, reconnect_delay=0) as stream:
            assert [seq_of(next(stream).id) for _ in range(3)] == [40, 41, 42]
    assert seen[0].headers["last-event-id"] == "evt_39_0"


def test_empty_history_anchors_before_everything() -> None:
    seen: list[httpx.Request] = []
    transport = scripted([], [stream_of(frame(1))], seen)
    with LokiClient("http://loki.test", transport=transport) as client:
        assert seq_of(next(iter(client.events())).id) == 1
    assert seen[0].headers["last-event-id"] == "evt_0_0"


def test_client_errors_on_reconnect_are_raised_not_retried() -> None:
    seen: list[httpx.Request] = []
    transport = scripted([], [stream_of(frame(1)), answer(400, "BAD_REQUEST")], seen)
    with LokiClient("http://loki.test", transport=transport) as client:
        stream = client.events(reconnect_delay=0)
        next(stream)
        with pytest.raises(BadRequest):
            next(stream)


def test_first_connection_failures_are_raised() -> None:
    for failure, expected in (
        (answer(503, "SERVICE_UNAVAILABLE"), ServiceUnavailable),
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")), LokiConnectionError),
    ):
        transport = scripted([], [failure], [])
        with LokiClient("http://loki.test", transport=transport) as client:
            with pytest.raises(expected):
                next(iter(client.events()))


def test_max_retries_bounds_consecutive_failures() -> None:
    seen: list[httpx.Request] = []
    transport = scripted([], [stream_of(frame(1))], seen)  # then every attempt is refused
    with LokiClient("http://loki.test", transport=transport) as client:
        stream = client.events(reconnect_delay=0, max_retries=3)
        next(stream)
        with pytest.raises(LokiConnectionError) as caught:
            next(stream)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(seen) == 1 + 3 + 1  # the stream, three retries, and the attempt that gave up


def test_undecodable_event_is_a_decode_error() -> None:
    transport = scripted([], [stream_of(b"id: evt_1_1\ndata: {not json\n\n")], [])
    with LokiClient("http://loki.test", transport=transport) as client:
        with pytest.raises(LokiDecodeError):
            next(iter(client.events()))


@pytest.mark.anyio
async def test_async_stream_makes_the_same_decisions() -> None:
    seen: list[httpx.Request] = []
    transport = scripted(
        [3],
        [
            stream_of(frame(4)),
            answer(502, "BAD_GATEWAY"),
            stream_of(frame(4), frame(5)),
        ],
        seen,
    )
    async with AsyncLokiClient("http://loki.test", transport=transport) as client:
        async with client.events(reconnect_delay=0) as stream:
            got = [await anext(stream), await anext(stream)]
    assert [seq_of(e.id) for e in got] == [4, 5]
    assert [r.headers["last-event-id"] for r in seen] == [
        "evt_3_1",
        "evt_4_1732341234567",
        "evt_4_1732341234567",
    ]


def test_delay_follows_the_servers_retry_then_backs_off() -> None:
    resume = _Resume({}, 0, reconnect_delay=None, max_retries=None)
    assert resume.delay() == 3.0  # before the server said anything
    resume.retry_ms = 1500
    assert resume.delay() == 1.5  # a clean end or one drop: the server's hint
    resume.opened()
    delays = []
    for _ in range(8):
        assert resume.may_retry(LokiConnectionError("refused"))
        delays.append(resume.delay())
    assert delays[:4] == [1.5, 3.0, 6.0, 12.0]
    assert delays[-1] == MAX_BACKOFF
    resume.opened()  # a successful connection resets the backoff
    assert resume.delay() == 1.5


def test_rate_limited_reconnect_waits_retry_after_once() -> None:
    resume = _Resume({}, 0, reconnect_delay=0.5, max_retries=None)
    resume.opened()
    limited = RateLimited("slow down", code="RATE_LIMITED", status=429, retry_after=7.0)
    assert resume.may_retry(limited)
    assert resume.delay() == 7.0
    assert resume.delay() == 0.5


def test_ids_that_are_not_ours_are_yielded_without_dedup() -> None:
    resume = _Resume({}, 0, None, None)
    envelope = json.dumps({"id": "foreign", "type": "x:y", "timestamp": "t", "data": {"a": 1}})
    event = resume.accept(ServerSentEvent(data=envelope))
    assert event is not None and event.data == {"a": 1}
    assert resume.accept(ServerSentEvent(data=envelope)) is not None
    assert resume.last_id == "foreign"


def gap(last: str, resumed: str | None, missed: int | None) -> bytes:
    data = json.dumps({"lastEventId": last, "resumedFrom": resumed, "missed": missed})
    return f"event: gap\ndata: {data}\n\n".encode()


def test_a_gap_goes_to_on_gap_and_the_stream_goes_on() -> None:
    gaps: list[StreamGap] = []
    transport = scripted([7], [stream_of(gap("evt_7_1", "evt_20_1", 12), frame(20), frame(21))], [])
    with LokiClient("http://loki.test", transport=transport) as client:
        with client.events(on_gap=gaps.append) as stream:
            got = [next(stream), next(stream)]
    assert [seq_of(e.id) for e in got] == [20, 21]
    assert gaps == [StreamGap(last_event_id="evt_7_1", resumed_from="evt_20_1", missed=12)]


def test_without_on_gap_a_gap_raises_events_missed() -> None:
    transport = scripted([7], [stream_of(frame(8), gap("evt_8_1", "evt_30_1", 21))], [])
    with LokiClient("http://loki.test", transport=transport) as client:
        stream = client.events()
        assert seq_of(next(stream).id) == 8
        with pytest.raises(EventsMissed) as caught:
            next(stream)
    assert caught.value.gap.missed == 21 and "21 events missed" in str(caught.value)


@pytest.mark.anyio
async def test_a_gap_for_an_unknown_id_restarts_deduplication() -> None:
    # The server's state was wiped: its ids start again below ours.
    gaps: list[StreamGap] = []
    transport = scripted(
        [50], [stream_of(gap("evt_50_1", "evt_1_1", None), frame(1), frame(2))], []
    )
    async with AsyncLokiClient("http://loki.test", transport=transport) as client:
        async with client.events(on_gap=gaps.append) as stream:
            got = [await anext(stream), await anext(stream)]
    assert [seq_of(e.id) for e in got] == [1, 2]
    assert gaps[0].missed is None
