"""Control files and human input for a session directory (SPEC §5.3)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from pathlib import Path
from typing import Literal

from ..atomic import write_atomically

PAUSE_FILE = "PAUSE"
STOP_FILE = "STOP"
HUMAN_INPUT_FILE = "HUMAN_INPUT.md"
INPUT_FIFO = "input.fifo"


def write_pause(session_dir: Path) -> None:
    (session_dir / PAUSE_FILE).write_bytes(b"")


def clear_pause(session_dir: Path) -> None:
    """Remove `PAUSE` and `STOP`, so the session carries on."""
    for name in (PAUSE_FILE, STOP_FILE):
        with contextlib.suppress(FileNotFoundError):
            (session_dir / name).unlink()


def stop_requested(session_dir: Path) -> bool:
    return (session_dir / STOP_FILE).exists()


def inject_input(session_dir: Path, text: str) -> Literal["fifo", "file"]:
    """Hand `text` to the session; never blocks.

    Through `input.fifo` when the session created one and reads it (a write of
    at most PIPE_BUF bytes is atomic, so the line arrives whole); otherwise
    appended to `HUMAN_INPUT.md`, atomically (temp file + rename).
    """
    data = (text if text.endswith("\n") else text + "\n").encode()
    if len(data) <= select.PIPE_BUF and _write_fifo(session_dir / INPUT_FIFO, data):
        return "fifo"
    append_atomically(session_dir / HUMAN_INPUT_FILE, data)
    return "file"


def _write_fifo(path: Path, data: bytes) -> bool:
    try:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENOENT: no fifo; ENXIO: nobody reads it
        return False
    try:
        return os.write(fd, data) == len(data)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EPIPE):  # full, or the reader just left
            return False
        raise
    finally:
        os.close(fd)


def append_atomically(path: Path, data: bytes) -> None:
    """`path` gains `data` at its end; readers see the old file or the new one."""
    try:
        existing = path.read_bytes()
    except FileNotFoundError:
        existing = b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    write_atomically(path, existing + data)
