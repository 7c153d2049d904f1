"""Fuzz the live server from its OpenAPI document (scripts/fuzz_api.py, schemathesis).

All four phases (examples, coverage, fuzzing, stateful) with `--checks all`: fails
on any 5xx, an undocumented status code or content type, a body that breaks its
schema, an invalid request accepted or a valid one refused. Few cases per
operation and a fixed seed, so CI stays around 25 s and a failure reproduces;
`LOKI_FUZZ_EXAMPLES=N` asks for more (N cases per operation, 4N stateful scenarios;
default 5), `scripts/fuzz_long` is the long run. Stream cases stop reading after
half a second of silence: a valid stream with nothing to send says all it has by then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_fuzz_finds_nothing_and_the_stateful_phase_reaches_real_sessions(
    tmp_path: Path,
) -> None:
    summary = tmp_path / "reached.json"
    examples = int(os.environ.get("LOKI_FUZZ_EXAMPLES") or 5)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "fuzz_api.py"),
            "--max-examples",
            str(examples),
            "--stateful-examples",
            str(max(20, 4 * examples)),
            "--stream-examples",
            "3",
            "--stream-timeout",
            "0.5",
            "--seed",
            "20261123",
            "--summary",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, output
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in result.stdout, (phase, output)
    # The links took the stateful phase past validation to real sessions: each control
    # route answered for a session that exists (200, or 409 when the session had
    # moved on by then; random ids only ever meet 404), and a task was read.
    reached = json.loads(summary.read_text())

    def real(operation: str) -> int:
        return reached.get(f"{operation} 200", 0) + reached.get(f"{operation} 409", 0)

    assert reached.get("startSession 201", 0) > 0, reached
    for operation in ("pauseSession", "injectInput", "stopSession"):
        assert real(operation) > 0, (operation, reached)
    assert reached.get("stopSession 200", 0) > 0, reached
    assert reached.get("getSessionTasks 200", 0) > 0, reached
    assert reached.get("getSessionTask 200", 0) > 0, reached
    # Resume is one link further (start -> pause -> resume): reached in most runs, but
    # whether the session is still running by then depends on the machine's load, so
    # here only the way there is pinned: the pause answer links to it.
    spec = yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text())
    pause = spec["paths"]["/api/sessions/{sessionId}/pause"]["post"]["responses"]["200"]
    assert pause["links"]["ResumeSession"]["operationId"] == "resumeSession"
