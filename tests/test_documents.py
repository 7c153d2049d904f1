"""Tolerant decoding of state files written by other programs."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import pytest

from loki_api.models import Agent, Session
from loki_api.state.documents import (
    PhaseDoc,
    agent_failed,
    agent_finished,
    decode_agents,
    decode_current_session,
    decode_phase,
    decode_session,
    decode_tasks,
    normalise_task_status,
)

T0 = "2026-11-23T05:00:00.000Z"
ORIGINAL_TASK_KEYS = (
    "id",
    "sessionId",
    "title",
    "description",
    "status",
    "priority",
    "createdAt",
    "startedAt",
    "completedAt",
    "agent",
    "output",
    "error",
)


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# ------------------------------------------------------------------------ session


def test_session_full_record() -> None:
    doc = {
        "id": "other-id",
        "prdPath": "./prd.md",
        "provider": "codex",
        "status": "running",
        "startedAt": "2026-11-23T05:00:00.000Z",
        "updatedAt": "2026-11-23T05:01:00.000Z",
        "pid": 1234,
        "currentPhase": "planning",
        "taskCount": 3,
        "completedTasks": 1,
        "exitCode": None,
        "somethingNew": {"x": 1},
    }
    assert decode_session(raw(doc), "s1") == Session(
        id="s1",
        prd_path="./prd.md",
        provider="codex",
        status="running",
        started_at="2026-11-23T05:00:00.000Z",
        updated_at="2026-11-23T05:01:00.000Z",
        pid=1234,
        current_phase="planning",
        task_count=3,
        completed_tasks=1,
    )


def test_session_bad_fields_are_dropped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "loki_api.state.documents")
    doc = {
        "status": " PAUSED ",
        "pid": "12",
        "taskCount": 2.0,
        "completedTasks": True,
        "currentPhase": 5,
        "provider": None,
    }
    record = decode_session(raw(doc), "s1")
    assert record == Session(id="s1", status="paused", task_count=2)
    assert "pid" in caplog.text


def test_session_unknown_status_is_ignored() -> None:
    assert decode_session(raw({"status": "exploded"}), "s1") == Session(id="s1")


@pytest.mark.parametrize(
    "data", [b"", b'{"status": "runn', b"[1, 2]", b'"text"', b"null", b"\xff\xfe"]
)
def test_session_unusable_documents(data: bytes) -> None:
    assert decode_session(data, "s1") is None


# -------------------------------------------------------------------------- tasks


def test_tasks_normalised() -> None:
    tasks = decode_tasks(
        raw(
            {
                "tasks": [
                    {"id": 7, "subject": "from subject", "status": "in_progress", "priority": 2},
                    {"id": "b", "title": "titled", "subject": "ignored", "status": "in progress"},
                    {"title": "no id", "status": "done", "progress": 0.5},
                    {"id": "d", "status": "weird"},
                    {"id": "e", "status": "FAILED", "description": 5},
                ]
            }
        ),
        "s1",
        created_at=T0,
    )
    assert tasks is not None
    assert [(t.id, t.title, t.status) for t in tasks] == [
        ("7", "from subject", "running"),
        ("b", "titled", "running"),
        ("task-2", "no id", "completed"),
        ("d", "Untitled", "pending"),
        ("e", "Untitled", "failed"),
    ]
    assert tasks[0].priority == 2 and tasks[0].session_id == "s1"
    assert tasks[2].progress == 0.5
    assert tasks[4].description == ""  # wrong type dropped


def test_tasks_carry_every_key_of_the_original_task() -> None:
    """SPEC §6: null where unknown, "" for no description, 0 for no priority, and
    the fallback creation time; values the file gives are kept."""
    bare, full = decode_tasks(
        raw(
            [
                {"id": "a", "title": "bare"},
                {
                    "id": "b",
                    "title": "full",
                    "description": "d",
                    "priority": 3,
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "startedAt": "2026-01-01T00:00:01.000Z",
                    "completedAt": "2026-01-01T00:00:02.000Z",
                    "agent": "agent-1",
                    "output": "o",
                    "error": "e",
                },
            ]
        ),
        "s1",
        created_at=T0,
    ) or [None, None]
    assert bare is not None and full is not None
    wire = json.loads(msgspec.json.encode(bare))
    assert {k: wire[k] for k in ORIGINAL_TASK_KEYS} == {
        "id": "a",
        "sessionId": "s1",
        "title": "bare",
        "description": "",
        "status": "pending",
        "priority": 0,
        "createdAt": T0,
        "startedAt": None,
        "completedAt": None,
        "agent": None,
        "output": None,
        "error": None,
    }
    assert (full.priority, full.created_at, full.started_at, full.completed_at) == (
        3,
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:01.000Z",
        "2026-01-01T00:00:02.000Z",
    )
    assert (full.description, full.agent, full.output, full.error) == ("d", "agent-1", "o", "e")


def test_tasks_index_ids_are_stable() -> None:
    doc = {"tasks": [{"title": "a"}, {"title": "b"}]}
    first = decode_tasks(raw(doc), "s1", created_at=T0)
    assert first == decode_tasks(raw(doc), "s1", created_at=T0)
    assert [t.id for t in first or []] == ["task-0", "task-1"]


def test_tasks_bare_list_and_junk_entries() -> None:
    tasks = decode_tasks(
        raw([{"id": "a"}, 3, "x", None, {"id": "a", "title": "again"}]), "s1", created_at=T0
    )
    assert [(t.id, t.title) for t in tasks or []] == [("a", "again")]


@pytest.mark.parametrize("doc", [{"tasks": "nope"}, {"other": []}, 42, "x"])
def test_tasks_wrong_shapes(doc: Any) -> None:
    assert decode_tasks(raw(doc), "s1", created_at=T0) is None


def test_tasks_invalid_json() -> None:
    assert decode_tasks(b'{"tasks": [', "s1", created_at=T0) is None


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("in_progress", "running"),
        ("In Progress", "running"),
        ("done", "completed"),
        ("queued", "queued"),
        ("skipped", "skipped"),
        ("bogus", "pending"),
        (None, "pending"),
        (3, "pending"),
    ],
)
def test_task_status_synonyms(value: Any, status: str) -> None:
    assert normalise_task_status(value) == status


# -------------------------------------------------------------------------- phase


def test_phase() -> None:
    assert decode_phase(
        raw({"current": "development", "previous": "planning", "progress": 0.4, "x": 1}), "s1"
    ) == PhaseDoc(current="development", previous="planning", progress=0.4)
    assert decode_phase(raw({"current": 3, "progress": "half"}), "s1") == PhaseDoc()
    assert decode_phase(raw(["development"]), "s1") is None
    assert decode_phase(b"{", "s1") is None


# ------------------------------------------------------------------------- agents


def test_agents() -> None:
    agents = decode_agents(
        raw(
            {
                "active": [
                    {"id": "a1", "type": "developer", "model": "opus", "task": "t1", "extra": 1},
                    {"id": 2, "status": "completed"},
                    {"type": "no id"},
                    "junk",
                ],
                "completed": [],
            }
        ),
        "s1",
    )
    assert agents == [
        Agent(id="a1", type="developer", model="opus", task="t1"),
        Agent(id="2", status="completed"),
    ]


def test_agents_shapes() -> None:
    assert decode_agents(raw([{"id": "a"}]), "s1") == [Agent(id="a")]
    assert decode_agents(raw({}), "s1") == []
    assert decode_agents(raw({"active": "nope"}), "s1") is None
    assert decode_agents(raw(7), "s1") is None


def test_agent_finished_and_failed() -> None:
    assert not agent_finished(Agent(id="a", status="running"))
    assert not agent_finished(Agent(id="a"))
    assert agent_finished(Agent(id="a", status="Done")) and not agent_failed(
        Agent(id="a", status="done")
    )
    assert agent_finished(Agent(id="a", status="error")) and agent_failed(
        Agent(id="a", status="error")
    )


# -------------------------------------------------------------------------- state


def test_current_session() -> None:
    assert decode_current_session(raw({"currentSession": "s9", "x": 1})) == "s9"
    assert decode_current_session(raw({"currentSession": None})) is None
    assert decode_current_session(raw([])) is None
    assert decode_current_session(b"oops") is None
