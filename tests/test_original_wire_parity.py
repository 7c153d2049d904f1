"""SPEC §6 "Wire shapes as the original": every answer decodes, strictly, into the
ORIGINAL API's types (`tests/original_types.py`, transcribed from its OpenAPI
document), for a full simulated session and for a plain CLI that writes bare tasks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from . import original_types as original
from .support import ServerProcess, SSEMessage, sse_stream, wait_for

pytestmark = pytest.mark.anyio

PRD = "# Parity\n\n## Backend\n- Build the API\n- Add storage\n"


class TaskItems(msgspec.Struct):
    """Any answer that lists tasks (`/api/tasks`, `/api/tasks/queue`): the original
    leaves its body undocumented, but its items are the original `Task`."""

    tasks: list[original.Task]


def ok(response: httpx.Response, type_: type[Any], status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return original.decode(response.content, type_)


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert original.decode(response.content, original.ApiError).code == code


def decode_frames(frames: list[SSEMessage]) -> list[original.SSEEvent]:
    events = [original.decode(frame.data.encode(), original.SSEEvent) for frame in frames]
    for frame, event in zip(frames, events, strict=True):
        assert (frame.id, frame.event) == (event.id, event.type)
    return events


def read_everything(client: httpx.Client, session_id: str) -> list[original.Task]:
    """Every read route, each answer decoded into its original type; the tasks."""
    health = ok(client.get("/health"), original.HealthResponse)
    assert health.uptime >= 0
    ok(client.get("/api/status"), dict)
    listed = ok(client.get("/api/sessions"), original.SessionListResponse)
    assert session_id in [s.id for s in listed.sessions]
    detail = ok(client.get(f"/api/sessions/{session_id}"), original.SessionStatusResponse)
    assert detail.session.id == session_id
    tasks = ok(client.get(f"/api/sessions/{session_id}/tasks"), original.SessionTasksResponse)
    assert tasks.tasks, "the session has tasks"
    for task in tasks.tasks:
        one = client.get(f"/api/sessions/{session_id}/tasks/{task.id}")
        assert ok(one, dict)["task"]["id"] == task.id
        original.decode(msgspec.json.encode(one.json()["task"]), original.Task)
    ok(client.get("/api/tasks"), TaskItems)
    ok(client.get("/api/tasks/active"), original.ActiveTasksResponse)
    ok(client.get("/api/tasks/queue"), TaskItems)
    history = ok(
        client.get("/api/events/history", params={"sessionId": session_id, "limit": 1000}),
        original.EventHistoryResponse,
    )
    assert history.count == len(history.events) > 0
    refused(client.get("/api/sessions/no-such-session"), 404, "SESSION_NOT_FOUND")
    return tasks.tasks


async def test_a_simulated_session_speaks_the_original_types(loki_dir: Path) -> None:
    (loki_dir / "prd.md").write_text(PRD)
    env = {"LOKI_SIM_DELAY": "0.1"}
    with (
        ServerProcess(loki_dir, "--simulate", env=env) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        async with sse_stream(server.url) as stream:
            started = ok(
                client.post("/api/sessions", json={"prdPath": "prd.md", "provider": "claude"}),
                original.StartSessionResponse,
                201,
            )
            sid = started.session_id
            refused(
                client.post("/api/sessions", json={"provider": "nope"}), 422, "VALIDATION_ERROR"
            )
            assert client.post(f"/api/sessions/{sid}/pause").status_code == 200
            refused(client.post(f"/api/sessions/{sid}/pause"), 409, "CONFLICT")
            assert client.post(f"/api/sessions/{sid}/resume").status_code == 200
            answer = client.post(f"/api/sessions/{sid}/input", json={"input": "Use SQLite"})
            assert answer.status_code == 200, answer.text
            await wait_for(lambda: client.get(f"/api/sessions/{sid}/tasks").json()["tasks"])
            read_everything(client, sid)
            frames = await stream.until(
                lambda m: m.event == "session:completed" and sid in m.data, timeout=30
            )
        events = decode_frames(frames)
        assert {e.type for e in events} >= {"session:started", "task:created", "task:completed"}
        tasks = read_everything(client, sid)
        assert all(task.status == "completed" for task in tasks)
        assert client.delete(f"/api/sessions/{sid}").status_code == 200


BARE_CLI = """
import json, os, pathlib, sys, time

# A plain CLI: it writes tasks with only an id, a title or subject, and a status.
state = pathlib.Path(os.environ["LOKI_DIR"], ".loki", "sessions", os.environ["LOKI_SESSION_ID"])
state.mkdir(parents=True, exist_ok=True)
tasks = [
    {"id": "t1", "title": "Bare task", "status": "pending"},
    {"id": "t2", "subject": "From subject", "status": "in_progress"},
    {"id": 3, "status": "done"},
]
(state / "tasks.json").write_text(json.dumps({"tasks": tasks}))
print("tasks written", flush=True)
deadline = time.monotonic() + 60
while not (state / "STOP").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


async def test_a_plain_cli_with_bare_tasks_speaks_the_original_types(
    loki_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "bare_cli.py"
    script.write_text(BARE_CLI)
    with (
        ServerProcess(loki_dir, "--cli", f"{sys.executable} {script}") as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        started = ok(client.post("/api/sessions", json={}), original.StartSessionResponse, 201)
        sid = started.session_id
        await wait_for(lambda: len(client.get(f"/api/sessions/{sid}/tasks").json()["tasks"]) == 3)
        tasks = read_everything(client, sid)
        assert [(t.id, t.title, t.status, t.description) for t in tasks] == [
            ("t1", "Bare task", "pending", ""),
            ("t2", "From subject", "running", ""),
            ("3", "Untitled", "completed", ""),
        ]
        assert all(t.started_at is t.completed_at is t.agent is t.output is None for t in tasks)
        assert client.post(f"/api/sessions/{sid}/stop").status_code == 200
        await wait_for(
            lambda: client.get(f"/api/sessions/{sid}").json()["session"]["status"] == "stopped"
        )
        read_everything(client, sid)
