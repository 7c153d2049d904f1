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

import logging
from typing import Any

import msgspec

from ..statedir import StateDir

log = logging.getLogger(__name__)

DIRECTORY = "events/snapshots"
SUFFIX = ".json"
# A snapshot holds a session's four documents as JSON text: each at most the
# document cap, and up to 6 bytes per byte once escaped (`\u00XX`).
DOCUMENTS_PER_SNAPSHOT = 4
ESCAPED_BYTES = 6


class SnapshotDir:
    def __init__(self, files: StateDir) -> None:
        self.files = files
        self.directory = files.path(DIRECTORY)
        self.cap = DOCUMENTS_PER_SNAPSHOT * ESCAPED_BYTES * files.limits.max_file + 1024 * 1024

    def exists(self) -> bool:
        return self.files.is_dir(DIRECTORY)

    def load_all(self) -> dict[str, dict[str, Any]]:
        """Every session's snapshot by id; unreadable ones are skipped (and re-announced)."""
        snapshots: dict[str, dict[str, Any]] = {}
        for name in self.files.list(DIRECTORY, suffix=SUFFIX):
            raw = self.files.read(f"{DIRECTORY}/{name}", cap=self.cap, json=True)
            try:
                doc = msgspec.json.decode(raw) if raw is not None else None
            except msgspec.DecodeError:
                doc = None
            if isinstance(doc, dict):
                snapshots[name[: -len(SUFFIX)]] = doc
            else:
                log.warning("skipping unreadable state snapshot %s", name)
        return snapshots

    def save(self, session_id: str, doc: dict[str, Any]) -> None:
        self.files.write_atomic(f"{DIRECTORY}/{session_id}{SUFFIX}", msgspec.json.encode(doc))

    def remove(self, session_id: str) -> None:
        self.files.remove(f"{DIRECTORY}/{session_id}{SUFFIX}")
