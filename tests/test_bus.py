import random

import anyio
import msgspec
import pytest

from loki_api.bus import PING_FRAME, Batch, EventBus, Subscriber
from loki_api.eventlog import seq_of
from loki_api.filters import EventFilter
from loki_api.models import LogEventData, TaskEventData


def log(n: int) -> LogEventData:
    return LogEventData(level="info", message=str(n))


def test_ids_strictly_increase_and_follow_the_format() -> None:
    bus = EventBus()
    ids = [bus.publish("log:info", log(n)).id for n in range(50)]
    seqs = [seq_of(i) for i in ids]
    assert seqs == list(range(1, 51))
    assert all(i.startswith("evt_") and len(i.split("_")) == 3 for i in ids)


def test_envelope_is_encoded_once_into_json_and_frame() -> None:
    bus = EventBus()
    data = TaskEventData(task_id="t1", title="T", status="completed")
    event = bus.publish("task:completed", data, "s1")
    stored = bus.history()[-1]
    envelope = msgspec.json.decode(stored.json)
    assert envelope == {
        "id": event.id,
        "type": "task:completed",
        "timestamp": event.timestamp,
        "sessionId": "s1",
        "data": {"taskId": "t1", "title": "T", "status": "completed"},
    }
    assert event.timestamp.endswith("Z")
    assert stored.frame == (
        b"id: " + event.id.encode() + b"\nevent: task:completed\ndata: " + stored.json + b"\n\n"
    )


def test_ring_buffer_keeps_the_last_n() -> None:
    bus = EventBus(history=3)
    for n in range(10):
        bus.publish("log:info", log(n))
    assert [e.seq for e in bus.history()] == [8, 9, 10]
    assert bus.published == 10 and bus.by_type["log:info"] == 10


def test_history_filters_limit_and_after() -> None:
    bus = EventBus()
    for n in range(10):
        bus.publish("log:info" if n % 2 else "log:error", log(n), f"s{n % 3}")
    errors = bus.history(EventFilter.parse(None, None, "error"))
    assert [e.type for e in errors] == ["log:error"] * 5
    assert [e.seq for e in bus.history(limit=2)] == [9, 10]
    after = bus.history(after_id=bus.history()[6].frame.split(b"\n")[0][4:].decode())
    assert [e.seq for e in after] == [8, 9, 10]
    first_id = bus.history()[0].frame.split(b"\n")[0][4:].decode()
    assert [e.seq for e in bus.history(after_id=first_id, limit=3)] == [2, 3, 4]  # pages forward
    assert bus.history(limit=0) == []
    with pytest.raises(ValueError):
        bus.history(after_id="bogus")


def test_subscribe_replays_then_receives_live_without_gap_or_duplicate() -> None:
    bus = EventBus()
    first = [bus.publish("log:info", log(n)).id for n in range(5)]
    sub, replay = bus.subscribe(after_id=first[1])
    assert [e.seq for e in replay] == [3, 4, 5]
    bus.publish("log:info", log(5))
    assert len(sub.take()) == 1


def test_fan_out_shares_one_frame_and_respects_filters() -> None:
    bus = EventBus()
    a, _ = bus.subscribe(EventFilter.parse("s1", None, None))
    b, _ = bus.subscribe(EventFilter.parse("s1", None, None))
    c, _ = bus.subscribe(EventFilter.parse(None, "task:created", None))
    assert bus.subscriber_count == 3
    bus.publish("log:info", log(1), "s1")
    bus.publish("log:info", log(2), "s2")
    fa, fb, fc = a.take(), b.take(), c.take()
    assert len(fa) == 1 and fa[0] is fb[0]
    assert fc == []
    bus.unsubscribe(a)
    bus.unsubscribe(b)
    bus.unsubscribe(c)
    assert bus.subscriber_count == 0


def test_a_subscriber_past_its_bound_is_cut_off_without_affecting_others() -> None:
    bus = EventBus(max_pending=5)
    slow, _ = bus.subscribe()
    fast, _ = bus.subscribe()
    for n in range(20):
        bus.publish("log:info", log(n))
        fast.take()  # the fast reader keeps up
    assert slow.overflowed and slow.closed
    assert len(slow.pending) == 5  # bounded: nothing queued past the limit
    assert not fast.overflowed
    assert not fast.closed and bus.subscriber_count == 1
    assert bus.dropped == 1


def test_ping_reaches_every_subscriber() -> None:
    bus = EventBus()
    subs = [bus.subscribe()[0] for _ in range(3)]
    bus.ping_all()
    assert all(s.take() == [PING_FRAME] for s in subs)


class FakeStream:
    """Records what the tick hands a stream, in order; `full` makes its socket fill up."""

    def __init__(self, bus: EventBus, sub: Subscriber) -> None:
        self.sub = sub
        self.got: list[bytes] = []
        self.calls: list[tuple[str, int]] = []
        self.full = False
        sub.writer = self
        bus.ready(sub)

    def write_pending(self) -> bool:
        if self.sub.blocked:
            return False
        frames = self.sub.take()
        self.got += frames
        self.calls.append(("pending", len(frames)))
        return not self.sub.closed

    def write_batch(self, batch: Batch) -> bool:
        self.got += batch.frames
        self.calls.append(("batch", len(batch.frames)))
        if self.full:
            self.sub.blocked = True  # as the real stream does before draining by itself
            return False
        return True

    def drained(self, bus: EventBus) -> None:
        """The drain task's part: write what piled up, then hand back to the tick."""
        self.got += self.sub.take()
        self.full = False
        bus.ready(self.sub)


