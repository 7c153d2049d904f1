"""`create_app(settings)`: the Starlette application with its runtime, routes and middleware."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from .access import AccessMiddleware
from .errors import exception_handlers
from .routes import build_routes
from .routes.events import EventStreamApp
from .runtime import Runtime
from .security import EVENTS_PATH, RateLimitMiddleware, RateWindows, SecurityMiddleware
from .settings import Settings
from .sse import RAW_SEND
from .tally import HttpTally

# Default CORS: pages served from a loopback origin, on any port.
LOOPBACK_ORIGIN_REGEX = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"


def cors_middleware(settings: Settings) -> Middleware:
    origins = [o for o in settings.cors_origins if o != "*"]
    # Credentials are allowed, so a bare "*" is never honoured: list origins instead.
    regex = (
        "|".join(re.escape(o).replace(r"\*", r"[^/]*") for o in origins)
        if origins
        else LOOPBACK_ORIGIN_REGEX
    )
    return Middleware(
        CORSMiddleware,
        allow_origin_regex=regex,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
        expose_headers=[
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "Retry-After",
        ],
        allow_credentials=True,
        max_age=600,
    )


class LokiApp(Starlette):
    """Starlette, with `GET /api/events` short-circuited to its middleware-free app.

    Every HTTP request, the stream's too, first passes the access log and HTTP
    counts (`access.py`).
    """

    def __init__(self, *args: Any, stream_app: ASGIApp, tally: HttpTally, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_app = stream_app
        self.observed = AccessMiddleware(self.dispatch, tally)
        self.stream_route: BaseRoute | None = next(
            (r for r in self.routes if getattr(r, "path", None) == EVENTS_PATH), None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.observed(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == EVENTS_PATH and scope["method"] in ("GET", "HEAD"):
            scope["app"] = self
            scope["route"] = self.stream_route  # what the router would have matched
            scope[RAW_SEND] = send  # the stream reaches its connection through it
            await self.stream_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def stream_stack(settings: Settings, windows: RateWindows) -> ASGIApp:
    """The event stream's own short stack: Host guard and auth, rate limit, then the stream."""
    cors = None
    if settings.cors:
        spec = cors_middleware(settings)
        cors = CORSMiddleware(app=_no_app, **cast(dict[str, Any], spec.kwargs))
    stream = EventStreamApp(cors)
    app: ASGIApp = stream
    # Refusals (401, 403, 429) carry CORS headers too, so a browser can read them.
    if settings.rate_limit > 0:
        app = RateLimitMiddleware(
            app, per_minute=settings.rate_limit, windows=windows, error_headers=stream.cors_headers
        )
    return SecurityMiddleware(app, settings=settings, error_headers=stream.cors_headers)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise RuntimeError("CORSMiddleware is used here only for its origin rules")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Starlette:
    """Build the app. The runtime starts and stops with the app's lifespan."""
    settings = settings or Settings()
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runtime.run():
            yield

    windows = RateWindows()
    middleware: list[Middleware] = []
    if settings.cors:
        middleware.append(cors_middleware(settings))
    middleware.append(Middleware(SecurityMiddleware, settings=settings))
    if settings.rate_limit > 0:
        middleware.append(
            Middleware(RateLimitMiddleware, per_minute=settings.rate_limit, windows=windows)
        )
    if runtime.forwarder is not None:
        from .cluster.forward import ClusterRouting

        # Innermost: only authenticated requests are sent on to another node.
        middleware.append(Middleware(ClusterRouting, runtime=runtime))

    app = LokiApp(
        stream_app=stream_stack(settings, windows),
        tally=runtime.http,
        routes=build_routes(console_on=settings.console),
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=exception_handlers(debug=settings.log_level == "debug"),
    )
    app.state.runtime = runtime
    if runtime.forwarder is not None:
        runtime.forwarder.app = app
    return app
