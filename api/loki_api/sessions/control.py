"""Control files and human input for a session directory (SPEC §5.3).

All through `StateDir`: a `PAUSE` or `HUMAN_INPUT.md` planted as a symlink is
replaced (rename), never written through; one that is a directory makes the
call fail with `UnusableEntry` (409 at the HTTP edge), never a 500.
"""

from __future__ import annotations

import errno
import os
import select
from pathlib import Path
from typing import Literal

from ..statedir import StateDir, UnusableEntry

PAUSE_FILE = "PAUSE"
STOP_FILE = "STOP"
HUMAN_INPUT_FILE = "HUMAN_INPUT.md"
INPUT_FIFO = "input.fifo"


def write_pause(files: StateDir, session_dir: Path) -> None:
    files.write_atomic(session_dir / PAUSE_FILE, b"")


def clear_pause(files: StateDir, session_dir: Path) -> None:
    """Remove `PAUSE` and `STOP`, so the session carries on."""
    for name in (PAUSE_FILE, STOP_FILE):
        files.remove(session_dir / name)


def request_stop(files: StateDir, session_dir: Path) -> None:
    files.write_atomic(session_dir / STOP_FILE, b"")


def stop_requested(files: StateDir, session_dir: Path) -> bool:
    return files.exists(session_dir / STOP_FILE)


def inject_input(files: StateDir, session_dir: Path, text: str) -> Literal["fifo", "file"]:
    """Hand `text` to the session; never blocks.

    Through `input.fifo` when the session created one and reads it (a write of
    at most PIPE_BUF bytes is atomic, so the line arrives whole); otherwise
    appended to `HUMAN_INPUT.md`, atomically (temp file + rename).
    """
    data = (text if text.endswith("\n") else text + "\n").encode()
    if len(data) <= select.PIPE_BUF and _write_fifo(files, session_dir / INPUT_FIFO, data):
        return "fifo"
    append_atomically(files, session_dir / HUMAN_INPUT_FILE, data)
    return "file"


def _write_fifo(files: StateDir, path: Path, data: bytes) -> bool:
    fd = files.open_fifo(path)  # None: no fifo, a symlink, or nobody reads it
    if fd is None:
        return False
    try:
        return os.write(fd, data) == len(data)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EPIPE):  # full, or the reader just left
            return False
        raise
    finally:
        os.close(fd)


def append_atomically(files: StateDir, path: Path, data: bytes) -> None:
    """`path` gains `data` at its end; readers see the old file or the new one."""
    existing = files.read(path)
    if existing is None:
        if files.is_file(path):  # there, but over the size cap: never drop what it holds
            raise UnusableEntry(errno.EFBIG, "over the size cap", files.relative(path))
        existing = b""  # missing, or a symlink / special file: replaced
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    files.write_atomic(path, existing + data)
