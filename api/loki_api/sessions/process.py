"""One session's child process: spawning it, tailing its output, finding it again.

The child runs in its own session and process group (`setsid`), so Ctrl-C on
the server or the server's exit does not reach it, and a stop can signal the
whole group. Its stdout and stderr go straight to files in its output
directory (`.loki/output/<id>/stdout.txt`, `stderr.txt`; outside the
watched `sessions/` tree), never to a pipe: a pipe would break (SIGPIPE)
when the server dies, and sessions must outlive a server restart. The server
tails those files, so the on-disk copy costs the hot path nothing, and a
re-adopted session keeps streaming its output after a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..models import Model
from ..statedir import StateDir
from .containment import living_processes, marked
from .output import LineSplitter, Stream, parse_line

STDOUT_FILE = "stdout.txt"
STDERR_FILE = "stderr.txt"
OUTPUT_FILES = frozenset({STDOUT_FILE, STDERR_FILE})
EXIT_FILE = "exit.json"
LAUNCHER_MODULE = "loki_api.sessions.launcher"
# One `pump` publishes at most this much, so a burst of output goes out over
# several event-loop steps and the streams write in between (a whole burst in
# one step would overflow every subscriber's pending frames).
READ_CHUNK = 64 * 1024
MAX_LINES_PER_PUMP = 4096

Publish = Callable[[str, Model], object]


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output_dir: Path,
    exit_file: Path | None = None,
    grace: float = 10.0,
    cgroup: Path | None = None,
    files: StateDir | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` (never through a shell) in a new session / process group.

    Its output goes to `output_dir`. It runs under `launcher`, which records its
    exit code in `exit_file` (default: `output_dir/exit.json`), ends what it
    leaves running (SIGKILL `grace` seconds after SIGTERM) and runs it in
    `cgroup` when given. Raises FileNotFoundError when `argv[0]` cannot be found. The output
    files are opened through `files` (default: rooted at `output_dir`'s parent),
    never through a symlink.
    """
    if find_executable(argv[0], cwd, env) is None:
        raise FileNotFoundError(2, "No such executable file", argv[0])
    exit_file = exit_file or output_dir / EXIT_FILE
    files = files or StateDir(output_dir.parent)
    files.makedirs(output_dir)
    files.remove(exit_file)
    launcher = [sys.executable, "-m", LAUNCHER_MODULE, "--grace", str(grace)]
    if cgroup is not None:
        launcher += ["--cgroup", str(cgroup)]
    launcher.append(str(exit_file))
    out = files.open_append(output_dir / STDOUT_FILE)
    try:
        err = files.open_append(output_dir / STDERR_FILE)
    except OSError:
        os.close(out)
        raise
    with open(out, "ab", closefd=True), open(err, "ab", closefd=True):
        return subprocess.Popen(
            [*launcher, *argv],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )


def find_executable(program: str, cwd: Path, env: Mapping[str, str]) -> str | None:
    """Where `program` is, the way exec would find it (a path, or a name on PATH)."""
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program, path=env.get("PATH", os.defpath))


