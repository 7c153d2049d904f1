"""Any node answers for any session: requests about another node's session go to that node.

`ClusterRouting` sits inside authentication (a refused client never reaches
it). A request under `/api/sessions/<id>` for a session this node does not
have, but the registry says another node owns, is sent to the owner by NATS
request-reply (`<cluster>.node.<node>.http`), and the owner's answer (status,
headers, body) is returned as it is. `POST /api/sessions` starts here when this
node has a free slot, else on the live node with the most free slots (the next
one if that one is full by now); 409 only when every node is full. An owner
that does not answer within 2 s is 503 `NODE_UNAVAILABLE`.

The owner runs a forwarded request through its own app below this layer,
marked `x-loki-forwarded` so it is never forwarded again. Whoever can publish
on the cluster's NATS subjects can therefore control sessions: NATS is the
cluster's trust boundary (use `--nats-creds` / TLS on shared NATS servers).
"""

from __future__ import annotations

import heapq
import logging
import re
from asyncio import gather
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import msgspec
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import error_response
from ..params import MAX_LIMIT
from ..routes.sessions import DEFAULT_LIMIT

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 2.0
FORWARDED = b"x-loki-forwarded"
MAX_BODY = 1024 * 1024 + 1  # the owner answers 413 for anything longer
SESSION_PATH = re.compile(r"/api/sessions/([^/]+)(?:/.*)?")
TASK_LISTS = frozenset({"/api/tasks", "/api/tasks/active", "/api/tasks/queue"})


class ForwardedRequest(msgspec.Struct, array_like=True):
    method: str
    path: str
    query: bytes
    content_type: bytes | None
    body: bytes
    origin: str


class ForwardedResponse(msgspec.Struct, array_like=True):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


_request_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(ForwardedRequest))
_response_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(ForwardedResponse))


def node_subject(cluster: str, node: str) -> str:
    return f"{cluster}.node.{node}.http"


