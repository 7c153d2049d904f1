"""The state watcher: file writes become events within milliseconds.

Three tiers: the hand-off pieces alone (coalescer, path filter, handler), the
watcher in-process with a real watchdog observer (supervision and restart),
and a real server with a real SSE client, written to the way real writers do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from watchdog.events import FileModifiedEvent, FileMovedEvent

from loki_api.bus import EventBus
from loki_api.settings import Settings
from loki_api.state import StateStore
from loki_api.watcher import StateWatcher
from loki_api.watcher.handler import HandOff, PathFilter
from loki_api.watcher.service import Coalescer

from .support import ServerProcess, SSEMessage, SSEReader, sse_stream, wait_for


def write_in_place(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:  # truncate, then write: readers may see it half done
        handle.write(json.dumps(doc))


def write_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def append(path: Path, data: str) -> None:
    with open(path, "a") as handle:
        handle.write(data)


def session_doc(status: str = "running", **fields: Any) -> dict[str, Any]:
    return {
        "status": status,
        "provider": "claude",
        "startedAt": "2026-01-01T00:00:00.000Z",
        **fields,
    }


# ------------------------------------------------------------------ coalescer


@pytest.mark.anyio
async def test_coalescer_merges_a_burst_into_one_read() -> None:
    reads: list[str] = []
    coalescer = Coalescer(asyncio.get_running_loop(), lambda p: reads.append(p) is None and False)
    for _ in range(5):
        coalescer.notify("a")
    coalescer.notify("b")
    assert reads == []  # nothing read synchronously: on the next loop turn
    await anyio.sleep(0)
    assert reads == ["a", "b"]
    assert (coalescer.notifications, coalescer.reads) == (6, 2)


@pytest.mark.anyio
async def test_coalescer_reads_again_when_notified_during_a_read() -> None:
    reads: list[str] = []
    coalescer: Coalescer

    def process(path: str) -> bool:
        reads.append(path)
        if len(reads) == 1:
            coalescer.notify(path)  # a write landed while we were reading
        return False

    coalescer = Coalescer(asyncio.get_running_loop(), process)
    coalescer.notify("a")
    await wait_for(lambda: len(reads) == 2, timeout=2)
    await anyio.sleep(0.01)
    assert reads == ["a", "a"]


@pytest.mark.anyio
async def test_coalescer_survives_a_failing_read_and_rereads_on_request() -> None:
    calls: list[str] = []

    def process(path: str) -> bool:
        calls.append(path)
        if path == "bad":
            raise ValueError("boom")
        return path == "more" and calls.count("more") < 3

    coalescer = Coalescer(asyncio.get_running_loop(), process)
    coalescer.notify("bad")
    coalescer.notify("more")
    await wait_for(lambda: calls.count("more") == 3, timeout=2)
    assert calls[0] == "bad"


@pytest.mark.anyio
async def test_coalescer_threadsafe_hand_off() -> None:
    reads: list[str] = []
    coalescer = Coalescer(asyncio.get_running_loop(), lambda p: reads.append(p) is None and False)
    await anyio.to_thread.run_sync(coalescer.notify_threadsafe, "x")
    await wait_for(lambda: reads == ["x"], timeout=2)


# ---------------------------------------------------------------- path filter


def test_path_filter(tmp_path: Path) -> None:
    state = tmp_path / ".loki"
    sessions = state / "sessions"
    wanted = PathFilter(state, sessions)
    yes = [
        sessions / "s1" / name
        for name in ("session.json", "tasks.json", "phase.json", "agents.json", "run.log")
    ]
    no = [
        sessions / "s1" / name
        for name in (".session.json.tmp", "output.txt", "PAUSE", "HUMAN_INPUT.md", "notes.json")
    ]
    no += [
        state / "events" / "events.log",
        sessions / "s1" / "sub" / "session.json",
        sessions / "session.json",
        state / "other.json",
    ]
    assert all(wanted(os.fspath(p), False) for p in yes)
    assert not any(wanted(os.fspath(p), False) for p in no)
    assert wanted(os.fspath(state / "state.json"), False)
    assert wanted(os.fspath(sessions / "s2"), True)
    assert not wanted(os.fspath(sessions / "s2" / "deeper"), True)


def test_hand_off_uses_the_destination_of_a_rename(tmp_path: Path) -> None:
    sessions = tmp_path / ".loki" / "sessions"
    seen: list[str] = []
    handler = HandOff(PathFilter(tmp_path / ".loki", sessions), seen.append)
    tmp = os.fspath(sessions / "s1" / ".session.json.tmp")
    final = os.fspath(sessions / "s1" / "session.json")
    handler.dispatch(FileMovedEvent(tmp, final))
    handler.dispatch(FileModifiedEvent(tmp))
    assert seen == [final]


def test_hand_off_never_raises_into_watchdog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: str) -> None:
        raise RuntimeError("loop gone")

    sessions = tmp_path / ".loki" / "sessions"
    handler = HandOff(PathFilter(tmp_path / ".loki", sessions), broken)
    handler.dispatch(FileModifiedEvent(os.fspath(sessions / "s1" / "session.json")))
    assert "could not hand off" in caplog.text


# ------------------------------------------------------- in-process watcher


class Watched:
    def __init__(self, settings: Settings, store: StateStore, watcher: StateWatcher) -> None:
        self.settings = settings
        self.store = store
        self.bus = store.bus
        self.watcher = watcher

    def types(self, session_id: str) -> list[str]:
        return [e.type for e in self.bus.history() if e.session_id == session_id]


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Watched]:
    settings = Settings(loki_dir=tmp_path)
    bus = EventBus(history=1000)
    bus.bind_loop()
    store = StateStore(settings, bus)
    store.load()
    watcher = StateWatcher(settings, store, bus, check_interval=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        yield Watched(settings, store, watcher)
        tg.cancel_scope.cancel()
    assert watcher.problem() == "file watcher is not running"


@pytest.mark.anyio
async def test_in_process_watch_and_restart_after_the_observer_dies(watched: Watched) -> None:
    base = watched.settings.sessions_dir / "s1"
    assert watched.watcher.problem() is None
    write_atomic(base / "session.json", session_doc())
    await wait_for(lambda: watched.types("s1") == ["session:started"], timeout=5)

    # Kill the observer thread the hard way; the readiness check sees it at once.
    observer = watched.watcher._observer
    assert observer is not None
    observer.stop()
    observer.join()
    assert watched.watcher.problem() == "file watcher thread has stopped"
    # A change made while nobody watches is published after the restart (rescan).
    write_in_place(base / "session.json", session_doc("paused"))
    await wait_for(lambda: watched.watcher.restarts == 1, timeout=5)
    await wait_for(lambda: "session:paused" in watched.types("s1"), timeout=5)
    assert watched.watcher.problem() is None
    # And the new observer watches.
    write_in_place(base / "session.json", session_doc("running"))
    await wait_for(lambda: watched.types("s1")[-1] == "session:resumed", timeout=5)
    assert watched.types("s1") == ["session:started", "session:paused", "session:resumed"]


@pytest.mark.anyio
async def test_in_process_overflow_triggers_a_rescan(watched: Watched) -> None:
    base = watched.settings.sessions_dir / "s1"
    write_atomic(base / "session.json", session_doc())
    await wait_for(lambda: watched.types("s1") == ["session:started"], timeout=5)
    # Lose events: the observer stays alive but stops delivering, like after an overflow.
    observer = watched.watcher._observer
    assert observer is not None
    observer.unschedule_all()
    write_atomic(base / "tasks.json", {"tasks": [{"id": "t"}]})
    await anyio.sleep(0.2)
    assert "task:created" not in watched.types("s1")
    # watchdog reports an overflow only through its log; that triggers a rescan.
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    await wait_for(lambda: "task:created" in watched.types("s1"), timeout=5)
    assert watched.types("s1") == ["session:started", "task:created"]


@pytest.mark.anyio
async def test_in_process_watcher_that_cannot_start_keeps_trying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loki_api.watcher.service as service

    attempts: list[int] = []
    real_observer = service.Observer

    def flaky_observer() -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError(28, "inotify watch limit reached")
        return real_observer()

    monkeypatch.setattr(service, "Observer", flaky_observer)
    settings = Settings(loki_dir=tmp_path)
    bus = EventBus(history=100)
    bus.bind_loop()
    store = StateStore(settings, bus)
    store.load()
    watcher = StateWatcher(settings, store, bus, check_interval=0.02)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)  # the server still starts
        assert watcher.problem() == "file watcher is not running"
        await wait_for(lambda: watcher.problem() is None, timeout=5)
        assert len(attempts) == 3
        write_atomic(settings.sessions_dir / "s1" / "session.json", session_doc())
        await wait_for(lambda: bus.published == 1, timeout=5)
        tg.cancel_scope.cancel()


# --------------------------------------------------------------- live server


@pytest.mark.anyio
async def test_in_process_output_growth_wakes_the_supervisor_without_inotify_of_its_own(
    tmp_path: Path,
) -> None:
    settings = Settings(loki_dir=tmp_path)
    bus = EventBus(history=10)
    bus.bind_loop()
    store = StateStore(settings, bus)
    grew: list[str] = []
    watcher = StateWatcher(settings, store, bus, on_output=grew.append)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        output = settings.output_dir / "s1" / "stdout.txt"
        output.parent.mkdir(parents=True)
        output.write_bytes(b"a line\n")
        await wait_for(lambda: "s1" in grew, timeout=5)
        tg.cancel_scope.cancel()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server (no --simulate: the files are written by the tests) for this module."""
    loki_dir = tmp_path_factory.mktemp("watched") / "project"
    loki_dir.mkdir()
    with ServerProcess(loki_dir) as proc:
        yield proc


