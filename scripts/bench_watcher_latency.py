"""Write → SSE event latency of the state watcher.

Starts `python -m loki_api serve` on 127.0.0.1 (free port, temp loki-dir),
subscribes to `/api/events`, then rewrites one session's `tasks.json` N times,
alternating in-place writes and atomic (temp file + rename) writes. Each write
changes a task's progress, so it must produce exactly one `task:progress`
event; the time from just before the write to that event arriving over SSE
is one sample. Writes are sequential (each waits for its event), so this
measures the latency of an isolated write, which is what a debounce would hurt.

    .venv/bin/python scripts/bench_watcher_latency.py [--writes 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

URL_LINE = re.compile(r"url\s+(https?://\S+)")
SESSION_ID = "bench-latency"


def start_server(loki_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loki_api",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--loki-dir",
            str(loki_dir),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = URL_LINE.search(log_path.read_text(errors="replace"))
        if match:
            url = match.group(1)
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log_path.read_text(errors='replace')}")


def write_in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def tasks_doc(progress: int) -> bytes:
    return json.dumps(
        {"tasks": [{"id": "t1", "title": "bench", "status": "running", "progress": progress}]}
    ).encode()


async def next_event(lines: object) -> dict[str, object]:
    """The data of the next SSE event (comments and blank lines skipped)."""
    async for line in lines:  # type: ignore[attr-defined]
        if line.startswith("data: "):
            return json.loads(line[6:])  # type: ignore[no-any-return]
    raise EOFError("stream ended")


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def summary(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"{name:<9} n={len(ms):<4} p50={percentile(ms, 50):6.2f} ms  "
        f"p90={percentile(ms, 90):6.2f} ms  p99={percentile(ms, 99):6.2f} ms  "
        f"max={max(ms):6.2f} ms  mean={statistics.fmean(ms):6.2f} ms"
    )


async def measure(url: str, session_dir: Path, writes: int, warmup: int) -> dict[str, list[float]]:
    tasks_path = session_dir / "tasks.json"
    results: dict[str, list[float]] = {"in-place": [], "atomic": []}
    params = {"sessionId": SESSION_ID, "types": "task:progress"}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0)) as client:
        async with client.stream("GET", "/api/events", params=params) as response:
            lines = response.aiter_lines()
            for i in range(1, warmup + writes + 1):
                atomic = i % 2 == 0
                data = tasks_doc(i)
                started = time.perf_counter()
                (write_atomic if atomic else write_in_place)(tasks_path, data)
                event = await asyncio.wait_for(next_event(lines), timeout=5)
                elapsed = time.perf_counter() - started
                progress = event["data"]["progress"]  # type: ignore[index]
                if progress != i:
                    raise SystemExit(f"write {i}: got the event of write {progress}")
                if i > warmup:
                    results["atomic" if atomic else "in-place"].append(elapsed)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=400, help="measured writes (default 400)")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loki-bench-") as tmp:
        loki_dir = Path(tmp) / "project"
        session_dir = loki_dir / ".loki" / "sessions" / SESSION_ID
        session_dir.mkdir(parents=True)
        (session_dir / "session.json").write_text(
            json.dumps({"status": "running", "startedAt": "2026-01-01T00:00:00.000Z"})
        )
        write_in_place(session_dir / "tasks.json", tasks_doc(0))
        proc, url = start_server(loki_dir, Path(tmp) / "server.log")
        try:
            results = asyncio.run(measure(url, session_dir, args.writes, args.warmup))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    every = results["in-place"] + results["atomic"]
    print(f"write -> SSE event latency ({len(every)} writes, {url})")
    print(summary("all", every))
    print(summary("in-place", results["in-place"]))
    print(summary("atomic", results["atomic"]))


if __name__ == "__main__":
    main()
