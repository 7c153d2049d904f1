"""Changes made while no server runs are published by the next one, once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from loki_api.bus import EventBus
from loki_api.settings import Settings
from loki_api.state import StateStore
from loki_api.state.snapshot import SnapshotDir
from loki_api.statedir import StateDir

from .support import ServerProcess
from .test_store import Recorder, session_doc, write


def session_files(root: Path, session_id: str, status: str, tasks: list[dict]) -> Path:
    directory = root / ".loki" / "sessions" / session_id
    write(directory / "session.json", session_doc(session_id, status=status))
    write(directory / "tasks.json", {"tasks": tasks})
    return directory


def restart(tmp_path: Path, snapshots: dict | None) -> tuple[StateStore, Recorder]:
    bus = EventBus()
    store = StateStore(Settings(loki_dir=tmp_path), bus)
    events = Recorder(bus)
    store.load(snapshots)
    return store, events


def test_changes_while_down_are_published_once(tmp_path: Path) -> None:
    session_files(tmp_path, "ext1", "running", [{"id": "t1", "title": "A", "status": "pending"}])
    session_files(tmp_path, "gone", "running", [])
    first, events = restart(tmp_path, None)
    assert events.take() == []  # no snapshot yet: what is on disk counts as announced
    snapshots = {sid: first.snapshot_of(sid) for sid in ("ext1", "gone")}

    session_files(
        tmp_path,
        "ext1",
        "completed",
        [
            {"id": "t1", "title": "A", "status": "completed"},
            {"id": "t2", "title": "B", "status": "running"},
        ],
    )
    session_files(tmp_path, "new1", "running", [])
    for path in (tmp_path / ".loki" / "sessions" / "gone").iterdir():
        path.unlink()
    (tmp_path / ".loki" / "sessions" / "gone").rmdir()

    second, events = restart(tmp_path, snapshots)
    published = {(t, d.get("taskId") or d.get("status")) for t, d in events.take()}
    assert published == {
        ("task:completed", "t1"),
        ("task:created", "t2"),
        ("task:started", "t2"),
        ("session:completed", "completed"),
        ("session:started", "running"),
        ("session:stopped", "stopped"),
    }
    assert second.get("gone") is None and second.get("new1") is not None

    # The next restart, from the second server's snapshots, has nothing new to say.
    snapshots = {sid: second.snapshot_of(sid) for sid in ("ext1", "new1")}
    _, events = restart(tmp_path, snapshots)
    assert events.take() == []


def test_announcements_survive_a_restart(tmp_path: Path) -> None:
    from loki_api.models import AgentEventData

    session_files(tmp_path, "s1", "running", [])
    first, events = restart(tmp_path, None)
    first.report("s1", "agent:spawned", AgentEventData(agent_id="a1", type="dev"))
    assert [t for t, _ in events.take()] == ["agent:spawned"]
    snapshot = json.loads(json.dumps(first.snapshot_of("s1")))  # as written to disk
    second, events = restart(tmp_path, {"s1": snapshot})
    second.report("s1", "agent:spawned", AgentEventData(agent_id="a1", type="dev"))
    assert events.take() == []  # re-read output after a crash is not announced again


def test_snapshot_dir_round_trip(tmp_path: Path) -> None:
    snapshots = SnapshotDir(StateDir(tmp_path))
    assert not snapshots.exists() and snapshots.load_all() == {}
    snapshots.save("s1", {"phase": "x"})
    (tmp_path / "events" / "snapshots" / "broken.json").write_text("{nope")
    assert snapshots.load_all() == {"s1": {"phase": "x"}}
    snapshots.remove("s1")
    snapshots.remove("s1")
    assert snapshots.load_all() == {}


def test_a_restarted_server_publishes_what_changed_while_it_was_down(loki_dir: Path) -> None:
    session_files(loki_dir, "ext1", "running", [{"id": "t1", "title": "A", "status": "pending"}])
    with ServerProcess(loki_dir):
        pass  # a first server sees the session, then stops (SIGTERM)
    session_files(
        loki_dir, "ext1", "completed", [{"id": "t1", "title": "A", "status": "completed"}]
    )
    with ServerProcess(loki_dir) as server:
        history = httpx.get(
            f"{server.url}/api/events/history", params={"sessionId": "ext1"}
        ).json()["events"]
    assert sorted(e["type"] for e in history) == ["session:completed", "task:completed"]


def test_log_lines_written_while_down_are_published(loki_dir: Path) -> None:
    directory = session_files(loki_dir, "ext2", "running", [])
    log_file = directory / "agent.log"
    log_file.write_text("[INFO] before\n")
    with ServerProcess(loki_dir) as server:
        httpx.get(f"{server.url}/health/live")
        with log_file.open("a") as f:
            f.write("[INFO] seen live\n")
        for _ in range(500):  # until the first server has published it
            events = httpx.get(
                f"{server.url}/api/events/history", params={"sessionId": "ext2"}
            ).json()["events"]
            if events:
                break
            time.sleep(0.01)
    with log_file.open("a") as f:
        f.write("[WARN] written while down\n[ERROR] also while down\n")
    with ServerProcess(loki_dir) as server:
        events = httpx.get(f"{server.url}/api/events/history", params={"sessionId": "ext2"}).json()[
            "events"
        ]
    messages = [(e["type"], e["data"]["message"]) for e in events]
    assert messages == [
        ("log:info", "seen live"),
        ("log:warn", "written while down"),
        ("log:error", "also while down"),
    ]
