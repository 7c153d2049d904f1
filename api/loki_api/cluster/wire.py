"""Shortcuts past nats-py's per-message machinery for the event path, and only for it.

nats-py turns every incoming message into a `Msg` with a parsed header dict,
puts it on its subscription's queue and wakes that subscription's task; every
outgoing publish validates, builds and queues its own command. For control
traffic (KV, request-reply, stream management) that is fine. For the event
stream, where one node moves every event of the cluster, that machinery
cost more than everything else an event does, and capped a node at about
57,000 events/s. So:

- `EventConnection` is nats-py's client with one addition: a subscription
  can have a *raw handler*, called synchronously from the protocol parser
  with the message's bytes (subject, reply, payload, header block) and
  nothing built around them.
- `hpub` builds the publish command of one event by hand, and
  `send_commands` hands a whole loop turn's worth to the connection as one
  write.

Both lean on nats-py internals (`_process_msg`, `_send_command`,
`_flush_pending`), which is why the dependency is pinned below 3 and why the
cluster tests exercise every path through here with a real server.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.subscription import Subscription

# (subject, reply, payload, header block or None)
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]


class EventConnection(Client):
    """nats-py's client, plus raw handlers for the subscriptions that carry events."""

    def __init__(self) -> None:
        super().__init__()
        self._raw: dict[int, RawHandler] = {}

    def set_raw_handler(self, subscription: Subscription, handler: RawHandler) -> None:
        """Messages of `subscription` go to `handler` as bytes from now on (not to its `cb`)."""
        self._raw[subscription._id] = handler

    def drop_raw_handler(self, subscription: Subscription) -> None:
        self._raw.pop(subscription._id, None)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._raw.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        handler(subject, reply, data, headers)

    async def send_commands(self, commands: bytes) -> None:
        """Write prepared protocol commands (a loop turn's publishes) as one buffer."""
        await self._send_command(commands)
        await self._flush_pending()


def hpub(
    subject: bytes, msg_id: bytes, payload: bytes, reply: bytes = b"", extra: bytes = b""
) -> bytes:
    """The publish command of one event, with its `Nats-Msg-Id` header (JetStream dedupe).

    Without a reply subject JetStream sends no acknowledgement. `extra`: more
    header lines, each ending in CRLF.
    """
    header = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n%s\r\n" % (msg_id, extra)
    return b"HPUB %s %s%s%d %d\r\n%s%s\r\n" % (
        subject,
        reply,
        b" " if reply else b"",
        len(header),
        len(header) + len(payload),
        header,
        payload,
    )


def header_value(headers: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (given as b"\\r\\nName: ") in a raw header block, or None."""
    start = headers.find(name)
    if start < 0:
        return None
    start += len(name)
    end = headers.find(b"\r\n", start)
    return headers[start:end] if end >= 0 else headers[start:]
