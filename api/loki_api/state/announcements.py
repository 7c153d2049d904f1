"""What has been announced for one session, so a fact reported twice is published once.

A session's CLI reports the same facts two ways: as output lines (`Starting
development phase`, `{"type": "task:completed", ...}`, SPEC §5.2) and as state
files (`phase.json`, `tasks.json`, SPEC §4.3). Whichever arrives first is
published; the other is recognised here and dropped.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..models import AgentEventData, PhaseEventData, TaskEventData
from ..sessions.output import unnamed_agent_id


class Announcements:
    __slots__ = (
        "phase_started",
        "phase_ended",
        "task_created",
        "task_status",
        "task_progress",
        "agent_spawned",
        "agent_ended",
        "active_types",
        "unnamed",
        "aliases",
    )

    def __init__(self) -> None:
        self.phase_started: str | None = None
        self.phase_ended: dict[str, str] = {}  # phase -> phase:completed / phase:failed
        self.task_created: set[str] = set()
        self.task_status: dict[str, str] = {}  # task id -> last task status event
        self.task_progress: dict[str, float | None] = {}
        self.agent_spawned: set[str] = set()
        self.agent_ended: set[str] = set()
        self.active_types: dict[str, str] = {}  # agent id -> type, while it runs
        # Spawns announced from a `Spawning <type> agent` line, which names no id,
        # not yet matched with the agent the state files name: type -> count.
        self.unnamed: dict[str, int] = {}
        # Named agent id -> the unnamed id it was first announced under, so its end
        # is published under the id subscribers know.
        self.aliases: dict[str, str] = {}

    def admit(self, event_type: str, data: Any) -> Any | None:
        """The data to publish when this event says something new (and remember it),
        None for a repeat."""
        if isinstance(data, PhaseEventData):
            new = self._phase(event_type, data.phase)
        elif isinstance(data, TaskEventData):
            new = self._task(event_type, data)
        elif isinstance(data, AgentEventData) and event_type != "agent:output":
            new = self._agent(event_type, data)
            alias = self.aliases.get(data.agent_id)
            if new and alias is not None and event_type != "agent:spawned":
                return msgspec.structs.replace(data, agent_id=alias)
        else:
            new = True
        return data if new else None

    def _phase(self, event_type: str, phase: str) -> bool:
        if event_type == "phase:started":
            if self.phase_started == phase:
                return False
            self.phase_started = phase
            self.phase_ended.pop(phase, None)  # a phase entered again may end again
            return True
        if self.phase_ended.get(phase) == event_type:
            return False
        self.phase_ended[phase] = event_type
        if self.phase_started == phase:
            self.phase_started = None
        return True

    def _task(self, event_type: str, data: TaskEventData) -> bool:
        task_id = data.task_id
        if event_type == "task:created":
            if task_id in self.task_created:
                return False
            self.task_created.add(task_id)
            return True
        if event_type == "task:progress":
            if task_id in self.task_progress and self.task_progress[task_id] == data.progress:
                return False
            self.task_progress[task_id] = data.progress
            return True
        if self.task_status.get(task_id) == event_type:
            return False
        self.task_status[task_id] = event_type
        self.task_created.add(task_id)
        return True

    def _agent(self, event_type: str, data: AgentEventData) -> bool:
        agent_id, agent_type = data.agent_id, data.type
        if event_type == "agent:spawned":
            if agent_id in self.agent_spawned:
                return False
            if agent_id == unnamed_agent_id(agent_type):
                # A spawn line without an id: the same agent as a running one of its type?
                if agent_type in self.active_types.values():
                    return False
                self.unnamed[agent_type] = self.unnamed.get(agent_type, 0) + 1
                return True
            self.agent_spawned.add(agent_id)
            self.active_types[agent_id] = agent_type
            if self.unnamed.get(agent_type):
                self.unnamed[agent_type] -= 1  # announced already, by its spawn line
                self.aliases[agent_id] = unnamed_agent_id(agent_type)
                return False
            return True
        self.active_types.pop(agent_id, None)
        if agent_id in self.agent_ended:
            return False
        if agent_id not in self.agent_spawned and self.unnamed.get(agent_type):
            # It ends before the state files named it (their change can come late):
            # the agent its spawn line announced, under the id subscribers know.
            self.unnamed[agent_type] -= 1
            self.aliases[agent_id] = unnamed_agent_id(agent_type)
        self.agent_ended.add(agent_id)
        self.agent_spawned.add(agent_id)
        return True

    @property
    def agents_announced(self) -> int:
        """Agents whose spawn was published (by output line or state file), each once."""
        return len(self.agent_spawned) + sum(self.unnamed.values())

    @property
    def agents_ended(self) -> int:
        return len(self.agent_ended)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy, for the store's snapshot."""
        return {
            "phaseStarted": self.phase_started,
            "phaseEnded": self.phase_ended,
            "taskCreated": sorted(self.task_created),
            "taskStatus": self.task_status,
            "taskProgress": self.task_progress,
            "agentSpawned": sorted(self.agent_spawned),
            "agentEnded": sorted(self.agent_ended),
            "activeTypes": self.active_types,
            "unnamed": self.unnamed,
            "aliases": self.aliases,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Announcements:
        """Rebuild from `to_dict()` output; anything malformed starts empty."""
        made = cls()
        try:
            made.phase_started = doc.get("phaseStarted")
            made.phase_ended = dict(doc.get("phaseEnded") or {})
            made.task_created = set(doc.get("taskCreated") or ())
            made.task_status = dict(doc.get("taskStatus") or {})
            made.task_progress = dict(doc.get("taskProgress") or {})
            made.agent_spawned = set(doc.get("agentSpawned") or ())
            made.agent_ended = set(doc.get("agentEnded") or ())
            made.active_types = dict(doc.get("activeTypes") or {})
            made.unnamed = dict(doc.get("unnamed") or {})
            made.aliases = dict(doc.get("aliases") or {})
        except (TypeError, ValueError, AttributeError):
            return cls()
        return made
