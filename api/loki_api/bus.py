"""The in-memory event bus: sequence numbers, history ring buffer, fan-out, stats.

An event is encoded exactly once, when it is published: the envelope JSON (kept
for history and the durable log) and the complete SSE frame (shared by every
subscriber).

Subscribers with equal filters share a group, so a filter is evaluated once per
group, not once per subscriber. A group's subscribers are either

- live: keeping up. Publishing appends the frame to the group's batch, once
  for all of them; or
- waiting: still sending their opening, or their socket is full, or just
  caught up. Each gets the frame on its own `pending` list.

Once per event-loop turn a single tick flushes the durable log, hands each
touched group's batch (joined once) to every live stream of the group, and
tells each touched waiting stream to write its `pending` (see `sse.py`). A
burst reaches a stream as one write, no task is woken per subscriber, and a
line to a thousand live subscribers costs one append at publish time and a
thousand socket writes of the same bytes at the tick. A waiting stream that
writes everything it had in the tick becomes live; a live stream whose socket
fills up becomes waiting (and drains by itself). Both switches happen in the
tick, after the turn's batches were written, so no frame is sent twice or
skipped.

A waiting subscriber whose socket is full (`blocked`) and whose pending list
passes `max_pending` frames (keep-alive pings included) is cut off: it leaves
the bus, and its stream hangs up (final comment, connection closed) so the
client resumes with `Last-Event-ID` at once. A slow reader never blocks the bus
or grows memory without bound.

Resuming from an id the history no longer reaches (or one that is not ours) is
a *gap*, said to the client before the replay (`resume_gap`).

All methods must be called from the event loop's thread (the watcher hands
its work to the loop before it publishes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from .encoding import decode_raw_event, encode
from .eventlog import EventLog, seq_of
from .filters import MATCH_ALL, EventFilter
from .models import Event, EventStats, StreamGap
from .tally import Buckets

log = logging.getLogger(__name__)

PING_FRAME = b": ping\n\n"
# One of our ids: ASCII digits of a sane length, so `seq_of` never meets "²" or
# a 5000-digit number.
EVENT_ID = re.compile(r"evt_[0-9]{1,19}_[0-9]{1,19}")


def sse_frame(event_id: str, event_type: str, json: bytes) -> bytes:
    return b"".join(
        (b"id: ", event_id.encode(), b"\nevent: ", event_type.encode(), b"\ndata: ", json, b"\n\n")
    )


def gap_frame(gap: StreamGap) -> bytes:
    """The `gap` message: no `id:`, so a browser keeps resuming from what it asked."""
    return b"event: gap\ndata: %s\n\n" % encode(gap)


def iso_timestamp(unix: float) -> str:
    """`2026-11-29T05:20:12.345Z`; a burst in one millisecond formats it once."""
    ms = int(unix * 1000)
    cached = _last_timestamp
    if cached[0] == ms:
        return cached[1]
    moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
    text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    _last_timestamp[:] = (ms, text)
    return text


_last_timestamp: list[Any] = [-1, ""]


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

    @property
    def id(self) -> str:
        frame = self.frame
        return frame[4 : frame.index(b"\n")].decode()


class Batch:
    """The frames one group got in one loop turn, joined once for all its live streams.

    `chunk` and `message` are spare slots for the stream layer to cache its
    wire forms of `body` in, so those too are built once per batch.
    """

    __slots__ = ("frames", "events", "body", "chunk", "message")

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.events = len(frames) - frames.count(PING_FRAME)
        self.body = b"".join(frames)
        self.chunk: bytes | None = None
        self.message: dict[str, Any] | None = None


class StreamWriter(Protocol):
    """What the tick needs from a subscriber's stream (`sse.SubscriberStream`)."""

    def write_pending(self) -> bool:
        """Write the subscriber's `pending` frames (or its end); True if the socket took all."""

    def write_batch(self, batch: Batch) -> bool:
        """Write a live subscriber's share of a batch; False if its socket is now full."""


