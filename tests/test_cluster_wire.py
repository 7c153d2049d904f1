"""The cluster event path on the wire: hand-built publishes, a raw consumer, acks by reading back.

The pure parts first; then a `ClusterBus` in the test's event loop against a
real nats-server, where a lost delivery and a consumer that reads nothing are
made to happen on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from loki_api.cluster.names import ClusterNames
from loki_api.filters import MATCH_ALL
from loki_api.health_problems import HealthProblems
from loki_api.models import LogEventData
from loki_api.settings import Settings

from .inprocess_cluster import running_bus
from .support import wait_for

pytest.importorskip("nats")
cluster_bus = pytest.importorskip("loki_api.cluster.bus")
consumer = pytest.importorskip("loki_api.cluster.consumer")
wire = pytest.importorskip("loki_api.cluster.wire")
NatsServer = pytest.importorskip("loki_api.cluster.natsserver").NatsServer

pytestmark = pytest.mark.anyio


def test_sequences_come_from_both_forms_of_the_ack_subject() -> None:
    assert consumer.sequences(b"$JS.ACK.loki_events.c1.1.57.12.1764390000000000000.3") == (57, 12)
    domain = b"$JS.ACK.hub.ACC.loki_events.c1.1.57.12.1764390000000000000.3.tok"
    assert consumer.sequences(domain) == (57, 12)
    assert consumer.sequences(b"_INBOX.abc") is None


def test_a_publish_command_carries_its_message_id_and_an_optional_reply() -> None:
    payload = b'{"x":1}'
    command = wire.hpub(b"loki.events._.log:info", b"n1.ab.7", payload)
    head, block = command.split(b"\r\n", 1)
    verb, subject, header_size, total_size = head.split()
    header = block[: int(header_size)]
    assert (verb, subject) == (b"HPUB", b"loki.events._.log:info")
    assert header == b"NATS/1.0\r\nNats-Msg-Id: n1.ab.7\r\n\r\n"
    assert block[int(header_size) : int(total_size)] == payload
    assert block[int(total_size) :] == b"\r\n"
    assert wire.header_value(header, b"\r\nNats-Msg-Id: ") == b"n1.ab.7"
    with_reply = wire.hpub(b"s", b"i", b"p", b"_INBOX.x.7")
    assert with_reply.split(b"\r\n")[0].split()[:3] == [b"HPUB", b"s", b"_INBOX.x.7"]
    assert wire.header_value(b"NATS/1.0\r\n\r\n", b"\r\nNats-Msg-Id: ") is None


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


def publish_lines(bus: Any, count: int) -> None:
    for i in range(count):
        bus.publish("log:info", LogEventData(level="info", message=f"line {i}"), "s_w")


def assert_gapless_once(bus: Any, count: int) -> None:
    seqs = [stored.seq for stored in bus.history(MATCH_ALL, limit=count + 10)]
    assert seqs == list(range(1, count + 1))


async def test_reading_its_events_back_acknowledges_them_without_ack_messages(
    nats_url: str,
) -> None:
    async with running_bus(nats_url) as bus:
        publish_lines(bus, 3000)
        await wait_for(lambda: len(bus.outbox) == 0, timeout=20)
        assert bus.outbox.acked == 3000
        assert bus.outbox.resend_until == 1  # nothing was sent twice, so nothing asked for an ack
        assert_gapless_once(bus, 3000)


async def test_a_delivery_lost_on_the_way_recreates_the_consumer_without_a_gap(
    nats_url: str,
) -> None:
    async with running_bus(nats_url) as bus:
        publish_lines(bus, 100)
        await wait_for(lambda: bus.last_seq == 100, timeout=10)
        first_consumer = bus._consumer._name
        bus._consumer._next_dseq += 3  # as if three deliveries had been lost
        publish_lines(bus, 100)
        await wait_for(lambda: bus.last_seq == 200, timeout=10)
        # It noticed, and a new consumer took over from seq 101 on.
        assert bus._consumer._name != first_consumer and not bus._consumer.broken
        assert_gapless_once(bus, 200)


async def test_events_not_read_back_are_sent_again_and_acknowledged_once_stored(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_bus, "ACK_TIMEOUT", 0.3)
    async with running_bus(nats_url) as bus:
        # The consumer goes away: what is published is stored but not read back.
        monkeypatch.setattr(bus._consumer, "start", _not_started)
        await bus._consumer.stop()
        publish_lines(bus, 50)

        async def stored() -> int:
            return int((await bus.js.stream_info(bus.names.stream)).state.last_seq)

        while await stored() < 50:
            await anyio.sleep(0.02)
        # Re-sent asking for acks; JetStream answers "duplicate" and nothing is stored twice.
        await wait_for(lambda: len(bus.outbox) == 0, timeout=10)
        assert bus.outbox.resend_until > 1 and bus.last_seq == 0
        assert await stored() == 50


async def _not_started(first_seq: int) -> None:
    """A consumer that never comes back (the watchdog keeps trying)."""


async def test_what_is_published_during_a_graceful_stop_still_reaches_the_stream(
    nats_url: str,
) -> None:
    settings = Settings(nats_urls=(nats_url,), cluster=f"w{uuid.uuid4().hex[:8]}")
    bus = cluster_bus.ClusterBus(settings, "a", HealthProblems())
    bus.bind_loop()

    async def session_manager() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            publish_lines(bus, 200)  # its shutdown says what ended, after the sender is gone

    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        await wait_for(lambda: bus.caught_up, timeout=10)
        tg.start_soon(session_manager)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert len(bus.outbox) == 0
    async with running_bus(nats_url, settings.cluster, node="b") as reader:
        assert reader.last_seq == 200


def test_a_heartbeat_that_says_deliveries_were_missed_breaks_the_consumer() -> None:
    on_event_calls: list[int] = []
    reader = consumer.StreamConsumer(
        None, None, ClusterNames("t"), lambda seq, *_: on_event_calls.append(seq), 0.5
    )
    beat = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: %d\r\nNats-Last-Stream: 9\r\n\r\n"
    reader._next_dseq = 6  # deliveries 1..5 arrived
    reader._on_raw(b"_INBOX.x", b"", b"", beat % 5)
    assert not reader.broken
    reader._on_raw(b"_INBOX.x", b"", b"", beat % 7)  # 6 and 7 never came
    assert reader.broken and reader.received == 2 and not on_event_calls


async def test_a_consumer_that_goes_silent_is_recreated_without_a_gap(nats_url: str) -> None:
    async with running_bus(nats_url) as bus:
        publish_lines(bus, 50)
        await wait_for(lambda: bus.last_seq == 50, timeout=10)
        first_consumer = bus._consumer._name
        # Its messages stop reaching it (heartbeats too), as if its delivery were gone.
        bus.nc.drop_raw_handler(bus._consumer._sub)
        await wait_for(lambda: bus._consumer._name != first_consumer, timeout=10)
        publish_lines(bus, 50)
        await wait_for(lambda: bus.last_seq == 100, timeout=10)
        assert_gapless_once(bus, 100)
