"""The `loki` command: `loki serve` runs the server; other subcommands are the SDK's client CLI.

Thin by design: parse flags → `Settings` → `serve.run`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .cluster.node import NODE_ID
from .settings import (
    DEFAULT_PORT,
    LOG_FORMATS,
    Settings,
    SettingsError,
    env_float,
    env_int,
    parse_size,
)
from .statedir import Limits

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
CONTAINMENT = ("auto", "subreaper")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="loki serve", description="Run the Loki API server (HTTP + Server-Sent Events)."
    )
    add = parser.add_argument
    add("--port", "-p", type=int, help=f"listen port (LOKI_API_PORT, default {DEFAULT_PORT})")
    add("--host", help="bind address (LOKI_API_HOST, default 127.0.0.1)")
    add("--loki-dir", type=Path, help="project directory holding .loki/ (LOKI_DIR, default .)")
    add("--cli", help="command that runs a session (LOKI_CLI)")
    add("--simulate", action="store_true", help="use the bundled session simulator as the CLI")
    add("--max-sessions", type=int, help="concurrent running sessions (LOKI_MAX_SESSIONS, 1)")
    add("--token", help="bearer token required from non-loopback clients (LOKI_API_TOKEN)")
    add("--no-auth", action="store_true", help="disable authentication")
    add("--no-cors", action="store_true", help="disable CORS headers")
    add("--cors-origins", help="comma list of allowed origins (LOKI_API_CORS)")
    add(
        "--allowed-hosts",
        help="comma list of extra Host values trusted for loopback clients, besides "
        "loopback names (LOKI_ALLOWED_HOSTS)",
    )
    add("--tls-cert", type=Path, help="TLS certificate file (LOKI_TLS_CERT)")
    add("--tls-key", type=Path, help="TLS private key file (LOKI_TLS_KEY)")
    add("--generate-token", action="store_true", help="print a fresh random token and exit")
    add("--history", type=int, help="events kept in memory for replay (LOKI_EVENT_HISTORY, 1000)")
    add(
        "--stop-grace",
        type=float,
        help="seconds between SIGTERM and SIGKILL on stop (LOKI_STOP_GRACE, 10)",
    )
    add(
        "--stop-sessions-on-exit",
        action="store_true",
        help="stop running sessions when the server shuts down",
    )
    add(
        "--containment",
        choices=CONTAINMENT,
        help="auto: a cgroup v2 per session where possible, else subreaper only (LOKI_CONTAINMENT)",
    )
    add("--rate-limit", type=int, help="requests per minute per client (LOKI_RATE_LIMIT, off)")
    add("--log-level", choices=LOG_LEVELS, help="server log level (LOKI_LOG_LEVEL, info)")
    add(
        "--log-format",
        choices=LOG_FORMATS,
        help="server log lines as text or one JSON object each (LOKI_LOG_FORMAT, text)",
    )
    add("--metrics-public", action="store_true", help="serve /metrics without auth")
    add(
        "--max-state-file",
        help="cap on one state document under .loki/, e.g. 8M (LOKI_MAX_STATE_FILE, 8 MiB)",
    )
    add("--keepalive", type=float, help="seconds between SSE keep-alive comments (15)")
    add(
        "--send-deadline",
        type=float,
        help="seconds an SSE client's socket may stay full before it is cut off "
        "(LOKI_SEND_DEADLINE, 30)",
    )
    add(
        "--http",
        choices=("auto", "httptools", "h11"),
        help="uvicorn's HTTP implementation (auto: httptools when installed)",
    )
    add(
        "--head-timeout",
        type=float,
        help="seconds a connection has to send a complete request head (LOKI_HEAD_TIMEOUT, 10)",
    )
    add(
        "--connections-per-address",
        type=int,
        help="open connections allowed per non-loopback address (LOKI_CONNECTIONS_PER_ADDRESS, 64)",
    )
    add("--no-console", action="store_true", help="do not serve the live console at /")
    add(
        "--no-loopback-trust",
        action="store_true",
        help="require the token from loopback clients too (e.g. behind a local reverse proxy)",
    )
    cluster = parser.add_argument_group("cluster mode (NATS JetStream)")
    cluster.add_argument(
        "--nats", help="comma list of NATS URLs; turns cluster mode on (LOKI_NATS_URL)"
    )
    cluster.add_argument(
        "--cluster", help="cluster name, prefixes stream and subjects (LOKI_CLUSTER, loki)"
    )
    cluster.add_argument("--node-id", help="this node's name (LOKI_NODE_ID, kept in .loki/node-id)")
    cluster.add_argument("--replicas", type=int, help="JetStream replicas (LOKI_NATS_REPLICAS, 1)")
    cluster.add_argument("--node-ttl", type=float, help="seconds until a silent node is lost (15)")
    cluster.add_argument("--nats-creds", type=Path, help="NATS credentials file")
    cluster.add_argument("--nats-tls-cert", type=Path, help="client certificate for NATS TLS")
    cluster.add_argument("--nats-tls-key", type=Path, help="client key for NATS TLS")
    cluster.add_argument("--nats-tls-ca", type=Path, help="CA bundle to verify the NATS servers")
    cluster.add_argument(
        "--publish-buffer", type=int, help="events kept while NATS is down (100000)"
    )
    add("--version", action="version", version=f"loki-api {__version__}")
    return parser


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Flags win over environment variables, which win over defaults."""

    def pick(flag: object, env_value: object, default: object) -> object:
        return flag if flag is not None else (env_value if env_value is not None else default)

    env_port = env_int(env, "LOKI_API_PORT")
    if env_port is None:
        env_port = env_int(env, "LOKI_DASHBOARD_PORT")
    port = pick(args.port, env_port, DEFAULT_PORT)
    log_level = (
        args.log_level
        or env.get("LOKI_LOG_LEVEL", "").lower()
        or ("debug" if env.get("LOKI_DEBUG", "").lower() in ("1", "true", "yes") else "info")
    )
    if log_level == "warn":
        log_level = "warning"
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"LOKI_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    log_format = args.log_format or env.get("LOKI_LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"LOKI_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    containment = args.containment or env.get("LOKI_CONTAINMENT", "").lower() or "auto"
    if containment not in CONTAINMENT:
        raise SettingsError(f"LOKI_CONTAINMENT must be one of {', '.join(CONTAINMENT)}")
    origins_raw = args.cors_origins or env.get("LOKI_API_CORS", "")
    hosts_raw = args.allowed_hosts or env.get("LOKI_ALLOWED_HOSTS", "")
    tls_cert = args.tls_cert or (Path(env["LOKI_TLS_CERT"]) if env.get("LOKI_TLS_CERT") else None)
    tls_key = args.tls_key or (Path(env["LOKI_TLS_KEY"]) if env.get("LOKI_TLS_KEY") else None)
    loki_dir = args.loki_dir or (Path(env["LOKI_DIR"]) if env.get("LOKI_DIR") else Path.cwd())
    max_state_raw = args.max_state_file or env.get("LOKI_MAX_STATE_FILE") or ""
    name = "--max-state-file" if args.max_state_file else "LOKI_MAX_STATE_FILE"
    max_state_file = parse_size(max_state_raw, name) if max_state_raw.strip() else Limits.max_file
    settings = Settings(
        port=int(port),  # type: ignore[call-overload]
        host=args.host or env.get("LOKI_API_HOST") or "127.0.0.1",
        loki_dir=loki_dir.expanduser().resolve(),
        cli=args.cli or env.get("LOKI_CLI") or None,
        simulate=args.simulate,
        max_sessions=int(pick(args.max_sessions, env_int(env, "LOKI_MAX_SESSIONS"), 1)),  # type: ignore[call-overload]
        token=args.token or env.get("LOKI_API_TOKEN") or None,
        auth=not args.no_auth,
        cors=not args.no_cors,
        cors_origins=tuple(o.strip() for o in origins_raw.split(",") if o.strip()),
        tls_cert=tls_cert,
        tls_key=tls_key,
        history=int(pick(args.history, env_int(env, "LOKI_EVENT_HISTORY"), 1000)),  # type: ignore[call-overload]
        stop_grace=float(pick(args.stop_grace, env_float(env, "LOKI_STOP_GRACE"), 10.0)),  # type: ignore[arg-type]
        stop_sessions_on_exit=args.stop_sessions_on_exit,
        containment=containment,
        rate_limit=int(pick(args.rate_limit, env_int(env, "LOKI_RATE_LIMIT"), 0)),  # type: ignore[call-overload]
        log_level=log_level,
        log_format=log_format,
        metrics_public=args.metrics_public,
        keepalive=float(pick(args.keepalive, env_float(env, "LOKI_SSE_KEEPALIVE"), 15.0)),  # type: ignore[arg-type]
        send_deadline=float(
            pick(args.send_deadline, env_float(env, "LOKI_SEND_DEADLINE"), 30.0)  # type: ignore[arg-type]
        ),
        http=args.http or "auto",
        head_timeout=float(
            pick(args.head_timeout, env_float(env, "LOKI_HEAD_TIMEOUT"), 10.0)  # type: ignore[arg-type]
        ),
        connections_per_address=int(
            pick(  # type: ignore[call-overload]
                args.connections_per_address, env_int(env, "LOKI_CONNECTIONS_PER_ADDRESS"), 64
            )
        ),
        console=not args.no_console,
        trust_loopback=not args.no_loopback_trust,
        allowed_hosts=tuple(h.strip() for h in hosts_raw.split(",") if h.strip()),
        **cluster_settings(args, env),
        max_state_file=max_state_file,
    )
    validate(settings)
    return settings


CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def cluster_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The cluster-mode fields of `Settings` (SPEC §11), flags over environment."""
    urls_raw = args.nats or env.get("LOKI_NATS_URL", "")
    urls = []
    for url in (u.strip() for u in urls_raw.split(",")):
        if not url:
            continue
        if "://" not in url:
            url = f"nats://{url}"
        if url.split("://", 1)[0] not in NATS_SCHEMES:
            raise SettingsError(
                f"--nats URLs must be nats://, tls://, ws:// or wss://, not {url!r}"
            )
        urls.append(url)
    replicas = args.replicas if args.replicas is not None else env_int(env, "LOKI_NATS_REPLICAS")
    node_ttl = args.node_ttl if args.node_ttl is not None else env_float(env, "LOKI_NODE_TTL")
    return {
        "nats_urls": tuple(urls),
        "cluster": args.cluster or env.get("LOKI_CLUSTER") or "loki",
        "node_id": args.node_id or env.get("LOKI_NODE_ID") or None,
        "replicas": 1 if replicas is None else replicas,
        "node_ttl": 15.0 if node_ttl is None else node_ttl,
        "nats_creds": args.nats_creds,
        "nats_tls_cert": args.nats_tls_cert,
        "nats_tls_key": args.nats_tls_key,
        "nats_tls_ca": args.nats_tls_ca,
        "publish_buffer": 100_000 if args.publish_buffer is None else args.publish_buffer,
    }


def validate_cluster(settings: Settings) -> None:
    if settings.nats_urls and importlib.util.find_spec("nats") is None:
        raise SettingsError("cluster mode (--nats) needs nats-py: pip install 'loki-api[cluster]'")
    if CLUSTER_NAME.fullmatch(settings.cluster) is None:
        raise SettingsError("--cluster must be 1-32 letters, digits, '_' or '-'")
    if settings.node_id is not None and NODE_ID.fullmatch(settings.node_id) is None:
        raise SettingsError("--node-id must be 1-64 letters, digits, '_' or '-'")
    if not 1 <= settings.replicas <= 5:
        raise SettingsError("--replicas must be between 1 and 5")
    if settings.node_ttl <= 0:
        raise SettingsError("--node-ttl must be positive")
    if settings.publish_buffer < 1:
        raise SettingsError("--publish-buffer must be at least 1")
    if bool(settings.nats_tls_cert) != bool(settings.nats_tls_key):
        raise SettingsError("--nats-tls-cert and --nats-tls-key go together")
    for path in (
        settings.nats_creds,
        settings.nats_tls_cert,
        settings.nats_tls_key,
        settings.nats_tls_ca,
    ):
        if path is not None and not os.access(path, os.R_OK):
            raise SettingsError(f"cannot read NATS file {path}")


def validate(settings: Settings) -> None:
    validate_cluster(settings)
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port must be between 0 and 65535, not {settings.port}")
    if settings.max_sessions < 1:
        raise SettingsError("--max-sessions must be at least 1")
    if settings.history < 0:
        raise SettingsError("--history must not be negative")
    if settings.stop_grace < 0:
        raise SettingsError("--stop-grace must not be negative")
    if settings.rate_limit < 0:
        raise SettingsError("--rate-limit must not be negative")
    if settings.keepalive <= 0:
        raise SettingsError("--keepalive must be positive")
    if settings.send_deadline <= 0:
        raise SettingsError("--send-deadline must be positive")
    if settings.head_timeout <= 0:
        raise SettingsError("--head-timeout must be positive")
    if settings.connections_per_address < 1:
        raise SettingsError("--connections-per-address must be at least 1")
    if settings.max_state_file < 1024:
        raise SettingsError("--max-state-file must be at least 1K")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("--tls-cert and --tls-key go together")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not os.access(path, os.R_OK):
            raise SettingsError(f"cannot read TLS file {path}")
    if not settings.trust_loopback and settings.auth and settings.token is None:
        raise SettingsError("--no-loopback-trust needs a token (--token or LOKI_API_TOKEN)")
    if settings.token is not None and len(settings.token) < 16:
        raise SettingsError("the API token must be at least 16 characters")


def serve_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.generate_token:
        print(secrets.token_hex(32))
        return 0
    try:
        settings = settings_from(args, os.environ)
    except SettingsError as exc:
        print(f"loki serve: error: {exc}", file=sys.stderr)
        return 2
    from .serve import run

    return run(settings)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return serve_main(argv[1:])
    if argv and argv[0] in ("--version", "-V"):
        print(f"loki-api {__version__}")
        return 0
    try:
        from loki_client._cli import main as client_main
    except ImportError:
        print("usage: loki serve [options]   (see 'loki serve --help')", file=sys.stderr)
        return 2
    return client_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
