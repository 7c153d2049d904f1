"""Wakes a session's supervisor the moment its output files grow.

The state watcher (watchdog) sees these writes too, but only after three
threads and a hop onto the loop: ~0.6 ms per output line, measured, which every
subscriber of that line waits for. Here the event loop reads an inotify
descriptor itself: one watch per supervised session's output directory, for
`IN_MODIFY` (output grew) and `IN_CLOSE_WRITE` (the last writer closed it:
the process has probably ended), and only `stdout.txt`/`stderr.txt` count.

Where inotify is not available (not Linux), `OutputWatch.create()` returns None
and the state watcher hands these changes to the supervisors instead. Either
way a supervisor also polls every 20 ms, so a lost notification (a full
inotify queue) delays output, never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .process import OUTPUT_FILES

log = logging.getLogger(__name__)

try:
    from inotify_simple import INotify, flags
except (ImportError, OSError):  # not Linux: the state watcher does this job
    INotify = None  # type: ignore[assignment,misc]


# Told whether the writer closed the file (else it wrote to it).
Wake = Callable[[bool], None]


class OutputWatch:
    """inotify on the event loop: `watch(directory, wake)` calls `wake(closed)` on output."""

    def __init__(self) -> None:
        self._inotify: Any = None
        self._by_wd: dict[int, tuple[Path, Wake]] = {}
        self._wd_of: dict[Path, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(cls) -> OutputWatch | None:
        """A watch, or None where inotify cannot be used (not Linux, no instances left)."""
        if INotify is None:
            return None
        try:
            INotify().close()  # can we have one? (the real one opens in `start`)
        except OSError as exc:
            log.warning(
                "cannot watch session output with inotify (%s); the state watcher does it", exc
            )
            return None
        return cls()

    def start(self) -> None:
        """Open the descriptor and read it on the running loop from now on."""
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as exc:  # lost a race for the last instance: supervisors poll
            log.error("cannot watch session output with inotify (%s); polling it", exc)
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fileno(), self._readable)

    def close(self) -> None:
        if self._inotify is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._inotify.fileno())
            self._loop = None
        self._by_wd.clear()
        self._wd_of.clear()
        self._inotify.close()
        self._inotify = None

    def watch(self, directory: Path, wake: Wake) -> bool:
        """Call `wake` whenever an output file in `directory` grows or is closed.

        False if it cannot (the supervisor then relies on its poll).
        """
        if self._inotify is None:
            return False
        try:
            # DONT_FOLLOW: a session that swaps its output dir for a symlink gets no watch.
            mask = flags.MODIFY | flags.CLOSE_WRITE | flags.DONT_FOLLOW
            wd = self._inotify.add_watch(os.fspath(directory), mask)
        except OSError as exc:
            log.debug("cannot watch %s for output (%s); polling it", directory, exc)
            return False
        self._by_wd[wd] = (directory, wake)
        self._wd_of[directory] = wd
        return True

    def unwatch(self, directory: Path) -> None:
        wd = self._wd_of.pop(directory, None)
        if wd is None or self._inotify is None:
            return
        self._by_wd.pop(wd, None)
        try:
            self._inotify.rm_watch(wd)
        except OSError:
            pass  # the directory is gone, and the kernel dropped the watch with it

    def _readable(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            # Broken for good: stop reading (no busy loop); supervisors poll.
            log.exception("reading inotify events failed; session output is polled from now on")
            self.close()
            return
        for event in events:
            if event.mask & flags.Q_OVERFLOW:  # events were lost: everyone reads
                for _, wake in list(self._by_wd.values()):
                    self._call(wake, True)
            elif event.mask & flags.IGNORED:  # its directory went away
                gone = self._by_wd.pop(event.wd, None)
                if gone is not None:
                    self._wd_of.pop(gone[0], None)
            elif event.name in OUTPUT_FILES:
                watched = self._by_wd.get(event.wd)
                if watched is not None:
                    self._call(watched[1], bool(event.mask & flags.CLOSE_WRITE))

    @staticmethod
    def _call(wake: Wake, closed: bool) -> None:
        try:
            wake(closed)
        except Exception:  # one session's failure must not cost the others their wake-up
            log.exception("handling new session output failed")
