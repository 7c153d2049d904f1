"""The one JSON encoder and the decoders the server shares."""

from __future__ import annotations

from typing import Any

import msgspec

from .models import RawEvent

_encoder = msgspec.json.Encoder()
_raw_event_decoder = msgspec.json.Decoder(RawEvent)


def encode(value: Any) -> bytes:
    """Encode any Struct, dict or list as compact JSON."""
    return _encoder.encode(value)


def decode_raw_event(json: bytes) -> RawEvent:
    return _raw_event_decoder.decode(json)
