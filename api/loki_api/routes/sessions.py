"""Session routes (SPEC §6): start, list, detail, stop, pause, resume, input, delete.

Reads come from the in-memory `StateStore`; commands go to the `SessionManager`.
A session id from the URL is checked against the allowed pattern before it can
reach the file system (anything else is 404 SESSION_NOT_FOUND).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import NotFound, ValidationFailed
from ..models import (
    PROVIDERS,
    SESSION_STATUSES,
    AgentCounts,
    DeleteResponse,
    InputRequest,
    SessionActionResponse,
    SessionDetail,
    SessionList,
    StartSessionRequest,
    Task,
    TaskCounts,
)
from ..params import MAX_LIMIT, json_response, query_choice, query_int, read_json
from ..sessions.manager import ACTIVE_STATUSES, SessionManager
from ..state import SessionState, StateStore, valid_session_id
from .events import runtime_of

DEFAULT_LIMIT = 100
MAX_INPUT_BYTES = 64 * 1024


def manager_of(request: Request) -> SessionManager:
    manager: SessionManager = runtime_of(request).sessions
    return manager


def store_of(request: Request) -> StateStore:
    store: StateStore = runtime_of(request).store
    return store


def session_of(request: Request) -> SessionState:
    """The session named in the path, or 404 (the id is validated before any lookup)."""
    session_id: str = request.path_params["session_id"]
    state = store_of(request).get(session_id) if valid_session_id(session_id) else None
    if state is None:
        raise NotFound(
            f"Session not found: {session_id}",
            code="SESSION_NOT_FOUND",
            details={"sessionId": session_id},
        )
    return state


def task_counts(tasks: list[Task]) -> TaskCounts:
    counts = TaskCounts(total=len(tasks))
    for task in tasks:
        status = task.status
        if status in ("pending", "queued"):
            counts.pending += 1
        elif status == "running":
            counts.running += 1
        elif status == "completed":
            counts.completed += 1
        elif status == "failed":
            counts.failed += 1
    return counts


def resolve_prd(loki_dir: Path, prd_path: str) -> Path:
    """The PRD file (relative paths are relative to the loki-dir), or 422."""
    if not prd_path.strip() or "\0" in prd_path:
        raise ValidationFailed("prdPath must be a file path", details={"field": "prdPath"})
    path = Path(prd_path)  # no ~ expansion: the CLI gets this string as it is
    if not path.is_absolute():
        path = loki_dir / path
    try:
        exists = path.is_file()
    except OSError:
        exists = False
    if not exists:
        raise ValidationFailed(
            f"PRD file not found: {prd_path}", details={"field": "prdPath", "prdPath": prd_path}
        )
    return path


async def start_session(request: Request) -> Response:
    body = await read_json(request, StartSessionRequest)
    if body.provider not in PROVIDERS:
        raise ValidationFailed(
            f"Invalid provider: {body.provider} (expected one of {', '.join(PROVIDERS)})",
            details={"field": "provider", "allowed": list(PROVIDERS)},
        )
    runtime = runtime_of(request)
    if body.prd_path is not None:
        resolve_prd(runtime.settings.loki_dir, body.prd_path)
    options = body.options
    timeout = options.timeout if options else None
    record = manager_of(request).start(
        body.prd_path,
        body.provider,
        dry_run=bool(options and options.dry_run),
        verbose=bool(options and options.verbose),
        timeout=timeout,
    )
    return json_response(
        SessionActionResponse(
            session_id=record.id,
            status=record.status,
            message=f"Session started with {body.provider} (pid {record.pid})",
        ),
        status=201,
    )


async def list_sessions(request: Request) -> Response:
    status = query_choice(request, "status", SESSION_STATUSES)
    limit = query_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    offset = query_int(request, "offset", 0)
    assert limit is not None and offset is not None
    runtime = runtime_of(request)
    states = store_of(request).all()
    all_records = [s.record for s in states]
    if runtime.registry is not None:  # with their node, and the other nodes' sessions too
        all_records = [runtime.registry.record_of(r) for r in all_records]
        all_records.extend(runtime.registry.others_records())
        all_records.sort(key=lambda r: (r.started_at or "", r.id), reverse=True)
    running = sum(1 for r in all_records if r.status in ACTIVE_STATUSES)
    records = [r for r in all_records if status is None or r.status == status]
    return json_response(
        SessionList(sessions=records[offset : offset + limit], total=len(records), running=running)
    )


async def get_session(request: Request) -> Response:
    state = session_of(request)
    agents = AgentCounts(
        active=len(state.agents), spawned=state.agents_spawned, completed=state.agents_completed
    )
    record = runtime_of(request).public_record(state.record)
    return json_response(
        SessionDetail(session=record, tasks=task_counts(state.tasks), agents=agents)
    )


async def stop_session(request: Request) -> Response:
    state = session_of(request)
    record = manager_of(request).stop(state.id)
    return json_response(
        SessionActionResponse(
            session_id=state.id,
            status=record.status,
            message="Stop requested: SIGTERM sent to the session's process group"
            if record.status == "stopping"
            else "Session stopped",
        )
    )


async def pause_session(request: Request) -> Response:
    state = session_of(request)
    record = manager_of(request).pause(state.id)
    return json_response(
        SessionActionResponse(
            session_id=state.id, status=record.status, message="Session paused (PAUSE file written)"
        )
    )


async def resume_session(request: Request) -> Response:
    state = session_of(request)
    record = manager_of(request).resume(state.id)
    return json_response(
        SessionActionResponse(session_id=state.id, status=record.status, message="Session resumed")
    )


async def inject_input(request: Request) -> Response:
    state = session_of(request)
    body = await read_json(request, InputRequest)
    if not body.input.strip():
        raise ValidationFailed("input must not be empty", details={"field": "input"})
    if len(body.input.encode()) > MAX_INPUT_BYTES:
        raise ValidationFailed("input must be at most 64 KiB", details={"field": "input"})
    how = manager_of(request).inject_input(state.id, body.input, body.context)
    where = "input.fifo" if how == "fifo" else "HUMAN_INPUT.md"
    return json_response(
        SessionActionResponse(
            session_id=state.id, status=state.record.status, message=f"Input delivered via {where}"
        )
    )


async def delete_session(request: Request) -> Response:
    state = session_of(request)
    manager_of(request).delete(state.id)
    return json_response(
        DeleteResponse(
            session_id=state.id, deleted=True, message="Session record and state directory removed"
        )
    )


routes = [
    Route("/api/sessions", start_session, methods=["POST"]),
    Route("/api/sessions", list_sessions, methods=["GET"]),
    Route("/api/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/api/sessions/{session_id}", delete_session, methods=["DELETE"]),
    Route("/api/sessions/{session_id}/stop", stop_session, methods=["POST"]),
    Route("/api/sessions/{session_id}/pause", pause_session, methods=["POST"]),
    Route("/api/sessions/{session_id}/resume", resume_session, methods=["POST"]),
    Route("/api/sessions/{session_id}/input", inject_input, methods=["POST"]),
]
