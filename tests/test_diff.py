"""Every diffing rule of SPEC §4.3, as pure functions."""

from __future__ import annotations

from typing import Any

import msgspec

from loki_api.models import Agent, PhaseEventData, Session, SessionEventData, Task
from loki_api.state.diff import (
    AgentLedger,
    Change,
    agent_changes,
    initial_session_event,
    last_session_event,
    phase_changes,
    session_changes,
    session_event_for,
    task_changes,
)


def plain(changes: list[Change]) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, msgspec.to_builtins(data)) for kind, data in changes]


def kinds(changes: list[Change]) -> list[str]:
    return [kind for kind, _ in changes]


def session(status: str, **fields: Any) -> Session:
    return Session(id="s1", status=status, **fields)


def task(task_id: str, status: str = "pending", **fields: Any) -> Task:
    unknown: dict[str, Any] = dict.fromkeys(("started_at", "completed_at", "agent", "output"))
    defaults = {"description": "", "priority": 0, "created_at": "t0", "error": None, **unknown}
    return Task(
        id=task_id, session_id="s1", title=f"T{task_id}", status=status, **{**defaults, **fields}
    )


# ------------------------------------------------------------------------ session


def test_session_appears() -> None:
    assert plain(session_changes(None, session("running"), None)) == [
        ("session:started", {"status": "running"})
    ]


def test_session_appears_in_a_later_state() -> None:
    assert kinds(session_changes(None, session("paused"), None)) == [
        "session:started",
        "session:paused",
    ]
    assert plain(session_changes(None, session("failed", exit_code=2), None)) == [
        ("session:started", {"status": "failed", "exitCode": 2}),
        ("session:failed", {"status": "failed", "exitCode": 2}),
    ]


def test_status_transitions() -> None:
    cases = [
        ("starting", "running", []),
        ("running", "paused", ["session:paused"]),
        ("paused", "running", ["session:resumed"]),
        ("running", "stopping", ["session:stopped"]),
        ("running", "stopped", ["session:stopped"]),
        ("running", "completed", ["session:completed"]),
        ("running", "failed", ["session:failed"]),
        ("stopping", "running", []),
        ("running", "starting", []),
    ]
    for old, new, expected in cases:
        assert kinds(session_changes(session(old), session(new), None)) == expected, (old, new)


def test_same_session_event_never_twice_in_a_row() -> None:
    first = session_changes(session("running"), session("stopping"), "session:started")
    assert kinds(first) == ["session:stopped"]
    last = last_session_event(first, "session:started")
    assert session_changes(session("stopping"), session("stopped"), last) == []


def test_unchanged_session_says_nothing() -> None:
    old = session("running", current_phase="x", task_count=1)
    assert session_changes(old, session("running", task_count=2), "session:started") == []


def test_exit_code_travels_with_the_event() -> None:
    assert plain(session_changes(session("running"), session("completed", exit_code=0), None)) == [
        ("session:completed", {"status": "completed", "exitCode": 0})
    ]


def test_session_file_removed() -> None:
    assert plain(session_changes(session("running"), None, "session:started")) == [
        ("session:stopped", {"status": "stopped", "message": "session record removed"})
    ]
    for status in ("completed", "failed", "stopped"):
        assert session_changes(session(status), None, None) == []
    assert session_changes(session("stopping"), None, "session:stopped") == []
    assert session_changes(None, None, None) == []


def test_session_event_for_and_initial_event() -> None:
    assert session_event_for(None, "running") is None
    assert session_event_for("paused", "running") == "session:resumed"
    assert session_event_for("running", "bogus") is None
    assert initial_session_event(session("running")) == "session:started"
    assert initial_session_event(session("stopping")) == "session:stopped"


def test_last_session_event_ignores_other_domains() -> None:
    changes: list[Change] = [
        ("session:paused", SessionEventData(status="paused")),
        ("phase:started", PhaseEventData(phase="x")),
    ]
    assert last_session_event(changes, None) == "session:paused"
    assert last_session_event([], "session:started") == "session:started"


# -------------------------------------------------------------------------- phase


def test_first_phase() -> None:
    assert plain(phase_changes(None, "planning", progress=0.1)) == [
        ("phase:started", {"phase": "planning", "progress": 0.1})
    ]


def test_phase_change_completes_the_old_one_first() -> None:
    assert plain(phase_changes("planning", "development")) == [
        ("phase:completed", {"phase": "planning"}),
        ("phase:started", {"phase": "development", "previousPhase": "planning"}),
    ]


