"""`GET /`: the live console (SPEC §12), a static page shipped in `loki_api/console/`.

The files are read once, on the first request, and served from memory:

- `/` is the page, `index.html` with its asset URLs filled in. `no-cache` and a
  strong ETag: a browser revalidates it on every load and gets a bodiless 304
  when nothing changed, so an upgraded server is picked up at once.
- `/console/<build>/<file>` are the style sheet, the ES modules and the icon.
  `<build>` is a hash of every file's content, so a URL never changes meaning
  and browsers may keep it for a year (`immutable`); a new release has a new
  build and the page points at it. Modules import each other relatively
  (`./api.js`), so they stay under the same build. An old build's URL is 404.

Every answer carries a strict Content-Security-Policy: scripts, styles and
connections only from this origin, no inline code, no `eval`, no framing, and
Trusted Types required, so even a stray `innerHTML = string` in the console's
own code throws instead of parsing data as HTML. The console renders every API
value with `textContent`.

The page and its assets hold no data, so they need no token (`security.is_public`);
the page asks for one when the API answers 401. Only `/` is in the OpenAPI
document: the asset URLs are an implementation detail of the page.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import HttpError, NotFound
from ..security import CONSOLE_ASSETS_PREFIX

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Where index.html names its assets; replaced by `console/<build>`.
ASSETS_MARK = "%ASSETS%"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@dataclass(frozen=True)
class ConsoleFiles:
    build: str
    page: Asset
    assets: dict[str, Asset]


def make_asset(body: bytes, media_type: str) -> Asset:
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def read_files(folder: Traversable) -> ConsoleFiles:
    """Every servable file of `folder` (by suffix), and the page pointing at them."""
    files = {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and "." + entry.name.rsplit(".", 1)[-1] in MEDIA_TYPES
    }
    if "index.html" not in files:
        raise HttpError(f"console files not found in {folder}", status=500, code="INTERNAL_ERROR")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    build = digest.hexdigest()[:16]
    template = files.pop("index.html").decode("utf-8")
    page = template.replace(ASSETS_MARK, f"{CONSOLE_ASSETS_PREFIX.strip('/')}/{build}")
    assets = {
        name: make_asset(body, MEDIA_TYPES["." + name.rsplit(".", 1)[-1]])
        for name, body in files.items()
    }
    return ConsoleFiles(build, make_asset(page.encode("utf-8"), MEDIA_TYPES[".html"]), assets)


@functools.cache
def console_files() -> ConsoleFiles:
    """The packaged console (`loki_api/console/`), read once."""
    return read_files(resources.files("loki_api").joinpath("console"))


def answer(request: Request, asset: Asset, cache_control: str) -> Response:
    """The asset, or a bodiless 304 when the browser already holds this version."""
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag}
    offered = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip().removeprefix("W/") for tag in offered.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


async def page(request: Request) -> Response:
    return answer(request, console_files().page, PAGE_CACHE)


async def asset(request: Request) -> Response:
    files = console_files()
    found = files.assets.get(request.path_params["name"])
    if found is None or request.path_params["build"] != files.build:
        raise NotFound(f"No console file {request.url.path}")
    return answer(request, found, ASSET_CACHE)


routes: list[BaseRoute] = [
    Route("/", page, methods=["GET"]),
    Route(
        CONSOLE_ASSETS_PREFIX + "{build}/{name}", asset, methods=["GET"], include_in_schema=False
    ),
]
