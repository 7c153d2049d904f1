import pytest

from loki_api.filters import MATCH_ALL, EventFilter, FilterError


def test_empty_filter_matches_everything() -> None:
    f = EventFilter.parse(None, None, None)
    assert f == MATCH_ALL
    assert f.matches("log:debug", None)
    assert f.matches("task:created", "s1")


def test_session_filter() -> None:
    f = EventFilter.parse("s1", None, None)
    assert f.matches("task:created", "s1")
    assert not f.matches("task:created", "s2")
    assert not f.matches("task:created", None)


def test_types_are_exact_names() -> None:
    f = EventFilter.parse(None, "task:completed, task:failed", None)
    assert f.matches("task:completed", None)
    assert f.matches("task:failed", None)
    assert not f.matches("task:created", None)


def test_min_level_applies_to_logs_only() -> None:
    f = EventFilter.parse(None, None, "warn")
    assert not f.matches("log:debug", None)
    assert not f.matches("log:info", None)
    assert f.matches("log:warn", None)
    assert f.matches("log:error", None)
    assert f.matches("task:created", None)
    assert f.matches("heartbeat", None)


def test_min_level_accepts_warning_and_any_case() -> None:
    assert EventFilter.parse(None, None, "WARNING") == EventFilter.parse(None, None, "warn")


@pytest.mark.parametrize(
    ("types", "level"), [("task:done", None), ("log", None), (None, "loud"), (None, "trace")]
)
def test_unknown_type_or_level_is_rejected(types: str | None, level: str | None) -> None:
    with pytest.raises(FilterError):
        EventFilter.parse(None, types, level)


def test_equal_filters_are_equal_and_hashable() -> None:
    a = EventFilter.parse("s", "log:info,log:warn", "info")
    b = EventFilter.parse("s", "log:warn,log:info", "INFO")
    assert a == b and hash(a) == hash(b)
