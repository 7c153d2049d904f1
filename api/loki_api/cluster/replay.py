"""Reading the cluster's JetStream stream: how a message becomes an event, and old ranges.

Every node holds only the last `--history` events in its ring; the stream
holds at least 100,000. A client resuming from an id older than the ring (it
was away a while, or its node died and this one started later) is replayed
the part the ring no longer has from the stream itself, with a short-lived
pull consumer that reads the range in batches and is deleted afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ..bus import StoredEvent
from .names import ClusterNames

log = logging.getLogger(__name__)

# What `publish` puts where the id goes; the reader swaps the 0 for the stream sequence.
PROVISIONAL = b'{"id":"evt_0_'
# Messages asked for per fetch of an old range.
READ_BATCH = 1000
# Seconds one fetch may take before the read is given up (the caller falls back to a gap).
FETCH_TIMEOUT = 5.0
# An abandoned read consumer (a node died mid-read) is removed by JetStream after this long.
CONSUMER_IDLE = 30.0


def stored_event(
    seq: int, event_type: str, session_id: str | None, payload: bytes
) -> StoredEvent | None:
    """The event a stream message holds, with its id `evt_<seq>_<ms>`; None if it is not one.

    Type and session come from the message's subject (`ClusterNames.parse`).
    """
    start = len(PROVISIONAL)
    end = payload.find(b'"', start)
    if not payload.startswith(PROVISIONAL) or end < 0:
        return None
    event_id = f"evt_{seq}_{payload[start:end].decode()}"
    return StoredEvent(
        seq, event_id, event_type, session_id, b'{"id":"%s%s' % (event_id.encode(), payload[end:])
    )


@asynccontextmanager
async def reader(
    js: JetStreamContext,
    names: ClusterNames,
    subject: str,
    deliver_policy: DeliverPolicy,
    start: int | None = None,
) -> AsyncIterator[JetStreamContext.PullSubscription]:
    """A short-lived, unacknowledged pull consumer of `subject`, deleted on the way out."""
    config = ConsumerConfig(
        deliver_policy=deliver_policy,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=CONSUMER_IDLE,
        mem_storage=True,
        num_replicas=1,
    )
    sub = await js.pull_subscribe(subject, stream=names.stream, config=config)
    try:
        yield sub
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(names.stream, sub._consumer)
        except Exception as exc:  # removed by JetStream once idle anyway
            log.debug("could not delete a reading consumer: %s", exc)


class RangeReader:
    """Reads the stream forward from sequence `start`, in steps up to a moving end."""

    def __init__(self, sub: JetStreamContext.PullSubscription, names: ClusterNames, start: int):
        self._sub = sub
        self._names = names
        self._unread: list[Msg] = []  # fetched past the last step's end
        # The last sequence looked at: everything up to here is read.
        self.cursor = start - 1
        # The first event the stream still had, kept or not (None: none yet). Later than
        # `start` when the stream no longer reaches back that far.
        self.first: StoredEvent | None = None

    async def read_to(
        self, last: int, keep: Callable[[StoredEvent], bool], limit: int | None = None
    ) -> list[StoredEvent]:
        """The events up to sequence `last` that `keep` accepts, in order (at most `limit`).

        Raises on NATS errors and timeouts.
        """
        events: list[StoredEvent] = []
        while self.cursor < last and (limit is None or len(events) < limit):
            batch = self._unread or await self._sub.fetch(
                min(READ_BATCH, last - self.cursor), timeout=FETCH_TIMEOUT
            )
            self._unread = []
            if not batch:
                raise TimeoutError("the stream returned nothing")
            for index, msg in enumerate(batch):
                meta = msg.metadata
                seq = meta.sequence.stream
                if seq > last or (limit is not None and len(events) >= limit):
                    self._unread = batch[index:]
                    if seq > last:
                        self.cursor = last  # the sequences in between are gone
                    break
                self.cursor = seq
                stored = stored_event(seq, *self._names.parse(msg.subject), msg.data)
                if stored is not None:
                    if self.first is None:
                        self.first = stored
                    if keep(stored):
                        events.append(stored)
                if meta.num_pending == 0:  # the stream ends here
                    self.cursor = max(seq, last)
        return events


@asynccontextmanager
async def read_from(
    js: JetStreamContext, names: ClusterNames, start: int
) -> AsyncIterator[RangeReader]:
    """`RangeReader` over the whole event stream from `start` (an async context manager)."""
    policy = DeliverPolicy.BY_START_SEQUENCE
    async with reader(js, names, names.all_events, policy, start) as sub:
        yield RangeReader(sub, names, start)
