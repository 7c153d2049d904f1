"""One access-log line and one HTTP count per request, and the request id (SPEC §13).

`AccessMiddleware` wraps the whole app, the event stream included. It takes
the client's `X-Request-ID` when it is sane (else makes one), echoes it on the
response, and when the request is over logs one line on `loki_api.access`
(method, route template, status, duration, peer, request id) and counts it in
the runtime's `HttpTally` for `/metrics`.

The event stream's line is written when the stream ends (its duration is how
long it was open). Only the response start passes through this middleware's
`send` wrapper: the stream's live frames go straight to the socket
(`direct_write.py` unwraps `__wrapped__`), so there is no per-event work here.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logformat import request_id_var
from .tally import HttpTally

log = logging.getLogger("loki_api.access")

# The route label of a request no route matched (never the raw path: bounded cardinality).
UNMATCHED_ROUTE = "<unmatched>"
# Methods counted by name; anything else a client invents is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# A request id from the client is kept only if it is short and plain (it goes into logs).
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")


def request_id_of(scope: Scope) -> bytes:
    """The client's `X-Request-ID` if it is sane, else a fresh random one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            if SANE_REQUEST_ID.fullmatch(value):
                return bytes(value)
            break
    return secrets.token_hex(16).encode()


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request (`/api/sessions/{session_id}`)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


def peer_of(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def path_of(scope: Scope) -> str:
    """The path as sent, still percent-encoded: a `%0A` cannot break the log line."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.decode("ascii", "backslashreplace")
    return str(scope.get("path", "")).encode("unicode_escape").decode("ascii")


class ResponseStart:
    """A `send` that notes the response status and adds the request id header.

    `__wrapped__` is the `send` it wraps: a writer that only needs to bypass
    the ASGI layers for body chunks (`direct_write.py`) may unwrap it, since
    this wrapper's work is done once the response has started.
    """

    __slots__ = ("__wrapped__", "status", "request_id")

    def __init__(self, send: Send, request_id: bytes) -> None:
        self.__wrapped__ = send
        self.request_id = request_id
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if self.status is None and message["type"] == "http.response.start":
            self.status = int(message["status"])
            message["headers"] = [*message.get("headers", ()), (b"x-request-id", self.request_id)]
        await self.__wrapped__(message)


class AccessMiddleware:
    def __init__(self, app: ASGIApp, tally: HttpTally) -> None:
        self.app = app
        self.tally = tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        token = request_id_var.set(request_id.decode("latin-1"))
        response = ResponseStart(send, request_id)
        try:
            await self.app(scope, receive, response)
        finally:
            request_id_var.reset(token)
            # No response at all: the app failed before answering (a 500 to the client).
            self.done(scope, response.status or 500, time.perf_counter() - started, request_id)

    def done(self, scope: Scope, status: int, seconds: float, request_id: bytes) -> None:
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        route = route_template(scope)
        self.tally.record(route, method, status, seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        peer = peer_of(scope)
        rid = request_id.decode("latin-1")
        path = path_of(scope)
        log.info(
            '%s "%s %s" %d %.1fms route=%s rid=%s',
            peer,
            scope["method"],
            path,
            status,
            seconds * 1000,
            route,
            rid,
            extra={
                "fields": {
                    "method": scope["method"],
                    "path": path,
                    "route": route,
                    "status": status,
                    "durationMs": round(seconds * 1000, 3),
                    "peer": peer,
                    "requestId": rid,
                }
            },
        )
