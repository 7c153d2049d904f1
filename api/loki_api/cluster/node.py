"""This node's name: `--node-id`, else the one kept in `.loki/node-id`, else a new one kept there.

Kept in the state dir so a node that restarts (same state dir) is the same node
to the rest of the cluster.
"""

from __future__ import annotations

import logging
import re
import secrets

from ..atomic import write_atomically
from ..settings import Settings

log = logging.getLogger(__name__)

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILE_NAME = "node-id"


def resolve_node_id(settings: Settings) -> str:
    if settings.node_id is not None:
        return settings.node_id
    path = settings.state_dir / FILE_NAME
    try:
        kept = path.read_bytes()[:128].decode(errors="replace").strip()
        if NODE_ID.fullmatch(kept):
            return kept
        log.warning("ignoring %s: not a node id", path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
    node_id = f"node-{secrets.token_hex(4)}"
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, node_id.encode() + b"\n")
    except OSError as exc:  # still a usable name for this run
        log.warning("cannot keep the node id in %s: %s", path, exc)
    return node_id
