"""An incremental Server-Sent Events decoder, fed raw byte chunks.

Follows the WHATWG "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- the stream is UTF-8; one leading BOM is dropped; invalid bytes become U+FFFD;
- lines end in `\\r\\n`, `\\n` or `\\r`, and a chunk may end anywhere, even
  between the `\\r` and the `\\n` of one line end or inside a UTF-8 sequence;
- a line starting with `:` is a comment; `field: value` loses one space after
  the colon; a line without a colon is a field with an empty value;
- `data` lines accumulate (joined by `\\n`); `event` sets the type; `id` sets the
  last event id unless the value contains NUL; `retry` sets the reconnection
  time when the value is all ASCII digits; unknown fields are ignored;
- a blank line dispatches the event, unless no data was seen; an event cut
  off by the end of the stream is never dispatched.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["ServerSentEvent", "SSEDecoder"]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type, its data, and the last event id at dispatch."""

    event: str = "message"
    data: str = ""
    id: str = ""


class SSEDecoder:
    """Feed it bytes with `feed`; it returns the events those bytes completed.

    `last_event_id` and `retry` (milliseconds, or None until the server sends one)
    persist across events, as the spec's event source state does.
    """

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # text of the line not yet ended
        self._skip_lf = False  # the last chunk ended in "\r": a leading "\n" belongs to it
        self._started = False  # the BOM check happens once, on the first character
        self._data: list[str] = []
        self._event_type = ""
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode `chunk` and return every event it completed, in order."""
        return self._feed_text(self._text.decode(chunk))

    def close(self) -> list[ServerSentEvent]:
        """Flush at the end of the stream. An unterminated event is discarded (per spec)."""
        events = self._feed_text(self._text.decode(b"", final=True))
        self._line = ""
        self._data = []
        self._event_type = ""
        return events

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = False
        events: list[ServerSentEvent] = []
        start = 0
        length = len(text)
        while start < length:
            cr = text.find("\r", start)
            lf = text.find("\n", start)
            if cr == -1 and lf == -1:
                self._line += text[start:]
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < length:
                end, next_start = cr, cr + (2 if text[cr + 1] == "\n" else 1)
            else:  # a "\r" ends the chunk: a "\n" opening the next one is part of it
                end, next_start = cr, cr + 1
                self._skip_lf = True
            line = self._line + text[start:end] if self._line else text[start:end]
            self._line = ""
            event = self._process_line(line)
            if event is not None:
                events.append(event)
            start = next_start
        return events

    def _process_line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value and value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            return None
        return ServerSentEvent(
            event=event_type or "message", data="\n".join(data), id=self.last_event_id
        )
