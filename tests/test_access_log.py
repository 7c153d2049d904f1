"""`--log-format`, the access log and request ids (SPEC §13), against a real server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from loki_api.access import SANE_REQUEST_ID, request_id_of
from loki_api.cli import build_parser, settings_from
from loki_api.logformat import JsonFormatter, request_id_var
from loki_api.settings import SettingsError

from .support import ServerProcess, sse_stream, wait_for

HEX_ID = r"[0-9a-f]{32}"


def settings(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return settings_from(build_parser().parse_args(argv), env or {})


def test_log_format_and_metrics_flags() -> None:
    assert settings([]).log_format == "text" and not settings([]).metrics_public
    assert settings(["--log-format", "json"]).log_format == "json"
    assert settings([], {"LOKI_LOG_FORMAT": "JSON"}).log_format == "json"
    assert settings(["--log-format", "text"], {"LOKI_LOG_FORMAT": "json"}).log_format == "text"
    assert settings(["--metrics-public"]).metrics_public
    with pytest.raises(SettingsError, match="LOKI_LOG_FORMAT"):
        settings([], {"LOKI_LOG_FORMAT": "xml"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-format", "xml"])


def test_request_ids_are_taken_only_when_sane() -> None:
    def scope(value: bytes) -> dict:
        return {"headers": [(b"x-request-id", value)]}

    assert request_id_of(scope(b"abc-123.4_5:6")) == b"abc-123.4_5:6"
    for bad in (b"", b"has space", b"new\nline", b"x" * 129, b"-leading", "é".encode()):
        generated = request_id_of(scope(bad))
        assert generated != bad and SANE_REQUEST_ID.fullmatch(generated)
    assert len(request_id_of({"headers": []})) == 32


def test_json_formatter_lines_parse_and_carry_the_request_id() -> None:
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, 'say "%s"\n', ("hi",), None)
    token = request_id_var.set("rid-7")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == 'say "hi"\n' and parsed["level"] == "warning"
    assert parsed["logger"] == "x.y" and parsed["requestId"] == "rid-7"
    assert parsed["time"].endswith("Z")


@pytest.mark.anyio
async def test_json_logs_one_access_line_per_request(loki_dir: Path) -> None:
    server = ServerProcess(loki_dir, "--simulate", "--log-format", "json")
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        sane = client.get("/api/sessions/nope", headers={"X-Request-ID": "probe-42"})
        assert sane.status_code == 404 and sane.headers["x-request-id"] == "probe-42"
        insane = client.get("/api/status", headers={"X-Request-ID": "no spaces please"})
        generated = insane.headers["x-request-id"]
        assert SANE_REQUEST_ID.fullmatch(generated.encode()) and len(generated) == 32
        async with sse_stream(server.url, headers={"X-Request-ID": "stream-1"}) as stream:
            assert stream.response.headers["x-request-id"] == "stream-1"
        await wait_for(lambda: '"stream-1"' in server.output())
        assert server.stop() == 0
        output = server.output()

    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines[0]["url"] == server.url  # the banner, as JSON
    access = {line["requestId"]: line for line in lines if line["logger"] == "loki_api.access"}
    probe = access["probe-42"]
    assert (probe["method"], probe["route"], probe["status"]) == (
        "GET",
        "/api/sessions/{session_id}",
        404,
    )
    assert probe["path"] == "/api/sessions/nope"
    assert probe["peer"].startswith("127.0.0.1:") and probe["durationMs"] >= 0
    assert access[generated]["route"] == "/api/status" and access[generated]["status"] == 200
    assert access["stream-1"]["route"] == "/api/events" and access["stream-1"]["status"] == 200
    # uvicorn's own lines come out in the same format; its access log is off.
    uvicorn_lines = [line for line in lines if line["logger"].startswith("uvicorn")]
    assert any("startup complete" in line["message"] for line in uvicorn_lines)
    assert not any(line["logger"] == "uvicorn.access" for line in lines)


def test_text_access_lines_replace_uvicorn_access_log(loki_dir: Path) -> None:
    with ServerProcess(loki_dir, "--simulate") as server:
        reply = httpx.get(f"{server.url}/api/sessions/x1", headers={"X-Request-ID": "txt-9"})
        assert reply.headers["x-request-id"] == "txt-9"
        server.stop()
        output = server.output()
    line = next(line for line in output.splitlines() if "rid=txt-9" in line)
    assert "loki_api.access" in line and '"GET /api/sessions/x1" 404' in line
    assert "route=/api/sessions/{session_id}" in line
    assert "HTTP/1.1" not in output  # uvicorn's own access lines are off
