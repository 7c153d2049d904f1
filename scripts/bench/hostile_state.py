"""A hostile or just large `.loki/` (SPEC §3.2): start-up time and peak memory.

    .venv/bin/python scripts/bench/hostile_state.py [--sessions 5000] [--runs 3]
        [--tasks-mb 200] [--line-mb 20] [--json out.json]

1. Start-up: `--sessions` session directories (session.json, tasks.json with a
   few tasks, phase.json, a log), then the time from starting the server to its
   first `/health/live` answer; median of `--runs`.
2. Peak memory: on a server with one session, its peak RSS (`VmHWM`) at idle,
   then after a sparse `--tasks-mb` MB `tasks.json` and a `--line-mb` MB
   single-line `*.log` are offered (both must be skipped or cut, never held
   whole), waiting until the line after the long one was published.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import (
    Server,
    base_parser,
    loki_server_cmd,
    median,
    print_table,
    request,
    rss_kib,
    write_json,
)


def make_sessions(loki_dir: Path, count: int) -> None:
    sessions = loki_dir / ".loki" / "sessions"
    for n in range(count):
        directory = sessions / f"s{n:05d}"
        directory.mkdir(parents=True)
        record = {"id": directory.name, "provider": "claude", "status": "completed"}
        (directory / "session.json").write_text(json.dumps(record))
        tasks = [{"id": f"t{i}", "title": f"Task {i}", "status": "completed"} for i in range(5)]
        (directory / "tasks.json").write_text(json.dumps({"tasks": tasks}))
        (directory / "phase.json").write_text('{"current": "done"}')
        (directory / "run.log").write_text("[INFO] finished\n")


def startup_seconds(sessions: int, runs: int) -> list[float]:
    times = []
    server = Server.scratch_server(loki_server_cmd("--simulate"), "startup", timeout=300)
    make_sessions(server.loki_dir, sessions)
    for _ in range(runs):
        began = time.perf_counter()
        with server:
            times.append(time.perf_counter() - began)
            total = request(server.url, "GET", "/api/status")[1]["sessions"]["total"]
            if total != sessions:
                raise SystemExit(f"expected {sessions} sessions, the server has {total}")
    return times


def peak_memory(tasks_mb: int, line_mb: int) -> dict[str, float]:
    with Server.scratch_server(loki_server_cmd("--simulate"), "memory") as server:
        assert server.pid is not None
        session = server.loki_dir / ".loki" / "sessions" / "s1"
        session.mkdir(parents=True)
        (session / "session.json").write_text('{"id": "s1", "status": "running"}')
        time.sleep(1)  # let it settle: this is the idle peak
        idle = rss_kib(server.pid, "VmHWM")
        with open(session / "tasks.json", "wb") as f:
            f.truncate(tasks_mb * 1024 * 1024)
        with open(session / "big.log", "wb") as f:
            f.write(b"[INFO] " + b"L" * (line_mb * 1024 * 1024) + b"\n[INFO] AFTER\n")
        deadline = time.monotonic() + 60
        while True:
            history = request(server.url, "GET", "/api/events/history?limit=1000")[1]
            if any(e["data"].get("message") == "AFTER" for e in history["events"]):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the line after the long one was never published")
            time.sleep(0.05)
        peak = rss_kib(server.pid, "VmHWM")
    return {"idle_mb": idle / 1024, "peak_mb": peak / 1024, "delta_mb": (peak - idle) / 1024}


def main() -> int:
    parser = base_parser("Start-up time with many sessions; peak RSS with huge state files.")
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--tasks-mb", type=int, default=200)
    parser.add_argument("--line-mb", type=int, default=20)
    args = parser.parse_args()
    times = startup_seconds(args.sessions, args.runs)
    memory = peak_memory(args.tasks_mb, args.line_mb)
    results = {
        "sessions": args.sessions,
        "startup_s": times,
        "startup_median_s": median(times),
        **memory,
    }
    print_table(
        "hostile state directory",
        ["measure", "value"],
        [
            (f"start-up with {args.sessions} sessions, median s", results["startup_median_s"]),
            ("peak RSS idle, MB", memory["idle_mb"]),
            (
                f"peak RSS after {args.tasks_mb} MB tasks.json + {args.line_mb} MB line, MB",
                memory["peak_mb"],
            ),
            ("difference, MB", memory["delta_mb"]),
        ],
    )
    write_json(args.json, "hostile_state", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
