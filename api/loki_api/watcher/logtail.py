"""Tailing `.loki/sessions/<id>/*.log`: each new complete line becomes a log event.

One offset per file. A partial last line waits for its newline; a file that
shrinks or is replaced (new inode: rotation) is read again from the start; a
line longer than `max_line` bytes is cut there and the rest of it dropped, so
nothing is buffered without bound. Files are opened through `StateDir` (no
symlink followed, regular files only: a FIFO named `x.log` never blocks).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..models import LogEventData
from ..statedir import StateDir

log = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
MAX_LINE = 64 * 1024
# Read at most this much per poll and file; the rest is read on the next loop turn.
READ_CHUNK = 1024 * 1024

LEVEL_LINE = re.compile(
    r"^\s*\[(DEBUG|INFO|WARN|WARNING|ERROR)\]\s*(?:\[([^\]]*)\]\s*)?(.*)$", re.IGNORECASE
)

Publish = Callable[[str, LogEventData, str], None]


def parse_log_line(line: str) -> tuple[str, str | None, str]:
    """`[LEVEL] [source] message` / `[LEVEL] message` / anything → (level, source, message)."""
    match = LEVEL_LINE.match(line)
    if match is None:
        return "info", None, line
    level = match.group(1).lower()
    return ("warn" if level == "warning" else level), (match.group(2) or None), match.group(3)


@dataclass
class _Tail:
    inode: int
    offset: int = 0
    partial: bytes = b""
    # Inside an over-long line: drop bytes until its newline.
    skipping: bool = False


class LogTailer:
    """Turns appended lines of session log files into `log:*` events."""

    def __init__(
        self,
        sessions_dir: Path,
        publish: Publish,
        *,
        max_line: int = MAX_LINE,
        files: StateDir | None = None,
    ) -> None:
        self.sessions_dir = sessions_dir
        self.files = files or StateDir(sessions_dir.parent)
        self.publish = publish
        self.max_line = max_line
        self._tails: dict[Path, _Tail] = {}

    def log_files(self) -> list[Path]:
        """Every `<sessions>/<id>/*.log` there is now."""
        files = self.files
        return [
            self.sessions_dir / session / name
            for session in files.list(self.sessions_dir, dirs=True)
            for name in files.list(self.sessions_dir / session, suffix=LOG_SUFFIX)
        ]

    def logs_in(self, directory: Path) -> list[Path]:
        """Every `*.log` regular file in one session directory."""
        return [directory / name for name in self.files.list(directory, suffix=LOG_SUFFIX)]

    def prime(self, saved: dict[Path, tuple[int, int]] | None = None) -> None:
        """Start every existing log where the previous server stopped reading it
        (`saved`: path → (inode, offset)), else at its end: old lines were announced."""
        saved = saved or {}
        for path in self.log_files():
            stat = self.files.lstat(path)
            if stat is None:
                continue
            inode, offset = saved.get(path, (None, None))
            if inode == stat.st_ino and offset is not None and 0 <= offset <= stat.st_size:
                self._tails[path] = _Tail(stat.st_ino, offset)
            else:
                self._tails[path] = _Tail(stat.st_ino, stat.st_size)

    def positions_under(self, directory: Path) -> dict[str, tuple[int, int]]:
        """Where each log in `directory` was read up to: name → (inode, offset of the
        first byte not yet published), for a successor to go on from."""
        return {
            path.name: (tail.inode, tail.offset - len(tail.partial))
            for path, tail in self._tails.items()
            if path.parent == directory and not tail.skipping
        }

    def poll_all(self) -> bool:
        """Poll every log file (after a rescan); True when one has more to read."""
        more = False
        for path in set(self.log_files()) | set(self._tails):
            more |= self.poll(path)
        return more

    def poll(self, path: Path) -> bool:
        """Publish the new complete lines of one file. True when more is left to read."""
        fd = self.files.open_read(path)
        if fd is None:  # gone, or not a regular file (skipped, warned once)
            self._tails.pop(path, None)
            return False
        try:
            stat = os.fstat(fd)
            tail = self._tails.get(path)
            if tail is None or tail.inode != stat.st_ino or stat.st_size < tail.offset:
                tail = self._tails[path] = _Tail(stat.st_ino)
            if stat.st_size == tail.offset:
                return False
            data = os.pread(fd, min(stat.st_size - tail.offset, READ_CHUNK), tail.offset)
        except OSError as exc:
            log.debug("cannot read %s: %s", path, exc)
            return False
        finally:
            os.close(fd)
        tail.offset += len(data)
        self._feed(path, tail, data)
        return tail.offset < stat.st_size

    def forget(self, path: Path) -> None:
        self._tails.pop(path, None)

    def known_under(self, directory: Path) -> list[Path]:
        """The log files being tailed in `directory`."""
        return [path for path in self._tails if path.parent == directory]

    def _feed(self, path: Path, tail: _Tail, data: bytes) -> None:
        if tail.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            tail.skipping = False
            data = data[newline + 1 :]
        lines = (tail.partial + data).split(b"\n")
        tail.partial = lines.pop()
        if len(tail.partial) > self.max_line:
            lines.append(tail.partial)
            tail.partial = b""
            tail.skipping = True
        session_id = path.parent.name
        for line in lines:
            self._emit(session_id, path.name, line[: self.max_line])

    def _emit(self, session_id: str, file_name: str, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        level, source, message = parse_log_line(text)
        self.publish(
            f"log:{level}",
            LogEventData(level=level, message=message, source=source, context={"file": file_name}),
            session_id,
        )
