"""A whole simulated session, seen on a real SSE client: every fact exactly once."""

from collections import Counter
from pathlib import Path

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
