"""Which command runs a session (SPEC §5.1).

Order: `--simulate` → the bundled simulator; `--cli` / `LOKI_CLI` (split like a
shell would, never run by one); a `loki` on PATH that is not this package's
own `loki` console script; `<loki-dir>/autonomy/run.sh`. When none is found
the server still runs and `CliCommand.check` says why (as it does for a
command that is missing or not executable, checked again on every start).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings

NOT_FOUND_MESSAGE = (
    "No Loki CLI found: install `loki` on PATH, set LOKI_CLI (or --cli) to the command "
    "that runs a session, or start the server with --simulate to use the bundled simulator"
)


@dataclass(frozen=True)
class CliCommand:
    """The argv prefix sessions run with (empty when there is none) and where it came from."""

    argv: tuple[str, ...]
    source: str  # "simulator", "--cli", "LOKI_CLI", "PATH", "run.sh" or "none"
    problem: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.argv)

    def check(self, cwd: Path, env: Mapping[str, str]) -> str | None:
        """Why the command cannot run now (None when it can): a stat, no process spawned."""
        if not self.argv:
            return self.problem or NOT_FOUND_MESSAGE
        reason = unrunnable(self.argv[0], cwd, env)
        return f"The Loki CLI cannot be run: {reason}" if reason else None

    def describe(self) -> str | None:
        if not self.argv:
            return None
        if self.source == "simulator":
            return "bundled simulator (python -m loki_api.simulator)"
        return f"{shlex.join(self.argv)} (from {self.source})"

    def session_argv(
        self,
        provider: str | None = None,
        prd_path: str | None = None,
        dry_run: bool = False,
        verbose: bool = False,
    ) -> list[str]:
        """`CMD start [--provider P] [--dry-run] [--verbose] [PRD]`, as argv items."""
        argv = [*self.argv, "start"]
        if provider:
            argv += ["--provider", provider]
        if dry_run:
            argv.append("--dry-run")
        if verbose:
            argv.append("--verbose")
        if prd_path:
            argv.append(prd_path)
        return argv


def resolve_cli(
    settings: Settings, env: dict[str, str] | None = None, path: str | None = None
) -> CliCommand:
    """Resolve the session command once, at start-up."""
    env = dict(os.environ) if env is None else env
    if settings.simulate:
        return CliCommand((sys.executable, "-m", "loki_api.simulator"), "simulator")
    explicit = settings.cli
    source = "--cli"
    if not explicit and env.get("LOKI_CLI"):
        explicit, source = env["LOKI_CLI"], "LOKI_CLI"
    if explicit:
        try:
            argv = shlex.split(explicit)
        except ValueError as exc:
            return CliCommand((), "none", f"{source} is not a valid command line: {exc}")
        if not argv:
            return CliCommand((), "none", f"{source} is empty")
        return CliCommand(tuple(argv), source)
    on_path = find_foreign_loki(env.get("PATH", "") if path is None else path)
    if on_path is not None:
        return CliCommand((on_path,), "PATH")
    run_sh = settings.loki_dir / "autonomy" / "run.sh"
    if run_sh.is_file() and os.access(run_sh, os.X_OK):
        return CliCommand((str(run_sh),), "run.sh")
    return CliCommand((), "none", NOT_FOUND_MESSAGE)


def unrunnable(program: str, cwd: Path, env: Mapping[str, str]) -> str | None:
    """Why exec would fail for `program` (found the way exec finds it), or None.

    Checks the file and, for a script, its `#!` interpreter: a missing one fails
    exec with ENOENT just like a missing program.
    """
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if not path.exists():
            return f"{program} does not exist"
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            if shutil.which(program, mode=os.F_OK, path=env.get("PATH", os.defpath)):
                return f"{program} on PATH is not executable"
            return f"{program} is not on PATH"
        path = Path(found)
    if not path.is_file():
        return f"{path} is not a file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].split()
        if interpreter:
            name = os.fsdecode(interpreter[0])
            if not (os.path.isfile(name) and os.access(name, os.X_OK)):
                return f"{path} needs the interpreter {name}, which cannot be run"
    return None


def find_foreign_loki(search_path: str) -> str | None:
    """The first `loki` on `search_path` that is not this package's own entry point."""
    for directory in search_path.split(os.pathsep):
        if not directory:
            continue
        candidate = shutil.which("loki", path=directory)
        if candidate is not None and not is_own_entry_point(Path(candidate)):
            return candidate
    return None


def is_own_entry_point(path: Path, own_dirs: Sequence[Path] | None = None) -> bool:
    """True for the `loki` console script this package installs (it would start a server)."""
    try:
        resolved = path.resolve()
    except OSError:
        return False
    dirs = (
        own_dirs
        if own_dirs is not None
        else (Path(sys.prefix) / "bin", Path(sys.executable).parent)
    )
    if any(resolved.parent == d.resolve() for d in dirs):
        return True
    try:
        with open(resolved, "rb") as file:
            head = file.read(4096)
    except OSError:
        return False
    return b"loki_api.cli" in head or b"loki_api" in head.split(b"\n", 1)[0]
