"""What this node published and JetStream has not acknowledged yet, in publish order.

Bounded (`--publish-buffer`, 100,000 by default): while NATS is unreachable
events wait here, and once it is full further events are counted in `lost`
instead of growing memory. Entries are numbered; the number becomes part of
the `Nats-Msg-Id` header, so when unacknowledged entries are sent again after a
reconnect or a timeout, JetStream's duplicate window drops the copies of
those it had already stored. An entry is acknowledged when the node reads it
back from the stream.

Entries are (subject, payload) tuples, which the garbage collector stops
tracking, with acks out of order (rare) and notes (the output position of
a session's events) kept aside: a burst puts tens of thousands of entries
here, and lists would make every collection walk them all.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any


class Outbox:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        # (subject, payload); entry i has number `_first + i`.
        self._entries: deque[tuple[bytes, bytes]] = deque()
        self._first = 1
        self._acked: set[int] = set()  # acknowledged, but not the oldest entry yet
        # What the sender attached to an entry (an output position), handed back by
        # `take_unsent` and `ack`.
        self._notes: dict[int, Any] = {}
        self._send_from = 1  # number of the first entry not sent yet
        # Entries numbered below this were sent before (a rewind): they go out asking for an ack.
        self.resend_until = 1
        self.lost = 0
        self.acked = 0
        # Last time an ack came (noted by `note_progress`) or a rewind re-sent everything.
        self.progress_at = time.monotonic()
        self._acked_seen = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def in_flight(self) -> bool:
        """Some entries were sent and are still waiting for their ack."""
        return self._send_from > self._first

    def append(self, subject: bytes, payload: bytes) -> bool:
        """Queue one event; False (and counted as lost) when the buffer is full."""
        if len(self._entries) >= self.limit:
            self.lost += 1
            return False
        self._entries.append((subject, payload))
        return True

    @property
    def last_number(self) -> int:
        """The number of the newest entry (the one just appended)."""
        return self._first + len(self._entries) - 1

    def attach(self, number: int, note: object) -> bool:
        """Attach `note` to entry `number` if it is still queued and not sent; True if done."""
        if number < self._send_from or number > self.last_number:
            return False
        self._notes[number] = note
        return True

    def take_unsent(self) -> Iterator[tuple[int, bytes, bytes, Any]]:
        """(number, subject, payload, note) of each unsent entry, oldest first; marks them sent."""
        entries = self._entries
        first = self._first
        start = self._send_from - first
        end = len(entries)
        self._send_from = first + end
        acked = self._acked
        notes = self._notes
        for index in range(start, end):
            number = first + index
            if acked and number in acked:
                continue
            subject, payload = entries[index]
            yield number, subject, payload, notes.get(number) if notes else None

    def ack(self, number: int) -> Any:
        """JetStream stored entry `number`: drop it (and any acked run after it); its note."""
        first = self._first
        entries = self._entries
        acked = self._acked
        if not first <= number < first + len(entries) or number in acked:
            return None
        self.acked += 1
        if number == first:
            entries.popleft()
            first += 1
            while acked and first in acked:
                acked.discard(first)
                entries.popleft()
                first += 1
            self._first = first
            if self._send_from < first:
                self._send_from = first
        else:
            acked.add(number)
        return self._notes.pop(number, None) if self._notes else None

    def note_progress(self, now: float) -> None:
        """Called periodically: acks since the last call move `progress_at` to `now`.

        (Not read at each ack: a clock read per event costs more than this check.)
        """
        if self.acked != self._acked_seen:
            self._acked_seen = self.acked
            self.progress_at = now

    def rewind(self) -> None:
        """Send every unacknowledged entry again (after a reconnect or an ack timeout)."""
        self.resend_until = max(self.resend_until, self._send_from)
        self._send_from = self._first
        self.progress_at = time.monotonic()
