"""The node's one reader of the event stream: a JetStream push consumer, taken as bytes.

It does what nats-py's ordered consumer does, on the raw path of
`wire.EventConnection`: an ephemeral, unacknowledged push consumer in memory
from a given stream sequence, with flow control and idle heartbeats; each
data message's stream and delivery sequences come from its `$JS.ACK...`
reply subject. A delivery sequence out of step (a message lost between
server and client, also as told by a heartbeat) marks it `broken`; nothing
heard for three heartbeats makes it `silent`. Either way the cluster bus
recreates it right after the last sequence it delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .names import ClusterNames
from .wire import EventConnection, header_value

log = logging.getLogger(__name__)

# (stream sequence, subject, payload, header block)
OnEvent = Callable[[int, bytes, bytes, bytes | None], None]

CONTROL = b"NATS/1.0 100"
STALLED = b"\r\nNats-Consumer-Stalled: "
LAST_CONSUMER = b"\r\nNats-Last-Consumer: "
# JetStream removes the consumer of a node that died after this long without it.
INACTIVE = 30.0


def sequences(reply: bytes) -> tuple[int, int] | None:
    """(stream seq, delivery seq) from a `$JS.ACK` reply subject (both its forms), or None."""
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[6])
    if len(tokens) >= 12:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...
        return int(tokens[7]), int(tokens[8])
    return None


async def ignore(msg: Msg) -> None:
    """The callback nats-py wants for a subscription whose raw handler takes its messages."""


class StreamConsumer:
    def __init__(
        self,
        nc: EventConnection,
        js: JetStreamContext,
        names: ClusterNames,
        on_event: OnEvent,
        heartbeat: float,
    ) -> None:
        self._nc = nc
        self._js = js
        self._names = names
        self._on_event = on_event
        self._heartbeat = heartbeat
        self._sub: object = None
        self._name: str | None = None
        self._next_dseq = 1
        self.broken = False
        self._replies: set[asyncio.Future[None]] = set()
        # Messages of any kind, heartbeats included; `silent` notes when it last moved
        # (a clock read per message would cost more than the rest of the check).
        self.received = 0
        self._heard = (0, time.monotonic())

    def silent(self, now: float) -> bool:
        """Nothing, not even a heartbeat, for three intervals: the consumer is gone.

        Called periodically (the bus's watchdog, every 0.25 s).
        """
        received, heard_at = self._heard
        if self.received != received:
            self._heard = (self.received, now)
            return False
        return now - heard_at > 3 * self._heartbeat

    async def start(self, first_seq: int) -> None:
        """(Re)create the consumer, delivering from stream sequence `first_seq` on."""
        await self.stop()
        nc = self._nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=ignore)
        nc.set_raw_handler(sub, self._on_raw)
        self._sub = sub
        self._next_dseq = 1
        self.broken = False
        self._heard = (self.received, time.monotonic())
        info = await self._js.add_consumer(
            self._names.stream,
            ConsumerConfig(
                deliver_subject=inbox,
                filter_subject=self._names.all_events,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(first_seq, 1),
                ack_policy=AckPolicy.NONE,
                flow_control=True,
                idle_heartbeat=self._heartbeat,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=INACTIVE,
            ),
        )
        self._name = info.name

    async def stop(self) -> None:
        """Unsubscribe and delete the consumer (best effort: JetStream drops it when idle)."""
        sub, self._sub = self._sub, None
        name, self._name = self._name, None
        if sub is None:
            return
        self._nc.drop_raw_handler(sub)  # type: ignore[arg-type]
        try:
            await sub.unsubscribe()  # type: ignore[attr-defined]
            if name is not None and self._nc.is_connected:
                await self._js.delete_consumer(self._names.stream, name)
        except Exception as exc:
            log.debug("could not remove the old event consumer: %s", exc)

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.received += 1
        if headers is not None and not data and headers.startswith(CONTROL):
            self._on_control(reply, headers)
            return
        if self.broken:
            return  # until it is recreated
        seqs = sequences(reply)
        if seqs is None:
            return
        stream_seq, delivery_seq = seqs
        if delivery_seq != self._next_dseq:
            log.warning("event consumer out of step at stream seq %d; recreating it", stream_seq)
            self.broken = True
            return
        self._next_dseq = delivery_seq + 1
        self._on_event(stream_seq, subject, data, headers)

    def _on_control(self, reply: bytes, headers: bytes) -> None:
        """Flow control (answer it) or an idle heartbeat (which may say we missed something)."""
        answer = reply or header_value(headers, STALLED)
        if answer:
            # Queued now, written by nats-py's flusher (this runs inside its parser).
            task = asyncio.ensure_future(self._nc.publish(answer.decode()))
            self._replies.add(task)  # kept until done: a task nobody holds may be collected
            task.add_done_callback(self._replies.discard)
        last = header_value(headers, LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) >= self._next_dseq:
            log.warning("event consumer missed deliveries; recreating it")
            self.broken = True
