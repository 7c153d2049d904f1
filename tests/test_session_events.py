"""A whole simulated session, seen on a real SSE client: every fact exactly once."""

from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest

from .support import ServerProcess, sse_stream

PRD = Path(__file__).parent.parent / "examples" / "prd.md"


@pytest.mark.anyio
async def test_each_fact_is_published_once(server: ServerProcess, loki_dir: Path) -> None:
    (loki_dir / "prd.md").write_text(PRD.read_text())
    async with sse_stream(server.url) as reader:
        async with httpx.AsyncClient(base_url=server.url) as client:
            started = await client.post("/api/sessions", json={"prdPath": "prd.md"})
        assert started.status_code == 201, started.text
        session_id = started.json()["sessionId"]
        seen = await reader.until(
            lambda m: m.event in ("session:completed", "session:failed"), timeout=60
        )
    mine = [m.json() for m in seen if m.json()["sessionId"] == session_id]
    assert mine[0]["type"] == "session:started" and mine[-1]["type"] == "session:completed"

    def key(event: dict) -> tuple:
        data = event["data"]
        return (event["type"], data.get("taskId") or data.get("agentId") or data.get("phase"))

    facts = Counter(
        key(e)
        for e in mine
        if e["type"].split(":")[0] in ("session", "phase", "task", "agent")
        and e["type"] not in ("task:progress", "agent:output")
    )
    repeated = {k: n for k, n in facts.items() if n > 1}
    assert not repeated, repeated
    tasks = {e["data"]["taskId"] for e in mine if e["type"] == "task:completed"}
    assert len(tasks) >= 6  # every PRD bullet became a task and finished
    spawned = {e["data"]["agentId"] for e in mine if e["type"] == "agent:spawned"}
    ended = {e["data"]["agentId"] for e in mine if e["type"] in ("agent:completed", "agent:failed")}
    assert spawned == ended  # no phantom agent left running
    phases = [e["data"]["phase"] for e in mine if e["type"] == "phase:started"]
    assert len(phases) == len(set(phases)) >= 3


# A CLI that writes its tasks and exits at once: its last state-file write lands just
# before its end.
LAST_WRITE_CLI = """
import json, os
from pathlib import Path
session = Path(os.environ["LOKI_DIR"], ".loki", "sessions", os.environ["LOKI_SESSION_ID"])
tasks = {"tasks": [{"id": "t1", "title": "one", "status": "done"},
                   {"id": "t2", "title": "two", "status": "done"}]}
(session / ".tasks.json.tmp").write_text(json.dumps(tasks))
os.replace(session / ".tasks.json.tmp", session / "tasks.json")
"""


@pytest.mark.anyio
async def test_a_sessions_last_file_writes_are_published_before_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File events can come late (watchdog holds half a rename for up to 0.5 s); the
    end of a session is said only after its files were read one last time."""
    import sys

    from loki_api.settings import Settings

    from .support import serve_in_process

    script = tmp_path / "cli.py"
    script.write_text(LAST_WRITE_CLI)
    loki_dir = tmp_path / "project"
    loki_dir.mkdir()
    settings = Settings(loki_dir=loki_dir, port=0, cli=f"{sys.executable} {script}")
    async with serve_in_process(settings) as srv:
        # The late file event, made certain: no file events at all from now on.
        watcher = srv.runtime.watcher
        monkeypatch.setattr(watcher, "problem", lambda: None)  # not restarted either
        await anyio.to_thread.run_sync(watcher._stop_observer)
        async with sse_stream(srv.url) as reader:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                started = await client.post("/api/sessions", json={})
                assert started.status_code == 201, started.text
                session_id = started.json()["sessionId"]
                seen = await reader.until(lambda m: m.event == "session:completed")
                detail = (await client.get(f"/api/sessions/{session_id}")).json()
    kinds = [(m.event, m.json()["data"].get("taskId")) for m in seen]
    assert ("task:completed", "t1") in kinds and ("task:completed", "t2") in kinds, kinds
    assert detail["tasks"]["completed"] == 2, detail


@pytest.mark.anyio
async def test_a_finished_sessions_output_position_is_let_go(tmp_path: Path) -> None:
    """Positions are for resuming a running session; an ended one's would only pile up."""
    from loki_api.settings import Settings

    from .support import serve_in_process, wait_for

    loki_dir = tmp_path / "project"
    loki_dir.mkdir()
    async with serve_in_process(Settings(loki_dir=loki_dir, port=0, simulate=True)) as srv:
        positions = srv.runtime.bus._log.output_positions
        async with sse_stream(srv.url) as reader:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                started = await client.post("/api/sessions", json={})
                session_id = started.json()["sessionId"]
                await reader.until(lambda m: m.event == "log:info")
                await wait_for(lambda: session_id in positions)  # while it runs
                await reader.until(lambda m: m.event == "session:completed", timeout=30)
        assert session_id not in positions
