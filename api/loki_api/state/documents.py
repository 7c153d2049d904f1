"""Tolerant decoding of the state files other programs write (SPEC §3).

Every decoder takes the raw bytes of one file and returns a typed value, or
`None` when the file cannot be used at all (invalid JSON, a half-written file,
the wrong top-level shape). Unknown fields are ignored; a field with the wrong
type is dropped (with a debug log line) instead of failing the whole document.
Nothing here raises on bad input: a bad file is skipped and read again on its
next change. Strings are cut at `Limits.max_string` characters and a document
yields at most `Limits.max_items` tasks or agents (the rest counted and logged);
the bytes arrive already checked for size and nesting (`statedir.py`).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ..models import SESSION_STATUSES, TASK_STATUSES, Agent, Session, Task
from ..statedir import Limits, cut, json_shape_problem

DEFAULT_LIMITS = Limits()

log = logging.getLogger(__name__)

SESSION_FILE = "session.json"
TASKS_FILE = "tasks.json"
PHASE_FILE = "phase.json"
AGENTS_FILE = "agents.json"
STATE_FILE = "state.json"
# The per-session JSON files the store reads, in the order a full read applies them.
SESSION_FILES: tuple[str, ...] = (SESSION_FILE, PHASE_FILE, TASKS_FILE, AGENTS_FILE)

TASK_STATUS_SYNONYMS: dict[str, str] = {
    "in_progress": "running",
    "in progress": "running",
    "in-progress": "running",
    "done": "completed",
}
# Agent statuses that mean the agent has finished, and the subset meaning it failed.
AGENT_FINISHED = frozenset(
    {"completed", "complete", "done", "finished", "stopped", "failed", "error", "errored"}
)
AGENT_FAILED = frozenset({"failed", "error", "errored"})


class PhaseDoc(msgspec.Struct, frozen=True, kw_only=True):
    """`phase.json`: the phase the session is in."""

    current: str | None = None
    previous: str | None = None
    progress: float | None = None


def parse_json(raw: bytes, what: str) -> Any:
    """Decode JSON, or None (logged at debug) when the bytes are not valid JSON.

    The bytes come through `StateDir.read(json=True)` (or `shape_ok`), which
    rejects documents nested too deep or holding too many values before they
    get here; the RecursionError guard is only a last line of defence.
    """
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        log.debug("skipping %s: not valid JSON (%s)", what, exc)
        return None


def shape_ok(raw: bytes, what: str, limits: Limits = DEFAULT_LIMITS) -> bool:
    """True when `raw` may be decoded (for bytes that did not come from `StateDir.read`)."""
    problem = json_shape_problem(raw, limits.max_depth, limits.max_values)
    if problem is not None:
        log.warning("skipping %s: %s", what, problem)
    return problem is None


# ------------------------------------------------------------------ field pickers


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _ident(value: Any) -> str | None:
    """An id as a string: strings as they are, integers coerced."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _pick(
    doc: dict[str, Any],
    fields: dict[str, tuple[str, Any]],
    what: str,
    max_string: int = DEFAULT_LIMITS.max_string,
) -> dict[str, Any]:
    """Keyword arguments for a Struct from the wire fields of `doc` whose values fit.

    `fields` maps wire name → (python name, converter); a converter returns None
    for a value it cannot use, and that field is left at its default. Strings
    are cut at `max_string` characters.
    """
    picked: dict[str, Any] = {}
    for wire, (name, convert) in fields.items():
        value = doc.get(wire)
        if value is None:
            continue
        converted = convert(value)
        if converted is None:
            log.debug("%s: ignoring %s (wrong type %s)", what, wire, type(value).__name__)
            continue
        if isinstance(converted, str):
            converted = cut(converted, max_string)
        picked[name] = converted
    return picked


# ------------------------------------------------------------------------ session

_SESSION_FIELDS: dict[str, tuple[str, Any]] = {
    "prdPath": ("prd_path", _text),
    "provider": ("provider", _text),
    "status": ("status", _text),
    "startedAt": ("started_at", _text),
    "updatedAt": ("updated_at", _text),
    "pid": ("pid", _integer),
    "currentPhase": ("current_phase", _text),
    "taskCount": ("task_count", _integer),
    "completedTasks": ("completed_tasks", _integer),
    "exitCode": ("exit_code", _integer),
}


def decode_session_fields(
    raw: bytes, session_id: str, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any] | None:
    """`session.json` → the `Session` fields it sets (snake_case), usable ones only.

    A status outside `SESSION_STATUSES` is ignored like any other bad value.
    """
    what = f"{session_id}/{SESSION_FILE}"
    doc = parse_json(raw, what)
    if not isinstance(doc, dict):
        if doc is not None:
            log.debug("skipping %s: expected an object, got %s", what, type(doc).__name__)
        return None
    fields = _pick(doc, _SESSION_FIELDS, what, limits.max_string)
    if "status" in fields:
        status = fields["status"].strip().lower()
        if status in SESSION_STATUSES:
            fields["status"] = status
        else:
            log.debug("%s: ignoring unknown status %r", what, fields.pop("status"))
    return fields


def decode_session(raw: bytes, session_id: str, limits: Limits = DEFAULT_LIMITS) -> Session | None:
    """`session.json` → `Session`. The directory name is the id, whatever the file says."""
    fields = decode_session_fields(raw, session_id, limits)
    return None if fields is None else Session(id=session_id, **fields)


# -------------------------------------------------------------------------- tasks

