"""Containment (SPEC §5.4): no process of a session outlives it, whatever it forked.

A real server runs a fake CLI that leaves two processes behind: a `setsid`
sleeper (its own session and process group, out of reach of a signal to the
session's group) and a double-forked one that ignores SIGTERM (orphaned at
once). Both carry the session's `LOKI_SESSION_ID`, which is how `/proc` is
searched afterwards. Both containment paths run: a cgroup v2 per session
(where this machine lets the server create one) and the launcher's subreaper
alone (`--containment subreaper`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from functools import partial
from pathlib import Path

import httpx
import pytest

from loki_api.sessions import cgroups

from .support import ServerProcess, wait_for

pytestmark = pytest.mark.anyio

FAKE_CLI = """#!/bin/sh
setsid sleep 600 &
( trap '' TERM; sleep 600 & )
echo "[INFO] leftovers started"
case "$*" in *exits*) exit 3 ;; esac
exec sleep 600
"""

CAN_CGROUP = cgroups.session_base()[0] is not None
MODES = [
    pytest.param(
        "auto",
        marks=pytest.mark.skipif(not CAN_CGROUP, reason="cannot create cgroup v2 here"),
        id="cgroup",
    ),
    pytest.param("subreaper", id="subreaper"),
]


def session_processes(session_id: str) -> list[int]:
    """Every living process that carries the session's id in its environment."""
    marker = f"LOKI_SESSION_ID={session_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as file:
                    if marker in file.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def zombies_of(parent: int) -> list[int]:
    """The unreaped children of `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if fields[0] == "Z" and int(fields[1]) == parent:
                found.append(int(entry))
    return found


def fake_cli(tmp_path: Path) -> str:
    script = tmp_path / "leaves-leftovers.sh"
    script.write_text(FAKE_CLI)
    script.chmod(0o755)
    return str(script)


def supervisor_doc(loki_dir: Path, session_id: str) -> dict[str, object]:
    path = loki_dir / ".loki" / "sessions" / session_id / "supervisor.json"
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def status_of(client: httpx.Client, session_id: str) -> str:
    return str(client.get(f"/api/sessions/{session_id}").json()["session"]["status"])


async def start_with_leftovers(client: httpx.Client, prd: str | None = None) -> tuple[str, int]:
    """Start a session and wait until its leftovers run; (id, launcher pid)."""
    reply = client.post("/api/sessions", json={"prdPath": prd} if prd else {})
    assert reply.status_code == 201, reply.text
    session_id = reply.json()["sessionId"]
    launcher = client.get(f"/api/sessions/{session_id}").json()["session"]["pid"]
    # launcher, CLI, the setsid sleeper (once in a session of its own), the double-forked one
    await wait_for(
        lambda: detached(session_id, launcher) and len(session_processes(session_id)) >= 4,
        timeout=10,
    )
    return session_id, launcher


def detached(session_id: str, launcher: int) -> list[int]:
    """The session's processes that left its (the launcher's) Unix session."""
    found = []
    for pid in session_processes(session_id):
        try:
            if os.getsid(pid) != launcher:
                found.append(pid)
        except ProcessLookupError:
            continue
    return found


async def assert_all_gone(session_id: str, timeout: float = 10) -> None:
    await wait_for(lambda: not session_processes(session_id), timeout=timeout)


@pytest.mark.parametrize("mode", MODES)
async def test_stop_ends_every_descendant_also_after_a_server_sigkill(
    loki_dir: Path, tmp_path: Path, mode: str
) -> None:
    args = ("--cli", fake_cli(tmp_path), "--stop-grace", "0.5", "--max-sessions", "2")
    args += ("--containment", mode)
    first = ServerProcess(loki_dir, *args).start()
    try:
        with httpx.Client(base_url=first.url, timeout=10) as client:
            stopped, launcher = await start_with_leftovers(client)
            cgroup = supervisor_doc(loki_dir, stopped).get("cgroup")
            if mode == "auto":
                assert isinstance(cgroup, str)
                with open(f"/proc/{detached(stopped, launcher)[0]}/cgroup") as file:
                    assert f"loki-{stopped}" in file.read()
            else:
                assert cgroup is None
            assert client.post(f"/api/sessions/{stopped}/stop").status_code == 200
            await assert_all_gone(stopped)
            await wait_for(lambda: status_of(client, stopped) == "stopped")
            if isinstance(cgroup, str):
                await wait_for(lambda: not Path(cgroup).exists())
            assert not zombies_of(first.pid)

            readopted, _ = await start_with_leftovers(client)
    finally:
        first.stop(signal.SIGKILL)
    assert session_processes(readopted), "the session outlives its server"
    with ServerProcess(loki_dir, *args) as second, httpx.Client(base_url=second.url) as client:
        assert status_of(client, readopted) == "running"
        assert client.post(f"/api/sessions/{readopted}/stop").status_code == 200
        await assert_all_gone(readopted)
        await wait_for(lambda: status_of(client, readopted) == "stopped")


async def test_own_exit_delete_and_stop_on_exit_leave_nothing(
    loki_dir: Path, tmp_path: Path
) -> None:
    (loki_dir / "exits.md").write_text("# a session that ends by itself\n")
    args = ("--cli", fake_cli(tmp_path), "--stop-grace", "0.5", "--max-sessions", "2")
    server = ServerProcess(loki_dir, *args, "--stop-sessions-on-exit").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            reply = client.post("/api/sessions", json={"prdPath": "exits.md"})
            ended = reply.json()["sessionId"]
            # Its CLI exits at once with 3; what it left behind must go with it.
            await wait_for(lambda: status_of(client, ended) == "failed")
            assert not session_processes(ended)
            record = client.get(f"/api/sessions/{ended}").json()["session"]
            assert record["exitCode"] == 3
            assert client.delete(f"/api/sessions/{ended}").status_code == 200
            assert not session_processes(ended)

            running, _ = await start_with_leftovers(client)
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert not session_processes(running)
    record = json.loads((loki_dir / ".loki/sessions" / running / "session.json").read_text())
    assert record["status"] == "stopped"


@pytest.mark.parametrize("mode", MODES)
async def test_a_killed_launcher_leaves_nothing_running(
    loki_dir: Path, tmp_path: Path, mode: str
) -> None:
    args = ("--cli", fake_cli(tmp_path), "--stop-grace", "0.5", "--containment", mode)
    with ServerProcess(loki_dir, *args) as server, httpx.Client(base_url=server.url) as client:
        session_id, launcher = await start_with_leftovers(client)
        cgroup = supervisor_doc(loki_dir, session_id).get("cgroup")
        # No subreaper any more: the cgroup holds them, or else their LOKI_SESSION_ID.
        os.kill(launcher, signal.SIGKILL)
        await wait_for(lambda: status_of(client, session_id) == "failed")
        await assert_all_gone(session_id)
        if mode == "auto":
            await wait_for(lambda: not Path(str(cgroup)).exists())


def test_a_recorded_cgroup_is_only_taken_back_if_it_could_be_ours(tmp_path: Path) -> None:
    # supervisor.json lies where the session can write: a planted path must not
    # make the server kill some other cgroup (or the whole machine's).
    mount = next((m for m, _ in cgroups.cgroup2_mounts()), None)
    if mount is None:
        pytest.skip("no cgroup2 mount")
    ours = f"{mount}/loki-s1"
    assert cgroups.recorded(ours, "s1") == Path(ours)
    assert cgroups.recorded(f"{mount}/system.slice/loki-s1", "s1") is not None
    for planted in (
        str(mount),
        f"{mount}/system.slice",
        f"{mount}/loki-s2",
        f"{mount}/loki-s1/../system.slice/loki-s1",
        f"{tmp_path}/loki-s1",
        "loki-s1",
        None,
        7,
    ):
        assert cgroups.recorded(planted, "s1") is None, planted


@pytest.mark.skipif(not CAN_CGROUP, reason="cannot create cgroup v2 here")
def test_only_stale_empty_session_cgroups_are_swept(tmp_path: Path) -> None:
    base = cgroups.session_base()[0]
    assert base is not None
    tag = f"sweep-{os.getpid()}"
    stale, fresh, busy = (cgroups.create(base, f"{tag}-{n}") for n in ("stale", "fresh", "busy"))
    sleeper = subprocess.Popen(["sleep", "600"], preexec_fn=partial(cgroups.join, busy))
    try:
        for path in (stale, busy):
            os.utime(path, (0, 0))  # made long ago
        cgroups.remove_stale(base)
        assert not stale.exists() and fresh.exists() and busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (fresh, busy):
            cgroups.remove(path)
