"""Fan-out: N SSE subscribers while one session's CLI prints M stamped lines.

    .venv/bin/python scripts/bench/fanout.py [--subscribers 100,1000] [--lines 5000]
        [--paced-lines 500 --rate 50] [--runs 3] [--no-baseline] [--profile DIR]
        [--url URL --loki-dir DIR --pid PID] [--json out.json]

Two measurements per subscriber count, each on our server and, in the same
run, on the limit baseline (`baseline_server.py`: same uvicorn/httptools/uvloop,
pre-encoded frames, no bus):

- burst: the load CLI prints M lines as fast as it can. Delivered events/s =
  unique bench events received by all subscribers / (last delivery - first
  delivery). Lost = N*M - unique received. A subscriber whose stream is cut
  off (too slow) reconnects with `Last-Event-ID`, as a browser does.
- paced: the load CLI prints lines at `--rate` per second; latency = receive
  wall clock - the emit wall clock stamped in the line, over every event at
  every subscriber (p50/p99/max).

The server under test must run the load CLI as its session command
(`--cli "python scripts/bench/load_cli.py"`); the script starts it with
`POST /api/sessions` and releases it by writing `<loki-dir>/.bench-go`.
Clients live in `--clients` separate processes (default 2) using raw asyncio
protocols on uvloop; on a 2-core machine they share the CPU with the server.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import multiprocessing
import re
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import (
    Server,
    SSEProtocol,
    base_parser,
    check_url_args,
    cpu_seconds,
    go,
    load_cli_cmd,
    median,
    new_event_loop,
    open_server,
    open_sse,
    percentile,
    print_table,
    raise_fd_limit,
    request,
    start_session,
    wait_session,
    write_json,
)
from _profile import Profiler, hot_spots, print_hot_spots

HERE = Path(__file__).resolve().parent
BENCH = re.compile(rb"bench (\d+) (\d+)")
OUR_PATH = "/api/events?types=log:info"
BASELINE_PATH = "/events"
FINISHED = {"completed", "failed", "stopped"}


# ------------------------------------------------------------------ clients


class Sub:
    """One subscriber's tally; `on_frames` is the hot path of the client."""

    __slots__ = (
        "proc",
        "seen",
        "uniq",
        "received",
        "last_block",
        "lat",
        "reconnects",
        "done",
        "paced",
    )

    def __init__(self, proc: ClientProcess, lines: int, paced: bool) -> None:
        self.proc = proc
        self.seen = bytearray(lines + 1)
        self.uniq = 0
        self.received = 0
        self.last_block = b""  # the id is parsed from it only when reconnecting
        self.lat: array.array[int] = array.array("q")
        self.reconnects = 0
        self.done = False
        self.paced = paced

    @property
    def last_id(self) -> bytes | None:
        """The id of the last event received (for `Last-Event-ID`)."""
        block = self.last_block
        j = block.rfind(b"\nid: ")
        if j >= 0:
            j += 1
        elif block.startswith(b"id: "):
            j = 0
        return block[j + 4 : block.find(b"\n", j)] if j >= 0 else None

    def on_frames(self, block: bytes, now: int) -> None:
        found = BENCH.findall(block)
        if not found:
            return
        self.last_block = block
        proc = self.proc
        if not proc.first_ns:
            proc.first_ns = now
        proc.last_ns = now
        self.received += len(found)
        seen = self.seen
        limit = len(seen)
        for seq_text, emit_text in found:
            seq = int(seq_text)
            if seq < limit and not seen[seq]:
                seen[seq] = 1
                self.uniq += 1
                if self.paced:
                    self.lat.append(now - int(emit_text))
        if self.uniq == limit - 1 and not self.done:
            self.done = True
            proc.remaining -= 1


