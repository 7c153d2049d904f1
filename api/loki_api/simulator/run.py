"""The simulated session: phases, tasks, agents, output lines and control files."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .prd import SimTask, tasks_from_prd
from .state import SessionFiles, now_iso

PHASES = ("planning", "development", "testing", "deployment")
STOPPED_EXIT = 0  # a STOP file ends the session cleanly


class Stopped(Exception):
    """A STOP file appeared: end the session now."""


@dataclass(frozen=True)
class SimulationConfig:
    session_id: str
    loki_dir: Path
    provider: str
    prd: str | None
    dry_run: bool
    verbose: bool
    delay: float
    exit_code: int

    @classmethod
    def from_env(
        cls, *, provider: str, prd: str | None, dry_run: bool, verbose: bool
    ) -> SimulationConfig:
        env = os.environ
        try:
            delay = float(env.get("LOKI_SIM_DELAY") or 0.2)
        except ValueError:
            raise ValueError("LOKI_SIM_DELAY must be a number of seconds") from None
        try:
            exit_code = int(env.get("LOKI_SIM_EXIT") or 0)
        except ValueError:
            raise ValueError("LOKI_SIM_EXIT must be a whole number") from None
        session_id = env.get("LOKI_SESSION_ID") or (
            f"session_{int(time.time() * 1000)}_{secrets.token_hex(4)}"
        )
        return cls(
            session_id=session_id,
            loki_dir=Path(env.get("LOKI_DIR") or "."),
            provider=provider,
            prd=prd,
            dry_run=dry_run,
            verbose=verbose,
            delay=max(delay, 0.0),
            exit_code=exit_code,
        )


class Simulation:
    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.dir = config.loki_dir / ".loki" / "sessions" / config.session_id
        self.files = SessionFiles(self.dir, config.session_id, config.provider, config.prd)
        self.tasks: list[SimTask] = []
        self.agents: list[dict[str, Any]] = []
        self.agents_spawned = 0
        self.phase: str | None = None
        self.fifo_fd: int | None = None
        self.fifo_path = self.dir / "input.fifo"
        self.paused = False

    # ------------------------------------------------------------------ output

    def out(self, line: str, stream: TextIO | None = None) -> None:
        target = stream or sys.stdout
        try:
            target.write(line + "\n")
            target.flush()
        except BrokenPipeError:  # nobody reads our output any more: keep going
            with contextlib.suppress(OSError):
                devnull = open(os.devnull, "w")  # noqa: SIM115
                sys.stdout = sys.stderr = devnull

    def event(self, type: str, data: dict[str, Any]) -> None:
        self.out(json.dumps({"type": type, "data": data}))

    # ------------------------------------------------------------------- steps

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._open_fifo()
        try:
            self._session()
        except Stopped:
            self.out("[WARN] [simulator] STOP file found: stopping the session")
            self._finish("stopped")
            return STOPPED_EXIT
        finally:
            self._close_fifo()
        code = self.config.exit_code
        if code != 0:
            self.out(f"[ERROR] [simulator] Simulated failure (LOKI_SIM_EXIT={code})")
            self.out(f"simulated failure, exiting with code {code}", sys.stderr)
            self._finish("failed", code)
        else:
            self.out("Session complete: all phases finished")
            self._finish("completed", 0)
        return code

    def _session(self) -> None:
        cfg = self.config
        self.out(f"Loki Mode simulator (a test double for the loki CLI), session {cfg.session_id}")
        self.out(f"[INFO] [simulator] provider={cfg.provider} prd={cfg.prd or '(built-in tasks)'}")
        prd_text = None
        if cfg.prd:
            try:
                prd_text = Path(cfg.prd).read_text(errors="replace")
            except OSError as exc:
                self.out(f"could not read PRD {cfg.prd}: {exc}", sys.stderr)
        self.step()

        self.enter_phase("planning", "Starting planning phase")
        self.tasks = tasks_from_prd(prd_text)
        self.write_tasks()
        self.files.update_session(taskCount=len(self.tasks), completedTasks=0)
        self.out(f"[DEBUG] [planner] Parsed {len(self.tasks)} tasks from the PRD")
        self.out("note: planning uses no provider in the simulator", sys.stderr)
        self.event(
            "input_requested",
            {
                "prompt": "Any constraints for the plan? (POST /api/sessions/{id}/input)",
                "timeout": 0,
            },
        )
        self.step()

        self.enter_phase("development", "Entering development phase")
        for n, task in enumerate(self.tasks):
            self.run_task(task)
            self.write_phase(progress=round((n + 1) / len(self.tasks), 3))

        self.enter_phase("testing", "Beginning testing phase")
        self.out("Spawning tester agent")  # the unnamed form of the line
        tester = self.spawn_agent("tester", None)
        self.out("[WARN] [tester] 1 flaky test retried")
        self.step()
        self.out(f"[INFO] [tester] All {len(self.tasks)} task checks passed")
        self.finish_agent(tester)

        self.enter_phase("deployment", "Starting deployment phase")
        if cfg.dry_run:
            self.out("[INFO] [deployer] dry run: nothing deployed")
        else:
            self.out("[INFO] [deployer] simulated deployment done")
        self.event(
            "metrics:update",
            {"tokensUsed": 1000 * len(self.tasks), "apiCalls": 3 * len(self.tasks), "cost": 0.0},
        )
        self.write_phase(progress=1.0)
        self.step()

    def run_task(self, task: SimTask) -> None:
        agent = self.spawn_agent("developer", task.id)
        # Named, so the server can tell this line and agents.json speak of one agent.
        self.out(f"Spawning developer agent ({agent['id']})")
        task.status = "in_progress"
        self.write_tasks()
        self.event("task", {"id": task.id, "title": task.title, "status": "running"})
        if self.config.verbose:
            self.out(f"[DEBUG] [{agent['id']}] working on {task.title!r}")
        self.step()
        task.progress = 0.5
        self.write_tasks()
        self.event(
            "task:progress",
            {"taskId": task.id, "title": task.title, "status": "running", "progress": 0.5},
        )
        self.step()
        task.status, task.progress = "done", 1.0
        self.write_tasks()
        self.event(
            "task:completed", {"taskId": task.id, "title": task.title, "status": "completed"}
        )
        self.finish_agent(agent)
        completed = sum(1 for t in self.tasks if t.status == "done")
        self.files.update_session(completedTasks=completed)

    # --------------------------------------------------------------- state files

    def enter_phase(self, phase: str, line: str) -> None:
        self.step()
        previous, self.phase = self.phase, phase
        self.out(line)
        self.files.write(
            "phase.json",
            {"current": phase, "previous": previous, "progress": 0.0, "updatedAt": now_iso()},
        )
        self.files.update_session(currentPhase=phase)

    def write_phase(self, progress: float) -> None:
        previous = PHASES[PHASES.index(self.phase) - 1] if self.phase in PHASES[1:] else None
        self.files.write(
            "phase.json",
            {
                "current": self.phase,
                "previous": previous,
                "progress": progress,
                "updatedAt": now_iso(),
            },
        )

    def write_tasks(self) -> None:
        self.files.write("tasks.json", {"tasks": [t.to_json() for t in self.tasks]})

    def spawn_agent(self, kind: str, task_id: str | None) -> dict[str, Any]:
        self.agents_spawned += 1
        agent: dict[str, Any] = {
            "id": f"agent-{self.agents_spawned:03d}",
            "type": kind,
            "model": "simulated",
            "status": "running",
        }
        if task_id:
            agent["task"] = task_id
        self.agents.append(agent)
        self.write_agents()
        return agent

    def finish_agent(self, agent: dict[str, Any]) -> None:
        self.agents.remove(agent)
        self.write_agents()
        self.event(
            "agent:completed", {"agentId": agent["id"], "type": agent["type"], "exitCode": 0}
        )

    def write_agents(self) -> None:
        self.files.write("agents.json", {"active": self.agents, "spawned": self.agents_spawned})

    def _finish(self, status: str, exit_code: int | None = None) -> None:
        if self.files.standalone:
            self.files.update_session(status=status, exitCode=exit_code)

    # ------------------------------------------------------------------ control

    def step(self) -> None:
        """Wait one step, honouring STOP, PAUSE and human input meanwhile."""
        deadline = time.monotonic() + self.config.delay
        while True:
            self.check_controls()
            if self.paused:
                time.sleep(min(0.05, self.config.delay or 0.05))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.05))

    def check_controls(self) -> None:
        if (self.dir / "STOP").exists():
            raise Stopped
        paused = (self.dir / "PAUSE").exists()
        if paused != self.paused:
            self.paused = paused
            self.out(
                "[INFO] [simulator] Paused: waiting for the PAUSE file to go"
                if paused
                else "[INFO] [simulator] Resumed"
            )
        self._read_human_input()
        self._read_fifo()

    def _read_human_input(self) -> None:
        path = self.dir / "HUMAN_INPUT.md"
        claimed = self.dir / f".HUMAN_INPUT.{os.getpid()}.read"
        try:
            os.replace(path, claimed)  # claim it, so an append racing with us is not lost
        except FileNotFoundError:
            return
        try:
            text = claimed.read_text(errors="replace")
        finally:
            with contextlib.suppress(OSError):
                claimed.unlink()
        for line in text.splitlines():
            if line.strip():
                self.out(f"[INFO] [human] Received human input: {line.strip()}")

    def _open_fifo(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self.fifo_path)
        try:
            if not stat.S_ISFIFO(os.lstat(self.fifo_path).st_mode):
                return
            self.fifo_fd = os.open(self.fifo_path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.out(f"[WARN] [simulator] no input.fifo ({exc}); using HUMAN_INPUT.md only")
        self._fifo_buffer = b""

    def _read_fifo(self) -> None:
        if self.fifo_fd is None:
            return
        try:
            data = os.read(self.fifo_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            return
        self._fifo_buffer += data
        *lines, self._fifo_buffer = self._fifo_buffer.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.out(f"[INFO] [human] Received human input: {text}")

    def _close_fifo(self) -> None:
        if self.fifo_fd is not None:
            os.close(self.fifo_fd)
            self.fifo_fd = None
            with contextlib.suppress(OSError):
                self.fifo_path.unlink()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.out("[WARN] [simulator] Received SIGTERM: shutting down")
        self._close_fifo()
        sys.exit(128 + signum)
