"""Idle SSE streams: server memory per open stream and the CPU cost of keep-alives.

    .venv/bin/python scripts/bench/idle_streams.py [--streams 1000,5000,10000]
        [--window 10] [--url URL --loki-dir DIR --pid PID --keepalive S] [--json out.json]

For each K a fresh server is started (`--keepalive 1`, so a short window holds
many keep-alive rounds), then:

1. its RSS (VmRSS from /proc/<pid>/status) and CPU time (utime+stime from
   /proc/<pid>/stat) are read over `--window` seconds with no stream open;
2. K clients in `--clients` separate processes open `GET /api/events` and wait
   for the opening bytes; after a short settle the RSS is read again:
   KB per stream = (RSS with K streams - RSS before) / K;
3. the CPU time is read over another window while the K streams sit idle
   (the clients read and count the keep-alive comments). Keep-alive CPU per
   round = (CPU with streams - CPU without) / rounds in the window, and the
   share of one core at the default 15 s interval = that / 15 s.

The open-files limit is raised to the hard limit here, and the server inherits it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import (
    Server,
    base_parser,
    check_url_args,
    cpu_seconds,
    new_event_loop,
    open_server,
    open_sse,
    print_table,
    raise_fd_limit,
    rss_kib,
    write_json,
)

HERE = Path(__file__).resolve().parent


async def hold(conn: Connection, url: str, path: str, count: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(250)
    frames = [0] * count
    protos = []

    def counter(i: int) -> Any:
        def on_frames(block: bytes, now: int) -> None:
            frames[i] += block.count(b"\n\n")

        return on_frames

    async def one(i: int) -> None:
        async with gate:
            protos.append(await open_sse(host, port, path, counter(i), timeout=60))

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    conn.send(("ready", len(protos), [repr(e) for e in errors[:3]]))
    start_frames = sum(frames)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # the parent's "done"
    closed_early = sum(1 for p in protos if p.closed.done())
    for proto in protos:
        proto.close()
    return {"frames_while_idle": sum(frames) - start_frames, "closed_early": closed_early}


def client_main(conn: Connection, url: str, path: str, count: int) -> None:
    raise_fd_limit()
    loop = new_event_loop()
    try:
        conn.send(("result", loop.run_until_complete(hold(conn, url, path, count))))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


def measure(
    server: Server,
    streams: int,
    window: float,
    keepalive: float,
    processes: int,
    path: str = "/api/events",
) -> dict[str, Any]:
    pid = server.pid
    time.sleep(1.0)  # let start-up settle
    rss_before = rss_kib(pid) if pid else 0
    cpu0 = cpu_seconds(pid) if pid else 0.0
    time.sleep(window)
    idle_cpu = (cpu_seconds(pid) - cpu0) if pid else float("nan")

    ctx = multiprocessing.get_context("fork")
    processes = max(1, min(processes, streams))
    shares = [streams // processes + (i < streams % processes) for i in range(processes)]
    pipes, children = [], []
    began = time.monotonic()
    for share in shares:
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=client_main, args=(child_end, server.url, path, share))
        child.start()
        pipes.append(parent_end)
        children.append(child)
    try:
        opened = 0
        errors: list[str] = []
        for pipe in pipes:
            if not pipe.poll(300):
                raise TimeoutError("clients did not connect in 300 s")
            kind, *value = pipe.recv()
            if kind != "ready":
                raise RuntimeError(f"client failed: {value}")
            opened += value[0]
            errors += value[1]
        connect_s = time.monotonic() - began
        time.sleep(2.0)
        rss_after = rss_kib(pid) if pid else 0
        cpu1 = cpu_seconds(pid) if pid else 0.0
        time.sleep(window)
        busy_cpu = (cpu_seconds(pid) - cpu1) if pid else float("nan")
        for pipe in pipes:
            pipe.send("done")
        idle_frames = closed_early = 0
        for pipe in pipes:
            if not pipe.poll(120):
                raise TimeoutError("clients did not report")
            kind, value = pipe.recv()
            if kind != "result":
                raise RuntimeError(f"client failed: {value}")
            idle_frames += value["frames_while_idle"]
            closed_early += value["closed_early"]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    rounds = window / keepalive
    per_round = max(busy_cpu - idle_cpu, 0.0) / rounds
    return {
        "streams": streams,
        "opened": opened,
        "connect_errors": errors,
        "connect_s": round(connect_s, 1),
        "closed_early": closed_early,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_stream": round((rss_after - rss_before) / max(opened, 1), 2) if pid else None,
        "keepalive_s": keepalive,
        "window_s": window,
        "pings_per_stream": round(idle_frames / max(opened, 1), 1),
        "cpu_idle_s": round(idle_cpu, 3),
        "cpu_streams_s": round(busy_cpu, 3),
        "cpu_ms_per_round": round(per_round * 1000, 2),
        "core_pct_at_15s": round(100 * per_round / 15.0, 3),
    }


def main() -> int:
    parser = base_parser("Idle SSE streams: RSS per stream and keep-alive CPU (black box).")
    parser.add_argument("--streams", default="1000,5000,10000", help="comma list of K")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window seconds")
    parser.add_argument(
        "--keepalive",
        type=float,
        default=1.0,
        help="keep-alive interval of the server (set on servers we start)",
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also measure RSS per stream of the minimal uvicorn SSE app "
        "(baseline_server.py, no keep-alives) for comparison",
    )
    args = parser.parse_args()
    check_url_args(args)
    limit = raise_fd_limit()
    counts = [int(n) for n in args.streams.split(",") if n.strip()]
    if max(counts) + 100 > limit:
        print(f"warning: open-files limit {limit} is below {max(counts)} streams", file=sys.stderr)
    results = []
    for streams in counts:
        server = open_server(args, "--keepalive", str(args.keepalive), tag="idle")
        with server:
            if not server.pid:
                print("no --pid: RSS and CPU are not measured", file=sys.stderr)
            result = measure(server, streams, args.window, args.keepalive, args.clients)
        result["target"] = "ours"
        results.append(result)
        print(
            f"  K={streams}: " + ", ".join(f"{k}={v}" for k, v in result.items() if k != "streams"),
            flush=True,
        )
        if args.baseline:
            base = Server.scratch_server(
                [sys.executable, str(HERE / "baseline_server.py"), "--cli", "true"], "idle-base"
            )
            with base:
                result = measure(base, streams, 2.0, args.keepalive, args.clients, "/events")
            result.update(target="baseline", cpu_ms_per_round=None, core_pct_at_15s=None)
            results.append(result)
            print(f"  baseline K={streams}: kib_per_stream={result['kib_per_stream']}", flush=True)
    print_table(
        f"idle streams (keep-alive every {args.keepalive:g} s, window {args.window:g} s)",
        ["target", "streams", "opened", "KB/stream", "ms CPU/round", "% core @15s", "pings/stream"],
        [
            [
                r["target"],
                r["streams"],
                r["opened"],
                r["kib_per_stream"],
                r["cpu_ms_per_round"] if r["cpu_ms_per_round"] is not None else "-",
                r["core_pct_at_15s"] if r["core_pct_at_15s"] is not None else "-",
                r["pings_per_stream"],
            ]
            for r in results
        ],
    )
    write_json(args.json, "idle_streams", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
