"""API errors and their JSON answers.

Every error leaves the server as `{"error": message, "code": CODE, "details"?}`.
Route code raises `ApiError` (or a subclass); the handlers installed by
`install_error_handlers` turn it, Starlette's `HTTPException`, and any other
exception into that shape. A stack trace is never sent (it is logged).

    ApiError(code, message, status, details)
     ├── BadRequest            400 BAD_REQUEST
     ├── NotFound              404 NOT_FOUND / SESSION_NOT_FOUND
     ├── Conflict              409 CONFLICT / SESSION_ALREADY_RUNNING
     ├── ValidationFailed      422 VALIDATION_ERROR
     └── ServiceUnavailable    503 SERVICE_UNAVAILABLE / PROVIDER_NOT_AVAILABLE
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from .encoding import encode
from .models import ApiError as ApiErrorBody
from .responses import JSON_MEDIA_TYPE

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


class ApiError(Exception):
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


class BadRequest(ApiError):
    status, code = 400, "BAD_REQUEST"


class NotFound(ApiError):
    status, code = 404, "NOT_FOUND"


class Conflict(ApiError):
    status, code = 409, "CONFLICT"


class ValidationFailed(ApiError):
    status, code = 422, "VALIDATION_ERROR"


class ServiceUnavailable(ApiError):
    status, code = 503, "SERVICE_UNAVAILABLE"


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = ApiErrorBody(
        error=message, code=code or CODE_FOR_STATUS.get(status, "ERROR"), details=details
    )
    return Response(encode(body), status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.code, exc.details, exc.headers)


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code) or exc.detail
    headers = exc.headers
    if exc.status_code == 404:
        message = f"Not found: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method not allowed: {request.method} {request.url.path}"
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    return error_response(exc.status_code, message, headers=headers)


def make_unexpected_handler(debug: bool):  # type: ignore[no-untyped-def]
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        details = {"exception": f"{type(exc).__name__}: {exc}"} if debug else None
        return error_response(500, "Internal server error", "INTERNAL_ERROR", details)

    return _unexpected
