"""Every event and API type, defined once: the wire types of the Loki API.

They live in the SDK's distribution (`loki-client`) because both sides use them:
the server (`loki-api`, which depends on `loki-client`) builds its responses from
these Structs, the SDK decodes into them, and `scripts/gen_openapi.py` turns them
into the OpenAPI component schemas. This module imports nothing but msgspec.

Field names are snake_case in Python and camelCase on the wire.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "Model",
    "Record",
    "Provider",
    "PROVIDERS",
    "SessionStatus",
    "SESSION_STATUSES",
    "TaskStatus",
    "TASK_STATUSES",
    "LogLevel",
    "LOG_LEVELS",
    "SessionEventData",
    "PhaseEventData",
    "TaskEventData",
    "AgentEventData",
    "LogEventData",
    "MetricsEventData",
    "InputEventData",
    "HeartbeatEventData",
    "EventData",
    "EVENT_TYPES",
    "Event",
    "RawEvent",
    "decode_event",
    "Session",
    "Task",
    "Agent",
    "SessionOptions",
    "StartSessionRequest",
    "InputRequest",
    "SessionActionResponse",
    "SessionList",
    "TaskCounts",
    "AgentCounts",
    "SessionDetail",
    "Pagination",
    "SessionTaskList",
    "TaskList",
    "TaskDetail",
    "TaskQueue",
    "DeleteResponse",
    "ProviderAvailability",
    "NatsState",
    "ClusterNode",
    "ClusterInfo",
    "Health",
    "ReadyCheck",
    "Readiness",
    "Liveness",
    "SessionCounts",
    "EventCounts",
    "SystemInfo",
    "Status",
    "EventHistory",
    "EventStats",
    "StreamGap",
    "ApiError",
]


class Model(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Base of wire types: camelCase on the wire, unset optional fields omitted."""


class Record(msgspec.Struct, rename="camel", kw_only=True):
    """Base of wire types whose optional fields are written as explicit nulls."""


# --------------------------------------------------------------------------- events

Provider = Literal["claude", "codex", "gemini", "cline", "aider"]
PROVIDERS: tuple[str, ...] = ("claude", "codex", "gemini", "cline", "aider")

SessionStatus = Literal[
    "starting", "running", "paused", "stopping", "stopped", "failed", "completed"
]
SESSION_STATUSES: tuple[str, ...] = (
    "starting",
    "running",
    "paused",
    "stopping",
    "stopped",
    "failed",
    "completed",
)

TaskStatus = Literal["pending", "queued", "running", "completed", "failed", "skipped"]
TASK_STATUSES: tuple[str, ...] = ("pending", "queued", "running", "completed", "failed", "skipped")

LogLevel = Literal["debug", "info", "warn", "error"]
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error")


class SessionEventData(Model, kw_only=True):
    status: str
    message: str | None = None
    exit_code: int | None = None
    # Cluster mode: why (`node-lost`) and which node, when a node's loss ended the session.
    reason: str | None = None
    node: str | None = None


class PhaseEventData(Model, kw_only=True):
    phase: str
    previous_phase: str | None = None
    progress: float | None = None
    eta: float | None = None


class TaskEventData(Model, kw_only=True):
    task_id: str
    title: str
    status: str
    description: str | None = None
    progress: float | None = None
    output: str | None = None
    error: str | None = None
    duration: float | None = None


class AgentEventData(Model, kw_only=True):
    agent_id: str
    type: str
    model: str | None = None
    task: str | None = None
    output: str | None = None
    exit_code: int | None = None


class LogEventData(Model, kw_only=True):
    level: str
    message: str
    source: str | None = None
    context: dict[str, Any] | None = None


class MetricsEventData(Model, kw_only=True):
    cpu_usage: float | None = None
    memory_usage: float | None = None
    tokens_used: int | None = None
    api_calls: int | None = None
    cost: float | None = None


class InputEventData(Model, kw_only=True):
    prompt: str
    context: str | None = None
    timeout: float | None = None
    options: list[str] | None = None


class HeartbeatEventData(Model, kw_only=True):
    uptime: float
    active_agents: int
    queued_tasks: int


