"""Heartbeat events for running sessions."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from loki_api.bus import EventBus
from loki_api.models import HeartbeatEventData, Session
from loki_api.settings import Settings
from loki_api.state import StateStore
from loki_api.state.heartbeat import heartbeat_data, publish_heartbeats, run_heartbeat


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    store = StateStore(Settings(loki_dir=tmp_path), EventBus(history=100))
    store.load()
    return store


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_heartbeat_data_from_current_state(store: StateStore) -> None:
    state = store.create(Session(id="s1", status="running", started_at="2026-01-01T00:00:00.000Z"))
    store.apply_file(
        write(
            state.dir / "tasks.json",
            {
                "tasks": [
                    {"id": 1, "status": "pending"},
                    {"id": 2, "status": "queued"},
                    {"id": 3, "status": "running"},
                    {"id": 4, "status": "done"},
                ]
            },
        )
    )
    store.apply_file(
        write(
            state.dir / "agents.json", {"active": [{"id": "a"}, {"id": "b", "status": "completed"}]}
        )
    )
    now = 1767225600.0 + 90.5  # 2026-01-01T00:01:30.5Z
    assert heartbeat_data(state, now) == HeartbeatEventData(
        uptime=90.5, active_agents=1, queued_tasks=2
    )


def test_heartbeat_uptime_without_start_time(store: StateStore) -> None:
    state = store.create(Session(id="s1", status="running", started_at="not a time"))
    assert heartbeat_data(state, 0.0).uptime == 0.0


def test_only_running_sessions_beat(store: StateStore) -> None:
    store.create(Session(id="a", status="running"))
    store.create(Session(id="b", status="paused"))
    store.create(Session(id="c", status="running"))
    before = store.bus.published
    assert publish_heartbeats(store, store.bus, 0.0) == 2
    beats = store.bus.history()[before:]
    assert sorted((e.type, e.session_id) for e in beats) == [("heartbeat", "a"), ("heartbeat", "c")]


@pytest.mark.anyio
async def test_run_heartbeat_ticks(store: StateStore) -> None:
    store.create(Session(id="a", status="running"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_heartbeat, store, store.bus, 0.01)
        with anyio.fail_after(5):
            while store.bus.by_type["heartbeat"] < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
