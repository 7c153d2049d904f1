"""`GET /metrics`: the numbers move by the right amounts, access rules, bounded labels."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loki_api.app import create_app
from loki_api.bus import EventBus
from loki_api.models import SESSION_STATUSES, LogEventData
from loki_api.runtime import Runtime
from loki_api.sessions.errors import ManagerNotRunning
from loki_api.settings import Settings
from loki_api.tally import Buckets

from .support import ServerProcess, serve_in_process, sse_stream, wait_for

pytestmark = pytest.mark.anyio

TOKEN = "m" * 32
PRD = "# Metrics app\n\n## Backend\n- Build the API\n- Add storage\n"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def scrape(client: httpx.Client) -> Samples:
    reply = client.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(reply.text)


async def test_counters_after_a_whole_simulated_session(loki_dir: Path) -> None:
    (loki_dir / "prd.md").write_text(PRD)
    with (
        ServerProcess(loki_dir, "--simulate") as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        async with sse_stream(server.url) as stream:
            reply = client.post("/api/sessions", json={"prdPath": "./prd.md"})
            assert reply.status_code == 201, reply.text
            session_id = reply.json()["sessionId"]
            await stream.until(lambda m: m.event == "session:completed", timeout=30)
            during = scrape(client)
            assert value(during, "loki_event_stream_subscribers") == 1
        async with sse_stream(server.url, params={"history": 5}) as replay:
            for _ in range(5):
                await replay.next()
        # A stream's request is counted (and logged) when it ends.
        streams = {"route": "/api/events", "method": "GET", "status": "200"}
        await wait_for(lambda: value(scrape(client), "loki_http_requests_total", **streams) == 2)

        before = scrape(client)
        for _ in range(3):
            assert client.get(f"/api/sessions/{session_id}").status_code == 200
        for n in range(2):
            assert client.get(f"/no/such/{n}").status_code == 404
        assert client.delete("/api/events/stats").status_code == 405
        stats = client.get("/api/events/stats").json()
        after = scrape(client)

    # Events by type are exactly the bus's own statistics.
    published = by_label(after, "loki_events_published_total", "type")
    assert published == {k: float(v) for k, v in stats["byType"].items()}
    assert sum(published.values()) == stats["published"] > 0
    assert published["session:completed"] == 1
    # Sessions by status: the one session, completed; every status is exported.
    sessions = by_label(after, "loki_sessions", "status")
    assert sessions == {s: (1.0 if s == "completed" else 0.0) for s in SESSION_STATUSES}
    assert value(after, "loki_session_starts_total", provider="claude", outcome="started") == 1
    lines = value(after, "loki_session_output_lines_total", stream="stdout")
    size = value(after, "loki_session_output_bytes_total", stream="stdout")
    assert 0 < lines and size > lines
    assert value(after, "loki_event_stream_subscribers") == 0
    assert value(after, "loki_event_stream_replays_total") == 1
    assert value(after, "loki_event_stream_replayed_events_total") == 5
    assert value(after, "loki_watcher_rescans_total") >= 1
    assert value(after, "loki_event_write_latency_seconds_count") > 0

    # HTTP counts moved by exactly what was asked, under route templates.
    def delta(route: str, method: str, status: str) -> float:
        labels = {"route": route, "method": method, "status": status}
        return value(after, "loki_http_requests_total", **labels) - value(
            before, "loki_http_requests_total", **labels
        )

    assert delta("/api/sessions/{session_id}", "GET", "200") == 3
    assert delta("<unmatched>", "GET", "404") == 2
    assert delta("/api/events/stats", "DELETE", "405") == 1
    assert delta("/api/events/stats", "GET", "200") == 1
    assert delta("/metrics", "GET", "200") == 1  # `before` itself
    assert (
        value(after, "loki_http_requests_total", route="/api/sessions", method="POST", status="201")
        == 1
    )
    duration = "loki_http_request_duration_seconds_count"
    assert value(after, duration, route="/api/sessions/{session_id}", method="GET") >= 3
    assert value(after, "process_resident_memory_bytes") > 0
    assert any(name.startswith("python_gc_") for name, _ in after)


async def test_openmetrics_when_asked(tmp_path: Path) -> None:
    app = create_app(Settings(loki_dir=tmp_path))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        reply = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.text.endswith("# EOF\n")


def remote_client(tmp_path: Path, **settings: object) -> httpx.AsyncClient:
    config = Settings(loki_dir=tmp_path, host="0.0.0.0", **settings)  # type: ignore[arg-type]
    app = create_app(config, Runtime(config))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://203.0.113.1:8420")


async def test_metrics_need_the_token_from_remote_peers(tmp_path: Path) -> None:
    async with remote_client(tmp_path, token=TOKEN) as client:
        assert (await client.get("/metrics")).status_code == 401
        bearer = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and "loki_info" in bearer.text
        assert (await client.get(f"/metrics?token={TOKEN}")).status_code == 401


async def test_metrics_public_opens_only_metrics(tmp_path: Path) -> None:
    async with remote_client(tmp_path, token=TOKEN, metrics_public=True) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/api/status")).status_code == 401
    async with remote_client(tmp_path, metrics_public=True) as client:  # no token configured
        assert (await client.get("/metrics")).status_code == 200


async def test_labels_stay_bounded_whatever_the_paths(tmp_path: Path) -> None:
    app = create_app(Settings(loki_dir=tmp_path))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        for n in range(1000):
            reply = await client.get(f"/api/sessions/sess-{n}")
            assert reply.status_code == 404
        for n in range(100):
            await client.get(f"/api/sessions/sess-{n}/tasks/task-{n}")
            await client.get(f"/random/{n}")
            await client.request(f"X{n}", "/api/status")  # made-up methods too
        text = (await client.get("/metrics")).text
    samples = parse(text)
    requests = [k for k in samples if k[0] == "loki_http_requests_total"]
    assert len(requests) <= 6, requests
    routes = {dict(labels)["route"] for _, labels in requests}
    assert routes == {
        "/api/sessions/{session_id}",
        "/api/sessions/{session_id}/tasks/{task_id}",
        "<unmatched>",
        "/api/status",
    }, routes
    assert {dict(labels)["method"] for _, labels in requests} == {"GET", "other"}
    assert "sess-" not in text and "task-" not in text and "/random" not in text
    ids = value(
        samples,
        "loki_http_requests_total",
        route="/api/sessions/{session_id}",
        method="GET",
        status="404",
    )
    assert ids == 1000


async def test_two_apps_in_one_process_count_their_own(tmp_path: Path) -> None:
    first = create_app(Settings(loki_dir=tmp_path / "a"))
    second = create_app(Settings(loki_dir=tmp_path / "b"))
    first.state.runtime.bus.publish("log:info", LogEventData(level="info", message="one"))
    samples = [
        parse(generate_latest(app.state.runtime.metrics).decode()) for app in (first, second)
    ]
    assert value(samples[0], "loki_events_published_total", type="log:info") == 1
    assert value(samples[1], "loki_events_published_total", type="log:info") == 0
    # Nothing of ours on the library's process-wide registry.
    assert b"loki_" not in generate_latest(REGISTRY)


async def test_refused_starts_are_counted_by_outcome(tmp_path: Path) -> None:
    runtime = Runtime(Settings(loki_dir=tmp_path, simulate=True))
    with pytest.raises(ManagerNotRunning):  # its session manager is not running (no lifespan)
        runtime.sessions.start(None, "gemini")
    samples = parse(generate_latest(runtime.metrics).decode())
    labels = {"provider": "gemini", "outcome": "unavailable"}
    assert value(samples, "loki_session_starts_total", **labels) == 1


def test_connections_the_guard_closed_are_counted(tmp_path: Path) -> None:
    runtime = Runtime(Settings(loki_dir=tmp_path))
    guard = runtime.connections
    guard.per_address = 1
    assert guard.admit("10.0.0.5") and not guard.admit("10.0.0.5")  # over its cap
    guard.timed_out += 2  # as `GuardedProtocol._head_late` counts them
    samples = parse(generate_latest(runtime.metrics).decode())
    assert value(samples, "loki_connections_refused_total") == 1
    assert value(samples, "loki_connections_timed_out_total") == 2


async def test_stream_cutoffs_are_counted() -> None:
    bus = EventBus(history=10, max_pending=2)
    subscriber, _ = bus.subscribe()
    subscriber.blocked = True  # its socket is full
    for n in range(4):
        bus.publish("log:info", LogEventData(level="info", message=str(n)))
    assert subscriber.closed and bus.cutoffs == 1


def test_buckets_are_cumulative_with_le_semantics() -> None:
    buckets = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        buckets.observe(v)
    assert buckets.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert buckets.count == 4 and buckets.sum == pytest.approx(2.65)


async def test_live_frames_still_skip_the_access_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access middleware wraps `send`; live frames must still go to the socket directly."""
    from loki_api import direct_write

    writes: list[bytes] = []
    original = direct_write.DirectChunkWriter.write

    def spy(self: direct_write.DirectChunkWriter, data: bytes) -> bool:
        writes.append(data)
        return original(self, data)

    monkeypatch.setattr(direct_write.DirectChunkWriter, "write", spy)
    async with (
        serve_in_process(Settings(loki_dir=tmp_path, port=0)) as server,
        sse_stream(server.url) as stream,
    ):
        bus = server.runtime.bus
        await wait_for(lambda: bus.subscribers() and bus.subscribers()[0].live)
        bus.publish("log:info", LogEventData(level="info", message="direct"))
        message = await stream.next()
        assert message.json()["data"]["message"] == "direct"
    assert any(b"direct" in data for data in writes)


