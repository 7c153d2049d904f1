"""HTTP errors and their JSON answers: the one place where failures become HTTP.

Every error leaves the server as `{"error": message, "code": CODE, "details"?}`
(the wire type `models.ApiError`). Edge code (routes, request parsing) raises
`HttpError` (or a subclass); the session manager raises its own domain errors
(`sessions.errors.SessionError`), which `SESSION_ERROR_ANSWERS` maps to a status
and code. The handlers of `exception_handlers` turn those, Starlette's
`HTTPException`, and any other exception into that shape. A stack trace is
never sent (it is logged).

    HttpError(code, message, status, details)
     ├── BadRequest            400 BAD_REQUEST
     ├── NotFound              404 NOT_FOUND / SESSION_NOT_FOUND
     ├── Conflict              409 CONFLICT / SESSION_ALREADY_RUNNING
     ├── ValidationFailed      422 VALIDATION_ERROR
     └── ServiceUnavailable    503 SERVICE_UNAVAILABLE / PROVIDER_NOT_AVAILABLE

The state directory's errors (`statedir.py`) are translated here too:
`StorageUnavailable` → 503 STORAGE_UNAVAILABLE (disk full, read-only, I/O
error), `UnusableEntry` → 409 CONFLICT (a directory, symlink or FIFO where the
call needs a file).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from .encoding import encode
from .models import ApiError
from .responses import JSON_MEDIA_TYPE
from .sessions.errors import (
    CliUnavailable,
    LaunchFailed,
    ManagerNotRunning,
    SessionError,
    SessionLimitReached,
    UnknownSession,
    WrongState,
)
from .statedir import StateDirError, StorageUnavailable

log = logging.getLogger(__name__)

CODE_FOR_STATUS: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    501: "NOT_IMPLEMENTED",
    503: "SERVICE_UNAVAILABLE",
}


class HttpError(Exception):
    """An error answer with a status, a machine-readable code and optional details."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details
        self.headers = headers


class BadRequest(HttpError):
    status, code = 400, "BAD_REQUEST"


class NotFound(HttpError):
    status, code = 404, "NOT_FOUND"


class Conflict(HttpError):
    status, code = 409, "CONFLICT"


class ValidationFailed(HttpError):
    status, code = 422, "VALIDATION_ERROR"


class ServiceUnavailable(HttpError):
    status, code = 503, "SERVICE_UNAVAILABLE"


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = ApiError(
        error=message, code=code or CODE_FOR_STATUS.get(status, "ERROR"), details=details
    )
    return Response(encode(body), status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.message, exc.code, exc.details, exc.headers)


# The session manager's refusals as HTTP: status and code of each domain error.
SESSION_ERROR_ANSWERS: dict[type[SessionError], tuple[int, str]] = {
    UnknownSession: (404, "SESSION_NOT_FOUND"),
    WrongState: (409, "CONFLICT"),
    SessionLimitReached: (409, "SESSION_ALREADY_RUNNING"),
    CliUnavailable: (503, "PROVIDER_NOT_AVAILABLE"),
    ManagerNotRunning: (503, "SERVICE_UNAVAILABLE"),
    LaunchFailed: (500, "CLI_ERROR"),
}


def session_error_answer(exc: SessionError) -> HttpError:
    """The HTTP error for a domain error of the session manager."""
    status, code = next(
        (SESSION_ERROR_ANSWERS[cls] for cls in type(exc).__mro__ if cls in SESSION_ERROR_ANSWERS),
        (500, "INTERNAL_ERROR"),
    )
    details = {"sessionId": exc.running} if isinstance(exc, SessionLimitReached) else None
    return HttpError(exc.message, status=status, code=code, details=details)


async def _session_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SessionError)
    return await _http_error(request, session_error_answer(exc))


async def _state_dir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StateDirError)
    details = {"path": f".loki/{exc.path}"}
    if isinstance(exc, StorageUnavailable):
        message = f"Storage unavailable: cannot write .loki/{exc.path}: {exc.reason}"
        return error_response(503, message, "STORAGE_UNAVAILABLE", details)
    message = f"Cannot use .loki/{exc.path}: {exc.reason}"
    return error_response(409, message, "CONFLICT", details)


_HTTP_MESSAGES = {
    404: "Not found",
    405: "Method not allowed",
}


def allowed_methods(request: Request) -> str:
    """Every method the request's path serves, for the `Allow` header of a 405.

    Starlette answers a 405 from the first route whose path matches and lists only
    that route's methods; a path served by several `Route`s (GET and POST as separate
    entries) needs the union of them all.
    """
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _starlette_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code) or exc.detail
    headers = exc.headers
    if exc.status_code == 404:
        message = f"Not found: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method not allowed: {request.method} {request.url.path}"
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    return error_response(
        exc.status_code, message, headers=dict(headers) if headers is not None else None
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers(debug: bool) -> dict[Any, Handler]:
    """Starlette's `exception_handlers`: every exception becomes the one error shape."""

    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        details = {"exception": f"{type(exc).__name__}: {exc}"} if debug else None
        return error_response(500, "Internal server error", "INTERNAL_ERROR", details)

    return {
        HttpError: _http_error,
        SessionError: _session_error,
        StateDirError: _state_dir_error,
        HTTPException: _starlette_http_error,
        Exception: _unexpected,
    }