def recorded_exit_code(directory: Path, files: StateDir | None = None) -> int | None:
    """The exit code the launcher recorded for a session, if it did."""
    files = files or StateDir(directory.parent)
    raw = files.read(directory / EXIT_FILE, json=True)
    try:
        doc = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    code = doc.get("exitCode") if isinstance(doc, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def exit_status(returncode: int) -> int:
    """A shell-style exit code: killed by signal N → 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class OutputTail:
    """Follows one output file from an offset, turning new lines into events."""

    def __init__(
        self,
        path: Path,
        stream: Stream,
        *,
        from_end: bool = False,
        offset: int | None = None,
        files: StateDir | None = None,
    ) -> None:
        """Follow `path` from its start, its end (`from_end`) or a byte `offset`.

        Opened through `files` (default: rooted at the file's directory): a symlink
        or special file there is never read.
        """
        self.path = path
        self.stream = stream
        self.splitter = LineSplitter()
        self.lines = 0  # lines published
        self.bytes = 0  # bytes read
        self._file = None
        self._closed_at: int | None = None  # `position` once closed
        fd = (files or StateDir(path.parent)).open_read(path)
        if fd is None:
            return
        try:
            self._file = open(fd, "rb", buffering=0)  # noqa: SIM115 - closed by close()
            if offset is not None:
                self._file.seek(min(offset, os.fstat(self._file.fileno()).st_size))
            elif from_end:
                self._file.seek(0, os.SEEK_END)
        except OSError:
            self._file = None

    def pump(self, publish: Publish) -> bool:
        """Publish the complete lines of at most one chunk of new output.

        A chunk is at most `READ_CHUNK` bytes and `MAX_LINES_PER_PUMP` lines.
        True when bytes were read: more may be waiting, so call again (after
        letting the loop run); False when there was nothing new.
        """
        file = self._file
        if file is None:
            return False
        chunk = file.read(READ_CHUNK)
        if not chunk:
            return False
        if chunk.count(b"\n") > MAX_LINES_PER_PUMP:
            # Many short lines: keep the first MAX_LINES_PER_PUMP, read the rest next time.
            rest = len(chunk.split(b"\n", MAX_LINES_PER_PUMP)[-1])
            file.seek(-rest, os.SEEK_CUR)
            chunk = chunk[: len(chunk) - rest]
        self.bytes += len(chunk)
        self._emit(self.splitter.feed(chunk), publish)
        return True

    @property
    def position(self) -> int | None:
        """The offset of the first byte not yet published (None if the file never opened).

        Still known after `close()`: a server shutting down saves it for its successor.
        """
        if self._file is None:
            return self._closed_at
        return self._file.tell() - self.splitter.pending

    def finish(self, publish: Publish) -> None:
        """Drain what is left, including a last line without a newline, and close."""
        while self.pump(publish):
            pass
        self._emit(self.splitter.finish(), publish)
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._closed_at = self.position
            self._file.close()
            self._file = None

    def _emit(self, lines: list[str], publish: Publish) -> None:
        stream = self.stream
        for line in lines:
            parsed = parse_line(line, stream)
            if parsed is not None:
                self.lines += 1
                publish(*parsed)


# ---------------------------------------------------------------- finding processes


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def runs_session(pid: int, session_id: str) -> bool:
    """True when `pid` is alive and was started for `session_id` (not a recycled pid)."""
    if not process_alive(pid):
        return False
    return f"LOKI_SESSION_ID={session_id}".encode() in read_environ(pid)


def read_environ(pid: int) -> list[bytes]:
    """`pid`'s environment as `NAME=value` items (empty when unreadable).

    Right after exec the kernel briefly shows an empty environment; that is
    read again for a few milliseconds rather than taken as the answer.
    """
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                environ = file.read()
        except OSError:
            return []
        if environ:
            return environ.split(b"\0")
        time.sleep(0.001)
    return []


def find_session_process(session_id: str) -> int | None:
    """The process-group leader running `session_id`, found by its environment."""
    for pid in marked(session_id):
        if leads_session(pid):
            return pid
    return None


def leads_session(pid: int) -> bool:
    """True for a live launcher leading its own process group: what we supervise.

    Not a leftover of the session that called setsid (it carries the same
    environment marker), and not any process a `session.json` names.
    """
    try:
        return os.getpgid(pid) == pid and process_alive(pid) and is_launcher(pid)
    except OSError:
        return False


def is_launcher(pid: int) -> bool:
    """True for our session launcher (not a leftover of its session that leads a group)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return LAUNCHER_MODULE.encode() in file.read().split(b"\0")
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    table = living_processes()
    if not table:  # /proc unreadable: killpg said the group exists
        return True
    return any(group == pgid for _, group in table.values())


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`. False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True