class ClientProcess:
    """The subscribers of one client process, and when to stop waiting for them."""

    def __init__(self, url: str, path: str, subs: int, lines: int, paced: bool) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = path
        self.subs = [Sub(self, lines, paced) for _ in range(subs)]
        self.remaining = subs
        self.first_ns = 0
        self.last_ns = 0
        self.stopping = False
        self.protos: dict[int, SSEProtocol] = {}
        self.errors: list[str] = []

    async def follow(self, sub: Sub, connected: asyncio.Event, gate: asyncio.Semaphore) -> None:
        try:
            async with gate:
                proto = await open_sse(self.host, self.port, self.path, sub.on_frames)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            connected.set()
        self.protos[id(sub)] = proto
        while True:
            await proto.closed
            if sub.done or self.stopping:
                return
            sub.reconnects += 1  # cut off as too slow: resume like EventSource does
            proto = await open_sse(
                self.host, self.port, self.path, sub.on_frames, last_event_id=sub.last_id
            )
            self.protos[id(sub)] = proto

    async def run(
        self, conn: Connection, start_timeout: float, idle_timeout: float, deadline: float
    ) -> dict[str, Any]:
        gate = asyncio.Semaphore(200)
        flags = [asyncio.Event() for _ in self.subs]
        tasks = [
            asyncio.create_task(self.follow(sub, flag, gate))
            for sub, flag in zip(self.subs, flags, strict=True)
        ]
        for flag in flags:
            await asyncio.wait_for(flag.wait(), 120)
        if self.errors:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise RuntimeError(
                f"{len(self.errors)} subscribers failed to connect: {self.errors[0]}"
            )
        conn.send(("ready", len(self.subs)))
        began = time.monotonic()
        cpu_began = time.process_time()
        while self.remaining:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - began > deadline:
                break
            if not self.first_ns:
                if now - began > start_timeout:
                    break
            elif time.time_ns() - self.last_ns > idle_timeout * 1e9:
                break
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proto in self.protos.values():
            proto.close()
        lat = array.array("q")
        for sub in self.subs:
            lat.extend(sub.lat)
        return {
            "subscribers": len(self.subs),
            "unique": sum(sub.uniq for sub in self.subs),
            "received": sum(sub.received for sub in self.subs),
            "complete": sum(sub.done for sub in self.subs),
            "reconnects": sum(sub.reconnects for sub in self.subs),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "lat": lat.tobytes(),
            "cpu_s": time.process_time() - cpu_began,
        }


def client_main(
    conn: Connection, url: str, path: str, subs: int, lines: int, paced: bool, deadline: float
) -> None:
    raise_fd_limit()
    loop = new_event_loop()
    client = ClientProcess(url, path, subs, lines, paced)
    try:
        result = loop.run_until_complete(
            client.run(conn, start_timeout=60, idle_timeout=10, deadline=deadline)
        )
        conn.send(("result", result))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


# ------------------------------------------------------------------- a run


class Target:
    """A server to measure: ours (sessions API) or the baseline (POST /start)."""

    def __init__(self, name: str, server: Server, path: str) -> None:
        self.name = name
        self.server = server
        self.path = path
        self.session_id: str | None = None

    def start(self) -> None:
        (self.server.loki_dir / ".bench-go").unlink(missing_ok=True)
        if self.name in ("baseline", "direct"):
            status, body = request(self.server.url, "POST", "/start")
            if status != 201:
                raise RuntimeError(f"baseline /start answered {status}: {body}")
        else:
            self.session_id = start_session(self.server.url)

    def wait_finished(self) -> None:
        deadline = time.monotonic() + 120
        if self.name in ("baseline", "direct"):
            while request(self.server.url, "GET", "/status")[1]["running"]:
                if time.monotonic() > deadline:
                    raise TimeoutError("baseline CLI still running")
                time.sleep(0.05)
        else:
            assert self.session_id is not None
            wait_session(self.server.url, self.session_id, FINISHED, timeout=120)