def sessions_dir(server: ServerProcess) -> Path:
    return server.loki_dir / ".loki" / "sessions"


class Timeline:
    """The events of one session read from a live stream, minus heartbeats."""

    def __init__(self, reader: SSEReader, session_id: str) -> None:
        self.reader = reader
        self.session_id = session_id

    async def take(self, until: str, timeout: float = 5.0) -> list[SSEMessage]:
        """This session's events up to and including the first of type `until`."""
        seen = await self.reader.until(
            lambda m: m.event == until and m.json()["sessionId"] == self.session_id, timeout=timeout
        )
        return [
            m
            for m in seen
            if m.json().get("sessionId") == self.session_id and m.event != "heartbeat"
        ]

    async def types(self, until: str, timeout: float = 5.0) -> list[str]:
        return [m.event for m in await self.take(until, timeout)]

    async def sentinel(self, path: Path, timeout: float = 5.0) -> list[str]:
        """Append a log line and return every event before it: proves nothing else came."""
        append(path, "[DEBUG] sentinel\n")
        seen = await self.take("log:debug", timeout)
        return [m.event for m in seen[:-1]]


@pytest.mark.anyio
async def test_live_in_place_and_atomic_writes(live: ServerProcess) -> None:
    base = sessions_dir(live) / "live-writes"
    async with sse_stream(live.url) as reader:
        timeline = Timeline(reader, "live-writes")
        write_in_place(base / "session.json", session_doc())
        assert await timeline.types("session:started") == ["session:started"]
        write_atomic(base / "session.json", session_doc("paused"))
        assert await timeline.types("session:paused") == ["session:paused"]
        write_in_place(base / "session.json", session_doc("running"))
        assert await timeline.types("session:resumed") == ["session:resumed"]
        write_atomic(base / "session.json", session_doc("running"))  # unchanged rewrite
        write_atomic(base / "phase.json", {"current": "planning"})
        events = await timeline.take("phase:started")
        assert [m.event for m in events] == ["phase:started"]
        assert events[0].json()["data"] == {"phase": "planning"}
        assert await timeline.sentinel(base / "run.log") == []


