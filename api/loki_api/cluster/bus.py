"""The event bus of a cluster node: one JetStream stream is the order of events for every node.

`publish` does not number events. It encodes the envelope once, with the
provisional id `evt_0_<ms>`, and queues it in the outbox; once per loop turn
the sender task writes the outbox's new entries to
`<cluster>.events.<session>.<type>` as one buffer of publish commands, each
with a `Nats-Msg-Id` naming its outbox entry, and no reply subject.

Every node (the publisher too) consumes the stream once (`consumer.py`, on
the raw path of `wire.py`) and hands each message to the in-memory bus's
`_deliver` with the id `evt_<stream seq>_<ms>`: the same id on every node,
so `Last-Event-ID` resumes on any node. Reading its own event back is the
publisher's acknowledgement: the `Nats-Msg-Id` says which outbox entry is
now stored, so there is no ack message per event to receive and parse. Only
events sent again (after a reconnect, or when one was not read back within
`ACK_TIMEOUT`) ask JetStream for an ack, which also covers one the stream
already dropped again, or one JetStream dropped as a duplicate. From
there on it is the single-node path: history ring, batching per loop turn,
per-client bound, cut-off. The ring is filled from the
stream's last `--history` events at start-up, before the node reports ready.

NATS outage: the node keeps running and supervising; its events wait in the
outbox (bounded, `--publish-buffer`; the excess is counted in `lost`) and are
sent again in order on reconnect (`Nats-Msg-Id` lets JetStream drop copies it
already stored). Open streams stay open with their keep-alives, and the
consumer resumes after the last sequence it delivered, so they continue
without a gap. Readiness says why it is not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import ssl
import time
from collections import Counter
from typing import Any

import anyio
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import NotFoundError

from ..bus import EVENT_ID, EventBus, StoredEvent, Subscriber, iso_timestamp
from ..encoding import encode
from ..eventlog import seq_of
from ..filters import EventFilter
from ..health_problems import HealthProblems
from ..models import ClusterInfo, Event, EventStats, NatsState, StreamGap
from ..settings import Settings
from .consumer import StreamConsumer, ignore
from .names import ClusterNames
from .outbox import Outbox
from .positions import OutputPosition, furthest, last_position
from .replay import read_from, stored_event
from .wire import EventConnection, header_value, hpub

log = logging.getLogger(__name__)

# How long one attempt at the first connection may take before start-up goes on without it.
FIRST_CONNECT = 3.0
# The stream keeps at least this many events (and at least --history).
MIN_RETENTION = 100_000
# JetStream drops a re-sent message with a Nats-Msg-Id it stored within this window.
DUPLICATE_WINDOW = 120.0
# Events sent but not read back from the stream within this time are sent again (same
# Nats-Msg-Id): JetStream may have refused them (no stream leader during an election).
ACK_TIMEOUT = 2.0
# The event consumer's idle heartbeat: three missed ones and it is recreated.
HEARTBEAT = 0.5
# The consumer is recreated when the stream is ahead of it and nothing came for this long.
STALL = 3.0
# How long start-up waits to have the last --history events before serving anyway.
CATCH_UP = 10.0


def connect_options(settings: Settings) -> dict[str, Any]:
    """nats-py `connect` keyword arguments from the `--nats*` flags."""
    options: dict[str, Any] = {
        "servers": list(settings.nats_urls),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # a node outlives any NATS outage
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
    }
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert and settings.nats_tls_key:
            context.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
        options["tls"] = context
    return options


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


class ClusterBus(EventBus):
    def __init__(self, settings: Settings, node_id: str, health: HealthProblems) -> None:
        super().__init__(history=settings.history, max_pending=settings.max_pending)
        self.settings = settings
        self.health = health
        self.node_id = node_id
        self.names = ClusterNames(settings.cluster)
        self.outbox = Outbox(settings.publish_buffer)
        self.retention = max(settings.history, MIN_RETENTION)
        # Nats-Msg-Id of outbox entry n is this prefix + n: unique per node and process.
        self._msg_prefix = f"{node_id}.{secrets.token_hex(4)}.".encode()
        self._own_id = b"\r\nNats-Msg-Id: " + self._msg_prefix
        self._nc: EventConnection | None = None
        self._js: JetStreamContext | None = None
        self._consumer: StreamConsumer | None = None
        self._ack_prefix = b""
        # Output positions (see positions.py): the last recorded per session, the newest
        # outbox entry of each session, and the furthest position the stream confirmed.
        self._output_at: dict[str, OutputPosition] = {}
        self._last_entry: dict[str, int] = {}
        self._confirmed: dict[str, dict[str, int]] = {}
        self._last_confirmed: OutputPosition | None = None
        self._wake = asyncio.Event()
        self.connected = False
        self._closing = False
        self.caught_up = False
        self.last_error: str | None = None
        self._resubscribe = False
        self._delivered_at = time.monotonic()
        self._watched_seq = 0
        self.stream_last_seq = 0

    @property
    def nc(self) -> EventConnection | None:
        return self._nc

    @property
    def js(self) -> JetStreamContext | None:
        return self._js

    # ------------------------------------------------------------ publishing

    def publish(self, type: str, data: Any, session_id: str | None = None) -> Event:
        """Encode once and queue for JetStream; subscribers get it back from the stream."""
        now = time.time()
        event = Event(
            id=f"evt_0_{int(now * 1000)}",
            type=type,
            timestamp=iso_timestamp(now),
            session_id=session_id,
            data=data,
        )
        outbox = self.outbox
        if outbox.append(self._subject(type, session_id), encode(event)):
            if session_id is not None:
                # Every event of a session carries how far its output is published.
                number = self._last_entry[session_id] = outbox.last_number
                position = self._output_at.get(session_id)
                if position is not None:
                    outbox.attach(number, position)
            self._wake.set()
        elif self.outbox.lost == 1 or self.outbox.lost % 10_000 == 0:
            log.error(
                "NATS publish buffer full (%d events): %d events lost so far",
                self.outbox.limit,
                self.outbox.lost,
            )
        return event

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one bus per process, lives as long)
    def _subject(self, type: str, session_id: str | None) -> bytes:
        return self.names.subject(type, session_id).encode()

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def _parse_subject(self, subject: bytes) -> tuple[str, str | None]:
        return self.names.parse(subject.decode())

    async def _send_loop(self) -> None:
        """Publish the outbox's new entries, all of one loop turn in one write."""
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            await self._send_unsent()

    async def _send_unsent(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected or self._consumer is None:
            return  # (re)connecting: sent once connected
        outbox = self.outbox
        prefix = self._msg_prefix
        ack_to = self._ack_prefix
        commands = b"".join(
            [
                hpub(
                    subject,
                    b"%s%d" % (prefix, number),
                    payload,
                    b"%s%d" % (ack_to, number) if number < outbox.resend_until else b"",
                    position.header if position is not None else b"",
                )
                for number, subject, payload, position in outbox.take_unsent()
            ]
        )
        if not commands:
            return
        try:
            await nc.send_commands(commands)
        except Exception as exc:  # the connection broke mid-batch: re-sent after the timeout
            self.last_error = f"publish failed: {describe(exc)}"

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """JetStream's answer to a re-sent event: stored (or a duplicate of a stored one)."""
        if not data or b'"error"' in data[:16]:
            # No responders (no stream leader, e.g. during an election) or refused.
            self.last_error = f"JetStream refused a publish: {data[:200]!r}"
            return
        number = subject[len(self._ack_prefix) :]
        if number.isdigit():
            self._stored(int(number))

    def _stored(self, number: int) -> None:
        """Outbox entry `number` is in the stream: drop it, and confirm the position it carried."""
        position = self.outbox.ack(number)
        if position is not None and position is not self._last_confirmed:
            # A session's events mostly carry the same position: merge each one once.
            self._last_confirmed = position
            confirmed = self._confirmed.get(position.session_id)
            self._confirmed[position.session_id] = (
                position.offsets if confirmed is None else furthest(confirmed, position.offsets)
            )

    # ------------------------------------------------------ output positions

    def record_output_position(self, session_id: str, offsets: dict[str, int]) -> None:
        """A chunk of the session's output is published: its last event carries the position.

        So do the session's later events. Stored atomically with the event, it
        is where a successor on this state directory resumes (`positions.py`).
        If that event has already been sent, the lines since produced no event:
        reading them again publishes nothing twice.
        """
        position = OutputPosition(session_id, offsets)
        self._output_at[session_id] = position
        number = self._last_entry.get(session_id)
        if number is not None:
            self.outbox.attach(number, position)

    def forget_output(self, session_id: str) -> None:
        for per_session in (self._output_at, self._last_entry, self._confirmed):
            per_session.pop(session_id, None)

    def output_position(self, session_id: str) -> dict[str, int]:
        """The furthest position the stream holds for the session (loaded at start-up)."""
        return dict(self._confirmed.get(session_id, {}))

    def saved_position(self, session_id: str, read: dict[str, int]) -> dict[str, int] | None:
        """Only what the stream confirmed: `supervisor.json` never runs ahead of it."""
        confirmed = self._confirmed.get(session_id)
        return dict(confirmed) if confirmed is not None else None

    async def load_output_positions(self, session_ids: list[str]) -> None:
        """Each session's furthest stored position, read from the stream before re-adopting."""
        js = self._js
        if js is None or not self.connected:
            if session_ids:
                log.warning("NATS unreachable: sessions resume from supervisor.json positions")
            return
        for session_id in session_ids:
            try:
                found = await last_position(js, self.names, session_id)
            except Exception as exc:
                log.warning("no output position for %s from the stream: %s", session_id, exc)
                continue
            if found:
                self._confirmed[session_id] = furthest(self._confirmed.get(session_id, {}), found)

    # -------------------------------------------------------------- consuming

    def _on_event(self, seq: int, subject: bytes, payload: bytes, headers: bytes | None) -> None:
        """One message of the stream: stamp its id from the stream sequence and fan it out."""
        if seq <= self._seq:
            return  # a recreated consumer delivers again from where we asked
        self._seq = seq
        if headers is not None:
            own = header_value(headers, self._own_id)
            if own is not None and own.isdigit():
                self._stored(int(own))  # our own event is stored
        stored = stored_event(seq, *self._parse_subject(subject), payload)
        if stored is None:
            log.warning("skipping stream message %d: not a Loki event envelope", seq)
            return
        self._deliver(stored, time.time())

    async def _subscribe(self, first_seq: int) -> None:
        assert self._consumer is not None
        await self._consumer.start(first_seq)
        self._delivered_at = time.monotonic()

    # -------------------------------------------------- replay from the stream

    def _older_than_ring(self, after_id: str | None) -> int | None:
        """The sequence of `after_id` when it is ours but older than the ring (else None)."""
        if after_id is None or self._js is None or not self.connected:
            return None
        if EVENT_ID.fullmatch(after_id) is None:
            return None
        seq = seq_of(after_id)
        if seq is None or seq > self._seq or seq >= self._first_held() - 1:
            return None
        return seq

    async def open_subscription(
        self, event_filter: EventFilter, *, after_id: str | None, last: int
    ) -> tuple[Subscriber, list[StoredEvent], StreamGap | None]:
        """As on one node, but a `Last-Event-ID` older than the ring is replayed from the stream.

        The ring keeps moving while the stream is read, so the read goes on until
        it meets the ring; then the subscription is made without an await, and
        the ring's part follows the stream's with no gap and no repeat. The
        stream does not reach back far enough: a gap from its oldest event.
        NATS unreachable: answered from the ring alone, as on one node.
        """
        seq = self._older_than_ring(after_id)
        if seq is None:
            return await super().open_subscription(event_filter, after_id=after_id, last=last)
        assert after_id is not None and self._js is not None

        def keep(stored: StoredEvent) -> bool:
            return stored.seq > seq and event_filter.matches(stored.type, stored.session_id)

        older: list[StoredEvent] = []
        deadline = time.monotonic() + CATCH_UP
        try:
            # From `seq` itself, to check that the id is ours.
            async with read_from(self._js, self.names, max(seq, 1)) as stream:
                while stream.cursor < self._first_held() - 1:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the ring moved on faster than the stream was read")
                    older += await stream.read_to(self._first_held() - 1, keep)
                    if stream.first is None:
                        break  # the stream no longer has any of it: the ring's gap
        except Exception as exc:
            log.warning("cannot replay from the event stream (%s); using the ring", describe(exc))
            return await super().open_subscription(event_filter, after_id=after_id, last=last)
        first, cursor = stream.first, stream.cursor
        if first is None:
            return await super().open_subscription(event_filter, after_id=after_id, last=last)
        gap = None
        if first.seq > max(seq, 1):  # older than the stream's retention
            gap = StreamGap(
                last_event_id=after_id, resumed_from=first.id, missed=first.seq - 1 - seq
            )
        elif first.seq == seq and first.id != after_id and not after_id.endswith("_0"):
            # A sequence we hold under another id: not ours, so everything held, as on one node.
            self.gaps += 1
            gap = self._not_ours(after_id)
            subscriber, replay = self.subscribe(event_filter, last=self.history_size)
            return subscriber, replay, gap
        if gap is not None:
            self.gaps += 1
        subscriber, replay = self.subscribe(event_filter, after_id=f"evt_{cursor}_0")
        self.replayed += len(older)
        return subscriber, older + replay, gap

    async def page(
        self, event_filter: EventFilter, *, limit: int, after_id: str | None
    ) -> list[StoredEvent]:
        """`/api/events/history?after=`: what the ring no longer holds is read from the stream."""
        seq = self._older_than_ring(after_id)
        if seq is None or limit <= 0:
            return await super().page(event_filter, limit=limit, after_id=after_id)
        assert self._js is not None

        def keep(stored: StoredEvent) -> bool:
            return event_filter.matches(stored.type, stored.session_id)

        older: list[StoredEvent] = []
        try:
            async with read_from(self._js, self.names, seq + 1) as stream:
                while stream.cursor < self._first_held() - 1 and len(older) < limit:
                    older += await stream.read_to(self._first_held() - 1, keep, limit - len(older))
        except Exception as exc:
            log.warning("cannot page the event stream (%s); using the ring", describe(exc))
            return await super().page(event_filter, limit=limit, after_id=after_id)
        cursor = stream.cursor
        if len(older) >= limit:
            return older
        return older + self.history(
            event_filter, limit=limit - len(older), after_id=f"evt_{cursor}_0"
        )

    # -------------------------------------------------------------- lifetime

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, join the stream, and keep everything flowing; ready once caught up.

        Start-up never waits for NATS: if it cannot be reached the server starts
        anyway (not ready, with the reason) and keeps trying.
        """
        started = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_loop)
                tg.start_soon(self._report_health)
                while True:
                    try:
                        await self._start()
                        break
                    except Exception as exc:
                        self.last_error = describe(exc)
                        log.warning("cluster: %s; retrying", self.last_error)
                        if not started:
                            task_status.started()
                            started = True
                        await anyio.sleep(1.0)
                if not started:
                    task_status.started()
                await self._watch()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _start(self) -> None:
        if self._nc is None:
            # With unlimited reconnects nats-py would retry the first connect forever too.
            nc = EventConnection()
            try:
                await asyncio.wait_for(
                    nc.connect(
                        **connect_options(self.settings),
                        name=f"loki-{self.settings.cluster}-{self.node_id}",
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        error_cb=self._on_error,
                    ),
                    FIRST_CONNECT,
                )
            except TimeoutError:
                raise ConnectionError("no NATS server answered") from None
            self._nc = nc
            self._js = nc.jetstream()
            self._ack_prefix = f"{nc.new_inbox()}.".encode()
            acks = await nc.subscribe(f"{self._ack_prefix.decode()}*", cb=ignore)
            nc.set_raw_handler(acks, self._on_ack)
        self.connected = True
        info = await self._ensure_stream()
        last = info.state.last_seq
        self.stream_last_seq = last
        if self._consumer is None:
            assert self._nc is not None and self._js is not None
            self._consumer = StreamConsumer(
                self._nc, self._js, self.names, self._on_event, HEARTBEAT
            )
            first = self._seq + 1 if self._seq else max(1, last - self.settings.history + 1)
            await self._subscribe(first)
        deadline = time.monotonic() + CATCH_UP
        while self._seq < last and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        self.caught_up = True
        self.outbox.rewind()
        self._wake.set()
        log.info(
            "cluster %s: node %s joined stream %s at seq %d",
            self.settings.cluster,
            self.node_id,
            self.names.stream,
            self._seq,
        )

    async def _ensure_stream(self) -> StreamInfo:
        """The cluster's stream, created on first use; retention raised when it is too small."""
        assert self._js is not None
        config = StreamConfig(
            name=self.names.stream,
            subjects=[self.names.all_events],
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            max_msgs=self.retention,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW,
        )
        try:
            info = await self._js.stream_info(self.names.stream)
        except NotFoundError:
            return await self._js.add_stream(config)
        current = info.config.max_msgs or -1
        if 0 < current < self.retention or info.config.num_replicas != self.settings.replicas:
            config.max_msgs = max(current, self.retention)
            info = await self._js.update_stream(config)
        return info

    async def _watch(self) -> None:
        """Re-send what is not read back in time; recreate a consumer that broke or stalled."""
        assert self._js is not None
        next_info = 0.0
        while True:
            await anyio.sleep(0.25)
            nc = self._nc
            if nc is None or not nc.is_connected:
                continue
            now = time.monotonic()
            outbox = self.outbox
            outbox.note_progress(now)
            if self._seq != self._watched_seq:  # delivery moves: not stalled
                self._watched_seq, self._delivered_at = self._seq, now
            if outbox.in_flight and now - outbox.progress_at > ACK_TIMEOUT:
                outbox.rewind()
                self._wake.set()
            consumer = self._consumer
            if consumer is not None and (consumer.broken or consumer.silent(now)):
                self._resubscribe = True
            if self._resubscribe:
                # Reconnected (a consumer the server lost in a restart or failover is
                # not waited out by heartbeats), or the consumer broke or went silent:
                # a new one resumes right after the last delivered sequence.
                self._resubscribe = False
                try:
                    await self._subscribe(self._seq + 1)
                except Exception as exc:
                    self._resubscribe = True
                    self.last_error = f"cannot resume the event consumer: {describe(exc)}"
                continue
            if now < next_info:
                continue
            next_info = now + 1.0
            try:
                info = await self._js.stream_info(self.names.stream)
                self.stream_last_seq = info.state.last_seq
                if self.stream_last_seq > self._seq and now - self._delivered_at > STALL:
                    log.warning("cluster: event consumer stalled at %d; recreating it", self._seq)
                    await self._subscribe(self._seq + 1)
            except Exception as exc:
                self.last_error = f"stream check failed: {describe(exc)}"

    async def _stop(self) -> None:
        """Graceful shutdown: give JetStream a moment to take what is queued, then close."""
        nc = self._nc
        if nc is None:
            return
        self._closing = True
        deadline = time.monotonic() + 2.0
        while len(self.outbox) and nc.is_connected and time.monotonic() < deadline:
            await self._send_unsent()  # the sender task is gone with the task group
            await asyncio.sleep(0.02)
        if len(self.outbox):
            log.warning(
                "cluster: %d events not acknowledged by JetStream at shutdown", len(self.outbox)
            )
        try:
            if self._consumer is not None:
                await asyncio.wait_for(self._consumer.stop(), 1.0)
            await nc.close()
        except Exception:
            pass

    async def _on_disconnected(self) -> None:
        if self.connected and not self._closing:
            self.connected = False
            log.warning("cluster: disconnected from NATS; buffering events")

    async def _on_reconnected(self) -> None:
        self.connected = True
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        log.info("cluster: reconnected to NATS at %s", url.netloc if url is not None else "?")
        self.outbox.rewind()  # in order; copies JetStream already has are dropped by msg id
        self._wake.set()
        self._resubscribe = self._consumer is not None

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = describe(exc)
        log.debug("NATS error: %s", self.last_error)

    # ------------------------------------------------------------- reporting

    def problem(self) -> str | None:
        """Why this node is not ready (None when connected and caught up with the stream).

        Stable while the situation is (no counters in it), so it is logged once.
        """
        if not self.connected:
            return (
                f"NATS unreachable ({', '.join(self.settings.nats_urls)}): "
                f"{self.last_error or 'connecting'}; events are kept in the publish buffer"
            )
        if not self.caught_up:
            return "joining the cluster event stream"
        return None

    def loss(self) -> str | None:
        """Said once events were lost: the publish buffer was full while NATS was away."""
        if not self.outbox.lost:
            return None
        return (
            f"events lost: the NATS publish buffer ({self.outbox.limit} events) was full; "
            "see /api/status cluster.nats.lost"
        )

    async def _report_health(self) -> None:
        """Keep `nats` (blocks readiness) and `natsLoss` (degraded) current in the registry."""
        while True:
            for key, reason, blocks in (
                ("nats", self.problem(), True),
                ("natsLoss", self.loss(), False),
            ):
                if reason is None:
                    self.health.clear(key)
                else:
                    self.health.report(key, reason, blocks_ready=blocks)
            await anyio.sleep(0.1)

    def info(self) -> ClusterInfo:
        """This node and its NATS link, for `/health` and `/api/status`."""
        return ClusterInfo(
            name=self.settings.cluster,
            node=self.node_id,
            nats=NatsState(
                connected=self.connected,
                servers=list(self.settings.nats_urls),
                buffered=len(self.outbox),
                lost=self.outbox.lost,
                stream_seq=self._seq,
                last_error=self.last_error,
            ),
        )

    async def stats(self) -> EventStats:
        """Counts from the stream (same on every node); subscribers and deliveries are local."""
        published = self.stream_last_seq
        by_type: Counter[str] = Counter()
        js = self._js
        try:
            if js is None:
                raise ConnectionError("not connected")
            info = await asyncio.wait_for(
                js.stream_info(self.names.stream, subjects_filter=self.names.all_events), 2.0
            )
            published = info.state.last_seq
            for subject, count in (info.state.subjects or {}).items():
                by_type[self.names.parse(subject)[0]] += count
        except Exception as exc:  # NATS away: what this node saw
            log.debug("stream stats unavailable: %s", describe(exc))
            by_type = self.by_type
            published = max(published, self._seq)
        return EventStats(
            subscribers=self.subscriber_count,
            history_size=self.history_size,
            published=published,
            delivered=self.delivered,
            dropped=self.dropped + self.outbox.lost,
            by_type=dict(by_type),
        )
