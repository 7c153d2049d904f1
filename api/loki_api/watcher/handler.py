"""The watchdog side of the watcher: runs on watchdog's observer thread.

It only decides whether a path matters (cheap string checks) and hands it to
the event loop; all reading and diffing happens on the loop (see `service.py`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from ..sessions.process import OUTPUT_FILES
from ..state.documents import SESSION_FILES, STATE_FILE
from .logtail import LOG_SUFFIX

log = logging.getLogger(__name__)

# The kernel events we ask for. Opens and read-only closes (our own reads!)
# and directory-modified events are left out at the inotify mask.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class PathFilter:
    """Which paths the watcher cares about, by their place under `.loki/`.

    - `<state>/state.json`
    - `<sessions>/<id>` directories (appearing, disappearing)
    - `<sessions>/<id>/{session,tasks,phase,agents}.json` and `<sessions>/<id>/*.log`
    - with `output_dir`: `<output>/<id>/stdout.txt|stderr.txt` (a child's output: wakes
      its supervisor; only where `OutputWatch` cannot do that)

    Temp files of atomic writes, the session output copy and everything else
    are ignored; a rename is seen through its destination.
    """

    def __init__(
        self, state_dir: Path, sessions_dir: Path, *, output_dir: Path | None = None
    ) -> None:
        self.state_file = os.fspath(state_dir / STATE_FILE)
        self.sessions_dir = os.fspath(sessions_dir)
        self.output_dir = os.fspath(output_dir) if output_dir is not None else None
        self.session_files = frozenset(SESSION_FILES)

    def __call__(self, path: str, is_directory: bool) -> bool:
        parent, name = os.path.split(path)
        if is_directory:
            return parent == self.sessions_dir
        if path == self.state_file:
            return True
        grandparent = os.path.dirname(parent)
        if grandparent == self.output_dir:
            return name in OUTPUT_FILES
        if grandparent != self.sessions_dir:
            return False
        return name in self.session_files or name.endswith(LOG_SUFFIX)


class HandOff(FileSystemEventHandler):
    """Passes every relevant path of every event to `notify` (thread-safe)."""

    def __init__(self, wanted: PathFilter, notify: Callable[[str], None]) -> None:
        self.wanted = wanted
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Never let an exception escape: it would kill watchdog's dispatch thread.
        try:
            paths = [event.src_path]
            if event.event_type == "moved":
                paths.append(event.dest_path)  # an atomic write lands here
            for raw in paths:
                path = os.fsdecode(raw)
                if path and self.wanted(path, event.is_directory):
                    self.notify(path)
        except Exception:
            log.exception("file watcher could not hand off %r", event)
