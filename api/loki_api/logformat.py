"""The server's log lines, as text or as JSON (`--log-format`, SPEC §13).

`configure_logging` is called once by the entry point that owns the process
(`serve.run`): one handler on the root logger, so the server's own lines, the
access log (`access.py`) and uvicorn's lines (`uvicorn.error`, which uvicorn
is told not to configure) all come out in the same format. uvicorn's own
access log is off; ours replaces it.

A JSON line is one object: `time` (UTC, ISO 8601), `level`, `logger`,
`message`, the record's structured `fields` if it has any (an access line:
`method`, `path`, `route`, `status`, `durationMs`, `peer`, `requestId`), the
id of the request being handled if any, and `exception` with the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from .settings import LOG_FORMATS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# The id of the request being handled (set by `access.AccessMiddleware`), for its log lines.
request_id_var: ContextVar[str | None] = ContextVar("loki_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        request_id = request_id_var.get()
        if request_id is not None:
            line.setdefault("requestId", request_id)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def configure_logging(level: str, log_format: str) -> None:
    """Send every logger's records to stderr in `log_format` (process-wide: entry points only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