@pytest.mark.anyio
async def test_live_tasks_and_agents(live: ServerProcess) -> None:
    base = sessions_dir(live) / "live-tasks"
    async with sse_stream(live.url) as reader:
        timeline = Timeline(reader, "live-tasks")
        write_atomic(base / "session.json", session_doc())
        await timeline.take("session:started")
        write_in_place(
            base / "tasks.json",
            {
                "tasks": [
                    {"id": 1, "subject": "Plan", "status": "pending"},
                    {"id": 2, "title": "Build", "status": "in_progress"},
                ]
            },
        )
        events = await timeline.take("task:started")
        assert [m.event for m in events] == ["task:created", "task:created", "task:started"]
        assert events[0].json()["data"] == {"taskId": "1", "title": "Plan", "status": "pending"}
        write_atomic(
            base / "tasks.json",
            [
                {"id": 1, "subject": "Plan", "status": "pending", "progress": 0.5},
                {"id": 2, "title": "Build", "status": "done"},
            ],
        )
        assert await timeline.types("task:completed") == ["task:progress", "task:completed"]
        write_atomic(base / "agents.json", {"active": [{"id": "a1", "type": "developer"}]})
        assert await timeline.types("agent:spawned") == ["agent:spawned"]
        write_atomic(base / "agents.json", {"active": [{"id": "a1", "type": "developer"}]})
        write_in_place(base / "agents.json", {"active": []})
        assert await timeline.types("agent:completed") == ["agent:completed"]
        assert await timeline.sentinel(base / "run.log") == []

        async with httpx.AsyncClient(base_url=live.url) as client:
            detail = (await client.get("/api/sessions/live-tasks")).json()
        assert detail["session"]["status"] == "running"
        assert detail["tasks"]["total"] == 2 and detail["tasks"]["completed"] == 1
        assert detail["agents"] == {"active": 0, "spawned": 1, "completed": 1}


