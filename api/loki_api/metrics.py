"""The Prometheus view of one server (SPEC §13): a collector that reads plain counters.

Nothing is counted through `prometheus_client` on the hot path. Publish,
fan-out, output reading and each request bump plain integers and dicts on the
part that does the work (`bus.EventBus`, `sessions.manager.SessionManager`,
`watcher.StateWatcher`, `tally.HttpTally`, ...); `LokiCollector.collect`
turns them into metric families when `/metrics` is scraped.

Each runtime has its own `CollectorRegistry` (the process and GC collectors
are registered on it, not on the library's global registry), so two servers
in one process export their own numbers.

No label holds a session id, a task id or a raw path: routes are templates,
unmatched paths are one label (`access.UNMATCHED_ROUTE`), and the other labels
come from closed sets (event types, statuses, providers, streams).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import __version__
from .models import SESSION_STATUSES
from .tally import Buckets

if TYPE_CHECKING:
    from .runtime import Runtime


def metrics_registry(runtime: Runtime) -> CollectorRegistry:
    """A registry of its own for `runtime`: the Loki metrics, process, platform and GC."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(LokiCollector(runtime))
    return registry


def _buckets(buckets: Buckets) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), count) for bound, count in buckets.cumulative()]


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _counter_by(name: str, doc: str, label: str, counts: Mapping[str, float]) -> Metric:
    """A counter with one label, a sample per key of `counts` (sorted)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


class LokiCollector:
    """Reads the runtime's counters at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("loki", "The Loki API server.", value={"version": __version__})
        yield from self._events()
        yield from self._sessions()
        yield from self._files()
        yield from self._http()
        yield from self._cluster()

    def _events(self) -> Iterator[Metric]:
        bus = self.runtime.bus
        yield _counter_by(
            "loki_events_published", "Events published on the bus, by type.", "type", bus.by_type
        )
        yield _counter(
            "loki_events_delivered",
            "Events written to event streams (replays included), summed over streams.",
            bus.delivered,
        )
        yield GaugeMetricFamily(
            "loki_event_history_size", "Events held in the replay ring buffer.", bus.history_size
        )
        yield GaugeMetricFamily(
            "loki_event_stream_subscribers", "Open event streams.", bus.subscriber_count
        )
        yield _counter(
            "loki_event_stream_cutoffs",
            "Event streams closed for reading too slowly (the client resumes).",
            bus.cutoffs,
        )
        yield _counter(
            "loki_event_stream_gaps",
            "Resumes from an event id older than the history holds (a gap event was sent).",
            bus.gaps,
        )
        yield _counter(
            "loki_event_stream_replays",
            "Event streams that asked for history (history=N or Last-Event-ID).",
            bus.replays,
        )
        yield _counter(
            "loki_event_stream_replayed_events", "Events sent to streams as replay.", bus.replayed
        )
        latency = bus.write_latency
        yield HistogramMetricFamily(
            "loki_event_write_latency_seconds",
            "From an event's publish to the end of the socket writes that carried it "
            "(once per event-loop turn, for the turn's first event).",
            buckets=_buckets(latency),
            sum_value=latency.sum,
        )

    def _sessions(self) -> Iterator[Metric]:
        runtime = self.runtime
        by_status = dict.fromkeys(SESSION_STATUSES, 0)
        for state in runtime.store.all():
            status = state.record.status
            if status in by_status:
                by_status[status] += 1
        sessions = GaugeMetricFamily(
            "loki_sessions", "Sessions known, by status.", labels=["status"]
        )
        for status, count in by_status.items():
            sessions.add_metric([status], count)
        yield sessions
        manager = runtime.sessions
        starts = CounterMetricFamily(
            "loki_session_starts",
            "Session start attempts by provider and outcome (started, unavailable, busy, error).",
            labels=["provider", "outcome"],
        )
        for (provider, outcome), count in sorted(manager.starts.items()):
            starts.add_metric([provider, outcome], count)
        yield starts
        output = manager.output_counts()
        lines = CounterMetricFamily(
            "loki_session_output_lines",
            "Session output lines published, by stream.",
            labels=["stream"],
        )
        size = CounterMetricFamily(
            "loki_session_output_bytes", "Session output bytes read, by stream.", labels=["stream"]
        )
        for stream in sorted(output.lines):
            lines.add_metric([stream], output.lines[stream])
            size.add_metric([stream], output.bytes.get(stream, 0))
        yield lines
        yield size

    def _files(self) -> Iterator[Metric]:
        runtime = self.runtime
        watcher = runtime.watcher
        yield _counter(
            "loki_watcher_restarts", "Restarts of the state-file watcher.", watcher.restarts
        )
        yield _counter(
            "loki_watcher_rescans",
            "Full re-reads of the state directory (start-up, watcher restart, lost events).",
            watcher.rescans,
        )
        files = runtime.files
        yield _counter_by(
            "loki_state_files_rejected",
            "Paths under .loki/ skipped as unsafe or over a cap (SPEC 3.2), once per path "
            "and reason, by kind: symlink, not_regular, too_large, json_shape, other.",
            "reason",
            files.rejected,
        )
        yield _counter_by(
            "loki_storage_write_errors",
            "Writes of the server's own state the storage refused, by area: "
            "event_log, snapshot, sessions, output, other.",
            "what",
            files.write_errors,
        )

    def _cluster(self) -> Iterator[Metric]:
        """NATS link of a cluster node (none in single-node mode)."""
        bus = self.runtime.cluster_bus
        if bus is None:
            return
        yield GaugeMetricFamily(
            "loki_nats_connected", "1 while connected to NATS, else 0.", value=int(bus.connected)
        )
        yield GaugeMetricFamily(
            "loki_nats_publish_buffer",
            "Events waiting for JetStream's acknowledgement.",
            value=len(bus.outbox),
        )
        yield _counter(
            "loki_nats_published",
            "Events JetStream acknowledged from this node.",
            bus.outbox.acked,
        )
        yield _counter(
            "loki_nats_publish_lost",
            "Events dropped because the publish buffer was full.",
            bus.outbox.lost,
        )
        yield GaugeMetricFamily(
            "loki_nats_stream_sequence",
            "The last stream sequence this node delivered to its subscribers.",
            value=bus.last_seq,
        )
        forwarder = self.runtime.forwarder
        if forwarder is not None:
            yield _counter(
                "loki_cluster_forwarded",
                "Control and placement calls this node forwarded to the owning node.",
                forwarder.forwarded,
            )
            yield _counter(
                "loki_cluster_forwards_served",
                "Calls other nodes forwarded to this one.",
                forwarder.served,
            )

    def _http(self) -> Iterator[Metric]:
        http = self.runtime.http
        requests = CounterMetricFamily(
            "loki_http_requests",
            "HTTP requests by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in sorted(http.requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            "loki_http_request_duration_seconds",
            "HTTP request durations by route template and method "
            "(an event stream's is how long it was open).",
            labels=["route", "method"],
        )
        for (route, method), buckets in sorted(http.durations.items()):
            durations.add_metric([route, method], _buckets(buckets), buckets.sum)
        yield durations
        guard = self.runtime.connections
        yield _counter(
            "loki_connections_refused",
            "Connections closed at once: their address had --connections-per-address open.",
            guard.refused,
        )
        yield _counter(
            "loki_connections_timed_out",
            "Connections closed for not sending a complete request head in --head-timeout.",
            guard.timed_out,
        )