async def turn() -> None:
    await anyio.sleep(0.001)  # the tick runs at the end of the publishing turn


@pytest.mark.anyio
async def test_each_touched_stream_is_told_once_per_loop_turn() -> None:
    bus = EventBus()
    bus.bind_loop()
    sub, _ = bus.subscribe()
    stream = FakeStream(bus, sub)
    await turn()
    assert sub.live and stream.calls == [("pending", 0)]  # caught up: live from now on
    for n in range(5):
        bus.publish("log:info", log(n))  # one burst in one turn
    await turn()
    assert stream.calls[1:] == [("batch", 5)]
    bus.close_subscriber(sub)
    await turn()
    assert stream.calls[2:] == [("pending", 0)] and sub.closed and not sub.live


@pytest.mark.anyio
async def test_live_streams_of_a_group_share_one_batch_and_waiting_ones_get_their_own() -> None:
    bus = EventBus()
    bus.bind_loop()
    a, b, opening = bus.subscribe()[0], bus.subscribe()[0], bus.subscribe()[0]
    batches: list[Batch] = []
    streams = [FakeStream(bus, a), FakeStream(bus, b)]
    streams[0].write_batch = lambda batch: batches.append(batch) or True  # type: ignore[method-assign]
    streams[1].write_batch = lambda batch: batches.append(batch) or True  # type: ignore[method-assign]
    await turn()
    for n in range(3):
        bus.publish("log:info", log(n))
    assert a.pending == [] and b.pending == []  # nothing per live subscriber at publish time
    assert len(opening.pending) == 3  # still opening: frames wait on its own list
    await turn()
    assert len(batches) == 2 and batches[0] is batches[1]
    assert batches[0].events == 3 and batches[0].body == b"".join(batches[0].frames)
    assert bus.delivered == 6


@pytest.mark.anyio
async def test_a_stream_that_falls_behind_and_catches_up_misses_nothing_and_repeats_nothing() -> (
    None
):
    rng = random.Random(7)
    bus = EventBus(max_pending=100_000)
    bus.bind_loop()
    subs = [bus.subscribe()[0] for _ in range(4)]
    streams = [FakeStream(bus, sub) for sub in subs]
    frames: list[bytes] = []
    for _ in range(300):
        for stream in streams:
            roll = rng.random()
            if roll < 0.1:
                stream.full = True  # its next batch fills the socket
            elif roll < 0.3 and stream.sub.blocked:
                stream.drained(bus)
        for _ in range(rng.randrange(3)):
            bus.publish("log:info", log(len(frames)))
            frames.append(bus.history(limit=1)[0].frame)
        if rng.random() < 0.5:
            await turn()
    await turn()  # the last batches (a full socket may take one more)
    for stream in streams:
        if stream.sub.blocked:
            stream.drained(bus)
    await turn()
    for stream in streams:
        assert stream.got == frames
    assert all(sub.live for sub in subs)


@pytest.mark.anyio
async def test_a_live_stream_closed_in_the_publishing_turn_still_gets_that_turns_frames() -> None:
    bus = EventBus()
    bus.bind_loop()
    sub = bus.subscribe()[0]
    stream = FakeStream(bus, sub)
    await turn()
    assert sub.live
    bus.publish("log:info", log(1))
    bus.close_streams()  # the server shuts down in the same turn
    await turn()
    assert stream.got == [bus.history()[-1].frame] and sub.closed


@pytest.mark.anyio
async def test_pings_reach_live_and_waiting_streams() -> None:
    bus = EventBus()
    bus.bind_loop()
    live, waiting = bus.subscribe()[0], bus.subscribe()[0]
    stream = FakeStream(bus, live)
    await turn()
    bus.ping_all()
    await turn()
    assert stream.got == [PING_FRAME] and waiting.pending == [PING_FRAME]
    assert bus.delivered == 0  # a keep-alive is not an event


def test_only_a_blocked_stream_is_cut_off() -> None:
    bus = EventBus(max_pending=5)
    writing, _ = bus.subscribe()
    writing.blocked = False  # its socket has room: the next tick writes everything
    for n in range(20):
        bus.publish("log:info", log(n))
    assert not writing.closed and len(writing.pending) == 20
    writing.blocked = True  # now the socket is full
    bus.publish("log:info", log(99))
    assert writing.overflowed and writing.closed


@pytest.mark.anyio
async def test_a_failing_stream_does_not_starve_the_others() -> None:
    bus = EventBus()
    bus.bind_loop()
    broken, _ = bus.subscribe()  # its group comes first, so it is written first
    healthy, _ = bus.subscribe(EventFilter.parse("s1", None, None))
    late, _ = bus.subscribe()

    def explode(*_: object) -> bool:
        raise RuntimeError("socket gone wrong")

    FakeStream(bus, broken).write_batch = explode  # type: ignore[method-assign]
    healthy_stream = FakeStream(bus, healthy)
    await turn()
    FakeStream(bus, late).write_pending = explode  # type: ignore[method-assign]
    bus.publish("log:info", log(1), "s1")
    await turn()
    assert len(healthy_stream.got) == 1
    assert broken.closed and late.closed and bus.subscriber_count == 1
