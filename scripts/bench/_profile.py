"""Sample a server process with py-spy while a benchmark runs, and summarise the hot spots.

py-spy is optional (`pip install py-spy`, in the `dev` extra): without it the
benchmarks run unprofiled and say so.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

LINE_NO = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    """`py-spy record --format raw` on `pid` from `start()` until `stop()`."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        exe = py_spy()
        if exe is None:
            print("py-spy not installed: not profiling", file=sys.stderr)
            return False
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        self.proc = None


def hot_spots(raw: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top functions by self and inclusive share of the event-loop thread's busy samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [LINE_NO.sub(")", frame) for frame in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        # Only the event loop's thread: watchdog's observer thread blocks in C
        # calls that py-spy does not always see as idle.
        if not frames or not any(f.startswith("Runner.run ") for f in frames):
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"self": [], "inclusive": []}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"self": share(own), "inclusive": share(inclusive), "samples": [("total", total)]}


def print_hot_spots(spots: dict[str, list[tuple[str, float]]]) -> None:
    for kind in ("self", "inclusive"):
        print(f"\nprofile: top functions by {kind} time (% of samples)")
        for name, pct in spots.get(kind, []):
            print(f"  {pct:5.1f}%  {name}")
