"""`GET /metrics`: the Prometheus exposition of this server (SPEC §13; see `metrics.py`).

Text format 0.0.4 by default, OpenMetrics when the `Accept` header asks for
it. Same access rule as the REST routes, unless `--metrics-public`.
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .events import runtime_of


async def metrics(request: Request) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encode(runtime_of(request).metrics)
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/metrics", metrics, methods=["GET"])]
