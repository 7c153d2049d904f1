"""A cgroup v2 per session, where the server may create one (SPEC §5.4 "Containment").

The server creates `loki-<session id>` under its own cgroup (a delegated
subtree, or anywhere it may write: root in a VM, a `Delegate=yes` service);
the launcher moves the session's CLI into it before exec. Nothing a process
does takes it out of its cgroup, so `cgroup.kill` ends the whole session even
when the launcher itself was killed. Where cgroup v2 is not mounted, not
writable (a desktop login scope, most containers) or has no `cgroup.kill`
(Linux < 5.14), sessions fall back to the launcher's subreaper alone.

Standard library only: the launcher imports this module.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PREFIX = "loki-"
# An empty session cgroup older than this is litter (its launcher was killed
# while no server watched); younger, it may be one a server just made.
STALE_AFTER = 60.0


def cgroup2_mounts() -> list[tuple[Path, str]]:
    """(mount point, root of the hierarchy it shows) of every cgroup2 mount."""
    mounts: list[tuple[Path, str]] = []
    try:
        with open("/proc/self/mountinfo") as file:
            lines = file.read().splitlines()
    except OSError:
        return mounts
    for line in lines:
        # id parent major:minor root mount-point options... - fstype source super-options
        head, _, tail = line.partition(" - ")
        fields = head.split()
        if tail.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            mounts.append((Path(fields[4]), fields[3]))
    return mounts


def own_cgroup() -> tuple[Path | None, str]:
    """The directory of this process's cgroup v2, or None with the reason."""
    try:
        with open("/proc/self/cgroup") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup: {exc.strerror or exc}"
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None, "no cgroup v2 hierarchy"
    for mount, root in cgroup2_mounts():
        relative = os.path.relpath(own, root)
        if relative == "." or not relative.startswith(".."):
            return mount / relative if relative != "." else mount, ""
    return None, "cgroup v2 is not mounted here"


def session_base() -> tuple[Path | None, str]:
    """Where session cgroups can be created, or None with the reason they cannot."""
    base, reason = own_cgroup()
    if base is None:
        return None, reason
    probe = base / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        return None, f"cannot create a cgroup under {base}: {exc.strerror or exc}"
    try:
        if not (probe / "cgroup.kill").exists():
            return None, "this kernel's cgroup v2 has no cgroup.kill"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return base, ""


def create(base: Path, session_id: str) -> Path:
    """A new, empty cgroup for `session_id`. Raises OSError."""
    path = base / f"{PREFIX}{session_id}"
    path.mkdir()
    return path


def join(path: Path) -> None:
    """Move the calling process into `path` (the launcher's child runs this before exec).

    On failure the process stays where it was, says so on stderr, and the
    session is contained by the subreaper alone.
    """
    try:
        with open(path / "cgroup.procs", "w") as file:
            file.write("0")
    except OSError as exc:
        os.write(2, f"loki launcher: cannot join cgroup {path}: {exc}\n".encode())


def populated(path: Path) -> bool:
    """True while any process is in the cgroup."""
    try:
        with open(path / "cgroup.events") as file:
            return "populated 1" in file.read()
    except OSError:
        return False


def kill(path: Path) -> bool:
    """SIGKILL every process in the cgroup (and those it forks meanwhile). False if gone."""
    try:
        with open(path / "cgroup.kill", "w") as file:
            file.write("1")
    except OSError:
        return False
    return True


def remove(path: Path) -> bool:
    """Remove the (empty) cgroup; True when it is gone."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_stale(base: Path) -> int:
    """Remove the empty `loki-*` cgroups under `base` left by killed launchers; how many.

    A populated one is never removed (rmdir refuses it), nor a fresh one.
    """
    removed = 0
    try:
        entries = list(base.iterdir())
    except OSError:
        return 0
    for path in entries:
        if not path.name.startswith(PREFIX) or populated(path):
            continue
        try:
            if time.time() - path.stat().st_mtime > STALE_AFTER:
                path.rmdir()
                removed += 1
        except OSError:
            continue
    return removed


def recorded(value: object, session_id: str) -> Path | None:
    """A cgroup path read back from `supervisor.json`, if it is one we could have made.

    The file lies in the session's own directory, which the session can write:
    only `loki-<this id>` inside a cgroup2 mount is accepted, never a path that
    would make us kill some other cgroup.
    """
    if not isinstance(value, str) or not os.path.isabs(value):
        return None
    path = Path(value)
    if os.path.normpath(value) != value or path.name != f"{PREFIX}{session_id}":
        return None
    if not any(path.is_relative_to(mount) for mount, _ in cgroup2_mounts()):
        return None
    return path
