"""The SDK's SSE decoder, fed raw byte chunks (examples from the WHATWG spec and edge cases)."""

from __future__ import annotations

import pytest

from loki_client._sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def every_split(stream: bytes) -> list[list[bytes]]:
    """The stream as two chunks, cut at every possible byte."""
    return [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def test_whatwg_stock_example() -> None:
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode(stream) == [ServerSentEvent(data="YHOO\n+2\n10")]


def test_whatwg_four_blocks_example() -> None:
    # A comment, an event with id 1, an event after an empty `id` (resets it), and
    # a last block with no blank line after it: discarded.
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event"
    )
    assert decode(stream) == [
        ServerSentEvent(data="first event", id="1"),
        ServerSentEvent(data="second event", id=""),
    ]


def test_whatwg_empty_data_examples() -> None:
    # "data" alone and "data" twice: one empty-data event, then a "\n" event;
    # the third block has no blank line after it and is never dispatched.
    stream = b"data\n\ndata\ndata\n\ndata:"
    assert decode(stream) == [ServerSentEvent(data=""), ServerSentEvent(data="\n")]


def test_whatwg_space_after_colon_example() -> None:
    stream = b"data:test\n\ndata: test\n\n"
    assert decode(stream) == [ServerSentEvent(data="test"), ServerSentEvent(data="test")]


def test_only_one_leading_space_is_removed() -> None:
    assert decode(b"data:  two spaces\n\n") == [ServerSentEvent(data=" two spaces")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: task:completed", b"id: evt_1_2", b"data: {}", b"", b""])
    assert decode(stream) == [ServerSentEvent(event="task:completed", data="{}", id="evt_1_2")]


def test_mixed_line_endings() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\n"
    assert decode(stream) == [ServerSentEvent(data="a\nb\nc")]


@pytest.mark.parametrize(
    "stream",
    [
        b"id: evt_7_1\r\nevent: log:info\r\ndata: line one\r\ndata: line two\r\n\r\n"
        b": keep-alive\r\n\r\nretry: 1500\r\ndata: second\r\n\r\n",
        b"id: evt_7_1\revent: log:info\rdata: line one\rdata: line two\r\r"
        b": keep-alive\r\rretry: 1500\rdata: second\r\r",
    ],
)
def test_split_anywhere_gives_the_same_events(stream: bytes) -> None:
    expected = [
        ServerSentEvent(event="log:info", data="line one\nline two", id="evt_7_1"),
        ServerSentEvent(data="second", id="evt_7_1"),
    ]
    assert decode(stream) == expected
    assert decode(*bytewise(stream)) == expected
    for chunks in every_split(stream):
        assert decode(*chunks) == expected, chunks


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # Were the "\n" taken as a second line end, it would be a blank line and
    # dispatch "a" before "b" is added.
    assert decode(b"data: a\r", b"\ndata: b\n\n") == [ServerSentEvent(data="a\nb")]
    assert decode(b"data: a\r", b"", b"\n", b"\n") == [ServerSentEvent(data="a")]


def test_utf8_sequence_split_across_chunks() -> None:
    stream = "data: héllo ✓ 🚀\n\n".encode()
    assert decode(*bytewise(stream)) == [ServerSentEvent(data="héllo ✓ 🚀")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert decode(b"data: a\xffb\n\n") == [ServerSentEvent(data="a\ufffdb")]


def test_leading_bom_is_dropped_once() -> None:
    bom = "\ufeff".encode()
    assert decode(bom + b"data: x\n\n") == [ServerSentEvent(data="x")]
    # Split inside the BOM's bytes.
    assert decode(bom[:1], bom[1:] + b"data: x\n\n") == [ServerSentEvent(data="x")]
    # A second BOM is part of the field name, so the line is an unknown field.
    assert decode(bom + bom + b"data: x\n\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_comments_are_ignored() -> None:
    stream = b": connected to loki-api\n: ping\n\ndata: x\n: inside\n\n"
    assert decode(stream) == [ServerSentEvent(data="x")]


def test_retry_needs_ascii_digits() -> None:
    decoder = SSEDecoder()
    assert decoder.retry is None
    decoder.feed(b"retry: 3000\n\n")
    assert decoder.retry == 3000
    for bad in (b"retry: 10s\n", b"retry: -1\n", b"retry:\n", b"retry: \xd9\xa3\n"):
        decoder.feed(bad)
        assert decoder.retry == 3000, bad
    decoder.feed(b"retry:0\n")
    assert decoder.retry == 0


def test_id_with_nul_is_ignored() -> None:
    stream = b"id: evt_1_1\ndata: a\n\nid: evt\x002\ndata: b\n\n"
    assert decode(stream) == [
        ServerSentEvent(data="a", id="evt_1_1"),
        ServerSentEvent(data="b", id="evt_1_1"),
    ]


def test_id_persists_and_an_id_without_data_still_counts() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: evt_5_1\n\n") == []  # nothing dispatched...
    assert decoder.last_event_id == "evt_5_1"  # ...but the id is remembered
    assert decoder.feed(b"data: x\n\n") == [ServerSentEvent(data="x", id="evt_5_1")]


def test_event_type_resets_after_dispatch() -> None:
    stream = b"event: heartbeat\ndata: 1\n\ndata: 2\n\nevent: only-type\n\ndata: 3\n\n"
    assert decode(stream) == [
        ServerSentEvent(event="heartbeat", data="1"),
        ServerSentEvent(data="2"),
        ServerSentEvent(data="3"),
    ]


def test_field_without_colon_and_unknown_fields() -> None:
    stream = b"data\nfoo: bar\nevent\ndata: x\n\n"
    assert decode(stream) == [ServerSentEvent(data="\nx")]


def test_unterminated_event_is_discarded_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: cut off") == [ServerSentEvent(data="complete")]
    assert decoder.close() == []


def test_loki_frame() -> None:
    frame = (
        b"id: evt_42_1732341234567\nevent: task:completed\n"
        b'data: {"id":"evt_42_1732341234567","type":"task:completed"}\n\n'
    )
    [event] = decode(*bytewise(frame))
    assert event.event == "task:completed"
    assert event.id == "evt_42_1732341234567"
    assert event.data == '{"id":"evt_42_1732341234567","type":"task:completed"}'
