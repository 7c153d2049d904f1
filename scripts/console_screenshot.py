"""Take docs/console.png: the live console following a simulated session.

    .venv/bin/python scripts/console_screenshot.py [--out docs/console.png]

Starts its own `loki serve --simulate` on a free loopback port with a throw-away
project directory holding examples/prd.md, starts a session from the page's form, waits
until the session is halfway through its tasks, and screenshots the page in Debian's
chromium (the browser the tests use). Stops the server when done.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.support import ServerProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(ROOT / "examples" / "prd.md", project / "prd.md")
        server = ServerProcess(project, "--simulate", env={"LOKI_SIM_DELAY": "0.35"})
        with server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(server.url + "/")
            page.wait_for_selector("#connection.conn-live")
            page.fill("#prd-path", "prd.md")
            page.click("#start-button")
            page.wait_for_function(
                "() => document.querySelectorAll('[data-group=completed] .task').length >= 3"
                " && document.querySelectorAll('[data-group=running] .task').length >= 1",
                timeout=60_000,
            )
            page.wait_for_timeout(400)  # let the counters and the feed settle
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
