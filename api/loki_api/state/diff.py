"""What changed between two versions of a state document, as events (SPEC §4.3).

Pure functions: they take what was known and what was just read, and return the
`(event type, data Struct)` pairs to publish, in order. They never publish,
read files or look at the clock, so every rule is tested directly
(tests/test_diff.py). The store owns the bookkeeping they are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import (
    Agent,
    AgentEventData,
    Model,
    PhaseEventData,
    Session,
    SessionEventData,
    Task,
    TaskEventData,
)
from .documents import agent_failed, agent_finished

Change = tuple[str, Model]

# A session in one of these states is over: losing its file does not "stop" it.
TERMINAL_SESSION_STATUSES = frozenset({"stopped", "completed", "failed"})

_STATUS_EVENTS: dict[str, str] = {
    "paused": "session:paused",
    "stopping": "session:stopped",
    "stopped": "session:stopped",
    "completed": "session:completed",
    "failed": "session:failed",
}

_TASK_STATUS_EVENTS: dict[str, str] = {
    "running": "task:started",
    "completed": "task:completed",
    "failed": "task:failed",
}


# ------------------------------------------------------------------------ session


def session_event_for(previous: str | None, status: str) -> str | None:
    """The session event a move to `status` means, or None (`starting`→`running`)."""
    if status == "running":
        return "session:resumed" if previous == "paused" else None
    return _STATUS_EVENTS.get(status)


def _session_data(
    record: Session, status: str | None = None, message: str | None = None
) -> SessionEventData:
    return SessionEventData(
        status=status or record.status, message=message, exit_code=record.exit_code
    )


def session_changes(
    old: Session | None, new: Session | None, last_event: str | None
) -> list[Change]:
    """Session events for `old` → `new` (None = no session.json).

    `last_event` is the session event published last for this session: the same
    session event is never published twice in a row (`stopping` then `stopped`
    is one `session:stopped`).
    """
    changes: list[Change] = []
    if new is None:
        if (
            old is not None
            and old.status not in TERMINAL_SESSION_STATUSES
            and last_event != "session:stopped"
        ):
            changes.append(
                ("session:stopped", _session_data(old, "stopped", "session record removed"))
            )
        return changes
    if old is None:
        changes.append(("session:started", _session_data(new)))
        last_event = "session:started"
        previous = None
    elif old.status == new.status:
        return changes
    else:
        previous = old.status
    event = session_event_for(previous, new.status)
    if event is not None and event != last_event:
        changes.append((event, _session_data(new)))
    return changes


def last_session_event(changes: list[Change], before: str | None) -> str | None:
    """The session event last published once `changes` are out."""
    for event_type, _ in reversed(changes):
        if event_type.startswith("session:"):
            return event_type
    return before


def initial_session_event(record: Session) -> str:
    """What a session loaded silently from disk counts as having announced last."""
    return session_event_for(None, record.status) or "session:started"


# -------------------------------------------------------------------------- phase


def phase_changes(
    known: str | None,
    new: str | None,
    *,
    previous: str | None = None,
    progress: float | None = None,
) -> list[Change]:
    """`phase:completed` for the phase we announced last (if any), then `phase:started`.

    Called with the phase from `session.json` (`currentPhase`) and from
    `phase.json` (`current`) alike; `known` is the phase announced last from
    either, so the second source reporting the same phase publishes nothing.
    """
    if new is None or new == known:
        return []
    changes: list[Change] = []
    if known is not None:
        changes.append(("phase:completed", PhaseEventData(phase=known)))
    changes.append(
        (
            "phase:started",
            PhaseEventData(phase=new, previous_phase=known or previous, progress=progress),
        )
    )
    return changes


# -------------------------------------------------------------------------- tasks


def task_data(task: Task) -> TaskEventData:
    return TaskEventData(
        task_id=task.id,
        title=task.title,
        status=task.status,
        description=task.description or None,
        progress=task.progress,
        output=task.output,
        error=task.error,
        duration=task.duration,
    )


def task_changes(old: list[Task], new: list[Task]) -> list[Change]:
    """Task events for a new `tasks.json`.

    A new id → `task:created` (plus its status event when it is created already
    running, completed or failed); a status change → `task:started|completed|failed`;
    any other change of `progress` → `task:progress`. Removed tasks and other
    edits publish nothing.
    """
    before = {task.id: task for task in old}
    changes: list[Change] = []
    for task in new:
        previous = before.get(task.id)
        status_event = _TASK_STATUS_EVENTS.get(task.status)
        if previous is None:
            changes.append(("task:created", task_data(task)))
            if status_event is not None:
                changes.append((status_event, task_data(task)))
        elif previous.status != task.status and status_event is not None:
            changes.append((status_event, task_data(task)))
        elif previous.progress != task.progress:
            changes.append(("task:progress", task_data(task)))
    return changes


# ------------------------------------------------------------------------- agents


@dataclass(frozen=True)
class AgentLedger:
    """What is known about a session's agents: who was announced, who finished."""

    announced: frozenset[str] = frozenset()
    finished: frozenset[str] = frozenset()
    active: tuple[Agent, ...] = field(default_factory=tuple)


def agent_data(agent: Agent) -> AgentEventData:
    return AgentEventData(agent_id=agent.id, type=agent.type, model=agent.model, task=agent.task)


def agent_changes(ledger: AgentLedger, agents: list[Agent]) -> tuple[list[Change], AgentLedger]:
    """Agent events for a new `agents.json`, and the ledger after them.

    A new active agent → `agent:spawned`, once per agent ever. An agent whose
    status says it finished → `agent:completed` (`agent:failed` if it failed);
    an active agent that is gone from the file → `agent:completed`. Each agent
    finishes once.
    """
    announced = set(ledger.announced)
    finished = set(ledger.finished)
    changes: list[Change] = []
    listed: set[str] = set()
    for agent in agents:
        listed.add(agent.id)
        if agent.id not in announced:
            announced.add(agent.id)
            changes.append(("agent:spawned", agent_data(agent)))
        if agent_finished(agent) and agent.id not in finished:
            finished.add(agent.id)
            changes.append(
                ("agent:failed" if agent_failed(agent) else "agent:completed", agent_data(agent))
            )
    for agent in ledger.active:
        if agent.id not in listed and agent.id not in finished:
            finished.add(agent.id)
            changes.append(("agent:completed", agent_data(agent)))
    active = tuple(a for a in agents if not agent_finished(a) and a.id not in finished)
    return changes, AgentLedger(frozenset(announced), frozenset(finished), active)
