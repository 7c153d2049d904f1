"""`/api/events` (the SSE stream), `/api/events/history` and `/api/events/stats`."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..bus import EventBus
from ..errors import BadRequest
from ..eventlog import seq_of
from ..filters import EventFilter, FilterError
from ..models import EventStats
from ..params import MAX_LIMIT, json_response, query_int
from ..responses import JSON_MEDIA_TYPE
from ..runtime import Runtime
from ..sse import EventStream


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def parse_filter(request: Request) -> EventFilter:
    params = request.query_params
    try:
        return EventFilter.parse(params.get("sessionId"), params.get("types"),
                                 params.get("minLevel"))
    except FilterError as exc:
        raise BadRequest(str(exc)) from None


# ASCII digits of a sane length, so `seq_of` never meets "²" or a 5000-digit number.
EVENT_ID = re.compile(r"evt_[0-9]{1,19}_[0-9]{1,19}")


def parse_event_id(raw: str | None, name: str) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if EVENT_ID.fullmatch(raw) is None or seq_of(raw) is None:
        raise BadRequest(f"{name} must be an event id like evt_42_1732341234567, not {raw!r}")
    return raw


async def stream_events(request: Request) -> EventStream:
    bus: EventBus = runtime_of(request).bus
    event_filter = parse_filter(request)
    history = query_int(request, "history", default=0, maximum=bus.history_size) or 0
    last_id = parse_event_id(
        request.headers.get("last-event-id") or request.query_params.get("lastEventId"),
        "Last-Event-ID",
    )
    subscriber, replay = bus.subscribe(event_filter, after_id=last_id, last=history)
    return EventStream(bus, subscriber, replay, announce_replay=last_id is None and history > 0)


async def event_history(request: Request) -> Response:
    bus = runtime_of(request).bus
    event_filter = parse_filter(request)
    limit = query_int(request, "limit", default=100, maximum=MAX_LIMIT)
    after = parse_event_id(request.query_params.get("after"), "after")
    events = bus.history(event_filter, limit=limit, after_id=after)
    # The stored envelopes are already JSON: splice them in instead of re-encoding.
    body = b'{"events":[%s],"count":%d}' % (b",".join(e.json for e in events), len(events))
    return Response(body, media_type=JSON_MEDIA_TYPE)


async def event_stats(request: Request) -> Response:
    bus = runtime_of(request).bus
    return json_response(EventStats(
        subscribers=bus.subscriber_count, history_size=bus.history_size,
        published=bus.published, delivered=bus.delivered, dropped=bus.dropped,
        by_type=dict(bus.by_type),
    ))


routes = [
    Route("/api/events", stream_events, methods=["GET"]),
    Route("/api/events/history", event_history, methods=["GET"]),
    Route("/api/events/stats", event_stats, methods=["GET"]),
]