def test_phase_unchanged_or_unknown() -> None:
    assert phase_changes("planning", "planning") == []
    assert phase_changes("planning", None) == []


def test_phase_previous_from_the_file_when_none_was_announced() -> None:
    assert plain(phase_changes(None, "qa", previous="dev")) == [
        ("phase:started", {"phase": "qa", "previousPhase": "dev"})
    ]


# -------------------------------------------------------------------------- tasks


def test_new_tasks() -> None:
    assert plain(task_changes([], [task("1")])) == [
        ("task:created", {"taskId": "1", "title": "T1", "status": "pending"})
    ]
    assert kinds(
        task_changes(
            [],
            [
                task("1", "running"),
                task("2", "completed"),
                task("3", "failed"),
                task("4", "queued"),
            ],
        )
    ) == [
        "task:created",
        "task:started",
        "task:created",
        "task:completed",
        "task:created",
        "task:failed",
        "task:created",
    ]


def test_task_status_changes() -> None:
    old = [task("1"), task("2", "running"), task("3", "running")]
    new = [task("1", "running"), task("2", "completed"), task("3", "failed", error="boom")]
    assert plain(task_changes(old, new)) == [
        ("task:started", {"taskId": "1", "title": "T1", "status": "running"}),
        ("task:completed", {"taskId": "2", "title": "T2", "status": "completed"}),
        ("task:failed", {"taskId": "3", "title": "T3", "status": "failed", "error": "boom"}),
    ]


def test_task_progress() -> None:
    old = [task("1", "running", progress=0.1)]
    assert plain(task_changes(old, [task("1", "running", progress=0.5)])) == [
        ("task:progress", {"taskId": "1", "title": "T1", "status": "running", "progress": 0.5})
    ]
    # A status change wins over a progress change: one event, not two.
    assert kinds(task_changes(old, [task("1", "completed", progress=1.0)])) == ["task:completed"]


def test_task_edits_without_news() -> None:
    old = [task("1", "running", progress=0.2), task("2")]
    assert task_changes(old, old) == []
    assert task_changes(old, [task("1", "running", progress=0.2, description="x")]) == []
    # back to pending: not one of the announced transitions
    assert task_changes([task("1", "running")], [task("1", "pending")]) == []


# ------------------------------------------------------------------------- agents


def agent(agent_id: str, status: str | None = None) -> Agent:
    return Agent(id=agent_id, type="developer", status=status)


def test_agent_spawned_once() -> None:
    changes, ledger = agent_changes(AgentLedger(), [agent("a")])
    assert plain(changes) == [("agent:spawned", {"agentId": "a", "type": "developer"})]
    assert [a.id for a in ledger.active] == ["a"]
    again, same = agent_changes(ledger, [agent("a", "running")])
    assert again == [] and same.announced == ledger.announced


def test_agent_gone_completes() -> None:
    _, ledger = agent_changes(AgentLedger(), [agent("a"), agent("b")])
    changes, ledger = agent_changes(ledger, [agent("b")])
    assert plain(changes) == [("agent:completed", {"agentId": "a", "type": "developer"})]
    assert [a.id for a in ledger.active] == ["b"]
    assert (len(ledger.announced), len(ledger.finished)) == (2, 1)


def test_agent_finished_by_status() -> None:
    _, ledger = agent_changes(AgentLedger(), [agent("a"), agent("b")])
    changes, ledger = agent_changes(ledger, [agent("a", "completed"), agent("b", "failed")])
    assert kinds(changes) == ["agent:completed", "agent:failed"]
    assert ledger.active == ()
    # Still listed as finished, or gone later: nothing more.
    assert agent_changes(ledger, [agent("a", "completed")])[0] == []
    assert agent_changes(ledger, [])[0] == []


def test_agent_seen_only_when_finished() -> None:
    changes, ledger = agent_changes(AgentLedger(), [agent("a", "done")])
    assert kinds(changes) == ["agent:spawned", "agent:completed"]
    assert ledger.active == ()


def test_agent_coming_back_is_not_announced_again() -> None:
    _, ledger = agent_changes(AgentLedger(), [agent("a")])
    _, ledger = agent_changes(ledger, [])
    changes, ledger = agent_changes(ledger, [agent("a")])
    assert changes == [] and ledger.active == ()
