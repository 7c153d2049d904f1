"""Output positions in the stream: exactly-once session output across a node's SIGKILL.

On one node the position up to which a session's output was published goes
into the durable log with the events (SPEC §7). A cluster node has no local
log: the stream is it. So the position rides on the events themselves, as a
`Loki-Output` header on the last event of each chunk of output lines
(`stdout.txt=1234;stderr.txt=56`), stored by JetStream in the same message,
atomically with it. A node restarted on the same state directory asks the
stream for the session's last events (one per subject) and resumes reading
after the furthest position among them: no line whose event was stored is
read again, and none whose event was not is skipped.

A position is also "confirmed" once this node reads its event back from the
stream; only confirmed positions go into `supervisor.json`, the fallback,
so that file is never ahead of what the stream holds.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from .names import ClusterNames
from .replay import reader

HEADER = b"Loki-Output"
# How long one fetch of a session's last events may take.
LOOKUP_TIMEOUT = 2.0


class OutputPosition:
    """How far a session's output was published, and its header line, built once."""

    __slots__ = ("session_id", "offsets", "header")

    def __init__(self, session_id: str, offsets: dict[str, int]) -> None:
        self.session_id = session_id
        self.offsets = dict(offsets)
        self.header = b"%s: %s\r\n" % (HEADER, encode_position(offsets))


def encode_position(offsets: dict[str, int]) -> bytes:
    """The header value for `offsets` (file name -> byte offset)."""
    return b";".join(b"%s=%d" % (name.encode(), offset) for name, offset in sorted(offsets.items()))


def decode_position(value: bytes) -> dict[str, int]:
    """`encode_position` read back; anything malformed is left out."""
    offsets: dict[str, int] = {}
    for part in value.split(b";"):
        name, _, offset = part.partition(b"=")
        if name and offset.isdigit():
            offsets[name.decode(errors="replace")] = int(offset)
    return offsets


def furthest(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Offsets only grow: the later of two positions, file by file."""
    merged = dict(a)
    for name, offset in b.items():
        if offset > merged.get(name, -1):
            merged[name] = offset
    return merged


async def last_position(
    js: JetStreamContext, names: ClusterNames, session_id: str
) -> dict[str, int] | None:
    """The furthest output position among the session's last stored events (one per type)."""
    found: dict[str, int] | None = None
    name = HEADER.decode()
    subject = names.session_events(session_id)
    async with reader(js, names, subject, DeliverPolicy.LAST_PER_SUBJECT) as sub:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            batch = await sub.fetch(min(pending, 100), timeout=LOOKUP_TIMEOUT)
            pending -= len(batch)
            for msg in batch:
                if msg.headers and name in msg.headers:
                    found = furthest(found or {}, decode_position(msg.headers[name].encode()))
    return found
