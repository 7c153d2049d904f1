"""Fuzz the live server from its OpenAPI document (scripts/fuzz_api.py, schemathesis).

Fails on any 5xx, an undocumented status code or content type, or a response
body that breaks its schema. The seed is fixed so a failure reproduces; run the
script by hand (without --seed) to explore further.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fuzz_finds_nothing() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "fuzz_api.py"),
            "--max-examples",
            "25",
            "--seed",
            "20261123",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
