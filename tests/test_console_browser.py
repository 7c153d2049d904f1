"""The live console in a real browser: Debian's chromium driven by Playwright.

One browser for the module, a fresh context (so a fresh sessionStorage) and a real
`loki serve` per scenario. Skipped, with the reason, when there is no browser; CI
installs Debian's chromium first (`scripts/ensure_browser.sh`, called by `scripts/test`).
Playwright's own browser download (`playwright install`) is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loki_api.encoding import encode
from loki_api.models import ClusterInfo, ClusterNode, NatsState

from .support import ServerProcess

CHROMIUM = os.environ.get("LOKI_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"browser tests need Debian's chromium at {CHROMIUM} "
        "(scripts/ensure_browser.sh installs it; scripts/test calls that)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright missing")

TOKEN = "console-test-token-0123456789abcdef"
PRD = "# Todo app\n\n## Backend\n- Build the API\n- Add storage\n\n## UI\n- List view\n"
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


class Console:
    """A page on the console, collecting what should never happen: script errors, CSP
    violations, dialogs (alert/confirm/prompt)."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        # A refused request is logged as "Failed to load resource"; the 401s of the
        # token flow are expected. Anything else (a CSP refusal included) is a bug.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def open(self, fragment: str = "", *, live: bool = True) -> Any:
        self.page.goto(f"{self.url}/{fragment}")
        if live:
            self.page.wait_for_selector("#connection.conn-live")
        return self.page

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def feed_ids(self) -> list[str]:
        ids: list[str] = self.js("() => window.lokiConsole.feed.ids()")
        return ids

    def wait_for(self, expression: str, arg: Any = None, timeout: float = TIMEOUT_MS) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=timeout)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors
        assert not self.dialogs, self.dialogs


@pytest.fixture
def console(browser: Any) -> Iterator[Callable[[str], Console]]:
    opened: list[Console] = []

    def open_console(url: str) -> Console:
        opened.append(Console(browser, url))
        return opened[-1]

    yield open_console
    for page in opened:
        page.close()


