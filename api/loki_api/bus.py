"""The in-memory event bus: sequence numbers, history ring buffer, fan-out, stats.

An event is encoded exactly once, when it is published: the envelope JSON (kept
for history and the durable log) and the complete SSE frame (shared by every
subscriber). Fan-out appends that one `bytes` object to each matching
subscriber's pending list, so a thousand subscribers cost a thousand list
appends, not a thousand encodes.

Subscribers with equal filters share a group, so a filter is evaluated once per
group, not once per subscriber.

Once per event-loop turn a single tick flushes the durable log and tells each
touched subscriber's stream to write what is pending (see `sse.py`), so a
burst reaches a stream as one write and no task is woken per subscriber.

A subscriber whose socket is full (`blocked`) and whose pending list passes
`max_pending` frames is cut off (its stream ends and the client resumes with
`Last-Event-ID`): a slow reader never blocks the bus or grows memory without
bound.

All methods must be called from the event loop's thread (the watcher hands
its work to the loop before it publishes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .encoding import decode_raw_event, encode
from .eventlog import EventLog, seq_of
from .filters import MATCH_ALL, EventFilter
from .models import Event

log = logging.getLogger(__name__)

PING_FRAME = b": ping\n\n"


def sse_frame(event_id: str, event_type: str, json: bytes) -> bytes:
    return b"".join(
        (b"id: ", event_id.encode(), b"\nevent: ", event_type.encode(), b"\ndata: ", json, b"\n\n")
    )


def iso_timestamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class StoredEvent:
    """One published event, already encoded."""

    __slots__ = ("seq", "type", "session_id", "json", "frame")

    def __init__(
        self, seq: int, event_id: str, type: str, session_id: str | None, json: bytes
    ) -> None:
        self.seq = seq
        self.type = type
        self.session_id = session_id
        self.json = json
        self.frame = sse_frame(event_id, type, json)


class Subscriber:
    """One stream's frames waiting to be written, and how to tell its writer.

    The bus appends frames to `pending` and, once per event-loop turn, calls
    `on_ready` of every subscriber that got frames (or was closed) since the
    last turn. While `blocked` (the stream is still sending its opening, or its
    socket is full), the stream drains `pending` itself and `on_ready` is not
    needed; only a blocked subscriber can be cut off as too slow.
    """

    __slots__ = ("filter", "pending", "closed", "overflowed", "blocked", "dirty", "on_ready")

    def __init__(self, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self.pending: list[bytes] = []
        self.closed = False
        self.overflowed = False
        self.blocked = True
        self.dirty = False
        self.on_ready: Callable[[], None] | None = None

    def take(self) -> list[bytes]:
        frames, self.pending = self.pending, []
        return frames


class EventBus:
    def __init__(
        self,
        history: int = 1000,
        log: EventLog | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self._history: deque[StoredEvent] = deque(maxlen=max(history, 0))
        self._history_limit = history
        self._log = log
        self.max_pending = max_pending
        self._groups: dict[EventFilter, set[Subscriber]] = {}
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_scheduled = False
        # Subscribers that got frames (or were closed) since the last loop turn.
        self._dirty: list[Subscriber] = []
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.by_type: Counter[str] = Counter()
        if log is not None:
            self.attach_log(log)

    # ------------------------------------------------------------------ state

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def history_size(self) -> int:
        return len(self._history)

    @property
    def subscriber_count(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def attach_log(self, log: EventLog) -> None:
        """Persist to `log` from now on, refilling history and the sequence from its tail."""
        self._log = log
        tail, last_seq = log.load_tail(self._history_limit)
        self._seq = max(self._seq, last_seq)
        for seq, json in tail:
            raw = decode_raw_event(json)
            self._history.append(StoredEvent(seq, raw.id, raw.type, raw.session_id, json))

    # ---------------------------------------------------------------- publish

    def publish(self, type: str, data: Any, session_id: str | None = None) -> Event:
        """Stamp, encode once, record and fan out one event. Returns the envelope."""
        self._seq += 1
        seq = self._seq
        now = time.time()
        event_id = f"evt_{seq}_{int(now * 1000)}"
        event = Event(id=event_id, type=type, timestamp=iso_timestamp(now),
                      session_id=session_id, data=data)
        stored = StoredEvent(seq, event_id, type, session_id, encode(event))
        self._history.append(stored)
        self.published += 1
        self.by_type[type] += 1
        if self._log is not None:
            self._log.append(stored.json)
        frame = stored.frame
        limit = self.max_pending
        dirty = self._dirty
        too_slow: list[Subscriber] = []
        for event_filter, group in self._groups.items():
            if event_filter is MATCH_ALL or event_filter.matches(type, session_id):
                for subscriber in group:
                    pending = subscriber.pending
                    if subscriber.blocked and len(pending) >= limit:
                        too_slow.append(subscriber)  # cut off after the loop: no mutation here
                        continue
                    pending.append(frame)
                    if not subscriber.dirty:
                        subscriber.dirty = True
                        dirty.append(subscriber)
        for subscriber in too_slow:
            self._cut_off(subscriber)
        self._schedule_tick()
        return event

    def bind_loop(self) -> None:
        """Remember the running loop: the once-per-turn tick is scheduled on it."""
        self._loop = asyncio.get_running_loop()

    def _schedule_tick(self) -> None:
        """Run `_tick` once at the end of this loop turn, however many events came in it."""
        if self._tick_scheduled:
            return
        if self._loop is None:
            self.flush()  # no loop (plain unit use): persist now, streams read `pending`
            return
        self._tick_scheduled = True
        self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        """Once per loop turn: persist the turn's events, then let every touched stream write.

        A burst published in one turn reaches each stream as one write.
        """
        self._tick_scheduled = False
        self.flush()
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber.dirty = False
            if subscriber.on_ready is not None:
                try:
                    subscriber.on_ready()
                except Exception:  # one broken stream must not starve the others
                    log.exception("event stream write failed; dropping the subscriber")
                    subscriber.on_ready = None
                    self.close_subscriber(subscriber)

    def flush(self) -> None:
        if self._log is not None:
            self._log.flush()

    def close_streams(self) -> None:
        """End every open stream (server shutdown); clients resume with Last-Event-ID."""
        for group in list(self._groups.values()):
            for subscriber in list(group):
                self.close_subscriber(subscriber)
        self._groups.clear()

    def close_subscriber(self, subscriber: Subscriber) -> None:
        """Stop sending to `subscriber`; its stream ends after what is pending."""
        self.unsubscribe(subscriber)
        subscriber.closed = True
        self._mark(subscriber)

    def close(self) -> None:
        self.close_streams()
        if self._log is not None:
            self._log.close()

    # --------------------------------------------------------------- subscribe

    def subscribe(
        self,
        event_filter: EventFilter = MATCH_ALL,
        *,
        after_id: str | None = None,
        last: int = 0,
    ) -> tuple[Subscriber, list[StoredEvent]]:
        """Add a subscriber and return it with the history it should replay first.

        Both happen in one step on the loop thread, so no event can fall between
        the replayed history and the first live one, and none is sent twice.
        `after_id` (a `Last-Event-ID`) wins over `last`.
        """
        if after_id is not None:
            replay = self.history(event_filter, after_id=after_id)
        elif last > 0:
            replay = self.history(event_filter, limit=last)
        else:
            replay = []
        if event_filter == MATCH_ALL:
            event_filter = MATCH_ALL  # share the identity fast path in publish
        subscriber = Subscriber(event_filter)
        self._groups.setdefault(event_filter, set()).add(subscriber)
        return subscriber, replay

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = self._groups.get(subscriber.filter)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self._groups[subscriber.filter]

    def _cut_off(self, subscriber: Subscriber) -> None:
        subscriber.overflowed = True
        self.dropped += 1  # the frame that did not fit; the client resumes from its last id
        self.close_subscriber(subscriber)

    def _mark(self, subscriber: Subscriber) -> None:
        if not subscriber.dirty:
            subscriber.dirty = True
            self._dirty.append(subscriber)
        self._schedule_tick()

    def ping_all(self) -> None:
        """Queue a keep-alive comment on every stream (one pass, no per-stream timers)."""
        for group in self._groups.values():
            for subscriber in group:
                subscriber.pending.append(PING_FRAME)
                self._mark(subscriber)

    # ----------------------------------------------------------------- history

    def history(
        self,
        event_filter: EventFilter = MATCH_ALL,
        *,
        limit: int | None = None,
        after_id: str | None = None,
    ) -> list[StoredEvent]:
        """Matching events in order.

        With `after_id`: the first `limit` events after it (paging forward, as a
        resuming client reads). Without: the last `limit` events.
        """
        after_seq = seq_of(after_id) if after_id is not None else None
        if after_id is not None and after_seq is None:
            raise ValueError(f"not an event id: {after_id!r}")
        if limit is not None and limit <= 0:
            return []
        selected: list[StoredEvent] = []
        for stored in reversed(self._history):
            if after_seq is not None and stored.seq <= after_seq:
                break
            if event_filter.matches(stored.type, stored.session_id):
                selected.append(stored)
                if after_seq is None and limit is not None and len(selected) >= limit:
                    break
        selected.reverse()
        if after_seq is not None and limit is not None:
            del selected[limit:]
        return selected
