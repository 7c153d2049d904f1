"""The §5.2 output grammar and the bounded line splitter (pure functions)."""

from __future__ import annotations

import pytest

from loki_api.models import (
    AgentEventData,
    InputEventData,
    LogEventData,
    MetricsEventData,
    PhaseEventData,
    TaskEventData,
)
from loki_api.sessions.output import MAX_LINE, LineSplitter, parse_line


def test_full_json_event_line_is_published_as_that_event() -> None:
    kind, data = parse_line(
        '{"type": "task:completed", "data": {"taskId": "t1", '
        '"title": "Build", "status": "completed", "duration": 2.5}}'
    )
    assert kind == "task:completed"
    assert data == TaskEventData(task_id="t1", title="Build", status="completed", duration=2.5)


def test_metrics_json_line() -> None:
    kind, data = parse_line('{"type":"metrics:update","data":{"tokensUsed":10,"cost":0.5}}')
    assert (kind, data) == ("metrics:update", MetricsEventData(tokens_used=10, cost=0.5))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("running", "task:started"),
        ("in_progress", "task:started"),
        ("completed", "task:completed"),
        ("done", "task:completed"),
        ("failed", "task:failed"),
    ],
)
def test_short_task_form_maps_by_status(status: str, expected: str) -> None:
    line = f'{{"type":"task","data":{{"id":"t9","subject":"S","status":"{status}"}}}}'
    kind, data = parse_line(line)
    assert kind == expected
    assert isinstance(data, TaskEventData)
    assert data.task_id == "t9" and data.title == "S"


def test_short_phase_agent_and_input_forms() -> None:
    assert parse_line('{"type":"phase","data":{"phase":"testing","previous":"dev"}}') == (
        "phase:started",
        PhaseEventData(phase="testing", previous_phase="dev"),
    )
    assert parse_line('{"type":"agent","data":{"id":"a1","type":"reviewer","model":"m"}}') == (
        "agent:spawned",
        AgentEventData(agent_id="a1", type="reviewer", model="m"),
    )
    assert parse_line('{"type":"input_requested","data":{"prompt":"Go?","options":["y","n"]}}') == (
        "input:requested",
        InputEventData(prompt="Go?", options=["y", "n"]),
    )


@pytest.mark.parametrize(
    "line",
    [
        '{"type":"nope","data":{}}',  # unknown type
        '{"type":"task:completed","data":{"taskId":1}}',  # wrong shape
        '{"hello": "world"}',  # no type
        '{"type":"phase","data":{}}',  # short form without a phase name
        "{not json}",
    ],
)
def test_other_json_is_an_info_log_with_the_text(line: str) -> None:
    assert parse_line(line) == ("log:info", LogEventData(level="info", message=line))


@pytest.mark.parametrize(
    ("line", "kind", "source", "message"),
    [
        ("[INFO] [planner] Reading PRD", "log:info", "planner", "Reading PRD"),
        ("[warning] disk almost full", "log:warn", None, "disk almost full"),
        ("[WARN] [x] y", "log:warn", "x", "y"),
        ("[Error] [db] boom", "log:error", "db", "boom"),
        ("[debug] details", "log:debug", None, "details"),
    ],
)
def test_level_lines(line: str, kind: str, source: str | None, message: str) -> None:
    level = kind.split(":")[1]
    assert parse_line(line) == (kind, LogEventData(level=level, message=message, source=source))


@pytest.mark.parametrize(
    ("line", "phase"),
    [
        ("Starting planning phase", "planning"),
        ("Entering development phase...", "development"),
        ("Beginning integration testing phase", "integration testing"),
    ],
)
def test_phase_lines(line: str, phase: str) -> None:
    assert parse_line(line) == ("phase:started", PhaseEventData(phase=phase))


def test_agent_line() -> None:
    assert parse_line("Spawning code reviewer agent") == (
        "agent:spawned",
        AgentEventData(agent_id="code-reviewer", type="code reviewer"),
    )
    assert parse_line("Spawning developer agent (agent-007)") == (
        "agent:spawned",
        AgentEventData(agent_id="agent-007", type="developer"),
    )
    assert parse_line("Spawning developer agent for task 3") == (
        "agent:spawned",
        AgentEventData(agent_id="developer", type="developer"),
    )


def test_plain_lines_depend_on_the_stream() -> None:
    assert parse_line("hello world") == (
        "log:info",
        LogEventData(level="info", message="hello world"),
    )
    assert parse_line("Traceback", "stderr") == (
        "log:error",
        LogEventData(level="error", message="Traceback", source="stderr"),
    )
    assert parse_line("[not a level] x") == (
        "log:info",
        LogEventData(level="info", message="[not a level] x"),
    )


def test_blank_lines_are_dropped_and_ansi_colours_stripped() -> None:
    assert parse_line("") is None
    assert parse_line("   \t") is None
    assert parse_line("\x1b[32m[INFO]\x1b[0m ok") == (
        "log:info",
        LogEventData(level="info", message="ok"),
    )


def test_splitter_handles_chunks_across_lines() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\n\nthr") == ["two", ""]
    assert splitter.feed(b"ee") == []
    assert splitter.finish() == ["three"]
    assert splitter.finish() == []


def test_splitter_cuts_long_lines_without_buffering_them() -> None:
    splitter = LineSplitter(max_line=10)
    out = splitter.feed(b"x" * 25)
    assert out == ["x" * 10]
    assert splitter.feed(b"y" * 1000) == []  # the rest of the runaway line is dropped
    assert splitter.feed(b"zz\nnext\nlast") == ["next"]
    assert splitter.finish() == ["last"]


def test_splitter_cuts_a_long_line_inside_one_chunk() -> None:
    splitter = LineSplitter()
    out = splitter.feed(b"a" * (MAX_LINE + 5) + b"\nb\n")
    assert out == ["a" * MAX_LINE, "b"]


def test_splitter_decodes_invalid_utf8_without_failing() -> None:
    assert LineSplitter().feed(b"caf\xc3\xa9 \xff\n") == ["café \ufffd"]


def test_full_type_lines_take_what_the_type_implies() -> None:
    assert parse_line('{"type": "log:error", "data": {"message": "m"}}') == (
        "log:error",
        LogEventData(level="error", message="m"),
    )
    assert parse_line('{"type": "log:error", "data": {"level": "info", "message": "m"}}') == (
        "log:error",
        LogEventData(level="error", message="m"),
    )
    event_type, data = parse_line('{"type": "task:completed", "data": {"taskId": "t1"}}')
    assert event_type == "task:completed"
    assert (data.task_id, data.title, data.status) == ("t1", "Untitled", "completed")
    # Without the one field nothing can stand in for, it is just a line of text.
    assert parse_line('{"type": "task:completed", "data": {"title": "x"}}')[0] == "log:info"
