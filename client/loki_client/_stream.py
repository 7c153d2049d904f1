"""The reconnecting event stream behind `LokiClient.events()` / `AsyncLokiClient.events()`.

A stream is one logical subscription that may span many HTTP connections:

- The stream starts when it is entered (`with` / `async with`) or first
  iterated: it asks the server's history for an *anchor* id (see
  `_base.stream_anchor`): the newest event, or with `history=N` the one just
  before the last N matching events.
- Every connection sends `Last-Event-ID`: the last event yielded, else the
  anchor. The server replays every matching event after it that it still
  holds, so the first connection delivers the N historical events plus
  anything published since the start, and a reconnection (even one before
  any event arrived) resumes exactly where the stream was. History is thus
  replayed once, on the first connection, and never again.
- Events are yielded at most once: a `seq` (from `evt_<seq>_<ms>` ids) at or
  below the last one yielded is dropped.
- Between attempts it waits the server's `retry:` (or `reconnect_delay`, when
  given), doubling it after each consecutive failed attempt up to
  `MAX_BACKOFF`. A stream that ends cleanly (server shutdown, or the server
  closing a too-slow reader) is reconnected the same way.
- A `gap` message (the server no longer holds events after the id asked
  for) goes to the `on_gap` callback, or raises `EventsMissed` when there is
  none: events are never lost silently. A gap for an id that is not the
  server's (its state was wiped) also restarts deduplication, since the
  server's sequence numbers started again.
- Failures before the first connection was established, and 4xx answers, are
  raised (there is nothing to resume); `max_retries` bounds the consecutive
  failed reconnection attempts (None: retry forever).
- Stopping the iteration (`close()`, leaving `with`, `break` out of a plain
  `for`, task cancellation) closes the HTTP connection, so the server drops
  the subscriber at once. For the async stream prefer `async with`, since an
  async generator abandoned by `break` is only closed when it is collected.

`_Resume` holds that state and the decisions; the two iterator classes only
move bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any

import anyio
import httpx
import msgspec

from ._base import (
    SSE_MEDIA_TYPE,
    Call,
    Params,
    decode_event_json,
    error_from_response,
    expect_media_type,
    newest_event_anchor,
    seq_of,
    stream_anchor,
    translate_http_error,
)
from ._exceptions import EventsMissed, LokiApiError, LokiDecodeError, LokiError, RateLimited
from ._sse import ServerSentEvent, SSEDecoder
from .models import Event, StreamGap

__all__ = ["EventStream", "AsyncEventStream"]

EVENTS_PATH = "/api/events"
DEFAULT_RETRY = 3.0  # seconds, until the server says otherwise (it sends retry: 3000)
MAX_BACKOFF = 30.0
# The server sends a keep-alive comment every 15 s: a silent minute means a dead link.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
GAP_EVENT = "gap"

OnGap = Callable[[StreamGap], object]
_gap_decoder = msgspec.json.Decoder(StreamGap)


class _Resume:
    """Where a stream is and what its next connection should ask for."""

    def __init__(
        self,
        filter_params: Params,
        history: int,
        reconnect_delay: float | None,
        max_retries: int | None,
        on_gap: OnGap | None = None,
    ) -> None:
        self.filter_params = filter_params
        self.on_gap = on_gap
        self.history = history
        self.reconnect_delay = reconnect_delay
        self.max_retries = max_retries
        self.anchor: str | None = None
        self._anchor_asked = False  # the history query was made (it found nothing to replay)
        self.last_id: str | None = None
        self.last_seq: int | None = None
        self.retry_ms: int | None = None
        self.connections = 0  # connections established so far
        self.failures = 0  # consecutive attempts that did not connect
        self.retry_after: float | None = None  # a 429's Retry-After, used once

    def anchor_call(self) -> Call[str | None] | None:
        """The next request that fetches the anchor, or None once it is known."""
        if self.anchor is not None:
            return None
        if self._anchor_asked:
            return newest_event_anchor()
        return stream_anchor(self.filter_params, self.history)

    def found_anchor(self, anchor: str | None) -> None:
        self._anchor_asked = True
        self.anchor = anchor

    def request(self) -> tuple[Params, dict[str, str]]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        resume_from = self.last_id or self.anchor
        if resume_from is not None:
            headers["Last-Event-ID"] = resume_from
        return dict(self.filter_params), headers

    def opened(self) -> None:
        self.connections += 1
        self.failures = 0

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to yield for `sse`, or None for a duplicate (or a handled gap)."""
        if sse.event == GAP_EVENT:
            self.gap(sse)
            return None
        event = decode_event_json(sse.data)
        seq = seq_of(event.id)
        if seq is not None:
            if self.last_seq is not None and seq <= self.last_seq:
                return None
            self.last_seq = seq
        self.last_id = event.id
        return event

    def gap(self, sse: ServerSentEvent) -> None:
        try:
            gap = _gap_decoder.decode(sse.data)
        except msgspec.DecodeError as exc:
            raise LokiDecodeError(f"undecodable gap message: {exc}") from exc
        if gap.missed is None:
            self.last_seq = None  # not the server's id: its sequence is not ours to compare
        if self.on_gap is None:
            raise EventsMissed(gap)
        self.on_gap(gap)

    def may_retry(self, error: LokiError) -> bool:
        """Count a failed attempt; False when `error` should be raised instead."""
        if self.connections == 0:
            return False
        if isinstance(error, LokiApiError) and error.status not in RETRYABLE_STATUSES:
            return False
        self.failures += 1
        if isinstance(error, RateLimited):
            self.retry_after = error.retry_after
        return self.max_retries is None or self.failures <= self.max_retries

    def delay(self) -> float:
        """Seconds to wait before the next attempt."""
        if self.retry_after is not None:
            wait, self.retry_after = self.retry_after, None
            return wait
        if self.reconnect_delay is not None:
            base = self.reconnect_delay
        elif self.retry_ms is not None:
            base = self.retry_ms / 1000
        else:
            base = DEFAULT_RETRY
        if self.failures <= 1:
            return float(base)
        return float(max(base, min(base * 2 ** (self.failures - 1), MAX_BACKOFF)))


