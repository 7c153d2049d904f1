"""The OpenAPI document: agrees with the routes, is fresh, valid, served, and packaged."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema_rs
import pytest
import schemathesis
import yaml
from starlette.routing import Route

from loki_api import __version__
from loki_api.app import create_app
from loki_api.encoding import encode
from loki_api.models import EVENT_TYPES, Event
from loki_api.routes import openapi as openapi_route
from loki_api.settings import Settings

from .support import ServerProcess, sse_stream

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "openapi" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


@functools.cache
def load_spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return document


@pytest.fixture
def spec() -> dict[str, Any]:
    """A fresh copy per test: schemathesis may annotate the dict it is given."""
    return copy.deepcopy(load_spec())


@pytest.fixture
def app(tmp_path: Path):  # type: ignore[no-untyped-def]
    return create_app(Settings(loki_dir=tmp_path))


def template(path: str) -> str:
    """`/api/sessions/{session_id:str}` -> `/api/sessions/{}`: parameter names are not
    on the wire, so the code and the document may name them differently."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (template(path), method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


def app_operations(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    operations = set()
    for route in app.routes:
        # include_in_schema=False: the console's asset URLs, which only its page uses.
        if isinstance(route, Route) and route.include_in_schema:
            path = template(route.path)
            operations |= {(path, m) for m in route.methods or () if m != "HEAD"}
    return operations


def test_every_route_is_documented(app, spec: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    undocumented = app_operations(app) - documented_operations(spec)
    assert not undocumented, f"routes missing from openapi/paths.yaml: {sorted(undocumented)}"


def test_every_documented_operation_exists(app, spec: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    missing = documented_operations(spec) - app_operations(app)
    assert not missing, f"documented but not served: {sorted(missing)}"


def test_committed_spec_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_openapi.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_spec_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["version"] == __version__
    schemathesis.openapi.from_dict(spec).validate()  # raises on a meta-schema violation
    for name, schema in spec["components"]["schemas"].items():
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"components.schemas.{name} is not valid JSON Schema 2020-12: {exc}")


def walk_refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from walk_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_refs(value, f"{where}/{index}")


def resolve(spec: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), f"only local refs are used, not {pointer}"
    node: Any = spec
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = list(walk_refs(spec))
    assert len(refs) > 100
    broken = []
    for where, target in refs:
        try:
            resolve(spec, target)
        except (KeyError, AssertionError):
            broken.append(f"{where} -> {target}")
    assert not broken, "\n".join(broken)


def test_path_parameters_match_the_templates(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        in_template = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            if method not in METHODS:
                continue
            declared = [
                resolve(spec, p["$ref"]) if "$ref" in p else p
                for p in [*item.get("parameters", []), *operation.get("parameters", [])]
            ]
            in_path = {p["name"] for p in declared if p["in"] == "path"}
            assert in_path == in_template, f"{method.upper()} {path}"


def test_path_parameters_are_named_as_in_the_original_spec(spec: dict[str, Any]) -> None:
    """SPEC §6: `{sessionId}` and `{taskId}`, so generated clients get the original
    signatures."""
    names = {name for path in spec["paths"] for name in re.findall(r"\{(\w+)\}", path)}
    assert names == {"sessionId", "taskId"}
    assert "/api/sessions/{sessionId}/tasks/{taskId}" in spec["paths"]


def operations_by_id(spec: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    return {
        op["operationId"]: (item, op)
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in METHODS
    }


def test_links_name_real_operations_and_parameters(spec: dict[str, Any]) -> None:
    by_id = operations_by_id(spec)
    links = [
        link
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in METHODS
        for response in op["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert len(links) >= 9
    for link in links:
        item, target = by_id[link["operationId"]]
        declared = {
            (resolve(spec, p["$ref"]) if "$ref" in p else p)["name"]
            for p in [*item.get("parameters", []), *target.get("parameters", [])]
        }
        assert set(link["parameters"]) <= declared, link


def test_operation_ids_are_unique(spec: dict[str, Any]) -> None:
    ids = [
        op["operationId"]
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(ids) == len(set(ids))


def test_error_responses_are_api_errors(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = resolve(spec, response["$ref"])
                if int(status) >= 400 and not path.startswith("/health"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ApiError"}, (path, status)


def test_auth_and_rate_limit_are_documented_outside_public_paths(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            statuses = set(operation["responses"])
            assert "403" in statuses, (method, path)
            if path.startswith("/health") or path == "/":
                assert operation["security"] == [{}]
                assert not statuses & {"401", "429"}
            else:
                assert {"401", "429"} <= statuses, (method, path)
    events = spec["paths"]["/api/events"]["get"]
    assert {"queryToken": []} in events["security"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert any(
        p.get("in") == "header" and p["name"] == "Last-Event-ID" for p in events["parameters"]
    )


# ------------------------------------------------------------------ event schemas


def any_event_validator(spec: dict[str, Any]) -> jsonschema_rs.Validator:
    root = {"$ref": "#/components/schemas/AnyEvent", "components": spec["components"]}
    return jsonschema_rs.validator_for(root)


def sample_data(event_type: str) -> Any:
    """The smallest valid data Struct for `event_type`."""
    required = {
        "session": {"status": "running"},
        "phase": {"phase": "planning"},
        "task": {"task_id": "t1", "title": "Write tests", "status": "running"},
        "agent": {"agent_id": "a1", "type": "coder"},
        "log": {"level": "info", "message": "hello"},
        "metrics": {},
        "input": {"prompt": "Continue?"},
        "heartbeat": {"uptime": 1.5, "active_agents": 0, "queued_tasks": 2},
    }[event_type.split(":")[0]]
    return EVENT_TYPES[event_type](**required)


def test_every_event_type_has_a_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    any_event = schemas["AnyEvent"]
    assert len(any_event["oneOf"]) == len(EVENT_TYPES) == 25
    for event_type, data_struct in EVENT_TYPES.items():
        name = "Event_" + event_type.replace(":", "_")
        assert {"$ref": f"#/components/schemas/{name}"} in any_event["oneOf"]
        typed = schemas[name]["allOf"][1]["properties"]
        assert typed["type"] == {"const": event_type}
        assert typed["data"] == {"$ref": f"#/components/schemas/{data_struct.__name__}"}
    history = schemas["EventHistory"]["properties"]["events"]
    assert history["items"] == {"$ref": "#/components/schemas/AnyEvent"}


def test_encoded_events_validate_against_any_event(spec: dict[str, Any]) -> None:
    validator = any_event_validator(spec)
    for event_type in EVENT_TYPES:
        event = Event(
            id="evt_1_1732341234567",
            type=event_type,
            timestamp="2026-11-23T05:00:00.123Z",
            session_id=None,
            data=sample_data(event_type),
        )
        errors = [e.message for e in validator.iter_errors(json.loads(encode(event)))]
        assert not errors, (event_type, errors)


def test_any_event_rejects_data_of_another_type(spec: dict[str, Any]) -> None:
    validator = any_event_validator(spec)
    wrong = Event(id="evt_1_1", type="task:completed", timestamp="t", data=sample_data("heartbeat"))
    unknown = Event(
        id="evt_2_1", type="task:exploded", timestamp="t", data=sample_data("task:created")
    )
    assert not validator.is_valid(json.loads(encode(wrong)))
    assert not validator.is_valid(json.loads(encode(unknown)))


# ------------------------------------------------------------- GET /openapi.json


def loopback_client(app) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


@pytest.mark.anyio
async def test_openapi_json_serves_the_committed_spec(app, spec: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    async with loopback_client(app) as client:
        first = await client.get("/openapi.json")
        second = await client.get("/openapi.json")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json; charset=utf-8"
    assert first.json() == spec
    assert second.content == first.content


@pytest.mark.anyio
async def test_missing_document_is_a_clear_500(
    app,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(openapi_route, "CHECKOUT_SPEC", tmp_path / "nowhere.yaml")
    openapi_route.spec_json.cache_clear()
    try:
        async with loopback_client(app) as client:
            response = await client.get("/openapi.json")
    finally:
        openapi_route.spec_json.cache_clear()
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "INTERNAL_ERROR"
    assert "OpenAPI document not found" in body["error"]


# ------------------------------------------------- a real session's events vs AnyEvent

PRD = "# Todo app\n\n## Backend\n- Build the API\n- Add storage\n\n## UI\n- List view\n"


@pytest.mark.anyio
async def test_a_real_sessions_events_match_the_documented_union(
    loki_dir: Path, spec: dict[str, Any]
) -> None:
    """Every event a simulated session produces, from history and from the stream,
    validates against `AnyEvent`, and the SSE frame's `id:`/`event:` agree with it."""
    validator = any_event_validator(spec)
    (loki_dir / "prd.md").write_text(PRD)
    with ServerProcess(loki_dir, "--simulate") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            reply = await client.post("/api/sessions", json={"prdPath": "./prd.md"})
            assert reply.status_code == 201, reply.text

            async def finished() -> bool:
                stats = (await client.get("/api/events/stats")).json()["byType"]
                return bool(stats.get("session:completed") or stats.get("session:failed"))

            with anyio.fail_after(30):
                while not await finished():
                    await anyio.sleep(0.05)
            history = (await client.get("/api/events/history", params={"limit": 1000})).json()
        events = history["events"]
        assert {
            "session:started",
            "task:created",
            "agent:spawned",
            "phase:started",
            "log:info",
            "session:completed",
        } <= {e["type"] for e in events}
        for event in events:
            errors = [e.message for e in validator.iter_errors(event)]
            assert not errors, (event, errors)

        assert len(events) < 1000
        # Replay everything (later events, if any, follow the ones fetched above).
        async with sse_stream(server.url, params={"history": 1000}) as stream:
            streamed = await stream.until(lambda m: m.id == events[-1]["id"])
        assert [m.json() for m in streamed] == events
        assert all((m.event, m.id) == (m.json()["type"], m.json()["id"]) for m in streamed)
