"""Who may talk to the server: DNS-rebinding guard, token auth, and the rate limit.

Pure ASGI middleware (no `BaseHTTPMiddleware`), so streams pass through untouched.

- Trust is decided by the connection's peer address (`scope["client"]`), never
  by the `Host` header: loopback peers are trusted, others need the token.
- The token is read from `Authorization: Bearer`, `X-API-Key`, or (on
  `/api/events` only, for browsers' `EventSource`) `?token=`; compared in
  constant time.
- DNS-rebinding guard, whatever the bind address (`0.0.0.0` too): a request
  that would be trusted because its peer is loopback must name a loopback host
  (`localhost`, `127.x.x.x`, `[::1]`, any port) or one of `--allowed-hosts` in
  its `Host`, else 403: a page on evil.example that resolves to 127.0.0.1 is
  refused. A request carrying the valid token is judged by the token alone.
- `/health*` needs no token, nor do the console's page and static assets (`/`,
  `/console/...`): they hold no data, and a browser must load them before it
  can ask its user for the token. Neither counts toward the rate limit.
- `trust_loopback=False` (`--no-loopback-trust`) asks loopback peers for the
  token too: behind a reverse proxy on the same host every client is loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .settings import Settings, is_loopback_host

EVENTS_PATH = "/api/events"
# `http://0.0.0.0:8420` (what the banner shows when bound to all interfaces) reaches
# this machine like 127.0.0.1 does; an address literal cannot be rebound by DNS.
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::"})
METRICS_PATH = "/metrics"
CONSOLE_ASSETS_PREFIX = "/console/"


def is_public(path: str) -> bool:
    """Paths anyone may read without a token: probes, and the console's static files."""
    return (
        path == "/health"
        or path.startswith("/health/")
        or path == "/"
        or path.startswith(CONSOLE_ASSETS_PREFIX)
    )


def peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as an IP (zone id dropped, IPv4-mapped IPv6 as IPv4), else None."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_peer(scope: Scope) -> bool:
    client = scope.get("client")
    address = peer_ip(str(client[0])) if client else None
    return address is not None and address.is_loopback


def host_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value.decode("latin-1")
    return None


def host_name(host: str) -> str:
    """`[::1]:8420` → `::1`, `localhost:8420` → `localhost`."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def presented_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    if scope.get("path") == EVENTS_PATH:
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if key == "token" and value:
                return value
    return None


# Extra headers for a refusal, from the request (the event stream adds CORS headers).
ErrorHeaders = Callable[[Scope], list[tuple[bytes, bytes]]]


class SecurityMiddleware:
    def __init__(
        self, app: ASGIApp, settings: Settings, error_headers: ErrorHeaders | None = None
    ) -> None:
        self.app = app
        self.error_headers = error_headers
        self.settings = settings
        self._token = settings.token.encode() if settings.token else None
        self._allowed = frozenset(h.lower().rstrip(".") for h in settings.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.check(scope)
        if problem is not None:
            status, code, message = problem
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            response = error_response(status, message, code, headers=headers)
            if self.error_headers is not None:
                response.raw_headers.extend(self.error_headers(scope))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> tuple[int, str, str] | None:
        settings = self.settings
        path: str = scope.get("path", "")
        # Trusted for being local (or because auth is off): only if the Host says so too.
        local_trust = is_loopback_peer(scope) and (settings.trust_loopback or not settings.auth)
        if local_trust and not self.host_allowed(scope) and not self.has_token(scope):
            host = host_header(scope)
            return (
                403,
                "FORBIDDEN",
                f"Host {host!r} is not a loopback name or one of --allowed-hosts "
                "(DNS-rebinding guard); send the API token or use http://localhost",
            )
        if not settings.auth or is_public(path):
            return None
        if path == METRICS_PATH and settings.metrics_public:
            return None
        if local_trust:
            return None
        if self._token is None:
            return (
                401,
                "UNAUTHORIZED",
                "Remote access not configured: start the server with --token "
                "(or LOKI_API_TOKEN) and send it as 'Authorization: Bearer <token>'",
            )
        if not self.has_token(scope):
            return 401, "UNAUTHORIZED", "Missing or invalid API token"
        return None

    def host_allowed(self, scope: Scope) -> bool:
        """True when `Host` is absent, a loopback name or address, or in `--allowed-hosts`."""
        host = host_header(scope)
        if host is None:
            return True
        name = host_name(host).lower().rstrip(".")
        return (
            is_loopback_host(name)
            or name in UNSPECIFIED_HOSTS
            or name in self._allowed
            or host.lower() in self._allowed
        )

    def has_token(self, scope: Scope) -> bool:
        if self._token is None:
            return False
        offered = presented_token(scope)
        return offered is not None and hmac.compare_digest(offered.encode(), self._token)


class RateWindows:
    """Request counts per client address: `{address: (minute, count)}`."""

    def __init__(self) -> None:
        self.by_client: dict[str, tuple[int, int]] = {}


class RateLimitMiddleware:
    """Fixed one-minute windows per client address; public paths are not counted."""

    def __init__(
        self,
        app: ASGIApp,
        per_minute: int,
        windows: RateWindows | None = None,
        error_headers: ErrorHeaders | None = None,
    ) -> None:
        self.app = app
        self.error_headers = error_headers
        self.limit = per_minute
        # Shared by every stack of one app (the event stream has its own), so a
        # client gets `per_minute` requests in all, not per stack.
        self.windows = windows if windows is not None else RateWindows()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or is_public(path):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = str(client[0]) if client else "?"
        now = time.time()
        window = int(now // 60)
        windows = self.windows.by_client
        start, count = windows.get(key, (window, 0))
        if start != window:
            start, count = window, 0
            if len(windows) > 10_000:  # forget old windows instead of growing forever
                for stale in [k for k, v in windows.items() if v[0] != window]:
                    del windows[stale]
        count += 1
        windows[key] = (start, count)
        reset = (window + 1) * 60
        headers = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(max(self.limit - count, 0)).encode()),
            (b"x-ratelimit-reset", str(reset).encode()),
        ]
        if count > self.limit:
            retry = str(max(1, math.ceil(reset - now)))
            response = error_response(
                429,
                "Rate limit exceeded",
                "RATE_LIMITED",
                details={"limit": self.limit, "retryAfter": int(retry)},
                headers={"Retry-After": retry},
            )
            response.raw_headers.extend(headers)
            if self.error_headers is not None:
                response.raw_headers.extend(self.error_headers(scope))
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
