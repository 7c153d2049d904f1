"""Task listings across sessions: order, filters, pages, and answers that follow changes.

The listings are kept between requests (`StateStore.view`); these tests change
the state files between requests and check that every answer reflects them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loki_api.settings import Settings

from .support import InProcessServer, serve_in_process

pytestmark = pytest.mark.anyio


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def session(
    sessions: Path,
    session_id: str,
    started: str,
    tasks: list[dict[str, Any]],
    status: str = "running",
) -> None:
    write(sessions / session_id / "tasks.json", tasks)
    write(
        sessions / session_id / "session.json",
        {"id": session_id, "provider": "claude", "status": status, "startedAt": started},
    )


@pytest.fixture
async def live(loki_dir: Path) -> AsyncIterator[InProcessServer]:
    sessions = loki_dir / ".loki" / "sessions"
    # Newest first: by the task's createdAt, else its session's start; later entries first.
    session(
        sessions,
        "a",
        "2026-01-01T00:00:00.000Z",
        [
            {"id": "a1", "status": "completed"},
            {"id": "a2", "status": "running", "createdAt": "2026-01-05T00:00:00.000Z"},
            {"id": "a3", "status": "pending", "priority": 1},
        ],
    )
    session(
        sessions,
        "b",
        "2026-01-03T00:00:00.000Z",
        [
            {"id": "b1", "status": "queued", "priority": 5},
            {"id": "b2", "status": "pending"},
        ],
    )
    session(
        sessions,
        "c",
        "2026-01-02T00:00:00.000Z",
        [
            {"id": "c1", "status": "running", "createdAt": "2026-01-04T00:00:00.000Z"},
            {"id": "c2", "status": "pending", "priority": 5},
        ],
        status="completed",
    )
    settings = Settings(loki_dir=loki_dir, port=0)  # type: ignore[arg-type]
    assert settings.sessions_dir == sessions
    async with serve_in_process(settings) as srv:
        yield srv


async def get(srv: InProcessServer, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        reply = await client.get(path, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def task_ids(body: dict[str, Any]) -> list[str]:
    return [task["id"] for task in body["tasks"]]


def change(srv: InProcessServer, path: Path, doc: Any) -> None:
    """Write a state file and apply it now (the watcher would, a moment later)."""
    srv.runtime.store.apply_file(write(path, doc))


async def test_all_tasks_newest_first_with_filter_and_pages(live: InProcessServer) -> None:
    every = await get(live, "/api/tasks")
    assert task_ids(every) == ["a2", "c1", "b2", "b1", "c2", "a3", "a1"]
    assert every["pagination"] == {"total": 7, "limit": 100, "offset": 0, "hasMore": False}
    # Every key of the original Task, null where the file says nothing (SPEC §6).
    assert every["tasks"][0] == {
        "id": "a2",
        "sessionId": "a",
        "title": "Untitled",
        "description": "",
        "status": "running",
        "priority": 0,
        "createdAt": "2026-01-05T00:00:00.000Z",
        "startedAt": None,
        "completedAt": None,
        "agent": None,
        "output": None,
        "error": None,
        "progress": None,
        "duration": None,
        "updatedAt": None,
    }
    # A task that does not say when it was created is as old as its session.
    a1 = next(task for task in every["tasks"] if task["id"] == "a1")
    assert a1["createdAt"] == "2026-01-01T00:00:00.000Z"
    page = await get(live, "/api/tasks", limit=2, offset=1)
    assert task_ids(page) == ["c1", "b2"]
    assert page["pagination"] == {"total": 7, "limit": 2, "offset": 1, "hasMore": True}
    pending = await get(live, "/api/tasks", status="pending", offset=1)
    assert task_ids(pending) == ["c2", "a3"]
    assert pending["pagination"] == {"total": 3, "limit": 100, "offset": 1, "hasMore": False}
    # Asked again: the same answers (now from the kept listing).
    assert await get(live, "/api/tasks") == every
    assert await get(live, "/api/tasks", status="pending", offset=1) == pending


async def test_active_and_queue(live: InProcessServer) -> None:
    # c is completed: its running and pending tasks are neither active nor queued.
    active = await get(live, "/api/tasks/active")
    assert task_ids(active) == ["a2"] and active["count"] == 1
    assert active["tasks"][0]["createdAt"] == "2026-01-05T00:00:00.000Z"
    queue = await get(live, "/api/tasks/queue")
    # Highest priority first; equal ones in session order (b newer than a); none (0) last.
    assert task_ids(queue) == ["b1", "a3", "b2"] and queue["count"] == 3


async def test_listings_follow_task_and_session_changes(
    live: InProcessServer, loki_dir: Path
) -> None:
    sessions = loki_dir / ".loki" / "sessions"
    assert task_ids(await get(live, "/api/tasks", status="running")) == ["a2", "c1"]
    await get(live, "/api/tasks/queue")
    change(
        live,
        sessions / "b" / "tasks.json",
        [
            {"id": "b1", "status": "running"},
            {"id": "b2", "status": "pending", "priority": 9},
            {"id": "b3", "status": "queued", "createdAt": "2026-01-06T00:00:00.000Z"},
        ],
    )
    assert task_ids(await get(live, "/api/tasks")) == [
        "b3",
        "a2",
        "c1",
        "b2",
        "b1",
        "c2",
        "a3",
        "a1",
    ]
    assert task_ids(await get(live, "/api/tasks", status="running")) == ["a2", "c1", "b1"]
    assert task_ids(await get(live, "/api/tasks/active")) == ["b1", "a2"]
    assert task_ids(await get(live, "/api/tasks/queue")) == ["b2", "a3", "b3"]
    # A status change alone (same start time) is seen by the next request too.
    change(
        live,
        sessions / "b" / "session.json",
        {
            "id": "b",
            "provider": "claude",
            "status": "stopping",
            "startedAt": "2026-01-03T00:00:00.000Z",
        },
    )
    assert task_ids(await get(live, "/api/tasks/active")) == ["a2"]  # b is being cut short
    assert task_ids(await get(live, "/api/tasks/queue")) == ["b2", "a3", "b3"]
    change(
        live,
        sessions / "a" / "session.json",
        {
            "id": "a",
            "provider": "claude",
            "status": "completed",
            "startedAt": "2026-01-01T00:00:00.000Z",
        },
    )
    assert task_ids(await get(live, "/api/tasks/queue")) == ["b2", "b3"]
    # A session that starts later moves its undated tasks up.
    change(
        live,
        sessions / "c" / "session.json",
        {
            "id": "c",
            "provider": "claude",
            "status": "completed",
            "startedAt": "2026-01-09T00:00:00.000Z",
        },
    )
    assert task_ids(await get(live, "/api/tasks"))[:3] == ["c2", "b3", "a2"]
    live.runtime.store.remove("b")
    assert "b1" not in task_ids(await get(live, "/api/tasks"))
