"""`python -m loki_api.simulator start [...]`: run one simulated session (a test double)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .run import Simulation, SimulationConfig

DESCRIPTION = (
    "Loki session simulator: a TEST DOUBLE for the real `loki` CLI. It walks a PRD "
    "through planning, development, testing and deployment without any AI provider, "
    "writing the .loki/sessions/<id>/ state files and printing the CLI's output protocol. "
    "Environment: LOKI_SESSION_ID, LOKI_DIR, LOKI_SIM_DELAY (seconds between steps, "
    "default 0.2), LOKI_SIM_EXIT (exit code, default 0)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loki_api.simulator", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="run a simulated session", description=DESCRIPTION)
    start.add_argument("--provider", default="claude", help="provider name to report")
    start.add_argument("--dry-run", action="store_true", help="skip the simulated deployment")
    start.add_argument("--verbose", action="store_true", help="print extra debug lines")
    start.add_argument("prd", nargs="?", help="path of the PRD (markdown)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = SimulationConfig.from_env(
            provider=args.provider, prd=args.prd, dry_run=args.dry_run, verbose=args.verbose
        )
    except ValueError as exc:
        print(f"simulator: error: {exc}", file=sys.stderr)
        return 2
    return Simulation(config).run()


if __name__ == "__main__":
    sys.exit(main())
