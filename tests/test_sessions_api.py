"""Sessions end to end: a real server, real child processes, the live event stream."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loki_api.sessions.process import group_alive, process_alive

from .support import ServerProcess, sse_stream, wait_for

pytestmark = pytest.mark.anyio

PRD = "# Todo app\n\n## Backend\n- Build the API\n- Add storage\n\n## UI\n- List view\n"

# A CLI that ignores SIGTERM and leaves a grandchild (also ignoring it) in its group.
STUBBORN_CLI = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(f"grandchild {child.pid}", flush=True)
while True:
    time.sleep(0.05)
"""


def is_type(kind: str) -> Any:
    return lambda msg: msg.event == kind


def api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10)


def session_status(client: httpx.Client, session_id: str) -> str:
    return client.get(f"/api/sessions/{session_id}").json()["session"]["status"]


async def test_a_whole_simulated_session_streams_live(loki_dir: Path) -> None:
    (loki_dir / "prd.md").write_text(PRD)
    with ServerProcess(loki_dir, "--simulate") as server, api(server) as client:
        async with sse_stream(server.url) as stream:
            reply = client.post(
                "/api/sessions", json={"prdPath": "./prd.md", "options": {"verbose": True}}
            )
            assert reply.status_code == 201, reply.text
            body = reply.json()
            session_id = body["sessionId"]
            assert body["status"] == "running"
            seen = await stream.until(
                lambda m: m.event in ("session:completed", "session:failed"), timeout=30
            )
        kinds = [m.event for m in seen]
        assert kinds[-1] == "session:completed", server.output()
        assert kinds.index("session:started") < kinds.index("phase:started")
        assert {
            "task:created",
            "task:started",
            "task:completed",
            "agent:spawned",
            "agent:completed",
            "log:info",
            "log:debug",
            "log:warn",
            "log:error",
            "input:requested",
            "metrics:update",
        } <= set(kinds)
        mine = [m.json() for m in seen if m.json().get("sessionId") == session_id]
        assert len(mine) == len(seen)
        errors = [m.json()["data"] for m in seen if m.event == "log:error"]
        assert any(e.get("source") == "stderr" for e in errors)
        # The last line the simulator prints is not lost.
        infos = [m.json()["data"]["message"] for m in seen if m.event == "log:info"]
        assert "Session complete: all phases finished" in infos

        detail = client.get(f"/api/sessions/{session_id}").json()
        assert detail["session"]["status"] == "completed"
        assert detail["session"]["exitCode"] == 0
        assert detail["tasks"] == {
            "total": 3,
            "pending": 0,
            "running": 0,
            "completed": 3,
            "failed": 0,
        }
        assert detail["agents"]["spawned"] >= 3 and detail["agents"]["active"] == 0
        tasks = client.get(f"/api/sessions/{session_id}/tasks", params={"limit": 2}).json()
        assert tasks["pagination"] == {"total": 3, "limit": 2, "offset": 0, "hasMore": True}
        assert tasks["summary"]["completed"] == 3
        first = tasks["tasks"][0]
        one = client.get(f"/api/sessions/{session_id}/tasks/{first['id']}")
        assert one.status_code == 200 and one.json()["task"]["title"] == first["title"]
        assert client.get(f"/api/sessions/{session_id}/tasks/nope").status_code == 404
        every = client.get("/api/tasks").json()
        assert every["pagination"]["total"] == 3
        listing = client.get("/api/sessions", params={"status": "completed"}).json()
        assert [s["id"] for s in listing["sessions"]] == [session_id]
        assert listing["total"] == 1 and listing["running"] == 0
        output = (loki_dir / ".loki" / "output" / session_id / "stdout.txt").read_text()
        assert "Starting planning phase" in output


