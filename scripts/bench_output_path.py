"""How many output lines per second the session output path handles (no network).

Writes N mixed lines (JSON events, level lines, phase/agent lines, plain text) to
a file, then times `OutputTail.pump` – read in chunks, split, parse (SPEC §5.2),
publish on an `EventBus` – with 0 and with S subscribers attached.

    .venv/bin/python scripts/bench_output_path.py [--lines 5000] [--subscribers 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

from loki_api.bus import EventBus
from loki_api.filters import EventFilter
from loki_api.sessions.output import parse_line
from loki_api.sessions.process import OutputTail

SAMPLE = [
    '{"type":"task:progress","data":{"taskId":"t1","title":"Build","status":"running",'
    '"progress":0.5}}',
    "[INFO] [planner] Reading the PRD and planning the work",
    "[WARN] tests are slow",
    "Starting development phase",
    "Spawning developer agent",
    "plain output line from the agent with some words in it",
    '{"type":"task","data":{"id":"t2","title":"Ship","status":"completed"}}',
    "[DEBUG] [agent-001] tool call finished in 0.42s",
]


def make_file(directory: Path, lines: int) -> Path:
    path = directory / "stdout.txt"
    with open(path, "w") as file:
        for n in range(lines):
            file.write(
                f"{SAMPLE[n % len(SAMPLE)]} #{n}\n"
                if n % len(SAMPLE) not in (0, 6)
                else SAMPLE[n % len(SAMPLE)] + "\n"
            )
    return path


def run(path: Path, subscribers: int) -> tuple[float, int]:
    bus = EventBus(history=1000, max_pending=10**9)
    for n in range(subscribers):
        # A mix of filters, as real dashboards use: all events, one session, logs only.
        kind = n % 3
        event_filter = (
            EventFilter.parse(None, None, None)
            if kind == 0
            else EventFilter.parse("s1", None, None)
            if kind == 1
            else EventFilter.parse(None, "log:info,log:warn", None)
        )
        bus.subscribe(event_filter)
    tail = OutputTail(path, "stdout")
    began = time.perf_counter()
    tail.finish(partial(bus.publish, session_id="s1"))
    return time.perf_counter() - began, bus.published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--subscribers", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(Path(tmp), args.lines)
        lines = path.read_text().splitlines()
        began = time.perf_counter()
        for line in lines:
            parse_line(line)
        parse_only = time.perf_counter() - began
        print(f"parse only:             {len(lines) / parse_only:>12,.0f} lines/s")
        for subscribers in (0, args.subscribers):
            elapsed, published = run(path, subscribers)
            print(
                f"read+parse+publish, {subscribers:>4} subscribers: "
                f"{published / elapsed:>12,.0f} lines/s ({published} events in "
                f"{elapsed * 1000:.1f} ms)"
            )


if __name__ == "__main__":
    main()
