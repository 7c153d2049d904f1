"""Connection abuse (SPEC §8): the request-head timeout and the per-address cap.

Two tiers. In process, on loopback, with the peer check behind its seam
(`ConnectionGuard.exempt`): 127.0.0.1 plays loopback and 127.0.0.2 a remote
peer. And as root, a real `loki serve --host 0.0.0.0` with a genuine
non-loopback peer: a network namespace joined to ours by a veth pair with
private test addresses (traffic stays inside the namespaces this test makes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from loki_api.connections import ConnectionGuard, guarded_protocol, peer_address
from loki_api.settings import Settings

from .support import ServerProcess, serve_in_process, wait_for

TOKEN = "c" * 32
ATTACKER = "127.0.0.2"  # "remote" for the seam; 127.0.0.1 stays loopback


def only_127_0_0_1_is_loopback(address: str) -> bool:
    return address == "127.0.0.1"


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset); never blocks.

    The in-process server runs on the test's own loop: a blocking read here would
    stop it from carrying out the very closes it has scheduled.
    """
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_guard_counts_per_address_and_exempts_loopback() -> None:
    guard = ConnectionGuard(per_address=2)
    assert all(guard.admit("127.0.0.1") for _ in range(10))  # loopback: never capped
    assert guard.admit("10.0.0.5") and guard.admit("10.0.0.5")
    assert not guard.admit("10.0.0.5") and guard.refused == 1
    assert guard.admit("10.0.0.6")  # another address has its own cap
    guard.release("10.0.0.5")
    assert guard.admit("10.0.0.5")
    assert dict(guard.open) == {"10.0.0.5": 2, "10.0.0.6": 1}


