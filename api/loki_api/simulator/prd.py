"""PRD markdown → the simulator's task list."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TASKS = 50

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?:\[[ xX]\]\s+)?(.+?)\s*$")

BUILT_IN_TASKS: tuple[tuple[str, str], ...] = (
    ("Set up the project skeleton", "Built-in task"),
    ("Implement the core feature", "Built-in task"),
    ("Write tests", "Built-in task"),
)


@dataclass
class SimTask:
    id: str
    title: str
    description: str
    priority: int
    status: str = "pending"
    progress: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "priority": self.priority,
            "status": self.status,
            "progress": self.progress,
        }


def tasks_from_prd(text: str | None) -> list[SimTask]:
    """Bullets become tasks (their heading is the description); with no bullets,
    headings below the title do; with neither, a small built-in list."""
    items: list[tuple[str, str]] = []
    headings: list[tuple[int, str]] = []
    section = ""
    for line in (text or "").splitlines():
        heading = _HEADING.match(line)
        if heading:
            section = heading.group(2)
            headings.append((len(heading.group(1)), section))
            continue
        bullet = _BULLET.match(line)
        if bullet:
            where = f"From PRD section: {section}" if section else "From PRD"
            items.append((bullet.group(1), where))
    if not items and headings:
        top = min(level for level, _ in headings)
        sub = [title for level, title in headings if level > top] or [t for _, t in headings]
        items = [(title, "From PRD heading") for title in sub]
    if not items:
        items = list(BUILT_IN_TASKS)
    items = items[:MAX_TASKS]
    return [
        SimTask(id=f"task-{n:03d}", title=title, description=desc, priority=len(items) - n + 1)
        for n, (title, desc) in enumerate(items, start=1)
    ]
