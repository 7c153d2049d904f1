"""The Python SDK of the Loki API.

    from loki_client import LokiClient

    with LokiClient() as client:              # LOKI_API_URL / LOKI_API_TOKEN, or arguments
        started = client.start_session("prd.md", provider="claude")
        for event in client.events(session_id=started.session_id):
            print(event.type, event.data)

`AsyncLokiClient` has the same methods, awaited. Results are the msgspec
Structs shared with the server (`loki_client.models`); errors are `LokiError`s.
"""

from ._async_client import AsyncLokiClient
from ._client import LokiClient
from ._exceptions import (
    BadRequest,
    Conflict,
    EventsMissed,
    Forbidden,
    LokiApiError,
    LokiConnectionError,
    LokiDecodeError,
    LokiError,
    NotFound,
    PayloadTooLarge,
    ProviderNotAvailable,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    SessionAlreadyRunning,
    SessionNotFound,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from ._stream import AsyncEventStream, EventStream
from .models import (
    Agent,
    AgentCounts,
    AgentEventData,
    DeleteResponse,
    Event,
    EventStats,
    Health,
    HeartbeatEventData,
    InputEventData,
    LogEventData,
    MetricsEventData,
    Pagination,
    PhaseEventData,
    ProviderAvailability,
    Session,
    SessionActionResponse,
    SessionDetail,
    SessionEventData,
    SessionList,
    SessionTaskList,
    Status,
    StreamGap,
    Task,
    TaskCounts,
    TaskEventData,
    TaskList,
    TaskQueue,
)

__all__ = [
    # clients and streams
    "LokiClient",
    "AsyncLokiClient",
    "EventStream",
    "AsyncEventStream",
    # errors
    "LokiError",
    "LokiConnectionError",
    "LokiDecodeError",
    "EventsMissed",
    "LokiApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "SessionNotFound",
    "Conflict",
    "SessionAlreadyRunning",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "ValidationError",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "ProviderNotAvailable",
    # results
    "Health",
    "ProviderAvailability",
    "Status",
    "Session",
    "SessionList",
    "SessionDetail",
    "SessionActionResponse",
    "DeleteResponse",
    "TaskCounts",
    "AgentCounts",
    "Agent",
    "Task",
    "TaskList",
    "SessionTaskList",
    "TaskQueue",
    "Pagination",
    "EventStats",
    # events
    "Event",
    "StreamGap",
    "SessionEventData",
    "PhaseEventData",
    "TaskEventData",
    "AgentEventData",
    "LogEventData",
    "MetricsEventData",
    "InputEventData",
    "HeartbeatEventData",
]
