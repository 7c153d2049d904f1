"""Reading the cluster's JetStream stream: how a message becomes an event, and old ranges.

Every node holds only the last `--history` events in its ring; the stream
holds at least 100,000. A client resuming from an id older than the ring (it
was away a while, or its node died and this one started later) is replayed
the part the ring no longer has from the stream itself, with a short-lived
pull consumer that reads the range in batches and is deleted afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class StreamRange:
    """What a read of sequences `first..last` of the stream found."""

    events: list[StoredEvent] = field(default_factory=list)
    # The first event the stream still had in the range, kept or not (None: nothing at all).
    first: StoredEvent | None = None
    # The last sequence looked at: the read covered everything up to here.
    cursor: int = 0


async def read_range(
    js: JetStreamContext,
    names: ClusterNames,
    first: int,
    last: int,
    keep: Callable[[StoredEvent], bool],
    limit: int | None = None,
) -> StreamRange:
    """The events of sequences `first..last` that `keep` accepts, in order (at most `limit`).

    Sequences the stream no longer holds (older than its retention) are skipped:
    `first` says where it really started. Raises on NATS errors and timeouts.
    """
    found = StreamRange(cursor=first - 1)
    if last < first:
        return found
    sub = await js.pull_subscribe(
        names.all_events,
        stream=names.stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=CONSUMER_IDLE,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    try:
        while found.cursor < last and (limit is None or len(found.events) < limit):
            batch = await sub.fetch(min(READ_BATCH, last - found.cursor), timeout=FETCH_TIMEOUT)
            for msg in batch:
                meta = msg.metadata
                seq = meta.sequence.stream
                if seq > last:
                    found.cursor = last
                    break
                found.cursor = seq
                stored = stored_event(seq, *names.parse(msg.subject), msg.data)
                if stored is None:
                    continue
                if found.first is None:
                    found.first = stored
                if keep(stored):
                    found.events.append(stored)
                    if limit is not None and len(found.events) >= limit:
                        break
                if meta.num_pending == 0:  # the stream ends before `last`
                    found.cursor = max(found.cursor, last)
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(names.stream, sub._consumer)
        except Exception as exc:  # removed by JetStream once idle anyway
            log.debug("could not delete a replay consumer: %s", exc)
    return found
