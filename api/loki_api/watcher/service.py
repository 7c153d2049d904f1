"""The state watcher: file changes under `.loki/` become events within milliseconds.

How a write travels:

    watchdog threads (inotify)  --HandOff.on_any_event-->  loop.call_soon_threadsafe
        --> Coalescer.notify (loop) --call_soon--> Coalescer.drain (loop)
        --> StateStore.apply_file / LogTailer.poll --> EventBus.publish

`call_soon_threadsafe` is the one bridge between the threads and the loop. The
coalescer schedules a read on the next loop turn for the first notification of
a burst; more notifications for the same path before that read are merged into
it, and ones that come after it cause another read. No fixed debounce delay is
added, and because the store always reads the file's current content and diffs
it against the last known document, a quick running → completed is never lost
(at worst it is published as one step).

The observer is supervised: a dead observer thread is logged, replaced, and
followed by a rescan of everything (as is an inotify queue overflow, which
loses events). `problem()` is the readiness check.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from ..bus import EventBus
from ..health_problems import HealthProblems
from ..models import LogEventData
from ..sessions.process import OUTPUT_FILES
from ..settings import Settings
from ..state.store import StateStore
from ..statedir import UnusableEntry
from .handler import EVENT_FILTER, HandOff, PathFilter
from .logtail import LOG_SUFFIX, LogTailer

log = logging.getLogger(__name__)

# watchdog holds an IN_MOVED_FROM up to this long for its IN_MOVED_TO (to report one
# move), and every later file event waits behind it. The two halves of a rename come
# back to back, but when they straddle two reads the default 0.5 s wait is paid in
# full: measured, 1-3 of 300 bursts of atomic state-file writes took 0.502 s, against
# SPEC §4.3's tens of milliseconds. 20 ms still pairs every rename we saw (p99 21 ms).
MOVE_PAIRING_DELAY = 0.02


def shorten_move_pairing() -> None:
    """Set watchdog's move-pairing wait for this process (a class attribute it reads)."""
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # not Linux: no inotify, nothing to pair
        return
    InotifyMoveEventGrouper.delay = MOVE_PAIRING_DELAY


# watchdog reports an inotify queue overflow only through its log.
WATCHDOG_INOTIFY_LOGGER = "watchdog.observers.inotify_c"


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass  # the loop is closed: the server is shutting down


class Coalescer:
    """Loop-side merging of path notifications: one read per path per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, process: Callable[[str], bool]) -> None:
        """`process(path)` reads one path; it returns True when it should be read again."""
        self._loop = loop
        self._process = process
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._scheduled = False
        self.notifications = 0
        self.reads = 0

    def notify_threadsafe(self, path: str) -> None:
        """From any thread: `path` changed."""
        try:
            self._loop.call_soon_threadsafe(self.notify, path)
        except RuntimeError:
            pass  # the loop is closed: the server is shutting down

    def notify(self, path: str) -> None:
        """On the loop: `path` changed; read it on the next loop turn."""
        self.notifications += 1
        self._pending[path] = None
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.drain)

    def drain(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for path in pending:
            self.reads += 1
            try:
                again = self._process(path)
            except Exception:
                log.exception("failed to process a change of %s", path)
                continue
            if again:
                self.notify(path)


class _OverflowListener(logging.Handler):
    """Calls `on_overflow` when watchdog logs that the inotify queue overflowed."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage():
            self.on_overflow()


