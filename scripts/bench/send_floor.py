"""The machine's floor for fan-out latency: one loopback TCP send per subscriber, nothing else.

    .venv/bin/python scripts/bench/send_floor.py [--subscribers 1000] [--rounds 200]
        [--frame-bytes 260] [--json out.json]

No server: this process accepts N loopback connections from a reader process
(uvloop, discards what it reads, like the fan-out clients but cheaper) and,
every 20 ms (the paced benchmark's 50 lines/s), sends one SSE-sized frame to
each connection with plain `socket.send`. The time one round takes is what the
kernel alone charges to deliver one line to N subscribers; the median
subscriber of a line can not get it sooner than about half of it, whatever the
server does in user space.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from _common import new_event_loop, percentile, print_table, raise_fd_limit, write_json


def reader(port: int, count: int, ready: Event, done: Event) -> None:
    raise_fd_limit()

    class Discard(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    async def hold() -> None:
        loop = asyncio.get_running_loop()
        transports = [
            (await loop.create_connection(Discard, "127.0.0.1", port))[0] for _ in range(count)
        ]
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.1)
        for transport in transports:
            transport.close()

    loop = new_event_loop()
    try:
        loop.run_until_complete(hold())
    finally:
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--frame-bytes", type=int, default=260)
    parser.add_argument("--json", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    raise_fd_limit()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(
        target=reader, args=(listener.getsockname()[1], args.subscribers, ready, done)
    )
    child.start()
    conns = []
    try:
        listener.settimeout(60)
        conns = [listener.accept()[0] for _ in range(args.subscribers)]
        if not ready.wait(60):
            raise TimeoutError("reader did not connect")
        frame = b"x" * args.frame_bytes
        rounds = []
        for _ in range(args.rounds):
            began = time.perf_counter()
            for conn in conns:
                conn.send(frame)
            rounds.append((time.perf_counter() - began) * 1000)
            time.sleep(0.02)
    finally:
        done.set()
        child.join(10)
        if child.is_alive():
            child.kill()
        for conn in conns:
            conn.close()
        listener.close()
    rounds.sort()
    result = {
        "subscribers": args.subscribers,
        "rounds": args.rounds,
        "frame_bytes": args.frame_bytes,
        "round_p50_ms": round(statistics.median(rounds), 2),
        "round_p99_ms": round(percentile(rounds, 99), 2),
        "us_per_send": round(statistics.median(rounds) * 1000 / args.subscribers, 2),
    }
    print_table(
        "kernel floor: one loopback send per subscriber per line",
        ["subscribers", "round p50 ms", "round p99 ms", "µs per send"],
        [
            [
                result["subscribers"],
                result["round_p50_ms"],
                result["round_p99_ms"],
                result["us_per_send"],
            ]
        ],
    )
    write_json(args.json, "send_floor", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
