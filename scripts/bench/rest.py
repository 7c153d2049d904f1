"""REST throughput: requests/s and latency percentiles with many sessions on disk.

    .venv/bin/python scripts/bench/rest.py [--sessions 500] [--tasks 5]
        [--paths /api/sessions,/api/tasks] [--duration 10] [--connections 32]
        [--runs 3] [--url URL --loki-dir DIR] [--json out.json]

`--sessions` session directories (session.json + tasks.json with `--tasks`
tasks each) are written into the state directory before the server starts
(with `--url` the server's state directory is used as it is).
Load comes from `wrk` when it is installed (`apt-get install wrk`; one thread,
keep-alive connections), otherwise from a bounded keep-alive asyncio client
in a separate process. Both share the machine's cores with the server.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import (
    base_parser,
    check_url_args,
    median,
    new_event_loop,
    open_server,
    percentile,
    print_table,
    request,
    write_json,
)

STATUSES = ("completed", "failed", "stopped", "completed", "completed")
TASK_STATUSES = ("completed", "running", "pending", "failed", "completed")


def populate(loki_dir: Path, sessions: int, tasks: int) -> None:
    root = loki_dir / ".loki" / "sessions"
    base_ms = int(time.time() * 1000) - sessions * 60_000
    for i in range(sessions):
        ms = base_ms + i * 60_000
        sid = f"session_{ms}_{i:08x}"
        folder = root / sid
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))
        items = [
            {
                "id": f"task-{j}",
                "title": f"Task {j} of {sid}",
                "description": "Benchmark task: implement the thing, then test it.",
                "status": TASK_STATUSES[j % len(TASK_STATUSES)],
                "priority": j % 3,
                "progress": round(j / max(tasks, 1), 2),
            }
            for j in range(tasks)
        ]
        record = {
            "id": sid,
            "prdPath": "./prd.md",
            "provider": "claude",
            "status": STATUSES[i % len(STATUSES)],
            "startedAt": stamp,
            "updatedAt": stamp,
            "pid": None,
            "currentPhase": "development",
            "taskCount": tasks,
            "completedTasks": sum(t["status"] == "completed" for t in items),
            "exitCode": 0,
        }
        (folder / "session.json").write_text(json.dumps(record))
        (folder / "tasks.json").write_text(json.dumps({"tasks": items}))


# ---------------------------------------------------------------- wrk


def run_wrk(url: str, duration: float, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": round(rps),
        "p50_ms": to_ms(lat.get("50", "nan")),
        "p99_ms": to_ms(lat.get("99", "nan")),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else None,
        "tool": "wrk",
    }


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return round(value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit], 3)


# --------------------------------------------------- fallback asyncio client


async def hammer(
    host: str, port: int, path: str, duration: float, connections: int
) -> dict[str, Any]:
    request_bytes = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    latencies: list[int] = []
    errors = 0
    stop_at = time.monotonic() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < stop_at:
                began = time.perf_counter_ns()
                writer.write(request_bytes)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter_ns() - began)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(percentile(latencies, 50) / 1e6, 3),
        "p99_ms": round(percentile(latencies, 99) / 1e6, 3),
        "non_2xx": errors,
        "socket_errors": None,
        "tool": "python",
    }


def hammer_main(conn: Connection, url: str, duration: float, connections: int) -> None:
    parts = urlsplit(url)
    loop = new_event_loop()
    try:
        conn.send(
            loop.run_until_complete(
                hammer(
                    parts.hostname or "127.0.0.1",
                    parts.port or 80,
                    parts.path + (f"?{parts.query}" if parts.query else ""),
                    duration,
                    connections,
                )
            )
        )
    finally:
        loop.close()


def run_python(url: str, duration: float, connections: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=hammer_main, args=(child_end, url, duration, connections))
    child.start()
    try:
        if not parent_end.poll(duration + 60):
            raise TimeoutError("load client did not report")
        return parent_end.recv()  # type: ignore[no-any-return]
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()


# ------------------------------------------------------------------ main


def main() -> int:
    parser = base_parser("REST throughput with many sessions on disk (black box).")
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=5, help="tasks per session")
    parser.add_argument("--paths", default="/api/sessions,/api/tasks")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    check_url_args(args)
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    load = run_wrk if tool == "wrk" else run_python
    server = open_server(args, tag="rest")
    if not args.url:
        populate(server.loki_dir, args.sessions, args.tasks)
    rows, results = [], []
    with server:
        for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
            status, body = request(server.url, "GET", path)
            if status != 200:
                raise SystemExit(f"GET {path} answered {status}: {body}")
            size = len(json.dumps(body))
            counted = body.get("total", body.get("pagination", {}).get("total"))
            load(server.url + path, 2, args.connections)  # warm-up
            runs = []
            for run in range(args.runs):
                result = load(server.url + path, args.duration, args.connections)
                result.update(path=path, run=run + 1)
                runs.append(result)
                print(f"  {path} run {run + 1}: {result}", flush=True)
            summary = {
                "path": path,
                "body_bytes": size,
                "total": counted,
                "tool": tool,
                "connections": args.connections,
                "duration_s": args.duration,
                "requests_per_s": median(r["requests_per_s"] for r in runs),
                "p50_ms": median(r["p50_ms"] for r in runs),
                "p99_ms": median(r["p99_ms"] for r in runs),
                "non_2xx": sum(r["non_2xx"] for r in runs),
            }
            results.append({"summary": summary, "runs": runs})
            rows.append(
                [
                    path,
                    counted,
                    size,
                    summary["requests_per_s"],
                    summary["p50_ms"],
                    summary["p99_ms"],
                    summary["non_2xx"],
                ]
            )
    print_table(
        f"REST ({args.sessions} sessions on disk; {tool}, {args.connections} "
        f"connections, medians of {args.runs} x {args.duration:g} s)",
        ["path", "total", "bytes", "req/s", "p50 ms", "p99 ms", "non-2xx"],
        rows,
    )
    write_json(args.json, "rest", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
