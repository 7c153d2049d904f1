"""The durable event log under `.loki/events/`: append-only JSON lines, bounded by rotation.

Every published event is appended as one line of envelope JSON. Writes are
buffered and flushed once per event-loop turn (the bus asks for it), so a burst
costs one `write` call rather than one per event. At start-up the tail of the log
refills the bus's history and tells it the last sequence number, so ids keep
increasing across restarts.

Output read positions share the log: after the events of a session's output
lines, the supervisor appends `{"outputPosition": {"sessionId", "offsets"}}`
(how far each output file has been published). Both go out in the same
`write`, and that write happens before any socket sees those events, so after
a SIGKILL a restarted server resumes reading exactly after the last line that
may have reached a client (`output_positions`): no line is published twice,
none is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from pathlib import PurePath

import msgspec

from .models import RawEvent
from .statedir import StateDir, json_shape_problem, write_all

log = logging.getLogger(__name__)

CURRENT = "events.jsonl"
PREVIOUS = "events.1.jsonl"
# Health key while the log cannot be written (a directory or symlink in its place).
HEALTH_KEY = "eventLog"
# Events kept for a retry while the log cannot be written; older ones are dropped.
MAX_RETAINED = 10_000
MAX_RETAINED_BYTES = 8 * 1024 * 1024
# Seconds between attempts to open a log that could not be opened.
REOPEN_INTERVAL = 1.0
_decoder = msgspec.json.Decoder(RawEvent)
POSITION_PREFIX = b'{"outputPosition":'


class OutputPosition(msgspec.Struct, rename="camel"):
    session_id: str
    offsets: dict[str, int]


class _PositionRecord(msgspec.Struct, rename="camel"):
    output_position: OutputPosition


_position_encoder = msgspec.json.Encoder()
_position_decoder = msgspec.json.Decoder(_PositionRecord)


def seq_of(event_id: str) -> int | None:
    """The sequence number inside `evt_<seq>_<ms>`, or None when the id is not ours."""
    parts = event_id.split("_")
    if len(parts) != 3 or parts[0] != "evt" or not parts[1].isdigit():
        return None
    return int(parts[1])


class EventLog:
    """Append-only JSON-lines log with one rotated predecessor.

    Holds at most about `2 * max_bytes` on disk: when the current file passes
    `max_bytes` it becomes `events.1.jsonl` (replacing the older one).

    Never fatal: when the file cannot be opened or written (a directory or a
    symlink where it should be, a full disk) the server goes on without it,
    `/health` says why, events wait (bounded) for the next successful write,
    and opening is retried. A failed write is cut back off the file, so the log
    never holds half a line.
    """

    def __init__(
        self, files: StateDir, directory: str = "events", max_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.files = files
        self.directory = directory
        self.max_bytes = max_bytes
        self._path = PurePath(directory, CURRENT)
        self._previous = PurePath(directory, PREVIOUS)
        self._fd: int | None = None
        self._size = 0
        self._buffer: list[bytes] = []
        self._dropped = 0
        self._reopen_at = 0.0
        # Session id -> output file name -> offset published up to (read by `load_tail`).
        self.output_positions: dict[str, dict[str, int]] = {}
        self._open()

    def _open(self) -> bool:
        try:
            fd = self.files.open_append(self._path)
        except OSError as exc:
            self._fd = None
            self._reopen_at = time.monotonic() + REOPEN_INTERVAL
            self.files.health.report(HEALTH_KEY, f"durable event log .loki/{self._path} off: {exc}")
            return False
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self.files.health.clear(HEALTH_KEY)
        return True

    def load_tail(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """The last `limit` events as `(seq, json)` pairs, and the highest seq on disk.

        Lines that do not decode (a write cut short by a crash) are skipped. Only
        the last `2 * max_bytes` of each file are read, whatever its size.
        Output positions on the way are kept in `output_positions`.
        """
        tail: deque[tuple[int, bytes]] = deque(maxlen=max(limit, 1))
        last_seq = 0
        limits = self.files.limits
        for path in (self._previous, self._path):
            for line in self._read_end(path).splitlines():
                if line.count(b"[") + line.count(b"{") > limits.max_depth and (
                    json_shape_problem(line, limits.max_depth, limits.max_values) is not None
                ):
                    continue
                if line.startswith(POSITION_PREFIX):
                    self._load_position(line)
                    continue
                try:
                    seq = seq_of(_decoder.decode(line).id)
                except msgspec.DecodeError:
                    continue
                if seq is None or seq <= last_seq:
                    continue
                last_seq = seq
                tail.append((seq, line))
        return (list(tail) if limit > 0 else []), last_seq

    def _load_position(self, line: bytes) -> None:
        try:
            position = _position_decoder.decode(line).output_position
        except msgspec.DecodeError:
            return
        self.output_positions[position.session_id] = position.offsets

    def record_position(self, session_id: str, offsets: dict[str, int]) -> None:
        """Queue a session's output read position; written with the events queued before it."""
        self.output_positions[session_id] = offsets
        record = _PositionRecord(OutputPosition(session_id, offsets))
        self._buffer.append(_position_encoder.encode(record))

    def _read_end(self, path: PurePath) -> bytes:
        fd = self.files.open_read(path)
        if fd is None:
            return b""
        try:
            size = os.fstat(fd).st_size
            window = 2 * self.max_bytes
            start = max(0, size - window)
            data = os.pread(fd, size - start, start)
        except OSError as exc:
            log.warning("cannot read .loki/%s: %s", path, exc)
            return b""
        finally:
            os.close(fd)
        if start > 0:  # began mid-line: drop that part
            data = data[data.find(b"\n") + 1 :]
        return data

    def append(self, line: bytes) -> None:
        """Queue one event's JSON; written at the next `flush`."""
        self._buffer.append(line)

    def flush(self) -> None:
        """Write what is queued; a log that could not be opened is retried when due
        (also with nothing queued, so its health clears without waiting for an event)."""
        if self._fd is None and time.monotonic() >= self._reopen_at:
            self._open()
        if not self._buffer:
            return
        if self._fd is None:
            self._retain()
            return
        assert self._fd is not None
        chunk = b"\n".join(self._buffer) + b"\n"
        try:
            write_all(self._fd, chunk)
        except OSError as exc:  # a full disk must not stop the stream; say so, retry later
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no half line left behind
            self.files.storage_failed(str(self._path), exc)
            log.debug("cannot write event log %s: %s", self._path, exc)
            self._retain()
            return
        self._buffer.clear()
        if self._dropped:
            log.warning("event log writable again; %d event(s) were not kept", self._dropped)
            self._dropped = 0
        self.files.storage_ok()
        self._size += len(chunk)
        if self._size >= self.max_bytes:
            self._rotate()

    def _retain(self) -> None:
        """Keep the newest unwritten events (at most `MAX_RETAINED`, `MAX_RETAINED_BYTES`)
        for the next try; older ones are dropped, counted and logged once."""
        kept = size = 0
        for line in reversed(self._buffer):
            if kept == MAX_RETAINED or size + len(line) > MAX_RETAINED_BYTES:
                break
            kept += 1
            size += len(line)
        excess = len(self._buffer) - kept
        if excess > 0:
            if not self._dropped:
                log.error("event log unwritable; dropping the oldest unwritten events")
            del self._buffer[:excess]
            self._dropped += excess

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self.files.rename(self._path, self._previous)
        except OSError as exc:
            log.warning("cannot rotate the event log: %s", exc)
        self._open()
        # Every session's last position starts the new file, so it outlives the next rotation.
        for session_id, offsets in self.output_positions.items():
            self.record_position(session_id, offsets)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
