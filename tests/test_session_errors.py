"""The session manager speaks in domain errors; `errors.py` alone turns them into HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loki_api.sessions as sessions_package
from loki_api.errors import SESSION_ERROR_ANSWERS, session_error_answer
from loki_api.sessions.errors import (
    CliUnavailable,
    LaunchFailed,
    ManagerNotRunning,
    SessionError,
    SessionLimitReached,
    UnknownSession,
    WrongState,
)

SESSIONS_DIR = Path(sessions_package.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


@pytest.mark.parametrize("path", sorted(SESSIONS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_sessions_package_knows_nothing_of_http(path: Path) -> None:
    imports = _imports(path)
    assert not {name for name in imports if name.split(".")[0] in ("starlette", "uvicorn")}
    assert "..errors" not in imports and "loki_api.errors" not in imports


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UnknownSession("s1"), 404, "SESSION_NOT_FOUND"),
        (WrongState("Session s1 is not running (status: stopped)"), 409, "CONFLICT"),
        (SessionLimitReached("s1"), 409, "SESSION_ALREADY_RUNNING"),
        (CliUnavailable("no loki on PATH"), 503, "PROVIDER_NOT_AVAILABLE"),
        (ManagerNotRunning(), 503, "SERVICE_UNAVAILABLE"),
        (LaunchFailed("Cannot start the Loki CLI (x): No such file"), 500, "CLI_ERROR"),
    ],
)
def test_each_domain_error_has_one_answer(error: SessionError, status: int, code: str) -> None:
    answer = session_error_answer(error)
    assert (answer.status, answer.code, answer.message) == (status, code, error.message)


def test_limit_reached_names_the_running_session() -> None:
    answer = session_error_answer(SessionLimitReached("session_1_ab"))
    assert answer.details == {"sessionId": "session_1_ab"}
    assert "session_1_ab" in answer.message


def test_every_domain_error_is_mapped() -> None:
    assert set(SessionError.__subclasses__()) == set(SESSION_ERROR_ANSWERS)