async def test_pause_input_resume_stop_and_delete(loki_dir: Path) -> None:
    env = {"LOKI_SIM_DELAY": "0.3"}
    with ServerProcess(loki_dir, "--simulate", env=env) as server, api(server) as client:
        async with sse_stream(server.url) as stream:
            session_id = client.post("/api/sessions", json={}).json()["sessionId"]
            await stream.until(is_type("session:started"))
            assert client.post(f"/api/sessions/{session_id}/resume").status_code == 409
            paused = client.post(f"/api/sessions/{session_id}/pause")
            assert paused.status_code == 200 and paused.json()["status"] == "paused"
            await stream.until(is_type("session:paused"))
            assert (loki_dir / ".loki" / "sessions" / session_id / "PAUSE").exists()
            assert client.post(f"/api/sessions/{session_id}/pause").status_code == 409
            assert session_status(client, session_id) == "paused"

            reply = client.post(
                f"/api/sessions/{session_id}/input",
                json={"input": "use sqlite please", "context": "db"},
            )
            assert reply.status_code == 200, reply.text
            await stream.until(
                lambda m: (
                    m.event == "log:info"
                    and "Input injected: use sqlite" in m.json()["data"]["message"]
                )
            )
            await stream.until(
                lambda m: (
                    m.event == "log:info"
                    and "Received human input: use sqlite please" in m.json()["data"]["message"]
                )
            )
            assert (
                client.post(f"/api/sessions/{session_id}/input", json={"input": "  "}).status_code
                == 422
            )
            assert (
                client.post(
                    f"/api/sessions/{session_id}/input", json={"input": "x" * (64 * 1024 + 1)}
                ).status_code
                == 422
            )
            assert client.post(f"/api/sessions/{session_id}/input", json={}).status_code == 422

            assert client.post(f"/api/sessions/{session_id}/resume").status_code == 200
            await stream.until(is_type("session:resumed"))
            assert client.delete(f"/api/sessions/{session_id}").status_code == 409

            pid = client.get(f"/api/sessions/{session_id}").json()["session"]["pid"]
            began = time.perf_counter()
            stopped = client.post(f"/api/sessions/{session_id}/stop")
            answered = time.perf_counter() - began
            assert stopped.status_code == 200 and stopped.json()["status"] == "stopping"
            seen = await stream.until(is_type("session:stopped"))
            assert [m.event for m in seen].count("session:stopped") == 1
            await wait_for(lambda: not group_alive(pid), timeout=5)
            gone = time.perf_counter() - began
            print(
                f"\nstop latency: HTTP answer {answered * 1000:.1f} ms, "
                f"process group gone {gone * 1000:.1f} ms"
            )
            assert answered < 1.0
            await wait_for(lambda: session_status(client, session_id) == "stopped")
            assert client.post(f"/api/sessions/{session_id}/stop").status_code == 409
            assert (
                client.post(f"/api/sessions/{session_id}/input", json={"input": "late"}).status_code
                == 409
            )
            # No second session:stopped once the process is really gone.
            after = client.get(
                "/api/events/history", params={"sessionId": session_id, "types": "session:stopped"}
            )
            assert after.json()["count"] == 1, [e["data"] for e in after.json()["events"]]

        deleted = client.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert not (loki_dir / ".loki" / "sessions" / session_id).exists()
        assert not (loki_dir / ".loki" / "output" / session_id).exists()
        assert client.get(f"/api/sessions/{session_id}").status_code == 404
        assert client.delete(f"/api/sessions/{session_id}").status_code == 404


async def test_options_timeout_stops_the_session(loki_dir: Path) -> None:
    with (
        ServerProcess(loki_dir, "--simulate", env={"LOKI_SIM_DELAY": "0.5"}) as server,
        api(server) as client,
    ):
        assert client.post("/api/sessions", json={"options": {"timeout": -1}}).status_code == 422
        async with sse_stream(server.url) as stream:
            reply = client.post("/api/sessions", json={"options": {"timeout": 0.3, "dryRun": True}})
            session_id = reply.json()["sessionId"]
            seen = await stream.until(is_type("session:stopped"))
            assert any(
                m.event == "log:warn" and "timeout" in m.json()["data"]["message"] for m in seen
            )
        await wait_for(lambda: session_status(client, session_id) == "stopped")


async def test_nonzero_exit_is_session_failed_with_exit_code(loki_dir: Path) -> None:
    with (
        ServerProcess(loki_dir, "--simulate", env={"LOKI_SIM_EXIT": "3"}) as server,
        api(server) as client,
    ):
        async with sse_stream(server.url) as stream:
            session_id = client.post("/api/sessions", json={}).json()["sessionId"]
            seen = await stream.until(is_type("session:failed"), timeout=30)
        assert seen[-1].json()["data"]["exitCode"] == 3
        assert seen[-1].json()["sessionId"] == session_id
        record = client.get(f"/api/sessions/{session_id}").json()["session"]
        assert record["status"] == "failed" and record["exitCode"] == 3


