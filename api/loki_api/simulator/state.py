"""The simulator's state files, each written atomically (temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as file:
            json.dump(doc, file, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class SessionFiles:
    """`session.json` is read–merged–written: when the server created it, the
    simulator only touches `currentPhase`, `taskCount` and `completedTasks`;
    when it runs on its own it owns the whole record (status and pid too)."""

    def __init__(
        self, directory: Path, session_id: str, provider: str, prd_path: str | None
    ) -> None:
        self.dir = directory
        self.session_path = directory / "session.json"
        directory.mkdir(parents=True, exist_ok=True)
        self.standalone = read_json(self.session_path) is None
        if self.standalone:
            write_json(
                self.session_path,
                {
                    "id": session_id,
                    "prdPath": prd_path,
                    "provider": provider,
                    "status": "running",
                    "startedAt": now_iso(),
                    "updatedAt": now_iso(),
                    "pid": os.getpid(),
                    "currentPhase": None,
                    "taskCount": 0,
                    "completedTasks": 0,
                    "exitCode": None,
                },
            )

    def update_session(self, **fields: Any) -> None:
        if not self.standalone:
            fields = {
                k: v
                for k, v in fields.items()
                if k in ("currentPhase", "taskCount", "completedTasks")
            }
        doc = read_json(self.session_path) or {}
        doc.update(fields)
        doc["updatedAt"] = now_iso()
        write_json(self.session_path, doc)

    def write(self, name: str, doc: Any) -> None:
        write_json(self.dir / name, doc)
