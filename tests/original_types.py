"""The ORIGINAL Loki Mode API's wire types, transcribed as strict msgspec Structs.

Source: the original `api/openapi.yaml` of loki-mode (5.7.3), kept in the shared
seeds (`003_*`), `components.schemas`, which its TypeScript client's
`api/types/` mirror. Transcribed, not generated from our models, so a test that
decodes our answers with these fails when we drop or retype a field the original
client reads. The rules of the transcription:

- every property of a schema is a required key (the TypeScript types the
  original client is typed by declare them all; SPEC §6: "missing or retyped
  ones are not [fine]"); `nullable: true` makes it `T | None`, still required;
- `ApiError.details` is the one optional key (errors without details omit it in
  the original server too);
- `enum`s are `Literal`s; `format: date-time` strings are checked as ISO 8601;
- extra keys are allowed (SPEC §6: "Extra fields are fine"), so no
  `forbid_unknown_fields`.

Objects the original documents only as `type: object` (`/api/status`, a task
list's `pagination`/`summary`, `SSEEvent.data`) are `dict[str, Any]`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec


class Original(msgspec.Struct, rename="camel"):
    """Base: camelCase keys, as the original API."""


OriginalProvider = Literal["claude", "codex", "gemini"]
OriginalSessionStatus = Literal[
    "starting", "running", "paused", "stopping", "stopped", "failed", "completed"
]
OriginalTaskStatus = Literal["pending", "queued", "running", "completed", "failed", "skipped"]


class Session(Original):
    id: str
    prd_path: str | None
    provider: OriginalProvider
    status: OriginalSessionStatus
    started_at: datetime
    updated_at: datetime
    pid: int | None
    current_phase: str | None
    task_count: int
    completed_tasks: int


class Task(Original):
    id: str
    session_id: str
    title: str
    description: str
    status: OriginalTaskStatus
    priority: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    agent: str | None
    output: str | None
    error: str | None


class SessionOptions(Original):
    dry_run: bool
    verbose: bool
    timeout: int


class StartSessionRequest(Original):
    prd_path: str
    provider: OriginalProvider
    options: SessionOptions


class StartSessionResponse(Original):
    session_id: str
    status: str
    message: str


class SessionTaskCounts(Original):
    total: int
    pending: int
    running: int
    completed: int
    failed: int


class SessionAgentCounts(Original):
    active: int
    spawned: int
    completed: int


class SessionStatusResponse(Original):
    session: Session
    tasks: SessionTaskCounts
    agents: SessionAgentCounts


class HealthProviders(Original):
    claude: bool
    codex: bool
    gemini: bool


class HealthResponse(Original):
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    uptime: int
    providers: HealthProviders
    active_session: str | None


class ApiError(Original):
    error: str
    code: str
    details: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class SSEEvent(Original):
    id: str
    type: str
    timestamp: datetime
    session_id: str
    data: dict[str, Any]


# ----------------------------------------------- the inline response schemas of paths


class SessionListResponse(Original):
    """`GET /api/sessions` 200."""

    sessions: list[Session]
    total: int
    running: int


class SessionTasksResponse(Original):
    """`GET /api/sessions/{sessionId}/tasks` 200."""

    tasks: list[Task]
    pagination: dict[str, Any]
    summary: dict[str, Any]


class ActiveTasksResponse(Original):
    """`GET /api/tasks/active` 200."""

    tasks: list[Task]
    count: int


class EventHistoryResponse(Original):
    """`GET /api/events/history` 200 (`events` is an untyped array there; its items
    are the events the stream sends, `SSEEvent`)."""

    events: list[SSEEvent]
    count: int


def decode(body: bytes, type_: type[Any]) -> Any:
    """Strict decoding (no str→int or similar coercion): a retyped field fails."""
    return msgspec.json.decode(body, type=type_, strict=True)
