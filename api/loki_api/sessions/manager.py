"""`SessionManager`: starts, supervises, controls and re-adopts session processes.

Each supervised session is one task in the manager's task group. The task
tails the child's output files (publishing each line's event straight onto the
bus, no queue in between) and notices the child's exit, which it turns into
the final status (SPEC §5.3). Status changes go through the `StateStore`,
which writes `session.json` and publishes the session events exactly once.

A server restart does not end sessions: children live in their own process
group, and `supervisor.json` in the session directory remembers that this
server started them. At start-up the manager re-adopts every such session
whose process still runs (it keeps tailing its output and can stop it) and
closes the others by the exit code the launcher recorded (`completed`,
`failed`, or `stopped` when a stop was under way; `failed` when unknown).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..bus import EventBus
from ..models import LogEventData, Session, SessionCounts
from ..settings import Settings
from ..state import SessionState, StateStore, valid_session_id
from ..tally import OutputTally
from . import control
from .cli_resolution import CliCommand, resolve_cli
from .errors import (
    CliUnavailable,
    LaunchFailed,
    ManagerNotRunning,
    SessionLimitReached,
    UnknownSession,
    WrongState,
)
from .output_watch import OutputWatch
from .process import (
    EXIT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    OutputTail,
    exit_status,
    find_session_process,
    group_alive,
    process_alive,
    recorded_exit_code,
    runs_session,
    signal_group,
    spawn,
)

log = logging.getLogger(__name__)

SUPERVISOR_FILE = "supervisor.json"
# Statuses of a session whose process may still run.
ACTIVE_STATUSES = frozenset({"starting", "running", "paused", "stopping"})
INPUT_STATUSES = frozenset({"starting", "running", "paused"})
# How often an idle session's output files and process are checked.
POLL_INTERVAL = 0.02
# How often, while output flows, the read position is saved for a successor server.
OFFSET_SAVE_INTERVAL = 0.5
# After the last writer closed its output (a process closes its files just
# before it becomes waitable), how long to look for its exit every millisecond.
EXIT_WATCH = 0.1


# A refused start -> the `outcome` label of loki_session_starts_total (else "error").
START_OUTCOMES: dict[type[Exception], str] = {
    CliUnavailable: "unavailable",
    ManagerNotRunning: "unavailable",
    SessionLimitReached: "busy",
}


class Supervised:
    """A session process this server watches: our child, or one re-adopted after a restart."""

    def __init__(
        self,
        session_id: str,
        directory: Path,
        output_dir: Path,
        pgid: int,
        proc: subprocess.Popen[bytes] | None,
        *,
        from_end: bool = False,
        offsets: dict[str, int] | None = None,
    ) -> None:
        self.id = session_id
        self.dir = directory
        self.output_dir = output_dir
        self.pgid = pgid
        self.proc = proc
        self.stopping = False
        offsets = offsets or {}
        self.tails = [
            OutputTail(
                output_dir / name,
                stream,
                from_end=from_end,  # type: ignore[arg-type]
                offset=offsets.get(name),
            )
            for name, stream in ((STDOUT_FILE, "stdout"), (STDERR_FILE, "stderr"))
        ]
        self.done = anyio.Event()
        # Set when the watcher sees the output files change: read now, not at the next poll.
        self.wakeup = anyio.Event()
        self.offsets_saved_at = 0.0
        self.output_closed_at = 0.0

    def wake(self) -> None:
        self.wakeup.set()

    async def idle(self) -> None:
        """Wait until the output files change, or at most one poll interval."""
        with anyio.move_on_after(POLL_INTERVAL):
            await self.wakeup.wait()
        self.wakeup = anyio.Event()

    def save_offsets(self) -> None:
        """Remember how far the output was published, for the next server to go on from."""
        path = self.dir / SUPERVISOR_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        doc["offsets"] = {
            tail.path.name: tail.position for tail in self.tails if tail.position is not None
        }
        control.write_atomically(path, json.dumps(doc).encode())
        self.offsets_saved_at = time.monotonic()

    def exited(self) -> tuple[bool, int | None]:
        """(has the process ended, its exit code when known)."""
        if self.proc is not None:
            code = self.proc.poll()  # also reaps it: no zombie
            return (False, None) if code is None else (True, exit_status(code))
        if process_alive(self.pgid):
            return (False, None)
        return (True, recorded_exit_code(self.dir))

    def leader_running(self) -> bool:
        return not self.exited()[0]


def saved_offsets(directory: Path) -> dict[str, int]:
    """Output offsets a previous server saved, consumed so they are used once."""
    path = directory / SUPERVISOR_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    offsets = doc.pop("offsets", None) if isinstance(doc, dict) else None
    if offsets is None:
        return {}
    control.write_atomically(path, json.dumps(doc).encode())
    return {
        name: value
        for name, value in offsets.items()
        if isinstance(name, str) and isinstance(value, int) and value >= 0
    }


class SessionManager:
    """Every session process this server supervises."""

    def __init__(
        self, settings: Settings, store: StateStore, bus: EventBus, cli: CliCommand | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.cli = cli if cli is not None else resolve_cli(settings)
        self._supervised: dict[str, Supervised] = {}
        self._tg: TaskGroup | None = None
        # For /metrics: start attempts by (provider, outcome); output of ended supervisors.
        self.starts: dict[tuple[str, str], int] = {}
        self._output_done = OutputTally()
        # Wakes a supervisor as soon as its output grows (None: the state watcher does).
        self.output_watch = OutputWatch.create()

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise until cancelled. Re-adopts live sessions before reporting started."""
        if self.output_watch is not None:
            self.output_watch.start()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    self.readopt()
                    task_status.started()
                    await anyio.sleep_forever()
                finally:
                    self._tg = None
                    with anyio.CancelScope(shield=True):
                        await self._shutdown()
        finally:
            if self.output_watch is not None:
                self.output_watch.close()

    async def _shutdown(self) -> None:
        if self.settings.stop_sessions_on_exit:
            for sup in list(self._supervised.values()):
                if not sup.stopping:
                    self._begin_stop(sup)
            deadline = time.monotonic() + self.settings.stop_grace
            while (
                any(group_alive(s.pgid) for s in self._supervised.values())
                and time.monotonic() < deadline
            ):
                await anyio.sleep(0.05)
        for sup in list(self._supervised.values()):
            if sup.stopping:
                # A stop was under way: do not leave it half done behind us.
                signal_group(sup.pgid, signal.SIGKILL)
                with anyio.move_on_after(1):
                    while sup.leader_running():
                        await anyio.sleep(0.01)
            exited, code = sup.exited()
            if exited:
                self._drain(sup)
                self._finished(sup, code)
            else:
                sup.save_offsets()
                for tail in sup.tails:
                    tail.close()
                log.info(
                    "session %s keeps running (pid %d) after the server exits", sup.id, sup.pgid
                )

    def readopt(self) -> None:
        """After a restart: supervise our sessions that still run, close the others."""
        for state in list(self.store.all()):
            record = state.record
            if record.status not in ACTIVE_STATUSES or state.id in self._supervised:
                continue
            if not (state.dir / SUPERVISOR_FILE).exists():
                continue  # someone else runs it; not ours to judge
            pid = record.pid if record.pid and runs_session(record.pid, state.id) else None
            pid = pid or find_session_process(state.id)
            self.store.adopt(state.id)
            if pid is None:
                offsets = saved_offsets(state.dir)
                if offsets:
                    # Publish what it printed after the last saved position, before it ended.
                    ended = Supervised(
                        state.id, state.dir, self._output_of(state.id), 0, None, offsets=offsets
                    )
                    self._drain(ended)  # closes its tails
                    self._count_output(ended)
                code = recorded_exit_code(state.dir)
                status = (
                    "stopped"
                    if record.status == "stopping" or control.stop_requested(state.dir)
                    else "completed"
                    if code == 0
                    else "failed"
                )
                log.warning(
                    "session %s ended while no server watched it (exit code %s): %s",
                    state.id,
                    code,
                    status,
                )
                self.store.update_record(state.id, status=status, exit_code=code)
                continue
            log.info("re-adopting session %s (pid %d)", state.id, pid)
            # Go on from where a graceful predecessor stopped publishing, else from now.
            sup = Supervised(
                state.id,
                state.dir,
                self._output_of(state.id),
                pid,
                None,
                from_end=True,
                offsets=saved_offsets(state.dir),
            )
            if record.pid != pid:
                self.store.update_record(state.id, pid=pid)
            self._watch(sup)
            if record.status == "stopping":
                self._begin_stop(sup, resend=True)

    # ---------------------------------------------------------------- commands

    def start(
        self,
        prd_path: str | None,
        provider: str,
        *,
        dry_run: bool = False,
        verbose: bool = False,
        timeout: float | None = None,
    ) -> Session:
        """Start a session; returns its record. The caller has validated the input.

        With `timeout` (seconds) the session is stopped if it is still running then.
        Every attempt is counted by provider and outcome (for /metrics).
        """
        outcome = "error"
        try:
            record = self._start(
                prd_path, provider, dry_run=dry_run, verbose=verbose, timeout=timeout
            )
            outcome = "started"
            return record
        except Exception as exc:
            outcome = START_OUTCOMES.get(type(exc), "error")
            raise
        finally:
            key = (provider, outcome)
            self.starts[key] = self.starts.get(key, 0) + 1

    def _start(
        self,
        prd_path: str | None,
        provider: str,
        *,
        dry_run: bool,
        verbose: bool,
        timeout: float | None,
    ) -> Session:
        if not self.cli.available:
            raise CliUnavailable(self.cli.problem or "No Loki CLI available")
        if self._tg is None:
            raise ManagerNotRunning()
        if len(self._supervised) >= self.settings.max_sessions:
            raise SessionLimitReached(next(iter(self._supervised)))
        session_id = f"session_{int(time.time() * 1000)}_{secrets.token_hex(4)}"
        state = self.store.create(
            Session(id=session_id, prd_path=prd_path, provider=provider, status="starting")
        )
        argv = self.cli.session_argv(provider, prd_path, dry_run=dry_run, verbose=verbose)
        env = {
            **os.environ,
            "LOKI_SESSION_ID": session_id,
            "LOKI_API_MODE": "true",
            "LOKI_DIR": str(self.settings.loki_dir),
        }
        output_dir = self.settings.output_dir / session_id
        try:
            proc = spawn(
                argv,
                cwd=self.settings.loki_dir,
                env=env,
                output_dir=output_dir,
                exit_file=state.dir / EXIT_FILE,
            )
        except OSError as exc:
            self.store.update_record(session_id, status="failed")
            raise LaunchFailed(
                f"Cannot start the Loki CLI ({argv[0]}): {exc.strerror or exc}"
            ) from None
        (state.dir / SUPERVISOR_FILE).write_text(
            json.dumps({"pid": proc.pid, "server": os.getpid(), "argv": argv})
        )
        log.info("session %s started: pid %d: %s", session_id, proc.pid, " ".join(argv))
        sup = Supervised(session_id, state.dir, output_dir, proc.pid, proc)
        sup.save_offsets()  # a successor after SIGKILL reads from here, not from the end
        self._watch(sup)
        if timeout is not None:
            self._tg.start_soon(self._stop_after, sup, timeout)
        return self.store.update_record(session_id, status="running", pid=proc.pid)

    def stop(self, session_id: str) -> Session:
        """SIGTERM the session's process group now, SIGKILL after the grace period."""
        state = self._session(session_id)
        if state.record.status not in ("starting", "running", "paused"):
            raise WrongState(f"Session {session_id} is not running (status: {state.record.status})")
        sup = self._supervised.get(session_id)
        record = self.store.update_record(session_id, status="stopping")
        if sup is not None:
            self._begin_stop(sup)
        else:
            # Not ours (or its process is gone): ask it through the STOP file.
            (state.dir / control.STOP_FILE).write_bytes(b"")
            if not (record.pid and process_alive(record.pid)):
                record = self.store.update_record(session_id, status="stopped")
        return record

    def pause(self, session_id: str) -> Session:
        state = self._session(session_id)
        if state.record.status != "running":
            raise WrongState(f"Session {session_id} is not running (status: {state.record.status})")
        control.write_pause(state.dir)
        return self.store.update_record(session_id, status="paused")

    def resume(self, session_id: str) -> Session:
        state = self._session(session_id)
        if state.record.status != "paused":
            raise WrongState(f"Session {session_id} is not paused (status: {state.record.status})")
        control.clear_pause(state.dir)
        return self.store.update_record(session_id, status="running")

    def inject_input(self, session_id: str, text: str, context: str | None = None) -> str:
        """Deliver human input; returns "fifo" or "file" (how it was delivered)."""
        state = self._session(session_id)
        if state.record.status not in INPUT_STATUSES:
            raise WrongState(
                f"Session {session_id} is not accepting input (status: {state.record.status})"
            )
        how = control.inject_input(state.dir, text)
        preview = text[:50] + ("..." if len(text) > 50 else "")
        self.bus.publish(
            "log:info",
            LogEventData(
                level="info",
                message=f"Input injected: {preview}",
                source="api",
                context={"delivery": how, **({"context": context} if context else {})},
            ),
            session_id,
        )
        return how

    def delete(self, session_id: str) -> None:
        """Forget a finished session and remove its state directory."""
        state = self._session(session_id)
        record = state.record
        # Running unless we know better: a record with no pid (someone else's
        # session) is taken at its word; stop it first (that marks it stopped).
        if session_id in self._supervised or (
            record.status in ACTIVE_STATUSES and (record.pid is None or process_alive(record.pid))
        ):
            raise WrongState(f"Session {session_id} is still running; stop it first")
        self.store.remove(session_id)
        shutil.rmtree(state.dir, ignore_errors=True)
        shutil.rmtree(self._output_of(session_id), ignore_errors=True)

    # ------------------------------------------------------------------- queries

    def output_counts(self) -> OutputTally:
        """Output lines published and bytes read, all sessions this server supervised."""
        counts = self._output_done.copy()
        for sup in self._supervised.values():
            for tail in sup.tails:
                counts.add(tail.stream, tail.lines, tail.bytes)
        return counts

    def is_supervised(self, session_id: str) -> bool:
        return session_id in self._supervised

    def counts(self) -> SessionCounts:
        counts = SessionCounts()
        for state in self.store.all():
            counts.total += 1
            status = state.record.status
            if status in ACTIVE_STATUSES:
                counts.running += 1
            elif status == "completed":
                counts.completed += 1
            elif status == "failed":
                counts.failed += 1
        return counts

    def active_session(self) -> str | None:
        for state in self.store.all():
            if state.id in self._supervised:
                return state.id
        current = self.store.current_session
        state = self.store.get(current) if current else None
        return current if state is not None and state.record.status in ACTIVE_STATUSES else None

    # ----------------------------------------------------------------- internals

    def _output_of(self, session_id: str) -> Path:
        output = self.settings.output_dir / session_id
        legacy = self.settings.sessions_dir / session_id
        if not output.exists() and (legacy / STDOUT_FILE).exists():
            return legacy  # started by a server from before output moved out of sessions/
        return output

    def _session(self, session_id: str) -> SessionState:
        state = self.store.get(session_id) if valid_session_id(session_id) else None
        if state is None:
            raise UnknownSession(session_id)
        return state

    def _watch(self, sup: Supervised) -> None:
        assert self._tg is not None
        self._supervised[sup.id] = sup
        self._tg.start_soon(self._supervise, sup)

    def _begin_stop(self, sup: Supervised, *, resend: bool = False) -> None:
        if sup.stopping and not resend:
            return
        sup.stopping = True
        log.info("session %s: SIGTERM to process group %d", sup.id, sup.pgid)
        signal_group(sup.pgid, signal.SIGTERM)
        if self._tg is not None:
            self._tg.start_soon(self._escalate, sup)

    async def _stop_after(self, sup: Supervised, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await sup.done.wait()
            return
        state = self.store.get(sup.id)
        if state is not None and state.record.status in ("starting", "running", "paused"):
            log.info("session %s: timeout of %gs reached; stopping it", sup.id, timeout)
            self.bus.publish(
                "log:warn",
                LogEventData(
                    level="warn",
                    message=f"Session timeout of {timeout:g}s reached: stopping",
                    source="api",
                ),
                sup.id,
            )
            self.stop(sup.id)

    async def _escalate(self, sup: Supervised) -> None:
        """SIGKILL the group if anything in it outlives the grace period."""
        deadline = time.monotonic() + self.settings.stop_grace
        while time.monotonic() < deadline:
            if not sup.leader_running() and not group_alive(sup.pgid):
                return
            await anyio.sleep(0.02)
        if signal_group(sup.pgid, signal.SIGKILL):
            log.warning(
                "session %s: still alive %.1fs after SIGTERM; sent SIGKILL",
                sup.id,
                self.settings.stop_grace,
            )

    def wake(self, session_id: str) -> None:
        """The session's output files changed (called by the watcher): read them now."""
        sup = self._supervised.get(session_id)
        if sup is not None:
            sup.wake()

    async def _supervise(self, sup: Supervised) -> None:
        # Through the store, so a fact also reported by a state file is published once.
        publish = partial(self.store.report, sup.id)
        tails = sup.tails

        def read_chunk() -> bool:
            """Publish one bounded chunk of each output file; True when anything was read."""
            got = False
            for tail in tails:
                got = tail.pump(publish) or got
            if got and time.monotonic() - sup.offsets_saved_at > OFFSET_SAVE_INTERVAL:
                # A server killed with SIGKILL resumes from here: at worst a
                # fraction of a second of lines is published again, none lost.
                sup.save_offsets()
            return got

        def output_changed(closed: bool) -> None:
            # Read here, in the inotify callback: waking the task first adds ~0.2 ms a line.
            if closed:
                sup.output_closed_at = time.monotonic()
            if read_chunk() or closed:
                sup.wake()  # the task reads on while there is more, or sees the exit

        exited, code = False, None
        if self.output_watch is not None:
            self.output_watch.watch(sup.output_dir, output_changed)
        try:
            while True:
                if read_chunk():
                    await anyio.sleep(0)  # let the streams write this chunk, then read on
                    continue
                if exited:
                    break  # drained after the exit too
                exited, code = sup.exited()
                if not exited:
                    if time.monotonic() - sup.output_closed_at < EXIT_WATCH:
                        await anyio.sleep(0.001)  # it is exiting: notice it at once
                    else:
                        await sup.idle()
                # Else one more pass: what it wrote just before exiting, chunk by chunk.
            self._drain(sup)
            self._finished(sup, code)
        finally:
            if self.output_watch is not None:
                self.output_watch.unwatch(sup.output_dir)
            for tail in tails:
                tail.close()

    def _drain(self, sup: Supervised) -> None:
        publish = partial(self.store.report, sup.id)
        for tail in sup.tails:
            tail.finish(publish)

    def _count_output(self, sup: Supervised) -> None:
        """Add its output to the ended sessions' total (once, as it stops being supervised)."""
        for tail in sup.tails:
            self._output_done.add(tail.stream, tail.lines, tail.bytes)

    def _finished(self, sup: Supervised, code: int | None) -> None:
        if self._supervised.get(sup.id) is not sup:
            return
        del self._supervised[sup.id]
        self._count_output(sup)
        sup.done.set()
        state = self.store.get(sup.id)
        if state is None:
            return
        if sup.stopping or state.record.status == "stopping" or control.stop_requested(sup.dir):
            status = "stopped"
        elif code == 0:
            status = "completed"
        else:
            status = "failed"
        log.info("session %s ended: exit code %s, %s", sup.id, code, status)
        self.store.update_record(sup.id, status=status, exit_code=code)
