"""The state store: server writes and file changes publish each transition once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from loki_api.bus import EventBus
from loki_api.models import Session
from loki_api.settings import Settings
from loki_api.state import StateStore
from loki_api.statedir import StateDir


class Recorder:
    """The events a bus published, as (type, data) pairs, read once each."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.seen = 0

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        events = self.bus.history()[self.seen :]
        self.seen += len(events)
        return [(e.type, json.loads(e.json)["data"]) for e in events]

    def types(self) -> list[str]:
        return [t for t, _ in self.take()]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(loki_dir=tmp_path)


@pytest.fixture
def bus() -> EventBus:
    return EventBus(history=1000)


@pytest.fixture
def events(bus: EventBus) -> Recorder:
    return Recorder(bus)


@pytest.fixture
def store(settings: Settings, bus: EventBus) -> StateStore:
    store = StateStore(settings, bus)
    store.load()
    return store


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def session_doc(session_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": session_id,
        "provider": "claude",
        "status": "running",
        "startedAt": "2026-01-01T00:00:00.000Z",
        **fields,
    }


# ----------------------------------------------------------------- server writes


def test_create_writes_session_json_and_announces_once(store: StateStore, events: Recorder) -> None:
    state = store.create(Session(id="s1", status="starting", prd_path="prd.md"))
    assert state.managed
    on_disk = json.loads((state.dir / "session.json").read_text())
    assert on_disk["id"] == "s1" and on_disk["status"] == "starting"
    assert on_disk["prdPath"] == "prd.md" and on_disk["startedAt"]
    assert events.take() == [("session:started", {"status": "starting"})]
    # The watcher reading our own write publishes nothing.
    store.apply_file(state.dir / "session.json")
    assert events.take() == []


def test_update_record_publishes_each_transition_once(store: StateStore, events: Recorder) -> None:
    state = store.create(Session(id="s1"))
    events.take()
    assert store.update_record("s1", status="running", pid=42).pid == 42
    assert events.take() == []  # starting → running says nothing new
    store.update_record("s1", status="paused")
    store.update_record("s1", status="running")
    store.update_record("s1", status="stopping")
    store.update_record("s1", status="stopped")
    assert events.types() == ["session:paused", "session:resumed", "session:stopped"]
    on_disk = json.loads((state.dir / "session.json").read_text())
    assert on_disk["status"] == "stopped" and on_disk["pid"] == 42
    store.apply_file(state.dir / "session.json")
    assert events.take() == []


def test_update_record_failed_carries_exit_code(store: StateStore, events: Recorder) -> None:
    store.create(Session(id="s1", status="running"))
    events.take()
    store.update_record("s1", status="failed", exit_code=3)
    assert events.take() == [("session:failed", {"status": "failed", "exitCode": 3})]


def test_update_record_unknown_session(store: StateStore) -> None:
    with pytest.raises(KeyError):
        store.update_record("nope", status="running")


def test_update_record_sets_updated_at(store: StateStore) -> None:
    store._clock = lambda: 1_800_000_000.0
    store.create(Session(id="s1"))
    store._clock = lambda: 1_800_000_001.5
    record = store.update_record("s1", status="running")
    assert record.updated_at == "2027-01-15T08:00:01.500Z"