EventData = (
    SessionEventData
    | PhaseEventData
    | TaskEventData
    | AgentEventData
    | LogEventData
    | MetricsEventData
    | InputEventData
    | HeartbeatEventData
)

# The 25 event types and the data Struct each one carries.
EVENT_TYPES: dict[str, type[Model]] = {
    **{
        f"session:{a}": SessionEventData
        for a in ("started", "paused", "resumed", "stopped", "completed", "failed")
    },
    **{f"phase:{a}": PhaseEventData for a in ("started", "completed", "failed")},
    **{
        f"task:{a}": TaskEventData
        for a in ("created", "started", "progress", "completed", "failed")
    },
    **{f"agent:{a}": AgentEventData for a in ("spawned", "output", "completed", "failed")},
    **{f"log:{lvl}": LogEventData for lvl in LOG_LEVELS},
    "metrics:update": MetricsEventData,
    "input:requested": InputEventData,
    "heartbeat": HeartbeatEventData,
}


class Event(Record, kw_only=True):
    """The envelope every event travels in.

    `id` is `evt_<seq>_<unix-ms>`; `seq` strictly increases for the life of the
    state directory, so ids order events and `Last-Event-ID` can resume.
    """

    id: str
    type: str
    timestamp: str
    session_id: str | None = None
    # One of the `EventData` Structs, chosen by `type` (see `EVENT_TYPES`). msgspec
    # cannot decode an untagged union of Structs, so `decode_event` does it in two steps.
    data: Any


class RawEvent(Record, kw_only=True):
    """An envelope whose `data` is left undecoded until its type is known."""

    id: str
    type: str
    timestamp: str
    session_id: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"{}")


def decode_event(raw: RawEvent) -> Event:
    """Turn a raw envelope into an `Event` whose `data` is its typed Struct.

    Unknown types keep their data as a plain dict, so a newer server never breaks
    an older client.
    """
    data_type = EVENT_TYPES.get(raw.type)
    data: Any = (
        msgspec.json.decode(raw.data, type=data_type)
        if data_type is not None
        else msgspec.json.decode(raw.data)
    )
    return Event(
        id=raw.id, type=raw.type, timestamp=raw.timestamp, session_id=raw.session_id, data=data
    )


# --------------------------------------------------------------------- sessions & tasks


class Session(Record, kw_only=True):
    """The session record kept in `.loki/sessions/<id>/session.json`."""

    id: str
    prd_path: str | None = None
    provider: str = "claude"
    status: str = "starting"
    started_at: str | None = None
    updated_at: str | None = None
    pid: int | None = None
    current_phase: str | None = None
    task_count: int = 0
    completed_tasks: int = 0
    exit_code: int | None = None
    # Cluster mode: the node that runs (supervises) the session; None on a single node.
    node: str | None = None


class Task(Record, kw_only=True):
    """A task, normalised from whatever shape `tasks.json` holds.

    It always carries the twelve keys of the original API's `Task` (the original
    TypeScript client relies on them): `null` where unknown, `description` `""`
    and `priority` 0 when the file has none, `createdAt` the session's start when
    the file does not say. `progress`, `duration` and `updatedAt` are extras.
    """

    id: str
    session_id: str
    title: str
    description: str
    status: str
    priority: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    agent: str | None
    output: str | None
    error: str | None
    progress: float | None = None
    duration: float | None = None
    updated_at: str | None = None


class Agent(Model, kw_only=True):
    id: str
    type: str = "unknown"
    model: str | None = None
    task: str | None = None
    status: str | None = None


class SessionOptions(Model, forbid_unknown_fields=True, kw_only=True):
    dry_run: bool = False
    verbose: bool = False
    # Seconds after which a still-running session is stopped; 0 or less is refused.
    timeout: Annotated[float, msgspec.Meta(gt=0, lt=1e9)] | None = None


class StartSessionRequest(Model, forbid_unknown_fields=True, kw_only=True):
    prd_path: str | None = None
    provider: str = "claude"
    options: SessionOptions | None = None


class InputRequest(Model, forbid_unknown_fields=True, kw_only=True):
    input: str
    context: str | None = None


class SessionActionResponse(Model, kw_only=True):
    """Answer of start/stop/pause/resume/input."""

    session_id: str
    status: str
    message: str


