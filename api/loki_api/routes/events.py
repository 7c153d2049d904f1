"""`/api/events` (the SSE stream), `/api/events/history` and `/api/events/stats`."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..bus import EVENT_ID, EventBus, gap_frame
from ..errors import BadRequest, HttpError, error_response
from ..eventlog import seq_of
from ..filters import EventFilter, FilterError
from ..params import MAX_LIMIT, json_response, query_int
from ..responses import JSON_MEDIA_TYPE
from ..runtime import Runtime
from ..sse import SSE_HEADERS, SubscriberStream

# How much of an unusable Last-Event-ID header the `gap` message echoes.
MAX_ECHOED_ID = 200


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def parse_filter(request: Request) -> EventFilter:
    params = request.query_params
    try:
        return EventFilter.parse(
            params.get("sessionId"), params.get("types"), params.get("minLevel")
        )
    except FilterError as exc:
        raise BadRequest(str(exc)) from None


def parse_event_id(raw: str | None, name: str) -> str | None:
    """A well-formed event id, None when absent; anything else (even "") is a 400."""
    if raw is None:
        return None
    raw = raw.strip()
    if EVENT_ID.fullmatch(raw) is None or seq_of(raw) is None:
        raise BadRequest(f"{name} must be an event id like evt_42_1732341234567, not {raw!r}")
    return raw


def parse_stream_request(request: Request) -> tuple[EventFilter, int, str | None]:
    """(filter, history, Last-Event-ID) of a stream request; BadRequest when invalid.

    A `Last-Event-ID` header is taken as it is, whatever it holds: a browser
    resends what it last saw (perhaps another server's id) and a 400 would end
    its reconnect loop for good, so an id that is not ours becomes a gap (see
    `EventBus.resume_gap`). The `lastEventId` query parameter, typed by a
    person, must be a well-formed id.
    """
    bus: EventBus = runtime_of(request).bus
    event_filter = parse_filter(request)
    history = query_int(request, "history", default=0, maximum=bus.history_size) or 0
    header = (request.headers.get("last-event-id") or "").strip()
    if header:
        return event_filter, history, header[:MAX_ECHOED_ID]
    last_id = parse_event_id(request.query_params.get("lastEventId"), "lastEventId")
    return event_filter, history, last_id


async def stream_events(request: Request) -> SubscriberStream:
    """The stream for this request (also served, middleware-free, by `EventStreamApp`)."""
    runtime = runtime_of(request)
    bus: EventBus = runtime.bus
    event_filter, history, last_id = parse_stream_request(request)
    subscriber, replay, gap = await bus.open_subscription(
        event_filter, after_id=last_id, last=history
    )
    return SubscriberStream(
        bus,
        subscriber,
        replay,
        announce_replay=gap is None and last_id is None and history > 0,
        gap=gap_frame(gap) if gap is not None else None,
        send_deadline=runtime.settings.send_deadline,
    )


class EventStreamApp:
    """`GET /api/events` as a bare ASGI app, outside Starlette's middleware stack.

    Every body message of a stream would otherwise pass through half a dozen
    send wrappers (error, CORS, exception middleware, routing), and every open
    stream would keep their frames alive. This app does what those layers would
    have done for this one route: CORS headers for allowed origins, and errors
    as JSON. Authentication and the Host guard wrap it (see `app.py`).
    """

    def __init__(self, cors: CORSMiddleware | None) -> None:
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        headers = self.cors_headers(scope)
        try:
            if scope["method"] == "HEAD":
                # What a GET would answer, without subscribing or streaming.
                parse_stream_request(request)
                head = Response(status_code=200)
                head.raw_headers = [*SSE_HEADERS, *headers]
                await head(scope, receive, send)
                return
            stream = await stream_events(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.message, exc.code, exc.details, exc.headers)
            response.raw_headers.extend(headers)
            await response(scope, receive, send)
            return
        stream.headers.extend(headers)
        await stream(scope, receive, send)

    def cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The CORS headers for this request's `Origin` (none when it is not allowed)."""
        origin = Headers(scope=scope).get("origin")
        if self.cors is None or origin is None or not self.cors.is_allowed_origin(origin):
            return []
        headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        headers.extend(
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in self.cors.simple_headers.items()
        )
        return headers


async def event_history(request: Request) -> Response:
    bus = runtime_of(request).bus
    event_filter = parse_filter(request)
    limit = query_int(request, "limit", default=100, maximum=MAX_LIMIT) or 0
    after = parse_event_id(request.query_params.get("after"), "after")
    events = await bus.page(event_filter, limit=limit, after_id=after)
    # The stored envelopes are already JSON: splice them in instead of re-encoding.
    body = b'{"events":[%s],"count":%d}' % (b",".join(e.json for e in events), len(events))
    return Response(body, media_type=JSON_MEDIA_TYPE)


async def event_stats(request: Request) -> Response:
    return json_response(await runtime_of(request).bus.stats())


routes = [
    Route("/api/events", stream_events, methods=["GET"]),
    Route("/api/events/history", event_history, methods=["GET"]),
    Route("/api/events/stats", event_stats, methods=["GET"]),
]
