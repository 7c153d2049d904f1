"""`GET /openapi.json`: the committed OpenAPI document (`openapi/openapi.yaml`) as JSON.

The YAML is read and converted once, on the first request, and the encoded bytes
are reused. An installed wheel carries it as `loki_api/openapi.yaml` (see
`pyproject.toml`); a source checkout reads `openapi/openapi.yaml` directly.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..encoding import encode
from ..errors import HttpError
from ..responses import JSON_MEDIA_TYPE

CHECKOUT_SPEC = Path(__file__).resolve().parents[3] / "openapi" / "openapi.yaml"


def spec_text() -> str:
    """The YAML document: the packaged copy first, then the source checkout's."""
    packaged = resources.files("loki_api").joinpath("openapi.yaml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    if CHECKOUT_SPEC.is_file():
        return CHECKOUT_SPEC.read_text(encoding="utf-8")
    raise HttpError(
        "OpenAPI document not found: neither loki_api/openapi.yaml (installed package) "
        f"nor {CHECKOUT_SPEC} (source checkout) exists",
        status=500,
        code="INTERNAL_ERROR",
    )


@functools.cache
def spec_json() -> bytes:
    """The document encoded as JSON; computed once (a failure is not cached)."""
    return encode(yaml.safe_load(spec_text()))


async def openapi(request: Request) -> Response:
    return Response(spec_json(), media_type=JSON_MEDIA_TYPE)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
