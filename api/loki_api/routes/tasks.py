"""Task routes (SPEC §6): a session's tasks, one task, and tasks across sessions."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import NotFound
from ..models import (
    TASK_STATUSES,
    Pagination,
    SessionTaskList,
    Task,
    TaskDetail,
    TaskList,
    TaskQueue,
)
from ..params import MAX_LIMIT, json_response, query_choice, query_int
from ..sessions.manager import ACTIVE_STATUSES
from ..state import SessionState, StateStore
from .sessions import DEFAULT_LIMIT, session_of, store_of, task_counts

# Sessions whose running tasks are "active" (a stopping session's tasks are being cut short).
LIVE_STATUSES = frozenset({"starting", "running", "paused"})
RUNNING = frozenset({"running"})
WAITING = frozenset({"pending", "queued"})


Listed = list[tuple[SessionState, Task]]


def query_page(request: Request) -> tuple[str | None, int, int]:
    """The `status`, `limit` and `offset` query parameters (4xx when invalid)."""
    status = query_choice(request, "status", TASK_STATUSES)
    limit = query_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    offset = query_int(request, "offset", 0)
    assert limit is not None and offset is not None
    return status, limit, offset


def page_of(tasks: list[Task], limit: int, offset: int) -> tuple[list[Task], Pagination]:
    selected = tasks[offset : offset + limit]
    return selected, Pagination(
        total=len(tasks), limit=limit, offset=offset, has_more=offset + len(selected) < len(tasks)
    )


def newest_tasks(store: StateStore) -> list[Task]:
    """Tasks of every session, newest first: by creation time when the task has one,
    else by its session's start, later entries of one session first."""
    keyed: list[tuple[str, int, Task]] = []
    for state in store.all():
        started = state.record.started_at or ""
        for index, task in enumerate(state.tasks):
            keyed.append((task.created_at or started, index, task))
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [task for _, _, task in keyed]


def newest_tasks_in(store: StateStore, status: str | None) -> list[Task]:
    """`newest_tasks`, only those in `status` when given; kept until the store changes."""
    if status is None:
        return store.view(newest_tasks, partial(newest_tasks, store))
    return store.view(
        (newest_tasks, status),
        lambda: [task for task in newest_tasks_in(store, None) if task.status == status],
    )


def tasks_in(store: StateStore, statuses: frozenset[str]) -> Listed:
    """(session, task) for every task in `statuses`, in session order; kept until the
    store changes. Session statuses are not part of it: callers check them per request."""
    return store.view(
        ("tasks_in", statuses),
        lambda: [
            (state, task)
            for state in store.all()
            for task in state.tasks
            if task.status in statuses
        ],
    )


async def session_tasks(request: Request) -> Response:
    state = session_of(request)
    status, limit, offset = query_page(request)
    tasks = state.tasks if status is None else [t for t in state.tasks if t.status == status]
    selected, pagination = page_of(tasks, limit, offset)
    return json_response(
        SessionTaskList(tasks=selected, pagination=pagination, summary=task_counts(state.tasks))
    )


async def session_task(request: Request) -> Response:
    state = session_of(request)
    task_id = request.path_params["task_id"]
    for task in state.tasks:
        if task.id == task_id:
            return json_response(TaskDetail(task=task))
    raise NotFound(
        f"Task not found: {task_id} in session {state.id}",
        details={"sessionId": state.id, "taskId": task_id},
    )


async def all_tasks(request: Request) -> Response:
    """Tasks of every session, newest first (see `newest_tasks`), one page."""
    status, limit, offset = query_page(request)
    tasks, pagination = page_of(newest_tasks_in(store_of(request), status), limit, offset)
    return json_response(TaskList(tasks=tasks, pagination=pagination))


async def active_tasks(request: Request) -> Response:
    """Running tasks of sessions still running (a stopping session's are being cut short)."""
    tasks = [
        task
        for state, task in tasks_in(store_of(request), RUNNING)
        if state.record.status in LIVE_STATUSES
    ]
    return json_response(TaskQueue(tasks=tasks, count=len(tasks)))


def by_priority(store: StateStore) -> Listed:
    """Pending and queued tasks, highest priority first; equal priorities keep their
    session/file order; no priority is 0."""
    waiting = list(tasks_in(store, WAITING))
    waiting.sort(key=lambda item: -item[1].priority)
    return waiting


async def queued_tasks(request: Request) -> Response:
    """Pending and queued tasks of sessions still under way, highest priority first."""
    store = store_of(request)
    tasks = [
        task
        for state, task in store.view(by_priority, partial(by_priority, store))
        if state.record.status in ACTIVE_STATUSES
    ]
    return json_response(TaskQueue(tasks=tasks, count=len(tasks)))


routes = [
    Route("/api/sessions/{session_id}/tasks", session_tasks, methods=["GET"]),
    Route("/api/sessions/{session_id}/tasks/{task_id}", session_task, methods=["GET"]),
    Route("/api/tasks", all_tasks, methods=["GET"]),
    Route("/api/tasks/active", active_tasks, methods=["GET"]),
    Route("/api/tasks/queue", queued_tasks, methods=["GET"]),
]
