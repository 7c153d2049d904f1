"""The terminal client: every `loki` subcommand except `serve` (which runs the server).

    loki sessions [--status S]
    loki start [PRD] [--provider P] [--dry-run] [--verbose]
    loki stop|pause|resume ID
    loki status
    loki events [--session ID] [--types a,b] [--min-level L] [--history N] [--count N]

`--url` / `LOKI_API_URL` and `--token` / `LOKI_API_TOKEN` pick the server.
Exit codes: 0 ok, 1 the server refused or could not be reached, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import msgspec

from ._client import LokiClient
from ._exceptions import LokiApiError, LokiError
from .models import (
    AgentEventData,
    Event,
    HeartbeatEventData,
    InputEventData,
    LogEventData,
    MetricsEventData,
    PhaseEventData,
    SessionEventData,
    TaskEventData,
)

PROG = "loki"

# ANSI colours by event domain (and log level); only used when stdout is a terminal.
_RESET = "\033[0m"
_DIM = "\033[2m"
_COLOURS = {
    "session": "\033[35m",
    "phase": "\033[34m",
    "task": "\033[36m",
    "agent": "\033[32m",
    "log:debug": _DIM,
    "log:warn": "\033[33m",
    "log:error": "\033[31m",
    "metrics": _DIM,
    "heartbeat": _DIM,
    "input": "\033[1;33m",
}
_RED = "\033[31m"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _connection_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--url", default=default, help="server URL (LOKI_API_URL, default http://127.0.0.1:8420)"
    )
    parser.add_argument("--token", default=default, help="API token (LOKI_API_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Talk to a running Loki API server ('loki serve' starts one)."
    )
    _connection_flags(parser, None)
    # The flags are accepted after the subcommand too; SUPPRESS keeps the first value.
    common = _Parser(add_help=False)
    _connection_flags(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    sessions = commands.add_parser("sessions", parents=[common], help="list sessions")
    sessions.add_argument("--status", help="only sessions with this status")

    start = commands.add_parser("start", parents=[common], help="start a session")
    start.add_argument("prd", nargs="?", help="PRD file (as the server sees the path)")
    start.add_argument("--provider", default="claude", help="AI provider (default claude)")
    start.add_argument("--dry-run", action="store_true", help="plan without changing files")
    start.add_argument("--verbose", action="store_true", help="verbose session output")

    for name, text in (
        ("stop", "stop a session"),
        ("pause", "pause a session"),
        ("resume", "resume a paused session"),
    ):
        action = commands.add_parser(name, parents=[common], help=text)
        action.add_argument("session_id", metavar="ID")

    commands.add_parser("status", parents=[common], help="server status")

    events = commands.add_parser(
        "events", parents=[common], help="tail the event stream, one line per event"
    )
    events.add_argument("--session", help="only events of this session")
    events.add_argument("--types", help="comma list of event types (e.g. task:completed)")
    events.add_argument(
        "--min-level",
        choices=("debug", "info", "warn", "error"),
        help="lowest log level shown (log:* events only)",
    )
    events.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="first replay the last N matching events",
    )
    events.add_argument("--count", "-n", type=int, metavar="N", help="stop after N events")
    return parser


def main(argv: list[str]) -> int:
    """Run one `loki` client command; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = sys.stdout
    colour = out.isatty()
    try:
        with LokiClient(args.url, token=args.token) as client:
            return _COMMANDS[args.command](client, args, out, colour)
    except KeyboardInterrupt:
        return 130
    except LokiApiError as exc:
        print(f"{PROG}: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    except LokiError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------ commands

Command = Callable[[LokiClient, argparse.Namespace, TextIO, bool], int]


def _sessions(client: LokiClient, args: argparse.Namespace, out: TextIO, colour: bool) -> int:
    listing = client.list_sessions(status=args.status)
    if not listing.sessions:
        print("no sessions", file=out)
        return 0
    rows = [("ID", "STATUS", "PROVIDER", "PHASE", "TASKS", "STARTED")]
    for s in listing.sessions:
        rows.append(
            (
                s.id,
                s.status,
                s.provider,
                s.current_phase or "-",
                f"{s.completed_tasks}/{s.task_count}",
                s.started_at or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    noun = "session" if listing.total == 1 else "sessions"
    print(f"{listing.total} {noun}, {listing.running} running", file=out)
    return 0


def _start(client: LokiClient, args: argparse.Namespace, out: TextIO, colour: bool) -> int:
    started = client.start_session(
        args.prd,
        provider=args.provider,
        dry_run=True if args.dry_run else None,
        verbose=True if args.verbose else None,
    )
    print(f"{started.session_id} {started.status}: {started.message}", file=out)
    return 0


def _action(name: str) -> Command:
    def run(client: LokiClient, args: argparse.Namespace, out: TextIO, colour: bool) -> int:
        method = getattr(client, f"{name}_session")
        answer = method(args.session_id)
        print(f"{answer.session_id} {answer.status}: {answer.message}", file=out)
        return 0

    return run


def _status(client: LokiClient, args: argparse.Namespace, out: TextIO, colour: bool) -> int:
    st = client.status()
    providers = [name for name, ok in msgspec.structs.asdict(st.providers).items() if ok]
    print(f"loki-api {st.version} at {client.base_url}, up {st.uptime_formatted}", file=out)
    print(
        f"sessions:  {st.sessions.total} total, {st.sessions.running} running, "
        f"{st.sessions.completed} completed, {st.sessions.failed} failed",
        file=out,
    )
    print(
        f"events:    {st.events.published} published, {st.events.history_size} in history, "
        f"{st.events.subscribers} subscribers",
        file=out,
    )
    print(f"providers: {', '.join(providers) or 'none found'}", file=out)
    print(f"system:    {st.system.platform} {st.system.arch}, python {st.system.python}", file=out)
    return 0


def _events(client: LokiClient, args: argparse.Namespace, out: TextIO, colour: bool) -> int:
    if args.history < 0 or (args.count is not None and args.count < 1):
        print(f"{PROG} events: error: --history must be >= 0 and --count >= 1", file=sys.stderr)
        return 2
    seen = 0
    with client.events(
        session_id=args.session, types=args.types, min_level=args.min_level, history=args.history
    ) as stream:
        for event in stream:
            print(format_event(event, colour), file=out, flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


_COMMANDS: dict[str, Command] = {
    "sessions": _sessions,
    "start": _start,
    "stop": _action("stop"),
    "pause": _action("pause"),
    "resume": _action("resume"),
    "status": _status,
    "events": _events,
}


# ---------------------------------------------------------------------- formatting


def format_event(event: Event, colour: bool = False) -> str:
    """One readable line: time, type, session, and a summary of the data."""
    time = event.timestamp[11:23] if len(event.timestamp) >= 23 else event.timestamp
    session = event.session_id or "-"
    line = f"{time}  {event.type:<16}  {session}  {summarise(event.data)}".rstrip()
    if not colour:
        return line
    tint = _COLOURS.get(event.type) or _COLOURS.get(event.type.split(":", 1)[0], "")
    if event.type.endswith(":failed"):
        tint = _RED
    return f"{tint}{line}{_RESET}" if tint else line


def summarise(data: Any) -> str:
    """The interesting part of an event's data, on one line."""
    match data:
        case SessionEventData():
            parts = [data.status, data.message or ""]
            if data.exit_code is not None:
                parts.append(f"(exit {data.exit_code})")
            return _join(parts)
        case PhaseEventData():
            phase = f"{data.previous_phase} -> {data.phase}" if data.previous_phase else data.phase
            return _join([phase, _percent(data.progress)])
        case TaskEventData():
            return _join(
                [data.title, f"[{data.status}]", _percent(data.progress), data.error or ""]
            )
        case AgentEventData():
            return _join(
                [
                    f"{data.type} agent {data.agent_id}",
                    f"({data.model})" if data.model else "",
                    data.task or "",
                    _one_line(data.output),
                ]
            )
        case LogEventData():
            return _join([f"[{data.source}]" if data.source else "", _one_line(data.message)])
        case MetricsEventData():
            fields = msgspec.structs.asdict(data)
            return _join([f"{name}={value}" for name, value in fields.items() if value is not None])
        case InputEventData():
            return _join(["input requested:", _one_line(data.prompt)])
        case HeartbeatEventData():
            return (
                f"up {data.uptime:.0f}s, {data.active_agents} agents, "
                f"{data.queued_tasks} queued tasks"
            )
        case _:
            return _one_line(msgspec.json.encode(data).decode())


def _percent(progress: float | None) -> str:
    if progress is None:
        return ""
    # Producers send either a fraction (0.4) or a percentage (40).
    return f"{progress * 100:.0f}%" if progress <= 1 else f"{progress:.0f}%"


def _one_line(text: str | None, limit: int = 200) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _join(parts: Sequence[str]) -> str:
    return " ".join(part for part in parts if part)
