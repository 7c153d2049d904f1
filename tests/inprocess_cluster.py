"""A `ClusterBus` running in the test's own event loop against a real nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from loki_api.health_problems import HealthProblems
from loki_api.settings import Settings

from .support import wait_for


@asynccontextmanager
async def running_bus(
    url: str, cluster: str | None = None, node: str = "a", history: int = 10_000
) -> AsyncIterator[Any]:
    """A joined, caught-up bus of `cluster` (a fresh one by default); stopped on exit."""
    from loki_api.cluster.bus import ClusterBus

    settings = Settings(
        nats_urls=(url,), cluster=cluster or f"t{uuid.uuid4().hex[:8]}", history=history
    )
    bus = ClusterBus(settings, node, HealthProblems())
    bus.bind_loop()
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        await wait_for(lambda: bus.caught_up, timeout=10)
        yield bus
        tg.cancel_scope.cancel()