class Subscriber:
    """One stream's place in the bus: its filter, and how its frames reach it.

    `live`: frames come as its group's batches. Otherwise they are appended to
    `pending`. `blocked`: its stream is writing by itself (the opening, or a
    full socket); the tick leaves it alone, and only a blocked subscriber can
    be cut off as too slow. `writer` is set by the stream once it is ready for
    the tick; `hangup`, by the stream at once: a cut-off calls it to close the
    connection right away.
    """

    __slots__ = (
        "filter",
        "pending",
        "closed",
        "overflowed",
        "blocked",
        "dirty",
        "live",
        "writer",
        "hangup",
    )

    def __init__(self, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self.pending: list[bytes] = []
        self.closed = False
        self.overflowed = False
        self.blocked = True
        self.dirty = False
        self.live = False
        self.writer: StreamWriter | None = None
        self.hangup: Callable[[], None] | None = None

    def take(self) -> list[bytes]:
        frames, self.pending = self.pending, []
        return frames


class _Group:
    """The subscribers of one filter; `batch` holds this turn's frames for the live ones."""

    __slots__ = ("filter", "live", "waiting", "batch")

    def __init__(self, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self.live: dict[Subscriber, None] = {}  # insertion-ordered set
        self.waiting: set[Subscriber] = set()
        self.batch: list[bytes] = []

    def __len__(self) -> int:
        return len(self.live) + len(self.waiting)


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
        self._groups: dict[EventFilter, _Group] = {}
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_scheduled = False
        # Since the last loop turn: groups whose batch got frames, and waiting
        # subscribers that got frames, were closed, or are ready to go live.
        self._dirty_groups: list[_Group] = []
        self._dirty: list[Subscriber] = []
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.by_type: Counter[str] = Counter()
        # Read by /metrics at scrape time (`metrics.py`); plain numbers, so counting is free.
        self.cutoffs = 0  # streams cut off as too slow (frame bound or send deadline)
        self.gaps = 0  # resumes that missed events (`resume_gap`)
        self.replays = 0  # subscriptions that asked for history
        self.replayed = 0  # events handed to them as replay
        # Publish -> socket write, once per loop turn: from the turn's first publish
        # to the end of the tick that wrote it (the oldest event's wait).
        self.write_latency = Buckets()
        self._turn_published_at: float | None = None
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

    async def stats(self) -> EventStats:
        """`/api/events/stats` (the cluster bus answers from its stream)."""
        return EventStats(
            subscribers=self.subscriber_count,
            history_size=self.history_size,
            published=self.published,
            delivered=self.delivered,
            dropped=self.dropped,
            by_type=dict(self.by_type),
        )

    def subscribers(self) -> list[Subscriber]:
        return [sub for group in self._groups.values() for sub in (*group.live, *group.waiting)]

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
        event = Event(
            id=event_id, type=type, timestamp=iso_timestamp(now), session_id=session_id, data=data
        )
        self._deliver(StoredEvent(seq, event_id, type, session_id, encode(event)), now)
        return event

    def _deliver(self, stored: StoredEvent, now: float) -> None:
        """Record one stamped event and fan it out to this process's subscribers.

        The in-memory bus calls it from `publish`; the cluster bus calls it for
        each event it consumes from the JetStream stream (ids from its sequence).
        `now` starts the publish -> socket write latency.
        """
        type = stored.type
        self._history.append(stored)
        self.published += 1
        self.by_type[type] += 1
        if self._turn_published_at is None:
            self._turn_published_at = now
        if self._log is not None:
            self._log.append(stored.json)
        session_id = stored.session_id
        frame = stored.frame
        too_slow: list[Subscriber] = []
        for event_filter, group in self._groups.items():
            if event_filter is MATCH_ALL or event_filter.matches(type, session_id):
                if group.live:
                    self._to_batch(group, frame)
                if group.waiting:
                    self._queue(group.waiting, frame, too_slow)
        for subscriber in too_slow:
            self._cut_off(subscriber)
        self._schedule_tick()

    def _to_batch(self, group: _Group, frame: bytes) -> None:
        """Append `frame` to the group's batch, for all its live subscribers at once."""
        if not group.batch:
            self._dirty_groups.append(group)
        group.batch.append(frame)

    def _queue(self, waiting: set[Subscriber], frame: bytes, too_slow: list[Subscriber]) -> None:
        """Append `frame` to each waiting subscriber's own list (bounded while blocked)."""
        limit = self.max_pending
        dirty = self._dirty
        for subscriber in waiting:
            pending = subscriber.pending
            if subscriber.blocked and len(pending) >= limit:
                too_slow.append(subscriber)  # cut off by the caller: no mutation here
                continue
            pending.append(frame)
            if not subscriber.dirty:
                subscriber.dirty = True
                dirty.append(subscriber)

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

        Batches first, to the live streams; then the waiting streams write their
        own frames, and those that wrote everything go live for the next turn.
        """
        self._tick_scheduled = False
        self.flush()
        groups, self._dirty_groups = self._dirty_groups, []
        for group in groups:
            batch = Batch(group.batch)
            group.batch = []
            live = list(group.live)  # a write may move a subscriber out of it
            self.delivered += batch.events * len(live)
            for subscriber in live:
                try:
                    if not subscriber.writer.write_batch(batch):  # type: ignore[union-attr]
                        self._wait(group, subscriber)  # its socket is full: it drains by itself
                except Exception:  # one broken stream must not starve the others
                    self._drop_broken(subscriber)
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber.dirty = False
            writer = subscriber.writer
            if writer is None:
                continue
            try:
                caught_up = writer.write_pending()
            except Exception:
                self._drop_broken(subscriber)
                continue
            if caught_up and not subscriber.closed and not subscriber.live:
                self._go_live(subscriber)
        published_at = self._turn_published_at
        if published_at is not None:
            self._turn_published_at = None
            if groups or dirty:  # something went to a socket (not only to the durable log)
                self.write_latency.observe(max(time.time() - published_at, 0.0))

    def _go_live(self, subscriber: Subscriber) -> None:
        """A waiting subscriber caught up: its frames come as its group's batches from now on."""
        group = self._groups.get(subscriber.filter)
        if group is not None and subscriber in group.waiting:
            group.waiting.discard(subscriber)
            group.live[subscriber] = None
            subscriber.live = True

    def _wait(self, group: _Group, subscriber: Subscriber) -> None:
        """A live subscriber falls behind: its frames go to its own list from now on."""
        if subscriber in group.live:
            del group.live[subscriber]
            group.waiting.add(subscriber)
        subscriber.live = False

    def _drop_broken(self, subscriber: Subscriber) -> None:
        log.exception("event stream write failed; dropping the subscriber")
        subscriber.writer = None
        self.close_subscriber(subscriber)

    def flush(self) -> None:
        """Write the queued events to the durable log (before any socket gets them)."""
        if self._log is not None:
            self._log.flush()

    def record_output_position(self, session_id: str, offsets: dict[str, int]) -> None:
        """Note how far a session's output is published, in the durable log after its events.

        Written in the same flush as those events, so a restarted server resumes
        reading right after the last line that may have reached a client.
        """
        if self._log is not None:
            self._log.record_position(session_id, offsets)

    def output_position(self, session_id: str) -> dict[str, int]:
        """The last output position the durable log holds for `session_id` (read at start-up)."""
        if self._log is None:
            return {}
        return dict(self._log.output_positions.get(session_id, {}))

    def forget_output(self, session_id: str) -> None:
        """A session is no longer supervised: its output position is not needed any more."""
        if self._log is not None:
            self._log.output_positions.pop(session_id, None)

    def saved_position(self, session_id: str, read: dict[str, int]) -> dict[str, int] | None:
        """What `supervisor.json` may say of a session's output: never ahead of the events kept.

        Here the durable log has every event up to `read` once flushed; the
        cluster bus answers with what its stream has confirmed (None: nothing yet).
        """
        self.flush()
        return read

    async def load_output_positions(self, session_ids: list[str]) -> None:
        """Before re-adopting sessions: the durable log's positions are loaded already."""

    def close_streams(self) -> None:
        """End every open stream (server shutdown); clients resume with Last-Event-ID."""
        for group in list(self._groups.values()):
            for subscriber in [*group.live, *group.waiting]:
                self.close_subscriber(subscriber)
        self._groups.clear()

    def close_subscriber(self, subscriber: Subscriber) -> None:
        """Stop sending to `subscriber`; its stream ends after what is pending."""
        if subscriber.live:
            group = self._groups.get(subscriber.filter)
            if group is not None and group.batch:
                # This turn's frames will not reach it as a batch any more: keep them.
                subscriber.pending.extend(group.batch)
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
        if after_id is not None or last > 0:
            self.replays += 1
            self.replayed += len(replay)
        if event_filter == MATCH_ALL:
            event_filter = MATCH_ALL  # share the identity fast path in publish
        subscriber = Subscriber(event_filter)
        group = self._groups.get(event_filter)
        if group is None:
            group = self._groups[event_filter] = _Group(event_filter)
        group.waiting.add(subscriber)  # until its stream has sent the opening
        return subscriber, replay

    async def open_subscription(
        self, event_filter: EventFilter, *, after_id: str | None, last: int
    ) -> tuple[Subscriber, list[StoredEvent], StreamGap | None]:
        """A new stream's subscriber, the history it replays first, and the gap it is told of.

        `after_id` is a `Last-Event-ID` (taken as it came; see `resume_gap`), `last`
        is `history=N`. An id that is not ours replays everything held. Nothing
        is awaited here, so nothing is published between the gap and the
        subscription; it is a coroutine because the cluster bus first reads what
        its ring no longer holds from the JetStream stream.
        """
        gap = None
        if after_id is not None:
            gap = self.resume_gap(after_id)
            if gap is not None and gap.missed is None:
                after_id = None
                last = self.history_size
        subscriber, replay = self.subscribe(event_filter, after_id=after_id, last=last)
        return subscriber, replay, gap

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = self._groups.get(subscriber.filter)
        if group is not None:
            group.live.pop(subscriber, None)
            group.waiting.discard(subscriber)
            if not len(group):
                del self._groups[subscriber.filter]
        subscriber.live = False

    def ready(self, subscriber: Subscriber) -> None:
        """Its stream stopped blocking: the next tick writes its pending, then it goes live."""
        subscriber.blocked = False
        self._mark(subscriber)

    def _cut_off(self, subscriber: Subscriber) -> None:
        self.dropped += 1  # the frame that did not fit; the client resumes from its last id
        self.cut_off(subscriber)

    def cut_off(self, subscriber: Subscriber) -> None:
        """End a too-slow stream now: it leaves the bus and its connection is closed."""
        if subscriber.closed:
            return
        subscriber.overflowed = True
        self.cutoffs += 1
        self.close_subscriber(subscriber)
        hangup = subscriber.hangup
        if hangup is not None:
            hangup()

    def _mark(self, subscriber: Subscriber) -> None:
        if not subscriber.dirty:
            subscriber.dirty = True
            self._dirty.append(subscriber)
        self._schedule_tick()

    def ping_all(self) -> None:
        """Queue a keep-alive comment on every stream (one pass, no per-stream timers).

        A ping counts toward a blocked stream's bound like any frame, so a reader
        that never reads is cut off even when no event is published.
        """
        too_slow: list[Subscriber] = []
        for group in self._groups.values():
            if group.live:
                self._to_batch(group, PING_FRAME)
            if group.waiting:
                self._queue(group.waiting, PING_FRAME, too_slow)
        for subscriber in too_slow:
            self._cut_off(subscriber)
        self._schedule_tick()

    # ----------------------------------------------------------------- history

    def resume_gap(self, after_id: str) -> StreamGap | None:
        """What a client resuming after `after_id` missed, or None when it missed nothing.

        An id older than the oldest held event: `missed` is how many events (of
        any type) fell out of history. An id that is not one of ours (malformed,
        from the future, or a held sequence number with another id): `missed` is
        None, and the client is replayed everything held (see `subscribe`).
        Each gap found is counted in `gaps`.
        """
        gap = self._gap(after_id)
        if gap is not None:
            self.gaps += 1
        return gap

    def _first_held(self) -> int:
        """The sequence of the oldest event held (the next one when none is)."""
        history = self._history
        return history[0].seq if history else self._seq + 1

    def _oldest_id(self) -> str | None:
        history = self._history
        return history[0].id if history else None

    def _not_ours(self, after_id: str) -> StreamGap:
        """The gap for an id that is not one of ours: its client gets everything held."""
        return StreamGap(last_event_id=after_id, resumed_from=self._oldest_id(), missed=None)

    def _gap(self, after_id: str) -> StreamGap | None:
        resumed_from = self._oldest_id()
        seq = seq_of(after_id) if EVENT_ID.fullmatch(after_id) else None
        if seq is None or seq > self._seq:
            return self._not_ours(after_id)
        first_held = self._first_held()
        if seq < first_held - 1:
            return StreamGap(
                last_event_id=after_id, resumed_from=resumed_from, missed=first_held - 1 - seq
            )
        if seq >= first_held and not after_id.endswith("_0") and self._held_id(seq) != after_id:
            return self._not_ours(after_id)
        return None

    def _held_id(self, seq: int) -> str | None:
        history = self._history
        index = seq - history[0].seq
        if 0 <= index < len(history) and history[index].seq == seq:
            return history[index].id
        for stored in history:  # sequence numbers not contiguous (a log cut short)
            if stored.seq == seq:
                return stored.id
        return None

    async def page(
        self, event_filter: EventFilter, *, limit: int, after_id: str | None
    ) -> list[StoredEvent]:
        """`/api/events/history` (the cluster bus reads what its ring lost from its stream)."""
        return self.history(event_filter, limit=limit, after_id=after_id)

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
        self.flush()  # what is handed out must be on disk first (a crash must not reuse its id)
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
