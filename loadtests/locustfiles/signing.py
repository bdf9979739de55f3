"""Signed edge URLs, made by the product's own edge/tokens.py."""

from __future__ import annotations

import time
from pathlib import Path

from edge.tokens import SigningKeys, load_keys, sign, signed_path

# -- signed edge URLs ------------------------------------------------------------------------


class Signer:
    """Edge URL tokens made by the product's own edge/tokens.py (``sign``, ``signed_path``),
    one per title prefix ``/v/<title>/`` as the control plane makes them, re-signed when half
    of ``ttl`` has passed so a long run never sends an expired token."""

    def __init__(self, keys: SigningKeys, ttl: int) -> None:
        self.keys = keys
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_file(cls, path: str, ttl: int) -> Signer:
        return cls(load_keys(Path(path)), ttl)

    @staticmethod
    def prefix_of(path: str) -> str:
        parts = path.split("/")
        if len(parts) < 4 or parts[0] != "" or parts[1] != "v" or not parts[2]:
            raise ValueError(f"{path!r} is not /v/<title>/<file>")
        return f"/v/{parts[2]}/"

    def path(self, object_path: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        prefix = self.prefix_of(object_path)
        token, expires = self._tokens.get(prefix, ("", 0))
        if expires - now < self.ttl / 2:
            expires = int(now) + self.ttl
            token = sign(self.keys, prefix, expires)
            self._tokens[prefix] = (token, expires)
        return signed_path(token, object_path)