def rest(server: ServerProcess, method: str, path: str, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {})
    response = httpx.request(method, server.url + path, headers=headers, timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


def wait_rest(server: ServerProcess, path: str, check: Callable[[Any], bool], timeout=20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(server.url + path, timeout=10)
        if answer.status_code == 200 and check(answer.json()):
            return answer.json()
        assert time.monotonic() < deadline, f"{path}: {answer.status_code} {answer.text[:500]}"
        time.sleep(0.05)


def history_ids(server: ServerProcess) -> list[str]:
    return [e["id"] for e in rest(server, "GET", "/api/events/history?limit=1000")["events"]]


def write_session(loki_dir: Path, session_id: str, tasks: list[dict[str, Any]]) -> Path:
    """A session that exists only on disk, as another program would leave it."""
    directory = loki_dir / ".loki" / "sessions" / session_id
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "id": session_id,
        "status": "completed",
        "provider": "claude",
        "startedAt": "2026-11-23T05:00:00.000Z",
        "taskCount": len(tasks),
        "completedTasks": 0,
    }
    (directory / "session.json").write_text(json.dumps(record))
    (directory / "tasks.json").write_text(json.dumps({"tasks": tasks}))
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------- scenarios


def test_a_session_started_from_the_form_runs_to_completed(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    (loki_dir / "prd.md").write_text(PRD)
    with ServerProcess(loki_dir, "--simulate") as server:
        view = console(server.url)
        page = view.open()
        page.fill("#prd-path", "prd.md")
        page.select_option("#provider", "codex")
        page.check("#opt-verbose")
        page.click("#start-button")
        page.wait_for_selector("#sv-status.s-completed", timeout=30_000)
        (session,) = rest(server, "GET", "/api/sessions")["sessions"]
        assert session["status"] == "completed" and session["provider"] == "codex"
        assert page.text_content("#sv-id") == session["id"]
        # Tasks grouped by status: every PRD bullet ends up under Completed.
        view.wait_for(
            "() => document.querySelectorAll('[data-group=completed] .task').length === 3"
        )
        titles = page.locator("[data-group=completed] .task-title").all_text_contents()
        assert sorted(titles) == ["Add storage", "Build the API", "List view"]
        assert page.text_content("#sv-progress-text") == "3/3 tasks"
        # The sessions list follows, and agents and output came from the stream.
        page.wait_for_selector(
            f'#session-list li[data-id="{session["id"]}"][data-status=completed]'
        )
        assert page.locator("#agent-list li").count() >= 1
        assert page.locator("#output-list .vrow:not([hidden])").count() >= 1
        # The output's level filter and search.
        page.select_option("#output-level", "error")
        view.wait_for(
            "() => [...document.querySelectorAll('#output-list .vrow:not([hidden]) .c-type')]"
            ".every((cell) => cell.textContent === 'log:error')"
        )
        page.select_option("#output-level", "debug")
        page.fill("#output-search", "no-such-text-anywhere")
        view.wait_for(
            "() => document.querySelector('#output-count').textContent.startsWith('0 of')"
        )
        # The feed holds exactly what the server published, and filters by type.
        view.wait_for("n => window.lokiConsole.feed.ids().length === n", len(history_ids(server)))
        assert view.feed_ids() == history_ids(server)
        page.select_option("#feed-type", "session:*")
        view.wait_for(
            "() => [...document.querySelectorAll('#feed-list .vrow:not([hidden]) .c-type')]"
            ".map((cell) => cell.textContent).join() === 'session:started,session:completed'"
        )
        # The level filter hides log events below it and keeps the other types.
        page.select_option("#feed-type", "")
        page.select_option("#feed-level", "warn")
        view.wait_for(
            "() => { const types = [...document.querySelectorAll("
            "'#feed-list .vrow:not([hidden]) .c-type')].map((cell) => cell.textContent);"
            " return types.includes('session:completed')"
            " && !types.some((t) => t === 'log:info' || t === 'log:debug'); }"
        )
        quiet = "(e) => e.type === 'log:info' || e.type === 'log:debug'"
        assert view.js(f"() => window.lokiConsole.feed.all.some({quiet})")
        assert not view.js(f"() => window.lokiConsole.feed.shown.some({quiet})")


def test_pause_resume_input_stop_and_delete_through_the_buttons(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    with ServerProcess(loki_dir, "--simulate", env={"LOKI_SIM_DELAY": "0.5"}) as server:
        sid = rest(server, "POST", "/api/sessions", json={})["sessionId"]
        path = f"/api/sessions/{sid}"
        view = console(server.url)
        page = view.open(f"#session={sid}")
        page.wait_for_selector("#sv-status.s-running")
        # One session at a time (--max-sessions 1): the form says why it cannot start another.
        page.click("#start-button")
        error = page.wait_for_selector("#start-error:not([hidden])")
        assert "already running" in (error.text_content() or "")

        page.click("#btn-pause")
        wait_rest(server, path, lambda d: d["session"]["status"] == "paused")
        page.wait_for_selector("#sv-status.s-paused")
        assert page.is_disabled("#btn-pause") and page.is_enabled("#btn-resume")

        page.click("#btn-resume")
        wait_rest(server, path, lambda d: d["session"]["status"] == "running")
        page.wait_for_selector("#sv-status.s-running")

        page.fill("#input-text", "Use PostgreSQL instead")
        page.click("#btn-input")
        wait_rest(
            server,
            f"/api/events/history?sessionId={sid}&types=log:info&limit=1000",
            lambda h: any("Use PostgreSQL" in e["data"]["message"] for e in h["events"]),
        )
        view.wait_for("() => document.querySelector('#input-text').value === ''")

        # Stop asks first; cancelling leaves the session running.
        page.click("#btn-stop")
        page.wait_for_selector("#confirm-dialog[open]")
        page.click("#confirm-dialog button[value=cancel]")
        assert rest(server, "GET", path)["session"]["status"] == "running"
        page.click("#btn-stop")
        page.click("#confirm-ok")
        wait_rest(server, path, lambda d: d["session"]["status"] == "stopped")
        page.wait_for_selector("#sv-status.s-stopped")

        page.click("#btn-delete")
        page.click("#confirm-ok")
        page.wait_for_selector("#session-placeholder:not([hidden])")
        assert httpx.get(server.url + path).status_code == 404
        assert page.locator("#session-list li").count() == 0


def test_a_task_titled_with_markup_shows_as_text(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    with ServerProcess(loki_dir) as server:
        view = console(server.url)
        page = view.open()
        # Written while the page watches: the title reaches it through the stream too.
        directory = write_session(loki_dir, "hostile", [{"id": "t1", "title": XSS}])
        (directory / "agent.log").write_text("[ERROR] <script>alert(2)</script>\n")
        page.wait_for_selector('#session-list li[data-id="hostile"]')
        page.click('#session-list li[data-id="hostile"] button')
        title = page.wait_for_selector('[data-task-id="t1"] .task-title')
        assert title.text_content() == XSS
        view.wait_for(
            "text => [...document.querySelectorAll('#feed-list .c-text')]"
            ".some((cell) => cell.textContent.includes(text))",
            XSS,
        )
        assert page.locator("#session-detail img, #feed-list img, #output-list img").count() == 0
        assert page.locator("script:not([src])").count() == 0
        view.wait_for(
            "() => [...document.querySelectorAll('#output-list .c-text')]"
            ".some((cell) => cell.textContent === '<script>alert(2)</script>')"
        )
        # Even the console's own code could not render markup: Trusted Types refuse it.
        refused = view.js(
            "() => { try { document.body.firstElementChild.innerHTML = '<b>x</b>'; return false; }"
            " catch (e) { return e instanceof TypeError; } }"
        )
        assert refused
        blocked = [e for e in view.errors if "TrustedHTML" in e]
        assert len(blocked) == 1  # the console reports the attempt it refused
        view.errors.remove(blocked[0])


def test_server_restart_mid_session_loses_and_repeats_no_row(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    port = str(free_port())
    env = {"LOKI_SIM_DELAY": "0.15"}
    first = ServerProcess(loki_dir, "--simulate", "--port", port, env=env).start()
    second = ServerProcess(loki_dir, "--simulate", "--port", port, env=env)
    try:
        sid = rest(first, "POST", "/api/sessions", json={})["sessionId"]
        view = console(first.url)
        view.open()
        view.wait_for("() => window.lokiConsole.feed.ids().length >= 8")
        # The first reconnection is refused (a proxy answering 503 during the restart,
        # say): the browser gives up on that EventSource, and the page opens a new one
        # that resumes with ?lastEventId= instead of the browser's own header.
        refused: list[str] = []

        def refuse_once(route: Any) -> None:
            if route.request.method == "GET" and not refused:
                refused.append(route.request.url)
                route.fulfill(status=503, json={"error": "restarting", "code": "X"})
            else:
                route.continue_()

        view.page.route("**/api/events?*", refuse_once)
        assert first.stop(signal.SIGTERM) == 0  # the session keeps running
        view.page.wait_for_selector("#connection.conn-reconnecting")
        second.start()
        view.page.wait_for_selector("#connection.conn-live")
        assert refused and "lastEventId=evt_" in view.js(
            "() => window.lokiConsole.stream.source.url"
        )
        wait_rest(second, f"/api/sessions/{sid}", lambda d: d["session"]["status"] == "completed")
        expected = history_ids(second)
        view.wait_for("n => window.lokiConsole.feed.ids().length >= n", len(expected))
        shown = view.feed_ids()
        assert len(shown) == len(set(shown)), "an event was shown twice"
        assert shown == expected
    finally:
        for server in (first, second):
            if server.proc is not None and server.proc.poll() is None:
                server.stop()


def test_token_prompt_when_the_api_answers_401(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    with ServerProcess(loki_dir, "--simulate", "--token", TOKEN, "--no-loopback-trust") as server:
        assert httpx.get(server.url + "/api/status").status_code == 401
        view = console(server.url)
        page = view.open(live=False)
        page.wait_for_selector("#token-dialog[open]")
        page.fill("#token-input", "wrong-token-wrong-token")
        page.click("#token-submit")
        page.wait_for_selector("#token-dialog[open]")
        view.wait_for(
            "() => document.querySelector('#token-reason').textContent.includes('invalid')"
        )
        page.fill("#token-input", TOKEN)
        page.click("#token-submit")
        page.wait_for_selector("#connection.conn-live")  # the stream took ?token=
        assert view.js("() => sessionStorage.getItem('loki.token')") == TOKEN
        page.wait_for_selector("#version:has-text('v')")  # REST took the header
        page.click("#start-button")
        page.wait_for_selector("#session-detail:not([hidden])")
        view.wait_for("() => window.lokiConsole.feed.ids().length > 0")
        # A reload in the same tab keeps the token.
        page.reload()
        page.wait_for_selector("#connection.conn-live")
        assert not page.is_visible("#token-dialog")


def test_gap_event_and_cluster_nodes_are_shown(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    """What the page makes of a `gap` event and of a cluster's `/api/status`, answered by
    the test through the browser's request routing (the server side has its own tests)."""
    with ServerProcess(loki_dir) as server:
        view = console(server.url)
        # The real wire types, so the page is tested against what a cluster answers.
        nats = NatsState(
            connected=True, servers=["nats://127.0.0.1:4222"], buffered=0, lost=0, stream_seq=9
        )
        nodes = [
            ClusterNode(node="node-a", max_sessions=2, running=1, free=1, alive=True),
            ClusterNode(node="node-b", max_sessions=2, running=0, free=0, alive=False),
        ]
        cluster = ClusterInfo(name="loki", node="node-a", nats=nats, nodes=nodes)
        status = rest(server, "GET", "/api/status")
        status["cluster"] = json.loads(encode(cluster))
        envelope = {
            "id": "evt_9_1795000000000",
            "type": "log:warn",
            "timestamp": "2026-11-23T05:00:00.000Z",
            "sessionId": None,
            "data": {"level": "warn", "message": "after the gap"},
        }
        gap = {"lastEventId": "evt_2_1", "resumedFrom": "evt_9_1795000000000", "missed": 6}
        frame = f"id: {envelope['id']}\nevent: log:warn\ndata: {json.dumps(envelope)}\n\n"
        # The same event twice (as a buggy proxy might replay it): shown once.
        body = f"retry: 600000\n\nevent: gap\ndata: {json.dumps(gap)}\n\n{frame}{frame}"
        view.page.route(
            "**/api/status*",
            lambda route: route.fulfill(json=status),
        )
        view.page.route(
            "**/api/events?*",
            lambda route: route.fulfill(
                status=200, body=body, headers={"Content-Type": "text/event-stream"}
            ),
        )
        page = view.open(live=False)
        row = page.wait_for_selector("#feed-list .vrow.gap-row")
        assert "missed 6 event(s)" in (row.text_content() or "")
        assert "evt_9_1795000000000" in (row.text_content() or "")
        view.wait_for("() => window.lokiConsole.feed.ids().includes('evt_9_1795000000000')")
        page.wait_for_function("() => window.lokiConsole.stream.duplicates === 1")
        assert view.feed_ids() == ["evt_9_1795000000000"]
        page.wait_for_selector("#nodes-panel:not([hidden])")
        rows = page.locator("#node-list li").all_text_contents()
        assert rows[0].startswith("node-a (this node)") and "1 running of 2 · 1 free" in rows[0]
        assert rows[1].startswith("node-b") and "lost" in rows[1]
        assert "NATS connected" in (page.text_content("#cluster-name") or "")
        # A cluster that lists no nodes shows the node answering, with its NATS link.
        status["cluster"]["nodes"] = []
        status["cluster"]["nats"].update(connected=False, buffered=12)
        page.reload()
        page.wait_for_selector("#node-list li:has-text('NATS down')")
        assert page.locator("#node-list li").all_text_contents()[0].startswith("node-a (this node)")
        assert "NATS disconnected, 12 buffered" in (page.text_content("#cluster-name") or "")
        # Without a cluster in /api/status the panel stays hidden.
        view.page.unroute("**/api/status*")
        page.reload()
        page.wait_for_selector("#version:has-text('v')")
        assert page.is_hidden("#nodes-panel")


def test_a_gap_said_by_the_server_is_shown_as_a_row(
    console: Callable[[str], Console], loki_dir: Path
) -> None:
    """A resume from an id the server's history no longer holds: it sends `gap` first."""
    with ServerProcess(loki_dir, "--history", "5") as server:
        write_session(loki_dir, "busy", [{"id": f"t{n}", "title": f"Task {n}"} for n in range(12)])
        wait_rest(
            server,
            "/api/events/history",
            lambda h: any(e["data"].get("taskId") == "t11" for e in h["events"]),
        )
        view = console(server.url)
        # As if this tab had seen evt_1 before the history moved on: the header a browser
        # sends when it resumes.
        view.page.route(
            "**/api/events?*",
            lambda route: route.continue_(
                headers={**route.request.headers, "last-event-id": "evt_1_0"}
            ),
        )
        page = view.open()
        row = page.wait_for_selector("#feed-list .vrow.gap-row")
        held = history_ids(server)
        assert len(held) == 5
        text = row.text_content() or ""
        missed = int(held[0].split("_")[1]) - 2  # evt_2 .. the one before the oldest held
        assert f"missed {missed} event(s)" in text and held[0] in text
        view.wait_for("n => window.lokiConsole.feed.ids().length >= n", len(held))
        assert view.feed_ids() == held


def test_fifty_thousand_events_keep_the_page_responsive(
    console: Callable[[str], Console], loki_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = 50_000
    with ServerProcess(loki_dir, "--history", "60000") as server:
        view = console(server.url)
        page = view.open()
        directory = write_session(loki_dir, "flood", [])
        page.wait_for_selector('#session-list li[data-id="flood"]')
        # Input-to-next-frame of every click, measured in the page.
        view.js(
            """() => {
              window.clickLatencies = [];
              document.addEventListener('click', (event) => {
                const start = event.timeStamp;
                requestAnimationFrame(() => setTimeout(
                  () => window.clickLatencies.push(performance.now() - start), 0));
              }, { capture: true });
            }"""
        )
        lines = "".join(f"[INFO] [flood] line {n} of the flood\n" for n in range(count))
        (directory / "flood.log").write_text(lines)
        view.wait_for("() => window.lokiConsole.feed.all.length >= 5000")
        page.click('#session-list li[data-id="flood"] button')  # while events pour in
        page.wait_for_selector("#session-detail:not([hidden])")
        view.wait_for("n => window.lokiConsole.feed.all.length >= n", count, timeout=60_000)
        page.click("#feed-follow")  # with 50,000 rows held
        view.wait_for("() => window.clickLatencies.length >= 2")
        during, after = view.js("() => window.clickLatencies")
        assert view.feed_ids()[-1] == history_ids(server)[-1]
        # Virtualised: the DOM holds a screenful of rows, not 50,000.
        assert page.locator("#feed-list .vrow").count() < 200
        with capsys.disabled():
            print(
                f"\n[console] click answered in {during:.0f} ms while 50,000 events arrived, "
                f"{after:.0f} ms with them all in the feed"
            )
