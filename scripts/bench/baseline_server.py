"""The fan-out limit baseline: the least a uvicorn SSE server can do per event.

Same uvicorn, httptools and uvloop as the real server, but no bus, no filters,
no JSON encoding, no line parsing: the app runs the load CLI itself, wraps each
stdout line in a pre-built SSE frame of the real envelope's shape and size,
appends it to every client's pending list, and each client's writer sends
whatever is pending in one write. `fanout.py` measures the real server as a
ratio of this.

`--direct` is an experiment, not a baseline: the fan-out loop itself writes
one pre-framed chunk to each idle stream's uvicorn transport (no writer-task
wake-up, no ASGI send per stream per event): the floor for one Python thread
on this stack, which shows what is left for the server to win.

    python baseline_server.py --port 0 --loki-dir DIR --cli "python load_cli.py"

Routes: `GET /events` (the stream), `POST /start` (run the CLI once),
`GET /status` (`{"running": bool}`), `GET /health/live`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import sys
import time
from typing import Any

import uvicorn

Scope = dict[str, Any]


class Client:
    __slots__ = ("pending", "wakeup", "closed", "send", "cycle")

    def __init__(self, send: Any) -> None:
        self.pending: list[bytes] = []
        self.wakeup = asyncio.Event()
        self.closed = False
        self.send = send
        # uvicorn's RequestResponseCycle when `send` is its bound method (direct mode).
        self.cycle = getattr(send, "__self__", None)


class Baseline:
    def __init__(self, cli: list[str], loki_dir: str, direct: bool = False) -> None:
        self.cli = cli
        self.loki_dir = loki_dir
        self.direct = direct
        self.clients: set[Client] = set()
        self.seq = 0
        self.running = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            for client in self.clients:
                client.closed = True
                client.wakeup.set()
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        if path == "/events" and method == "GET":
            await self.stream(receive, send)
        elif path == "/start" and method == "POST":
            if self.running:
                await reply(send, 409, {"error": "running"})
                return
            self.running = True
            task = asyncio.get_running_loop().create_task(self.run_cli())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await reply(send, 201, {"sessionId": "baseline", "status": "starting"})
        elif path == "/status":
            await reply(send, 200, {"running": self.running, "clients": len(self.clients)})
        elif path == "/health/live":
            await reply(send, 200, {"alive": True})
        else:
            await reply(send, 404, {"error": "not found"})

    async def stream(self, receive: Any, send: Any) -> None:
        client = Client(send)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b": connected\nretry: 3000\n\n",
                "more_body": True,
            }
        )
        self.clients.add(client)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            client.closed = True
            client.wakeup.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            while not client.closed:
                await client.wakeup.wait()
                client.wakeup.clear()
                if client.pending:
                    frames, client.pending = client.pending, []
                    await send(
                        {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
                    )
        finally:
            self.clients.discard(client)
            watcher.cancel()

    async def run_cli(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.cli,
                "start",
                cwd=self.loki_dir,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "LOKI_DIR": self.loki_dir, "LOKI_SESSION_ID": "baseline"},
            )
            assert proc.stdout is not None
            rest = b""
            while chunk := await proc.stdout.read(65536):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                self.fan_out(lines)
            if rest:
                self.fan_out([rest])
            await proc.wait()
        finally:
            self.running = False

    def fan_out(self, lines: list[bytes]) -> None:
        now = time.time()
        ms = int(now * 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
        frames = []
        for line in lines:
            if not line:
                continue
            self.seq += 1
            ident = b"evt_%d_%d" % (self.seq, ms)
            message = line.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            frames.append(
                b'id: %s\nevent: log:info\ndata: {"id":"%s","type":"log:info","timestamp":'
                b'"%s.000Z","sessionId":"session_1732341234567_ab12cd34","data":{"level":'
                b'"info","message":"%s","source":"stdout"}}\n\n' % (ident, ident, stamp, message)
            )
        if self.direct:
            self.write_directly(frames)
            return
        for client in self.clients:
            if not client.pending:
                client.wakeup.set()
            client.pending.extend(frames)

    def write_directly(self, frames: list[bytes]) -> None:
        """Write to every idle stream's transport from here: no task, no ASGI send.

        The body is framed as one HTTP/1.1 chunk once, and the same bytes go to
        every stream whose transport is not paused: the least a single-threaded
        Python server on this stack can do per subscriber. A paused stream (or
        one with a backlog) gets the frames queued for its task.
        """
        body = b"".join(frames)
        data = b"%x\r\n%s\r\n" % (len(body), body)
        for client in self.clients:
            cycle = client.cycle
            if client.pending or cycle is None or cycle.flow.write_paused or client.closed:
                if not client.pending:
                    client.wakeup.set()
                client.pending.extend(frames)
                continue
            if not cycle.disconnected:
                cycle.transport.write(data)


async def reply(send: Any, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loki-dir", required=True)
    parser.add_argument("--cli", required=True)
    parser.add_argument(
        "--direct",
        action="store_true",
        help="write to idle streams from the fan-out loop (no task wake-ups)",
    )
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    app = Baseline(shlex.split(args.cli), os.path.abspath(args.loki_dir), direct=args.direct)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    print(f"baseline SSE server\n  url        http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
