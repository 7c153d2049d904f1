"""Connection abuse guard: a request-head timeout and a per-address connection cap (SPEC §8).

uvicorn times out idle keep-alive connections, but not a connection that is
still sending its request head: 1,100 connections dribbling one byte a second
were never closed, and every normal request then got a reset. So each
connection gets `head_timeout` seconds (10) to deliver a complete request head
whenever it owes one (on connecting, and again after each response while no
request is in flight); a connection that is late is closed (slowloris).
Connections from one non-loopback address are capped (`per_address`, 64):
the next one is closed at once, so an unauthenticated remote peer cannot hold
the server's sockets hostage. Loopback peers are never capped, and a cap is
per address, so one address's idle sockets never lock out another's clients
(nor loopback, nor a token holder elsewhere).

It is a subclass of uvicorn's HTTP protocol (httptools or h11), made per
server by `guarded_protocol`, since only the protocol sees a connection before
its request head is complete. The hooks used (`connection_made`,
`connection_lost`, `on_headers_complete`, `handle_events`,
`on_response_complete`) are uvicorn's protocol methods of the pinned range.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from .security import peer_ip

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
PER_ADDRESS = 64


def peer_address(transport: asyncio.BaseTransport) -> str | None:
    """The peer's IP address (an IPv4-mapped IPv6 address as plain IPv4), or None."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return None
    address = peer_ip(str(peer[0]))
    return str(address) if address is not None else None


def is_loopback_address(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


class ConnectionGuard:
    """Open connections per capped address, and the limits, for one server."""

    def __init__(
        self,
        head_timeout: float = HEAD_TIMEOUT,
        per_address: int = PER_ADDRESS,
        exempt: Callable[[str], bool] = is_loopback_address,
    ) -> None:
        self.head_timeout = head_timeout
        self.per_address = per_address
        self.exempt = exempt  # which addresses are never capped
        self.open: Counter[str] = Counter()
        self.refused = 0  # connections closed at once: over their address's cap
        self.timed_out = 0  # connections closed for a late request head

    def admit(self, address: str | None) -> bool:
        """Count a new connection from `address`; False when it is over its cap."""
        if address is None or self.exempt(address):
            return True
        if self.open[address] >= self.per_address:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "connection from %s refused: it already has %d open (%d refused so far)",
                    address,
                    self.per_address,
                    self.refused,
                )
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class GuardedProtocol:
    """Mixin over a uvicorn HTTP protocol: the head timeout and the per-address cap."""

    guard: ConnectionGuard
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._counted: str | None = None
        self._in_flight = 0  # requests whose head arrived and whose response is not done
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[misc]
        address = peer_address(transport)
        if not self.guard.admit(address):
            transport.abort()
            return
        if address is not None and not self.guard.exempt(address):
            self._counted = address
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._counted is not None:
            self.guard.release(self._counted)
            self._counted = None
        super().connection_lost(exc)  # type: ignore[misc]

    # httptools: called once a request's head is complete.
    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()  # type: ignore[misc]

    # h11: a complete head shows as a new request cycle.
    def handle_events(self) -> None:
        cycle = getattr(self, "cycle", None)
        super().handle_events()  # type: ignore[misc]
        if getattr(self, "cycle", None) is not cycle:
            self._head_arrived()

    def on_response_complete(self) -> None:
        self._in_flight = max(self._in_flight - 1, 0)
        super().on_response_complete()  # type: ignore[misc]
        if not self._in_flight and not self.transport.is_closing():
            self._await_head()  # a kept-alive connection owes the next head in time too

    def _head_arrived(self) -> None:
        self._in_flight += 1
        self._stop_head_timer()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.guard.head_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_flight or self.transport.is_closing():
            return
        self.guard.timed_out += 1
        self.transport.close()


def guarded_protocol(http: str, guard: ConnectionGuard) -> type[Any]:
    """uvicorn's `http` protocol class (`auto`, `httptools`, `h11`) with `guard` applied."""
    if http == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:
            http = "h11"
        else:
            http = "httptools"
    base: type[Any]
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    elif http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    else:
        raise ValueError(f"unknown HTTP protocol {http!r}")
    return type(f"Guarded{base.__name__}", (GuardedProtocol, base), {"guard": guard})
