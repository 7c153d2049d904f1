"""State-file watcher latency: a write to tasks.json → the task event on the SSE stream.

    .venv/bin/python scripts/bench/watcher_latency.py [--writes 200] [--runs 3]
        [--gap-ms 30] [--url URL --loki-dir DIR] [--json out.json]

A session directory `<loki-dir>/.loki/sessions/bench_watch/` with
`session.json` and `tasks.json` is created before the server starts. A
subscriber follows `/api/events?sessionId=bench_watch&types=task:progress,...`;
then each write changes the task's `progress` (and every 25th write its
`status`: running → completed → running) and waits for the task event carrying
that progress value. Writes alternate between in place (truncate + write) and atomic (temp
file + rename). Latency = receive wall clock - wall clock just before the
write began. A write whose event does not come within 2 s counts as missed.
Writes are sequential with `--gap-ms` between an event and the next write, so
the watcher's debounce never merges two of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import (
    base_parser,
    check_url_args,
    median,
    new_event_loop,
    open_server,
    open_sse,
    percentile,
    print_table,
    write_json,
)

SESSION = "bench_watch"
TYPES = "task:created,task:started,task:progress,task:completed,task:failed"


def session_dir(loki_dir: Path) -> Path:
    return loki_dir / ".loki" / "sessions" / SESSION


def prepare(loki_dir: Path) -> None:
    folder = session_dir(loki_dir)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    record = {
        "id": SESSION,
        "prdPath": None,
        "provider": "claude",
        "status": "completed",
        "startedAt": now,
        "updatedAt": now,
        "pid": None,
        "currentPhase": None,
        "taskCount": 1,
        "completedTasks": 0,
        "exitCode": 0,
    }
    (folder / "session.json").write_text(json.dumps(record))
    (folder / "tasks.json").write_text(json.dumps({"tasks": [task(0.0)]}))


def task(progress: float, status: str = "running") -> dict[str, Any]:
    return {
        "id": "bench-1",
        "title": "watcher latency probe",
        "status": status,
        "progress": progress,
    }


def write(path: Path, data: bytes, atomic: bool) -> None:
    if atomic:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    else:
        with open(path, "r+b") as file:
            file.truncate(0)
            file.write(data)


class Probe:
    """Follows the session's task events; `wait_progress` waits for one value."""

    def __init__(self) -> None:
        self.arrivals: dict[float, int] = {}
        self.changed = asyncio.Event()

    def on_frames(self, block: bytes, now: int) -> None:
        for frame in block.split(b"\n\n"):
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    data = json.loads(line[6:]).get("data") or {}
                    progress = data.get("progress")
                    if isinstance(progress, int | float):
                        self.arrivals.setdefault(float(progress), now)
                        self.changed.set()

    async def wait_progress(self, value: float, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while value not in self.arrivals:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return None
        return self.arrivals[value]


async def run(url: str, loki_dir: Path, writes: int, runs: int, gap: float) -> list[dict]:
    parts = urlsplit(url)
    probe = Probe()
    proto = await open_sse(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        f"/api/events?sessionId={SESSION}&types={TYPES}",
        probe.on_frames,
    )
    path = session_dir(loki_dir) / "tasks.json"
    counter = 0
    results = []
    try:
        # Warm-up: the first change makes sure the watcher knows the file.
        for _ in range(3):
            counter += 1
            write(path, json.dumps({"tasks": [task(counter / 1e6)]}).encode(), atomic=True)
            if await probe.wait_progress(counter / 1e6, 10) is not None:
                break
        else:
            raise RuntimeError("no task event for tasks.json writes: is the watcher running?")
        for run_no in range(runs):
            latencies, missed = [], 0
            for i in range(writes):
                counter += 1
                value = counter / 1e6
                # Every 25th write completes the task (task:completed) and the next
                # one restarts it (task:started); the rest are task:progress.
                status = "completed" if counter % 25 == 0 else "running"
                data = json.dumps({"tasks": [task(value, status)]}).encode()
                started = time.time_ns()
                write(path, data, atomic=i % 2 == 1)
                arrived = await probe.wait_progress(value, 2.0)
                if arrived is None:
                    missed += 1
                else:
                    latencies.append((arrived - started) / 1e6)
                await asyncio.sleep(gap)
            latencies.sort()
            results.append(
                {
                    "run": run_no + 1,
                    "writes": writes,
                    "missed": missed,
                    "p50_ms": round(percentile(latencies, 50), 2),
                    "p99_ms": round(percentile(latencies, 99), 2),
                    "max_ms": round(latencies[-1], 2) if latencies else None,
                    "latencies_ms": [round(v, 3) for v in latencies],
                }
            )
            print(
                f"  run {run_no + 1}: p50={results[-1]['p50_ms']} ms "
                f"p99={results[-1]['p99_ms']} ms missed={missed}",
                flush=True,
            )
    finally:
        proto.close()
    return results


def main() -> int:
    parser = base_parser("State-file write → SSE event latency (black box).")
    parser.add_argument("--writes", type=int, default=200, help="writes per run")
    parser.add_argument("--gap-ms", type=float, default=30, help="pause between writes")
    args = parser.parse_args()
    check_url_args(args)
    server = open_server(args, tag="watcher")
    prepare(server.loki_dir)
    loop = new_event_loop()
    with server:
        try:
            results = loop.run_until_complete(
                run(server.url, server.loki_dir, args.writes, args.runs, args.gap_ms / 1000)
            )
        finally:
            loop.close()
    pooled = sorted(v for r in results for v in r["latencies_ms"])
    summary = {
        "runs": len(results),
        "writes": sum(r["writes"] for r in results),
        "missed": sum(r["missed"] for r in results),
        "p50_ms": median(r["p50_ms"] for r in results),
        "p99_ms": median(r["p99_ms"] for r in results),
        "pooled_p50_ms": round(percentile(pooled, 50), 2),
        "pooled_p99_ms": round(percentile(pooled, 99), 2),
        "max_ms": pooled[-1] if pooled else None,
    }
    print_table(
        "watcher latency (write → SSE event)",
        ["runs", "writes", "missed", "p50 ms", "p99 ms", "pooled p99", "max ms"],
        [
            [
                summary["runs"],
                summary["writes"],
                summary["missed"],
                summary["p50_ms"],
                summary["p99_ms"],
                summary["pooled_p99_ms"],
                summary["max_ms"],
            ]
        ],
    )
    write_json(args.json, "watcher_latency", {"summary": summary, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
