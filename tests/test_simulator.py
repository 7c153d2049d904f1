"""The bundled simulator (a test double for the CLI) speaks the §5.2/§5.5 protocol."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from loki_api.sessions.output import parse_line
from loki_api.simulator.prd import BUILT_IN_TASKS, tasks_from_prd

PRD = "# Todo app\n\n## Backend\n- Build the API\n- [ ] Add storage\n\n## UI\n1. List view\n"


def run_sim(
    loki_dir: Path, *args: str, env: dict[str, str] | None = None, session_id: str = "s1"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loki_api.simulator", "start", *args],
        cwd=loki_dir,
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "LOKI_SIM_DELAY": "0",
            "LOKI_SESSION_ID": session_id,
            "LOKI_DIR": str(loki_dir),
            **(env or {}),
        },
    )


def test_prd_bullets_headings_and_built_in_tasks() -> None:
    tasks = tasks_from_prd(PRD)
    assert [t.title for t in tasks] == ["Build the API", "Add storage", "List view"]
    assert tasks[0].description == "From PRD section: Backend"
    assert [t.title for t in tasks_from_prd("# T\n## One\n## Two\n")] == ["One", "Two"]
    assert [t.title for t in tasks_from_prd(None)] == [t for t, _ in BUILT_IN_TASKS]


def test_help_says_it_is_a_test_double() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loki_api.simulator", "start", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "TEST DOUBLE" in out


def test_a_whole_session_prints_every_kind_of_line_and_writes_state(loki_dir: Path) -> None:
    (loki_dir / "prd.md").write_text(PRD)
    result = run_sim(loki_dir, "--provider", "codex", "--verbose", "prd.md")
    assert result.returncode == 0, result.stderr
    kinds = {parse_line(line)[0] for line in result.stdout.splitlines() if line.strip()}
    assert {
        "log:info",
        "log:debug",
        "log:warn",
        "phase:started",
        "agent:spawned",
        "task:started",
        "task:progress",
        "task:completed",
        "agent:completed",
        "metrics:update",
        "input:requested",
    } <= kinds
    assert result.stdout.splitlines()[-1] == "Session complete: all phases finished"
    assert result.stderr.strip()  # some lines go to stderr
    session_dir = loki_dir / ".loki" / "sessions" / "s1"
    record = json.loads((session_dir / "session.json").read_text())
    assert record["status"] == "completed"  # standalone: it owns the whole record
    assert record["provider"] == "codex" and record["taskCount"] == 3
    assert record["completedTasks"] == 3 and record["currentPhase"] == "deployment"
    tasks = json.loads((session_dir / "tasks.json").read_text())["tasks"]
    assert [t["status"] for t in tasks] == ["done"] * 3
    assert json.loads((session_dir / "phase.json").read_text())["current"] == "deployment"
    assert json.loads((session_dir / "agents.json").read_text())["active"] == []
    assert not (session_dir / "input.fifo").exists()


def test_server_created_record_keeps_server_fields(loki_dir: Path) -> None:
    session_dir = loki_dir / ".loki" / "sessions" / "s2"
    session_dir.mkdir(parents=True)
    (session_dir / "session.json").write_text(
        json.dumps({"id": "s2", "status": "running", "pid": 1, "extra": "kept"})
    )
    assert run_sim(loki_dir, session_id="s2").returncode == 0
    record = json.loads((session_dir / "session.json").read_text())
    assert record["status"] == "running" and record["pid"] == 1 and record["extra"] == "kept"
    assert record["taskCount"] == len(BUILT_IN_TASKS)


def test_exit_code_from_env(loki_dir: Path) -> None:
    result = run_sim(loki_dir, env={"LOKI_SIM_EXIT": "3"})
    assert result.returncode == 3
    assert "LOKI_SIM_EXIT=3" in result.stdout


def test_stop_file_ends_the_session(loki_dir: Path) -> None:
    session_dir = loki_dir / ".loki" / "sessions" / "s1"
    session_dir.mkdir(parents=True)
    (session_dir / "STOP").write_text("")
    result = run_sim(loki_dir)
    assert result.returncode == 0
    assert "STOP file found" in result.stdout
    assert "Session complete" not in result.stdout


def test_pause_waits_and_input_is_acknowledged(loki_dir: Path) -> None:
    session_dir = loki_dir / ".loki" / "sessions" / "s3"
    session_dir.mkdir(parents=True)
    (session_dir / "PAUSE").write_text("")
    (session_dir / "HUMAN_INPUT.md").write_text("use sqlite\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loki_api.simulator", "start"],
        cwd=loki_dir,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "LOKI_SIM_DELAY": "0",
            "LOKI_SESSION_ID": "s3",
            "LOKI_DIR": str(loki_dir),
        },
    )
    seen: list[str] = []
    # A thread reads the lines: select() on a buffered pipe misses lines that
    # arrived together and already sit in the reader's buffer.
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()

    def read_until(text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in seen):
            try:
                seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s; got {seen}") from None

    try:
        read_until("Received human input: use sqlite")  # read while paused
        read_until("Paused")
        assert proc.poll() is None and not any("Resumed" in line for line in seen)
        fifo = session_dir / "input.fifo"
        deadline = time.monotonic() + 10
        while True:  # the FIFO exists once the simulator reads it; until then, retry
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except (FileNotFoundError, OSError) as exc:
                assert time.monotonic() < deadline, exc
                time.sleep(0.01)
        os.write(fd, b"via fifo\n")
        os.close(fd)
        read_until("Received human input: via fifo")
        assert not any("Resumed" in line for line in seen)  # still paused
        (session_dir / "PAUSE").unlink()
        proc.wait(timeout=20)
        reader.join(10)
        while not lines.empty():
            seen.append(lines.get())
        out = "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        proc.stdout.close()
    assert "Paused" in out and "Resumed" in out
    assert "Received human input: use sqlite" in out
    assert "Received human input: via fifo" in out
    assert out.index("Resumed") < out.index("Session complete")
