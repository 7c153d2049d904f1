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

import logging
import os
from collections import deque
from pathlib import Path

import msgspec

from .models import RawEvent

log = logging.getLogger(__name__)

CURRENT = "events.jsonl"
PREVIOUS = "events.1.jsonl"
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
    """

    def __init__(self, directory: Path, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / CURRENT
        self._file = open(self._path, "ab")  # noqa: SIM115 - lives as long as the log
        self._size = self._file.tell()
        self._buffer: list[bytes] = []
        self.write_errors = 0  # failed flushes, for /metrics
        # Session id -> output file name -> offset published up to (read by `load_tail`).
        self.output_positions: dict[str, dict[str, int]] = {}

    def load_tail(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """The last `limit` events as `(seq, json)` pairs, and the highest seq on disk.

        Lines that do not decode (a write cut short by a crash) are skipped.
        Output positions on the way are kept in `output_positions`.
        """
        tail: deque[tuple[int, bytes]] = deque(maxlen=max(limit, 1))
        last_seq = 0
        for path in (self.directory / PREVIOUS, self._path):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for line in data.splitlines():
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

    def append(self, line: bytes) -> None:
        """Queue one event's JSON; written at the next `flush`."""
        self._buffer.append(line)

    def flush(self) -> None:
        if not self._buffer:
            return
        chunk = b"\n".join(self._buffer) + b"\n"
        self._buffer.clear()
        try:
            self._file.write(chunk)
            self._file.flush()
        except OSError as exc:  # a full disk must not stop the stream; say so and go on
            self.write_errors += 1
            log.error("cannot write event log %s: %s", self._path, exc)
            return
        self._size += len(chunk)
        if self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self._path, self.directory / PREVIOUS)
        self._file = open(self._path, "ab")  # noqa: SIM115
        self._size = 0
        # Every session's last position starts the new file, so it outlives the next rotation.
        for session_id, offsets in self.output_positions.items():
            self.record_position(session_id, offsets)

    def close(self) -> None:
        self.flush()
        self._file.close()
