"""A hostile `.loki/` against a real server (SPEC §3.2): symlinks, FIFOs, huge and
deep files, directories where files belong, a full or read-only disk.

Each test here failed on the server before `statedir.py`: it read and served
files outside `.loki/`, wrote through planted symlinks, hung on FIFOs, took
hundreds of MB for one file, died at start-up on deep JSON or a directory
named `events.jsonl`, and answered 500 for a full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import ServerProcess, sse_stream, wait_for

pytestmark = pytest.mark.anyio

SECRET = "SECRET-9f3a"


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def external_session(loki_dir: Path, session_id: str, status: str = "running") -> Path:
    """A session someone else runs (no pid, no supervisor.json): it takes pause and input."""
    directory = loki_dir / ".loki" / "sessions" / session_id
    write_json(
        directory / "session.json",
        {"id": session_id, "provider": "claude", "status": status, "startedAt": "2026-01-01"},
    )
    return directory


def api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=5)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the project that a planted symlink points at."""
    directory = tmp_path / "outside"
    directory.mkdir()
    write_json(
        directory / "session.json",
        {"id": "evil", "provider": "claude", "status": "running", "prdPath": SECRET},
    )
    write_json(directory / "tasks.json", {"tasks": [{"id": "t1", "title": SECRET}]})
    (directory / "secret.log").write_text(f"[INFO] {SECRET} old\n")
    return directory


async def test_symlinks_out_of_the_state_dir_are_never_read_or_served(
    loki_dir: Path, outside: Path
) -> None:
    sessions = loki_dir / ".loki" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "evil").symlink_to(outside)
    s1 = external_session(loki_dir, "s1")
    (s1 / "tasks.json").symlink_to(outside / "tasks.json")
    (s1 / "x.log").symlink_to(outside / "secret.log")
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        async with sse_stream(server.url) as stream:
            # Planted while running, and a linked log that grows.
            (s1 / "agents.json").symlink_to(outside / "tasks.json")
            (s1 / "y.log").symlink_to(outside / "secret.log")
            with open(outside / "secret.log", "a") as log:
                log.write(f"[INFO] {SECRET} new\n")
            (s1 / "z.log").write_text("[INFO] MARKER\n")
            frames = []
            while True:
                message = await stream.next()
                frames.append(message.data)
                if "MARKER" in message.data:
                    break
        assert not any(SECRET in frame for frame in frames)
        listed = client.get("/api/sessions").json()
        assert [s["id"] for s in listed["sessions"]] == ["s1"]
        assert client.get("/api/sessions/evil").status_code == 404
        assert client.get("/api/sessions/s1/tasks").json()["pagination"]["total"] == 0
        everything = [
            client.get("/api/tasks").text,
            client.get("/api/events/history", params={"limit": 1000}).text,
            client.get("/api/sessions/s1").text,
        ]
        assert not any(SECRET in text for text in everything)
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "stateFiles" in health["problems"]
    assert SECRET not in server.output().replace(str(outside), "")


async def test_symlinked_event_log_pause_and_input_are_not_written_through(
    loki_dir: Path, outside: Path
) -> None:
    precious = {name: outside / name for name in ("events", "pause", "input")}
    for path in precious.values():
        path.write_text("precious\n")
    events = loki_dir / ".loki" / "events"
    events.mkdir(parents=True)
    (events / "events.jsonl").symlink_to(precious["events"])
    s2 = external_session(loki_dir, "s2")
    (s2 / "PAUSE").symlink_to(precious["pause"])
    (s2 / "HUMAN_INPUT.md").symlink_to(precious["input"])
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        assert client.post("/api/sessions/s2/input", json={"input": "hello"}).status_code == 200
        assert client.post("/api/sessions/s2/pause").status_code == 200
        assert (s2 / "PAUSE").is_file() and not (s2 / "PAUSE").is_symlink()
        assert (s2 / "HUMAN_INPUT.md").read_text() == "hello\n"
        problems = client.get("/health").json()["problems"]
        assert "events.jsonl" in problems["eventLog"]
        # Events still flow (in memory) without a durable log.
        history = client.get("/api/events/history").json()["events"]
        assert "session:paused" in [event["type"] for event in history]
    for path in precious.values():
        assert path.read_text() == "precious\n"


