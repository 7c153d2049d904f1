"""Run the app under uvicorn: bind, print the banner, serve, shut down gracefully."""

from __future__ import annotations

import gc
import logging
import os
import resource
import socket
import sys

import uvicorn

from . import __version__
from .app import create_app
from .connections import guarded_protocol
from .logformat import JsonFormatter, configure_logging
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("loki_api")


class LokiServer(uvicorn.Server):
    """uvicorn's server, but open SSE streams are ended first on shutdown.

    uvicorn waits for in-flight responses before it shuts down, and an event
    stream never finishes by itself. Closing every subscriber lets each stream
    end cleanly (clients reconnect with `Last-Event-ID`) so SIGINT/SIGTERM
    return promptly.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything alive now (the started app) lives as long as the server: keep it
        # out of the garbage collector's scans, which otherwise show up as latency
        # spikes. Process-wide, so it is done here, where the process is ours, not in
        # the app's start-up (an embedding program would get it too).
        gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.bus.close_streams()
        await super().shutdown(sockets)
        # uvicorn re-raises the stop signal after shutting down, so the process would
        # die "killed by SIGTERM"; a graceful stop is a normal exit, code 0.
        self._captured_signals.clear()


def raise_open_files_limit() -> None:
    """Let the process hold as many sockets as the system allows (soft limit to hard).

    Process-wide, so done here, in the entry point that owns the process. With
    a 1024 soft limit, a thousand idle sockets from one peer would make accept
    fail for everyone else; the per-address cap and the head timeout keep the
    count bounded, this keeps the headroom.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def bind_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def banner_fields(settings: Settings, runtime: Runtime, port: int) -> dict[str, str]:
    """What start-up says: version, URL, state dir, CLI in use, auth mode (and a note)."""
    auth = (
        "off (--no-auth)"
        if not settings.auth
        else "token for remote clients"
        if settings.token
        else "loopback only (no token set)"
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"{settings.scheme}://{host}:{port}"
    fields = {
        "version": __version__,
        "url": url,
        "console": f"{url}/" if settings.console else "off (--no-console)",
        "stateDir": str(settings.state_dir),
        "cli": runtime.cli_description() or "none found",
        "sessions": f"contained by {runtime.sessions.containment}",
        "auth": auth,
    }
    problem = runtime.cli_problem()
    if problem:
        fields["note"] = problem
    return fields


BANNER_LABELS = {
    "url": "url",
    "console": "console",
    "stateDir": "state dir",
    "cli": "cli",
    "sessions": "sessions",
    "auth": "auth",
    "note": "note",
}


def banner(fields: dict[str, str]) -> str:
    lines = [f"Loki API {fields['version']}"]
    lines.extend(
        f"  {label:<10} {fields[key]}" for key, label in BANNER_LABELS.items() if key in fields
    )
    return "\n".join(lines)


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM. Returns the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.state_dir.is_symlink():
        # Everything would be written where the link points: maybe a cloned repo's trap.
        print(
            f"loki serve: error: {settings.state_dir} is a symbolic link (to "
            f"{os.readlink(settings.state_dir)}); the state directory must be a real "
            "directory inside the project",
            file=sys.stderr,
        )
        return 2
    try:
        # Only `.loki/` itself must exist; what is (or is not) inside it never stops
        # the server (SPEC §3.2).
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"loki serve: error: cannot create state dir {settings.state_dir}: {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        sock = bind_socket(settings)
    except OSError as exc:
        print(
            f"loki serve: error: cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    runtime = Runtime(settings)
    app = create_app(settings, runtime)
    raise_open_files_limit()
    config = uvicorn.Config(
        app,
        # uvicorn's protocol with the request-head timeout and the per-address cap.
        http=guarded_protocol(settings.http, runtime.connections),
        log_level=settings.log_level,
        # uvicorn's loggers go to our root handler, in our format; our access log
        # (`access.py`, with route templates and request ids) replaces uvicorn's.
        log_config=None,
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    port = sock.getsockname()[1]
    fields = banner_fields(settings, runtime, port)
    if settings.log_format == "json":
        # Printed whatever the log level, like the text banner: one JSON line.
        record = log.makeRecord(
            log.name,
            logging.INFO,
            __file__,
            0,
            "Loki API %s serving %s",
            (__version__, fields["url"]),
            None,
            extra={"fields": fields},
        )
        print(JsonFormatter().format(record), flush=True)
    else:
        print(banner(fields), flush=True)
    server = LokiServer(config, runtime)
    try:
        server.run(sockets=[sock])
    except OSError as exc:
        print(f"loki serve: error: {exc}", file=sys.stderr)
        return 2
    return 0 if server.started else 1
