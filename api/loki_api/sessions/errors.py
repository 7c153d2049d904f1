"""What the session manager refuses, in its own terms; no HTTP below the edge.

    SessionError(message)
     ├── UnknownSession         no session has this id
     ├── WrongState             its status forbids the action (not running, still running, ...)
     ├── SessionLimitReached    `--max-sessions` sessions run already (`running`: one of them)
     ├── CliUnavailable         no runnable session CLI (`message` says why)
     ├── ManagerNotRunning      the manager is not up (start-up or shutdown)
     └── LaunchFailed           the CLI could not be spawned

`loki_api.errors` maps each class to its HTTP answer, in one table.
"""

from __future__ import annotations


class SessionError(Exception):
    """A refusal of the session manager; `message` is meant for the API's user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownSession(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session not found: {session_id}")
        self.session_id = session_id


class WrongState(SessionError):
    pass


class SessionLimitReached(SessionError):
    def __init__(self, running: str) -> None:
        super().__init__(f"A session is already running: {running}")
        self.running = running


class CliUnavailable(SessionError):
    pass


class ManagerNotRunning(SessionError):
    def __init__(self) -> None:
        super().__init__("The session manager is not running")


class LaunchFailed(SessionError):
    pass
