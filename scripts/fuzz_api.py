"""Fuzz a live server from its own OpenAPI document with schemathesis, `--checks all`.

    python scripts/fuzz_api.py                    # start a server, fuzz it, stop it
    python scripts/fuzz_api.py --max-examples 50  # more cases per operation
    python scripts/fuzz_api.py --url http://127.0.0.1:8420   # fuzz a running server
    scripts/fuzz_long                             # the long run (random seed)

Starts `python -m loki_api serve --simulate --port 0` on 127.0.0.1 with a
throw-away `--loki-dir`, loads `/openapi.json` from it, and runs all four of
schemathesis' phases with every check (`--checks all`; settings in
`scripts/schemathesis.toml`): examples, coverage and fuzzing over every REST
operation; the stateful phase, which follows the document's links (start a
session, then pause/resume/input/stop it, read its tasks, delete it; a 409 at
the session limit leads to the session in the way); and, alongside those two, a
pass over `/api/events`, each stream read until a second of silence (it mostly
waits, so it runs beside them rather than after). It prints what the stateful
pass reached, as `operation status: count` (`--summary` writes it as JSON).
A case fails on a 5xx, a status code the document does not list, a wrong
content type, a body (or stream message) that breaks its schema, an invalid
request accepted or a valid one refused, or a method the path does not serve
that is not a 405 with a true `Allow`. Exit code: schemathesis' (0 when nothing
failed), 1 when the server logged a traceback, 2 when the server did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

CHECKS = "all"
CONFIG = Path(__file__).with_name("schemathesis.toml")
URL_LINE = re.compile(r"url\s+(https?://\S+)")
PRD = "# Fuzzing PRD\n\n## Build\n\n- write the code\n- test the code\n"


class Server:
    """A `loki serve --simulate` child on a free loopback port."""

    def __init__(self, loki_dir: Path, log_path: Path) -> None:
        self.loki_dir = loki_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        env = {**os.environ, "LOKI_SIM_DELAY": "0.3"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "loki_api",
                    "serve",
                    "--simulate",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--loki-dir",
                    str(self.loki_dir),
                    "--stop-grace",
                    "2",
                    "--stop-sessions-on-exit",
                    "--max-sessions",
                    "3",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            match = URL_LINE.search(self.output())
            if match and self._live(match.group(1)):
                self.url = match.group(1)
                return self.url
            time.sleep(0.05)
        raise TimeoutError(f"server did not come up in {timeout:.0f}s:\n{self.output()}")

    @staticmethod
    def _live(url: str) -> bool:
        try:
            return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to the group if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# The passes: (name, operations, phases, how many cases: an attribute of args).
# The stream pass runs beside the other two: it mostly waits (each valid stream is
# read until its timeout), and the sessions the REST passes start fill the history
# it replays and send live events to the streams it holds open. The REST passes run
# one after the other; the stateful phase has its own number of scenarios: a scenario
# follows the document's links from a started session to pause/resume/input/stop and tasks.
STREAM_PASS = ("stream", "stream", ("examples", "coverage", "fuzzing"), "stream_examples")
PASSES = (
    ("rest", "rest", ("examples", "coverage", "fuzzing"), "max_examples"),
    ("stateful", "rest", ("stateful",), "stateful_examples"),
)


def schemathesis_command(
    url: str,
    args: argparse.Namespace,
    extra: list[str],
    operations: str,
    phases: list[str],
    examples: int,
) -> list[str]:
    """One schemathesis run over the REST operations (all but the stream) or the stream.

    The stream never ends by itself: schemathesis reads a `text/event-stream` until
    20 events arrive or the request timeout passes, so the stream pass uses a short
    timeout (and no stateful phase: no links lead to the stream).
    """
    scope = (
        ["--include-path", "/api/events", "--request-timeout", str(args.stream_timeout)]
        if operations == "stream"
        else ["--exclude-path", "/api/events", "--request-timeout", "10"]
    )
    return [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--url",
        url,
        "--checks",
        CHECKS,
        "--phases",
        ",".join(phases),
        "--max-examples",
        str(examples),
        *scope,
        "--workers",
        str(args.workers),
        "--generation-database",
        "none",
        "--no-color",
        *(["--seed", str(args.seed)] if args.seed is not None else []),
        *extra,
    ]


def operations_reached(spec: dict[str, Any], har_path: Path) -> dict[str, int]:
    """How often each operation answered each status, from the REST pass's HAR log:
    `{"pauseSession 200": 3, ...}`. Shows whether the stateful phase got past
    validation to real sessions (random ids only ever meet 404)."""
    templates = [
        (method.upper(), re.compile(re.sub(r"\{[^}/]+\}", "[^/]+", path)), op["operationId"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    ]
    counts: dict[str, int] = {}
    try:
        entries = json.loads(har_path.read_text())["log"]["entries"]
    except (OSError, ValueError, KeyError):
        return counts
    for entry in entries:
        method = entry["request"]["method"]
        path = urlsplit(entry["request"]["url"]).path
        for template_method, pattern, operation in templates:
            if method == template_method and pattern.fullmatch(path):
                key = f"{operation} {entry['response']['status']}"
                counts[key] = counts.get(key, 0) + 1
                break
    return dict(sorted(counts.items()))


def stop_sessions(url: str, timeout: float = 15.0) -> None:
    """Stop every session still under way, so the next pass starts below the limit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sessions = httpx.get(f"{url}/api/sessions", timeout=5).json()["sessions"]
        except (httpx.HTTPError, ValueError, KeyError):
            return
        active = [s["id"] for s in sessions if s["status"] in ("starting", "running", "paused")]
        if not active:
            return
        for session_id in active:
            httpx.post(f"{url}/api/sessions/{session_id}/stop", timeout=5)
        time.sleep(0.2)


