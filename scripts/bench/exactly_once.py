"""Exactly-once session output across server SIGKILLs, as resuming SSE clients see it.

A server runs `load_cli.py` as its session command, which prints numbered lines
(`bench <n> <ns>`) at `--rate` lines per second. `--clients` SSE clients follow
the session's `log:info` events; each reconnects with the `Last-Event-ID` of
the last event it got, as a browser does, whenever its connection drops. While
the lines flow the server is killed with SIGKILL `--kills` times at random
moments and restarted on the same state directory (the session outlives it).

At the end every client must hold every line exactly once, with strictly
increasing ids:

    python scripts/bench/exactly_once.py --kills 10 --clients 20 --rate 100

Reports duplicates (a line received twice: published again under a new id),
losses (a line never received) and ids out of order, in total and per kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Server,
    base_parser,
    go,
    load_cli_cmd,
    loki_server_cmd,
    new_event_loop,
    open_sse,
    print_table,
    request,
    start_session,
    write_json,
)


class Follower:
    """One resuming SSE client: every (event seq, line number) it got, in order."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int]] = []
        self.last_id: bytes | None = None
        self.connections = 0
        self.kills_lived = 0  # kills while it still waited for lines: each needs a reconnect

    def finished(self, lines: int) -> bool:
        return bool(self.got) and self.got[-1][1] >= lines

    def on_frames(self, block: bytes, _ns: int) -> None:
        for frame in block.split(b"\n\n"):
            event_id = data = None
            for line in frame.split(b"\n"):
                if line.startswith(b"id: "):
                    event_id = line[4:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if event_id is None or data is None:
                continue
            message = json.loads(data)["data"]["message"]
            if message.startswith("bench "):
                self.got.append((int(event_id.split(b"_")[1]), int(message.split()[1])))
            self.last_id = event_id

    def report(self, lines: int) -> dict[str, int]:
        counts = Counter(n for _, n in self.got)
        seqs = [seq for seq, _ in self.got]
        return {
            "received": len(self.got),
            "duplicates": sum(c - 1 for c in counts.values() if c > 1),
            "losses": sum(1 for n in range(1, lines + 1) if n not in counts),
            "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a),
            "connections": self.connections,
            "kills_lived": self.kills_lived,
        }


async def follow(
    follower: Follower, where: dict[str, Any], path: str, lines: int, deadline: float
) -> None:
    """Stay subscribed (reconnecting after every drop) until the last line arrived."""
    while time.monotonic() < deadline:
        if follower.finished(lines):
            return
        try:
            stream = await open_sse(
                where["host"], where["port"], path, follower.on_frames, follower.last_id, 2.0
            )
        except (TimeoutError, OSError, RuntimeError):
            await asyncio.sleep(0.05)  # the server is down or starting: try again
            continue
        follower.connections += 1
        try:
            while not stream.closed.done():
                if follower.finished(lines):
                    return
                await asyncio.wait({stream.closed}, timeout=0.1)
        finally:
            stream.close()


def address(url: str) -> dict[str, Any]:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return {"host": host, "port": int(port)}


async def run(args: Any) -> dict[str, Any]:
    rng = random.Random(args.seed)
    lines = args.lines or int(args.rate * (args.kills * (args.max_gap + 1.5) + 2))
    cluster: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.cluster:
            # One node of a cluster: its events live in JetStream, not in a local log.
            from loki_api.cluster.natsserver import NatsServer

            store = Path(tempfile.mkdtemp(prefix="loki-nats-"))
            stack.callback(shutil.rmtree, store, ignore_errors=True)
            nats = stack.enter_context(NatsServer(store))
            cluster = ["--nats", nats.url, "--cluster", "once", "--node-id", "n1"]
        server = Server.scratch_server(
            loki_server_cmd("--cli", load_cli_cmd(), *cluster),
            "exactly-once",
            env={"BENCH_WAIT_MAX": "60"},
        )
        return await follow_through_kills(args, rng, lines, server)


async def follow_through_kills(
    args: Any, rng: random.Random, lines: int, server: Server
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    with server:
        session = start_session(server.url)
        where = address(server.url)
        path = f"/api/events?sessionId={session}&types=log:info"
        followers = [Follower() for _ in range(args.clients)]
        deadline = time.monotonic() + lines / args.rate + args.kills * 10 + 30
        tasks = [asyncio.ensure_future(follow(f, where, path, lines, deadline)) for f in followers]

        async def all_subscribed() -> None:
            # Every client still following is connected to this server: the next
            # kill hits each of them (on a loaded machine a reconnect can take longer
            # than a gap, and a client would skip a whole server's lifetime).
            while time.monotonic() < deadline:
                following = sum(not task.done() for task in tasks)
                stats = await loop.run_in_executor(
                    None, request, server.url, "GET", "/api/events/stats"
                )
                if stats[1]["subscribers"] >= following:
                    return
                await asyncio.sleep(0.02)

        await all_subscribed()
        go(server.loki_dir, lines=lines, rate=args.rate)
        kills = []
        for _ in range(args.kills):
            await asyncio.sleep(rng.uniform(args.min_gap, args.max_gap))
            for follower in followers:
                if not follower.finished(lines):
                    follower.kills_lived += 1
            killed_at = time.monotonic()
            await loop.run_in_executor(None, server.kill)
            await loop.run_in_executor(None, server.start)
            where.update(address(server.url))
            kills.append(round(time.monotonic() - killed_at, 3))
            await all_subscribed()
        await asyncio.gather(*tasks)
    reports = [f.report(lines) for f in followers]
    totals = {key: sum(r[key] for r in reports) for key in reports[0]}
    return {
        "kills": args.kills,
        "clients": args.clients,
        "lines": lines,
        "rate": args.rate,
        "restart_seconds": kills,
        "totals": totals,
        "per_client": reports,
    }


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the server (10)")
    parser.add_argument("--clients", type=int, default=20, help="resuming SSE clients (20)")
    parser.add_argument("--rate", type=float, default=100.0, help="lines per second (100)")
    parser.add_argument("--lines", type=int, help="lines in all (default: enough for the kills)")
    parser.add_argument("--min-gap", type=float, default=0.3, help="least seconds between kills")
    parser.add_argument("--max-gap", type=float, default=1.5, help="most seconds between kills")
    parser.add_argument("--seed", type=int, default=12, help="random seed of the kill times")
    parser.add_argument(
        "--cluster", action="store_true", help="the server is a cluster node (a nats-server too)"
    )
    args = parser.parse_args()
    loop = new_event_loop()
    try:
        results = loop.run_until_complete(run(args))
    finally:
        loop.close()
    totals = results["totals"]
    print_table(
        f"exactly once: {args.kills} SIGKILLs, {args.clients} clients, "
        f"{results['lines']} lines at {args.rate:g}/s",
        ["duplicates", "losses", "ids out of order", "received", "connections"],
        [
            [
                totals["duplicates"],
                totals["losses"],
                totals["out_of_order"],
                totals["received"],
                totals["connections"],
            ]
        ],
    )
    write_json(args.json, "exactly_once", results)
    clean = not (totals["duplicates"] or totals["losses"] or totals["out_of_order"])
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
