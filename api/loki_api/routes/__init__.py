"""The route table: one module per group of routes."""

from __future__ import annotations

from starlette.routing import BaseRoute

from . import console, events, health, metrics, openapi, sessions, tasks


def build_routes(*, console_on: bool = True) -> list[BaseRoute]:
    api: list[BaseRoute] = [
        *health.routes,
        *events.routes,
        *sessions.routes,
        *tasks.routes,
        *openapi.routes,
        *metrics.routes,
    ]
    return [*api, *console.routes] if console_on else api
