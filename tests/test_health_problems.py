"""The health-problems registry and how `/health` and `/health/ready` read it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from loki_api.health_problems import HealthProblems
from loki_api.runtime import Runtime
from loki_api.settings import Settings

from .support import asgi_client


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return Runtime(Settings(loki_dir=tmp_path, simulate=True))


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(runtime) as c:
        yield c


def test_report_and_clear() -> None:
    health = HealthProblems()
    assert not health and health.reasons() == {}
    health.report("stateFiles", "sessions/a/tasks.json: a symlink")
    health.report("storage", "No space left on device", blocks_ready=True)
    assert health.reasons() == {
        "stateFiles": "sessions/a/tasks.json: a symlink",
        "storage": "No space left on device",
    }
    assert health.not_ready() == {"storage": "No space left on device"}
    assert health.get("storage") == "No space left on device"
    health.clear("storage")
    health.clear("storage")  # clearing twice is fine
    assert health.not_ready() == {} and health.get("storage") is None
    assert list(health.reasons()) == ["stateFiles"]


def test_a_repeated_report_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    health = HealthProblems()
    for _ in range(3):
        health.report("storage", "full", blocks_ready=True)
    health.report("storage", "read-only", blocks_ready=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["health: storage degraded: full", "health: storage degraded: read-only"]


@pytest.mark.anyio
async def test_health_is_degraded_with_the_reason(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    assert (await client.get("/health")).json()["status"] == "healthy"
    runtime.health.report("stateFiles", "sessions/x/tasks.json: nested deeper than 64")
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["problems"] == {
        "stateFiles": "sessions/x/tasks.json: nested deeper than 64"
    }
    # Only a problem reported as blocking readiness fails /health/ready.
    assert (await client.get("/health/ready")).status_code == 200
    runtime.health.report("nats", "not connected", blocks_ready=True)
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["nats"] == {"ok": False, "detail": "not connected"}
    assert (await client.get("/health")).json()["status"] == "degraded"
    runtime.health.clear("nats")
    runtime.health.clear("stateFiles")
    assert (await client.get("/health/ready")).status_code == 200
    health = await client.get("/health")
    assert health.json()["status"] == "healthy" and health.json()["problems"] == {}
