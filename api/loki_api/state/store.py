"""The state store: every session's merged, in-memory view, and the one place
state changes become events.

Two writers feed it. The server itself (`create`, `update_record`: the session
supervisor) and the files under `.loki/sessions/<id>/` (`apply_file`: the
watcher, whatever program wrote them). Both go through the same transition
rules (`diff.py`) and the same bookkeeping of what was announced last, so a
change is published exactly once whoever reports it first. REST handlers only
read memory (`get`, `all`); nothing here re-reads a file per request.

Must be used from the event loop's thread (it publishes on the bus).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..bus import EventBus, iso_timestamp
from ..encoding import encode
from ..models import Agent, PhaseEventData, Session, Task
from ..settings import Settings
from ..statedir import StateDir
from . import diff
from .announcements import Announcements
from .diff import AgentLedger, Change
from .documents import (
    AGENTS_FILE,
    PHASE_FILE,
    SESSION_FILE,
    SESSION_FILES,
    STATE_FILE,
    TASKS_FILE,
    decode_agents,
    decode_current_session,
    decode_phase,
    decode_session,
    decode_session_fields,
    decode_tasks,
    shape_ok,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SESSIONS = "sessions"
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Fields of session.json the child process owns; for a managed session the
# server owns every other field (a child may rewrite the file with a stale status).
CHILD_FIELDS = ("current_phase", "task_count", "completed_tasks")


def valid_session_id(session_id: str) -> bool:
    """True when `session_id` may be joined into a path (SPEC §3)."""
    return SESSION_ID.fullmatch(session_id) is not None


class SessionState:
    """One session's merged, in-memory view (what REST reads)."""

    __slots__ = (
        "id",
        "dir",
        "record",
        "tasks",
        "managed",
        "ledger",
        "phase",
        "last_event",
        "seen",
        "announced",
    )

    def __init__(
        self, session_id: str, directory: Path, record: Session, *, managed: bool = False
    ) -> None:
        self.id = session_id
        self.dir = directory
        self.record = record
        self.tasks: list[Task] = []
        self.managed = managed
        self.ledger = AgentLedger()
        # The phase announced last (from session.json or phase.json).
        self.phase: str | None = None
        # The session event announced last (never the same one twice in a row).
        self.last_event: str | None = None
        # Raw bytes of each file as last applied (or written by us): a rewrite
        # with identical bytes is recognised without decoding.
        self.seen: dict[str, bytes] = {}
        # Facts already published, from the files or from the CLI's output.
        self.announced = Announcements()

    @property
    def agents(self) -> list[Agent]:
        """The agents currently active."""
        return list(self.ledger.active)

    # Counted from what was published, not only from `agents.json`: its writes can
    # be coalesced, so an agent that came and went between two reads is only known
    # from the output lines that announced it.
    @property
    def agents_spawned(self) -> int:
        return max(len(self.ledger.announced), self.announced.agents_announced)

    @property
    def agents_completed(self) -> int:
        return max(len(self.ledger.finished), self.announced.agents_ended)

    def __repr__(self) -> str:
        return f"SessionState({self.id!r}, status={self.record.status!r}, managed={self.managed})"


