"""What the store last knew about each session, kept on disk so a restart can diff against it.

Without it a restarted server could only take the files as it finds them, and
every change made while no server was running (a task finished, a session
completed) would never be announced. With it, start-up compares the files with
the last documents this state directory's server saw, and publishes the
difference: nothing lost, nothing announced twice.

One small JSON file per session under `.loki/events/snapshots/` (not watched),
written atomically, only for sessions that changed, a few times a second.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import msgspec

from ..atomic import write_atomically

log = logging.getLogger(__name__)

SUFFIX = ".json"


class SnapshotDir:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def exists(self) -> bool:
        return self.directory.is_dir()

    def load_all(self) -> dict[str, dict[str, Any]]:
        """Every session's snapshot by id; unreadable ones are skipped (and re-announced)."""
        snapshots: dict[str, dict[str, Any]] = {}
        try:
            paths = list(self.directory.glob(f"*{SUFFIX}"))
        except OSError:
            return snapshots
        for path in paths:
            try:
                doc = msgspec.json.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError):
                log.warning("skipping unreadable state snapshot %s", path)
                continue
            if isinstance(doc, dict):
                snapshots[path.name[: -len(SUFFIX)]] = doc
        return snapshots

    def save(self, session_id: str, doc: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.directory / f"{session_id}{SUFFIX}", msgspec.json.encode(doc))

    def remove(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{session_id}{SUFFIX}").unlink()