@pytest.mark.anyio
async def test_live_burst_keeps_the_final_state(live: ServerProcess) -> None:
    base = sessions_dir(live) / "live-burst"
    async with sse_stream(live.url) as reader:
        timeline = Timeline(reader, "live-burst")
        write_atomic(base / "session.json", session_doc())
        await timeline.take("session:started")
        for i in range(30):  # a burst, alternating writers, ending completed
            writer = write_in_place if i % 2 else write_atomic
            writer(base / "session.json", session_doc("running", taskCount=i))
        write_in_place(base / "session.json", session_doc("completed", exitCode=0))
        events = await timeline.take("session:completed")
        assert [m.event for m in events] == ["session:completed"]
        assert events[-1].json()["data"] == {"status": "completed", "exitCode": 0}
        assert await timeline.sentinel(base / "run.log") == []


@pytest.mark.anyio
async def test_live_broken_json_then_fixed(live: ServerProcess) -> None:
    base = sessions_dir(live) / "live-broken"
    async with sse_stream(live.url) as reader:
        timeline = Timeline(reader, "live-broken")
        write_atomic(base / "session.json", session_doc())
        await timeline.take("session:started")
        (base / "session.json").write_text('{"status": "pau')
        (base / "tasks.json").write_text('{"tasks": "nope"}')
        assert await timeline.sentinel(base / "run.log") == []
        write_in_place(base / "session.json", session_doc("paused"))
        assert await timeline.types("session:paused") == ["session:paused"]
    assert httpx.get(f"{live.url}/health/ready").json()["checks"]["watcher"]["ok"] is True


@pytest.mark.anyio
async def test_live_removal_and_new_directories(live: ServerProcess) -> None:
    root = sessions_dir(live)
    async with sse_stream(live.url) as reader:
        gone = Timeline(reader, "live-gone")
        write_atomic(root / "live-gone" / "session.json", session_doc())
        await gone.take("session:started")
        (root / "live-gone" / "session.json").unlink()
        events = await gone.take("session:stopped")
        assert [m.event for m in events] == ["session:stopped"]

        # A directory prepared elsewhere and moved in whole, files and all.
        staging = live.loki_dir / "staging"
        write_in_place(staging / "session.json", session_doc("running"))
        write_in_place(staging / "tasks.json", {"tasks": [{"id": "t1", "title": "T"}]})
        shutil.move(staging, root / "live-moved")
        moved = Timeline(reader, "live-moved")
        assert await moved.types("task:created") == ["session:started", "task:created"]

        # A directory made in place, files written right after.
        fresh = root / "live-fresh"
        fresh.mkdir()
        write_in_place(fresh / "session.json", session_doc("running"))
        fresh_timeline = Timeline(reader, "live-fresh")
        assert await fresh_timeline.types("session:started") == ["session:started"]

    async with httpx.AsyncClient(base_url=live.url) as client:
        listed = {s["id"]: s for s in (await client.get("/api/sessions")).json()["sessions"]}
        assert "live-gone" not in listed
        assert listed["live-moved"]["status"] == "running"
        assert (await client.get("/api/sessions/live-gone")).status_code == 404


