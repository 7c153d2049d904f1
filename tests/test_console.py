"""The live console at `/` (SPEC §12), without a browser: how the page and its assets are
served (caching, CSP, build URLs), who may load them, `--no-console`, the loopback-trust
switch, and static checks of the shipped files. The browser tests are in
`test_console_browser.py`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from loki_api.cli import build_parser, settings_from
from loki_api.routes import console
from loki_api.runtime import Runtime
from loki_api.serve import banner, banner_fields
from loki_api.settings import Settings, SettingsError

from .test_security import make_client

CONSOLE_DIR = Path(console.__file__).resolve().parents[1] / "console"
TOKEN = "k" * 32
ASSET_URL = re.compile(r'(?:src|href)="(console/[0-9a-f]{16}/[\w.]+)"')


def client(tmp_path: Path, peer: str = "127.0.0.1", **options: object) -> httpx.AsyncClient:
    return make_client(tmp_path, peer, **options)


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client(tmp_path) as c:
        yield c


def assert_strict_csp(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in csp  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["require-trusted-types-for"] == "'script'"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.anyio
async def test_page_is_served_with_csp_and_revalidation(local: httpx.AsyncClient) -> None:
    page = await local.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert_strict_csp(page)
    assert "%ASSETS%" not in page.text
    # A browser that holds this version gets a bodiless 304, with the same policy.
    again = await local.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == page.headers["etag"]
    assert_strict_csp(again)
    other = await local.get("/", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == page.content


@pytest.mark.anyio
async def test_assets_are_immutable_under_a_content_hash(local: httpx.AsyncClient) -> None:
    page = (await local.get("/")).text
    urls = ASSET_URL.findall(page)
    names = {url.rsplit("/", 1)[1] for url in urls}
    assert {"app.js", "console.css", "favicon.svg"} <= names
    build = urls[0].split("/")[1]
    assert build == console.console_files().build
    for url in urls:
        asset = await local.get("/" + url)
        assert asset.status_code == 200, url
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert_strict_csp(asset)
    script = await local.get(f"/console/{build}/app.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert (
        (await local.get(f"/console/{build}/console.css"))
        .headers["content-type"]
        .startswith("text/css")
    )
    # Every module the scripts import (relatively, so under the same build) is served.
    for module in CONSOLE_DIR.glob("*.js"):
        for imported in re.findall(r"from '\./([\w.]+)'", module.read_text()):
            assert (await local.get(f"/console/{build}/{imported}")).status_code == 200, imported


@pytest.mark.anyio
async def test_unknown_assets_and_old_builds_are_404(local: httpx.AsyncClient) -> None:
    build = console.console_files().build
    for path in (
        f"/console/{build}/nope.js",
        "/console/0123456789abcdef/app.js",
        f"/console/{build}/index.html",  # the page is only served at /
        "/console/app.js",
    ):
        response = await local.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "NOT_FOUND"
    assert (await local.post("/")).status_code == 405


def test_build_id_changes_with_any_file(tmp_path: Path) -> None:
    for name in ("index.html", "app.js"):
        (tmp_path / name).write_text(
            '<script type="module" src="%ASSETS%/app.js"></script>' if name == "index.html" else ""
        )
    (tmp_path / "notes.txt").write_text("not served")
    first = console.read_files(tmp_path)  # type: ignore[arg-type]
    assert set(first.assets) == {"app.js"}
    assert f'src="console/{first.build}/app.js"' in first.page.body.decode()
    (tmp_path / "app.js").write_text("export {};")
    second = console.read_files(tmp_path)  # type: ignore[arg-type]
    assert second.build != first.build and second.page.etag != first.page.etag


@pytest.mark.anyio
async def test_no_console_means_no_page(tmp_path: Path) -> None:
    async with client(tmp_path, console=False) as off:
        response = await off.get("/")
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
        build = console.console_files().build
        assert (await off.get(f"/console/{build}/app.js")).status_code == 404
        assert (await off.get("/api/status")).status_code == 200


@pytest.mark.anyio
async def test_remote_browser_loads_the_page_without_the_token(tmp_path: Path) -> None:
    """The page holds no data; a remote browser must load it to be asked for the token."""
    async with client(tmp_path, peer="203.0.113.9", host="0.0.0.0", token=TOKEN) as remote:
        page = await remote.get("/")
        assert page.status_code == 200
        for url in ASSET_URL.findall(page.text):
            assert (await remote.get("/" + url)).status_code == 200
        assert (await remote.get("/api/status")).status_code == 401
        authorised = await remote.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorised.status_code == 200


@pytest.mark.anyio
async def test_console_requests_do_not_use_up_the_rate_limit(tmp_path: Path) -> None:
    async with client(tmp_path, rate_limit=2) as limited:
        for _ in range(5):
            assert (await limited.get("/")).status_code == 200
        assert (await limited.get("/api/status")).status_code == 200
        assert (await limited.get("/api/status")).status_code == 200
        assert (await limited.get("/api/status")).status_code == 429


@pytest.mark.anyio
async def test_loopback_trust_off_asks_loopback_clients_for_the_token(tmp_path: Path) -> None:
    async with client(tmp_path, token=TOKEN, trust_loopback=False) as proxied:
        denied = await proxied.get("/api/sessions")
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        ok = await proxied.get("/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert (await proxied.get("/")).status_code == 200
        assert (await proxied.get("/health/live")).status_code == 200
    async with client(tmp_path, token=TOKEN) as trusted:
        assert (await trusted.get("/api/sessions")).status_code == 200


def test_flags() -> None:
    def parse(*argv: str, env: dict[str, str] | None = None) -> Settings:
        return settings_from(build_parser().parse_args(list(argv)), env or {})

    assert parse().console and parse().trust_loopback
    assert not parse("--no-console").console
    assert not parse("--no-loopback-trust", "--token", TOKEN).trust_loopback
    assert not parse("--no-loopback-trust", env={"LOKI_API_TOKEN": TOKEN}).trust_loopback
    with pytest.raises(SettingsError, match="needs a token"):
        parse("--no-loopback-trust")


def test_banner_names_the_console_url(tmp_path: Path) -> None:
    on = Settings(loki_dir=tmp_path)
    assert "console    http://127.0.0.1:8420/" in banner(banner_fields(on, Runtime(on), 8420))
    off = Settings(loki_dir=tmp_path, console=False)
    assert "console    off (--no-console)" in banner(banner_fields(off, Runtime(off), 8420))


# --------------------------------------------------------- static checks of the files

# Ways to turn a string into markup or code. The console never uses them: API values go
# in with textContent (and the CSP's Trusted Types would make the HTML sinks throw).
FORBIDDEN_JS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\s*\(|new Function|"
    r"setTimeout\(\s*['\"`]|setInterval\(\s*['\"`]|createContextualFragment|srcdoc"
)


def test_scripts_never_parse_strings_as_html_or_code() -> None:
    scripts = sorted(CONSOLE_DIR.glob("*.js"))
    assert len(scripts) >= 5
    for script in scripts:
        text = re.sub(r"^\s*//.*$", "", script.read_text(), flags=re.M)  # comments may name them
        found = FORBIDDEN_JS.findall(text)
        assert not found, f"{script.name} uses {found}"


def test_page_has_no_inline_script_style_or_handlers() -> None:
    page = (CONSOLE_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "inline <script>"
    assert "<style" not in page and not re.search(r"\sstyle=", page)
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", page), "nothing from another origin"
