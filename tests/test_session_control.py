"""Control files, input delivery and process helpers of the session supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loki_api.sessions import control
from loki_api.sessions.containment import marked
from loki_api.sessions.process import (
    MAX_LINES_PER_PUMP,
    READ_CHUNK,
    OutputTail,
    exit_status,
    find_session_process,
    group_alive,
    leads_session,
    process_alive,
    recorded_exit_code,
    runs_session,
    spawn,
)
from loki_api.statedir import StateDir


def test_pause_and_clear(tmp_path: Path) -> None:
    control.write_pause(StateDir(tmp_path), tmp_path)
    (tmp_path / "STOP").write_text("")
    assert (tmp_path / "PAUSE").exists() and control.stop_requested(StateDir(tmp_path), tmp_path)
    control.clear_pause(StateDir(tmp_path), tmp_path)
    assert not (tmp_path / "PAUSE").exists()
    assert not control.stop_requested(StateDir(tmp_path), tmp_path)
    control.clear_pause(StateDir(tmp_path), tmp_path)  # nothing to remove is fine


def test_input_without_fifo_appends_to_human_input(tmp_path: Path) -> None:
    assert control.inject_input(StateDir(tmp_path), tmp_path, "first") == "file"
    assert control.inject_input(StateDir(tmp_path), tmp_path, "second\n") == "file"
    assert (tmp_path / "HUMAN_INPUT.md").read_text() == "first\nsecond\n"


def test_input_with_a_fifo_nobody_reads_falls_back_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "input.fifo")
    assert control.inject_input(StateDir(tmp_path), tmp_path, "hello") == "file"
    assert (tmp_path / "HUMAN_INPUT.md").read_text() == "hello\n"


def test_input_goes_through_a_read_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "input.fifo")
    reader = os.open(tmp_path / "input.fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert control.inject_input(StateDir(tmp_path), tmp_path, "hello") == "fifo"
        assert os.read(reader, 100) == b"hello\n"
        # Too big for one atomic pipe write: the file takes it whole instead.
        assert control.inject_input(StateDir(tmp_path), tmp_path, "x" * 10_000) == "file"
    finally:
        os.close(reader)
    assert not (tmp_path / "HUMAN_INPUT.md").read_text().startswith("hello")


def test_a_regular_file_named_input_fifo_is_not_written(tmp_path: Path) -> None:
    (tmp_path / "input.fifo").write_text("")
    assert control.inject_input(StateDir(tmp_path), tmp_path, "x") == "file"
    assert (tmp_path / "input.fifo").read_text() == ""


def test_exit_status() -> None:
    assert exit_status(0) == 0 and exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 143


def test_spawned_child_runs_in_its_own_group_and_is_found_by_its_session(tmp_path: Path) -> None:
    env = {**os.environ, "LOKI_SESSION_ID": "sess-42"}
    script = (
        "import sys, time; print('out', flush=True); print('err', file=sys.stderr); time.sleep(30)"
    )
    proc = spawn([sys.executable, "-c", script], cwd=tmp_path, env=env, output_dir=tmp_path)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert runs_session(proc.pid, "sess-42") and not runs_session(proc.pid, "other")
        assert find_session_process("sess-42") == proc.pid and leads_session(proc.pid)
        # A leftover of the session that leads its own group carries the marker too; a
        # session.json naming it must not make it the supervised process.
        leftover = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"], env=env, start_new_session=True
        )
        try:
            assert runs_session(leftover.pid, "sess-42") and not leads_session(leftover.pid)
        finally:
            leftover.kill()
            leftover.wait(5)
        assert group_alive(proc.pid) and process_alive(proc.pid)
        deadline = time.monotonic() + 10
        while b"err" not in (tmp_path / "stderr.txt").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while group_alive(proc.pid):  # the launched command dies a moment after its launcher
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not process_alive(proc.pid)
    published: list[tuple[str, object]] = []
    for name, stream in (("stdout.txt", "stdout"), ("stderr.txt", "stderr")):
        OutputTail(tmp_path / name, stream).finish(  # type: ignore[arg-type]
            lambda kind, data: published.append((kind, data))
        )
    assert [kind for kind, _ in published] == ["log:info", "log:error"]


def test_tail_follows_appends_and_keeps_the_last_unterminated_line(tmp_path: Path) -> None:
    path = tmp_path / "stdout.txt"
    path.write_bytes(b"old line\n")
    tail = OutputTail(path, "stdout", from_end=True)
    seen: list[str] = []

    def publish(kind: str, data: object) -> None:
        seen.append(data.message)  # type: ignore[attr-defined]

    assert tail.pump(publish) is False
    with open(path, "ab") as file:
        file.write(b"new one\nhalf")
    assert tail.pump(publish) is True
    assert seen == ["new one"]
    tail.finish(publish)
    assert seen == ["new one", "half"]


def test_a_closed_tail_still_knows_where_it_stopped(tmp_path: Path) -> None:
    # A server shutting down saves this for its successor after the reader closed.
    path = tmp_path / "stdout.txt"
    path.write_bytes(b"one\ntwo\npart")
    tail = OutputTail(path, "stdout")
    assert tail.pump(lambda *_: None) is True
    assert tail.position == len(b"one\ntwo\n")  # the partial line is read again
    tail.close()
    assert tail.position == len(b"one\ntwo\n")
    assert OutputTail(tmp_path / "missing.txt", "stdout").position is None


def test_a_big_burst_is_published_over_several_bounded_pumps(tmp_path: Path) -> None:
    path = tmp_path / "stdout.txt"
    lines = [f"bench {seq} {'x' * (seq % 50 + 1)}" for seq in range(20_000)]
    path.write_bytes("".join(line + "\n" for line in lines).encode() + b"partial")
    tail = OutputTail(path, "stdout")
    seen: list[str] = []
    publish = lambda kind, data: seen.append(data.message)  # noqa: E731
    published_per_pump: list[int] = []
    read = 0
    while True:
        before = len(seen)
        if not tail.pump(publish):
            break
        published_per_pump.append(len(seen) - before)
        assert tail.position is not None
        now_read = tail.position + tail.splitter.pending
        assert 0 < now_read - read <= READ_CHUNK
        read = now_read
    assert len(published_per_pump) > 5
    assert max(published_per_pump) <= MAX_LINES_PER_PUMP
    assert seen == lines  # every line, in order
    # The read position is just past the last complete line: a successor resumes there.
    assert tail.position == path.stat().st_size - len(b"partial")
    tail.finish(publish)
    assert seen == [*lines, "partial"]


def test_many_short_lines_are_bounded_by_line_count(tmp_path: Path) -> None:
    path = tmp_path / "stdout.txt"
    count = MAX_LINES_PER_PUMP * 2 + 7
    path.write_bytes(b"".join(b"%d\n" % (n % 10) for n in range(count)))
    tail = OutputTail(path, "stdout")
    seen: list[str] = []
    assert tail.pump(lambda kind, data: seen.append(data.message)) is True
    assert len(seen) == MAX_LINES_PER_PUMP
    assert tail.position == 2 * MAX_LINES_PER_PUMP  # the rest is read next time
    tail.finish(lambda kind, data: seen.append(data.message))
    assert seen == [str(n % 10) for n in range(count)]


def test_a_missing_output_file_is_quiet(tmp_path: Path) -> None:
    tail = OutputTail(tmp_path / "nope.txt", "stdout")
    assert tail.pump(lambda *a: None) is False
    tail.finish(lambda *a: None)


def test_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:  # exited but not reaped yet: a zombie
        with open(f"/proc/{proc.pid}/stat") as file:
            if file.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
    assert not process_alive(proc.pid)
    proc.wait()


def test_the_launcher_records_the_exit_code(tmp_path: Path) -> None:
    proc = spawn(
        [sys.executable, "-c", "import sys; sys.exit(7)"],
        cwd=tmp_path,
        env=dict(os.environ),
        output_dir=tmp_path,
    )
    assert proc.wait(10) == 7
    assert recorded_exit_code(tmp_path) == 7


def test_the_launcher_passes_sigterm_on_and_records_the_signal(tmp_path: Path) -> None:
    script = "import time; print('up', flush=True); time.sleep(30)"
    proc = spawn(
        [sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ), output_dir=tmp_path
    )
    deadline = time.monotonic() + 10
    while b"up" not in (tmp_path / "stdout.txt").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert recorded_exit_code(tmp_path) == 128 + signal.SIGTERM


def test_the_launcher_ends_leftovers_even_when_it_cannot_record_the_exit(tmp_path: Path) -> None:
    marker = f"launcher-test-{os.getpid()}"
    env = {**os.environ, "LOKI_SESSION_ID": marker}
    proc = spawn(
        ["sh", "-c", "setsid sleep 600 & echo started"],
        cwd=tmp_path,
        env=env,
        output_dir=tmp_path,
        exit_file=tmp_path / "stdout.txt" / "exit.json",  # under a file: cannot be written
        grace=0.2,
    )
    assert proc.wait(10) == 0  # the launcher waited for the setsid sleeper, then ended it
    assert marked(marker) == []
    assert b"cannot record the exit code" in (tmp_path / "stderr.txt").read_bytes()


def test_a_missing_program_is_refused_before_spawning(tmp_path: Path) -> None:
    try:
        spawn(
            ["no-such-loki-binary"], cwd=tmp_path, env={"PATH": str(tmp_path)}, output_dir=tmp_path
        )
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("spawn should refuse a program it cannot find")
