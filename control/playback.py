"""playback (stub, being written)."""

from __future__ import annotations

from typing import Any


class PlaybackService:
    def __init__(self, control: Any) -> None:
        self.control = control
