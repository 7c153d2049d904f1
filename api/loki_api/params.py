"""Reading request input: JSON bodies into Structs, and query parameters, with clear errors."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import msgspec
from starlette.requests import Request

from .errors import BadRequest, HttpError, ValidationFailed
from .responses import json_response

__all__ = ["read_json", "query_int", "query_choice", "json_response", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 1024 * 1024
MAX_LIMIT = 1000

T = TypeVar("T")


async def read_json(request: Request, type: type[T]) -> T:
    """Decode the request body into `type`.

    415 if it is not JSON, 413 past 1 MiB, 400 if it does not parse, 422 if it
    does not match `type` (unknown fields included, where the Struct forbids them).
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HttpError("Request body exceeds 1 MiB", status=413, code="PAYLOAD_TOO_LARGE")
    if media != "application/json" and not media.endswith("+json"):
        if not body and not content_type:
            body = bytearray(b"{}")  # a POST with no body at all means "all defaults"
        else:
            raise HttpError(
                f"Content-Type must be application/json, not {media or 'missing'}",
                status=415,
                code="UNSUPPORTED_MEDIA_TYPE",
            )
    if not body.strip():
        body = bytearray(b"{}")
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequest("Request body must be a JSON object")
    try:
        return msgspec.convert(raw, type)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc)) from None


def query_int(
    request: Request, name: str, default: int | None = None, maximum: int | None = None
) -> int | None:
    """A non-negative integer query parameter (400 otherwise, "" too), capped at `maximum`."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII only: str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name} must be a non-negative integer, not {raw!r}")
    digits = raw.lstrip("0") or "0"
    # Past 18 digits no page or offset is real; this also keeps int() clear of its
    # 4300-digit limit.
    value = int(digits) if len(digits) <= 18 else 10**18
    return min(value, maximum) if maximum is not None else value


def query_choice(request: Request, name: str, allowed: Collection[str]) -> str | None:
    """A query parameter that must be one of `allowed` (422 otherwise, "" too)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if raw not in allowed:
        raise ValidationFailed(
            f"Invalid {name}: {raw!r} (expected one of {', '.join(allowed)})",
            details={"field": name, "allowed": list(allowed)},
        )
    return raw
