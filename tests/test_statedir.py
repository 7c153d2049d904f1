"""`StateDir`: the one door to `.loki/` (SPEC §3.2), on real files, symlinks and FIFOs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loki_api import statedir
from loki_api.health_problems import HealthProblems
from loki_api.state.documents import decode_agents, decode_tasks
from loki_api.statedir import (
    Limits,
    StateDir,
    StorageUnavailable,
    UnusableEntry,
    json_shape_problem,
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the state dir, holding a secret."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.json").write_text('{"tasks": [{"id": "t", "title": "SECRET"}]}')
    return directory


@pytest.fixture
def files(tmp_path: Path) -> StateDir:
    root = tmp_path / ".loki"
    (root / "sessions" / "s1").mkdir(parents=True)
    return StateDir(root, Limits(max_file=4096), HealthProblems())


def test_reads_a_regular_file_and_none_when_missing(files: StateDir) -> None:
    (files.root / "sessions" / "s1" / "tasks.json").write_text('{"tasks": []}')
    assert files.read("sessions/s1/tasks.json", json=True) == b'{"tasks": []}'
    assert files.read(files.root / "sessions" / "s1" / "tasks.json") == b'{"tasks": []}'
    assert files.read("sessions/s1/nope.json") is None
    assert files.read("sessions/nope/tasks.json") is None
    assert not files.health


def test_paths_outside_the_root_are_refused(files: StateDir, tmp_path: Path) -> None:
    for bad in ("../x", "sessions/../../x", tmp_path / "elsewhere"):
        with pytest.raises(ValueError):
            files.read(bad)


def test_a_symlinked_file_or_directory_is_never_followed(
    files: StateDir, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session = files.root / "sessions" / "s1"
    (session / "tasks.json").symlink_to(outside / "secret.json")
    (files.root / "sessions" / "evil").symlink_to(outside)
    for _ in range(3):
        assert files.read("sessions/s1/tasks.json") is None
        assert files.read("sessions/evil/secret.json") is None
        assert files.open_read("sessions/s1/tasks.json") is None
    assert files.list("sessions", dirs=True) == ["s1"]  # listed nowhere
    assert files.list("sessions/s1") == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "loki_api.statedir"]
    assert sum("sessions/s1/tasks.json" in w for w in warnings) == 1  # once per path
    assert sum(".loki/sessions/evil" in w for w in warnings) == 1
    assert set(files.skipped()) == {"sessions/s1/tasks.json", "sessions/evil"}
    assert "skipped" in (files.health.get(statedir.SKIPPED_KEY) or "")
    # Fixed: no longer skipped, and /health clears once nothing is.
    (session / "tasks.json").unlink()
    (session / "tasks.json").write_text("[]")
    assert files.read("sessions/s1/tasks.json") == b"[]"
    (files.root / "sessions" / "evil").unlink()
    files.list("sessions", dirs=True)
    assert files.skipped() == {} and files.health.get(statedir.SKIPPED_KEY) is None


def test_fifos_devices_and_directories_are_skipped_without_blocking(files: StateDir) -> None:
    session = files.root / "sessions" / "s1"
    os.mkfifo(session / "tasks.json")
    os.mkfifo(session / "x.log")
    (session / "agents.json").symlink_to("/dev/zero")
    (session / "phase.json").mkdir()
    started = time.monotonic()
    for name in ("tasks.json", "x.log", "agents.json", "phase.json"):
        assert files.read(f"sessions/s1/{name}") is None
        assert files.open_read(f"sessions/s1/{name}") is None
    assert files.list("sessions/s1", suffix=".log") == []
    assert time.monotonic() - started < 1
    reasons = files.skipped()
    assert reasons["sessions/s1/tasks.json"] == "a FIFO"
    assert reasons["sessions/s1/agents.json"] == "a symbolic link"
    assert reasons["sessions/s1/phase.json"] == "a directory"


def test_a_file_over_the_cap_is_skipped_without_reading_it(files: StateDir) -> None:
    big = files.root / "sessions" / "s1" / "tasks.json"
    with open(big, "wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MB that cost no disk
    assert files.read("sessions/s1/tasks.json") is None
    assert "over the cap of 4096" in files.skipped()["sessions/s1/tasks.json"]
    big.write_bytes(b"x" * 4096)
    assert files.read("sessions/s1/tasks.json") == b"x" * 4096  # exactly the cap is fine


def test_json_too_deep_or_too_big_is_rejected_before_decoding(files: StateDir) -> None:
    path = files.root / "sessions" / "s1" / "tasks.json"
    path.write_bytes(b"[" * 1000 + b"]" * 1000)
    assert files.read("sessions/s1/tasks.json", json=True) is None
    assert "nested deeper than 64" in files.skipped()["sessions/s1/tasks.json"]
    assert files.read("sessions/s1/tasks.json") is not None  # as bytes it is fine


def test_json_shape_problem() -> None:
    assert json_shape_problem(b'{"tasks": [{"id": 1}]}', 64, 1000) is None
    assert json_shape_problem(b"[" * 64 + b"]" * 64, 64, 1000) is None
    assert "deeper than 64" in (json_shape_problem(b"[" * 65 + b"]" * 65, 64, 1000) or "")
    # Brackets inside strings (escaped quotes too) do not count.
    text = b'{"a": "' + b"[" * 500 + b'\\" ]]] \\\\", "b": [1, 2]}'
    assert json_shape_problem(text, 64, 1000) is None
    # Unclosed nesting would send the decoder just as deep.
    assert "unbalanced" in (json_shape_problem(b"[" * 100_000, 64, 10**6) or "")
    assert "more than 1000" in (json_shape_problem(b"[" + b"{}," * 2000 + b"{}]", 64, 1000) or "")


def test_writes_replace_a_planted_symlink_instead_of_writing_through(
    files: StateDir, outside: Path
) -> None:
    target = outside / "precious"
    target.write_text("precious")
    pause = files.root / "sessions" / "s1" / "PAUSE"
    pause.symlink_to(target)
    files.write_atomic("sessions/s1/PAUSE", b"")
    assert target.read_text() == "precious"
    assert pause.is_file() and not pause.is_symlink()
    assert [p.name for p in pause.parent.iterdir()] == ["PAUSE"]  # no temp file left


def test_append_never_goes_through_a_symlink_or_into_a_fifo(files: StateDir, outside: Path) -> None:
    target = outside / "log"
    target.write_text("precious")
    (files.root / "events").mkdir()
    (files.root / "events" / "events.jsonl").symlink_to(target)
    with pytest.raises(UnusableEntry):
        files.open_append("events/events.jsonl")
    os.mkfifo(files.root / "events" / "other.jsonl")
    with pytest.raises(UnusableEntry):
        files.open_append("events/other.jsonl")  # no reader: never blocks
    (files.root / "evil").symlink_to(outside)
    with pytest.raises(UnusableEntry):
        files.open_append("evil/log")
    with pytest.raises(UnusableEntry):
        files.makedirs("evil/sub")
    assert target.read_text() == "precious" and sorted(os.listdir(outside)) == [
        "log",
        "secret.json",
    ]


def test_remove_tree_unlinks_symlinks_inside_without_following(
    files: StateDir, outside: Path
) -> None:
    session = files.root / "sessions" / "s1"
    (session / "link").symlink_to(outside)
    (session / "sub").mkdir()
    (session / "sub" / "file").write_text("x")
    files.remove_tree("sessions/s1")
    assert not session.exists() and (outside / "secret.json").exists()
    (files.root / "sessions" / "s2").symlink_to(outside)
    files.remove_tree("sessions/s2")  # the link itself goes, not what it points at
    assert not (files.root / "sessions" / "s2").is_symlink()
    assert (outside / "secret.json").exists()
    files.remove_tree("sessions/missing")  # fine


def test_removing_a_directory_where_a_file_should_be_is_unusable(files: StateDir) -> None:
    (files.root / "sessions" / "s1" / "PAUSE").mkdir()
    with pytest.raises(UnusableEntry):
        files.remove("sessions/s1/PAUSE")
    with pytest.raises(UnusableEntry):
        files.write_atomic("sessions/s1/PAUSE", b"")
    assert files.remove("sessions/s1/STOP") is False


def test_storage_failures_are_reported_and_clear_on_the_next_write(
    files: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault-injection seam: writes fail as on a full disk, then work again."""

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(statedir, "_os_write", full)
    with pytest.raises(StorageUnavailable) as caught:
        files.write_atomic("sessions/s1/session.json", b"{}")
    assert caught.value.path == "sessions/s1/session.json"
    assert isinstance(caught.value, OSError)  # callers' `except OSError` still hold
    assert "No space left" in (files.health.not_ready().get("storage") or "")
    assert files.probe() is None  # the directory is usable; the disk is full
    assert files.health.get("storage") is not None
    assert os.listdir(files.root / "sessions" / "s1") == []  # no temp file left
    monkeypatch.undo()
    files.write_atomic("sessions/s1/session.json", b"{}")
    assert files.health.get("storage") is None


