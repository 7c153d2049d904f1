"""Which events a subscriber or a history query wants: `sessionId`, `types`, `minLevel`."""

from __future__ import annotations

from dataclasses import dataclass

from .models import EVENT_TYPES, LOG_LEVELS

LEVEL_RANK: dict[str, int] = {level: rank for rank, level in enumerate(LOG_LEVELS)}
_LEVEL_ALIASES = {"warning": "warn", "err": "error"}


class FilterError(ValueError):
    """A filter parameter names an unknown event type or log level."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """An immutable, hashable filter; equal filters share one subscriber group on the bus."""

    session_id: str | None = None
    types: frozenset[str] | None = None
    min_level: int = 0

    @classmethod
    def parse(cls, session_id: str | None, types: str | None, min_level: str | None) -> EventFilter:
        """Build a filter from query-string values, raising `FilterError` on bad input."""
        type_set: frozenset[str] | None = None
        if types:
            names = {t.strip() for t in types.split(",") if t.strip()}
            unknown = sorted(n for n in names if n not in EVENT_TYPES)
            if unknown:
                raise FilterError(f"Unknown event type(s): {', '.join(unknown)}")
            type_set = frozenset(names) or None
        rank = 0
        if min_level:
            level = min_level.strip().lower()
            level = _LEVEL_ALIASES.get(level, level)
            if level not in LEVEL_RANK:
                raise FilterError(
                    f"Unknown level: {min_level} (expected one of {', '.join(LOG_LEVELS)})"
                )
            rank = LEVEL_RANK[level]
        return cls(session_id=session_id or None, types=type_set, min_level=rank)

    def matches(self, event_type: str, session_id: str | None) -> bool:
        if self.session_id is not None and session_id != self.session_id:
            return False
        if self.types is not None and event_type not in self.types:
            return False
        # minLevel only ever hides log events; everything else passes it.
        if self.min_level and event_type.startswith("log:"):
            return LEVEL_RANK.get(event_type[4:], 0) >= self.min_level
        return True


MATCH_ALL = EventFilter()