def print_event_counts(url: str) -> None:
    """What the fuzzing made the sessions do: how far it got past validation."""
    try:
        by_type = httpx.get(f"{url}/api/events/stats", timeout=5).json()["byType"]
    except (httpx.HTTPError, ValueError, KeyError):
        return
    counts = ", ".join(
        f"{name} {count}" for name, count in sorted(by_type.items()) if name.startswith("session:")
    )
    print(f"fuzz: session events published: {counts or 'none'}", flush=True)


def server_problems(log: str) -> list[str]:
    """Lines of the server log that point at a bug whatever the status code was."""
    return [line for line in log.splitlines() if "Traceback" in line or "unhandled error" in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other arguments are passed to `schemathesis run`.",
    )
    parser.add_argument("--url", help="fuzz this running server instead of starting one")
    parser.add_argument(
        "--max-examples", type=int, default=25, help="cases per operation in the fuzzing phase (25)"
    )
    parser.add_argument(
        "--stream-examples",
        type=int,
        default=5,
        help="cases for /api/events, each read for up to 1 s (5)",
    )
    parser.add_argument(
        "--stream-timeout",
        type=float,
        default=1.0,
        help="seconds of silence after which a stream case stops reading (1)",
    )
    parser.add_argument(
        "--stateful-examples",
        type=int,
        default=50,
        help="scenarios of the stateful phase, each a chain of linked calls (50)",
    )
    parser.add_argument(
        "--phases",
        default="examples,coverage,fuzzing,stateful",
        help="schemathesis phases to run (all four)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--summary", type=Path, help="write what the stateful pass reached (JSON) to this file"
    )
    args, extra = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory(prefix="loki-fuzz-") as tmp:
        work = Path(tmp)
        server: Server | None = None
        url = args.url
        if url is None:
            loki_dir = work / "project"
            loki_dir.mkdir()
            (loki_dir / "prd.md").write_text(PRD)
            server = Server(loki_dir, work / "server.log")
            try:
                url = server.start()
            except (RuntimeError, TimeoutError) as exc:
                server.stop()
                print(f"fuzz: {exc}", file=sys.stderr)
                return 2
            print(f"fuzz: server at {url}, loki dir {loki_dir}", flush=True)
        try:
            code = 0
            wanted = set(args.phases.split(","))

            def command(name: str, operations: str, phases: list[str], examples: str) -> list[str]:
                report = ["--report", "har", "--report-har-path", str(work / f"{name}.har")]
                return schemathesis_command(
                    url, args, [*extra, *report], operations, phases, getattr(args, examples)
                )

            stream: subprocess.Popen[bytes] | None = None
            stream_out = work / "stream.out"
            name, operations, phases, examples = STREAM_PASS
            stream_phases = [phase for phase in phases if phase in wanted]
            if stream_phases:
                print(f"fuzz: the stream pass ({', '.join(stream_phases)}), alongside", flush=True)
                with open(stream_out, "wb") as out:
                    stream = subprocess.Popen(
                        command(name, operations, stream_phases, examples),
                        cwd=work,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
            try:
                for name, operations, phases, examples in PASSES:
                    run_phases = [phase for phase in phases if phase in wanted]
                    if not run_phases:
                        continue
                    if name == "stateful":
                        stop_sessions(url)  # its scenarios start sessions of their own
                    print(f"fuzz: the {name} pass ({', '.join(run_phases)})", flush=True)
                    code = (
                        subprocess.call(command(name, operations, run_phases, examples), cwd=work)
                        or code
                    )
                    if name == "stateful":
                        spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
                        reached = operations_reached(spec, work / f"{name}.har")
                        print(
                            f"fuzz: the stateful pass reached (operation status: count): {reached}"
                        )
                        if args.summary is not None:
                            args.summary.write_text(json.dumps(reached, indent=1) + "\n")
            finally:
                if stream is not None:
                    code = stream.wait() or code
                    print("fuzz: the stream pass:", flush=True)
                    print(stream_out.read_text(errors="replace"), flush=True)
            print_event_counts(url)
        finally:
            if server is not None:
                server.stop()
        if server is not None:
            problems = server_problems(server.output())
            if problems:
                print("fuzz: the server logged errors:\n" + server.output(), file=sys.stderr)
                code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
