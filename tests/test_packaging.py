"""The two distributions: `loki-client` (client/) installs and works alone; `loki-api`
(the root) depends on it and ships the OpenAPI document.

Offline by construction: the wheels of loki-client's dependencies are repacked from
this environment's installed copies (`repack`), and pip runs with `--no-index` and
no configuration, so the fresh venv gets exactly what loki-client's metadata asks
for and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from .support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "openapi" / "openapi.yaml"
EXAMPLE_PRD = ROOT / "examples" / "prd.md"
# What the server needs and the SDK must not pull in.
SERVER_ONLY = {"loki-api", "starlette", "uvicorn", "uvloop", "httptools", "watchdog", "pyyaml"}


def _pip(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    # No config file, no index, no find-links from the environment: only what we pass.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both wheels, built from this checkout without network or build isolation."""
    out = tmp_path_factory.mktemp("dist")
    for source in (ROOT / "client", ROOT):
        _pip("wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out), str(source))
    (client,) = out.glob("loki_client-*.whl")
    (server,) = out.glob("loki_api-*.whl")
    return {"loki-client": client, "loki-api": server}


def _requires(metadata: importlib.metadata.PackageMetadata) -> list[Requirement]:
    return [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]


def _closure(requirements: list[Requirement]) -> dict[str, importlib.metadata.Distribution]:
    """Installed distributions that `requirements` need, transitively, by normalised name."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = _normal(requirement.name)
        if name in seen or not (
            requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        ):
            continue
        seen[name] = dist = importlib.metadata.distribution(name)
        todo.extend(_requires(dist.metadata))
    return seen


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def repack(dist: importlib.metadata.Distribution, dest: Path) -> Path:
    """A wheel of an installed distribution, from its files and its own WHEEL tag."""
    files = [
        f
        for f in dist.files or []
        if not str(f).startswith("..")  # console scripts: pip writes them anew
        and "__pycache__" not in f.parts
        and f.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
    ]
    (dist_info,) = {f.parts[0] for f in files if f.parts[0].endswith(".dist-info")}
    wheel_meta = Path(str(dist.locate_file(f"{dist_info}/WHEEL"))).read_text()
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if "Tag:" in line)
    name = dist.metadata["Name"].replace("-", "_")
    path = dest / f"{name}-{dist.version}-{tag}.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            data = Path(str(dist.locate_file(f))).read_bytes()
            archive.writestr(f.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{f.as_posix()},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def _installed(python: Path) -> set[str]:
    probe = (
        "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    return {_normal(name) for name in out.stdout.split()}


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(meta_name).decode()
    return [
        Requirement(line.split(":", 1)[1])
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def test_client_wheel_depends_on_httpx_msgspec_anyio_only(wheels: dict[str, Path]) -> None:
    requires = {_normal(r.name) for r in _wheel_requirements(wheels["loki-client"])}
    assert requires == {"httpx", "msgspec", "anyio"}
    with zipfile.ZipFile(wheels["loki-client"]) as archive:
        names = archive.namelist()
    assert "loki_client/py.typed" in names
    assert "loki_client/models.py" in names
    assert not any(name.startswith("loki_api/") for name in names)


def test_server_wheel_depends_on_the_client_and_ships_the_spec(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    requires = {str(r) for r in _wheel_requirements(wheels["loki-api"])}
    assert "loki-client==0.1.0" in requires
    with zipfile.ZipFile(wheels["loki-api"]) as archive:
        names = archive.namelist()
        packaged = archive.read("loki_api/openapi.yaml").decode()
        archive.extractall(tmp_path / "site")
    assert "loki_api/py.typed" in names
    assert not any(name.startswith("loki_client/") for name in names)
    assert packaged == SPEC_PATH.read_text()
    # The live console's files ship too (SPEC §12: no build step, works offline).
    console_dir = ROOT / "api" / "loki_api" / "console"
    shipped = {n.removeprefix("loki_api/console/") for n in names if "loki_api/console/" in n}
    assert shipped == {p.name for p in console_dir.iterdir() if p.is_file()}
    # The installed route finds the packaged copy without the checkout.
    probe = (
        "from loki_api.routes import openapi as o; import sys; "
        "o.CHECKOUT_SPEC = o.CHECKOUT_SPEC.with_name('absent.yaml'); "
        "sys.stdout.buffer.write(o.spec_json())"
    )
    client_path = str(ROOT / "client")  # the SDK, as its own wheel would provide it
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{client_path}"}
    served = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert served.returncode == 0, served.stderr.decode()
    assert json.loads(served.stdout) == yaml.safe_load(packaged)
    console_probe = (
        "from loki_api.routes import console as c; f = c.console_files(); "
        "print(c.__file__, f.build, sorted(f.assets))"
    )
    installed = subprocess.run(
        [sys.executable, "-c", console_probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith(str(tmp_path / "site")) and "'app.js'" in installed.stdout


USE_THE_SDK = textwrap.dedent(
    """
    import sys
    from loki_client import LokiClient

    try:
        import loki_api  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("loki_api is importable: the SDK did not install alone")

    url, prd = sys.argv[1], sys.argv[2]
    with LokiClient(url) as client:
        assert client.health().status == "healthy"
        with client.events(types=["session:completed", "session:failed"]) as stream:
            started = client.start_session(prd, provider="claude")
            event = next(stream)
        assert event.session_id == started.session_id, event
        assert event.type == "session:completed", event
        tasks = client.get_tasks(started.session_id)
        assert tasks.pagination.total > 0 and all(t.status == "completed" for t in tasks.tasks)
        print("ok", started.session_id, tasks.pagination.total)
    """
)


def test_client_installs_alone_and_talks_to_a_live_server(
    wheels: dict[str, Path], tmp_path: Path, loki_dir: Path
) -> None:
    needed = _closure(_wheel_requirements(wheels["loki-client"]))
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for dist in needed.values():
        repack(dist, wheelhouse)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    _pip(
        "--python",
        str(python),
        "install",
        "-q",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        str(wheels["loki-client"]),
    )
    _pip("--python", str(python), "check")
    installed = _installed(python)
    assert installed == {"loki-client", *needed}
    assert not installed & SERVER_ONLY

    (loki_dir / "prd.md").write_text(EXAMPLE_PRD.read_text())
    script = tmp_path / "use_sdk.py"
    script.write_text(USE_THE_SDK)
    with ServerProcess(loki_dir, "--simulate") as server:
        result = subprocess.run(
            [str(python), str(script), server.url, "prd.md"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,  # not the checkout: nothing importable by accident
        )
        listed = subprocess.run(
            [str(python), "-m", "loki_client", "--url", server.url, "sessions"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok session_")
    # The terminal client works without the server's `loki` command.
    assert listed.returncode == 0, listed.stderr
    assert result.stdout.split()[1] in listed.stdout
