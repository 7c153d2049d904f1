"""The route table: one module per group of routes."""

from __future__ import annotations

from starlette.routing import BaseRoute

from . import events, health, metrics, openapi, sessions, tasks


def build_routes() -> list[BaseRoute]:
    return [
        *health.routes,
        *events.routes,
        *sessions.routes,
        *tasks.routes,
        *openapi.routes,
        *metrics.routes,
    ]