def test_cluster_metrics_read_the_nats_link_and_the_forwarder() -> None:
    """In cluster mode: NATS link state, publish buffer, forwarded control calls."""
    from types import SimpleNamespace

    from loki_api.metrics import LokiCollector

    class Outbox(list):  # two events waiting for their ack
        acked = 7
        lost = 1

    bus = SimpleNamespace(connected=True, outbox=Outbox([0, 0]), last_seq=42)
    runtime = SimpleNamespace(cluster_bus=bus, forwarder=SimpleNamespace(forwarded=3, served=2))
    families = {f.name: f for f in LokiCollector(runtime)._cluster()}  # type: ignore[arg-type]
    sample = {name: f.samples[0].value for name, f in families.items()}
    assert sample == {
        "loki_nats_connected": 1,
        "loki_nats_publish_buffer": 2,
        "loki_nats_published": 7,
        "loki_nats_publish_lost": 1,
        "loki_nats_stream_sequence": 42,
        "loki_cluster_forwarded": 3,
        "loki_cluster_forwards_served": 2,
    }
    single = SimpleNamespace(cluster_bus=None, forwarder=None)
    assert list(LokiCollector(single)._cluster()) == []  # type: ignore[arg-type]


def test_rejected_state_files_and_storage_errors_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from loki_api import statedir

    runtime = Runtime(Settings(loki_dir=tmp_path, max_state_file=1024))
    files = runtime.files
    session = files.root / "sessions" / "s1"
    session.mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.json", session / "tasks.json")
    os.mkfifo(session / "phase.json")
    (session / "agents.json").write_bytes(b"[" * 100 + b"]" * 100)
    (session / "session.json").write_bytes(b'{"id": "%s"}' % (b"x" * 2000))
    for _ in range(2):  # a path that stays bad is counted once
        for name in ("tasks.json", "phase.json", "agents.json", "session.json"):
            assert files.read(f"sessions/s1/{name}", json=True) is None

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(statedir, "_os_write", full)
    with pytest.raises(statedir.StorageUnavailable):
        files.write_atomic("sessions/s1/STOP", b"stop")
    samples = parse(generate_latest(runtime.metrics).decode())
    assert by_label(samples, "loki_state_files_rejected_total", "reason") == {
        "symlink": 1,
        "not_regular": 1,
        "json_shape": 1,
        "too_large": 1,
    }
    assert by_label(samples, "loki_storage_write_errors_total", "what") == {"sessions": 1}
