"""Run every benchmark with bounded defaults and check the results against the targets.

    .venv/bin/python scripts/bench/run_all.py [--out DIR] [--only fanout,rest,...] [--quick]
        [--profile]

Each script runs as its own process (each starts and stops its own server) with
a time limit, writes `DIR/<name>.json`, and this prints a results-vs-targets
table and writes it as Markdown to `DIR/summary.md`. `--quick` shrinks every
benchmark (for a smoke run, not for numbers). `--profile` also samples the
server with py-spy during the largest fan-out burst (`DIR/profile/`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import machine

HERE = Path(__file__).resolve().parent

# name → (arguments, quick arguments, time limit in seconds)
BENCHMARKS: dict[str, tuple[list[str], list[str], int]] = {
    "fanout": (
        ["--targets", "ours,baseline,direct"],
        ["--subscribers", "100", "--lines", "1000", "--paced-lines", "100", "--runs", "1"],
        2000,
    ),
    "watcher_latency": ([], ["--writes", "50", "--runs", "1"], 300),
    "idle_streams": (["--baseline"], ["--streams", "1000", "--window", "3"], 1200),
    "rest": ([], ["--duration", "2", "--runs", "1"], 400),
    "stop_latency": ([], ["--runs", "5"], 300),
    "send_floor": ([], ["--subscribers", "200", "--rounds", "50"], 120),
    "cluster_publish": ([], ["--events", "20000", "--runs", "1"], 600),
    "cluster_sessions": (
        [],
        ["--controls", "20", "--sessions", "50", "--duration", "2", "--runs", "1"],
        900,
    ),
    "cluster_fanout": (
        [],
        [
            "--subscribers",
            "10",
            "--paced-lines",
            "50",
            "--fanout-subscribers",
            "100",
            "--lines",
            "500",
            "--runs",
            "1",
        ],
        1500,
    ),
}


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return {}


Check = tuple[str, str, Callable[[dict[str, Any]], Any], Callable[[Any], bool]]

CHECKS: dict[str, list[Check]] = {
    "fanout": [
        (
            "burst events/s, 1,000 subscribers",
            "≥ 130,000",
            lambda r: find(r["summary"], mode="burst", subscribers=1000, target="ours").get(
                "events_per_s"
            ),
            lambda v: v >= 130_000,
        ),
        (
            "burst events lost, 1,000 subscribers",
            "0",
            lambda r: find(r["summary"], mode="burst", subscribers=1000, target="ours").get(
                "lost_max"
            ),
            lambda v: v == 0,
        ),
        (
            "burst ratio to the limit baseline (events/s)",
            "≥ 0.7",
            lambda r: next(
                (
                    x["ratio_to_baseline"]
                    for x in r["summary"]
                    if x.get("subscribers") == 1000 and "ratio_to_baseline" in x
                ),
                None,
            ),
            lambda v: v >= 0.7,
        ),
        (
            "burst server-CPU ratio to the baseline (µs/event)",
            "(info)",
            lambda r: next(
                (
                    x["cpu_ratio_to_baseline"]
                    for x in r["summary"]
                    if x.get("subscribers") == 1000 and "cpu_ratio_to_baseline" in x
                ),
                None,
            ),
            lambda v: True,
        ),
        (
            "paced p50 ms, 1,000 subscribers, 50 lines/s",
            "≤ 4",
            lambda r: find(r["summary"], mode="paced", subscribers=1000, target="ours").get(
                "p50_ms"
            ),
            lambda v: v <= 4,
        ),
        (
            "paced p99 ms, 1,000 subscribers, 50 lines/s",
            "≤ 30",
            lambda r: find(r["summary"], mode="paced", subscribers=1000, target="ours").get(
                "p99_ms"
            ),
            lambda v: v <= 30,
        ),
        (
            "paced p50 ms of the direct-write floor (same clients, same run)",
            "(info)",
            lambda r: find(r["summary"], mode="paced", subscribers=1000, target="direct").get(
                "p50_ms"
            ),
            lambda v: True,
        ),
    ],
    "watcher_latency": [
        ("watcher p50 ms", "≤ 10", lambda r: r["summary"]["p50_ms"], lambda v: v <= 10),
        ("watcher p99 ms", "≤ 50", lambda r: r["summary"]["p99_ms"], lambda v: v <= 50),
    ],
    "idle_streams": [
        (
            "KB per idle stream at 10,000 streams",
            "≤ 20",
            lambda r: find(r, streams=10000, target="ours").get("kib_per_stream"),
            lambda v: v <= 20,
        ),
        (
            "keep-alive CPU at 5,000 streams (% of a core, 15 s interval)",
            "< 2",
            lambda r: find(r, streams=5000, target="ours").get("core_pct_at_15s"),
            lambda v: v < 2,
        ),
    ],
    "rest": [
        (
            "GET /api/sessions req/s, 500 sessions",
            "≥ 3,000",
            lambda r: next(
                (
                    x["summary"]["requests_per_s"]
                    for x in r
                    if x["summary"]["path"] == "/api/sessions"
                ),
                None,
            ),
            lambda v: v >= 3000,
        ),
        (
            "GET /api/tasks req/s, 500 sessions",
            "(info)",
            lambda r: next(
                (x["summary"]["requests_per_s"] for x in r if x["summary"]["path"] == "/api/tasks"),
                None,
            ),
            lambda v: True,
        ),
    ],
    "stop_latency": [
        (
            "stop answered, p99 ms",
            "≤ 50",
            lambda r: r["summary"]["answer_p99_ms"],
            lambda v: v <= 50,
        ),
    ],
    "cluster_publish": [
        (
            "events/s one node publishes through JetStream (R1, loopback)",
            "≥ 100,000",
            lambda r: r["summary"]["publish_per_s"],
            lambda v: v >= 100_000,
        ),
    ],
    "cluster_sessions": [
        (
            "control round-trip via another node, p50 / p99 ms",
            "(info)",
            lambda r: (
                f"{r['summary']['control_via_other_node_p50_ms']} / "
                f"{r['summary']['control_via_other_node_p99_ms']}"
            ),
            lambda v: True,
        ),
        (
            "GET /api/sessions req/s on a non-owner node, 500 sessions",
            "≥ 3,000",
            lambda r: r["summary"]["list_on_non_owner_rps"],
            lambda v: v >= 3000,
        ),
        (
            "time to detect a lost node, s (--node-ttl 5)",
            "(info)",
            lambda r: r["summary"]["loss_detected_s"],
            lambda v: True,
        ),
    ],
    "cluster_fanout": [
        (
            "cross-node extra latency p50 ms (50 lines/s x 100 subscribers)",
            "≤ 2",
            lambda r: (
                r["summary"]["latency cross-node"]["p50_ms"]
                - r["summary"]["latency single"]["p50_ms"]
            ),
            lambda v: v <= 2,
        ),
        (
            "cross-node extra latency p99 ms",
            "≤ 20",
            lambda r: (
                r["summary"]["latency cross-node"]["p99_ms"]
                - r["summary"]["latency single"]["p99_ms"]
            ),
            lambda v: v <= 20,
        ),
        (
            "burst events/s, 1,000 subscribers split over 2 nodes",
            "(info)",
            lambda r: r["summary"]["fanout split A+B"]["events_per_s"],
            lambda v: True,
        ),
        (
            "burst events/s, 1,000 subscribers on 1 node (same run)",
            "(info)",
            lambda r: r["summary"]["fanout single"]["events_per_s"],
            lambda v: True,
        ),
    ],
    "send_floor": [
        (
            "kernel floor: ms to send one frame to 1,000 loopback sockets (p50)",
            "(info)",
            lambda r: r["round_p50_ms"] if r["subscribers"] == 1000 else None,
            lambda v: True,
        ),
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".bench") / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--only", help="comma list of benchmarks: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--profile", action="store_true", help="py-spy the fan-out burst")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    for name in names:
        full, quick, limit = BENCHMARKS[name]
        extra = list(quick if args.quick else full)
        if name == "fanout" and args.profile:
            extra += ["--profile", str(args.out / "profile")]
        cmd = [
            sys.executable,
            str(HERE / f"{name}.py"),
            "--json",
            str(args.out / f"{name}.json"),
            *extra,
        ]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        began = time.monotonic()
        try:
            code = subprocess.run(cmd, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"=== {name}: exit {code} in {time.monotonic() - began:.0f} s", flush=True)
        if code != 0:
            failures.append(name)
    table = summarise(args.out, names)
    print("\n" + table)
    (args.out / "summary.md").write_text(table + "\n")
    print(f"wrote {args.out / 'summary.md'}")
    return 1 if failures else 0


def summarise(out: Path, names: list[str]) -> str:
    info = machine()
    lines = [
        f"Measured {info['date']} on {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, load average at the end "
        f"{', '.join(f'{x:.2f}' for x in info['loadavg'])}.",
        "",
        "| benchmark | measured | target | met |",
        "|---|---|---|---|",
    ]
    for name in names:
        path = out / f"{name}.json"
        results = json.loads(path.read_text())["results"] if path.exists() else None
        for label, target, get, ok in CHECKS[name]:
            try:
                value = get(results) if results is not None else None
            except (KeyError, TypeError, StopIteration):
                value = None
            if value is None:
                lines.append(f"| {label} | not measured | {target} | - |")
                continue
            shown = f"{value:,.0f}" if isinstance(value, int | float) and value >= 1000 else value
            met = "" if target == "(info)" else ("yes" if ok(value) else "**no**")
            lines.append(f"| {label} | {shown} | {target} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
