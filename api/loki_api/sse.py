"""The Server-Sent Events response for one subscriber.

One task per stream, and it is idle: after the opening (comment, `retry:`,
replayed history) the request's own task just waits for the client to go away.
Live frames are written by the bus's once-per-loop-turn tick, right there,
without waking a task per stream: `write_batch` for a live subscriber (its
group's frames of this turn, joined and framed once for the whole group) and
`write_pending` for one catching up. That is what keeps fan-out to a thousand
streams cheap, and what lets an idle stream cost little more than its socket.
Under uvicorn's httptools protocol, batches skip the ASGI `send` and go to the
transport directly (see `direct_write.py`).

A write only has to wait when the client's socket is full (uvicorn's flow
control). Then a drain task takes over: the subscriber is marked blocked
(frames keep queueing on its own list, up to the bus's bound), and the drain
task writes what piled up before handing the stream back to the tick.

Ending: the client disconnects (`receive()` says so), or the server closes the
subscriber at shutdown: the final empty chunk completes the response, which
also wakes the pending `receive()`. A stream cut off as too slow (over the
bus's frame bound, or its socket full for longer than `send_deadline`) does
not wait for its socket: it hangs up at once (final comment, connection
closed; `UvicornCycle.hang_up`), so the client's reconnect starts now.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, cast

from starlette.types import Message, Receive, Scope, Send

from .bus import PING_FRAME, Batch, EventBus, StoredEvent, Subscriber
from .direct_write import DirectChunkWriter, UvicornCycle, chunk, unwrapped

RETRY_MS = 3000
# Seconds a write may wait for a full socket before the stream is cut off.
SEND_DEADLINE = 30.0
# Scope key under which the app passes the server's own `send` (before any
# middleware wrapped it), so a stream can still reach its connection.
RAW_SEND = "loki.raw_send"
TOO_SLOW = b": too slow, closing; reconnect with Last-Event-ID\n\n"
# Sent to wait for a full socket to drain (uvicorn's send waits; an empty chunk writes nothing).
EMPTY_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": True}

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], blocked_on: Any) -> Generator[Any, Any, Any]:
    """Go on with a coroutine that was stepped by hand and suspended on `blocked_on`.

    The enclosing task waits for the future the coroutine was waiting for, then
    drives the coroutine to its end.
    """
    try:
        yield blocked_on
    except BaseException:
        coro.close()
        raise
    return (yield from coro)  # type: ignore[misc]


class SubscriberStream:
    """ASGI app streaming one subscriber's events; `replay` is sent first."""

    def __init__(
        self,
        bus: EventBus,
        subscriber: Subscriber,
        replay: list[StoredEvent],
        *,
        announce_replay: bool,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        gap: bytes | None = None,
        send_deadline: float = SEND_DEADLINE,
    ) -> None:
        self.bus = bus
        self.subscriber = subscriber
        self.replay = replay
        self.announce_replay = announce_replay
        self.headers = SSE_HEADERS + (extra_headers or [])
        self.gap = gap
        self.send_deadline = send_deadline
        self._send: Send | None = None
        self._direct: DirectChunkWriter | None = None
        self._cycle: UvicornCycle | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._finished = False
        subscriber.hangup = self._hang_up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self.subscriber
        self._send = send
        self._cycle = UvicornCycle.of(scope.get(RAW_SEND, send))
        try:
            opening = [b": connected to loki-api\nretry: %d\n\n" % RETRY_MS]
            if self.gap is not None:
                opening.append(self.gap)
            opening.extend(stored.frame for stored in self.replay)
            if self.announce_replay:
                opening.append(b": replayed %d historical events\n\n" % len(self.replay))
            self.bus.delivered += len(self.replay)
            self.replay = []
            try:
                async with asyncio.timeout(self.send_deadline):
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": self.headers}
                    )
                    # Wrappers that only watch the start (the access log) are done with it.
                    send = self._send = unwrapped(send)
                    body = b"".join(opening)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except TimeoutError:
                self.bus.cut_off(subscriber)
            if not self._finished:
                self._direct = DirectChunkWriter.of(send)
                # Live frames published meanwhile wait in `pending`; from now on the tick writes.
                await self._drain()
            while not self._finished:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        finally:
            self._finished = True
            self.bus.unsubscribe(subscriber)
            subscriber.closed = True
            subscriber.writer = None
            subscriber.hangup = None
            self._stop_draining()

    def _stop_draining(self) -> None:
        task = self._drain_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _hang_up(self) -> None:
        """Cut off (the bus has closed the subscriber): end the response and the connection now.

        Without uvicorn's cycle (another server) the final comment goes out
        through `send` once the socket drains, as at shutdown.
        """
        cycle = self._cycle
        if cycle is None or self._finished:
            return
        self._finished = True
        self._stop_draining()
        cycle.hang_up(TOO_SLOW)

    def _take_message(self) -> Message | None:
        """Everything pending as one body message, or None when there is nothing to say."""
        subscriber = self.subscriber
        self.bus.flush()  # a drain task may run before this turn's tick: disk first
        frames = subscriber.take()
        final = subscriber.closed
        if not frames and not final:
            return None
        if frames:
            self.bus.delivered += len(frames) - frames.count(PING_FRAME)
        if subscriber.overflowed:
            frames.append(TOO_SLOW)
        if final:
            self._finished = True
        return {"type": "http.response.body", "body": b"".join(frames), "more_body": not final}

    def write_pending(self) -> bool:
        """Tick: write what is pending (or the end). True if the socket took all of it."""
        if self.subscriber.blocked or self._finished or self._send is None:
            return False
        message = self._take_message()
        if message is None:
            return True
        return self._send_now(message)

    def write_batch(self, batch: Batch) -> bool:
        """Tick, for a live subscriber: write the batch. False if the socket is now full."""
        direct = self._direct
        if direct is not None:
            data = batch.chunk
            if data is None:
                data = batch.chunk = chunk(batch.body)
            if direct.write(data):
                return True
            assert self._send is not None
            self._wait_in_task(self._send(EMPTY_BODY))  # returns once the socket drained
            return False
        message = batch.message
        if message is None:
            message = batch.message = {
                "type": "http.response.body",
                "body": batch.body,
                "more_body": True,
            }
        return self._send_now(message)

    def _send_now(self, message: Message) -> bool:
        """Send without a task switch; if the socket is full, finish in a drain task."""
        assert self._send is not None
        cycle = self._cycle
        if cycle is not None and cycle.gone():
            return True  # nobody to write to; receive() now ends the stream
        # uvicorn's send is a coroutine function: step it by hand (see `_resume`).
        coro = cast(Coroutine[Any, Any, None], self._send(message))
        try:
            blocked_on = coro.send(None)
        except StopIteration:
            return True  # written (the usual case: the socket had room)
        self._wait_in_task(_resume(coro, blocked_on))
        return False

    def _wait_in_task(self, unfinished: Any) -> None:
        self.subscriber.blocked = True
        self._drain_task = asyncio.ensure_future(self._drain(unfinished))

    async def _drain(self, unfinished: Any = None) -> None:
        """Write until nothing is pending, then hand the stream (back) to the tick.

        A socket that stays full for `send_deadline` cuts the stream off.
        """
        assert self._send is not None
        subscriber = self.subscriber
        try:
            if unfinished is not None:
                async with asyncio.timeout(self.send_deadline):
                    await unfinished
            while not self._finished:
                message = self._take_message()
                if message is None:
                    break
                async with asyncio.timeout(self.send_deadline):
                    await self._send(message)
        except TimeoutError:
            self.bus.cut_off(subscriber)
            return
        subscriber.writer = self
        if not self._finished:
            self.bus.ready(subscriber)
