"""`heartbeat` events: every `settings.heartbeat` seconds, one per running session."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import anyio

from ..bus import EventBus
from ..models import HeartbeatEventData
from .store import SessionState, StateStore

QUEUED_STATUSES = frozenset({"pending", "queued"})


def session_uptime(state: SessionState, now: float) -> float:
    """Seconds since the session started (0 when its start time is unknown)."""
    started = state.record.started_at
    if not started:
        return 0.0
    try:
        since = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    return round(max(now - since, 0.0), 3)


def heartbeat_data(state: SessionState, now: float) -> HeartbeatEventData:
    """The heartbeat of one session from its current in-memory state."""
    return HeartbeatEventData(
        uptime=session_uptime(state, now),
        active_agents=len(state.ledger.active),
        queued_tasks=sum(1 for task in state.tasks if task.status in QUEUED_STATUSES),
    )


def publish_heartbeats(store: StateStore, bus: EventBus, now: float) -> int:
    """Publish a heartbeat for every running session; returns how many."""
    count = 0
    for state in store.all():
        if state.record.status == "running":
            bus.publish("heartbeat", heartbeat_data(state, now), state.id)
            count += 1
    return count


async def run_heartbeat(
    store: StateStore, bus: EventBus, interval: float, clock: Callable[[], float] = time.time
) -> None:
    """Publish heartbeats every `interval` seconds until cancelled."""
    while True:
        await anyio.sleep(interval)
        publish_heartbeats(store, bus, clock())
