"""Cluster mode, sessions across nodes, with real processes: registry, control from any node,
placement, node loss and re-adoption."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from .support import ServerProcess, sse_stream, wait_for
from .test_cluster import shared_nats, start_nodes, start_session, stop_all

pytest.importorskip("nats")

pytestmark = pytest.mark.anyio
__all__ = ["shared_nats"]  # the module-scoped NATS server fixture, shared with test_cluster


def sessions_on(node: ServerProcess) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{node.url}/api/sessions", timeout=5).json()
    return answer


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    return True


async def test_every_node_answers_for_every_session_and_controls_it(
    shared_nats: Any, tmp_path: Path
) -> None:
    # A slow session on node 0: under load it must still be running when the test stops it.
    nodes = start_nodes(tmp_path, shared_nats.url, 3, delays=("1",))
    try:
        session_id = start_session(nodes[0])

        def same_everywhere() -> bool:
            lists = [sessions_on(n) for n in nodes]
            return lists[0]["total"] == 1 and lists[0] == lists[1] == lists[2]

        await wait_for(same_everywhere, timeout=10, interval=0.05)
        record = sessions_on(nodes[2])["sessions"][0]
        assert (record["id"], record["node"], record["status"]) == (session_id, "n0", "running")
        # Detail and tasks come from the owner: the same content on every node.
        await wait_for(
            lambda: (
                len(httpx.get(f"{nodes[0].url}/api/sessions/{session_id}/tasks").json()["tasks"])
                == 3
            ),
            timeout=10,
            interval=0.05,
        )
        for path in (f"/api/sessions/{session_id}", f"/api/sessions/{session_id}/tasks"):
            answers = [httpx.get(f"{n.url}{path}", timeout=5) for n in nodes]
            assert {a.status_code for a in answers} == {200}
            bodies = [a.json() for a in answers]
            if "session" in bodies[0]:  # the record may move on between the calls
                for body in bodies:
                    body["session"].pop("updatedAt")
                    body.pop("tasks"), body.pop("agents")
                    body["session"].pop("currentPhase"), body["session"].pop("completedTasks")
            else:
                bodies = [[t["id"] for t in b["tasks"]] for b in bodies]  # type: ignore[misc]
            assert bodies[0] == bodies[1] == bodies[2]
        # Node 0 is full (--max-sessions 1): a start there runs on another node.
        placed = httpx.post(f"{nodes[0].url}/api/sessions", json={}, timeout=10)
        assert placed.status_code == 201, placed.text
        await wait_for(lambda: sessions_on(nodes[0])["total"] == 2, timeout=10, interval=0.05)
        by_id = {s["id"]: s for s in sessions_on(nodes[0])["sessions"]}
        assert by_id[placed.json()["sessionId"]]["node"] in ("n1", "n2")

        # Task lists over every session of the cluster, merged alike on every node.
        def task_ids(node: ServerProcess, path: str) -> list[tuple[str, str]]:
            answer = httpx.get(f"{node.url}{path}", timeout=5).json()
            return [(t["sessionId"], t["id"]) for t in answer["tasks"]]

        def everywhere_alike(path: str, count: int) -> bool:
            lists = [task_ids(n, path) for n in nodes]
            return len(lists[0]) == count and lists[0] == lists[1] == lists[2]

        await wait_for(lambda: everywhere_alike("/api/tasks", 6), timeout=10, interval=0.05)
        assert {s for s, _ in task_ids(nodes[1], "/api/tasks")} == set(by_id)
        paged = httpx.get(f"{nodes[1].url}/api/tasks", params={"limit": 2, "offset": 3}).json()
        assert [(t["sessionId"], t["id"]) for t in paged["tasks"]] == task_ids(
            nodes[2], "/api/tasks"
        )[3:5]
        assert paged["pagination"] == {"total": 6, "limit": 2, "offset": 3, "hasMore": True}
        # A bad query is the 400 one node gives; a page past what nodes answer, a clear 400.
        for params in ({"limit": "abc"}, {"offset": "²"}, {"offset": 999, "limit": 2}):
            refused = httpx.get(f"{nodes[1].url}/api/tasks", params=params, timeout=5)
            assert refused.status_code == 400, (params, refused.text)
        for path in ("/api/tasks/active", "/api/tasks/queue"):  # (the session moves on)
            await wait_for(
                lambda p=path: (
                    task_ids(nodes[0], p) == task_ids(nodes[1], p) == task_ids(nodes[2], p)
                ),
                timeout=10,
                interval=0.02,
            )
        # Stop from node 1: node 0 kills the session's process group.
        pid = record["pid"]
        stop = httpx.post(f"{nodes[1].url}/api/sessions/{session_id}/stop", timeout=5)
        assert stop.status_code == 200 and stop.json()["status"] == "stopping", stop.text
        await wait_for(lambda: gone(pid), timeout=15, interval=0.05)
        await wait_for(
            lambda: sessions_on(nodes[2])["sessions"][1]["status"] == "stopped", timeout=10
        )
        again = httpx.post(f"{nodes[2].url}/api/sessions/{session_id}/stop", timeout=5)
        assert again.status_code == 409  # the owner's answer, as it is
        missing = httpx.post(f"{nodes[2].url}/api/sessions/nope/stop", timeout=5)
        assert missing.status_code == 404 and missing.json()["code"] == "SESSION_NOT_FOUND"
    finally:
        stop_all(nodes)


async def test_placement_fills_the_cluster_and_never_overfills_a_node(
    shared_nats: Any, tmp_path: Path
) -> None:
    nodes = start_nodes(tmp_path, shared_nats.url, 3, "--max-sessions", "2", delays=("5", "5", "5"))
    try:
        # Every node knows every node's capacity before the rush.
        await wait_for(
            lambda: all(
                len(httpx.get(f"{n.url}/api/status").json()["cluster"]["nodes"]) == 3 for n in nodes
            ),
            timeout=10,
            interval=0.05,
        )
        statuses: list[int] = []

        async def post(node: ServerProcess) -> None:
            async with httpx.AsyncClient(timeout=20) as client:
                answer = await client.post(f"{node.url}/api/sessions", json={})
                statuses.append(answer.status_code)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(post, nodes[i % 3])
        assert statuses.count(201) == 6, statuses
        assert statuses.count(409) == 44, statuses
        await wait_for(lambda: sessions_on(nodes[0])["total"] == 6, timeout=10, interval=0.05)
        owners = [s["node"] for s in sessions_on(nodes[0])["sessions"]]
        assert sorted(owners) == ["n0", "n0", "n1", "n1", "n2", "n2"]
    finally:
        for node in nodes:
            for session in sessions_on(node)["sessions"]:
                if session["node"] == f"n{nodes.index(node)}":
                    httpx.post(f"{node.url}/api/sessions/{session['id']}/stop", timeout=5)
        stop_all(nodes)


async def test_a_lost_node_fails_its_sessions_once_and_re_adopts_them_when_back(
    shared_nats: Any, tmp_path: Path
) -> None:
    ttl = 2.0
    nodes = start_nodes(
        tmp_path, shared_nats.url, 3, "--node-ttl", str(ttl), delays=("5", "0.02", "0.02")
    )
    pid = None
    try:
        session_id = start_session(nodes[0])
        await wait_for(lambda: sessions_on(nodes[1])["total"] == 1, timeout=10, interval=0.05)
        pid = sessions_on(nodes[1])["sessions"][0]["pid"]
        async with sse_stream(nodes[1].url, params={"sessionId": session_id}) as on_1:
            nodes[0].stop(signal.SIGKILL)  # the session's process lives on, unsupervised
            killed = time.monotonic()
            # Its owner is gone: control through another node is 503 within 2 s.
            began = time.monotonic()
            answer = httpx.post(f"{nodes[2].url}/api/sessions/{session_id}/pause", timeout=10)
            assert time.monotonic() - began <= 2.5
            assert answer.status_code == 503 and answer.json()["code"] == "NODE_UNAVAILABLE"
            failed = (await on_1.until(lambda m: m.event == "session:failed", timeout=ttl + 8))[-1]
            assert time.monotonic() - killed <= ttl + 3
            assert failed.json()["data"] == {
                "status": "failed",
                "message": "node n0 lost",
                "reason": "node-lost",
                "node": "n0",
            }
            await wait_for(
                lambda: sessions_on(nodes[2])["sessions"][0]["status"] == "failed", timeout=5
            )
            # The same node comes back with its state dir: it takes the live session back.
            back = ServerProcess(
                nodes[0].loki_dir, *nodes[0].args, env={"LOKI_SIM_DELAY": "5"}
            ).start()
            nodes[0] = back
            resumed = await on_1.until(lambda m: m.event == "session:resumed", timeout=15)
        # Exactly one session:failed, though two survivors noticed.
        assert [m.event for m in resumed].count("session:failed") == 0
        assert "re-adopted by node n0" in resumed[-1].json()["data"]["message"]
        history = httpx.get(
            f"{nodes[2].url}/api/events/history", params={"sessionId": session_id}
        ).json()["events"]
        assert [e["type"] for e in history].count("session:failed") == 1
        await wait_for(
            lambda: sessions_on(nodes[2])["sessions"][0]["status"] == "running", timeout=10
        )
    finally:
        stop_all(nodes)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
