"""Cluster replay reaches past a node's ring into the JetStream stream (SPEC §11, §7).

Most of these run two `ClusterBus`es in the test's own event loop against a
real nats-server, so a ring of a few events and a stream of many are cheap to
set up; the last one checks the same through real nodes over HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loki_api.filters import MATCH_ALL, EventFilter
from loki_api.models import LogEventData

from .inprocess_cluster import running_bus
from .support import ServerProcess, sse_stream, wait_for

pytest.importorskip("nats")
cluster_bus = pytest.importorskip("loki_api.cluster.bus")
NatsServer = pytest.importorskip("loki_api.cluster.natsserver").NatsServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


async def publish_lines(bus: Any, count: int, session: str = "s_a") -> None:
    target = bus.last_seq + count
    for i in range(count):
        bus.publish("log:info", LogEventData(level="info", message=f"line {i}"), session)
    await wait_for(lambda: bus.last_seq >= target, timeout=10)


def ids(events: list[Any]) -> list[str]:
    return [stored.id for stored in events]


async def test_a_resume_older_than_the_ring_is_replayed_from_the_stream(nats_url: str) -> None:
    cluster = f"r{uuid.uuid4().hex[:8]}"
    async with running_bus(nats_url, cluster, "a", history=5) as a:
        await publish_lines(a, 40)
        everything = await a.page(MATCH_ALL, limit=1000, after_id="evt_0_0")
        assert len(everything) == 40 and a.history_size == 5
        # Node b joins later with its own small ring: it has never seen event 3.
        async with running_bus(nats_url, cluster, "b", history=5) as b:
            subscriber, replay, gap = await b.open_subscription(
                MATCH_ALL, after_id=everything[2].id, last=0
            )
            assert gap is None
            assert ids(replay) == ids(everything[3:])
            await publish_lines(a, 3)  # live events follow the replay, none missed or repeated
            await wait_for(lambda: len(subscriber.pending) == 3)
            assert [frame.split(b"\n")[0] for frame in subscriber.pending] == [
                b"id: " + stored.id.encode() for stored in b.history(MATCH_ALL, limit=3)
            ]
            assert b.replayed == 37 and b.gaps == 0
            # The read consumers are gone: only the two nodes' own consumers are left.
            info = await b.js.stream_info(b.names.stream)
            assert info.state.consumer_count == 2


async def test_the_replay_from_the_stream_is_filtered(nats_url: str) -> None:
    cluster = f"r{uuid.uuid4().hex[:8]}"
    async with running_bus(nats_url, cluster, "a", history=4) as a:
        await publish_lines(a, 10, session="s_one")
        await publish_lines(a, 10, session="s_two")
        first = (await a.page(MATCH_ALL, limit=1, after_id="evt_0_0"))[0]
        only_two = EventFilter.parse("s_two", None, None)
        _, replay, gap = await a.open_subscription(only_two, after_id=first.id, last=0)
        assert gap is None
        assert [stored.session_id for stored in replay] == ["s_two"] * 10
        # Paging /api/events/history from an old id: the stream first, then the ring.
        page = await a.page(only_two, limit=7, after_id=first.id)
        assert ids(page) == ids(replay[:7])
        rest = await a.page(only_two, limit=100, after_id=page[-1].id)
        assert ids(page + rest) == ids(replay)


async def test_an_id_older_than_the_stream_is_a_gap_from_the_streams_oldest(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_bus, "MIN_RETENTION", 20)
    cluster = f"r{uuid.uuid4().hex[:8]}"
    async with running_bus(nats_url, cluster, "a", history=5) as a:
        await publish_lines(a, 30)  # the stream keeps the last 20: 11..30
        _, replay, gap = await a.open_subscription(MATCH_ALL, after_id="evt_3_1", last=0)
        assert gap is not None
        assert gap.missed == 7  # 4..10 are gone from the stream too
        assert gap.resumed_from == replay[0].id
        assert [stored.seq for stored in replay] == list(range(11, 31))


async def test_an_id_the_stream_holds_under_another_name_is_not_ours(nats_url: str) -> None:
    cluster = f"r{uuid.uuid4().hex[:8]}"
    async with running_bus(nats_url, cluster, "a", history=5) as a:
        await publish_lines(a, 20)
        _, replay, gap = await a.open_subscription(MATCH_ALL, after_id="evt_3_123", last=0)
        assert gap is not None and gap.missed is None
        assert len(replay) == 5  # everything held, as one node answers an id not its own


async def test_a_late_node_replays_a_whole_session_it_never_saw(
    nats_url: str, tmp_path: Path
) -> None:
    cluster = f"r{uuid.uuid4().hex[:8]}"

    def node(name: str) -> ServerProcess:
        directory = tmp_path / name
        directory.mkdir()
        return ServerProcess(
            directory,
            "--simulate",
            "--nats",
            nats_url,
            "--cluster",
            cluster,
            "--node-id",
            name,
            "--history",
            "4",
            env={"LOKI_SIM_DELAY": "0.005"},
        )

    with node("first") as first:
        async with sse_stream(first.url) as stream:
            response = httpx.post(f"{first.url}/api/sessions", json={}, timeout=10)
            assert response.status_code == 201, response.text
            seen = await stream.until(lambda m: m.event == "session:completed", timeout=30)
        assert len(seen) > 10
        with node("late") as late:
            async with sse_stream(late.url, headers={"Last-Event-ID": seen[0].id}) as resumed:
                replayed = await resumed.until(lambda m: m.event == "session:completed", timeout=30)
            assert [m.id for m in replayed] == [m.id for m in seen[1:]]  # no gap message either
            page = httpx.get(
                f"{late.url}/api/events/history",
                params={"after": seen[0].id, "limit": 1000},
                timeout=10,
            ).json()
            assert [event["id"] for event in page["events"]] == [m.id for m in seen[1:]]
