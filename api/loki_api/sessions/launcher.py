"""`python -m loki_api.sessions.launcher EXIT_FILE CMD [ARG...]`: run CMD, record its exit code.

The server starts every session through this small parent. Only a parent can
learn a process's exit code; after a server restart the session is nobody's
child the new server could wait for, so the launcher writes `{"exitCode": N}`
to EXIT_FILE (atomically) when CMD ends, and the server reads it.

The launcher leads the session's process group, so a stop signals it and CMD
alike. It catches SIGTERM/SIGINT/SIGHUP with a handler that does nothing (a
handler, not SIG_IGN, so CMD starts with default dispositions) and waits for
CMD to end; a SIGKILL ends both, and then no exit code is recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType


def _ignore(signum: int, frame: FrameType | None) -> None:
    """CMD receives the same signal (it is in our process group) and decides."""


def record_exit(exit_file: Path, code: int) -> None:
    tmp = exit_file.with_name(f".{exit_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"exitCode": code}))
    os.replace(tmp, exit_file)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m loki_api.sessions.launcher EXIT_FILE CMD [ARG...]", file=sys.stderr)
        return 2
    exit_file, command = Path(argv[0]), list(argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        code = 127
    else:
        returncode = child.wait()
        code = 128 - returncode if returncode < 0 else returncode
    record_exit(exit_file, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
