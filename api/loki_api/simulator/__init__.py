"""A bundled session simulator: a TEST DOUBLE for the real `loki` CLI.

The real CLI needs an AI provider and the network. This stand-in speaks the
same protocol (SPEC §5.5) so the server, the README's run command and the
tests can run whole sessions offline:

    python -m loki_api.simulator start [--provider P] [--dry-run] [--verbose] [PRD]

It reads the PRD (markdown headings and bullets become tasks), walks the
planning → development → testing → deployment phases, writes `session.json`
(read–merge–write, only its own fields when the server created the record),
`tasks.json`, `phase.json` and `agents.json` atomically, and prints every kind
of output line the server parses (SPEC §5.2), some on stderr. It honours the
`PAUSE` and `STOP` files, `HUMAN_INPUT.md` and its own `input.fifo`.

Environment: `LOKI_SESSION_ID`, `LOKI_DIR` (default: the current directory),
`LOKI_SIM_DELAY` (seconds between steps, default 0.2), `LOKI_SIM_EXIT` (the
exit code it ends with, default 0).
"""
