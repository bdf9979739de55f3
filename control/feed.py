"""feed (stub, being written)."""

from __future__ import annotations

from typing import Any


class FeedReader:
    def __init__(self, control: Any) -> None:
        self.control = control
