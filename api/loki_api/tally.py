"""Plain counters that the parts of the server bump, read by `/metrics` at scrape time.

Counting happens where the work is (publish, fan-out, each request), so it
has to cost next to nothing there: an integer or a dict entry incremented, a
`bisect` for a histogram. Nothing here knows Prometheus; `metrics.py` turns
these numbers into metric families only when someone scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: from well under a millisecond (a publish written in the same loop
# turn) to a minute (an event stream open for a while).
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Buckets:
    """A histogram kept as plain numbers: `observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (`le`).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """`(upper bound, observations <= it)` for each bucket, `inf` last."""
        total = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result


class HttpTally:
    """Requests by (route template, method, status), and durations by (route, method)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], Buckets] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.durations.get((route, method))
        if buckets is None:
            buckets = self.durations[(route, method)] = Buckets()
        buckets.observe(seconds)


class OutputTally:
    """Session output read so far, per stream (`stdout`, `stderr`): lines and bytes."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {"stdout": 0, "stderr": 0}
        self.bytes: dict[str, int] = {"stdout": 0, "stderr": 0}

    def add(self, stream: str, lines: int, size: int) -> None:
        self.lines[stream] = self.lines.get(stream, 0) + lines
        self.bytes[stream] = self.bytes.get(stream, 0) + size

    def copy(self) -> OutputTally:
        other = OutputTally()
        other.lines = dict(self.lines)
        other.bytes = dict(self.bytes)
        return other
