"""Sessions and nodes across the cluster, in two JetStream KV buckets watched into memory.

- `<cluster>_sessions`: one key per session, the owner's record (with `node`).
  Each node puts its own sessions when they change and deletes those it
  removed; every node watches the bucket, so any node can list every session
  and knows which node owns one.
- `<cluster>_nodes`: one key per node, its capacity (`maxSessions`, `running`,
  `free`), put every `--node-ttl`/3 seconds. A node not heard from for
  `--node-ttl` is lost: its active sessions become `failed` with reason
  `node-lost`. Several survivors may notice at once; each tries a
  compare-and-set on the session's key (its last revision), and only the one
  that wins publishes the `session:failed` event, so it is published once.
- A node that comes back (same id, same state dir) re-adopts its live
  processes as a single node does, puts its records again, and announces each
  session it takes back with `session:resumed` (message: re-adopted).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ..models import ClusterNode, Session, SessionEventData
from ..sessions.manager import ACTIVE_STATUSES
from .bus import describe

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

# How often this node's records are compared with what it last put.
SYNC_INTERVAL = 0.25


class NodeInfo(msgspec.Struct, rename="camel", kw_only=True):
    """A node's heartbeat: what placement needs to know about it."""

    node: str
    max_sessions: int
    running: int
    free: int


