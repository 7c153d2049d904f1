"""This node's name: `--node-id`, else the one kept in `.loki/node-id`, else a new one kept there.

Kept in the state dir so a node that restarts (same state dir) is the same node
to the rest of the cluster.
"""

from __future__ import annotations

import logging
import re
import secrets

from ..settings import Settings
from ..statedir import StateDir

log = logging.getLogger(__name__)

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILE_NAME = "node-id"


def resolve_node_id(settings: Settings, files: StateDir | None = None) -> str:
    if settings.node_id is not None:
        return settings.node_id
    files = files or StateDir(settings.state_dir)
    # Through the state dir's door: a symlink or FIFO planted as `node-id` is skipped.
    raw = files.read(FILE_NAME, cap=128)
    if raw is not None:
        kept = raw.decode(errors="replace").strip()
        if NODE_ID.fullmatch(kept):
            return kept
        log.warning("ignoring .loki/%s: not a node id", FILE_NAME)
    node_id = f"node-{secrets.token_hex(4)}"
    try:
        files.write_atomic(FILE_NAME, node_id.encode() + b"\n")
    except OSError as exc:  # still a usable name for this run
        log.warning("cannot keep the node id in .loki/%s: %s", FILE_NAME, exc)
    return node_id
