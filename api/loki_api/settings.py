"""Server settings: one frozen object built from flags, then environment, then defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .statedir import Limits

DEFAULT_PORT = 8420
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A flag or environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    loki_dir: Path = field(default_factory=Path.cwd)
    cli: str | None = None
    simulate: bool = False
    max_sessions: int = 1
    token: str | None = None
    auth: bool = True
    cors: bool = True
    cors_origins: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    history: int = 1000
    stop_grace: float = 10.0
    stop_sessions_on_exit: bool = False
    # How a session's processes are held together (SPEC §5.4 "Containment"):
    # "auto" = a cgroup v2 per session where the server may create one, else
    # the launcher's subreaper alone; "subreaper" = never a cgroup.
    containment: str = "auto"
    rate_limit: int = 0
    log_level: str = "info"
    log_format: str = "text"  # or "json"
    metrics_public: bool = False  # /metrics without auth
    # Seconds between keep-alive comments on every SSE stream.
    keepalive: float = 15.0
    # Seconds between heartbeat events for each running session.
    heartbeat: float = 10.0
    # Frames a stream may have waiting before it is cut off as too slow.
    max_pending: int = 10_000
    # Seconds a stream's socket may stay full before the stream is cut off.
    send_deadline: float = 30.0
    # uvicorn's HTTP protocol: auto (httptools when installed), httptools or h11.
    http: str = "auto"
    # Seconds a connection has to send a complete request head (slowloris guard).
    head_timeout: float = 10.0
    # Open connections allowed per non-loopback address.
    connections_per_address: int = 64
    event_log_bytes: int = 16 * 1024 * 1024
    # Cluster mode (SPEC §11): on when `nats_urls` is not empty.
    nats_urls: tuple[str, ...] = ()
    cluster: str = "loki"
    node_id: str | None = None  # None: generated once, kept in .loki/node-id
    replicas: int = 1
    node_ttl: float = 15.0
    nats_creds: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_tls_ca: Path | None = None
    # Events a node keeps while NATS is unreachable; beyond that they are counted as lost.
    publish_buffer: int = 100_000
    # Serve the live console at `/` (off with --no-console).
    console: bool = True
    # Loopback peers need no token. Off (--no-loopback-trust) behind a reverse proxy on
    # the same host, where every client arrives from 127.0.0.1.
    trust_loopback: bool = True
    # Extra `Host` values (names, or name:port) trusted for loopback peers (DNS-rebinding guard).
    allowed_hosts: tuple[str, ...] = ()
    # Caps on what is read from `.loki/` (SPEC §3.2): bytes of one document
    # (`--max-state-file`), characters of one string, tasks per document / events per
    # change, JSON nesting.
    max_state_file: int = Limits.max_file
    max_state_string: int = Limits.max_string
    max_state_items: int = Limits.max_items
    max_state_depth: int = Limits.max_depth

    @property
    def state_limits(self) -> Limits:
        return Limits(
            max_file=self.max_state_file,
            max_string=self.max_state_string,
            max_items=self.max_state_items,
            max_depth=self.max_state_depth,
        )

    @property
    def state_dir(self) -> Path:
        return self.loki_dir / ".loki"

    @property
    def sessions_dir(self) -> Path:
        return self.state_dir / "sessions"

    @property
    def events_dir(self) -> Path:
        return self.state_dir / "events"

    @property
    def output_dir(self) -> Path:
        """Copies of session output, `<id>/stdout.txt|stderr.txt`.

        Outside `sessions/`: a line written there would wake the state watcher's
        threads, which then compete with the loop for the GIL (measured: +0.28 ms
        before each line is published).
        """
        return self.state_dir / "output"

    @property
    def clustered(self) -> bool:
        return bool(self.nats_urls)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def is_loopback_host(host: str) -> bool:
    import ipaddress

    name = host.strip("[]").lower()
    if name in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None


SIZE = re.compile(r"^\s*(\d+)\s*(?:([kmg])(?:i?b)?|b)?\s*$", re.IGNORECASE)
SIZE_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(raw: str, name: str) -> int:
    """A byte count: `8388608`, `512K`, `8M`, `8MiB`, `1G` (binary units)."""
    match = SIZE.match(raw)
    if match is None:
        raise SettingsError(f"{name} must be a size such as 8388608, 512K or 8M, not {raw!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * SIZE_UNITS[unit]


def env_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None


def environ() -> Mapping[str, str]:
    return os.environ