def run_once(
    target: Target,
    subs: int,
    lines: int,
    rate: float,
    processes: int,
    profile: Path | None = None,
    stream_urls: list[str] | None = None,
) -> dict[str, Any]:
    """One measurement. `stream_urls`: where the clients subscribe (round robin over the
    client processes) when that is not the server running the session (cluster nodes)."""
    stream_urls = stream_urls or [target.server.url]
    ctx = multiprocessing.get_context("fork")
    processes = max(1, min(processes, subs))
    shares = [subs // processes + (i < subs % processes) for i in range(processes)]
    deadline = 60 + (lines / rate if rate else lines * subs / 20_000)
    pipes, children = [], []
    for index, share in enumerate(shares):
        parent_end, child_end = ctx.Pipe()
        url = stream_urls[index % len(stream_urls)]
        child = ctx.Process(
            target=client_main,
            args=(child_end, url, target.path, share, lines, rate > 0, deadline),
        )
        child.start()
        pipes.append(parent_end)
        children.append(child)
    try:
        for pipe in pipes:
            if not pipe.poll(180):
                raise TimeoutError("clients did not connect")
            kind, value = pipe.recv()
            if kind != "ready":
                raise RuntimeError(f"client failed: {value}")
        pid = target.server.pid
        profiler = Profiler(pid, profile) if profile and pid else None
        if profiler:
            profiler.start()
        cpu_before = cpu_seconds(pid) if pid else float("nan")
        target.start()
        go(target.server.loki_dir, lines=lines, rate=rate)
        results = []
        for pipe in pipes:
            if not pipe.poll(deadline + 120):
                raise TimeoutError("clients never reported")
            kind, value = pipe.recv()
            if kind != "result":
                raise RuntimeError(f"client failed: {value}")
            results.append(value)
        cpu_used = cpu_seconds(pid) - cpu_before if pid else float("nan")
        if profiler:
            profiler.stop()
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    target.wait_finished()
    return summarise(results, subs, lines, rate, cpu_used)


def summarise(
    results: list[dict[str, Any]], subs: int, lines: int, rate: float, cpu_used: float
) -> dict[str, Any]:
    unique = sum(r["unique"] for r in results)
    received = sum(r["received"] for r in results)
    firsts = [r["first_ns"] for r in results if r["first_ns"]]
    lasts = [r["last_ns"] for r in results if r["last_ns"]]
    span = (max(lasts) - min(firsts)) / 1e9 if firsts else float("nan")
    out: dict[str, Any] = {
        "subscribers": subs,
        "lines": lines,
        "rate": rate,
        "expected": subs * lines,
        "unique": unique,
        "lost": subs * lines - unique,
        "duplicates": received - unique,
        "reconnects": sum(r["reconnects"] for r in results),
        "span_s": round(span, 3),
        "events_per_s": round(unique / span) if span and span == span else float("nan"),
        "server_cpu_s": round(cpu_used, 2),
        "client_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "server_us_per_event": round(cpu_used / unique * 1e6, 3) if unique else float("nan"),
    }
    if rate:
        lat = array.array("q")
        for r in results:
            lat.frombytes(r["lat"])
        values = sorted(lat)
        out["samples"] = len(values)
        out["p50_ms"] = round(percentile(values, 50) / 1e6, 2)
        out["p99_ms"] = round(percentile(values, 99) / 1e6, 2)
        out["max_ms"] = round(values[-1] / 1e6, 2) if values else float("nan")
    return out


# ------------------------------------------------------------------- main


def main() -> int:
    parser = base_parser("SSE fan-out throughput and latency (black box).")
    parser.add_argument("--subscribers", default="100,1000", help="comma list of subscriber counts")
    parser.add_argument("--lines", type=int, default=5000, help="lines per burst")
    parser.add_argument("--paced-lines", type=int, default=500, help="lines per paced run")
    parser.add_argument("--rate", type=float, default=50, help="paced lines per second")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--targets",
        default="ours,baseline",
        help="servers to measure: ours, baseline (the limit baseline), "
        "direct (the baseline writing without task wake-ups)",
    )
    parser.add_argument("--no-paced", action="store_true", help="skip the paced latency runs")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst runs")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the server during the first burst and paced run at the "
        "largest N; raw stacks go to this directory",
    )
    args = parser.parse_args()
    check_url_args(args)
    raise_fd_limit()
    counts = [int(n) for n in args.subscribers.split(",") if n.strip()]
    wanted = {t.strip() for t in args.targets.split(",")}
    servers, targets = [], []
    if "ours" in wanted:
        ours = open_server(args, "--cli", load_cli_cmd(), tag="fanout")
        servers.append(ours)
        targets.append(Target("ours", ours, OUR_PATH))
    if "baseline" in wanted:
        baseline = Server.scratch_server(
            [sys.executable, str(HERE / "baseline_server.py"), "--cli", load_cli_cmd()], "baseline"
        )
        servers.append(baseline)
        targets.append(Target("baseline", baseline, BASELINE_PATH))
    if "direct" in wanted:
        direct = Server.scratch_server(
            [sys.executable, str(HERE / "baseline_server.py"), "--direct", "--cli", load_cli_cmd()],
            "direct",
        )
        servers.append(direct)
        targets.append(Target("direct", direct, BASELINE_PATH))
    modes = ([] if args.no_burst else [("burst", args.lines, 0.0)]) + (
        [] if args.no_paced else [("paced", args.paced_lines, args.rate)]
    )
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        for mode, lines, rate in modes:
            for subs in counts:
                for run in range(args.runs):
                    for target in targets:
                        profile = None
                        if (
                            args.profile
                            and run == 0
                            and target.name == "ours"
                            and subs == max(counts)
                        ):
                            profile = args.profile / f"fanout-{mode}-{subs}.raw.txt"
                        result = run_once(target, subs, lines, rate, args.clients, profile)
                        result.update(target=target.name, mode=mode, run=run + 1)
                        runs.append(result)
                        print(
                            f"  {mode:5} {target.name:8} N={subs:<5} run {run + 1}: "
                            + ", ".join(
                                f"{k}={result[k]}"
                                for k in (
                                    "events_per_s",
                                    "lost",
                                    "reconnects",
                                    "span_s",
                                    "server_cpu_s",
                                    "client_cpu_s",
                                    "p50_ms",
                                    "p99_ms",
                                )
                                if k in result
                            ),
                            flush=True,
                        )
    summary = summarise_runs(runs, counts, [t.name for t in targets])
    if args.profile:
        for mode, _, _ in modes:
            raw = args.profile / f"fanout-{mode}-{max(counts)}.raw.txt"
            if raw.exists():
                spots = hot_spots(raw)
                summary.append({"profile": str(raw), "mode": mode, "hot_spots": spots})
                print(f"\n== {mode}, {max(counts)} subscribers")
                print_hot_spots(spots)
    write_json(args.json, "fanout", {"summary": summary, "runs": runs})
    return 0


