from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ServerProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def loki_dir(tmp_path: Path) -> Path:
    """A fresh project directory (the server's --loki-dir)."""
    directory = tmp_path / "project"
    directory.mkdir()
    return directory


@pytest.fixture
def server(loki_dir: Path) -> Iterator[ServerProcess]:
    """A real `loki serve --simulate` on a free port, stopped after the test."""
    with ServerProcess(loki_dir, "--simulate") as proc:
        yield proc
