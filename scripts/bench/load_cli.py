"""A stand-in session CLI that prints stamped lines for the fan-out benchmarks.

The server runs it as its session command (`--cli "python load_cli.py"`), so it
is invoked as `load_cli.py start [--provider P] [--dry-run] [--verbose] [PRD]`;
those arguments are ignored.

It waits until the file `<LOKI_DIR>/.bench-go` appears (so every subscriber is
connected first), takes it (the next session waits for a fresh one), then
prints `bench <seq> <emit_ns>` lines, `emit_ns` being the wall clock
(`time.time_ns()`) just before the line is written, and exits 0.

Parameters come from the go file's JSON (`{"lines": 5000, "rate": 0}`), falling
back to the environment (`BENCH_LINES`, `BENCH_RATE`, `BENCH_BATCH`):

- `rate` 0 (burst): as fast as possible, `batch` lines per write;
- `rate` R > 0 (paced): one line every 1/R s, each flushed at once.

`BENCH_MODE=hold` makes it print one line and then just keep running (until a
signal ends it, or `BENCH_HOLD_MAX` seconds): a session that stays up, for
the stop benchmark. Every wait is bounded (`BENCH_WAIT_MAX`, default 300 s).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def wait_for_go(loki_dir: Path, limit: float) -> dict[str, float]:
    go = loki_dir / ".bench-go"
    taken = loki_dir / f".bench-go.taken.{os.getpid()}"
    deadline = time.monotonic() + limit
    while True:
        try:
            os.rename(go, taken)  # atomic: exactly one session takes each go file
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                print("[ERROR] load_cli: no go file, giving up", flush=True)
                sys.exit(3)
            time.sleep(0.005)
    try:
        params = json.loads(taken.read_bytes() or b"{}")
    except ValueError:
        params = {}
    taken.unlink(missing_ok=True)
    return params


def burst(lines: int, batch: int) -> None:
    out = sys.stdout.buffer
    ns = time.time_ns
    for start in range(1, lines + 1, batch):
        end = min(start + batch, lines + 1)
        out.write(b"".join(b"bench %d %d\n" % (seq, ns()) for seq in range(start, end)))
    out.flush()


def paced(lines: int, rate: float) -> None:
    out = sys.stdout.buffer
    interval = 1.0 / rate
    begin = time.monotonic()
    for seq in range(1, lines + 1):
        delay = begin + (seq - 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.write(b"bench %d %d\n" % (seq, time.time_ns()))
        out.flush()


def main() -> int:
    loki_dir = Path(os.environ.get("LOKI_DIR") or os.getcwd())
    wait_max = env_number("BENCH_WAIT_MAX", 300)
    if os.environ.get("BENCH_MODE") == "hold":
        print("bench holding", flush=True)
        time.sleep(env_number("BENCH_HOLD_MAX", 300))
        return 0
    params = wait_for_go(loki_dir, wait_max)
    lines = int(params.get("lines", env_number("BENCH_LINES", 5000)))
    rate = float(params.get("rate", env_number("BENCH_RATE", 0)))
    batch = int(params.get("batch", env_number("BENCH_BATCH", 1000)))
    if rate > 0:
        paced(lines, rate)
    else:
        burst(lines, max(batch, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
