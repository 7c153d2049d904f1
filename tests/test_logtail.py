"""Tailing session log files into log events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loki_api.models import LogEventData
from loki_api.watcher.logtail import LogTailer, parse_log_line


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("[WARN] disk low", ("warn", None, "disk low")),
        ("[warning] [agent-1] slow", ("warn", "agent-1", "slow")),
        ("[ERROR] [source] boom [x]", ("error", "source", "boom [x]")),
        ("  [Debug]detail", ("debug", None, "detail")),
        ("[INFO] [] empty source", ("info", None, "empty source")),
        ("plain text", ("info", None, "plain text")),
        ("[TRACE] unknown level", ("info", None, "[TRACE] unknown level")),
    ],
)
def test_parse_log_line(line: str, parsed: tuple[str, str | None, str]) -> None:
    assert parse_log_line(line) == parsed


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, LogEventData, str]] = []

    def __call__(self, kind: str, data: LogEventData, session_id: str) -> None:
        self.events.append((kind, data, session_id))

    def messages(self) -> list[str]:
        out = [data.message for _, data, _ in self.events]
        self.events.clear()
        return out


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "sessions" / "s1" / "run.log"
    path.parent.mkdir(parents=True)
    return path


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def test_new_lines_become_events(tmp_path: Path, log_file: Path) -> None:
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    append(log_file, b"[ERROR] [db] down\n\n  \nsecond\r\n")
    assert tailer.poll(log_file) is False
    kinds = [(kind, session) for kind, _, session in sink.events]
    assert kinds == [("log:error", "s1"), ("log:info", "s1")]
    first = sink.events[0][1]
    assert (first.level, first.source, first.context) == ("error", "db", {"file": "run.log"})
    assert sink.messages() == ["down", "second"]
    assert tailer.poll(log_file) is False and sink.events == []


def test_partial_line_waits_for_its_newline(tmp_path: Path, log_file: Path) -> None:
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    append(log_file, b"one\ntw")
    tailer.poll(log_file)
    assert sink.messages() == ["one"]
    append(log_file, b"o\nthr")
    tailer.poll(log_file)
    assert sink.messages() == ["two"]


def test_prime_skips_what_is_already_there(tmp_path: Path, log_file: Path) -> None:
    append(log_file, b"old\n")
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    tailer.prime()
    append(log_file, b"new\n")
    tailer.poll(log_file)
    assert sink.messages() == ["new"]


def test_truncation_starts_again(tmp_path: Path, log_file: Path) -> None:
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    append(log_file, b"a long first line\n")
    tailer.poll(log_file)
    log_file.write_bytes(b"after\n")  # truncated and rewritten shorter
    tailer.poll(log_file)
    assert sink.messages() == ["a long first line", "after"]


def test_rotation_new_inode_starts_again(tmp_path: Path, log_file: Path) -> None:
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    append(log_file, b"before rotation, long enough\n")
    tailer.poll(log_file)
    os.rename(log_file, log_file.with_suffix(".log.1"))
    tailer.poll(log_file)  # gone: forgotten
    append(log_file, b"fresh file, even longer than the old one was\n")
    tailer.poll(log_file)
    assert sink.messages() == [
        "before rotation, long enough",
        "fresh file, even longer than the old one was",
    ]


def test_overlong_line_is_cut_not_buffered(tmp_path: Path, log_file: Path) -> None:
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink, max_line=10)
    append(log_file, b"x" * 25)
    tailer.poll(log_file)
    assert sink.messages() == ["x" * 10]
    append(log_file, b"yyy\nnext\n")
    tailer.poll(log_file)
    assert sink.messages() == ["next"]


def test_big_backlog_is_read_in_chunks(
    tmp_path: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loki_api.watcher.logtail.READ_CHUNK", 8)
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    append(log_file, b"line-1\nline-2\nline-3\n")
    rounds = 1
    while tailer.poll(log_file):
        rounds += 1
    assert rounds > 1
    assert sink.messages() == ["line-1", "line-2", "line-3"]


def test_missing_file_is_forgotten(tmp_path: Path, log_file: Path) -> None:
    sink = Sink()
    tailer = LogTailer(tmp_path / "sessions", sink)
    append(log_file, b"x\n")
    tailer.poll(log_file)
    assert tailer.known_under(log_file.parent) == [log_file]
    log_file.unlink()
    assert tailer.poll(log_file) is False
    assert tailer.known_under(log_file.parent) == []
