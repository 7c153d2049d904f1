"""The session output grammar (SPEC §5.2) and a bounded line splitter.

`parse_line` turns one line a CLI printed into `(event type, data Struct)`; it
is pure and on the hot path, so the cheap checks come first (the first
character decides which rule can apply, JSON is only tried for `{...`).
`LineSplitter` cuts a byte stream into lines without ever buffering more than
`MAX_LINE` bytes of one line.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from ..models import (
    EVENT_TYPES,
    AgentEventData,
    InputEventData,
    LogEventData,
    Model,
    PhaseEventData,
    TaskEventData,
)

MAX_LINE = 64 * 1024

Stream = Literal["stdout", "stderr"]
Parsed = tuple[str, Model]

_LEVEL_LINE = re.compile(
    r"\[(debug|info|warn|warning|error)\]\s*(?:\[([^\]]*)\]\s*)?(.*)", re.IGNORECASE | re.DOTALL
)
_PHASE_LINE = re.compile(r"(?:Starting|Entering|Beginning)\s+(.+?)\s+phase\b", re.IGNORECASE)
# `Spawning developer agent`, optionally naming the agent: `... agent (agent-001)`.
_AGENT_LINE = re.compile(r"Spawning\s+(.+?)\s+agent\b(?:\s*\(([^()\s]+)\))?", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error"}
_json_decode = msgspec.json.Decoder().decode


def parse_line(line: str, stream: Stream = "stdout") -> Parsed | None:
    """The event one output line stands for, or None for a blank line."""
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    line = line.strip()
    if not line:
        return None
    first = line[0]
    if first == "{" and line[-1] == "}":
        parsed = _parse_json(line)
        if parsed is not None:
            return parsed
    elif first == "[":
        match = _LEVEL_LINE.match(line)
        if match is not None:
            level = _LEVELS[match.group(1).lower()]
            return f"log:{level}", LogEventData(
                level=level, message=match.group(3).strip(), source=match.group(2) or None
            )
    elif first in "SEBseb":
        match = _PHASE_LINE.match(line)
        if match is not None:
            return "phase:started", PhaseEventData(phase=match.group(1))
        match = _AGENT_LINE.match(line)
        if match is not None:
            agent_type = match.group(1)
            agent_id = match.group(2) or unnamed_agent_id(agent_type)
            return "agent:spawned", AgentEventData(agent_id=agent_id, type=agent_type)
    if stream == "stderr":
        return "log:error", LogEventData(level="error", message=line, source="stderr")
    return "log:info", LogEventData(level="info", message=line)


def _parse_json(line: str) -> Parsed | None:
    try:
        doc = _json_decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    kind = doc.get("type")
    data = doc.get("data")
    if not isinstance(kind, str) or not isinstance(data, dict):
        return "log:info", LogEventData(level="info", message=line)
    try:
        data_type = EVENT_TYPES.get(kind)
        if data_type is not None:
            return kind, msgspec.convert(_with_implied_fields(kind, data), data_type)
        short = _SHORT_FORMS.get(kind)
        if short is not None:
            return short(data)
    except (msgspec.ValidationError, TypeError, ValueError):
        pass
    return "log:info", LogEventData(level="info", message=line)


# What an event's type already says about its data, when the line leaves it out.
_STATUS_OF_TYPE = {
    "task:created": "pending",
    "task:started": "running",
    "task:progress": "running",
    "task:completed": "completed",
    "task:failed": "failed",
    "session:started": "running",
    "session:paused": "paused",
    "session:resumed": "running",
    "session:stopped": "stopped",
    "session:completed": "completed",
    "session:failed": "failed",
}


def _with_implied_fields(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` completed from its type: a `log:error` line is level error, whatever it says;
    a task without a title is "Untitled"; a missing status follows the type."""
    domain = kind.split(":", 1)[0]
    if domain == "log":
        return {**data, "level": kind[4:]}
    implied: dict[str, Any] = {}
    if kind in _STATUS_OF_TYPE:
        implied["status"] = _STATUS_OF_TYPE[kind]
    if domain == "task":
        implied["title"] = data.get("subject") or "Untitled"
    elif domain == "agent":
        implied["type"] = "unknown"
    return {**implied, **data}


def _text(data: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if value is not None and value != "":
            return str(value)
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _short_phase(data: dict[str, Any]) -> Parsed:
    phase = _text(data, "phase", "name", "current")
    if phase is None:
        raise ValueError("phase without a name")
    return "phase:started", PhaseEventData(
        phase=phase,
        previous_phase=_text(data, "previousPhase", "previous"),
        progress=_number(data.get("progress")),
        eta=_number(data.get("eta")),
    )


_TASK_EVENT_FOR_STATUS = {
    "completed": "task:completed",
    "done": "task:completed",
    "failed": "task:failed",
    "error": "task:failed",
}


def _short_task(data: dict[str, Any]) -> Parsed:
    task_id = _text(data, "taskId", "id")
    if task_id is None:
        raise ValueError("task without an id")
    status = (_text(data, "status") or "running").lower()
    event = _TASK_EVENT_FOR_STATUS.get(status, "task:started")
    status = {"task:completed": "completed", "task:failed": "failed"}.get(event, status)
    return event, TaskEventData(
        task_id=task_id,
        title=_text(data, "title", "subject", "name") or "Untitled",
        status=status,
        description=_text(data, "description"),
        progress=_number(data.get("progress")),
        output=_text(data, "output"),
        error=_text(data, "error"),
        duration=_number(data.get("duration")),
    )


def _short_agent(data: dict[str, Any]) -> Parsed:
    agent_type = _text(data, "type", "agentType", "role") or "unknown"
    return "agent:spawned", AgentEventData(
        agent_id=_text(data, "agentId", "id") or unnamed_agent_id(agent_type),
        type=agent_type,
        model=_text(data, "model"),
        task=_text(data, "task"),
    )


def _short_input(data: dict[str, Any]) -> Parsed:
    return "input:requested", msgspec.convert(data, InputEventData)


_SHORT_FORMS = {
    "phase": _short_phase,
    "task": _short_task,
    "agent": _short_agent,
    "input_requested": _short_input,
}


def unnamed_agent_id(text: str) -> str:
    """The id given to an agent whose spawn line names none: its type, slugged."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "agent"


class LineSplitter:
    """Cuts a byte stream into text lines.

    A line longer than `max_line` bytes is cut at `max_line` and the rest of it,
    up to the next newline, is dropped, so one runaway line cannot grow memory.
    `finish()` returns the last line when the stream did not end with a newline.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._partial = b""
        self._discarding = False

    def feed(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        parts = chunk.split(b"\n")
        tail = parts.pop()
        lines: list[str] = []
        if parts:
            first = parts[0]
            if self._discarding:
                self._discarding = False
            else:
                if self._partial:
                    first = self._partial + first
                lines.append(first[: self.max_line].decode("utf-8", "replace"))
            self._partial = b""
            max_line = self.max_line
            for part in parts[1:]:
                if len(part) > max_line:
                    part = part[:max_line]
                lines.append(part.decode("utf-8", "replace"))
        if not self._discarding:
            self._partial += tail
            if len(self._partial) > self.max_line:
                lines.append(self._partial[: self.max_line].decode("utf-8", "replace"))
                self._partial = b""
                self._discarding = True
        return lines

    @property
    def pending(self) -> int:
        """Bytes held back as the start of an unfinished line."""
        return len(self._partial)

    def finish(self) -> list[str]:
        """The unterminated last line, if any; the splitter is reset."""
        partial, self._partial, self._discarding = self._partial, b"", False
        return [partial.decode("utf-8", "replace")] if partial else []
