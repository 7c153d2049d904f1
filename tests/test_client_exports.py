"""`loki_client`'s public surface is exactly its `__all__`, and it is pinned here."""

from __future__ import annotations

import loki_client

EXPECTED = {
    "LokiClient",
    "AsyncLokiClient",
    "EventStream",
    "AsyncEventStream",
    "LokiError",
    "LokiConnectionError",
    "LokiDecodeError",
    "EventsMissed",
    "StreamGap",
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
    "Event",
    "SessionEventData",
    "PhaseEventData",
    "TaskEventData",
    "AgentEventData",
    "LogEventData",
    "MetricsEventData",
    "InputEventData",
    "HeartbeatEventData",
}


def test_all_is_pinned() -> None:
    assert set(loki_client.__all__) == EXPECTED
    assert len(loki_client.__all__) == len(EXPECTED), "duplicate names in __all__"


def test_every_export_exists() -> None:
    for name in loki_client.__all__:
        assert getattr(loki_client, name) is not None, name


# The one public module: the wire types, which the server imports too.
PUBLIC_MODULES = {"models"}


def test_public_names_are_exported_and_modules_are_private() -> None:
    public = {name for name in dir(loki_client) if not name.startswith("_")}
    assert public == EXPECTED | PUBLIC_MODULES


def test_types_are_the_servers_own() -> None:
    import loki_api.models as models

    assert loki_client.Event is models.Event
    assert loki_client.Session is models.Session


def test_error_tree() -> None:
    c = loki_client
    assert issubclass(c.LokiApiError, c.LokiError)
    assert issubclass(c.LokiConnectionError, c.LokiError)
    assert issubclass(c.LokiDecodeError, c.LokiError)
    assert issubclass(c.SessionNotFound, c.NotFound)
    assert issubclass(c.SessionAlreadyRunning, c.Conflict)
    assert issubclass(c.ProviderNotAvailable, c.ServiceUnavailable)
    assert issubclass(c.ServiceUnavailable, c.ServerError)
    for name in (
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "Conflict",
        "PayloadTooLarge",
        "UnsupportedMediaType",
        "ValidationError",
        "RateLimited",
        "ServerError",
    ):
        assert issubclass(getattr(c, name), c.LokiApiError), name
