"""Everything one server instance owns, and its lifetime.

The `Runtime` lives on `app.state.runtime`; there are no module-level
singletons, so two apps can run side by side in one process (tests do).
`Runtime.run()` is the lifespan: it opens the durable event log, binds the bus
to the loop, and runs every long-lived part in one task group, so shutdown is
one cancel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .bus import EventBus
from .connections import ConnectionGuard
from .eventlog import HEALTH_KEY as EVENT_LOG_KEY
from .eventlog import EventLog
from .health_problems import HealthProblems
from .metrics import metrics_registry
from .models import ClusterInfo, ReadyCheck, Session, SessionCounts
from .providers import ProviderCache
from .sessions.manager import SessionManager
from .settings import Settings
from .state import StateStore, valid_session_id
from .state.heartbeat import run_heartbeat
from .state.snapshot import SnapshotDir
from .statedir import STORAGE_KEY, StateDir, StateDirError
from .tally import HttpTally
from .watcher import StateWatcher

if TYPE_CHECKING:
    from .cluster.bus import ClusterBus
    from .cluster.forward import Forwarder
    from .cluster.registry import Registry

# Seconds between saves of changed sessions' snapshots (what a restart diffs against).
SNAPSHOT_INTERVAL = 0.25
# Seconds between write probes while storage is failing (recovery needs no restart).
STORAGE_RETRY = 1.0

# A readiness check answers None when healthy, else a one-line reason.
Check = Callable[[], str | None]

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.monotonic()
        self.providers = ProviderCache()
        # Problems that make `/health` degraded (and some `/health/ready` fail).
        self.health = HealthProblems()
        # Request-head timeout and per-address cap, applied by uvicorn's protocol (serve.py).
        self.connections = ConnectionGuard(settings.head_timeout, settings.connections_per_address)
        self.checks: dict[str, Check] = {"stateDir": self.state_dir_writable}
        # The one door to `.loki/` (SPEC §3.2); everything below reads and writes through it.
        self.files = StateDir(settings.state_dir, settings.state_limits, self.health)
        self.node_id: str | None = None
        self.cluster_bus: ClusterBus | None = None
        self.registry: Registry | None = None
        self.forwarder: Forwarder | None = None
        self.bus: EventBus
        if settings.clustered:
            from .cluster.bus import ClusterBus  # nats-py is only needed in cluster mode
            from .cluster.node import resolve_node_id

            self.node_id = resolve_node_id(settings, self.files)
            self.bus = self.cluster_bus = ClusterBus(settings, self.node_id, self.health)
        else:
            self.bus = EventBus(history=settings.history, max_pending=settings.max_pending)
        self.store = StateStore(settings, self.bus, self.files)
        if self.cluster_bus is not None and self.node_id is not None:
            from .cluster.forward import Forwarder
            from .cluster.registry import Registry

            self.registry = Registry(self, self.node_id)
            self.forwarder = Forwarder(self, self.node_id)
        self.snapshots = SnapshotDir(self.files)
        self.sessions = SessionManager(settings, self.store, self.bus, health=self.health)
        # Output growth wakes the supervisors through inotify on the loop when it
        # can, else through the state watcher.
        on_output = None if self.sessions.output_watch is not None else self.sessions.wake
        self.watcher = StateWatcher(
            settings, self.store, self.bus, on_output=on_output, health=self.health
        )
        self.add_check("watcher", self.watcher.vital_problem)
        self.cli_problem()  # reports an unrunnable CLI on /health from the start
        self.http = HttpTally()  # filled by `access.AccessMiddleware`
        # This app's own registry: two apps in one process each export their own numbers.
        self.metrics = metrics_registry(self)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        settings = self.settings
        if not settings.clustered:  # in a cluster the JetStream stream is the durable log
            # Never fatal (SPEC §3.2): whatever `.loki/` holds, the server starts and
            # `/health` tells what is wrong.
            self.bus.attach_log(EventLog(self.files, max_bytes=settings.event_log_bytes))
        self.bus.bind_loop()
        snapshots = self.snapshots.load_all() if self.snapshots.exists() else None
        self.store.load(snapshots)
        self.watcher.saved_log_positions = saved_log_positions(settings, snapshots)
        self.started_at = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keepalive)
                if self.cluster_bus is not None:
                    # Ready once it holds the stream's last --history events (or NATS is away).
                    await tg.start(self.cluster_bus.run)
                if self.registry is not None and self.forwarder is not None:
                    tg.start_soon(self.registry.run)
                    tg.start_soon(self.forwarder.serve)
                # Re-adopts the sessions that outlived a previous server before serving.
                await tg.start(self.sessions.run)
                await tg.start(self.watcher.run)
                tg.start_soon(run_heartbeat, self.store, self.bus, settings.heartbeat)
                tg.start_soon(self._save_snapshots)
                tg.start_soon(self._recover_storage)
                yield
                tg.cancel_scope.cancel()
        finally:
            self.save_snapshots()
            self.bus.close()

    async def _save_snapshots(self) -> None:
        while True:
            await anyio.sleep(SNAPSHOT_INTERVAL)
            self.save_snapshots()

    async def _recover_storage(self) -> None:
        """While writes fail, probe every second; once one works, write what waited.

        The same for a durable log that could not be opened (something in its place):
        it comes back, with the events it kept, without waiting for the next event.
        """
        while True:
            await anyio.sleep(STORAGE_RETRY)
            if self.health.get(STORAGE_KEY) is not None:
                self.files.probe()  # clears the problem when its write works
                if self.health.get(STORAGE_KEY) is None:
                    self.bus.flush()
                    self.save_snapshots()
            elif self.health.get(EVENT_LOG_KEY) is not None:
                self.bus.flush()

    def save_snapshots(self) -> None:
        """Write the snapshot of every session that changed since the last save."""
        changed, self.store.changed = self.store.changed, set()
        for session_id in changed:
            snapshot = self.store.snapshot_of(session_id)
            if snapshot is not None:
                state_dir = self.settings.sessions_dir / session_id
                snapshot["logs"] = self.watcher.tailer.positions_under(state_dir)
            try:
                if snapshot is None:
                    self.snapshots.remove(session_id)
                else:
                    self.snapshots.save(session_id, snapshot)
            except OSError as exc:
                if not isinstance(exc, StateDirError):  # on /health already (storage, stateFiles)
                    log.warning("cannot save the state snapshot of %s: %s", session_id, exc)
                self.store.changed.add(session_id)

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(self.settings.keepalive)
            self.bus.ping_all()

    def add_check(self, name: str, check: Check) -> None:
        """Register a readiness check; `/health/ready` and `/health` run them all."""
        self.checks[name] = check

    def run_checks(self) -> dict[str, ReadyCheck]:
        """The vital checks (a failure is `unhealthy`), then the reported problems
        that block readiness (`degraded`, but not ready)."""
        results = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:  # a broken check is a failing check, not a 500
                problem = f"check raised {type(exc).__name__}: {exc}"
            results[name] = ReadyCheck(ok=problem is None, detail=problem)
        for name, reason in self.health.not_ready().items():
            if results.get(name, ReadyCheck(ok=True)).ok:
                results[name] = ReadyCheck(ok=False, detail=reason)
        return results

    def cluster_info(self) -> ClusterInfo | None:
        if self.cluster_bus is None:
            return None
        info = self.cluster_bus.info()
        if self.registry is not None:
            info.nodes = self.registry.node_list()
        return info

    def public_record(self, record: Session) -> Session:
        """A local session record as the API shows it (in a cluster: with its node)."""
        return self.registry.record_of(record) if self.registry is not None else record

    def session_counts(self) -> SessionCounts:
        return self.sessions.counts()

    def active_session(self) -> str | None:
        return self.sessions.active_session()

    def cli_description(self) -> str | None:
        """The session command in use, for health and the banner."""
        return self.sessions.cli.describe()

    def cli_problem(self) -> str | None:
        """Why sessions cannot be started, or None when they can (kept on `/health`)."""
        return self.sessions.cli_problem()

    def state_dir_writable(self) -> str | None:
        """None when the state dir is usable, else why not.

        A full or read-only disk is not "unusable": the probe reports it as the
        `storage` problem (degraded, not ready) instead.
        """
        return self.files.probe()


def saved_log_positions(
    settings: Settings, snapshots: dict[str, Any] | None
) -> dict[Path, tuple[int, int]]:
    """The log read positions the snapshots hold: path → (inode, offset)."""
    positions: dict[Path, tuple[int, int]] = {}
    for session_id, snapshot in (snapshots or {}).items():
        if not valid_session_id(session_id):
            continue
        logs = snapshot.get("logs") if isinstance(snapshot, dict) else None
        if not isinstance(logs, dict):
            continue
        for name, value in logs.items():
            if (
                isinstance(name, str)
                and "/" not in name
                and isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, int) for v in value)
            ):
                positions[settings.sessions_dir / session_id / name] = (value[0], value[1])
    return positions
