"""What is wrong with this server right now, for `/health` and `/health/ready`.

Any part of the server reports a problem under a key of its own (`storage`,
`stateFiles`, `eventLog`, `cli`, `nats`, ...) and clears it when it is over:

    runtime.health.report("storage", "cannot write events.jsonl: No space left on device",
                          blocks_ready=True)
    runtime.health.clear("storage")

Any problem makes `/health` answer `degraded` with the reasons; one reported
with `blocks_ready=True` also fails `/health/ready` (503) under its key. The
server keeps serving either way: a problem is something to tell an operator,
never a reason to stop. Reporting is cheap and idempotent (a repeat of the
same reason is not logged again), so hot paths may report on every failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    reason: str
    blocks_ready: bool


class HealthProblems:
    """The current problems by key (one registry per runtime)."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}

    def report(self, key: str, reason: str, *, blocks_ready: bool = False) -> None:
        """`key` is wrong because of `reason` until `clear(key)`; logged when it changes."""
        problem = Problem(reason, blocks_ready)
        if self._problems.get(key) == problem:
            return
        self._problems[key] = problem
        log.warning("health: %s degraded: %s", key, reason)

    def clear(self, key: str) -> None:
        """`key` is fine again (a no-op when it was)."""
        if self._problems.pop(key, None) is not None:
            log.info("health: %s recovered", key)

    def get(self, key: str) -> str | None:
        problem = self._problems.get(key)
        return None if problem is None else problem.reason

    def reasons(self) -> dict[str, str]:
        """Every current problem: key → reason (empty when all is well)."""
        return {key: problem.reason for key, problem in self._problems.items()}

    def not_ready(self) -> dict[str, str]:
        """The problems that fail `/health/ready`: key → reason."""
        return {key: p.reason for key, p in self._problems.items() if p.blocks_ready}

    def __bool__(self) -> bool:
        return bool(self._problems)
