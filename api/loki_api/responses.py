"""JSON responses encoded by the shared msgspec encoder."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from .encoding import encode

JSON_MEDIA_TYPE = "application/json; charset=utf-8"


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(value), status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)