class StateWatcher:
    """Watches `.loki/` and feeds the store and the log tailer."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        bus: EventBus,
        *,
        check_interval: float = 0.5,
        on_output: Callable[[str], None] | None = None,
        health: HealthProblems | None = None,
    ) -> None:
        self.settings = settings
        self.health = health if health is not None else HealthProblems()
        # Why the watch cannot start: something planted where `.loki/sessions` must be.
        self.planted: str | None = None
        # Told the session id when a session's output copy grows (the supervisor reads it).
        self.on_output = on_output
        self.store = store
        self.sessions_dir = settings.sessions_dir
        self.files = store.files
        self.tailer = LogTailer(settings.sessions_dir, self._publish_log_line, files=store.files)
        self.bus = bus
        # Where the previous server stopped reading each log (from the snapshots).
        self.saved_log_positions: dict[Path, tuple[int, int]] = {}
        self.check_interval = check_interval
        self.restarts = 0
        self.rescans = 0  # full re-reads (start-up, restart, lost file events)
        # Output is watched here only for a manager without its own `OutputWatch`.
        self.output_dir = settings.output_dir if on_output is not None else None
        self._wanted = PathFilter(
            settings.state_dir, settings.sessions_dir, output_dir=self.output_dir
        )
        self._observer: BaseObserver | None = None
        self._coalescer: Coalescer | None = None
        self._overflow: _OverflowListener | None = None
        # True while (re)starting the observer fails: log that once, not every retry.
        self._failing = False

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled (a task in the runtime's task group).

        Reports started once the observer runs and what changed since the
        store was loaded has been published; stops the observer on the way out.
        """
        loop = asyncio.get_running_loop()
        self._coalescer = Coalescer(loop, self._process)
        self._overflow = _OverflowListener(lambda: _call_soon_threadsafe(loop, self._overflowed))
        watchdog_log = logging.getLogger(WATCHDOG_INOTIFY_LOGGER)
        # The overflow warning must get past the logger's level to reach the listener.
        watchdog_log.setLevel(min(watchdog_log.getEffectiveLevel(), logging.WARNING))
        watchdog_log.addHandler(self._overflow)
        try:
            self.tailer.prime(self.saved_log_positions)
            try:
                await anyio.to_thread.run_sync(self._start_observer)
            except UnusableEntry as exc:  # planted: on /health, no traceback
                log.warning("cannot watch .loki/sessions (%s); retrying", exc)
                self._failing = True
            except Exception:
                # Serve anyway: readiness reports the watcher down and we keep retrying.
                log.exception("could not start the file watcher; retrying")
                self._failing = True
            self.resync()  # whatever changed between store.load() and the first watch
            task_status.started()
            while True:
                await anyio.sleep(self.check_interval)
                problem = self.problem()
                if problem is not None:
                    if not self._failing:
                        log.error("file watcher is down (%s); restarting it", problem)
                    await self._restart()
        finally:
            watchdog_log.removeHandler(self._overflow)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stop_observer)

    def problem(self) -> str | None:
        """None while watching, else why not (the `watcher` readiness check)."""
        observer = self._observer
        if observer is None:
            return "file watcher is not running"
        if not observer.is_alive():
            return "file watcher thread has stopped"
        if not all(emitter.is_alive() for emitter in observer.emitters):
            return "file watcher emitter has stopped"
        return None

    def vital_problem(self) -> str | None:
        """The `watcher` check: a broken watcher is `unhealthy`, a planted entry is not.

        A symlink or file where `.loki/sessions` must be is hostile state-dir
        content (SPEC §3.2): reported as `sessionsDir` (degraded, not ready) and
        retried, but never a reason to restart the server.
        """
        return None if self.planted is not None else self.problem()

    def _start_observer(self) -> None:
        assert self._coalescer is not None
        shorten_move_pairing()
        try:
            self.files.makedirs(self.sessions_dir)
        except UnusableEntry as exc:
            self.planted = str(exc)
            self.health.report(
                "sessionsDir", f"cannot use .loki/sessions: {exc}", blocks_ready=True
            )
            raise
        if self.planted is not None:
            self.planted = None
            self.health.clear("sessionsDir")
        handler = HandOff(self._wanted, self._coalescer.notify_threadsafe)
        observer = Observer()
        observer.daemon = True
        try:
            # Two watches rather than all of `.loki/`: the durable event log under
            # `.loki/events/` is written on every event and must not wake us up.
            observer.schedule(
                handler, os.fspath(self.sessions_dir), recursive=True, event_filter=EVENT_FILTER
            )
            observer.schedule(
                handler,
                os.fspath(self.settings.state_dir),
                recursive=False,
                event_filter=EVENT_FILTER,
            )
            if self.output_dir is not None:
                self.files.makedirs(self.output_dir)
                observer.schedule(
                    handler, os.fspath(self.output_dir), recursive=True, event_filter=EVENT_FILTER
                )
            observer.start()
        except BaseException:
            observer.stop()  # also ends the inotify reader thread the observer began with
            raise
        self._observer = observer
        log.info("watching %s", self.sessions_dir)

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout=5)
        except Exception:
            log.exception("error while stopping the file watcher")

    async def _restart(self) -> None:
        await anyio.to_thread.run_sync(self._stop_observer)
        try:
            await anyio.to_thread.run_sync(self._start_observer)
        except UnusableEntry:
            self._failing = True  # said once at start-up, and on /health
            return
        except Exception:
            if not self._failing:
                log.exception("could not restart the file watcher; retrying")
            self._failing = True
            return
        if self._failing:
            log.info("file watcher is running again")
        self._failing = False
        self.restarts += 1
        self.resync()

    # ------------------------------------------------------------------ reading

    def resync(self) -> None:
        """Re-read everything and publish what differs (start-up, restart, overflow)."""
        self.rescans += 1
        self.store.rescan()
        if self.tailer.poll_all() and self._coalescer is not None:
            for path in self.tailer.log_files():
                self._coalescer.notify(os.fspath(path))

    def _publish_log_line(self, event_type: str, data: LogEventData, session_id: str) -> None:
        self.bus.publish(event_type, data, session_id)
        self.store.changed.add(session_id)  # its snapshot now holds a newer log position

    def _overflowed(self) -> None:
        log.warning("file events were lost; rescanning %s", self.sessions_dir)
        self.resync()

    def _process(self, path: str) -> bool:
        target = Path(path)
        if target.parent.parent == self.output_dir:
            if self.on_output is not None and target.name in OUTPUT_FILES:
                self.on_output(target.parent.name)
            return False
        if target.parent.parent == self.sessions_dir and path.endswith(LOG_SUFFIX):
            return self.tailer.poll(target)
        self.store.apply_file(target)
        if target.parent == self.sessions_dir:
            self._session_dir_changed(target)
        return False

    def _session_dir_changed(self, directory: Path) -> None:
        """A session directory appeared or went: tail its logs, or forget them."""
        logs = self.tailer.logs_in(directory)
        for path in self.tailer.known_under(directory):
            if path not in logs:
                self.tailer.forget(path)
        for path in logs:
            if self.tailer.poll(path) and self._coalescer is not None:
                self._coalescer.notify(os.fspath(path))
