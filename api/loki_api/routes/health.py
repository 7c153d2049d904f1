"""Health probes and `/api/status`: cheap, no process spawned per call."""

from __future__ import annotations

import platform
import sys
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..models import EventCounts, Health, Liveness, Readiness, Status, SystemInfo
from ..params import json_response
from .events import runtime_of


def uptime_ms(seconds: float) -> int:
    """Uptime as the original API gives it: whole milliseconds."""
    return int(seconds * 1000)


def format_uptime(seconds: float) -> str:
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


async def health(request: Request) -> Response:
    runtime = runtime_of(request)
    runtime.cli_problem()  # a stat or two: the CLI may have been removed or fixed since
    checks = runtime.run_checks()
    # A vital check failing (state dir unusable, watcher dead) is unhealthy; a
    # reported problem (disk full, a file skipped, no CLI) is degraded: still serving.
    unhealthy = any(not check.ok for name, check in checks.items() if name in runtime.checks)
    problems = runtime.health.reasons()
    status: Literal["healthy", "degraded", "unhealthy"] = (
        "unhealthy" if unhealthy else "degraded" if problems else "healthy"
    )
    body = Health(
        status=status,
        version=__version__,
        uptime=uptime_ms(runtime.uptime),
        providers=runtime.providers.get(),
        active_session=runtime.active_session(),
        cli=runtime.cli_description(),
        problems=problems,
        cluster=runtime.cluster_info(),
    )
    return json_response(body, status=503 if status == "unhealthy" else 200)


async def ready(request: Request) -> Response:
    checks = runtime_of(request).run_checks()
    ok = all(check.ok for check in checks.values())
    return json_response(Readiness(ready=ok, checks=checks), status=200 if ok else 503)


async def live(request: Request) -> Response:
    return json_response(Liveness(alive=True, uptime=uptime_ms(runtime_of(request).uptime)))


async def status(request: Request) -> Response:
    runtime = runtime_of(request)
    bus = runtime.bus
    return json_response(
        Status(
            version=__version__,
            uptime=uptime_ms(runtime.uptime),
            uptime_seconds=round(runtime.uptime, 3),
            uptime_formatted=format_uptime(runtime.uptime),
            providers=runtime.providers.get(),
            sessions=runtime.session_counts(),
            events=EventCounts(
                subscribers=bus.subscriber_count,
                history_size=bus.history_size,
                published=bus.published,
            ),
            system=SystemInfo(
                platform=sys.platform, arch=platform.machine(), python=platform.python_version()
            ),
            cluster=runtime.cluster_info(),
        )
    )


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/health/live", live, methods=["GET"]),
    Route("/api/status", status, methods=["GET"]),
]