def test_documents_cut_strings_and_cap_items() -> None:
    limits = Limits(max_string=10, max_items=3)
    raw = (
        b'{"tasks": ['
        + b",".join(b'{"id": "t%d", "title": "%s"}' % (n, b"x" * 50) for n in range(5))
        + b"]}"
    )
    tasks = decode_tasks(raw, "s1", created_at="2026-01-01T00:00:00.000Z", limits=limits)
    assert tasks is not None and [t.id for t in tasks] == ["t0", "t1", "t2"]
    assert all(t.title == "x" * 10 for t in tasks)
    agents = decode_agents(b'[{"id": "%s", "type": "dev"}]' % (b"a" * 50), "s1", limits)
    assert agents is not None and agents[0].id == "a" * 10


def test_many_unclosed_quotes_are_checked_in_linear_time() -> None:
    """A planted `"\\"\\"\\"...` (600 KB, far under the size cap) once took minutes of
    regex backtracking on the event loop; now a single pass. Run apart, with a
    deadline, so a regression fails instead of hanging the suite."""
    code = (
        "from loki_api.statedir import json_shape_problem\n"
        "raw = b'[' + b'\"' + b'\\\\\"' * 300_000\n"
        "print(json_shape_problem(raw, 64, 100_000))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "unbalanced" in done.stdout  # the bracket outside the string is still seen


def test_the_state_dir_swapped_for_a_link_while_running_is_not_followed(
    files: StateDir, outside: Path, tmp_path: Path
) -> None:
    root = files.root
    root.rename(tmp_path / "moved")
    root.symlink_to(outside)  # what the session's agent could do any time
    assert files.read("secret.json") is None
    with pytest.raises(UnusableEntry):
        files.write_atomic("sessions/s1/session.json", b"{}")
    assert not files.is_dir(()) and files.list(".") == []
    assert "symbolic link" in (files.health.get("stateFiles") or "")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]  # nothing written there
    root.unlink()
    (tmp_path / "moved").rename(root)
    files.write_atomic("sessions/s1/session.json", b"{}")  # usable again, and said so
    assert files.health.get("stateFiles") is None
