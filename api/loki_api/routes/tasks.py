"""Task routes (SPEC §6): a session's tasks, one task, and tasks across sessions."""

from __future__ import annotations

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
from .sessions import DEFAULT_LIMIT, session_of, store_of, task_counts

# Sessions whose running tasks are "active" (a stopping session's tasks are being cut short).
LIVE_STATUSES = frozenset({"starting", "running", "paused"})


def page(request: Request, tasks: list[Task]) -> tuple[list[Task], Pagination]:
    status = query_choice(request, "status", TASK_STATUSES)
    limit = query_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    offset = query_int(request, "offset", 0)
    assert limit is not None and offset is not None
    if status is not None:
        tasks = [t for t in tasks if t.status == status]
    selected = tasks[offset:offset + limit]
    return selected, Pagination(total=len(tasks), limit=limit, offset=offset,
                                has_more=offset + len(selected) < len(tasks))


async def session_tasks(request: Request) -> Response:
    state = session_of(request)
    tasks, pagination = page(request, state.tasks)
    return json_response(SessionTaskList(tasks=tasks, pagination=pagination,
                                         summary=task_counts(state.tasks)))


async def session_task(request: Request) -> Response:
    state = session_of(request)
    task_id = request.path_params["task_id"]
    for task in state.tasks:
        if task.id == task_id:
            return json_response(TaskDetail(task=task))
    raise NotFound(f"Task not found: {task_id} in session {state.id}",
                   details={"sessionId": state.id, "taskId": task_id})


async def all_tasks(request: Request) -> Response:
    """Tasks of every session, newest first: by creation time when the task has one,
    else by its session's start, later entries of one session first."""
    keyed: list[tuple[str, int, Task]] = []
    for state in store_of(request).all():
        started = state.record.started_at or ""
        for index, task in enumerate(state.tasks):
            keyed.append((task.created_at or started, index, task))
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    tasks, pagination = page(request, [task for _, _, task in keyed])
    return json_response(TaskList(tasks=tasks, pagination=pagination))


async def active_tasks(request: Request) -> Response:
    tasks = [task for state in store_of(request).all()
             if state.record.status in LIVE_STATUSES
             for task in state.tasks if task.status == "running"]
    return json_response(TaskQueue(tasks=tasks, count=len(tasks)))


async def queued_tasks(request: Request) -> Response:
    """Pending and queued tasks of sessions still under way, highest priority first."""
    tasks = [task for state in store_of(request).all()
             if state.record.status in ACTIVE_STATUSES
             for task in state.tasks if task.status in ("pending", "queued")]
    # Stable sort: equal priorities keep their session/file order; no priority goes last.
    tasks.sort(key=lambda t: -(t.priority if t.priority is not None else -(2**31)))
    return json_response(TaskQueue(tasks=tasks, count=len(tasks)))


routes = [
    Route("/api/sessions/{session_id}/tasks", session_tasks, methods=["GET"]),
    Route("/api/sessions/{session_id}/tasks/{task_id}", session_task, methods=["GET"]),
    Route("/api/tasks", all_tasks, methods=["GET"]),
    Route("/api/tasks/active", active_tasks, methods=["GET"]),
    Route("/api/tasks/queue", queued_tasks, methods=["GET"]),
]