@pytest.mark.anyio
async def test_live_log_lines(live: ServerProcess) -> None:
    base = sessions_dir(live) / "live-logs"
    log_file = base / "agent.log"
    async with sse_stream(live.url) as reader:
        timeline = Timeline(reader, "live-logs")
        write_atomic(base / "session.json", session_doc())
        await timeline.take("session:started")
        append(log_file, "[WARN] [planner] careful\nplain line\n[ERROR] half")
        events = await timeline.take("log:info")
        assert [(m.event, m.json()["data"]) for m in events] == [
            (
                "log:warn",
                {
                    "level": "warn",
                    "message": "careful",
                    "source": "planner",
                    "context": {"file": "agent.log"},
                },
            ),
            (
                "log:info",
                {"level": "info", "message": "plain line", "context": {"file": "agent.log"}},
            ),
        ]
        append(log_file, " done\n")
        events = await timeline.take("log:error")
        assert events[-1].json()["data"]["message"] == "half done"
        log_file.write_text("[INFO] after truncation\n")  # truncated: read from the start
        events = await timeline.take("log:info")
        assert events[-1].json()["data"]["message"] == "after truncation"
        (base / "output.txt").write_text("not a log file\n")
        assert await timeline.sentinel(log_file) == []


@pytest.mark.anyio
async def test_live_sessions_on_disk_before_start_are_listed_silently(loki_dir: Path) -> None:
    base = loki_dir / ".loki" / "sessions" / "from-disk"
    write_atomic(base / "session.json", session_doc("paused", pid=None, taskCount=2))
    write_atomic(
        base / "tasks.json",
        {"tasks": [{"id": 1, "status": "done"}, {"id": 2, "status": "pending"}]},
    )
    write_atomic(loki_dir / ".loki" / "state.json", {"currentSession": "from-disk"})
    with ServerProcess(loki_dir) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            body = (await client.get("/api/sessions")).json()
            assert [s["id"] for s in body["sessions"]] == ["from-disk"]
            assert body["sessions"][0]["status"] == "paused"
            assert body["sessions"][0]["taskCount"] == 2
            tasks = (await client.get("/api/sessions/from-disk/tasks")).json()
            assert [(t["id"], t["status"]) for t in tasks["tasks"]] == [
                ("1", "completed"),
                ("2", "pending"),
            ]
            history = (await client.get("/api/events/history")).json()
            assert history["count"] == 0  # loading announced nothing
            ready = (await client.get("/health/ready")).json()
            assert ready["checks"]["watcher"] == {"ok": True, "detail": None}


def test_a_rename_split_over_two_reads_holds_file_events_for_ms_not_half_a_second() -> None:
    """watchdog waits for a move's second half, and every later event waits behind it."""
    grouper_module = pytest.importorskip("watchdog.observers.inotify_move_event_grouper")
    inotify = pytest.importorskip("watchdog.observers.inotify_c")
    from loki_api.watcher.service import MOVE_PAIRING_DELAY, shorten_move_pairing

    shorten_move_pairing()  # what the watcher does as it starts
    grouper = grouper_module.InotifyMoveEventGrouper()
    assert grouper._queue.delay == MOVE_PAIRING_DELAY < 0.05  # watchdog's own default: 0.5 s
    moved_from = inotify.InotifyEvent(
        wd=1, mask=inotify.InotifyConstants.IN_MOVED_FROM, cookie=7, name=b".tasks.json.tmp"
    )
    grouper.put_event(grouper_module.PathedInotifyEvent(moved_from, b"/s/.tasks.json.tmp"))
    assert grouper.read_event() is not None  # its IN_MOVED_TO never came: given up on
    grouper.close()
