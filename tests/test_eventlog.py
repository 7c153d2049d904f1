from pathlib import Path

from loki_api.bus import EventBus
from loki_api.eventlog import CURRENT, PREVIOUS, EventLog, seq_of
from loki_api.models import LogEventData
from loki_api.statedir import StateDir


def log_event(n: int) -> LogEventData:
    return LogEventData(level="info", message=f"line {n}")


def test_seq_of() -> None:
    assert seq_of("evt_42_1732341234567") == 42
    assert seq_of("evt_x_1") is None
    assert seq_of("nope") is None
    assert seq_of("evt_1_2_3") is None


def test_history_and_sequence_survive_a_restart(tmp_path: Path) -> None:
    bus = EventBus(history=5, log=EventLog(StateDir(tmp_path), ""))
    ids = [bus.publish("log:info", log_event(n), "s1").id for n in range(8)]
    bus.close()

    again = EventBus(history=5, log=EventLog(StateDir(tmp_path), ""))
    assert [e.seq for e in again.history()] == [4, 5, 6, 7, 8]
    assert again.history()[-1].json.startswith(b'{"id":"' + ids[-1].encode())
    nxt = again.publish("log:info", log_event(9), "s1")
    assert seq_of(nxt.id) == 9
    again.close()


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    bus = EventBus(history=10, log=EventLog(StateDir(tmp_path), ""))
    for n in range(3):
        bus.publish("log:info", log_event(n))
    bus.close()
    with open(tmp_path / CURRENT, "ab") as f:
        f.write(b'{"id":"evt_4_1","type":"log:in')  # SIGKILL mid-write
    again = EventBus(history=10, log=EventLog(StateDir(tmp_path), ""))
    assert [e.seq for e in again.history()] == [1, 2, 3]
    assert seq_of(again.publish("log:info", log_event(9)).id) == 4
    again.close()


def test_rotation_bounds_the_log_and_keeps_the_sequence(tmp_path: Path) -> None:
    bus = EventBus(history=1000, log=EventLog(StateDir(tmp_path), "", max_bytes=2000))
    for n in range(100):
        bus.publish("log:info", log_event(n))
        bus.flush()
    bus.close()
    assert (tmp_path / PREVIOUS).exists()
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total < 2 * 2000 + 500
    again = EventBus(history=1000, log=EventLog(StateDir(tmp_path), "", max_bytes=2000))
    seqs = [e.seq for e in again.history()]
    assert seqs == sorted(seqs) and seqs[-1] == 100
    assert seq_of(again.publish("log:info", log_event(0)).id) == 101
    again.close()


def test_zero_history_still_counts_and_persists(tmp_path: Path) -> None:
    bus = EventBus(history=0, log=EventLog(StateDir(tmp_path), ""))
    bus.publish("log:info", log_event(1))
    assert bus.history_size == 0 and bus.published == 1
    bus.close()
    again = EventBus(history=0, log=EventLog(StateDir(tmp_path), ""))
    assert again.last_seq == 1
    again.close()


def test_output_positions_are_written_with_the_events_and_read_back(tmp_path: Path) -> None:
    bus = EventBus(history=10, log=EventLog(StateDir(tmp_path), ""))
    bus.publish("log:info", log_event(1), "s1")
    bus.record_output_position("s1", {"stdout.txt": 10, "stderr.txt": 0})
    bus.publish("log:info", log_event(2), "s1")
    bus.record_output_position("s1", {"stdout.txt": 20, "stderr.txt": 0})
    bus.record_output_position("s2", {"stdout.txt": 5})
    bus.flush()
    lines = (tmp_path / CURRENT).read_bytes().splitlines()
    # Each position follows the events it covers, in the same file.
    assert [line[:18] for line in lines][1] == b'{"outputPosition":'
    bus.close()
    # A cut-short last line (a crash mid-write) is skipped, the last whole one wins.
    with open(tmp_path / CURRENT, "ab") as file:
        file.write(b'{"outputPosition":{"sessionId":"s1","offs')
    again = EventBus(history=10, log=EventLog(StateDir(tmp_path), ""))
    assert again.output_position("s1") == {"stdout.txt": 20, "stderr.txt": 0}
    assert again.output_position("s2") == {"stdout.txt": 5}
    assert again.output_position("nope") == {}
    assert [e.seq for e in again.history()] == [1, 2]  # positions are not events
    again.close()


def test_output_positions_survive_rotation(tmp_path: Path) -> None:
    bus = EventBus(history=10, log=EventLog(StateDir(tmp_path), "", max_bytes=400))
    bus.record_output_position("old", {"stdout.txt": 7})
    for n in range(20):  # several rotations: the first file is long gone
        bus.publish("log:info", log_event(n), "s1")
        bus.flush()
    bus.close()
    again = EventBus(log=EventLog(StateDir(tmp_path), ""))
    assert again.output_position("old") == {"stdout.txt": 7}
    again.close()


def test_history_is_on_disk_before_it_is_handed_out(tmp_path: Path) -> None:
    import asyncio

    async def main() -> None:
        bus = EventBus(history=10, log=EventLog(StateDir(tmp_path), ""))
        bus.bind_loop()  # the tick (and its flush) would come at the end of this turn
        bus.publish("log:info", log_event(1), "s1")
        assert not (tmp_path / CURRENT).read_bytes()
        _, replay = bus.subscribe(after_id="evt_0_0")
        assert len(replay) == 1 and (tmp_path / CURRENT).read_bytes().count(b"\n") == 1
        bus.close()

    asyncio.run(main())


def test_an_unwritable_log_keeps_a_bounded_backlog_and_catches_up(tmp_path: Path) -> None:
    (tmp_path / CURRENT).mkdir()  # a directory where the log belongs
    files = StateDir(tmp_path)
    log = EventLog(files, "")
    assert "events.jsonl" in (files.health.get("eventLog") or "")
    big = b'{"id":"evt_1_1","type":"log:info","timestamp":"t","data":{"m":"' + b"x" * 65536 + b'"}}'
    for _ in range(500):  # ~32 MB offered
        log.append(big)
        log.flush()
    assert sum(len(line) for line in log._buffer) <= 8 * 1024 * 1024
    (tmp_path / CURRENT).rmdir()
    log._reopen_at = 0.0  # the next flush retries at once
    log.flush()
    assert files.health.get("eventLog") is None
    assert 0 < (tmp_path / CURRENT).read_bytes().count(b"\n") <= 128
    log.close()
