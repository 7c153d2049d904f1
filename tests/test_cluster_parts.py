"""Cluster mode's pure parts: the publish outbox, subject names, node id, flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from loki_api.cli import build_parser, settings_from
from loki_api.cluster.names import ClusterNames, session_of, session_token
from loki_api.cluster.node import resolve_node_id
from loki_api.cluster.outbox import Outbox
from loki_api.cluster.positions import OutputPosition, decode_position, encode_position, furthest
from loki_api.settings import Settings, SettingsError


def test_outbox_keeps_order_and_counts_what_does_not_fit() -> None:
    outbox = Outbox(limit=3)
    assert [outbox.append(b"s.%d" % i, b"%d" % i) for i in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert outbox.lost == 2 and len(outbox) == 3
    assert [n for n, _, _, _ in outbox.take_unsent()] == [1, 2, 3]
    assert list(outbox.take_unsent()) == []  # sent once
    assert outbox.in_flight
    outbox.ack(2)  # out of order: 1 still waits, so nothing leaves yet
    assert len(outbox) == 3
    outbox.rewind()  # reconnect: everything unacknowledged again, in order, 2 skipped
    assert [payload for _, _, payload, _ in outbox.take_unsent()] == [b"0", b"2"]
    outbox.ack(1)
    outbox.ack(3)
    outbox.ack(3)  # a duplicate ack changes nothing
    assert len(outbox) == 0 and not outbox.in_flight and outbox.acked == 3
    assert outbox.append(b"s.5", b"5")  # room again; numbers go on
    assert [n for n, _, _, _ in outbox.take_unsent()] == [4]


def test_an_outbox_note_rides_with_its_entry_until_it_is_acknowledged() -> None:
    outbox = Outbox(limit=10)
    outbox.append(b"s", b"a")
    outbox.append(b"s", b"b")
    assert outbox.last_number == 2 and outbox.attach(2, "position")
    assert [note for *_, note in outbox.take_unsent()] == [None, "position"]
    assert not outbox.attach(2, "later")  # sent: its header is on the wire already
    outbox.rewind()
    assert [note for *_, note in outbox.take_unsent()] == [None, "position"]  # re-sent with it
    assert outbox.ack(2) == "position" and outbox.ack(1) is None


def test_output_positions_travel_as_a_header_value() -> None:
    offsets = {"stdout.txt": 1234, "stderr.txt": 0}
    assert encode_position(offsets) == b"stderr.txt=0;stdout.txt=1234"
    assert decode_position(encode_position(offsets)) == offsets
    assert decode_position(b"stdout.txt=12;garbage;x=;=3") == {"stdout.txt": 12}
    assert OutputPosition("s", offsets).header == b"Loki-Output: stderr.txt=0;stdout.txt=1234\r\n"
    later = furthest({"stdout.txt": 10, "stderr.txt": 5}, {"stdout.txt": 12, "stderr.txt": 3})
    assert later == {"stdout.txt": 12, "stderr.txt": 5}


def test_subjects_carry_session_and_type_and_read_back() -> None:
    names = ClusterNames("prod")
    assert names.stream == "prod_events"
    assert names.subject("task:completed", "s_1.2") == "prod.events.s_1~2.task:completed"
    for session_id in (None, "session_1_ab", "a.b.c", "x-y", "weird id*"):
        subject = names.subject("log:info", session_id)
        assert subject.count(".") == 3 and " " not in subject and "*" not in subject
        assert names.parse(subject) == ("log:info", session_id)
    assert session_of(session_token(None)) is None


def test_node_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(loki_dir=tmp_path)
    first = resolve_node_id(settings)
    assert first.startswith("node-")
    assert (tmp_path / ".loki" / "node-id").read_text().strip() == first
    assert resolve_node_id(settings) == first
    assert resolve_node_id(Settings(loki_dir=tmp_path, node_id="given")) == "given"
    (tmp_path / ".loki" / "node-id").write_text("not a node id!\n")
    assert resolve_node_id(settings) != first  # a garbled file is replaced, never fatal


def test_cluster_flags_and_environment(tmp_path: Path) -> None:
    def settings(*argv: str, **env: str) -> Settings:
        return settings_from(build_parser().parse_args([*argv, "--loki-dir", str(tmp_path)]), env)

    plain = settings()
    assert not plain.clustered and plain.cluster == "loki" and plain.publish_buffer == 100_000
    clustered = settings(
        LOKI_NATS_URL="127.0.0.1:4222, tls://n2:4222",
        LOKI_CLUSTER="blue",
        LOKI_NODE_ID="a1",
        LOKI_NATS_REPLICAS="3",
        LOKI_NODE_TTL="5",
    )
    assert clustered.nats_urls == ("nats://127.0.0.1:4222", "tls://n2:4222")
    assert (clustered.cluster, clustered.node_id, clustered.replicas, clustered.node_ttl) == (
        "blue",
        "a1",
        3,
        5.0,
    )
    flagged = settings("--nats", "nats://h:1", "--cluster", "red", LOKI_CLUSTER="blue")
    assert flagged.cluster == "red"
    for argv in (
        ("--nats", "http://h:1"),
        ("--cluster", "a.b"),
        ("--node-id", "a b"),
        ("--replicas", "6"),
        ("--node-ttl", "0"),
        ("--publish-buffer", "0"),
        ("--nats-tls-cert", str(tmp_path)),
    ):
        with pytest.raises(SettingsError):
            settings(*argv)
