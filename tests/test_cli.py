"""`loki serve`: flags and environment, refusals with exit code 2, graceful signals."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loki_api.cli import build_parser, settings_from
from loki_api.settings import SettingsError

from .support import ServerProcess


def run_loki(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loki_api", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def settings(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return settings_from(build_parser().parse_args(argv), env or {})


def test_defaults(tmp_path: Path) -> None:
    s = settings(["--loki-dir", str(tmp_path)])
    assert (s.port, s.host, s.max_sessions, s.history, s.stop_grace) == (
        8420,
        "127.0.0.1",
        1,
        1000,
        10.0,
    )
    assert s.auth and s.cors and not s.simulate and s.token is None and s.rate_limit == 0
    assert s.state_dir == tmp_path.resolve() / ".loki"


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "LOKI_API_PORT": "9001",
        "LOKI_API_HOST": "0.0.0.0",
        "LOKI_MAX_SESSIONS": "3",
        "LOKI_API_TOKEN": "a" * 32,
        "LOKI_EVENT_HISTORY": "50",
        "LOKI_STOP_GRACE": "2.5",
        "LOKI_RATE_LIMIT": "60",
        "LOKI_API_CORS": "https://a.example, https://b.example",
        "LOKI_CLI": "my-loki --flag",
        "LOKI_DEBUG": "1",
    }
    s = settings([], env)
    assert (s.port, s.host, s.max_sessions, s.history, s.stop_grace, s.rate_limit) == (
        9001,
        "0.0.0.0",
        3,
        50,
        2.5,
        60,
    )
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.cli == "my-loki --flag" and s.log_level == "debug" and s.token == "a" * 32
    s = settings(["-p", "9002", "--max-sessions", "2", "--log-level", "warning"], env)
    assert (s.port, s.max_sessions, s.log_level) == (9002, 2, "warning")


def test_allowed_hosts_setting() -> None:
    assert settings([], {}).allowed_hosts == ()
    env = {"LOKI_ALLOWED_HOSTS": "a.example, b.example:8420"}
    assert settings([], env).allowed_hosts == ("a.example", "b.example:8420")
    assert settings(["--allowed-hosts", "c.example"], env).allowed_hosts == ("c.example",)


def test_connection_guard_settings() -> None:
    s = settings([], {})
    assert (s.head_timeout, s.connections_per_address, s.http) == (10.0, 64, "auto")
    env = {"LOKI_HEAD_TIMEOUT": "3", "LOKI_CONNECTIONS_PER_ADDRESS": "8"}
    s = settings(["--http", "h11", "--connections-per-address", "9"], env)
    assert (s.head_timeout, s.connections_per_address, s.http) == (3.0, 9, "h11")
    for bad in (["--head-timeout", "0"], ["--connections-per-address", "0"]):
        with pytest.raises(SettingsError):
            settings(bad, {})


def test_send_deadline_setting() -> None:
    assert settings([], {}).send_deadline == 30.0
    assert settings([], {"LOKI_SEND_DEADLINE": "5"}).send_deadline == 5.0
    assert settings(["--send-deadline", "2.5"], {"LOKI_SEND_DEADLINE": "5"}).send_deadline == 2.5
    with pytest.raises(SettingsError):
        settings(["--send-deadline", "0"], {})


def test_dashboard_port_is_the_fallback() -> None:
    assert settings([], {"LOKI_DASHBOARD_PORT": "7000"}).port == 7000
    assert settings([], {"LOKI_DASHBOARD_PORT": "7000", "LOKI_API_PORT": "7001"}).port == 7001


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "70000"], {}),
        ([], {"LOKI_API_PORT": "eighty"}),
        (["--max-sessions", "0"], {}),
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], {}),
        (["--tls-cert", "/etc/hostname"], {}),
        (["--token", "short"], {}),
    ],
)
def test_bad_settings_are_refused(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        settings(argv, env)


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "abc"],
        ["serve", "--bogus"],
        ["serve", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
        ["serve", "--loki-dir", "/proc/forbidden"],
    ],
)
def test_refusal_is_one_line_and_exit_code_2(args: list[str]) -> None:
    result = run_loki(*args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_loki("serve", "--port", str(port), "--loki-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_symlinked_state_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / ".loki").symlink_to(elsewhere)  # as a cloned repository could carry it
    result = run_loki("serve", "--port", "0", "--loki-dir", str(project))
    assert result.returncode == 2
    assert "is a symbolic link" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(elsewhere.iterdir()) == []  # nothing written where it points


def test_generate_token() -> None:
    result = run_loki("serve", "--generate-token")
    token = result.stdout.strip()
    assert result.returncode == 0 and len(token) == 64 and int(token, 16) >= 0
    assert run_loki("serve", "--generate-token").stdout.strip() != token


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_banner_and_graceful_signal(loki_dir: Path, sig: int) -> None:
    proc = ServerProcess(loki_dir).start()
    banner = proc.output()
    assert "Loki API" in banner and str(loki_dir / ".loki") in banner and "auth" in banner
    assert proc.stop(sig) == 0


def test_api_port_zero_does_not_fall_back() -> None:
    assert settings([], {"LOKI_API_PORT": "0", "LOKI_DASHBOARD_PORT": "7000"}).port == 0


def test_serves_https_with_a_certificate(loki_dir: Path, tmp_path: Path) -> None:
    import ssl
    import urllib.request

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    proc = ServerProcess(loki_dir, "--tls-cert", str(cert), "--tls-key", str(key), verify=False)
    try:
        proc.start()
        assert proc.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with urllib.request.urlopen(
            f"{proc.url}/health/live", context=context, timeout=10
        ) as answer:
            assert answer.status == 200
    finally:
        proc.stop()
