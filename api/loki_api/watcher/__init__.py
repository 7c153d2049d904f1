"""The state watcher: changes of `.loki/` files become events (SPEC §4.3)."""

from .service import StateWatcher

__all__ = ["StateWatcher"]
