"""Body chunks written straight to uvicorn's transport, for live event streams.

Fan-out to a thousand streams is a thousand socket writes per event; going
through the ASGI `send` for each adds a coroutine, a message dict and
uvicorn's per-message checks to every one of them (measured: ~3.5 µs of
~13 µs per subscriber). For a response that uvicorn's httptools protocol is
already streaming with chunked transfer encoding, this writer frames the
chunk exactly as uvicorn would (`<size hex>\\r\\n<body>\\r\\n`) and hands it to
the same transport, so the bytes on the wire are the same.

It is used only between the stream's first body message and its last, both of
which still go through `send`; `DirectChunkWriter.of` returns None for any other
server or protocol (h11, a response that is not chunked, a wrapped `send` as
with `--rate-limit`, a uvicorn whose cycle lacks an attribute used here), and
the stream then keeps using `send`.

`UvicornCycle` is the smaller promise both paths need from uvicorn's request
cycle (httptools or h11): notice a connection that closed under a pipelined
request, and hang up a stream that was cut off (final comment, then close the
connection so the client reconnects at once).

These are private attributes of uvicorn: pyproject.toml pins the uvicorn range
they were tested on, and tests/test_stream.py fails if the direct path stops
engaging on it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from starlette.types import Send

# The protocols whose request cycles these classes know the attributes of.
UVICORN_HTTPTOOLS_CYCLE = "uvicorn.protocols.http.httptools_impl"
UVICORN_H11_CYCLE = "uvicorn.protocols.http.h11_impl"
# How long a hung-up stream's last bytes may take to leave before the connection
# is reset: a reader that reads slowly still sees the final comment; one that
# never reads is gone after this.
HANGUP_LINGER = 1.0


def unwrapped(send: Send) -> Send:
    """`send` without the wrappers that set `__wrapped__` (`access.ResponseStart`)."""
    while (inner := getattr(send, "__wrapped__", None)) is not None:
        send = inner
    return send


def chunk(body: bytes) -> bytes:
    """`body` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(body), body)


class DirectChunkWriter:
    """Writes chunks of a started, chunked uvicorn response to its transport."""

    __slots__ = ("_cycle", "_transport", "_flow")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._transport = cycle.transport
        self._flow = cycle.flow

    @classmethod
    def of(cls, send: Send) -> DirectChunkWriter | None:
        """A writer for the response `send` belongs to, or None when that is not safe.

        A wrapper that sets `__wrapped__` (`access.ResponseStart`) only needs to
        see the response start, which went through it already: it is looked through.
        """
        cycle: Any = getattr(unwrapped(send), "__self__", None)
        if type(cycle).__module__ != UVICORN_HTTPTOOLS_CYCLE:
            return None
        try:
            usable = (
                cycle.response_started
                and cycle.chunked_encoding is True
                and not cycle.response_complete
                and cycle.disconnected is False
                and isinstance(cycle.flow.write_paused, bool)
                and callable(cycle.transport.write)
                and callable(cycle.transport.is_closing)
                and callable(cycle.message_event.set)
            )
        except AttributeError:  # another uvicorn version: keep to the ASGI send
            return None
        return cls(cycle) if usable else None

    def write(self, data: bytes) -> bool:
        """Write framed `data`; False once the transport asks us to stop (its buffer is full)."""
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete:
            return True  # nothing to write to; the stream learns of it from receive()
        if self._transport.is_closing():
            # The connection is gone, but uvicorn told only the newest request on
            # it (a client that pipelined another request behind this stream):
            # tell ours as uvicorn would, so its receive() ends the stream.
            cycle.disconnected = True
            cycle.message_event.set()
            return True
        self._transport.write(data)
        return not self._flow.write_paused


def _reset(transport: Any) -> None:
    """Reset a connection that is still open: RST now, whatever is still queued.

    A plain close would leave the kernel sending the queued bytes (and the FIN
    behind them) to a client that does not read, for minutes.
    """
    if transport.is_closing() and transport.get_write_buffer_size() == 0:
        return  # closed cleanly, or closing with nothing left to send
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (AttributeError, OSError):
        pass
    transport.abort()


class UvicornCycle:
    """The request cycle of uvicorn (httptools or h11) behind an ASGI `send`."""

    __slots__ = ("_cycle", "_transport", "_h11")

    def __init__(self, cycle: Any, h11: bool) -> None:
        self._cycle = cycle
        self._transport = cycle.transport
        self._h11 = h11

    @classmethod
    def of(cls, send: Send) -> UvicornCycle | None:
        """The cycle `send` belongs to, or None (another server, an opaque wrapper)."""
        cycle: Any = getattr(unwrapped(send), "__self__", None)
        module = type(cycle).__module__
        if module not in (UVICORN_HTTPTOOLS_CYCLE, UVICORN_H11_CYCLE):
            return None
        try:
            usable = (
                isinstance(cycle.disconnected, bool)
                and isinstance(cycle.response_complete, bool)
                and callable(cycle.transport.is_closing)
                and callable(cycle.transport.abort)
                and callable(cycle.flow.resume_writing)
                and callable(cycle.message_event.set)
            )
        except AttributeError:
            return None
        return cls(cycle, module == UVICORN_H11_CYCLE) if usable else None

    def gone(self) -> bool:
        """True once the connection is closed; tells the request, as uvicorn would.

        uvicorn tells only the newest request of a closed connection; a stream
        with a request pipelined behind it would wait in `receive()` for ever.
        """
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete:
            return True
        if self._transport.is_closing():
            self._disconnect()
            return True
        return False

    def hang_up(self, final: bytes) -> None:
        """Send `final` as the response's last chunk and end the connection now.

        The request's `receive()` returns at once. The end is a FIN after what
        the client has yet to read (a client that reads gets the final comment,
        then the close); a connection still open `HANGUP_LINGER` seconds later
        (not closed by its client, read or not) gets a reset, which it notices
        at once, unread bytes or not.
        """
        cycle = self._cycle
        transport = self._transport
        if not (cycle.disconnected or cycle.response_complete or transport.is_closing()):
            ending = self._ending(final)
            if ending:
                transport.write(ending)
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
            asyncio.get_running_loop().call_later(HANGUP_LINGER, _reset, transport)
        self._disconnect()  # uvicorn's send writes nothing more once this is set

    def _ending(self, final: bytes) -> bytes:
        cycle = self._cycle
        try:
            if self._h11:
                import h11

                conn = cycle.conn
                return conn.send(h11.Data(data=final)) + conn.send(h11.EndOfMessage())
            if cycle.chunked_encoding:
                return chunk(final) + b"0\r\n\r\n"
        except Exception:  # whatever the framing state, closing is what matters
            return b""
        return b""

    def _disconnect(self) -> None:
        """What uvicorn does when the connection is lost: the request's waits end."""
        cycle = self._cycle
        cycle.disconnected = True
        cycle.message_event.set()
        cycle.flow.resume_writing()
