"""`serve.py` owns the process: process-wide effects happen there, not in the app."""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import anyio
import pytest
import uvicorn

from loki_api.app import create_app
from loki_api.runtime import Runtime
from loki_api.serve import LokiServer
from loki_api.settings import Settings

from .support import wait_for


@pytest.mark.anyio
async def test_embedding_the_app_does_not_freeze_the_gc(tmp_path: Path) -> None:
    gc.unfreeze()
    runtime = Runtime(Settings(loki_dir=tmp_path))
    async with runtime.run():
        assert gc.get_freeze_count() == 0


@pytest.mark.anyio
async def test_the_server_freezes_the_gc_once_started(tmp_path: Path) -> None:
    gc.unfreeze()
    settings = Settings(loki_dir=tmp_path)
    runtime = Runtime(settings)
    server = LokiServer(uvicorn.Config(create_app(settings, runtime), log_level="error"), runtime)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                await wait_for(lambda: server.started)
                assert gc.get_freeze_count() > 0
                server.should_exit = True
        finally:
            gc.unfreeze()