async def test_one_session_at_a_time_by_default(loki_dir: Path) -> None:
    with (
        ServerProcess(loki_dir, "--simulate", env={"LOKI_SIM_DELAY": "0.5"}) as server,
        api(server) as client,
    ):
        first = client.post("/api/sessions", json={"provider": "codex"}).json()["sessionId"]
        second = client.post("/api/sessions", json={})
        assert second.status_code == 409
        assert second.json()["code"] == "SESSION_ALREADY_RUNNING"
        assert second.json()["details"]["sessionId"] == first
        assert client.get(f"/api/sessions/{first}").json()["session"]["provider"] == "codex"
        assert client.post(f"/api/sessions/{first}/stop").status_code == 200


async def test_stop_kills_a_child_that_ignores_sigterm(loki_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_CLI)
    cli = f"{sys.executable} {script}"
    with (
        ServerProcess(loki_dir, "--cli", cli, "--stop-grace", "0.5") as server,
        api(server) as client,
    ):
        async with sse_stream(server.url) as stream:
            session_id = client.post("/api/sessions", json={}).json()["sessionId"]
            line = await stream.until(
                lambda m: m.event == "log:info" and "grandchild" in m.json()["data"]["message"]
            )
            grandchild = int(line[-1].json()["data"]["message"].split()[1])
            pid = client.get(f"/api/sessions/{session_id}").json()["session"]["pid"]
            assert os.getpgid(grandchild) == pid
            reply = client.post(f"/api/sessions/{session_id}/stop")
            assert reply.status_code == 200 and reply.json()["status"] == "stopping"
            # Answered at once: the child ignores SIGTERM, so its group is still there.
            assert group_alive(pid)
            await stream.until(is_type("session:stopped"))
            await wait_for(lambda: not group_alive(pid), timeout=5)
            assert not process_alive(pid) and not process_alive(grandchild)
            await wait_for(lambda: session_status(client, session_id) == "stopped")
            record = client.get(f"/api/sessions/{session_id}").json()["session"]
            assert record["exitCode"] == 128 + signal.SIGKILL


async def test_a_restarted_server_readopts_and_can_stop_the_session(loki_dir: Path) -> None:
    env = {"LOKI_SIM_DELAY": "0.5"}
    first = ServerProcess(loki_dir, "--simulate", env=env).start()
    try:
        with api(first) as client:
            session_id = client.post("/api/sessions", json={}).json()["sessionId"]
            pid = client.get(f"/api/sessions/{session_id}").json()["session"]["pid"]
    finally:
        first.stop(signal.SIGKILL)
    assert process_alive(pid), "the session must outlive the server"
    with ServerProcess(loki_dir, "--simulate", env=env) as second, api(second) as client:
        record = client.get(f"/api/sessions/{session_id}").json()["session"]
        assert record["status"] == "running" and record["pid"] == pid
        async with sse_stream(second.url, params={"sessionId": session_id}) as stream:
            # Its output keeps streaming after the restart.
            await stream.until(
                lambda m: m.event.startswith(("log:", "task:", "agent:")), timeout=15
            )
            assert client.post(f"/api/sessions/{session_id}/stop").status_code == 200
            await stream.until(is_type("session:stopped"))
        await wait_for(lambda: not group_alive(pid), timeout=5)
        await wait_for(lambda: session_status(client, session_id) == "stopped")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_no_output_line_is_lost_across_a_restart(loki_dir: Path, how: int) -> None:
    env = {"LOKI_SIM_DELAY": "0.1"}
    stdout = loki_dir / ".loki" / "output"
    first = ServerProcess(loki_dir, "--simulate", env=env).start()
    with api(first) as client:
        session_id = client.post("/api/sessions", json={}).json()["sessionId"]
        stdout = stdout / session_id / "stdout.txt"
        await wait_for(
            lambda: (
                client.get(
                    "/api/events/history", params={"sessionId": session_id, "types": "log:info"}
                ).json()["count"]
                > 0
            )
        )
    first.stop(how)
    size = stdout.stat().st_size
    await wait_for(lambda: stdout.stat().st_size > size)  # printing while no server runs
    with ServerProcess(loki_dir, "--simulate", env=env) as second, api(second) as client:
        assert session_status(client, session_id) in ("running", "completed")
        await wait_for(lambda: session_status(client, session_id) == "completed", timeout=30)
        history = client.get(
            "/api/events/history",
            params={"sessionId": session_id, "types": "log:info,log:warn,log:debug", "limit": 1000},
        )
        messages = [e["data"]["message"] for e in history.json()["events"]]
    level_lines = [
        line.split("] ", 2)[-1] for line in stdout.read_text().splitlines() if line.startswith("[")
    ]
    assert level_lines and all(line in messages for line in level_lines), (level_lines, messages)
    if how == signal.SIGTERM:  # a graceful stop hands over its exact read position
        assert len(messages) == len(set(messages)), messages