_TASK_FIELDS: dict[str, tuple[str, Any]] = {
    "description": ("description", _text),
    "priority": ("priority", _integer),
    "progress": ("progress", _number),
    "output": ("output", _text),
    "error": ("error", _text),
    "duration": ("duration", _number),
    "createdAt": ("created_at", _text),
    "startedAt": ("started_at", _text),
    "completedAt": ("completed_at", _text),
    "agent": ("agent", _text),
    "updatedAt": ("updated_at", _text),
}


def normalise_task_status(value: Any) -> str:
    """Map a task status as written by any tool onto `TASK_STATUSES` (unknown → pending)."""
    if not isinstance(value, str):
        return "pending"
    status = value.strip().lower()
    status = TASK_STATUS_SYNONYMS.get(status, status)
    return status if status in TASK_STATUSES else "pending"


def normalise_task(
    doc: dict[str, Any],
    index: int,
    session_id: str,
    *,
    created_at: str,
    max_string: int = DEFAULT_LIMITS.max_string,
) -> Task:
    """One task object → `Task` (SPEC §3.1). A missing id becomes `task-<index>`.

    Every key of the original API's Task is set (SPEC §6): what the object lacks is
    null, `description` "", `priority` 0, and `createdAt` the given fallback.
    """
    title = _text(doc.get("title")) or _text(doc.get("subject")) or "Untitled"
    fields: dict[str, Any] = {
        "description": "",
        "priority": 0,
        "created_at": created_at,
        "started_at": None,
        "completed_at": None,
        "agent": None,
        "output": None,
        "error": None,
    }
    fields.update(_pick(doc, _TASK_FIELDS, f"{session_id}/{TASKS_FILE}", max_string))
    return Task(
        id=cut(_ident(doc.get("id")) or f"task-{index}", max_string),
        title=cut(title, max_string),
        status=normalise_task_status(doc.get("status")),
        session_id=session_id,
        **fields,
    )


def _capped(items: list[Any], limits: Limits, what: str, kind: str) -> list[Any]:
    """The first `max_items` entries; the rest counted in a warning."""
    if len(items) <= limits.max_items:
        return items
    log.warning(
        "%s: %d %s beyond the cap of %d ignored",
        what,
        len(items) - limits.max_items,
        kind,
        limits.max_items,
    )
    return items[: limits.max_items]


def decode_tasks(
    raw: bytes, session_id: str, *, created_at: str, limits: Limits = DEFAULT_LIMITS
) -> list[Task] | None:
    """`tasks.json` (`{"tasks": [...]}` or a bare list) → normalised tasks.

    Entries that are not objects are skipped; of two tasks with one id the last wins.
    `created_at` is the creation time of tasks that do not give theirs.
    """
    what = f"{session_id}/{TASKS_FILE}"
    doc = parse_json(raw, what)
    items = doc.get("tasks") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        if doc is not None:
            log.debug("skipping %s: no list of tasks", what)
        return None
    tasks: dict[str, Task] = {}
    for index, item in enumerate(_capped(items, limits, what, "tasks")):
        if not isinstance(item, dict):
            log.debug("%s: skipping entry %d (not an object)", what, index)
            continue
        task = normalise_task(
            item, index, session_id, created_at=created_at, max_string=limits.max_string
        )
        tasks.pop(task.id, None)
        tasks[task.id] = task
    return list(tasks.values())


# -------------------------------------------------------------------------- phase


def decode_phase(raw: bytes, session_id: str, limits: Limits = DEFAULT_LIMITS) -> PhaseDoc | None:
    """`phase.json` → `PhaseDoc`."""
    what = f"{session_id}/{PHASE_FILE}"
    doc = parse_json(raw, what)
    if not isinstance(doc, dict):
        if doc is not None:
            log.debug("skipping %s: expected an object", what)
        return None
    return PhaseDoc(
        **_pick(
            doc,
            {
                "current": ("current", _text),
                "previous": ("previous", _text),
                "progress": ("progress", _number),
            },
            what,
            limits.max_string,
        )
    )


# ------------------------------------------------------------------------- agents

_AGENT_FIELDS: dict[str, tuple[str, Any]] = {
    "type": ("type", _text),
    "model": ("model", _text),
    "task": ("task", _text),
    "status": ("status", _text),
}


def decode_agents(
    raw: bytes, session_id: str, limits: Limits = DEFAULT_LIMITS
) -> list[Agent] | None:
    """`agents.json` (`{"active": [...]}` or a bare list) → agents, in file order.

    Agents without an id are skipped: without one they cannot be told apart
    from one write to the next.
    """
    what = f"{session_id}/{AGENTS_FILE}"
    doc = parse_json(raw, what)
    items = doc.get("active", []) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        if doc is not None:
            log.debug("skipping %s: no list of agents", what)
        return None
    agents: dict[str, Agent] = {}
    for index, item in enumerate(_capped(items, limits, what, "agents")):
        agent_id = _ident(item.get("id")) if isinstance(item, dict) else None
        if agent_id is None:
            log.debug("%s: skipping entry %d (not an object with an id)", what, index)
            continue
        agent_id = cut(agent_id, limits.max_string)
        agents[agent_id] = Agent(id=agent_id, **_pick(item, _AGENT_FIELDS, what, limits.max_string))
    return list(agents.values())


def agent_finished(agent: Agent) -> bool:
    return (agent.status or "").strip().lower() in AGENT_FINISHED


def agent_failed(agent: Agent) -> bool:
    return (agent.status or "").strip().lower() in AGENT_FAILED


# -------------------------------------------------------------------------- state


def decode_current_session(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """`.loki/state.json` → its `currentSession`, if it names one."""
    doc = parse_json(raw, STATE_FILE)
    if not isinstance(doc, dict):
        return None
    return _ident(doc.get("currentSession"))
