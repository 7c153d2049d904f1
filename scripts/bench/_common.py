"""Shared plumbing for the black-box benchmark scripts in this folder.

Everything here talks to a server only the way any client could: HTTP over a
socket, the state directory, and the process id when we started the server
ourselves (for RSS and CPU readings from /proc). Nothing imports `loki_api`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
LOAD_CLI = HERE / "load_cli.py"
URL_LINE = re.compile(r"url\s+(https?://\S+)")
GO_FILE = ".bench-go"


# ----------------------------------------------------------------- arguments


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument(
        "--loki-dir", type=Path, help="the server's --loki-dir (required with --url)"
    )
    parser.add_argument("--pid", type=int, help="the server's pid with --url (for /proc readings)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    return parser


def check_url_args(args: argparse.Namespace) -> None:
    if args.url and not args.loki_dir:
        sys.exit("--url needs --loki-dir (the server's state directory)")


# -------------------------------------------------------------- fd limits


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ servers


class Server:
    """A server process this script started (or one given by --url).

    `start()` launches `cmd` with `--port 0 --loki-dir DIR` appended, waits for
    the banner line `  url  http://...`, then for `/health/live` (or `ready_path`).
    """

    def __init__(
        self,
        cmd: Sequence[str],
        loki_dir: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/health/live",
        timeout: float = 30.0,
    ) -> None:
        self.cmd = list(cmd)
        self.loki_dir = loki_dir
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.pid: int | None = None
        self.log_path = loki_dir.parent / f"{loki_dir.name}-server.log"
        self._log_from = 0
        self.scratch: Path | None = None  # a temp dir of ours, removed after a clean exit

    @classmethod
    def external(cls, url: str, loki_dir: Path, pid: int | None) -> Server:
        server = cls([], loki_dir)
        server.url = url.rstrip("/")
        server.pid = pid
        return server

    def start(self) -> Server:
        raise_fd_limit()
        self.loki_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop() or kill()
        self._log_from = self._log.tell()  # this run's banner, not an earlier run's
        self.proc = subprocess.Popen(
            [*self.cmd, "--port", "0", "--loki-dir", str(self.loki_dir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + self.timeout
        while not self.url:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server printed no url line:\n{self.output()}")
            match = URL_LINE.search(self.output()[self._log_from :])
            if match:
                self.url = match.group(1)
            else:
                time.sleep(0.02)
        while True:
            try:
                if request(self.url, "GET", self.ready_path, timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server never answered {self.ready_path}:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Children (sessions) run in their own process groups; the load CLI
        # bounds its own lifetime, so nothing is left for long.
        self._log.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server (not its sessions: they run in their own process groups)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self._log.close()
        self.proc = None
        self.url = ""

    def __enter__(self) -> Server:
        return self if self.proc is not None or not self.cmd else self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if self.scratch is None:
            return
        if exc_type is None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        else:
            print(f"server log kept: {self.log_path}", file=sys.stderr)

    @classmethod
    def scratch_server(
        cls, cmd: Sequence[str], tag: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> Server:
        """A server with a fresh `--loki-dir` under a temp dir, removed after a clean exit."""
        scratch = Path(tempfile.mkdtemp(prefix=f"loki-{tag}-"))
        server = cls(cmd, scratch / "project", env=env, **kwargs)
        server.scratch = scratch
        return server


def loki_server_cmd(*extra: str) -> list[str]:
    """`python -m loki_api serve` with the interpreter running this script."""
    return [sys.executable, "-m", "loki_api", "serve", *extra]


def load_cli_cmd() -> str:
    return shlex.join([sys.executable, str(LOAD_CLI)])


def open_server(
    args: argparse.Namespace, *extra: str, env: dict[str, str] | None = None, tag: str = "bench"
) -> Server:
    """The server under test: `--url` if given, else a fresh one in a temp dir."""
    if args.url:
        return Server.external(args.url, args.loki_dir, args.pid)
    return Server.scratch_server(loki_server_cmd(*extra), tag, env=env)


# ------------------------------------------------------------------- HTTP


def request(
    url: str, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One HTTP request with the standard library; returns (status, decoded JSON or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        return _send(conn, method, path, body)
    finally:
        conn.close()


class Http:
    """A keep-alive HTTP/1.1 connection for a sequence of small requests."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return _send(self.conn, method, path, body)

    def close(self) -> None:
        self.conn.close()