class StateStore:
    """Sessions by id, fed by the server's own changes and by the state files."""

    def __init__(self, settings: Settings, bus: EventBus, files: StateDir | None = None) -> None:
        self.settings = settings
        self.bus = bus
        # Every read and write under `.loki/` goes through this (SPEC §3.2).
        self.files = files or StateDir(settings.state_dir, settings.state_limits)
        self.limits = self.files.limits
        self.sessions_dir = settings.sessions_dir
        self._sessions: dict[str, SessionState] = {}
        self._sorted: list[SessionState] | None = None
        # Values derived from the sorted sessions and their tasks (see `view`).
        self._views: dict[Hashable, Any] = {}
        self.current_session: str | None = None
        # Sessions whose snapshot is out of date (see `snapshot.py`).
        self.changed: set[str] = set()
        self._clock: Callable[[], float] = time.time

    # ------------------------------------------------------------------ reading

    def get(self, session_id: str) -> SessionState | None:
        return self._sessions.get(session_id)

    def all(self) -> list[SessionState]:
        """Every session, newest first (by `startedAt`, then id)."""
        if self._sorted is None:
            self._sorted = sorted(
                self._sessions.values(),
                key=lambda s: (s.record.started_at or "", s.id),
                reverse=True,
            )
            self._views.clear()
        return self._sorted

    def view(self, key: Hashable, build: Callable[[], T]) -> T:
        """`build()`'s value, kept under `key` until the sessions change.

        For listings REST would otherwise recompute per request (all tasks,
        newest first). Dropped when a session is added, removed or re-ordered
        (whenever `all()` sorts again) or any session's tasks change; a value
        that reads session statuses must re-check them itself.
        """
        self.all()  # sorts again, and drops the views, after a change
        try:
            value: T = self._views[key]
        except KeyError:
            value = self._views[key] = build()
        return value

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ start-up

    def load(self, snapshots: dict[str, dict[str, Any]] | None = None) -> None:
        """Read every session directory and `state.json`.

        Without `snapshots` (a state directory no server has run on), what is on
        disk is taken as already announced and nothing is published. With them,
        each session starts from what the previous server last saw, and the
        files are diffed against that: whatever changed while no server ran
        (a task finished, a session completed or appeared or vanished) is
        published now.
        """
        try:
            self.files.makedirs(SESSIONS)
        except OSError as exc:
            log.error("cannot create .loki/%s: %s", SESSIONS, exc)
        self._read_current_session()
        if snapshots is not None:
            for session_id, snapshot in snapshots.items():
                if valid_session_id(session_id):
                    self._guarded(self._restore, session_id, snapshot)
        on_disk: set[str] = set()
        for name in self.files.list(SESSIONS, dirs=True):
            if valid_session_id(name):
                on_disk.add(name)
                self._guarded(self._refresh, name, publish=snapshots is not None)
        for session_id in [s for s in self._sessions if s not in on_disk]:
            self._session_file_removed(session_id)
        log.info("state store loaded %d session(s) from %s", len(self._sessions), self.sessions_dir)

    def _guarded(self, read: Callable[..., None], session_id: str, *args: Any, **kw: Any) -> None:
        """Read one session at start-up or rescan; whatever its files hold, never fatal."""
        try:
            read(session_id, *args, **kw)
        except Exception as exc:
            log.exception("skipping session %s: reading it failed", session_id)
            self.files.reject(f"{SESSIONS}/{session_id}", f"reading it failed: {exc!r}")

    def snapshot_of(self, session_id: str) -> dict[str, Any] | None:
        """What a successor needs to diff this session against (None: forgotten)."""
        state = self._sessions.get(session_id)
        if state is None:
            return None
        return {
            # Raw file bytes as latin-1 text: lossless, and JSON-able.
            "seen": {name: raw.decode("latin-1") for name, raw in state.seen.items()},
            "phase": state.phase,
            "lastEvent": state.last_event,
            "announced": state.announced.to_dict(),
        }

    def _restore(self, session_id: str, snapshot: dict[str, Any]) -> None:
        """Rebuild a session from its snapshot, silently."""
        seen = snapshot.get("seen")
        if not isinstance(seen, dict) or not isinstance(seen.get(SESSION_FILE), str):
            return
        raw = seen[SESSION_FILE].encode("latin-1")
        if not shape_ok(raw, f"snapshot of {session_id}", self.limits):
            return
        record = decode_session(raw, session_id, self.limits)
        if record is None:
            return
        state = SessionState(session_id, self.sessions_dir / session_id, record)
        state.seen[SESSION_FILE] = raw
        self._sessions[session_id] = state
        self._sorted = None
        for name in SESSION_FILES[1:]:
            text = seen.get(name)
            if isinstance(text, str):
                doc = text.encode("latin-1")
                if shape_ok(doc, f"snapshot of {session_id}/{name}", self.limits):
                    self._apply(state, name, doc, publish=False)
        phase = snapshot.get("phase")
        state.phase = phase if isinstance(phase, str) else None
        last_event = snapshot.get("lastEvent")
        state.last_event = last_event if isinstance(last_event, str) else None
        announced = snapshot.get("announced")
        if isinstance(announced, dict):
            state.announced = Announcements.from_dict(announced)

    def rescan(self) -> None:
        """Re-read every session directory and publish what changed (after a watcher restart)."""
        self._read_current_session()
        on_disk: set[str] = set()
        if not self.files.is_dir(SESSIONS):
            log.warning("cannot list .loki/%s", SESSIONS)
            return
        for name in self.files.list(SESSIONS, dirs=True):
            if valid_session_id(name):
                on_disk.add(name)
                self._guarded(self._refresh, name, publish=True)
        for session_id in list(self._sessions):
            if session_id not in on_disk:
                self.apply_file(self.sessions_dir / session_id / SESSION_FILE)

    def reread(self, session_id: str) -> None:
        """Read one session's files now and publish what changed (its process has ended).

        File events can arrive late (watchdog holds a rename's first half until the
        second comes, and file events queue behind it), so a session's end is
        announced only after its last writes are read: no task or agent fact
        follows `session:completed`.
        """
        if session_id in self._sessions:
            self._guarded(self._refresh, session_id, publish=True)

    # ------------------------------------------------------------ server writes

    def create(self, record: Session) -> SessionState:
        """A session this server starts: write `session.json`, announce `session:started`.

        Raises ValueError for an invalid or existing id, OSError when the file
        cannot be written.
        """
        if not valid_session_id(record.id):
            raise ValueError(f"invalid session id: {record.id!r}")
        if record.id in self._sessions:
            raise ValueError(f"session {record.id} already exists")
        now = iso_timestamp(self._clock())
        record = msgspec.structs.replace(
            record, started_at=record.started_at or now, updated_at=record.updated_at or now
        )
        directory = self.sessions_dir / record.id
        self.files.makedirs(directory)
        state = SessionState(record.id, directory, record, managed=True)
        state.phase = record.current_phase
        self._write_record(state)
        self._sessions[record.id] = state
        self._sorted = None
        self._publish(state, diff.session_changes(None, record, None))
        return state

    def adopt(self, session_id: str) -> SessionState | None:
        """Mark an on-disk session as supervised by this server (after a restart)."""
        state = self._sessions.get(session_id)
        if state is not None:
            state.managed = True
        return state

    def update_record(self, session_id: str, **changes: Any) -> Session:
        """Merge server-side changes (snake_case `Session` fields) into the record.

        Sets `updatedAt`, writes `session.json` atomically and publishes the
        transition event(s) once. Raises KeyError for an unknown session. A
        failed write is logged (a storage failure also on /health); the in-memory
        record is updated regardless.
        """
        state = self._sessions[session_id]
        old = state.record
        new = msgspec.structs.replace(old, **changes, updated_at=iso_timestamp(self._clock()))
        state.record = new
        self._sorted = None
        try:
            self._write_record(state)
        except OSError as exc:
            log.warning("cannot write %s: %s", state.dir / SESSION_FILE, exc)
        self._publish(state, self._record_changes(state, old, new))
        return new

    def remove(self, session_id: str) -> None:
        """Forget a session (its directory is the caller's to delete)."""
        if self._sessions.pop(session_id, None) is not None:
            self._sorted = None
            self.changed.add(session_id)
        if self.current_session == session_id:
            self.current_session = None

    def _write_record(self, state: SessionState) -> None:
        data = encode(state.record)
        self.files.write_atomic(state.dir / SESSION_FILE, data)
        state.seen[SESSION_FILE] = data
        self.changed.add(state.id)

    # ------------------------------------------------------------- file changes

    def apply_file(self, path: Path) -> None:
        """Re-read one changed, created or removed file (or session directory) and publish.

        Paths the store does not own are ignored; so is a file caught half
        written (it is read again on its next change).
        """
        if path == self.settings.state_dir / STATE_FILE:
            self._read_current_session()
            return
        if path.parent == self.sessions_dir:
            if valid_session_id(path.name):
                self._refresh(path.name, publish=True)
            return
        if path.parent.parent != self.sessions_dir or path.name not in SESSION_FILES:
            return
        session_id = path.parent.name
        if not valid_session_id(session_id):
            return
        raw = self.files.read(path, json=True)
        state = self._sessions.get(session_id)
        if path.name == SESSION_FILE:
            if raw is None:
                self._session_file_removed(session_id)
            elif state is None:
                # A new session: read its other files too, announcing everything.
                self._refresh(session_id, publish=True)
            else:
                self._apply(state, SESSION_FILE, raw, publish=True)
        elif state is not None and raw is not None:
            self._apply(state, path.name, raw, publish=True)

    def _refresh(self, session_id: str, *, publish: bool) -> None:
        """Read every file of one session directory (a full diff against memory)."""
        directory = self.sessions_dir / session_id
        docs = self.files.read_documents(directory, SESSION_FILES)
        raw = docs.get(SESSION_FILE) if docs is not None else None
        if raw is None:
            if session_id in self._sessions:
                self._session_file_removed(session_id)
            return
        state = self._sessions.get(session_id)
        if state is None:
            record = decode_session(raw, session_id, self.limits)
            if record is None:
                return
            if record.started_at is None:
                stat = self.files.lstat(directory)
                started = iso_timestamp(stat.st_mtime) if stat is not None else None
                record = msgspec.structs.replace(record, started_at=started)
            state = SessionState(session_id, directory, record)
            state.seen[SESSION_FILE] = raw
            self._sessions[session_id] = state
            self._sorted = None
            changes = diff.session_changes(None, record, None)
            changes += self._phase_to(state, record.current_phase)
            if publish:
                self._publish(state, changes)
            else:
                state.last_event = diff.initial_session_event(record)
        else:
            self._apply(state, SESSION_FILE, raw, publish=publish)
        assert docs is not None
        for name in SESSION_FILES[1:]:
            data = docs.get(name)
            if data is not None:
                self._apply(state, name, data, publish=publish)

    def _apply(self, state: SessionState, name: str, raw: bytes, *, publish: bool) -> None:
        """Decode one file's new bytes, diff against memory, update memory, publish."""
        if state.seen.get(name) == raw:
            return  # an unchanged rewrite (or our own write) says nothing new
        changes: list[Change]
        if name == SESSION_FILE:
            fields = decode_session_fields(raw, state.id, self.limits)
            if fields is None:
                return
            old = state.record
            new = self._merge(state, fields)
            state.record = new
            if new.started_at != old.started_at:
                self._sorted = None
                self._redate_tasks(state)
            changes = self._record_changes(state, old, new)
        elif name == PHASE_FILE:
            phase = decode_phase(raw, state.id, self.limits)
            if phase is None:
                return
            changes = self._phase_to(
                state, phase.current, previous=phase.previous, progress=phase.progress
            )
        elif name == TASKS_FILE:
            tasks = decode_tasks(raw, state.id, created_at=self._undated(state), limits=self.limits)
            if tasks is None:
                return
            changes = diff.task_changes(state.tasks, tasks)
            state.tasks = tasks
            self._views.clear()
        elif name == AGENTS_FILE:
            agents = decode_agents(raw, state.id, self.limits)
            if agents is None:
                return
            changes, state.ledger = diff.agent_changes(state.ledger, agents)
        else:
            return
        state.seen[name] = raw
        self.changed.add(state.id)
        if len(changes) > self.limits.max_items:
            log.warning(
                "%s/%s: %d events beyond the cap of %d per change not published",
                state.id,
                name,
                len(changes) - self.limits.max_items,
                self.limits.max_items,
            )
            changes = changes[: self.limits.max_items]
        if publish:
            self._publish(state, changes)
        else:
            for event_type, data in changes:  # announced before: remember, say nothing
                state.announced.admit(event_type, data)

    def _undated(self, state: SessionState) -> str:
        """The creation time of a task that does not give one: its session's start."""
        return state.record.started_at or iso_timestamp(self._clock())

    def _redate_tasks(self, state: SessionState) -> None:
        """The session's start moved: its undated tasks move with it (nothing to publish)."""
        raw = state.seen.get(TASKS_FILE)
        tasks = (
            None
            if raw is None
            else decode_tasks(raw, state.id, created_at=self._undated(state), limits=self.limits)
        )
        if tasks is not None:
            state.tasks = tasks
            self._views.clear()

    def _merge(self, state: SessionState, fields: dict[str, Any]) -> Session:
        """The record after reading `fields` from session.json.

        A managed session takes only the child's fields from the file; a session
        someone else runs takes every field the file sets.
        """
        if state.managed:
            fields = {name: fields[name] for name in CHILD_FIELDS if name in fields}
        return msgspec.structs.replace(state.record, **fields)

    def _record_changes(self, state: SessionState, old: Session, new: Session) -> list[Change]:
        changes = diff.session_changes(old, new, state.last_event)
        if new.current_phase != old.current_phase:
            changes += self._phase_to(state, new.current_phase)
        return changes

    def _phase_to(
        self,
        state: SessionState,
        phase: str | None,
        *,
        previous: str | None = None,
        progress: float | None = None,
    ) -> list[Change]:
        """Phase events for a reported phase, and remember it as announced."""
        changes = diff.phase_changes(state.phase, phase, previous=previous, progress=progress)
        if changes:
            state.phase = phase
            if state.record.current_phase != phase:
                state.record = msgspec.structs.replace(state.record, current_phase=phase)
        return changes

    def _session_file_removed(self, session_id: str) -> None:
        state = self._sessions.get(session_id)
        if state is None:
            return
        if state.managed and self.files.is_dir(state.dir):
            # The server owns this record: it is written again on the next change.
            state.seen.pop(SESSION_FILE, None)
            return
        changes = diff.session_changes(state.record, None, state.last_event)
        self.remove(session_id)
        self._publish(state, changes)

    def _read_current_session(self) -> None:
        raw = self.files.read(STATE_FILE, json=True)
        self.current_session = decode_current_session(raw, self.limits) if raw is not None else None

    # ---------------------------------------------------------------- publishing

    def report(self, session_id: str, event_type: str, data: Any) -> None:
        """Publish an event a session's output reported, unless the files already did.

        Phase, task, agent and session events can arrive twice: once as an output
        line, once as a state-file change. The first is published, the repeat
        dropped. Everything else (logs, metrics, input requests) passes straight on.
        """
        state = self._sessions.get(session_id)
        if state is not None:
            self.changed.add(session_id)
            if event_type == "phase:started" and isinstance(data, PhaseEventData):
                # Through the same rule as phase.json: the old phase completes first.
                self._publish(
                    state,
                    self._phase_to(
                        state, data.phase, previous=data.previous_phase, progress=data.progress
                    ),
                )
                return
            if event_type.startswith("session:"):
                if state.last_event == event_type:
                    return
                state.last_event = event_type
            else:
                data = state.announced.admit(event_type, data)
                if data is None:
                    return
        self.bus.publish(event_type, data, session_id)

    def _publish(self, state: SessionState, changes: list[Change]) -> None:
        self.changed.add(state.id)
        state.last_event = diff.last_session_event(changes, state.last_event)
        admit = state.announced.admit
        for event_type, data in changes:
            news = admit(event_type, data)
            if news is not None:
                self.bus.publish(event_type, news, state.id)