class SessionList(Model, kw_only=True):
    sessions: list[Session]
    total: int
    running: int


class TaskCounts(Record, kw_only=True):
    total: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0


class AgentCounts(Record, kw_only=True):
    active: int = 0
    spawned: int = 0
    completed: int = 0


class SessionDetail(Model, kw_only=True):
    session: Session
    tasks: TaskCounts
    agents: AgentCounts


class Pagination(Model, kw_only=True):
    total: int
    limit: int
    offset: int
    has_more: bool


class SessionTaskList(Model, kw_only=True):
    tasks: list[Task]
    pagination: Pagination
    summary: TaskCounts


class TaskList(Model, kw_only=True):
    tasks: list[Task]
    pagination: Pagination


class TaskDetail(Model, kw_only=True):
    task: Task


class TaskQueue(Model, kw_only=True):
    tasks: list[Task]
    count: int


class DeleteResponse(Model, kw_only=True):
    session_id: str
    deleted: bool
    message: str


# ------------------------------------------------------------------- health & status


class ProviderAvailability(Record, kw_only=True):
    claude: bool = False
    codex: bool = False
    gemini: bool = False
    cline: bool = False
    aider: bool = False


class NatsState(Record, kw_only=True):
    """A cluster node's link to NATS JetStream (SPEC §11)."""

    connected: bool
    servers: list[str]
    # Events published here that JetStream has not acknowledged yet.
    buffered: int
    # Events dropped because the publish buffer was full while NATS was unreachable.
    lost: int
    # The last stream sequence this node handed to its subscribers.
    stream_seq: int
    last_error: str | None = None


class ClusterNode(Record, kw_only=True):
    """A node as its last heartbeat described it."""

    node: str
    max_sessions: int
    running: int
    free: int
    # False once silent for --node-ttl (its sessions were failed as node-lost).
    alive: bool


class ClusterInfo(Record, kw_only=True):
    """Present in cluster mode only (`loki serve --nats ...`)."""

    name: str
    node: str
    nats: NatsState
    nodes: list[ClusterNode] = msgspec.field(default_factory=list)


class Health(Record, kw_only=True):
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    uptime: int  # milliseconds, as in the original API
    providers: ProviderAvailability
    active_session: str | None = None
    cli: str | None = None
    # Why the status is `degraded`: problem key → reason (empty when healthy).
    problems: dict[str, str] = msgspec.field(default_factory=dict)
    cluster: ClusterInfo | None = None


class ReadyCheck(Record, kw_only=True):
    ok: bool
    detail: str | None = None


class Readiness(Record, kw_only=True):
    ready: bool
    checks: dict[str, ReadyCheck]


class Liveness(Record, kw_only=True):
    alive: bool
    uptime: int  # milliseconds


class SessionCounts(Record, kw_only=True):
    total: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0


class EventCounts(Record, kw_only=True):
    subscribers: int
    history_size: int
    published: int


class SystemInfo(Record, kw_only=True):
    platform: str
    arch: str
    python: str


class Status(Record, kw_only=True):
    version: str
    uptime: int  # milliseconds, as /health
    uptime_seconds: float
    uptime_formatted: str
    providers: ProviderAvailability
    sessions: SessionCounts
    events: EventCounts
    system: SystemInfo
    cluster: ClusterInfo | None = None


class EventHistory(Record, kw_only=True):
    events: list[Event]
    count: int


class StreamGap(Record, kw_only=True):
    """Data of the stream's `gap` message: events a resuming client can no longer get.

    Sent before the replay when `Last-Event-ID` is older than the oldest event the
    server holds (`missed`: how many events, of any type, fell out of history) or
    is not one of this server's ids (`missed`: null; the replay is all it holds).
    """

    last_event_id: str
    resumed_from: str | None
    missed: int | None


class EventStats(Record, kw_only=True):
    subscribers: int
    history_size: int
    published: int
    delivered: int
    dropped: int
    by_type: dict[str, int]


class ApiError(Model, kw_only=True):
    """Every error answer: `{"error", "code", "details"?}`."""

    error: str
    code: str
    details: dict[str, Any] | None = None
