"""The loop-side inotify watch that wakes a supervisor when its session's output grows."""

import sys
from pathlib import Path

import anyio
import httpx
import pytest

from loki_api.sessions.output_watch import OutputWatch
from loki_api.watcher.handler import PathFilter

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux-only")


@pytest.mark.anyio
async def test_output_growth_wakes_only_its_own_session(tmp_path: Path) -> None:
    watch = OutputWatch.create()
    assert watch is not None
    watch.start()
    woke: list[tuple[str, bool]] = []
    first, second = tmp_path / "s1", tmp_path / "s2"
    for directory in (first, second):
        directory.mkdir()
        assert watch.watch(
            directory, lambda closed, name=directory.name: woke.append((name, closed))
        )
    try:
        (first / "tasks.json").write_text("{}")  # not output: no wake-up
        out = open(first / "stdout.txt", "ab")  # noqa: SIM115 - closed below, on purpose
        out.write(b"line\n")
        out.flush()
        with anyio.fail_after(5):
            while ("s1", False) not in woke:
                await anyio.sleep(0.001)
        out.close()  # the writer is gone (its process ended): that wakes too
        with anyio.fail_after(5):
            while ("s1", True) not in woke:
                await anyio.sleep(0.001)
        assert woke == [("s1", False), ("s1", True)]

        watch.unwatch(first)
        with open(first / "stderr.txt", "ab") as err:
            err.write(b"unwatched\n")
        with open(second / "stderr.txt", "ab") as err:
            err.write(b"watched\n")
        # inotify reports in order: once s2's close is seen, s1's write would have been too.
        with anyio.fail_after(5):
            while ("s2", True) not in woke:
                await anyio.sleep(0.001)
        assert [name for name, _ in woke] == ["s1", "s1", "s2", "s2"]
    finally:
        watch.close()
    assert not watch.watch(first, lambda closed: None)  # closed: nothing watched any more


def test_the_state_watcher_sees_output_only_when_asked_to(tmp_path: Path) -> None:
    state = tmp_path / ".loki"
    sessions, output_dir = state / "sessions", state / "output"
    output = str(output_dir / "s1" / "stdout.txt")
    assert not PathFilter(state, sessions)(output, False)
    assert PathFilter(state, sessions, output_dir=output_dir)(output, False)
    assert not PathFilter(state, sessions, output_dir=output_dir)(
        str(output_dir / "s1" / "notes.txt"), False
    )
    assert PathFilter(state, sessions)(str(sessions / "s1" / "tasks.json"), False)


CLI = """
import sys, time
from pathlib import Path
go = Path(__file__).with_suffix(".go")
print("first", flush=True)
deadline = time.monotonic() + 20
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
print("second", flush=True)
"""


@pytest.mark.anyio
async def test_a_running_session_is_read_when_inotify_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loki_api.sessions import manager
    from loki_api.settings import Settings

    from .support import serve_in_process, sse_stream, wait_for

    # Without the inotify wake-up the supervisor would only look again in a minute.
    monkeypatch.setattr(manager, "POLL_INTERVAL", 60.0)
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    loki_dir = tmp_path / "project"
    loki_dir.mkdir()
    settings = Settings(
        loki_dir=loki_dir,
        port=0,  # type: ignore[arg-type]
        cli=f"{sys.executable} {script}",
    )
    async with serve_in_process(settings) as srv:
        assert srv.runtime.sessions.output_watch is not None
        async with sse_stream(srv.url, params={"types": "log:info"}) as reader:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                reply = await client.post("/api/sessions", json={})
            assert reply.status_code == 201, reply.text
            assert (await reader.next()).json()["data"]["message"] == "first"
            script.with_suffix(".go").touch()
            assert (await reader.next()).json()["data"]["message"] == "second"
        # Its exit is noticed as it closes its output, not by the (minute-long) poll.
        await wait_for(lambda: srv.runtime.sessions.counts().running == 0)


def test_a_session_started_before_output_moved_is_read_where_it_writes(tmp_path: Path) -> None:
    from loki_api.bus import EventBus
    from loki_api.sessions.manager import SessionManager
    from loki_api.settings import Settings
    from loki_api.state import StateStore

    settings = Settings(loki_dir=tmp_path)  # type: ignore[call-arg]
    bus = EventBus()
    manager = SessionManager(settings, StateStore(settings, bus), bus)
    legacy = settings.sessions_dir / "old"
    legacy.mkdir(parents=True)
    (legacy / "stdout.txt").write_bytes(b"printed by a session of an older server\n")
    assert manager._output_of("old") == legacy
    assert manager._output_of("new") == settings.output_dir / "new"
