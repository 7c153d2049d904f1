"""`create_app(settings)`: the Starlette application with its runtime, routes and middleware."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from .errors import ApiError, _api_error, _http_error, make_unexpected_handler
from .routes import build_routes
from .runtime import Runtime
from .security import RateLimitMiddleware, SecurityMiddleware
from .settings import Settings

# Default CORS: pages served from a loopback origin, on any port.
LOOPBACK_ORIGIN_REGEX = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"


def cors_middleware(settings: Settings) -> Middleware:
    common = {
        "allow_methods": ["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        "allow_headers": ["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
        "expose_headers": ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                           "Retry-After"],
        "allow_credentials": True,
        "max_age": 600,
    }
    origins = [o for o in settings.cors_origins if o != "*"]
    if origins:
        # Credentials are allowed, so a bare "*" is never honoured: list origins instead.
        regex = "|".join(re.escape(o).replace(r"\*", r"[^/]*") for o in origins)
        return Middleware(CORSMiddleware, allow_origin_regex=regex, **common)
    return Middleware(CORSMiddleware, allow_origin_regex=LOOPBACK_ORIGIN_REGEX, **common)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Starlette:
    """Build the app. The runtime starts and stops with the app's lifespan."""
    settings = settings or Settings()
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runtime.run():
            yield

    middleware: list[Middleware] = []
    if settings.cors:
        middleware.append(cors_middleware(settings))
    middleware.append(Middleware(SecurityMiddleware, settings=settings))
    if settings.rate_limit > 0:
        middleware.append(Middleware(RateLimitMiddleware, per_minute=settings.rate_limit))

    app = Starlette(
        routes=build_routes(),
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: make_unexpected_handler(settings.log_level == "debug"),
        },
    )
    app.state.runtime = runtime
    return app