class Forwarder:
    """Both ends of forwarding for one node: sends requests, and serves the ones sent to it."""

    def __init__(self, runtime: Runtime, node_id: str) -> None:
        self.runtime = runtime
        self.node_id = node_id
        self.app: ASGIApp | None = None  # the Starlette app (requests need scope["app"])
        self.inner: ASGIApp | None = None  # the layer below ClusterRouting
        self.forwarded = 0  # control and placement calls sent to other nodes
        self.served = 0  # calls other nodes sent here

    async def serve(self) -> None:
        """Answer requests other nodes forward to this one."""
        bus = self.runtime.cluster_bus
        assert bus is not None
        import anyio

        subject = node_subject(self.runtime.settings.cluster, self.node_id)
        while True:
            nc = bus.nc
            if nc is not None and bus.connected:
                try:
                    await nc.subscribe(subject, cb=self._handle)  # kept across reconnects
                    return
                except Exception as exc:
                    log.warning("cluster: cannot serve forwarded requests yet: %s", exc)
            await anyio.sleep(0.2)

    async def _handle(self, msg: Msg) -> None:
        try:
            request = _request_codec[1].decode(msg.data)
        except msgspec.DecodeError:
            return
        self.served += 1
        try:
            response = await self.run_locally(request)
            await msg.respond(_response_codec[0].encode(response))
        except Exception:  # the asker gets no answer (503 after its timeout), we go on
            log.exception("cluster: a forwarded %s %s failed", request.method, request.path)

    async def run_locally(self, request: ForwardedRequest) -> ForwardedResponse:
        if self.app is None or self.inner is None:
            return ForwardedResponse(status=503, headers=[], body=b"")
        headers = [(b"host", b"127.0.0.1"), (FORWARDED, request.origin.encode())]
        if request.content_type is not None:
            headers.append((b"content-type", request.content_type))
        headers.append((b"content-length", str(len(request.body)).encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.path.encode(),
            "root_path": "",
            "query_string": request.query,
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
            "app": self.app,
            "state": {},
        }
        status = 500
        out_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.inner(scope, replay(request.body), send)
        return ForwardedResponse(status=status, headers=out_headers, body=b"".join(chunks))

    async def forward(self, node: str, request: ForwardedRequest) -> ForwardedResponse | None:
        """The owner's answer, or None when it cannot be reached within FORWARD_TIMEOUT."""
        bus = self.runtime.cluster_bus
        nc = bus.nc if bus is not None else None
        if nc is None or not nc.is_connected:
            return None
        self.forwarded += 1
        try:
            reply = await nc.request(
                node_subject(self.runtime.settings.cluster, node),
                _request_codec[0].encode(request),
                timeout=FORWARD_TIMEOUT,
            )
            return _response_codec[1].decode(reply.data)
        except (NoRespondersError, NatsTimeout, TimeoutError, msgspec.DecodeError) as exc:
            log.info("cluster: node %s did not answer a forwarded request: %r", node, exc)
            return None


class ClusterRouting:
    """ASGI middleware: session requests go to the owner, starts go where there is room."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        assert runtime.forwarder is not None
        runtime.forwarder.inner = app
        self.forwarder = runtime.forwarder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(k == FORWARDED for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        registry = self.runtime.registry
        assert registry is not None
        path, method = scope["path"], scope["method"]
        if path == "/api/sessions" and method == "POST":
            if registry.capacity().free > 0:
                await self.app(scope, receive, send)
                return
            targets = sorted(
                (info for node, info in registry.live_nodes().items() if node != registry.node_id),
                key=lambda info: -info.free,
            )
            body = await read_body(receive)
            for info in targets:
                if info.free <= 0:
                    break
                answer = await self.forwarder.forward(info.node, self.request(scope, body))
                if answer is not None and answer.status != 409:
                    await respond(answer, send)
                    return
            await self.app(scope, replay(body), send)  # every node full: our own 409
            return
        if path in TASK_LISTS and method == "GET":
            await self.gather_tasks(scope, receive, send)
            return
        match = SESSION_PATH.fullmatch(path)
        if match is not None and self.runtime.store.get(match.group(1)) is None:
            owner = registry.owner(match.group(1))
            if owner is not None and owner != registry.node_id:
                body = await read_body(receive)
                answer = await self.forwarder.forward(owner, self.request(scope, body))
                if answer is None:
                    response = error_response(
                        503,
                        f"Node {owner}, which runs session {match.group(1)}, is unavailable",
                        "NODE_UNAVAILABLE",
                        {"node": owner, "sessionId": match.group(1)},
                    )
                    await response(scope, receive, send)
                    return
                await respond(answer, send)
                return
        await self.app(scope, receive, send)

    async def gather_tasks(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`/api/tasks`, `/active`, `/queue` over every live node, merged the same way everywhere.

        Each node answers for its own sessions; this node's answer comes first
        (a bad query gets its 4xx as it is). Lists are merged in node-id order:
        `/api/tasks` newest first by `createdAt`, the queue by priority, active
        tasks node after node. A node that does not answer is left out.
        """
        registry = self.runtime.registry
        assert registry is not None
        path = scope["path"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        limit, offset = DEFAULT_LIMIT, 0
        if path == "/api/tasks" and all(
            query.get(name, "0").isascii() and query.get(name, "0").isdigit()
            for name in ("limit", "offset")
        ):  # (else this node's own answer below is the 400 it deserves)
            # Every node's first offset+limit tasks hold the merged page.
            limit = min(int(query.get("limit", DEFAULT_LIMIT)), MAX_LIMIT)
            offset = int(query.get("offset", 0))
            if offset + limit > MAX_LIMIT:
                # A node answers at most MAX_LIMIT tasks per request: a page past them
                # could not be merged right, so say so rather than answer a wrong page.
                response = error_response(
                    400,
                    f"Across nodes, /api/tasks pages reach the first {MAX_LIMIT} tasks "
                    f"(offset + limit <= {MAX_LIMIT}); filter by status or session instead",
                    "BAD_REQUEST",
                    {"offset": offset, "limit": limit},
                )
                await response(scope, receive, send)
                return
            query.update(limit=str(offset + limit), offset="0")
        request = self.request(scope, b"")
        request.query = urlencode(query).encode()
        own = await self.forwarder.run_locally(request)
        if own.status != 200:
            await respond(own, send)
            return
        answers = {registry.node_id: own}
        others = [n for n in registry.live_nodes() if n != registry.node_id]
        for node, answer in zip(
            others, await gather(*(self.forwarder.forward(n, request) for n in others)), strict=True
        ):
            if answer is not None and answer.status == 200:
                answers[node] = answer
        bodies = [msgspec.json.decode(answers[node].body) for node in sorted(answers)]
        if path == "/api/tasks":
            merged = list(
                heapq.merge(
                    *(b["tasks"] for b in bodies),
                    key=lambda t: t.get("createdAt") or "",
                    reverse=True,
                )
            )
            total = sum(b["pagination"]["total"] for b in bodies)
            page = merged[offset : offset + limit]
            body: dict[str, Any] = {
                "tasks": page,
                "pagination": {
                    "total": total,
                    "limit": limit,
                    "offset": offset,
                    "hasMore": offset + len(page) < total,
                },
            }
        elif path == "/api/tasks/queue":
            queue = list(
                heapq.merge(*(b["tasks"] for b in bodies), key=lambda t: -(t.get("priority") or 0))
            )
            body = {"tasks": queue, "count": len(queue)}
        else:
            active = [task for b in bodies for task in b["tasks"]]
            body = {"tasks": active, "count": len(active)}
        merged_answer = ForwardedResponse(
            status=200,
            headers=[(b"content-type", b"application/json; charset=utf-8")],
            body=msgspec.json.encode(body),
        )
        await respond(merged_answer, send)

    def request(self, scope: Scope, body: bytes) -> ForwardedRequest:
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        return ForwardedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b""),
            content_type=content_type,
            body=body,
            origin=self.forwarder.node_id,
        )


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY or not message.get("more_body", False):
            break
    return b"".join(chunks)[:MAX_BODY]


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def respond(answer: ForwardedResponse, send: Send) -> None:
    headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
