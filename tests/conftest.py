from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ServerProcess

# The longest modules, longest first (seconds on 2 cores, roughly): they start first, so
# that with `pytest -n 2 --dist loadfile --no-loadscope-reorder` (scripts/test) no worker
# is left running a 25 s module alone at the end. The others keep their order.
LONGEST_FIRST = (
    "test_fuzz",  # ~25
    "test_cluster",  # ~25
    "test_console_browser",  # ~22
    "test_sessions_api",  # ~20
    "test_stream",  # ~18
    "test_client",  # ~15
    "test_cluster_sessions",  # ~12
    "test_exactly_once",  # ~10
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))


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
