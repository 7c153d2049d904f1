"""What `LokiClient` and `AsyncLokiClient` share: building requests, decoding answers.

Each public method is a `Call` built here (method, path, query, body, and how
to decode the answer); the sync and async clients only differ in how they send
it. Answers are decoded straight into the Structs of `loki_client.models`; error
answers become `LokiApiError` subclasses, and httpx's exceptions are translated
by `translate_http_error`, the SDK's one boundary with httpx.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote

import httpx
import msgspec

from ._exceptions import LokiConnectionError, LokiDecodeError, LokiError, api_error
from .models import (
    ApiError,
    DeleteResponse,
    Event,
    EventStats,
    Health,
    RawEvent,
    SessionActionResponse,
    SessionDetail,
    SessionList,
    SessionTaskList,
    Status,
    Task,
    TaskDetail,
    TaskList,
    TaskQueue,
    decode_event,
)

DEFAULT_URL = "http://127.0.0.1:8420"
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "loki-client (python)"

T = TypeVar("T")

Params = dict[str, str | int]


def resolve_base_url(base_url: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The argument, else `LOKI_API_URL`, else the default; without a trailing slash."""
    return (base_url or env.get("LOKI_API_URL") or DEFAULT_URL).rstrip("/")


def resolve_token(token: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The argument, else `LOKI_API_TOKEN`, else None (loopback needs no token)."""
    return token or env.get("LOKI_API_TOKEN") or None


def seq_of(event_id: str) -> int | None:
    """The sequence number inside `evt_<seq>_<ms>`, or None for any other id."""
    parts = event_id.split("_")
    if len(parts) != 3 or parts[0] != "evt" or not parts[1].isdigit():
        return None
    return int(parts[1])


def default_headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# ------------------------------------------------------------------------ decoding


@cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode_json(content: bytes, type_: type[T]) -> T:
    """Decode an answer body into `type_`; a mismatch is a `LokiDecodeError`."""
    try:
        result: T = _decoder(cast(Hashable, type_)).decode(content)
    except msgspec.DecodeError as exc:
        raise LokiDecodeError(f"unexpected answer for {type_.__name__}: {exc}") from exc
    return result


class _RawEventHistory(msgspec.Struct, kw_only=True):
    """`/api/events/history` with each event's data left raw until its type is known."""

    events: list[RawEvent]
    count: int


def decode_event_json(content: bytes | str) -> Event:
    """One SSE `data` payload (an envelope) into an `Event` with typed data."""
    try:
        return decode_event(_decoder(RawEvent).decode(content))
    except msgspec.DecodeError as exc:
        raise LokiDecodeError(f"undecodable event: {exc}") from exc


def _events(content: bytes) -> list[Event]:
    raw = decode_json(content, _RawEventHistory)
    try:
        return [decode_event(event) for event in raw.events]
    except msgspec.DecodeError as exc:
        raise LokiDecodeError(f"undecodable event in history: {exc}") from exc


def _task(content: bytes) -> Task:
    return decode_json(content, TaskDetail).task


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> LokiError:
    """The `LokiApiError` for a 4xx/5xx answer, from its `{"error", "code", "details"}` body.

    A body that is not that shape (a proxy's HTML page) still gives the right
    class, chosen by status, with the start of the body as the message.
    """
    status = response.status_code
    try:
        body = _decoder(ApiError).decode(response.content)
    except msgspec.DecodeError:
        text = response.text.strip()[:200] or response.reason_phrase
        return api_error(status, f"HTTP {status}: {text}", retry_after=_retry_after(response))
    return api_error(status, body.error, body.code, body.details, _retry_after(response))


JSON_MEDIA_TYPE = "application/json"
SSE_MEDIA_TYPE = "text/event-stream"


def expect_media_type(response: httpx.Response, expected: str) -> None:
    """A success answer of another type (a proxy's or portal's HTML page) is a
    `LokiDecodeError` naming what came instead; it is never retried."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != expected:
        request = response.request
        raise LokiDecodeError(
            f"{request.method} {request.url} answered {response.status_code} with "
            f"{media_type or 'no content type'}, not {expected}: is this the Loki API "
            "(or a proxy in front of it)?"
        )


def translate_http_error(exc: httpx.HTTPError | httpx.InvalidURL, url: str) -> LokiError:
    """The SDK's error for an httpx exception (raise it `from exc`)."""
    if isinstance(exc, httpx.TransportError):
        reason = str(exc) or type(exc).__name__
        return LokiConnectionError(f"cannot talk to the Loki API at {url}: {reason}")
    if isinstance(exc, httpx.DecodingError):
        return LokiDecodeError(f"undecodable answer from {url}: {exc}")
    return LokiError(f"request to {url} failed: {exc}")


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    decode: Callable[[bytes], T]
    params: Params = field(default_factory=dict)
    json: Any = None
    # Statuses whose body is the result; any other is an error answer.
    ok: tuple[int, ...] = (200, 201)

    def result(self, response: httpx.Response) -> T:
        if response.status_code in self.ok:
            expect_media_type(response, JSON_MEDIA_TYPE)
            return self.decode(response.content)
        raise error_from_response(response)


def _typed(type_: type[T]) -> Callable[[bytes], T]:
    return lambda content: decode_json(content, type_)


def _params(**values: Any) -> Params:
    """Query parameters with the unset ones left out; lists become comma lists."""
    params: Params = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            value = ",".join(value)
        params[name] = value if isinstance(value, int) else str(value)
    return params


def _session_path(session_id: str, *rest: str) -> str:
    if not session_id:
        raise ValueError("session id must not be empty")
    parts = [quote(session_id, safe="")] + [quote(part, safe="") for part in rest]
    return "/api/sessions/" + "/".join(parts)


def health() -> Call[Health]:
    # An unhealthy server answers 503 with the same body: that is a result, not an error.
    def decode(content: bytes) -> Health:
        return decode_json(content, Health)

    return Call("GET", "/health", decode, ok=(200, 503))


def status() -> Call[Status]:
    return Call("GET", "/api/status", _typed(Status))


def start_session(
    prd_path: str | os.PathLike[str] | None,
    provider: str,
    dry_run: bool | None,
    verbose: bool | None,
    timeout: float | None,
) -> Call[SessionActionResponse]:
    body: dict[str, Any] = {"provider": provider}
    if prd_path is not None:
        body["prdPath"] = os.fspath(prd_path)
    given = {"dryRun": dry_run, "verbose": verbose, "timeout": timeout}
    options = {name: value for name, value in given.items() if value is not None}
    if options:
        body["options"] = options  # the server checks the values (422 ValidationError)
    return Call("POST", "/api/sessions", _typed(SessionActionResponse), json=body)


def list_sessions(status: str | None, limit: int | None, offset: int | None) -> Call[SessionList]:
    return Call(
        "GET",
        "/api/sessions",
        _typed(SessionList),
        params=_params(status=status, limit=limit, offset=offset),
    )


def get_session(session_id: str) -> Call[SessionDetail]:
    return Call("GET", _session_path(session_id), _typed(SessionDetail))


def session_action(session_id: str, action: str) -> Call[SessionActionResponse]:
    """stop / pause / resume."""
    return Call("POST", _session_path(session_id, action), _typed(SessionActionResponse), json={})


def inject_input(session_id: str, text: str, context: str | None) -> Call[SessionActionResponse]:
    body: dict[str, Any] = {"input": text}
    if context is not None:
        body["context"] = context
    return Call(
        "POST", _session_path(session_id, "input"), _typed(SessionActionResponse), json=body
    )


def delete_session(session_id: str) -> Call[DeleteResponse]:
    return Call("DELETE", _session_path(session_id), _typed(DeleteResponse))


def get_tasks(
    session_id: str, status: str | None, limit: int | None, offset: int | None
) -> Call[SessionTaskList]:
    return Call(
        "GET",
        _session_path(session_id, "tasks"),
        _typed(SessionTaskList),
        params=_params(status=status, limit=limit, offset=offset),
    )


def get_task(session_id: str, task_id: str) -> Call[Task]:
    if not task_id:
        raise ValueError("task id must not be empty")
    return Call("GET", _session_path(session_id, "tasks", task_id), _task)


def list_tasks(status: str | None, limit: int | None, offset: int | None) -> Call[TaskList]:
    return Call(
        "GET",
        "/api/tasks",
        _typed(TaskList),
        params=_params(status=status, limit=limit, offset=offset),
    )


def active_tasks() -> Call[TaskQueue]:
    return Call("GET", "/api/tasks/active", _typed(TaskQueue))


def queued_tasks() -> Call[TaskQueue]:
    return Call("GET", "/api/tasks/queue", _typed(TaskQueue))


def event_history(
    session_id: str | None,
    types: str | Sequence[str] | None,
    min_level: str | None,
    limit: int | None,
    after: str | None,
) -> Call[list[Event]]:
    return Call(
        "GET",
        "/api/events/history",
        _events,
        params=_params(
            sessionId=session_id, types=types, minLevel=min_level, limit=limit, after=after
        ),
    )


class _EventId(msgspec.Struct):
    id: str


class _EventIds(msgspec.Struct):
    events: list[_EventId]


def stream_anchor(filter_params: Params, history: int) -> Call[str | None]:
    """Where a stream resumes if its first connection drops before any event arrived.

    With `history=0` it is the newest event the server holds, of any type (the
    stream wants what comes after it); with `history=N`, the id just before the
    oldest of the last N matching events, so a resumed first connection still
    replays them (`evt_<seq>_0`: a position, not an event). None when nothing
    matches: then `newest_event_anchor` says where "now" is. Asking for
    `evt_0_0` instead would tell the server it missed everything its history
    no longer holds (a `gap`).
    """
    if history == 0:
        return newest_event_anchor()

    def decode(content: bytes) -> str | None:
        events = decode_json(content, _EventIds).events
        if not events:
            return None
        oldest = seq_of(events[0].id)
        if oldest is None:
            return events[-1].id
        return f"evt_{oldest - 1}_0"

    return Call("GET", "/api/events/history", decode, params={**filter_params, "limit": history})


def newest_event_anchor() -> Call[str | None]:
    """The newest event the server holds, of any type (`evt_0_0` when it holds none)."""

    def decode(content: bytes) -> str | None:
        events = decode_json(content, _EventIds).events
        return events[-1].id if events else "evt_0_0"

    return Call("GET", "/api/events/history", decode, params={"limit": 1})


def event_stats() -> Call[EventStats]:
    return Call("GET", "/api/events/stats", _typed(EventStats))


def event_filter_params(
    session_id: str | None, types: str | Sequence[str] | None, min_level: str | None
) -> Params:
    """The query of `/api/events` (and of the matching history request)."""
    return _params(sessionId=session_id, types=types, minLevel=min_level)
