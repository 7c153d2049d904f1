"""The client CLI (`loki sessions|start|stop|pause|resume|status|events`) against a live server."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from loki_api.cli import main as loki_main
from loki_api.models import (
    Event,
    HeartbeatEventData,
    LogEventData,
    PhaseEventData,
    SessionEventData,
    TaskEventData,
)
from loki_client._cli import format_event, main

from .support import ServerProcess, wait_for


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--url", server.url)
    assert code == 0, err
    assert out.startswith("loki-api ")
    assert "sessions:  0 total" in out


def test_url_from_environment_and_flag_before_command(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOKI_API_URL", server.url)
    assert run(capsys, "status")[0] == 0
    monkeypatch.setenv("LOKI_API_URL", "http://127.0.0.1:1")
    assert run(capsys, "--url", server.url, "status")[0] == 0


def test_dispatch_from_the_loki_command(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert loki_main(["status", "--url", server.url]) == 0
    assert "loki-api" in capsys.readouterr().out


def test_unreachable_server_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "sessions", "--url", "http://127.0.0.1:1")
    assert code == 1
    assert "cannot talk to the Loki API" in err and out == ""


def test_api_error_is_exit_1_with_code(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "events", "--url", server.url, "--types", "bogus")
    assert code == 1
    assert "[BAD_REQUEST]" in err and "bogus" in err


def test_bad_usage_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["stop"])  # missing ID
    assert caught.value.code == 2
    assert run(capsys, "events", "--history", "-1")[0] == 2


def test_session_commands_and_events(
    server: ServerProcess, loki_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if httpx.get(f"{server.url}/api/sessions").status_code == 404:
        pytest.skip("session routes are not in the server yet (GET /api/sessions is 404)")
    url = ("--url", server.url)
    assert run(capsys, "sessions", *url)[1] == "no sessions\n"
    prd = loki_dir / "prd.md"
    prd.write_text("# Demo\n\n## Work\n- Only task\n")
    code, out, err = run(capsys, "start", str(prd), "--provider", "codex", *url)
    assert code == 0, err
    session_id = out.split()[0]
    assert session_id.startswith("session_")

    def finished() -> bool:
        return (
            httpx.get(f"{server.url}/api/sessions/{session_id}").json()["session"]["status"]
            == "completed"
        )

    anyio.run(wait_for, finished, 30.0)
    code, out, _ = run(capsys, "sessions", "--status", "completed", *url)
    assert code == 0
    header, row, footer = out.splitlines()
    assert header.split() == ["ID", "STATUS", "PROVIDER", "PHASE", "TASKS", "STARTED"]
    assert row.split()[:3] == [session_id, "completed", "codex"]
    assert footer == "1 session, 0 running"

    code, out, _ = run(
        capsys,
        "events",
        "--session",
        session_id,
        "--history",
        "100",
        "--types",
        "session:started,session:completed",
        "--count",
        "2",
        *url,
    )
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["session:started", "session:completed"]
    assert all(session_id in line and "\033[" not in line for line in lines)

    code, _, err = run(capsys, "pause", session_id, *url)
    assert code == 1 and "[CONFLICT]" in err
    code, _, err = run(capsys, "stop", "no-such-session", *url)
    assert code == 1 and "[SESSION_NOT_FOUND]" in err


def event(type: str, data: object, session_id: str | None = "s1") -> Event:
    return Event(
        id="evt_1_1",
        type=type,
        timestamp="2026-11-23T05:00:00.123Z",
        session_id=session_id,
        data=data,
    )


def test_format_event_one_line_per_event() -> None:
    line = format_event(
        event(
            "task:completed",
            TaskEventData(task_id="t1", title="Build it", status="completed", progress=1.0),
        )
    )
    assert line == "05:00:00.123  task:completed    s1  Build it [completed] 100%"
    line = format_event(
        event(
            "log:warn",
            LogEventData(level="warn", message="disk\nnearly full", source="monitor"),
            None,
        )
    )
    assert line == "05:00:00.123  log:warn          -  [monitor] disk nearly full"
    assert format_event(
        event("phase:started", PhaseEventData(phase="testing", previous_phase="development"))
    ).endswith("development -> testing")
    assert format_event(
        event("session:failed", SessionEventData(status="failed", exit_code=3))
    ).endswith("failed (exit 3)")
    assert "2 agents" in format_event(
        event("heartbeat", HeartbeatEventData(uptime=12.0, active_agents=2, queued_tasks=0))
    )
    assert format_event(event("custom:thing", {"a": 1})).endswith('{"a":1}')


def test_colour_only_when_asked() -> None:
    failed = event("session:failed", SessionEventData(status="failed"))
    assert "\033[" not in format_event(failed)
    coloured = format_event(failed, colour=True)
    assert coloured.startswith("\033[31m") and coloured.endswith("\033[0m")