async def test_a_dead_session_is_marked_failed_on_restart(loki_dir: Path) -> None:
    env = {"LOKI_SIM_DELAY": "0.5"}
    first = ServerProcess(loki_dir, "--simulate", env=env).start()
    try:
        with api(first) as client:
            session_id = client.post("/api/sessions", json={}).json()["sessionId"]
            pid = client.get(f"/api/sessions/{session_id}").json()["session"]["pid"]
    finally:
        first.stop(signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    await wait_for(lambda: not group_alive(pid), timeout=5)
    with ServerProcess(loki_dir, "--simulate", env=env) as second, api(second) as client:
        assert session_status(client, session_id) == "failed"


async def test_a_session_that_ended_unwatched_gets_its_real_outcome(loki_dir: Path) -> None:
    env = {"LOKI_SIM_DELAY": "0.05", "LOKI_SIM_EXIT": "4"}
    first = ServerProcess(loki_dir, "--simulate", env=env).start()
    try:
        with api(first) as client:
            session_id = client.post("/api/sessions", json={}).json()["sessionId"]
            pid = client.get(f"/api/sessions/{session_id}").json()["session"]["pid"]
    finally:
        first.stop(signal.SIGKILL)
    await wait_for(lambda: not group_alive(pid), timeout=30)
    with ServerProcess(loki_dir, "--simulate", env=env) as second, api(second) as client:
        record = client.get(f"/api/sessions/{session_id}").json()["session"]
        assert record["status"] == "failed" and record["exitCode"] == 4


async def test_graceful_shutdown_leaves_sessions_running_unless_asked(loki_dir: Path) -> None:
    env = {"LOKI_SIM_DELAY": "0.5"}
    server = ServerProcess(loki_dir, "--simulate", env=env).start()
    with api(server) as client:
        kept = client.post("/api/sessions", json={}).json()["sessionId"]
        kept_pid = client.get(f"/api/sessions/{kept}").json()["session"]["pid"]
    assert server.stop(signal.SIGTERM) == 0
    assert process_alive(kept_pid)
    os.killpg(kept_pid, signal.SIGKILL)
    await wait_for(lambda: not group_alive(kept_pid), timeout=5)

    server = ServerProcess(loki_dir, "--simulate", "--stop-sessions-on-exit", env=env).start()
    with api(server) as client:
        ended = client.post("/api/sessions", json={}).json()["sessionId"]
        ended_pid = client.get(f"/api/sessions/{ended}").json()["session"]["pid"]
    assert server.stop(signal.SIGTERM) == 0
    assert not group_alive(ended_pid)
    record = (loki_dir / ".loki" / "sessions" / ended / "session.json").read_text()
    assert '"status":"stopped"' in record.replace(" ", "")


async def test_validation_and_not_found(server: ServerProcess, loki_dir: Path) -> None:
    with api(server) as client:

        def check(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
            assert reply.status_code == status, reply.text
            body: dict[str, Any] = reply.json()
            assert body["code"] == code
            return body

        check(client.post("/api/sessions", json={"bogus": 1}), 422, "VALIDATION_ERROR")
        body = check(
            client.post("/api/sessions", json={"provider": "gpt"}), 422, "VALIDATION_ERROR"
        )
        assert body["error"].startswith("Invalid provider: gpt")
        body = check(
            client.post("/api/sessions", json={"prdPath": "missing.md"}), 422, "VALIDATION_ERROR"
        )
        assert "missing.md" in body["error"]
        check(
            client.post("/api/sessions", json={"options": {"nope": True}}), 422, "VALIDATION_ERROR"
        )
        check(
            client.post("/api/sessions", content=b"x", headers={"content-type": "text/plain"}),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        )
        check(client.get("/api/sessions", params={"status": "weird"}), 422, "VALIDATION_ERROR")
        check(client.get("/api/sessions", params={"limit": "-1"}), 400, "BAD_REQUEST")
        check(client.get("/api/sessions", params={"offset": "x"}), 400, "BAD_REQUEST")
        check(client.get("/api/tasks", params={"status": "weird"}), 422, "VALIDATION_ERROR")
        check(client.get("/api/tasks", params={"limit": "1.5"}), 400, "BAD_REQUEST")
        for bad in ("nope", ".hidden", "a" * 200, "%2e%2e", "a%2Fb"):
            for method, path in (
                ("GET", ""),
                ("POST", "/stop"),
                ("POST", "/pause"),
                ("POST", "/resume"),
                ("DELETE", ""),
                ("GET", "/tasks"),
            ):
                reply = client.request(method, f"/api/sessions/{bad}{path}")
                assert reply.status_code == 404, (bad, path, reply.text)
        check(
            client.post("/api/sessions/nope/input", json={"input": "x"}), 404, "SESSION_NOT_FOUND"
        )
        assert client.get("/api/sessions", params={"limit": "5000"}).status_code == 200
        empty = client.get("/api/sessions").json()
        assert empty == {"sessions": [], "total": 0, "running": 0}
        assert client.get("/api/tasks/active").json() == {"tasks": [], "count": 0}
        assert client.get("/api/tasks/queue").json() == {"tasks": [], "count": 0}


async def test_without_a_cli_start_is_503(loki_dir: Path, tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path / "empty-bin"), "LOKI_CLI": ""}
    with ServerProcess(loki_dir, env=env) as server, api(server) as client:
        reply = client.post("/api/sessions", json={})
        assert reply.status_code == 503
        body = reply.json()
        assert body["code"] == "PROVIDER_NOT_AVAILABLE"
        assert "--simulate" in body["error"] and "LOKI_CLI" in body["error"]
        assert client.get("/health").json()["status"] == "degraded"


@pytest.mark.parametrize(
    ("cli", "reason"),
    [("missing", "does not exist"), ("plain", "not executable"), ("'unclosed", "not a valid")],
)
async def test_an_unrunnable_cli_is_refused_before_any_record_is_written(
    loki_dir: Path, tmp_path: Path, cli: str, reason: str
) -> None:
    script = tmp_path / "plain"
    script.write_text("#!/bin/sh\necho '[INFO] ran'\n")  # not executable (yet)
    cli = str(tmp_path / cli) if cli != "'unclosed" else cli
    sessions = loki_dir / ".loki" / "sessions"
    with ServerProcess(loki_dir, "--cli", cli) as server, api(server) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded" and reason in health["problems"]["cli"]
        reply = client.post("/api/sessions", json={})
        assert reply.status_code == 503, reply.text
        assert reply.json()["code"] == "PROVIDER_NOT_AVAILABLE"
        assert reason in reply.json()["error"]
        assert not sessions.exists() or not any(sessions.iterdir())
        if cli == str(script):  # fixed while the server runs: no restart needed
            script.chmod(0o755)
            assert client.get("/health").json()["status"] == "healthy"
            started = client.post("/api/sessions", json={})
            assert started.status_code == 201, started.text
            await wait_for(
                lambda: session_status(client, started.json()["sessionId"]) == "completed"
            )


def test_a_running_session_of_someone_else_cannot_be_deleted(loki_dir: Path) -> None:
    directory = loki_dir / ".loki" / "sessions" / "ext9"
    directory.mkdir(parents=True)
    (directory / "session.json").write_text('{"id": "ext9", "status": "running"}')
    with ServerProcess(loki_dir) as server, httpx.Client(base_url=server.url) as client:
        refused = client.delete("/api/sessions/ext9")
        assert refused.status_code == 409 and refused.json()["code"] == "CONFLICT"
        assert directory.is_dir()
        assert client.post("/api/sessions/ext9/stop").status_code == 200  # marks it stopped
        assert client.delete("/api/sessions/ext9").status_code == 200
        assert not directory.exists()