class _StreamBase:
    def __init__(
        self,
        base_url: str,
        filter_params: Params,
        history: int,
        reconnect_delay: float | None,
        max_retries: int | None,
        on_gap: OnGap | None = None,
    ) -> None:
        self._url = base_url
        self._resume = _Resume(filter_params, history, reconnect_delay, max_retries, on_gap)

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event yielded (what a reconnection resumes after)."""
        return self._resume.last_id

    @property
    def connections(self) -> int:
        """How many HTTP connections this stream has opened (1 + reconnections)."""
        return self._resume.connections


class EventStream(_StreamBase):
    """An iterator of typed `Event`s that reconnects by itself. Also a context manager."""

    def __init__(
        self,
        http: httpx.Client,
        send: Callable[[Call[Any]], Any],
        base_url: str,
        filter_params: Params,
        history: int,
        reconnect_delay: float | None,
        max_retries: int | None,
        on_gap: OnGap | None = None,
    ) -> None:
        super().__init__(base_url, filter_params, history, reconnect_delay, max_retries, on_gap)
        self._send = send
        self._events = _run(http, send, base_url, self._resume)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Stop the stream and close its connection."""
        self._events.close()

    def __enter__(self) -> EventStream:
        """Start the stream now: events published from here on will be yielded."""
        while (call := self._resume.anchor_call()) is not None:
            self._resume.found_anchor(self._send(call))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncEventStream(_StreamBase):
    """An async iterator of typed `Event`s that reconnects by itself. Also an async
    context manager, which is the way to be sure the connection closes on `break`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        send: Callable[[Call[Any]], Coroutine[Any, Any, Any]],
        base_url: str,
        filter_params: Params,
        history: int,
        reconnect_delay: float | None,
        max_retries: int | None,
        on_gap: OnGap | None = None,
    ) -> None:
        super().__init__(base_url, filter_params, history, reconnect_delay, max_retries, on_gap)
        self._send = send
        self._events = _arun(http, send, base_url, self._resume)

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Stop the stream and close its connection."""
        await self._events.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        """Start the stream now: events published from here on will be yielded."""
        while (call := self._resume.anchor_call()) is not None:
            self._resume.found_anchor(await self._send(call))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _run(
    http: httpx.Client, send: Callable[[Call[Any]], Any], url: str, resume: _Resume
) -> Generator[Event, None, None]:
    # A plain function, not a method: a generator holding its stream would keep
    # the pair alive in a cycle, and `break` out of a plain `for` would not close it.
    while (call := resume.anchor_call()) is not None:
        resume.found_anchor(send(call))
    while True:
        params, headers = resume.request()
        try:
            with http.stream(
                "GET", EVENTS_PATH, params=params, headers=headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    response.read()
                    error = error_from_response(response)
                    if not resume.may_retry(error):
                        raise error
                else:
                    expect_media_type(response, SSE_MEDIA_TYPE)  # not a proxy's page
                    resume.opened()
                    decoder = SSEDecoder()
                    for chunk in response.iter_bytes():
                        sse_events = decoder.feed(chunk)
                        if decoder.retry is not None:
                            resume.retry_ms = decoder.retry
                        for sse in sse_events:
                            event = resume.accept(sse)
                            if event is not None:
                                yield event
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = translate_http_error(exc, url)
            if not resume.may_retry(error):
                raise error from exc
        time.sleep(resume.delay())


async def _arun(
    http: httpx.AsyncClient,
    send: Callable[[Call[Any]], Coroutine[Any, Any, Any]],
    url: str,
    resume: _Resume,
) -> AsyncGenerator[Event, None]:
    while (call := resume.anchor_call()) is not None:
        resume.found_anchor(await send(call))
    while True:
        params, headers = resume.request()
        try:
            async with http.stream(
                "GET", EVENTS_PATH, params=params, headers=headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    error = error_from_response(response)
                    if not resume.may_retry(error):
                        raise error
                else:
                    expect_media_type(response, SSE_MEDIA_TYPE)  # not a proxy's page
                    resume.opened()
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        sse_events = decoder.feed(chunk)
                        if decoder.retry is not None:
                            resume.retry_ms = decoder.retry
                        for sse in sse_events:
                            event = resume.accept(sse)
                            if event is not None:
                                yield event
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = translate_http_error(exc, url)
            if not resume.may_retry(error):
                raise error from exc
        await anyio.sleep(resume.delay())