async def test_fifos_never_block_start_up_or_the_event_loop(loki_dir: Path) -> None:
    sessions = loki_dir / ".loki" / "sessions"
    (sessions / "f1").mkdir(parents=True)
    os.mkfifo(sessions / "f1" / "session.json")
    f2 = external_session(loki_dir, "f2")
    os.mkfifo(f2 / "tasks.json")
    os.mkfifo(f2 / "x.log")
    (f2 / "agents.json").symlink_to("/dev/zero")
    os.mkfifo(loki_dir / ".loki" / "state.json")
    with ServerProcess(loki_dir, "--simulate", startup_timeout=10) as server, api(server) as client:
        assert client.get("/health/live").status_code == 200
        # New FIFOs while running: the watcher reads them on the loop.
        f3 = external_session(loki_dir, "f3")
        os.mkfifo(f3 / "phase.json")
        os.mkfifo(f3 / "y.log")
        os.mkfifo(f2 / "z.log")

        def f3_listed() -> bool:
            return "f3" in client.get("/api/sessions").text

        await wait_for(f3_listed)
        for _ in range(3):
            assert client.get("/health/live", timeout=2).status_code == 200
        sessions_listed = [s["id"] for s in client.get("/api/sessions").json()["sessions"]]
        assert sorted(sessions_listed) == ["f2", "f3"]
        assert "a FIFO" in client.get("/health").json()["problems"]["stateFiles"]
    # A restart over the same FIFOs comes up too.
    with ServerProcess(loki_dir, "--simulate", startup_timeout=10) as server, api(server) as client:
        assert client.get("/health/live").status_code == 200


async def test_huge_files_and_lines_are_capped_and_memory_stays_bounded(loki_dir: Path) -> None:
    s1 = external_session(loki_dir, "s1")
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        idle = peak_rss_mb(server.pid)
        async with sse_stream(server.url) as stream:
            with open(s1 / "tasks.json", "wb") as f:
                f.truncate(200 * 1024 * 1024)  # sparse 200 MB
            (s1 / "agents.json").symlink_to("/dev/zero")
            with open(s1 / "big.log", "wb") as f:
                f.write(b"[INFO] " + b"L" * (20 * 1024 * 1024) + b"\n[INFO] AFTER\n")
            huge_title = "T" * (1024 * 1024)  # within the 8 MiB file cap, far over the string cap
            write_json(
                s1.parent / "s2" / "tasks.json", {"tasks": [{"id": "t1", "title": huge_title}]}
            )
            external_session(loki_dir, "s2")
            seen: dict[str, Any] = {}
            while "AFTER" not in seen or "task:created" not in seen:
                message = await stream.next(timeout=20)
                data = message.json()["data"]
                if message.event == "log:info" and data["message"] == "AFTER":
                    seen["AFTER"] = data
                elif message.event == "log:info":
                    seen["line"] = data
                elif message.event == "task:created":
                    seen["task:created"] = data
        assert len(seen["line"]["message"]) <= 64 * 1024
        assert len(seen["task:created"]["title"]) == 64 * 1024
        tasks = client.get("/api/sessions/s2/tasks").json()["tasks"]
        assert len(tasks[0]["title"]) == 64 * 1024
        assert client.get("/api/sessions/s1/tasks").json()["pagination"]["total"] == 0
        peak = peak_rss_mb(server.pid)
        print(f"peak RSS: idle {idle:.1f} MB, after the huge files {peak:.1f} MB")
        assert peak - idle < 50, (idle, peak)
        skipped = client.get("/health").json()["problems"]["stateFiles"]
        assert "skipped" in skipped


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


async def test_deep_json_anywhere_does_not_stop_start_up(loki_dir: Path) -> None:
    d1 = external_session(loki_dir, "d1")
    (d1 / "tasks.json").write_bytes(b'{"tasks":' + b"[" * 1000 + b"]" * 1000 + b"}")
    (d1 / "agents.json").write_bytes(deep(100))
    (loki_dir / ".loki" / "sessions" / "d2").mkdir()
    (loki_dir / ".loki" / "sessions" / "d2" / "session.json").write_bytes(deep(100_000))
    (loki_dir / ".loki" / "state.json").write_bytes(deep(5000))
    events = loki_dir / ".loki" / "events"
    (events / "snapshots").mkdir(parents=True)
    (events / "snapshots" / "d1.json").write_bytes(deep(5000))
    (events / "events.jsonl").write_bytes(
        b'{"id":"evt_7_1","type":"log:info","timestamp":"t","data":' + deep(100_000) + b"}\n"
    )
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        assert [s["id"] for s in client.get("/api/sessions").json()["sessions"]] == ["d1"]
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert "stateFiles" in health["problems"]
        assert client.get("/health/ready").status_code == 200