def test_create_rejects_bad_or_duplicate_ids(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.create(Session(id="../evil"))
    store.create(Session(id="s1"))
    with pytest.raises(ValueError):
        store.create(Session(id="s1"))


# -------------------------------------------------------------- managed fields


def test_managed_session_ignores_stale_status_from_the_child(
    store: StateStore, events: Recorder
) -> None:
    state = store.create(Session(id="s1", status="running", pid=7))
    store.update_record("s1", status="paused")
    events.take()
    # The child rewrites session.json with a stale status, and its own fields.
    doc = json.loads((state.dir / "session.json").read_text())
    doc.update(
        status="running",
        pid=999,
        exitCode=1,
        currentPhase="planning",
        taskCount=4,
        completedTasks=1,
    )
    store.files.write_atomic(state.dir / "session.json", json.dumps(doc).encode())
    store.apply_file(state.dir / "session.json")
    record = store.get("s1").record  # type: ignore[union-attr]
    assert (record.status, record.pid, record.exit_code) == ("paused", 7, None)
    assert (record.current_phase, record.task_count, record.completed_tasks) == ("planning", 4, 1)
    assert events.take() == [("phase:started", {"phase": "planning"})]
    # The server's next write keeps the child's latest values.
    store.update_record("s1", status="running")
    on_disk = json.loads((state.dir / "session.json").read_text())
    assert on_disk["taskCount"] == 4 and on_disk["currentPhase"] == "planning"
    assert events.types() == ["session:resumed"]


def test_unmanaged_session_takes_the_file_as_it_is(
    store: StateStore, events: Recorder, settings: Settings
) -> None:
    path = write(settings.sessions_dir / "ext" / "session.json", session_doc("ext"))
    store.apply_file(path)
    assert events.types() == ["session:started"]
    write(path, session_doc("ext", status="completed", exitCode=0))
    store.apply_file(path)
    assert events.take() == [("session:completed", {"status": "completed", "exitCode": 0})]
    state = store.get("ext")
    assert state is not None and not state.managed and state.record.status == "completed"


def test_adopt_marks_on_disk_session_managed(settings: Settings, bus: EventBus) -> None:
    write(settings.sessions_dir / "s1" / "session.json", session_doc("s1", pid=5))
    store = StateStore(settings, bus)
    store.load()
    assert store.adopt("nope") is None
    state = store.adopt("s1")
    assert state is not None and state.managed and state.record.pid == 5


# ------------------------------------------------------------------ apply_file


def test_load_is_silent_and_reads_every_file(settings: Settings, bus: EventBus) -> None:
    base = settings.sessions_dir / "s1"
    write(base / "session.json", session_doc("s1", currentPhase="planning"))
    write(base / "tasks.json", {"tasks": [{"id": 1, "subject": "a", "status": "done"}]})
    write(base / "agents.json", {"active": [{"id": "a1", "type": "dev"}]})
    write(settings.sessions_dir / "bad" / "session.json", [1, 2])
    (settings.sessions_dir / "no-record").mkdir()
    write(settings.state_dir / "state.json", {"currentSession": "s1"})
    store = StateStore(settings, bus)
    store.load()
    assert bus.published == 0
    assert [s.id for s in store.all()] == ["s1"]
    state = store.get("s1")
    assert state is not None
    assert [(t.id, t.title, t.status) for t in state.tasks] == [("1", "a", "completed")]
    assert [a.id for a in state.agents] == ["a1"] and state.agents_spawned == 1
    assert store.current_session == "s1"
    # Rewriting what was loaded publishes nothing.
    write(base / "session.json", session_doc("s1", currentPhase="planning"))
    store.apply_file(base / "session.json")
    assert bus.published == 0


def test_one_event_per_transition_from_files(
    store: StateStore, events: Recorder, settings: Settings
) -> None:
    base = settings.sessions_dir / "s1"
    # tasks.json written before session.json is picked up with the session.
    write(base / "tasks.json", {"tasks": [{"id": "t1", "title": "T", "status": "pending"}]})
    store.apply_file(base / "tasks.json")
    assert events.take() == []
    store.apply_file(write(base / "session.json", session_doc("s1")))
    assert events.types() == ["session:started", "task:created"]
    store.apply_file(
        write(base / "tasks.json", {"tasks": [{"id": "t1", "title": "T", "status": "in_progress"}]})
    )
    store.apply_file(base / "tasks.json")  # a second notification of the same content
    assert events.types() == ["task:started"]
    store.apply_file(write(base / "phase.json", {"current": "planning"}))
    store.apply_file(write(base / "session.json", session_doc("s1", currentPhase="planning")))
    assert events.types() == ["phase:started"]
    store.apply_file(write(base / "phase.json", {"current": "development", "progress": 0.5}))
    assert events.take() == [
        ("phase:completed", {"phase": "planning"}),
        ("phase:started", {"phase": "development", "previousPhase": "planning", "progress": 0.5}),
    ]
    assert store.get("s1").record.current_phase == "development"  # type: ignore[union-attr]


def test_broken_json_is_skipped_then_read_when_fixed(
    store: StateStore, events: Recorder, settings: Settings
) -> None:
    base = settings.sessions_dir / "s1"
    store.apply_file(write(base / "session.json", session_doc("s1")))
    events.take()
    (base / "session.json").write_text('{"status": "pau')
    store.apply_file(base / "session.json")
    (base / "session.json").write_text('{"status": "nope"}')  # a bogus status is not an event
    store.apply_file(base / "session.json")
    assert events.take() == []
    assert store.get("s1").record.status == "running"  # type: ignore[union-attr]
    store.apply_file(write(base / "session.json", session_doc("s1", status="paused")))
    assert events.types() == ["session:paused"]


def test_session_json_removed(store: StateStore, events: Recorder, settings: Settings) -> None:
    base = settings.sessions_dir / "s1"
    store.apply_file(write(base / "session.json", session_doc("s1")))
    events.take()
    (base / "session.json").unlink()
    store.apply_file(base / "session.json")
    assert events.take() == [
        ("session:stopped", {"status": "stopped", "message": "session record removed"})
    ]
    assert store.get("s1") is None
    store.apply_file(base / "session.json")
    assert events.take() == []


def test_managed_session_survives_its_file_being_removed(
    store: StateStore, events: Recorder
) -> None:
    state = store.create(Session(id="s1", status="running"))
    events.take()
    (state.dir / "session.json").unlink()
    store.apply_file(state.dir / "session.json")
    assert events.take() == [] and store.get("s1") is state
    store.update_record("s1", status="paused")
    assert (state.dir / "session.json").exists()


def test_new_session_directory_is_read_whole(
    store: StateStore, events: Recorder, settings: Settings
) -> None:
    base = settings.sessions_dir / "s2"
    write(base / "session.json", session_doc("s2", status="paused"))
    write(base / "agents.json", {"active": [{"id": "a", "type": "qa", "status": "failed"}]})
    store.apply_file(base)
    assert events.types() == ["session:started", "session:paused", "agent:spawned", "agent:failed"]


def test_ignored_paths(store: StateStore, events: Recorder, settings: Settings) -> None:
    for path in (
        settings.sessions_dir / "s1" / "notes.txt",
        settings.sessions_dir / "s1" / ".session.json.tmp",
        settings.sessions_dir / "bad id" / "session.json",
        settings.loki_dir / "elsewhere.json",
    ):
        write(path, session_doc("x"))
        store.apply_file(path)
    assert events.take() == [] and len(store) == 0


def test_all_is_newest_first_and_cached(store: StateStore, settings: Settings) -> None:
    for sid, started in (("a", "2026-01-02"), ("b", "2026-01-03"), ("c", "2026-01-01")):
        store.apply_file(
            write(settings.sessions_dir / sid / "session.json", session_doc(sid, startedAt=started))
        )
    first = store.all()
    assert [s.id for s in first] == ["b", "a", "c"]
    assert store.all() is first
    store.remove("b")
    assert [s.id for s in store.all()] == ["a", "c"]


def test_views_are_kept_until_sessions_or_tasks_change(
    store: StateStore, settings: Settings
) -> None:
    builds: list[list[str]] = []

    def task_ids() -> list[str]:
        builds.append([t.id for s in store.all() for t in s.tasks])
        return builds[-1]

    write(settings.sessions_dir / "a" / "tasks.json", [{"id": "t1", "status": "pending"}])
    store.apply_file(write(settings.sessions_dir / "a" / "session.json", session_doc("a")))
    assert store.view("ids", task_ids) == ["t1"]
    assert store.view("ids", task_ids) is builds[0]  # kept, not built again
    store.apply_file(
        write(
            settings.sessions_dir / "a" / "tasks.json",
            [{"id": "t1", "status": "running"}, {"id": "t2", "status": "queued"}],
        )
    )
    assert store.view("ids", task_ids) == ["t1", "t2"]
    store.apply_file(
        write(
            settings.sessions_dir / "a" / "tasks.json",
            [{"id": "t1", "status": "running"}, {"id": "t2", "status": "queued"}],
        )
    )
    assert len(builds) == 2  # identical bytes: nothing changed
    store.apply_file(
        write(
            settings.sessions_dir / "b" / "session.json",
            session_doc("b", startedAt="2026-02-01T00:00:00.000Z"),
        )
    )
    write(settings.sessions_dir / "b" / "tasks.json", [{"id": "t3", "status": "pending"}])
    store.apply_file(settings.sessions_dir / "b" / "tasks.json")
    assert store.view("ids", task_ids) == ["t3", "t1", "t2"]
    store.remove("b")
    assert store.view("ids", task_ids) == ["t1", "t2"]
    assert len(builds) == 4


def test_rescan_publishes_what_changed_while_not_watching(
    store: StateStore, events: Recorder, settings: Settings
) -> None:
    store.apply_file(write(settings.sessions_dir / "a" / "session.json", session_doc("a")))
    store.apply_file(write(settings.sessions_dir / "b" / "session.json", session_doc("b")))
    events.take()
    write(settings.sessions_dir / "a" / "session.json", session_doc("a", status="completed"))
    (settings.sessions_dir / "b" / "session.json").unlink()
    write(settings.sessions_dir / "c" / "session.json", session_doc("c"))
    store.rescan()
    assert sorted(events.types()) == ["session:completed", "session:started", "session:stopped"]


# -------------------------------------------------------------- atomic writes


def test_write_atomically_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "session.json"
    target.write_text("old")
    inode = os.stat(target).st_ino
    StateDir(tmp_path).write_atomic("session.json", b'{"new": true}')
    assert target.read_bytes() == b'{"new": true}'
    assert os.stat(target).st_ino != inode  # renamed over, not rewritten in place
    assert os.listdir(tmp_path) == ["session.json"]


def test_record_on_disk_decodes_as_session(store: StateStore) -> None:
    state = store.create(Session(id="s1", provider="codex"))
    record = msgspec.json.decode((state.dir / "session.json").read_bytes(), type=Session)
    assert record == state.record


def test_session_ids_must_match_whole() -> None:
    from loki_api.state.store import valid_session_id

    assert valid_session_id("session_1_ab.c-d")
    for bad in ("abc\n", ".", "..", "../x", "a/b", "", "-x", "x" * 129):
        assert not valid_session_id(bad), bad


def test_one_change_publishes_at_most_max_items_events(tmp_path: Path, bus: EventBus) -> None:
    """An agents.json listing finished agents gives a spawn and an end per agent: capped."""
    settings = Settings(loki_dir=tmp_path, max_state_items=4)
    store = StateStore(settings, bus)
    store.load()
    events = Recorder(bus)
    write(settings.sessions_dir / "s1" / "session.json", session_doc("s1"))
    store.apply_file(settings.sessions_dir / "s1" / "session.json")
    events.take()
    agents = [{"id": f"a{n}", "type": "dev", "status": "completed"} for n in range(4)]
    path = write(settings.sessions_dir / "s1" / "agents.json", {"active": agents})
    store.apply_file(path)
    assert len(events.take()) == 4  # of the 8 facts (4 spawns, 4 ends)