class Registry:
    def __init__(self, runtime: Runtime, node_id: str) -> None:
        self.runtime = runtime
        self.node_id = node_id
        cluster = runtime.settings.cluster
        self.sessions_bucket = f"{cluster}_sessions"
        self.nodes_bucket = f"{cluster}_nodes"
        self.node_ttl = runtime.settings.node_ttl
        # session id -> (KV revision, record); every node's sessions, this one's too.
        self.sessions: dict[str, tuple[int, Session]] = {}
        # node id -> (its last heartbeat, monotonic time it arrived)
        self.nodes: dict[str, tuple[NodeInfo, float]] = {}
        self.lost: set[str] = set()
        self._put: dict[str, bytes] = {}  # what this node last put per session
        self._sessions_kv: KeyValue | None = None
        self._nodes_kv: KeyValue | None = None
        self.synced = False
        self._decoder = msgspec.json.Decoder(Session)
        self._node_decoder = msgspec.json.Decoder(NodeInfo)
        self._encoder = msgspec.json.Encoder()

    # ------------------------------------------------------------ queries

    def owner(self, session_id: str) -> str | None:
        entry = self.sessions.get(session_id)
        return entry[1].node if entry is not None else None

    def live_nodes(self) -> dict[str, NodeInfo]:
        now = time.monotonic()
        return {
            node: info
            for node, (info, seen) in self.nodes.items()
            if now - seen <= self.node_ttl and node not in self.lost
        }

    def node_list(self) -> list[ClusterNode]:
        live = self.live_nodes()
        return [
            ClusterNode(
                node=node,
                max_sessions=info.max_sessions,
                running=info.running,
                free=info.free,
                alive=node in live,
            )
            for node, (info, _) in sorted(self.nodes.items())
        ]

    def others_records(self) -> list[Session]:
        """Records of sessions owned by other nodes (this node's come from its own store)."""
        return [record for _, record in self.sessions.values() if record.node != self.node_id]

    # ---------------------------------------------------------- lifetime

    async def run(self) -> None:
        """Open the buckets once NATS is there, then keep watching and publishing."""
        bus = self.runtime.cluster_bus
        assert bus is not None
        while True:
            js = bus.js
            if js is not None and bus.connected:
                try:
                    self._sessions_kv = await self._bucket(js, self.sessions_bucket, None)
                    self._nodes_kv = await self._bucket(
                        js, self.nodes_bucket, max(self.node_ttl * 4, 60.0)
                    )
                    break
                except Exception as exc:
                    log.warning("cluster registry: %s; retrying", describe(exc))
            await anyio.sleep(0.5)
        async with anyio.create_task_group() as tg:
            for part in (
                self._watch_sessions,
                self._watch_nodes,
                self._heartbeat,
                self._sync_own,
                self._detect_lost,
            ):
                tg.start_soon(self._keep_running, part)

    async def _keep_running(self, part: Any) -> None:
        """Run one loop of the registry for good: a NATS hiccup must not end the server."""
        while True:
            try:
                await part()
            except Exception as exc:
                log.warning("cluster registry: %s failed: %s; restarting it", part.__name__, exc)
            await anyio.sleep(1.0)

    async def _bucket(self, js: Any, name: str, ttl: float | None) -> KeyValue:
        try:
            return await js.key_value(name)
        except BucketNotFoundError:
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=name,
                    history=1,
                    ttl=ttl,
                    storage=StorageType.FILE,
                    replicas=self.runtime.settings.replicas,
                )
            )

    async def _watch_sessions(self) -> None:
        assert self._sessions_kv is not None
        watcher = await self._sessions_kv.watchall()
        async for entry in watcher:
            if entry is None:  # caught up with what the bucket held
                self.synced = True
                self._announce_readoptions()
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self.sessions.pop(entry.key, None)
                continue
            try:
                self.sessions[entry.key] = (entry.revision or 0, self._decoder.decode(entry.value))
            except msgspec.DecodeError:
                log.warning("cluster registry: skipping an undecodable record for %s", entry.key)

    async def _watch_nodes(self) -> None:
        assert self._nodes_kv is not None
        watcher = await self._nodes_kv.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self.nodes.pop(entry.key, None)
                continue
            try:
                info = self._node_decoder.decode(entry.value)
            except msgspec.DecodeError:
                continue
            self.nodes[entry.key] = (info, time.monotonic())
            if entry.key in self.lost:
                self.lost.discard(entry.key)
                log.info("cluster: node %s is back", entry.key)

    def capacity(self) -> NodeInfo:
        settings = self.runtime.settings
        running = sum(1 for s in self.runtime.store.all() if s.record.status in ACTIVE_STATUSES)
        return NodeInfo(
            node=self.node_id,
            max_sessions=settings.max_sessions,
            running=running,
            free=max(settings.max_sessions - running, 0),
        )

    async def _heartbeat(self) -> None:
        assert self._nodes_kv is not None
        interval = max(min(self.node_ttl / 3, 2.0), 0.1)
        while True:
            try:
                await self._nodes_kv.put(self.node_id, self._encoder.encode(self.capacity()))
            except Exception as exc:
                log.debug("cluster heartbeat failed: %s", describe(exc))
            await anyio.sleep(interval)

    def record_of(self, record: Session) -> Session:
        """A local record as the cluster sees it: with this node as its owner."""
        return msgspec.structs.replace(record, node=self.node_id)

    async def _sync_own(self) -> None:
        """Put this node's records that changed since the last put; delete removed ones."""
        assert self._sessions_kv is not None
        kv = self._sessions_kv
        while True:
            await anyio.sleep(SYNC_INTERVAL)
            if not self.synced:
                continue
            current = {s.id: self.record_of(s.record) for s in self.runtime.store.all()}
            for session_id, record in current.items():
                data = self._encoder.encode(record)
                if self._put.get(session_id) == data:
                    continue
                try:
                    await kv.put(session_id, data)
                    self._put[session_id] = data
                except Exception as exc:
                    log.debug("cluster registry put failed: %s", describe(exc))
                    break
            for session_id in [k for k in self._put if k not in current]:
                try:
                    await kv.delete(session_id)
                    del self._put[session_id]
                except Exception as exc:
                    log.debug("cluster registry delete failed: %s", describe(exc))
                    break

    def _announce_readoptions(self) -> None:
        """Back after being declared lost: say which sessions this node runs again."""
        for state in self.runtime.store.all():
            entry = self.sessions.get(state.id)
            if (
                entry is not None
                and entry[1].node == self.node_id
                and entry[1].status == "failed"
                and state.record.status in ACTIVE_STATUSES
            ):
                self.runtime.bus.publish(
                    "session:resumed",
                    SessionEventData(
                        status=state.record.status,
                        message=f"re-adopted by node {self.node_id} after it was declared lost",
                        node=self.node_id,
                    ),
                    state.id,
                )

    async def _detect_lost(self) -> None:
        """Mark the active sessions of nodes silent for --node-ttl as failed (node-lost), once."""
        assert self._sessions_kv is not None
        kv = self._sessions_kv
        while True:
            await anyio.sleep(0.25)
            now = time.monotonic()
            for node, (_, seen) in list(self.nodes.items()):
                if node == self.node_id or node in self.lost or now - seen <= self.node_ttl:
                    continue
                self.lost.add(node)
                log.warning("cluster: node %s silent for %.0fs: lost", node, now - seen)
            if not self.lost:
                continue
            for session_id, (revision, record) in list(self.sessions.items()):
                if record.node not in self.lost or record.status not in ACTIVE_STATUSES:
                    continue
                failed = msgspec.structs.replace(record, status="failed")
                try:
                    await kv.update(session_id, self._encoder.encode(failed), last=revision)
                except KeyWrongLastSequenceError:
                    continue  # another survivor (or the owner) got there first
                except Exception as exc:
                    log.debug("cluster: cannot mark %s failed: %s", session_id, describe(exc))
                    continue
                self.runtime.bus.publish(
                    "session:failed",
                    SessionEventData(
                        status="failed",
                        message=f"node {record.node} lost",
                        reason="node-lost",
                        node=record.node,
                    ),
                    session_id,
                )