async def test_directories_where_files_belong_answer_4xx_and_start_up_goes_on(
    loki_dir: Path,
) -> None:
    (loki_dir / ".loki" / "events" / "events.jsonl").mkdir(parents=True)
    s3 = external_session(loki_dir, "s3")
    (s3 / "PAUSE").mkdir()
    (s3 / "HUMAN_INPUT.md").mkdir()
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "events.jsonl" in health["problems"]["eventLog"]
        pause = client.post("/api/sessions/s3/pause")
        assert pause.status_code == 409 and pause.json()["code"] == "CONFLICT"
        assert "PAUSE" in pause.json()["error"]
        given = client.post("/api/sessions/s3/input", json={"input": "hi"})
        assert given.status_code == 409 and "HUMAN_INPUT.md" in given.json()["error"]
        assert client.get("/api/sessions/s3").json()["session"]["status"] == "running"
        # The directory is replaced by the operator: the durable log comes back by itself,
        # within a retry (~1 s), not at the next heartbeat (10 s), with what it kept.
        (loki_dir / ".loki" / "events" / "events.jsonl").rmdir()
        external_session(loki_dir, "s4")

        def log_back() -> bool:
            return "eventLog" not in client.get("/health").json()["problems"]

        await wait_for(log_back, timeout=5, interval=0.05)
        assert (loki_dir / ".loki" / "events" / "events.jsonl").stat().st_size > 0


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(loki_dir: Path) -> Iterator[Path]:
    """`.loki/` on its own 1 MiB tmpfs (root only)."""
    state = loki_dir / ".loki"
    state.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs for a full-disk test")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Write until the file system is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


async def test_a_full_or_read_only_disk_is_reported_and_recovers_by_itself(
    loki_dir: Path, small_disk: Path
) -> None:
    external_session(loki_dir, "s1")
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        assert client.get("/health/ready").status_code == 200
        filler = fill(small_disk)
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert "No space left" in ready.json()["checks"]["storage"]["detail"]
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        given = client.post("/api/sessions/s1/input", json={"input": "hello"})
        assert given.status_code == 503 and given.json()["code"] == "STORAGE_UNAVAILABLE"
        assert client.get("/health/live").status_code == 200
        filler.unlink()

        def recovered() -> bool:
            return client.get("/health").json()["status"] == "healthy"

        await wait_for(recovered)  # the server's own retry, no restart
        assert client.get("/health/ready").status_code == 200
        assert client.post("/api/sessions/s1/input", json={"input": "again"}).status_code == 200
        # Read-only (a read-only bind mount on top; open descriptors keep writing below it).
        subprocess.run(["mount", "--bind", str(small_disk), str(small_disk)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(small_disk)], check=True)
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert "Read-only" in ready.json()["checks"]["storage"]["detail"]
            given = client.post("/api/sessions/s1/input", json={"input": "x"})
            assert given.status_code == 503 and given.json()["code"] == "STORAGE_UNAVAILABLE"
        finally:
            subprocess.run(["umount", str(small_disk)], check=True)
        await wait_for(recovered)


async def test_a_file_where_the_events_directory_belongs_is_not_fatal(loki_dir: Path) -> None:
    (loki_dir / ".loki").mkdir()
    (loki_dir / ".loki" / "events").write_text("not a directory")
    external_session(loki_dir, "s5")
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        assert client.post("/api/sessions/s5/pause").status_code == 200
        problems = client.get("/health").json()["problems"]
        assert "eventLog" in problems and "events" in problems["stateFiles"]
        assert client.get("/health/ready").status_code == 200
        history = client.get("/api/events/history").json()["events"]
        assert "session:paused" in [event["type"] for event in history]
    # The snapshot saver retried quietly: no warning per attempt.
    assert server.output().count("cannot save the state snapshot") == 0


async def test_a_symlink_planted_as_the_sessions_directory_degrades_until_it_is_gone(
    loki_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (loki_dir / ".loki").mkdir()
    (loki_dir / ".loki" / "sessions").symlink_to(outside)
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        health = client.get("/health")
        # Hostile content, not a broken server: degraded (alive), not ready, with the reason.
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert "symbolic link" in health.json()["problems"]["sessionsDir"]
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and not ready.json()["checks"]["sessionsDir"]["ok"]
        assert client.post("/api/sessions", json={}).status_code == 409
        (loki_dir / ".loki" / "sessions").unlink()
        await wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=10)
        assert client.post("/api/sessions", json={}).status_code == 201
    assert list(outside.iterdir()) == []  # nothing was written through the link
    assert server.output().count("Traceback") == 0
