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
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from ..bus import EventBus
from ..health_problems import HealthProblems
from ..models import LogEventData, Session, SessionCounts
from ..settings import Settings
from ..state import SessionState, StateStore, valid_session_id
from ..statedir import StateDir, StateDirError
from ..tally import OutputTally
from . import cgroups, control
from .cli_resolution import CliCommand, resolve_cli
from .containment import signal_descendants, signal_marked
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
    OUTPUT_FILES,
    STDERR_FILE,
    STDOUT_FILE,
    OutputTail,
    exit_status,
    find_session_process,
    group_alive,
    leads_session,
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
# After SIGKILL to everything below the launcher: how long the launcher gets to
# reap it and exit by itself before it is killed too.
LAUNCHER_EXIT_WAIT = 2.0


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
        files: StateDir,
        from_end: bool = False,
        offsets: dict[str, int] | None = None,
        cgroup: Path | None = None,
    ) -> None:
        self.id = session_id
        self.files = files
        self.dir = directory
        self.output_dir = output_dir
        self.pgid = pgid
        self.proc = proc
        self.cgroup = cgroup
        self.stopping = False
        offsets = offsets or {}
        streams: tuple[tuple[str, Literal["stdout", "stderr"]], ...] = (
            (STDOUT_FILE, "stdout"),
            (STDERR_FILE, "stderr"),
        )
        self.tails = [
            OutputTail(
                output_dir / name,
                stream,
                from_end=from_end,  # type: ignore[arg-type]
                offset=offsets.get(name),
                files=files,
            )
            for name, stream in streams
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

    def positions(self) -> dict[str, int]:
        """How far each output file has been published."""
        return {tail.path.name: tail.position for tail in self.tails if tail.position is not None}

    def save_offsets(self, offsets: dict[str, int] | None = None) -> None:
        """Remember how far the output was published, for the next server to go on from.

        `offsets` defaults to how far it was read (see `EventBus.saved_position`);
        an empty dict means nothing is known to be kept yet, and nothing is saved.

        The durable log's positions (written with the events) are the exact
        ones; this file is the fallback when the log has none (cluster mode, or
        a position rotated out of the log). A failed write is retried at the next
        save (a full disk is on /health already).
        """
        if offsets is None:
            offsets = self.positions()
        elif not offsets:
            return
        path = self.dir / SUPERVISOR_FILE
        doc = read_supervisor(self.files, self.dir)
        doc["offsets"] = offsets
        try:
            self.files.write_atomic(path, json.dumps(doc).encode())
        except OSError as exc:
            log.debug("cannot save the output offsets of %s: %s", self.id, exc)
            return
        self.offsets_saved_at = time.monotonic()

    def exited(self) -> tuple[bool, int | None]:
        """(has the process ended, its exit code when known)."""
        if self.proc is not None:
            code = self.proc.poll()  # also reaps it: no zombie
            return (False, None) if code is None else (True, exit_status(code))
        if process_alive(self.pgid):
            return (False, None)
        return (True, recorded_exit_code(self.dir, self.files))

    def leader_running(self) -> bool:
        return not self.exited()[0]

    def anything_running(self) -> bool:
        """True while the launcher, its group or its cgroup has a living process."""
        return (
            self.leader_running()
            or group_alive(self.pgid)
            or (self.cgroup is not None and cgroups.populated(self.cgroup))
        )


def recorded_cgroup(files: StateDir, directory: Path, session_id: str) -> Path | None:
    """The session's cgroup as `supervisor.json` names it (checked: the session may write it)."""
    return cgroups.recorded(read_supervisor(files, directory).get("cgroup"), session_id)


def read_supervisor(files: StateDir, directory: Path) -> dict[str, Any]:
    """`supervisor.json` of a session (empty when missing or unusable)."""
    raw = files.read(directory / SUPERVISOR_FILE, json=True)
    try:
        doc = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def saved_offsets(files: StateDir, directory: Path) -> dict[str, int]:
    """Output offsets a previous server saved, consumed so they are used once."""
    doc = read_supervisor(files, directory)
    offsets = doc.pop("offsets", None)
    if not isinstance(offsets, dict):
        return {}
    try:
        files.write_atomic(directory / SUPERVISOR_FILE, json.dumps(doc).encode())
    except OSError as exc:
        log.warning("cannot update .loki/%s: %s", files.relative(directory / SUPERVISOR_FILE), exc)
    return {
        name: value
        for name, value in offsets.items()
        if isinstance(name, str) and isinstance(value, int) and value >= 0
    }


class SessionManager:
    """Every session process this server supervises."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        bus: EventBus,
        cli: CliCommand | None = None,
        health: HealthProblems | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.store = store
        self.bus = bus
        self.cli = cli if cli is not None else resolve_cli(settings)
        self.files = store.files
        self._supervised: dict[str, Supervised] = {}
        self._tg: TaskGroup | None = None
        # For /metrics: start attempts by (provider, outcome); output of ended supervisors.
        self.starts: dict[tuple[str, str], int] = {}
        self._output_done = OutputTally()
        # Wakes a supervisor as soon as its output grows (None: the state watcher does).
        self.output_watch = OutputWatch.create()
        # Where each session gets its own cgroup; None: the launcher's subreaper alone.
        self.cgroup_base: Path | None = None
        self.containment = "subreaper (--containment subreaper)"
        if settings.containment == "auto":
            self.cgroup_base, why_not = cgroups.session_base()
            self.containment = (
                f"cgroup v2 per session under {self.cgroup_base}"
                if self.cgroup_base is not None
                else f"subreaper ({why_not})"
            )

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise until cancelled. Re-adopts live sessions before reporting started."""
        if self.output_watch is not None:
            self.output_watch.start()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await self.bus.load_output_positions(
                        [s.id for s in self.store.all() if s.record.status in ACTIVE_STATUSES]
                    )
                    self.readopt()
                    if self.cgroup_base is not None and cgroups.remove_stale(self.cgroup_base):
                        log.info("removed empty session cgroups left by killed launchers")
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
                any(s.anything_running() for s in self._supervised.values())
                and time.monotonic() < deadline
            ):
                await anyio.sleep(0.05)
        for sup in list(self._supervised.values()):
            if sup.stopping and sup.anything_running():
                # A stop was under way: do not leave it half done behind us.
                await self._kill(sup)
            exited, code = sup.exited()
            if exited:
                self._drain(sup)
                self._finished(sup, code)
            else:
                sup.save_offsets(self.bus.saved_position(sup.id, sup.positions()) or {})
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
            if not self.files.is_file(state.dir / SUPERVISOR_FILE):
                continue  # someone else runs it; not ours to judge
            # The pid session.json names is the child's to write: trusted only when it is
            # the session's own launcher.
            known = record.pid
            pid = (
                known if known and runs_session(known, state.id) and leads_session(known) else None
            )
            pid = pid or find_session_process(state.id)
            self.store.adopt(state.id)
            cgroup = recorded_cgroup(self.files, state.dir, state.id)
            if pid is None:
                self._end_leftovers(state.id, cgroup)  # if its launcher was killed
                offsets = self._resume_offsets(state.id, state.dir)
                if offsets:
                    # Publish what it printed after the last saved position, before it ended.
                    ended = Supervised(
                        state.id,
                        state.dir,
                        self._output_of(state.id),
                        0,
                        None,
                        files=self.files,
                        offsets=offsets,
                    )
                    self._drain(ended)  # closes its tails
                    self._count_output(ended)
                code = recorded_exit_code(state.dir, self.files)
                status = (
                    "stopped"
                    if record.status == "stopping" or control.stop_requested(self.files, state.dir)
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
            # Go on from where the predecessor stopped publishing (even if it was
            # killed: the durable log says), else from now.
            sup = Supervised(
                state.id,
                state.dir,
                self._output_of(state.id),
                pid,
                None,
                files=self.files,
                from_end=True,
                offsets=self._resume_offsets(state.id, state.dir),
                cgroup=cgroup,
            )
            if record.pid != pid:
                self.store.update_record(state.id, pid=pid)
            self._watch(sup)
            if record.status == "stopping":
                self._begin_stop(sup, resend=True)

    def _resume_offsets(self, session_id: str, directory: Path) -> dict[str, int]:
        """Where to resume reading a session's output: the furthest position known.

        The durable log's position is exact (recorded with the events, on disk
        before any client got them); `supervisor.json`'s is the fallback.
        Offsets only grow, so the larger one is the later one.
        """
        offsets = saved_offsets(self.files, directory)
        for name, offset in self.bus.output_position(session_id).items():
            if name in OUTPUT_FILES and offset >= offsets.get(name, 0):
                offsets[name] = offset
        return offsets

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
        problem = self.cli_problem()
        if problem is not None:  # found before anything is written for this session
            raise CliUnavailable(problem)
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
        cgroup = self._new_cgroup(session_id)
        try:
            proc = spawn(
                argv,
                cwd=self.settings.loki_dir,
                env=env,
                output_dir=output_dir,
                exit_file=state.dir / EXIT_FILE,
                grace=self.settings.stop_grace,
                cgroup=cgroup,
                files=self.files,
            )
        except StateDirError:  # storage full, or a planted entry: 503 / 409 at the edge
            self.store.update_record(session_id, status="failed")
            raise
        except OSError as exc:
            if cgroup is not None:
                cgroups.remove(cgroup)
            self.store.update_record(session_id, status="failed")
            raise LaunchFailed(
                f"Cannot start the Loki CLI ({argv[0]}): {exc.strerror or exc}"
            ) from None
        supervisor = {"pid": proc.pid, "server": os.getpid(), "argv": argv}
        if cgroup is not None:
            supervisor["cgroup"] = str(cgroup)  # a successor server can still end it all
        try:
            self.files.write_atomic(state.dir / SUPERVISOR_FILE, json.dumps(supervisor).encode())
        except OSError as exc:  # it runs: supervise it anyway; a successor will not re-adopt it
            log.warning("session %s: cannot write %s: %s", session_id, SUPERVISOR_FILE, exc)
        log.info("session %s started: pid %d: %s", session_id, proc.pid, " ".join(argv))
        sup = Supervised(
            session_id, state.dir, output_dir, proc.pid, proc, cgroup=cgroup, files=self.files
        )
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
        if sup is None:
            # Not ours (or its process is gone): ask it through the STOP file (first:
            # if that cannot be written, nothing changed).
            control.request_stop(self.files, state.dir)
        record = self.store.update_record(session_id, status="stopping")
        if sup is not None:
            self._begin_stop(sup)
        else:
            if not (record.pid and process_alive(record.pid)):
                record = self.store.update_record(session_id, status="stopped")
        return record

    def pause(self, session_id: str) -> Session:
        state = self._session(session_id)
        if state.record.status != "running":
            raise WrongState(f"Session {session_id} is not running (status: {state.record.status})")
        control.write_pause(self.files, state.dir)
        return self.store.update_record(session_id, status="paused")

    def resume(self, session_id: str) -> Session:
        state = self._session(session_id)
        if state.record.status != "paused":
            raise WrongState(f"Session {session_id} is not paused (status: {state.record.status})")
        control.clear_pause(self.files, state.dir)
        return self.store.update_record(session_id, status="running")

    def inject_input(self, session_id: str, text: str, context: str | None = None) -> str:
        """Deliver human input; returns "fifo" or "file" (how it was delivered)."""
        state = self._session(session_id)
        if state.record.status not in INPUT_STATUSES:
            raise WrongState(
                f"Session {session_id} is not accepting input (status: {state.record.status})"
            )
        how = control.inject_input(self.files, state.dir, text)
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
        self._end_leftovers(session_id, recorded_cgroup(self.files, state.dir, session_id))
        # Files first: if they cannot be removed (read-only disk), the session stays.
        self.files.remove_tree(state.dir)
        self.files.remove_tree(self._output_of(session_id))
        self.store.remove(session_id)

    # ------------------------------------------------------------------- queries

    def output_counts(self) -> OutputTally:
        """Output lines published and bytes read, all sessions this server supervised."""
        counts = self._output_done.copy()
        for sup in self._supervised.values():
            for tail in sup.tails:
                counts.add(tail.stream, tail.lines, tail.bytes)
        return counts

    def cli_problem(self) -> str | None:
        """Why a session cannot be started now, or None when it can.

        Checked again on every call (a stat or two), and kept on `/health` as `cli`.
        """
        problem = self.cli.check(self.settings.loki_dir, os.environ)
        if self.health is not None:
            if problem is None:
                self.health.clear("cli")
            else:
                self.health.report("cli", problem)
        return problem

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
        known = self.store.get(current) if current else None
        return current if known is not None and known.record.status in ACTIVE_STATUSES else None

    # ----------------------------------------------------------------- internals

    def _output_of(self, session_id: str) -> Path:
        output = self.settings.output_dir / session_id
        legacy = self.settings.sessions_dir / session_id
        if not self.files.exists(output) and self.files.is_file(legacy / STDOUT_FILE):
            return legacy  # started by a server from before output moved out of sessions/
        return output

    def _session(self, session_id: str) -> SessionState:
        state = self.store.get(session_id) if valid_session_id(session_id) else None
        if state is None:
            raise UnknownSession(session_id)
        return state

    def _new_cgroup(self, session_id: str) -> Path | None:
        if self.cgroup_base is None:
            return None
        try:
            return cgroups.create(self.cgroup_base, session_id)
        except OSError as exc:
            log.warning("session %s runs without a cgroup: %s", session_id, exc)
            return None

    def _end_leftovers(self, session_id: str, cgroup: Path | None) -> None:
        """Kill what an ended session left running (only if its launcher was killed).

        Its cgroup holds all of it (then removed once empty); without one, the
        processes that still carry its `LOKI_SESSION_ID` are what can be found.
        """
        if cgroup is not None and cgroups.populated(cgroup):
            cgroups.kill(cgroup)

        def done() -> bool:
            if cgroup is not None:
                return cgroups.remove(cgroup)
            return not signal_marked(session_id, signal.SIGKILL)

        if done() or self._tg is None:
            return
        log.warning("session %s: killing what its launcher left running", session_id)

        async def until_done() -> None:
            with anyio.move_on_after(LAUNCHER_EXIT_WAIT):
                while not done():
                    await anyio.sleep(0.01)

        self._tg.start_soon(until_done)

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
        """SIGKILL the session if anything of it outlives the grace period."""
        deadline = time.monotonic() + self.settings.stop_grace
        while time.monotonic() < deadline:
            if not sup.anything_running():
                return
            await anyio.sleep(0.02)
        log.warning(
            "session %s: still alive %.1fs after SIGTERM; sending SIGKILL",
            sup.id,
            self.settings.stop_grace,
        )
        await self._kill(sup)

    async def _kill(self, sup: Supervised) -> None:
        """SIGKILL every process of the session; the launcher last, if it does not exit.

        Everything below the launcher goes first (its cgroup, then its tree, again
        until nothing is left: a round can race a fork), so the launcher reaps
        it all and records the exit code; only a launcher that does not then
        exit by itself is killed too.
        """
        with anyio.move_on_after(LAUNCHER_EXIT_WAIT):
            while True:
                if sup.cgroup is not None:
                    cgroups.kill(sup.cgroup)
                signalled = signal_descendants(sup.pgid, signal.SIGKILL)
                if not signalled and not (sup.cgroup and cgroups.populated(sup.cgroup)):
                    break
                await anyio.sleep(0.01)
            while sup.leader_running():
                await anyio.sleep(0.01)
        if sup.leader_running() and signal_group(sup.pgid, signal.SIGKILL):
            log.warning("session %s: the launcher did not exit; killed its group", sup.id)

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
            if got:
                # Into the durable log right after these lines' events, in the same
                # write and before any socket: a server killed now resumes after them.
                self.bus.record_output_position(sup.id, sup.positions())
                if time.monotonic() - sup.offsets_saved_at > OFFSET_SAVE_INTERVAL:
                    # The fallback must never be ahead of the events kept (log or stream).
                    sup.save_offsets(self.bus.saved_position(sup.id, sup.positions()) or {})
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
        self.bus.record_output_position(sup.id, sup.positions())

    def _count_output(self, sup: Supervised) -> None:
        """Add its output to the ended sessions' total (once, as it stops being supervised)."""
        for tail in sup.tails:
            self._output_done.add(tail.stream, tail.lines, tail.bytes)

    def _finished(self, sup: Supervised, code: int | None) -> None:
        if self._supervised.get(sup.id) is not sup:
            return
        del self._supervised[sup.id]
        self._count_output(sup)
        self.bus.forget_output(sup.id)  # its output is read to the end: no successor resumes it
        sup.done.set()
        # The launcher ends them all on its way out; not if it was killed itself.
        self._end_leftovers(sup.id, sup.cgroup)
        self.store.reread(sup.id)  # what it wrote last, before its end is said
        state = self.store.get(sup.id)
        if state is None:
            return
        if (
            sup.stopping
            or state.record.status == "stopping"
            or control.stop_requested(self.files, sup.dir)
        ):
            status = "stopped"
        elif code == 0:
            status = "completed"
        else:
            status = "failed"
        log.info("session %s ended: exit code %s, %s", sup.id, code, status)
        self.store.update_record(sup.id, status=status, exit_code=code)
