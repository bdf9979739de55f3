"""catalog (stub, being written)."""

from __future__ import annotations

from typing import Any


class CatalogStore:
    def __init__(self, control: Any) -> None:
        self.control = control

    async def load(self) -> None:
        return None