def _send(conn: http.client.HTTPConnection, method: str, path: str, body: Any) -> tuple[int, Any]:
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def start_session(url: str, timeout: float = 30.0) -> str:
    """`POST /api/sessions {}` until it is accepted (a previous one may still be ending)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = request(url, "POST", "/api/sessions", {})
        if status == 201:
            return str(body["sessionId"])
        if status != 409 or time.monotonic() > deadline:
            raise RuntimeError(f"POST /api/sessions answered {status}: {body}")
        time.sleep(0.05)


class SessionGroups:
    """The process groups of sessions this script started, ended when it ends.

    A session runs in its own process group (its launcher's pid), so it outlives
    a node that is SIGKILLed, or stopped without `--stop-sessions-on-exit`.
    """

    def __init__(self) -> None:
        self.pgids: list[int] = []

    def add(self, url: str, session_id: str, timeout: float = 10.0) -> None:
        """Note the process group of `session_id`, as its owner `url` reports it."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = request(url, "GET", f"/api/sessions/{session_id}")
            pid = body.get("session", {}).get("pid") if status == 200 else None
            if pid:
                self.pgids.append(int(pid))
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id} has no pid: {status} {body}")
            time.sleep(0.02)

    def end(self, grace: float = 5.0) -> None:
        """SIGTERM every group still there, SIGKILL what is left after `grace` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [pgid for pgid in self.pgids if _signal_group(pgid, sig)]
            deadline = time.monotonic() + grace
            while alive and time.monotonic() < deadline:
                time.sleep(0.05)
                alive = [pgid for pgid in alive if _signal_group(pgid, 0)]
            if not alive:
                return


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours (the pid was reused by now)
    return True


def session_status(url: str, session_id: str) -> str:
    status, body = request(url, "GET", f"/api/sessions/{session_id}")
    if status != 200:
        raise RuntimeError(f"GET /api/sessions/{session_id} answered {status}: {body}")
    return str(body["session"]["status"])


def wait_session(
    url: str,
    session_id: str,
    statuses: Iterable[str],
    timeout: float = 60.0,
    interval: float = 0.02,
) -> str:
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        status = session_status(url, session_id)
        if status in wanted:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id} stayed {status}, wanted {sorted(wanted)}")
        time.sleep(interval)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def go(loki_dir: Path, **params: Any) -> None:
    """Release the load CLI waiting in `loki_dir` with these parameters."""
    write_atomic(loki_dir / GO_FILE, json.dumps(params).encode())


# ---------------------------------------------------------------- SSE client


class SSEProtocol(asyncio.Protocol):
    """A lean HTTP/1.1 SSE client: de-chunks the body and hands over whole frames.

    `on_frames(block, recv_ns)` gets a bytes block holding one or more complete
    `\\n\\n`-terminated frames, stamped with the wall clock of the read that
    completed them. Parsing is left to the caller so it parses only what it needs.
    """

    def __init__(self, request_bytes: bytes, on_frames: Callable[[bytes, int], None]) -> None:
        self.request_bytes = request_bytes
        self.on_frames = on_frames
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._head = b""
        self._chunked = False
        self._in_body = False
        self._cbuf = b""
        self._left = 0
        self._skip = 0
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request_bytes)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            self._in_body = True
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    self._chunked = True
            if not self.opened.done():
                self.opened.set_result(self.status)
            if self.status != 200:
                self.transport.close()  # type: ignore[union-attr]
                return
        if self._chunked:
            data = self._dechunk(data)
        text = self._tail + data if self._tail else data
        end = text.rfind(b"\n\n")
        if end < 0:
            self._tail = text
            return
        self._tail = text[end + 2 :]
        self.on_frames(text[: end + 2], now)

    def _dechunk(self, data: bytes) -> bytes:
        if not (self._cbuf or self._left or self._skip):
            # The common case: a read holding exactly one whole chunk.
            eol = data.find(b"\r\n")
            if 0 < eol < 10 and data[0] != 48:  # not the closing "0" chunk
                end = eol + 2 + int(data[:eol], 16)
                if len(data) == end + 2:
                    return data[eol + 2 : end]
        buf = self._cbuf + data if self._cbuf else data
        out = []
        pos, n = 0, len(buf)
        while pos < n:
            if self._left:
                take = min(self._left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._skip = 2
            elif self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    pos = n
                    break
                self._left = size
        self._cbuf = buf[pos:]
        return b"".join(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the response"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def sse_request(host: str, port: int, path: str, last_event_id: bytes | None = None) -> bytes:
    extra = b"Last-Event-ID: " + last_event_id + b"\r\n" if last_event_id else b""
    return (
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: "
        + f"{host}:{port}".encode()
        + b"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        + extra
        + b"\r\n"
    )


async def open_sse(
    host: str,
    port: int,
    path: str,
    on_frames: Callable[[bytes, int], None],
    last_event_id: bytes | None = None,
    timeout: float = 30.0,
) -> SSEProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(
            lambda: SSEProtocol(sse_request(host, port, path, last_event_id), on_frames), host, port
        ),
        timeout,
    )
    status = await asyncio.wait_for(protocol.opened, timeout)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")
    return protocol


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available, like the server under test."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# ------------------------------------------------------------------- /proc


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a process now (`VmRSS`), or its peak so far (`VmHWM`)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ------------------------------------------------------------------ numbers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, int(round(q / 100 * len(values) + 0.5)) - 1))
    return values[rank]


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("uvicorn", "uvloop", "httptools", "starlette", "msgspec", "anyio"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "versions": versions,
    }


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[fmt(cell) for cell in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
        for i, h in enumerate(header)
    ]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: Path | None, name: str, results: Any) -> None:
    if path is None:
        return
    path.write_text(
        json.dumps({"benchmark": name, "machine": machine(), "results": results}, indent=2) + "\n"
    )
    print(f"\nwrote {path}")