def test_peer_address_normalises_mapped_ipv4() -> None:
    class Transport:
        def __init__(self, peer: object) -> None:
            self.peer = peer

        def get_extra_info(self, name: str) -> object:
            return self.peer

    assert peer_address(Transport(("::ffff:10.1.2.3", 5, 0, 0))) == "10.1.2.3"  # type: ignore[arg-type]
    assert peer_address(Transport(("fe80::1%eth0", 5, 0, 0))) == "fe80::1"  # type: ignore[arg-type]
    assert peer_address(Transport(None)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.anyio
async def test_idle_sockets_over_the_cap_are_closed_and_others_are_served(
    loki_dir: Path, http: str
) -> None:
    guard = ConnectionGuard(head_timeout=30, per_address=5, exempt=only_127_0_0_1_is_loopback)
    settings = Settings(loki_dir=loki_dir, port=0)
    async with serve_in_process(settings, http=guarded_protocol(http, guard)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        idle = [connect_from(ATTACKER, port) for _ in range(40)]
        try:
            await wait_for(lambda: guard.refused == 35 and sum(map(closed_by_server, idle)) == 35)
            assert guard.open[ATTACKER] == 5
            assert sum(map(closed_by_server, idle)) == 35  # the five admitted stay open
            async with httpx.AsyncClient(base_url=srv.url, timeout=5) as client:
                assert (await client.get("/api/status")).status_code == 200
        finally:
            for sock in idle:
                sock.close()
        await wait_for(lambda: not guard.open)  # released as they close


async def closed_within(stream: anyio.abc.SocketStream, seconds: float) -> bool:
    """True if the server closes the connection within `seconds` (EOF or reset)."""
    with anyio.move_on_after(seconds):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.anyio
async def test_a_request_head_that_is_late_is_closed(loki_dir: Path, http: str) -> None:
    guard = ConnectionGuard(head_timeout=0.5, per_address=64)
    settings = Settings(loki_dir=loki_dir, port=0, keepalive=0.2)
    async with serve_in_process(settings, http=guarded_protocol(http, guard)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        async with (
            await anyio.connect_tcp("127.0.0.1", port) as slow,
            await anyio.connect_tcp("127.0.0.1", port) as stream,
        ):
            await stream.send(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            started = time.monotonic()
            with anyio.fail_after(5):
                for byte in b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n":
                    # One byte every 0.1 s: never a complete head in time.
                    await slow.send(bytes([byte]))
                    await anyio.sleep(0.1)
                    if guard.timed_out:
                        break
            assert guard.timed_out == 1
            assert 0.4 < time.monotonic() - started < 2.0
            assert await closed_within(slow, 2.0)
            # The stream sent its head in time: it outlives the timeout, pings flowing.
            assert (await stream.receive()).startswith(b"HTTP/1.1 200")
            assert not await closed_within(stream, 0.8)


@pytest.mark.anyio
async def test_a_kept_alive_connection_owes_its_next_head_in_time_too(loki_dir: Path) -> None:
    guard = ConnectionGuard(head_timeout=0.5, per_address=64)
    settings = Settings(loki_dir=loki_dir, port=0)
    async with serve_in_process(settings, http=guarded_protocol("httptools", guard)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as conn:
            await conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            with anyio.fail_after(5):
                assert (await conn.receive()).startswith(b"HTTP/1.1 200")
            await conn.send(b"GET /health/live HTTP/1.1\r\n")  # and the rest never comes
            assert await closed_within(conn, 2.0)
            assert guard.timed_out == 1


# ------------------------------------------------------------- a genuine remote peer


NETNS_CLIENT = r"""
import socket, sys, time
server, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((server, port))
    except BlockingIOError:
        pass
    socks.append(s)
time.sleep(1.5)  # the server closes what is over the cap
open_ = 0
for s in socks:
    s.setblocking(False)
    try:
        data = s.recv(1)
        closed = data == b""
    except BlockingIOError:
        closed = False
    except OSError:
        closed = True
    open_ += not closed
print(f"open {open_}", flush=True)
sys.stdin.read()  # hold them until told to go
"""


class Netns:
    """A network namespace with a veth pair to ours: host side .1, namespace side .2 and .3."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"lokitest{tag}"
        self.host_if, self.ns_if = f"lkh{tag}", f"lkn{tag}"
        octet = 16 + int(tag[:2], 16) % 200
        self.host_ip = f"10.254.{octet}.1"
        self.peer_ip, self.token_ip = f"10.254.{octet}.2", f"10.254.{octet}.3"

    def __enter__(self) -> Netns:
        for argv in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
            ["ip", "link", "set", self.ns_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            *self.inside(["ip", "addr", "add", f"{self.peer_ip}/24", "dev", self.ns_if]),
            *self.inside(["ip", "addr", "add", f"{self.token_ip}/24", "dev", self.ns_if]),
            *self.inside(["ip", "link", "set", self.ns_if, "up"]),
            *self.inside(["ip", "link", "set", "lo", "up"]),
        ):
            subprocess.run(argv, check=True, capture_output=True)
        return self

    def inside(self, argv: list[str]) -> list[list[str]]:
        return [["ip", "netns", "exec", self.name, *argv]]

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace for a remote peer")
    try:
        with Netns() as ns:
            yield ns
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")


def status_from(ns: Netns, source: str, url: str, token: str | None) -> int:
    auth = f", headers={{'Authorization': 'Bearer {token}'}}" if token else ""
    script = (
        f"import httpx; t = httpx.HTTPTransport(local_address={source!r}); "
        f"print(httpx.Client(transport=t).get({url!r}, timeout=5{auth}).status_code)"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_a_remote_peer_holding_1000_idle_sockets_locks_nobody_out(
    loki_dir: Path, netns: Netns
) -> None:
    args = ("--host", "0.0.0.0", "--token", TOKEN, "--head-timeout", "1")
    with ServerProcess(loki_dir, *args) as server:
        port = server.url.rsplit(":", 1)[1]
        remote_url = f"http://{netns.host_ip}:{port}/api/status"
        holder = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, "-c", NETNS_CLIENT]
            + [netns.host_ip, port, "1000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            line = holder.stdout.readline()
            # Over the cap: closed at once. Within it: closed by the head timeout later.
            assert line.startswith("open ") and int(line.split()[1]) <= 64, line
            started = time.monotonic()
            local = httpx.get(f"{server.url}/api/status", timeout=5)
            assert local.status_code == 200
            assert status_from(netns, netns.token_ip, remote_url, TOKEN) == 200
            assert status_from(netns, netns.token_ip, remote_url, None) == 401
            assert time.monotonic() - started < 20
        finally:
            holder.communicate(timeout=10)  # closes its stdin (it lets go) and its stdout
        assert "refused" in server.output()  # logged once, not per socket
