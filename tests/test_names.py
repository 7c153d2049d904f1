"""One name per concept: no server class shares its name with a type of the SDK.

(`errors.ApiError` beside the wire type `ApiError`, or `sse.EventStream` beside
the SDK's `EventStream`, made every import a guess.) The one exception is by
design: an error answer has one name on both sides (the server raises
`errors.NotFound`, the SDK raises `loki_client.NotFound` for it).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import loki_api
import loki_client
from loki_api import errors
from loki_client import models

SERVER = Path(loki_api.__file__).parent


def _sdk_types() -> set[str]:
    names = set(loki_client.__all__) | set(models.__all__)
    return {
        name
        for name in names
        if inspect.isclass(getattr(loki_client, name, None) or getattr(models, name, None))
    }


def _same_error_answer(path: Path, name: str) -> bool:
    server = getattr(errors, name, None) if path == SERVER / "errors.py" else None
    sdk = getattr(loki_client, name)
    return (
        inspect.isclass(server)
        and issubclass(server, errors.HttpError)
        and issubclass(sdk, loki_client.LokiApiError)
    )


def test_no_server_class_is_named_like_an_sdk_type() -> None:
    sdk = _sdk_types()
    clashes = []
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name in sdk:
                if _same_error_answer(path, node.name):
                    continue
                clashes.append(f"{path.relative_to(SERVER)}: class {node.name}")
    assert not clashes, clashes
