"""`python -m loki_api.sessions.launcher [--grace S] [--cgroup DIR] EXIT_FILE CMD [ARG...]`.

The server starts every session through this small parent. It does three jobs:

- **Exit code.** Only a parent can learn a process's exit code; after a server
  restart the session is nobody's child the new server could wait for, so the
  launcher writes `{"exitCode": N}` to EXIT_FILE (atomically) when CMD ends.
- **Containment** (SPEC §5.4). It is a child subreaper, so every descendant
  that detaches (`setsid`, double fork, daemon) becomes its child instead of
  PID 1's, and it reaps them all: no zombies. When CMD ends, by itself or by a
  stop, whatever CMD left running gets SIGTERM, then SIGKILL after `--grace`
  seconds; the launcher exits only when the whole tree is gone, so "the
  launcher runs" means "something of the session runs". With `--cgroup`, CMD
  is moved into that (empty, server-made) cgroup before exec, and the cgroup
  is removed at the end; the launcher itself stays outside, so the server's
  `cgroup.kill` ends the session but leaves the launcher to reap and report.
- **Signals.** It leads the session's process group, so a stop signals it and
  CMD alike. It catches SIGTERM/SIGINT/SIGHUP (a handler, not SIG_IGN, so CMD
  starts with default dispositions) and passes the signal on to descendants
  that left the group; then it waits for CMD to decide.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import FrameType

from loki_api.statedir import StateDir

from . import cgroups
from .containment import become_subreaper, descendants, signal_descendants

USAGE = "usage: python -m loki_api.sessions.launcher [--grace S] [--cgroup DIR] EXIT_FILE CMD..."
DEFAULT_GRACE = 10.0
# How often the launcher looks again while leftovers are dying.
POLL = 0.01


def record_exit(exit_file: Path, code: int) -> None:
    # EXIT_FILE is `.loki/sessions/<id>/exit.json`: written through the state dir's
    # door, so a session that swapped its directory for a symlink cannot redirect it.
    try:
        data = json.dumps({"exitCode": code}).encode()
        StateDir(exit_file.parents[2]).write_atomic(exit_file, data)
    except OSError as exc:  # the server then reports the exit as unknown
        print(f"cannot record the exit code in {exit_file}: {exc}", file=sys.stderr, flush=True)


def _pass_on(signum: int, frame: FrameType | None) -> None:
    """CMD got the same signal (it is in our process group); those that left it get it here."""
    signal_descendants(os.getpid(), signum, except_group=os.getpgrp())


def reap_ended() -> None:
    """Reap every child that has ended, without waiting for the others."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return


def wait_for(pid: int) -> int:
    """Reap children (re-parented orphans included) until `pid` ends; its shell-style code."""
    while True:
        try:
            ended, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 127  # cannot happen while `pid` is our child
        if ended == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def end_leftovers(grace: float, cgroup: Path | None) -> None:
    """SIGTERM what CMD left behind, SIGKILL it after `grace`, and reap all of it."""
    me = os.getpid()
    if descendants(me):
        signal_descendants(me, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while descendants(me) and time.monotonic() < deadline:
            reap_ended()
            time.sleep(POLL)
        while signal_descendants(me, signal.SIGKILL):
            if cgroup is not None:
                cgroups.kill(cgroup)
            reap_ended()
            time.sleep(POLL)
    while True:  # only zombies are left now: reap them all
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break


def parse(argv: Sequence[str]) -> tuple[float, Path | None, list[str]]:
    grace, cgroup, rest = DEFAULT_GRACE, None, list(argv)
    while rest[:1] in (["--grace"], ["--cgroup"]) and len(rest) > 1:
        option, value, rest = rest[0], rest[1], rest[2:]
        if option == "--grace":
            grace = float(value)
        else:
            cgroup = Path(value)
    return grace, cgroup, rest


def main(argv: Sequence[str]) -> int:
    try:
        grace, cgroup, rest = parse(argv)
    except ValueError:
        rest = []
    if len(rest) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    exit_file, command = Path(rest[0]), rest[1:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _pass_on)
    if not become_subreaper():
        print("loki launcher: cannot become a child subreaper", file=sys.stderr, flush=True)
    join = partial(cgroups.join, cgroup) if cgroup is not None else None
    try:
        child = subprocess.Popen(command, preexec_fn=join)
    except (OSError, subprocess.SubprocessError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        print(f"cannot start {command[0]}: {reason}", file=sys.stderr, flush=True)
        code = 127
    else:
        code = wait_for(child.pid)
        child.returncode = code  # reaped above; keep Popen from waiting for it again
    record_exit(exit_file, code)  # never raises: what CMD left running is ended regardless
    end_leftovers(grace, cgroup)
    if cgroup is not None:
        cgroups.remove(cgroup)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
