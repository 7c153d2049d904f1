"""Fuzz a live server from its own OpenAPI document with schemathesis.

    python scripts/fuzz_api.py                    # start a server, fuzz it, stop it
    python scripts/fuzz_api.py --max-examples 50  # more cases per operation
    python scripts/fuzz_api.py --url http://127.0.0.1:8420   # fuzz a running server

Starts `python -m loki_api serve --simulate --port 0` on 127.0.0.1 with a
throw-away `--loki-dir`, loads `/openapi.json` from it, and runs schemathesis'
examples, coverage, fuzzing and stateful (following the document's links,
e.g. start a session, then pause/stop it) phases against every REST operation,
then a short pass over `/api/events`, each stream read for at most a second.
A case fails on a 5xx, a status code the document does not list, a wrong
content type, a body (or stream message) that breaks its schema, or a method
the path does not serve that is not a 405 with a true `Allow`.
Exit code: schemathesis' (0 when nothing failed), or 2 when the
server did not start.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "unsupported_method",  # an undocumented method on a known path is 405 ...
        "allow_header_conformance",  # ... whose Allow lists exactly the documented methods
    ]
)
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
        env = {**os.environ, "LOKI_SIM_DELAY": "0.1"}
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


def schemathesis_command(
    url: str, args: argparse.Namespace, extra: list[str], *, stream: bool
) -> list[str]:
    """The REST pass (every operation but the stream), or the stream pass.

    The stream never ends by itself: schemathesis reads a `text/event-stream` until
    20 events arrive or the request timeout passes, so the stream pass uses a short
    timeout and no stateful phase (no links lead to the stream).
    """
    scope = (
        [
            "--include-path",
            "/api/events",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(args.stream_examples),
            "--request-timeout",
            "1",
        ]
        if stream
        else [
            "--exclude-path",
            "/api/events",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(args.max_examples),
            "--request-timeout",
            "10",
        ]
    )
    return [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--url",
        url,
        "--checks",
        CHECKS,
        *scope,
        "--workers",
        str(args.workers),
        "--generation-database",
        "none",
        "--no-color",
        *(["--seed", str(args.seed)] if args.seed is not None else []),
        *extra,
    ]


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
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int)
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
            # REST first: the sessions it starts fill the history the stream pass replays.
            code = subprocess.call(schemathesis_command(url, args, extra, stream=False), cwd=work)
            print_event_counts(url)
            print("fuzz: the event stream", flush=True)
            code = (
                subprocess.call(schemathesis_command(url, args, extra, stream=True), cwd=work)
                or code
            )
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
