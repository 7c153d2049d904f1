"""Test helpers: a real server process on a free port, and a minimal SSE reader.

The SSE reader here is deliberately independent of the SDK's decoder, so server
tests do not trust the code they are meant to check.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

# The banner's URL, as text (`url  http://...`) or as JSON (`"url": "http://..."`).
URL_LINE = re.compile(r'url"?:?\s+"?(https?://[^\s"]+)')


class ServerProcess:
    """`python -m loki_api serve --port 0 ...` as a child process.

    Waits until the banner names the URL and `/health/live` answers.
    """

    def __init__(
        self,
        loki_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        startup_timeout: float = 20.0,
        verify: bool = True,
    ) -> None:
        self.loki_dir = loki_dir
        self.verify = verify  # False for a self-signed test certificate
        self.args = args
        self.env = {**os.environ, "LOKI_SIM_DELAY": "0.02", **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        # Unique per instance (id() can repeat once an earlier instance is gone, and
        # then the banner of a dead server would be read as this one's).
        self.log_path = loki_dir.parent / f"server-{uuid.uuid4().hex}.log"

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loki_api",
                "serve",
                "--port",
                "0",
                "--loki-dir",
                str(self.loki_dir),
                *self.args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while not self.url:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not print its URL:\n{self.output()}")
            match = URL_LINE.search(self.output())
            if match:
                self.url = match.group(1)
            else:
                time.sleep(0.02)
        while True:
            try:
                live = httpx.get(f"{self.url}/health/live", timeout=1, verify=self.verify)
                if live.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not become live:\n{self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server ignored signal {sig}:\n{self.output()}") from None
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


@dataclass
class SSEMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SSEReader:
    """Reads an SSE response into messages; comments are kept in `comments`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry: int | None = None
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> SSEMessage:
        """The next message with data (comments are collected on the way)."""
        with anyio.fail_after(timeout):
            msg = SSEMessage()
            async for line in self._lines:
                if line == "":
                    if msg.data or msg.id is not None:
                        return msg
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    msg.event = value
                elif name == "data":
                    msg.data = f"{msg.data}\n{value}" if msg.data else value
                elif name == "id":
                    msg.id = value
                elif name == "retry":
                    self.retry = int(value)
            raise EOFError("stream ended")

    async def until(
        self, predicate: Callable[[SSEMessage], bool], timeout: float = 10.0
    ) -> list[SSEMessage]:
        """Read messages until one matches; returns all read, the match last."""
        seen: list[SSEMessage] = []
        with anyio.fail_after(timeout):
            while True:
                msg = await self.next(timeout)
                seen.append(msg)
                if predicate(msg):
                    return seen


@asynccontextmanager
async def sse_stream(
    url: str,
    path: str = "/api/events",
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> AsyncIterator[SSEReader]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0)) as client:
        async with client.stream("GET", path, headers=headers, params=params) as response:
            assert response.status_code == 200, await response.aread()
            yield SSEReader(response)


async def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    with anyio.fail_after(timeout):
        while True:
            value = condition()
            if value:
                return value
            await anyio.sleep(interval)


@dataclass
class InProcessServer:
    url: str
    runtime: Any  # loki_api.runtime.Runtime
    server: Any  # loki_api.serve.LokiServer


@asynccontextmanager
async def serve_in_process(settings: Any, http: Any = "auto") -> AsyncIterator[InProcessServer]:
    """Run the real app under uvicorn on a free port inside the test's event loop.

    The test can reach `runtime.bus` directly (to publish events) while talking
    to the server over real HTTP. `http` is uvicorn's HTTP protocol (`h11`, or a class).
    """
    import socket

    import uvicorn

    from loki_api.app import create_app
    from loki_api.runtime import Runtime
    from loki_api.serve import LokiServer

    runtime = Runtime(settings)
    app = create_app(settings, runtime)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", settings.port))
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5, http=http
    )
    server = LokiServer(config, runtime)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.005)
        try:
            yield InProcessServer(url, runtime, server)
        finally:
            server.should_exit = True
    sock.close()


@asynccontextmanager
async def asgi_client(runtime: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of an app around `runtime`, with the runtime running.

    ASGITransport does not run the lifespan, so the runtime (watcher included) runs around it.
    """
    from loki_api.app import create_app

    app = create_app(runtime.settings, runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with runtime.run():
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8420") as c:
            yield c
