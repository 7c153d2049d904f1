"""Names on NATS: one cluster's stream and subjects, prefixed with its `--cluster` name.

An event's subject is `<cluster>.events.<session>.<type>`, so a consumer can
filter by session or type without opening the envelope. Session ids may hold
`.` (a subject separator); it is written as `~`, which no session id holds.
Events of no session use `_`, which no session id can be (ids start with a
letter or digit).
"""

from __future__ import annotations

import re

NO_SESSION = "_"
# What a session id token may hold once `.` is swapped; anything else is hex-escaped.
_PLAIN = re.compile(r"[A-Za-z0-9_~-]+")


def session_token(session_id: str | None) -> str:
    if session_id is None:
        return NO_SESSION
    token = session_id.replace(".", "~")
    if _PLAIN.fullmatch(token) and token != NO_SESSION:
        return token
    return "%" + session_id.encode().hex()  # never happens for valid ids; stays reversible


def session_of(token: str) -> str | None:
    if token == NO_SESSION:
        return None
    if token.startswith("%"):
        return bytes.fromhex(token[1:]).decode(errors="replace")
    return token.replace("~", ".")


class ClusterNames:
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.stream = f"{cluster}_events"
        self.events_prefix = f"{cluster}.events."
        self.all_events = f"{cluster}.events.>"

    def subject(self, event_type: str, session_id: str | None) -> str:
        return f"{self.events_prefix}{session_token(session_id)}.{event_type}"

    def session_events(self, session_id: str | None) -> str:
        """The subject filter of every event of one session."""
        return f"{self.events_prefix}{session_token(session_id)}.*"

    def parse(self, subject: str) -> tuple[str, str | None]:
        """(type, session id) of an event subject."""
        token, _, event_type = subject[len(self.events_prefix) :].partition(".")
        return event_type, session_of(token)
