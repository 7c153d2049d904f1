"""Every error the SDK raises, in one tree.

    LokiError
     ├── LokiConnectionError            the server could not be reached or the connection broke
     ├── LokiDecodeError                an answer that is not what the API documents
     ├── EventsMissed(gap)              a resumed event stream lost events (no `on_gap` given)
     └── LokiApiError(message, code, status, details)   the server answered with an error
          ├── BadRequest                400 BAD_REQUEST
          ├── Unauthorized              401 UNAUTHORIZED
          ├── Forbidden                 403 FORBIDDEN
          ├── NotFound                  404 NOT_FOUND
          │    └── SessionNotFound      404 SESSION_NOT_FOUND
          ├── Conflict                  409 CONFLICT
          │    └── SessionAlreadyRunning  409 SESSION_ALREADY_RUNNING
          ├── PayloadTooLarge           413 PAYLOAD_TOO_LARGE
          ├── UnsupportedMediaType      415 UNSUPPORTED_MEDIA_TYPE
          ├── ValidationError           422 VALIDATION_ERROR
          ├── RateLimited               429 RATE_LIMITED (+ retry_after)
          └── ServerError               5xx INTERNAL_ERROR, CLI_ERROR, NOT_IMPLEMENTED
               └── ServiceUnavailable   503 SERVICE_UNAVAILABLE, STORAGE_UNAVAILABLE
                    └── ProviderNotAvailable  503 PROVIDER_NOT_AVAILABLE

httpx's exceptions never escape: the clients translate them here, once, with
`raise ... from`, so the original is still on `__cause__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import StreamGap

__all__ = [
    "LokiError",
    "LokiConnectionError",
    "LokiDecodeError",
    "EventsMissed",
    "LokiApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "SessionNotFound",
    "Conflict",
    "SessionAlreadyRunning",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "ValidationError",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "ProviderNotAvailable",
    "api_error",
]


class LokiError(Exception):
    """Base of every error raised by `loki_client`."""


class LokiConnectionError(LokiError):
    """The server could not be reached, or the connection failed mid-request."""


class LokiDecodeError(LokiError):
    """The server's answer could not be decoded into the documented type."""


class EventsMissed(LokiError):
    """An event stream resumed after events the server no longer holds.

    The server said so with a `gap` message: `gap.last_event_id` is where the
    stream asked to resume, `gap.resumed_from` the oldest event it still held,
    `gap.missed` how many events fell out (None when the id was not the
    server's own, e.g. after its state was wiped). Raised by the iterator
    unless `events(on_gap=...)` handles gaps; the stream ends with it.
    """

    def __init__(self, gap: StreamGap) -> None:
        missed = "an unknown number of" if gap.missed is None else str(gap.missed)
        super().__init__(
            f"{missed} events missed between {gap.last_event_id} and {gap.resumed_from}"
        )
        self.gap = gap


class LokiApiError(LokiError):
    """The server answered `{"error", "code", "details"?}` with a 4xx/5xx status."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"status={self.status!r}, details={self.details!r})"
        )


class BadRequest(LokiApiError):
    """400: a malformed request (bad query parameter, invalid JSON)."""


class Unauthorized(LokiApiError):
    """401: a token is required and was missing or wrong."""


class Forbidden(LokiApiError):
    """403: refused (e.g. the DNS-rebinding guard)."""


class NotFound(LokiApiError):
    """404: no such route or resource."""


class SessionNotFound(NotFound):
    """404: no session with that id."""


class Conflict(LokiApiError):
    """409: the resource is not in a state that allows the action."""


class SessionAlreadyRunning(Conflict):
    """409: the running-session limit is reached; `details["sessionId"]` names one."""


class PayloadTooLarge(LokiApiError):
    """413: the request body is over the server's limit."""


class UnsupportedMediaType(LokiApiError):
    """415: the request body is not JSON."""


class ValidationError(LokiApiError):
    """422: the request is well-formed but its values are not acceptable."""


class RateLimited(LokiApiError):
    """429: too many requests; `retry_after` is the seconds the server asks to wait."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.retry_after = retry_after


class ServerError(LokiApiError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the server (or a part it needs) is not available right now."""


class ProviderNotAvailable(ServiceUnavailable):
    """503: no CLI is configured to run sessions (see `--simulate`, `LOKI_CLI`)."""


_BY_CODE: dict[str, type[LokiApiError]] = {
    "BAD_REQUEST": BadRequest,
    "UNAUTHORIZED": Unauthorized,
    "FORBIDDEN": Forbidden,
    "NOT_FOUND": NotFound,
    "SESSION_NOT_FOUND": SessionNotFound,
    "CONFLICT": Conflict,
    "SESSION_ALREADY_RUNNING": SessionAlreadyRunning,
    "PAYLOAD_TOO_LARGE": PayloadTooLarge,
    "UNSUPPORTED_MEDIA_TYPE": UnsupportedMediaType,
    "VALIDATION_ERROR": ValidationError,
    "RATE_LIMITED": RateLimited,
    "INTERNAL_ERROR": ServerError,
    "CLI_ERROR": ServerError,
    "NOT_IMPLEMENTED": ServerError,
    "SERVICE_UNAVAILABLE": ServiceUnavailable,
    "STORAGE_UNAVAILABLE": ServiceUnavailable,
    "PROVIDER_NOT_AVAILABLE": ProviderNotAvailable,
}

_BY_STATUS: dict[int, type[LokiApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}

_CODE_FOR_STATUS: dict[int, str] = {
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


def api_error(
    status: int,
    message: str,
    code: str | None = None,
    details: dict[str, Any] | None = None,
    retry_after: float | None = None,
) -> LokiApiError:
    """The right `LokiApiError` subclass for an error answer.

    The code decides; an unknown or missing code falls back to the status, so a
    proxy's bare 502 still becomes a `ServerError`.
    """
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else LokiApiError
    code = code or _CODE_FOR_STATUS.get(status, f"HTTP_{status}")
    if cls is RateLimited:
        return RateLimited(
            message, code=code, status=status, details=details, retry_after=retry_after
        )
    return cls(message, code=code, status=status, details=details)
