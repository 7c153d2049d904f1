"""The Server-Sent Events response for one subscriber.

Two tasks share one task group: the writer drains the subscriber's pending
frames into the socket, and the disconnect watcher waits for the client to go
away. Whichever ends first ends the stream, and the subscriber leaves the bus
at once.

The writer sends everything pending in one `send`: under a burst a stream
writes many frames per syscall instead of one each, which is where fan-out
throughput comes from. Keep-alive comments are queued by the runtime's single
ticker (`EventBus.ping_all`), so an idle stream owns no timer.
"""

from __future__ import annotations

import anyio
from starlette.types import Receive, Scope, Send

from .bus import PING_FRAME, EventBus, StoredEvent, Subscriber

RETRY_MS = 3000

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]


class EventStream:
    """ASGI app streaming one subscriber's events; `replay` is sent first."""

    def __init__(
        self,
        bus: EventBus,
        subscriber: Subscriber,
        replay: list[StoredEvent],
        *,
        announce_replay: bool,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.bus = bus
        self.subscriber = subscriber
        self.replay = replay
        self.announce_replay = announce_replay
        self.headers = SSE_HEADERS + (extra_headers or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self.subscriber
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            opening = [b": connected to loki-api\nretry: %d\n\n" % RETRY_MS]
            opening.extend(stored.frame for stored in self.replay)
            if self.announce_replay:
                opening.append(b": replayed %d historical events\n\n" % len(self.replay))
            await send({"type": "http.response.body", "body": b"".join(opening),
                        "more_body": True})
            self.bus.delivered += len(self.replay)
            self.replay = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive)
                await self._write(send)
                tg.cancel_scope.cancel()
        finally:
            self.bus.unsubscribe(subscriber)
            subscriber.closed = True

    async def _write(self, send: Send) -> None:
        subscriber = self.subscriber
        while True:
            await subscriber.wait()
            frames = subscriber.take()
            if frames:
                self.bus.delivered += len(frames) - frames.count(PING_FRAME)
                if subscriber.overflowed:
                    frames.append(b": too slow, closing; reconnect with Last-Event-ID\n\n")
                await send({"type": "http.response.body", "body": b"".join(frames),
                            "more_body": True})
            if subscriber.closed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.bus.unsubscribe(self.subscriber)
                self.subscriber.close()
                return
