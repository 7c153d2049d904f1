"""Session state: tolerant decoding of the state files, diffing them into
events, and the in-memory store REST reads from."""

from .store import SessionState, StateStore, valid_session_id

__all__ = ["SessionState", "StateStore", "valid_session_id"]