def summarise_runs(
    runs: list[dict[str, Any]], counts: list[int], targets: list[str]
) -> list[dict[str, Any]]:
    """Medians per (mode, subscribers, target); ours/baseline ratio where both ran."""
    summary: list[dict[str, Any]] = []
    burst_rows, paced_rows = [], []
    for mode in ("burst", "paced"):
        for subs in counts:
            rates: dict[str, float] = {}
            costs: dict[str, float] = {}
            for target in targets:
                rs = [
                    r
                    for r in runs
                    if r["mode"] == mode and r["subscribers"] == subs and r["target"] == target
                ]
                if not rs:
                    continue
                row: dict[str, Any] = {
                    "mode": mode,
                    "subscribers": subs,
                    "target": target,
                    "runs": len(rs),
                    "events_per_s": median(r["events_per_s"] for r in rs),
                    "lost_max": max(r["lost"] for r in rs),
                    "duplicates_max": max(r["duplicates"] for r in rs),
                    "reconnects_max": max(r["reconnects"] for r in rs),
                    "server_cpu_s": median(r["server_cpu_s"] for r in rs),
                    "client_cpu_s": median(r["client_cpu_s"] for r in rs),
                    "server_us_per_event": median(r["server_us_per_event"] for r in rs),
                }
                rates[target] = row["events_per_s"]
                costs[target] = row["server_us_per_event"]
                if mode == "paced":
                    row["p50_ms"] = median(r["p50_ms"] for r in rs)
                    row["p99_ms"] = median(r["p99_ms"] for r in rs)
                    row["max_ms"] = max(r["max_ms"] for r in rs)
                    paced_rows.append(
                        [
                            subs,
                            target,
                            len(rs),
                            row["p50_ms"],
                            row["p99_ms"],
                            row["max_ms"],
                            row["lost_max"],
                            row["server_cpu_s"],
                            row["client_cpu_s"],
                        ]
                    )
                else:
                    burst_rows.append(
                        [
                            subs,
                            target,
                            len(rs),
                            row["events_per_s"],
                            row["lost_max"],
                            row["duplicates_max"],
                            row["reconnects_max"],
                            row["server_cpu_s"],
                            row["server_us_per_event"],
                        ]
                    )
                summary.append(row)
            if mode == "burst" and "ours" in rates and "baseline" in rates:
                ratio = round(rates["ours"] / rates["baseline"], 2)
                # Server CPU per delivered event: the ratio that does not depend on
                # how fast the clients (sharing the cores) can read.
                cpu_ratio = round(costs["baseline"] / costs["ours"], 2)
                summary.append(
                    {
                        "mode": "burst",
                        "subscribers": subs,
                        "ratio_to_baseline": ratio,
                        "cpu_ratio_to_baseline": cpu_ratio,
                    }
                )
                burst_rows.append([subs, "ratio", "", ratio, "", "", "", "", cpu_ratio])
    if burst_rows:
        print_table(
            "burst fan-out (medians; lost/dup/reconnects: worst run)",
            [
                "subs",
                "target",
                "runs",
                "events/s",
                "lost",
                "dup",
                "reconn",
                "srv cpu s",
                "srv us/event",
            ],
            burst_rows,
        )
    if paced_rows:
        print_table(
            "paced latency (medians of per-run percentiles; max: worst run)",
            [
                "subs",
                "target",
                "runs",
                "p50 ms",
                "p99 ms",
                "max ms",
                "lost",
                "srv cpu s",
                "cli cpu s",
            ],
            paced_rows,
        )
    return summary


if __name__ == "__main__":
    sys.exit(main())
