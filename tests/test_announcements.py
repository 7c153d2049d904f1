"""A fact reported by both the CLI's output and its state files is published once."""

from __future__ import annotations

from pathlib import Path

from loki_api.bus import EventBus
from loki_api.models import (
    AgentEventData,
    LogEventData,
    PhaseEventData,
    Session,
    SessionEventData,
    TaskEventData,
)
from loki_api.settings import Settings
from loki_api.state import StateStore
from loki_api.state.announcements import Announcements

from .test_store import Recorder, write


def task(
    event_type: str, task_id: str = "t1", status: str = "running", progress: float | None = None
) -> tuple[str, TaskEventData]:
    return event_type, TaskEventData(task_id=task_id, title="T", status=status, progress=progress)


def test_phase_repeats_are_dropped_but_reentry_is_not() -> None:
    a = Announcements()
    started = PhaseEventData(phase="planning")
    assert a.admit("phase:started", started)
    assert None is a.admit("phase:started", started)
    assert a.admit("phase:completed", started)
    assert None is a.admit("phase:completed", started)
    assert a.admit("phase:started", PhaseEventData(phase="development"))
    assert a.admit("phase:started", started)  # planning entered again
    assert a.admit("phase:completed", started)


def test_task_events_once_per_fact() -> None:
    a = Announcements()
    assert a.admit(*task("task:created", status="pending"))
    assert None is a.admit(*task("task:created", status="pending"))
    assert a.admit(*task("task:started"))
    assert None is a.admit(*task("task:started"))
    assert a.admit(*task("task:progress", progress=0.5))
    assert None is a.admit(*task("task:progress", progress=0.5))
    assert a.admit(*task("task:progress", progress=0.7))
    assert a.admit(*task("task:completed", status="completed"))
    assert None is a.admit(*task("task:completed", status="completed"))
    assert a.admit(*task("task:started", task_id="t2"))
    assert None is a.admit(*task("task:created", task_id="t2"))  # known by now


def test_agents_once_and_output_always() -> None:
    a = Announcements()
    spawned = AgentEventData(agent_id="a1", type="dev")
    assert a.admit("agent:spawned", spawned)
    assert None is a.admit("agent:spawned", spawned)
    assert a.admit("agent:output", spawned) and a.admit("agent:output", spawned)
    assert a.admit("agent:completed", spawned)
    assert None is a.admit("agent:failed", spawned)
    assert a.admit("log:info", LogEventData(level="info", message="x"))


def test_output_then_file_publishes_once(tmp_path: Path) -> None:
    bus = EventBus()
    events = Recorder(bus)
    store = StateStore(Settings(loki_dir=tmp_path), bus)
    store.load()
    state = store.create(Session(id="s1", status="running"))
    events.take()
    store.report("s1", "phase:started", PhaseEventData(phase="development"))
    store.report("s1", *task("task:completed", status="completed"))
    store.report("s1", "agent:spawned", AgentEventData(agent_id="a1", type="dev"))
    assert events.types() == ["phase:started", "task:completed", "agent:spawned"]
    write(state.dir / "phase.json", {"current": "development"})
    store.apply_file(state.dir / "phase.json")
    write(state.dir / "tasks.json", {"tasks": [{"id": "t1", "title": "T", "status": "completed"}]})
    store.apply_file(state.dir / "tasks.json")
    write(state.dir / "agents.json", {"active": [{"id": "a1", "type": "dev"}]})
    store.apply_file(state.dir / "agents.json")
    # Nothing new: t1 was known from its completion, the phase and agent were announced.
    assert events.types() == []


def test_file_then_output_publishes_once(tmp_path: Path) -> None:
    bus = EventBus()
    events = Recorder(bus)
    store = StateStore(Settings(loki_dir=tmp_path), bus)
    store.load()
    state = store.create(Session(id="s1", status="running"))
    write(state.dir / "phase.json", {"current": "testing"})
    store.apply_file(state.dir / "phase.json")
    assert events.types() == ["session:started", "phase:started"]
    store.report("s1", "phase:started", PhaseEventData(phase="testing"))
    store.report("s1", "log:info", LogEventData(level="info", message="hello"))
    store.report("s1", "session:started", SessionEventData(status="running"))
    assert events.types() == ["log:info"]
    store.report("other", "log:warn", LogEventData(level="warn", message="no session yet"))
    assert events.types() == ["log:warn"]


def test_a_spawn_line_without_an_id_and_the_agents_file_are_one_agent() -> None:
    line = AgentEventData(agent_id="developer", type="developer")  # "Spawning developer agent"
    named = AgentEventData(agent_id="agent-001", type="developer", task="t1")
    a = Announcements()
    assert a.admit("agent:spawned", line)  # the line came first
    assert None is a.admit("agent:spawned", named)  # the file names the same agent
    ended = a.admit("agent:completed", named)
    assert ended is not None and ended.agent_id == "developer"  # the id subscribers know
    b = Announcements()
    assert b.admit("agent:spawned", named)  # the file came first
    assert None is b.admit("agent:spawned", line)
    assert b.admit("agent:completed", named)
    assert b.admit("agent:spawned", line)  # a new developer once the first has finished
    assert None is b.admit("agent:spawned", AgentEventData(agent_id="agent-002", type="developer"))

    assert (a.agents_announced, a.agents_ended) == (1, 1)
    assert (b.agents_announced, b.agents_ended) == (2, 1)

    c = Announcements()
    assert c.admit("agent:spawned", line)
    # Its end is printed before the agents file naming it is read (a late file event).
    ended = c.admit("agent:completed", named)
    assert ended is not None and ended.agent_id == "developer"
    assert None is c.admit("agent:spawned", named)  # the late file: repeats only
    assert None is c.admit("agent:completed", named)
    assert (c.agents_announced, c.agents_ended) == (1, 1)


def test_agents_only_the_output_announced_are_counted(tmp_path: Path) -> None:
    """`agents.json` read only after they all finished (coalesced writes): still counted."""
    store = StateStore(Settings(loki_dir=tmp_path), EventBus())
    store.load()
    state = store.create(Session(id="s1", status="running"))
    for n, agent_type in enumerate(("planner", "developer", "tester")):
        store.report("s1", "agent:spawned", AgentEventData(agent_id=agent_type, type=agent_type))
        named = AgentEventData(agent_id=f"agent-{n}", type=agent_type)
        store.report("s1", "agent:completed", named)
    assert (state.agents_spawned, state.agents_completed, len(state.agents)) == (3, 3, 0)


def test_a_phase_line_completes_the_previous_phase_first(tmp_path: Path) -> None:
    bus = EventBus()
    events = Recorder(bus)
    store = StateStore(Settings(loki_dir=tmp_path), bus)
    store.load()
    state = store.create(Session(id="s1", status="running"))
    store.report("s1", "phase:started", PhaseEventData(phase="planning"))
    store.report("s1", "phase:started", PhaseEventData(phase="development"))
    write(state.dir / "phase.json", {"current": "development", "previous": "planning"})
    store.apply_file(state.dir / "phase.json")
    taken = events.take()
    assert [(t, d.get("phase")) for t, d in taken] == [
        ("session:started", None),
        ("phase:started", "planning"),
        ("phase:completed", "planning"),
        ("phase:started", "development"),
    ]
    assert taken[-1][1]["previousPhase"] == "planning"
