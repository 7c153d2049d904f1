"""A session's process tree, and ending all of it (SPEC §5.4 "Containment").

A session is every process descended from its launcher. The launcher makes
itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): a descendant orphaned by
`setsid` + exit, a double fork or a daemon detaching is re-parented to the
launcher instead of PID 1, so the session is always the tree under the
launcher, found by following parent pids in `/proc`. Killing the tree top
down can race a fork; the callers repeat a round until nothing is left.

A launcher killed from outside leaves its orphans to PID 1, out of the tree.
Without a cgroup to hold them, they are found by the `LOKI_SESSION_ID` their
environment inherited (`marked`): best effort, since a process can exec with
another environment, but it is what is left.

Standard library only: the launcher imports this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

# From <linux/prctl.h>.
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def living_processes() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, process group) of every process that is not a zombie."""
    table: dict[int, tuple[int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # gone meanwhile
        # Fields after the parenthesised name (which may hold spaces): state, ppid, pgrp, ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X"):
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, process group) of every living descendant of `root`, parents first."""
    children: dict[int, list[int]] = {}
    table = living_processes()
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[tuple[int, int]] = []
    queue = list(children.get(root, ()))
    while queue:
        pid = queue.pop(0)
        found.append((pid, table[pid][1]))
        queue.extend(children.get(pid, ()))
    return found


def marked(session_id: str) -> list[int]:
    """Every process (not this one) whose environment carries `LOKI_SESSION_ID=<id>`."""
    marker = f"LOKI_SESSION_ID={session_id}".encode()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                if marker in file.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def signal_marked(session_id: str, sig: int) -> int:
    """Send `sig` to every process `marked` with the session; how many were signalled."""
    sent = 0
    for pid in marked(session_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent += 1
    return sent


def signal_descendants(root: int, sig: int, *, except_group: int | None = None) -> int:
    """Send `sig` to every living descendant of `root` (not those in `except_group`).

    Returns how many were signalled: 0 means none is left.
    """
    sent = 0
    for pid, pgid in descendants(root):
        if pgid == except_group:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent += 1
    return sent
