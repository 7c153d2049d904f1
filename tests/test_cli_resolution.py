"""§5.1: which command runs a session."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from loki_api.sessions.cli_resolution import (
    NOT_FOUND_MESSAGE,
    find_foreign_loki,
    is_own_entry_point,
    resolve_cli,
    unrunnable,
)
from loki_api.settings import Settings


def make_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_simulate_wins(tmp_path: Path) -> None:
    cli = resolve_cli(Settings(loki_dir=tmp_path, simulate=True, cli="other"), env={}, path="")
    assert cli.argv == (sys.executable, "-m", "loki_api.simulator")
    assert cli.source == "simulator" and cli.problem is None
    assert "simulator" in (cli.describe() or "")


def test_cli_flag_then_env_split_like_a_shell(tmp_path: Path) -> None:
    cli = resolve_cli(
        Settings(loki_dir=tmp_path, cli="'/opt/my loki' --x"), env={"LOKI_CLI": "ignored"}, path=""
    )
    assert cli.argv == ("/opt/my loki", "--x") and cli.source == "--cli"
    cli = resolve_cli(Settings(loki_dir=tmp_path), env={"LOKI_CLI": "bash run.sh"}, path="")
    assert cli.argv == ("bash", "run.sh") and cli.source == "LOKI_CLI"


def test_bad_command_line_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    cli = resolve_cli(Settings(loki_dir=tmp_path, cli="'unclosed"), env={}, path="")
    assert not cli.available and "not a valid command line" in (cli.problem or "")


def test_an_unrunnable_command_says_why(tmp_path: Path) -> None:
    good = make_exe(tmp_path / "bin" / "good", "#!/bin/sh\n")
    plain = tmp_path / "bin" / "plain"
    plain.write_text("#!/bin/sh\n")
    broken = make_exe(tmp_path / "bin" / "broken", "#!/no/such/interpreter\n")
    env = {"PATH": str(good.parent)}
    assert unrunnable(str(good), tmp_path, env) is None
    assert unrunnable("good", tmp_path, env) is None
    assert unrunnable("bin/good", tmp_path, {}) is None  # relative to the loki dir
    assert "does not exist" in (unrunnable(str(tmp_path / "nope"), tmp_path, env) or "")
    assert "not on PATH" in (unrunnable("nope", tmp_path, env) or "")
    assert "not executable" in (unrunnable(str(plain), tmp_path, env) or "")
    assert "on PATH is not executable" in (unrunnable("plain", tmp_path, env) or "")
    assert "not a file" in (unrunnable(str(tmp_path / "bin"), tmp_path, env) or "")
    assert "/no/such/interpreter" in (unrunnable(str(broken), tmp_path, env) or "")
    # What the server checks before each start, and shows on /health.
    cli = resolve_cli(Settings(loki_dir=tmp_path, cli=f"{plain} --flag"), env={}, path="")
    assert cli.available and "not executable" in (cli.check(tmp_path, env) or "")
    bad = resolve_cli(Settings(loki_dir=tmp_path, cli="'unclosed"), env={}, path="")
    assert "not a valid command line" in (bad.check(tmp_path, env) or "")


def test_foreign_loki_on_path_is_used_but_our_own_script_is_skipped(tmp_path: Path) -> None:
    ours = make_exe(
        tmp_path / "venv" / "loki", "#!/usr/bin/python\nfrom loki_api.cli import main\nmain()\n"
    )
    theirs = make_exe(tmp_path / "bin" / "loki", "#!/bin/bash\necho real loki\n")
    assert is_own_entry_point(ours, own_dirs=[])
    assert not is_own_entry_point(theirs, own_dirs=[])
    search = f"{ours.parent}:{theirs.parent}"
    assert find_foreign_loki(search) == str(theirs)
    cli = resolve_cli(Settings(loki_dir=tmp_path), env={}, path=search)
    assert cli.argv == (str(theirs),) and cli.source == "PATH"


def test_our_venv_loki_is_never_chosen(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    assert find_foreign_loki(venv_bin) is None


def test_run_sh_in_loki_dir(tmp_path: Path) -> None:
    run_sh = make_exe(tmp_path / "autonomy" / "run.sh", "#!/bin/bash\n")
    cli = resolve_cli(Settings(loki_dir=tmp_path), env={}, path="")
    assert cli.argv == (str(run_sh),) and cli.source == "run.sh"


def test_nothing_found_names_simulate_and_loki_cli(tmp_path: Path) -> None:
    cli = resolve_cli(Settings(loki_dir=tmp_path), env={}, path=str(tmp_path / "empty"))
    assert not cli.available and cli.describe() is None
    assert cli.problem == NOT_FOUND_MESSAGE
    assert "--simulate" in NOT_FOUND_MESSAGE and "LOKI_CLI" in NOT_FOUND_MESSAGE


def test_session_argv(tmp_path: Path) -> None:
    cli = resolve_cli(Settings(loki_dir=tmp_path, cli="loki"), env={}, path="")
    assert cli.session_argv("codex", "./prd.md", dry_run=True, verbose=True) == [
        "loki",
        "start",
        "--provider",
        "codex",
        "--dry-run",
        "--verbose",
        "./prd.md",
    ]
    assert cli.session_argv() == ["loki", "start"]
