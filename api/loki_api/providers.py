"""Which provider CLIs (claude, codex, ...) are on PATH, looked up at most once a minute."""

from __future__ import annotations

import shutil
import time

from .models import PROVIDERS, ProviderAvailability

REFRESH_SECONDS = 60.0


class ProviderCache:
    def __init__(self) -> None:
        self._value: ProviderAvailability | None = None
        self._checked_at = 0.0

    def get(self) -> ProviderAvailability:
        now = time.monotonic()
        if self._value is None or now - self._checked_at > REFRESH_SECONDS:
            self._value = ProviderAvailability(
                **{name: shutil.which(name) is not None for name in PROVIDERS}
            )
            self._checked_at = now
        return self._value
