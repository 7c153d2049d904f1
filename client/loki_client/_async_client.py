"""`AsyncLokiClient`: the asynchronous client, a mirror image of `LokiClient`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from . import _base
from ._base import DEFAULT_TIMEOUT, Call
from ._stream import AsyncEventStream
from .models import (
    DeleteResponse,
    Event,
    EventStats,
    Health,
    SessionActionResponse,
    SessionDetail,
    SessionList,
    SessionTaskList,
    Status,
    StreamGap,
    Task,
    TaskList,
    TaskQueue,
)

__all__ = ["AsyncLokiClient"]

T = TypeVar("T")


class AsyncLokiClient:
    """An asyncio/trio client for the Loki API, with the methods of `LokiClient`, awaited.

    `base_url` defaults to `LOKI_API_URL`, then `http://127.0.0.1:8420`; `token`
    to `LOKI_API_TOKEN` (sent as `Authorization: Bearer`; loopback needs none).
    Results are the msgspec Structs of `loki_client.models`; error answers raise
    `LokiApiError` subclasses and network failures `LokiConnectionError`.

        async with AsyncLokiClient() as client:
            print((await client.health()).status)
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = _base.resolve_base_url(base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_base.default_headers(_base.resolve_token(token)),
            timeout=timeout,
            transport=transport,
        )

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _base.translate_http_error(exc, self.base_url) from exc
        return call.result(response)

    # ------------------------------------------------------------------ lifetime

    async def aclose(self) -> None:
        """Close the connection pool. Streams opened from this client stop working."""
        await self._http.aclose()

    async def close(self) -> None:
        """Same as `aclose()`."""
        await self.aclose()

    async def __aenter__(self) -> AsyncLokiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------ health & status

    async def health(self) -> Health:
        """`GET /health`. An unhealthy server's answer is returned too (status 503)."""
        return await self._send(_base.health())

    async def status(self) -> Status:
        """`GET /api/status`: version, uptime, providers, session and event counts."""
        return await self._send(_base.status())

    # ------------------------------------------------------------------ sessions

    async def start_session(
        self,
        prd_path: str | os.PathLike[str] | None = None,
        provider: str = "claude",
        *,
        dry_run: bool | None = None,
        verbose: bool | None = None,
        timeout: float | None = None,
    ) -> SessionActionResponse:
        """Start a session. `dry_run` and `verbose` are passed to the CLI; `timeout`
        (seconds, > 0) stops the session if it still runs then. Unset options are
        left to the server's defaults.

        Raises `SessionAlreadyRunning` at the server's session limit and
        `ValidationError` for a bad provider, option or PRD path.
        """
        return await self._send(_base.start_session(prd_path, provider, dry_run, verbose, timeout))

    async def list_sessions(
        self, status: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> SessionList:
        """Sessions, optionally only those with `status`, a page at a time."""
        return await self._send(_base.list_sessions(status, limit, offset))

    async def get_session(self, session_id: str) -> SessionDetail:
        """One session with its task and agent counts; `SessionNotFound` if unknown."""
        return await self._send(_base.get_session(session_id))

    async def stop_session(self, session_id: str) -> SessionActionResponse:
        """Ask a running or paused session to stop (answers at once, status `stopping`)."""
        return await self._send(_base.session_action(session_id, "stop"))

    async def pause_session(self, session_id: str) -> SessionActionResponse:
        """Pause a running session; `Conflict` if it is not running."""
        return await self._send(_base.session_action(session_id, "pause"))

    async def resume_session(self, session_id: str) -> SessionActionResponse:
        """Resume a paused session; `Conflict` if it is not paused."""
        return await self._send(_base.session_action(session_id, "resume"))

    async def inject_input(
        self, session_id: str, text: str, context: str | None = None
    ) -> SessionActionResponse:
        """Send human input to a session."""
        return await self._send(_base.inject_input(session_id, text, context))

    async def delete_session(self, session_id: str) -> DeleteResponse:
        """Remove a finished session's record and state; `Conflict` while it runs."""
        return await self._send(_base.delete_session(session_id))

    # --------------------------------------------------------------------- tasks

    async def get_tasks(
        self,
        session_id: str,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> SessionTaskList:
        """One session's tasks, with pagination and a summary of counts."""
        return await self._send(_base.get_tasks(session_id, status, limit, offset))

    async def get_task(self, session_id: str, task_id: str) -> Task:
        """One task of a session; `NotFound` if unknown."""
        return await self._send(_base.get_task(session_id, task_id))

    async def list_tasks(
        self, status: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> TaskList:
        """Tasks of all sessions, newest first."""
        return await self._send(_base.list_tasks(status, limit, offset))

    async def active_tasks(self) -> TaskQueue:
        """Running tasks of running sessions."""
        return await self._send(_base.active_tasks())

    async def queued_tasks(self) -> TaskQueue:
        """Pending and queued tasks, highest priority first."""
        return await self._send(_base.queued_tasks())

    # -------------------------------------------------------------------- events

    async def event_history(
        self,
        session_id: str | None = None,
        types: str | Sequence[str] | None = None,
        min_level: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Event]:
        """Events the server still holds, oldest first, with typed `data`.

        `types` is a list (or comma list) of exact type names; `min_level` applies
        to `log:*` events; `after` is an event id; `limit` defaults to 100 on the
        server.
        """
        return await self._send(_base.event_history(session_id, types, min_level, limit, after))

    async def event_stats(self) -> EventStats:
        """Subscriber count and publish/delivery counters of the event bus."""
        return await self._send(_base.event_stats())

    def events(
        self,
        session_id: str | None = None,
        types: str | Sequence[str] | None = None,
        min_level: str | None = None,
        history: int = 0,
        *,
        reconnect_delay: float | None = None,
        max_retries: int | None = None,
        on_gap: Callable[[StreamGap], object] | None = None,
    ) -> AsyncEventStream:
        """Live events as typed `Event`s, reconnecting by itself with `Last-Event-ID`.

        `history=N` first replays the last N matching events. No event is yielded
        twice and none the server still holds is skipped across reconnections.
        `reconnect_delay` overrides the server's `retry:` hint; `max_retries`
        bounds consecutive failed reconnection attempts (default: no bound).
        Events the server no longer holds when the stream resumes (a long
        disconnect, a server whose state was wiped) are a gap: `on_gap` is
        called with the server's `StreamGap` and the stream goes on; without
        it the iterator raises `EventsMissed`.
        Nothing is sent until iteration starts. Use as `async with
        client.events() as stream: async for event in stream:` so the connection
        closes as soon as you stop (`async for event in client.events():` works too,
        but after a `break` the connection closes only once the stream is collected).
        """
        return AsyncEventStream(
            self._http,
            self._send,
            self.base_url,
            _base.event_filter_params(session_id, types, min_level),
            history,
            reconnect_delay,
            max_retries,
            on_gap,
        )
