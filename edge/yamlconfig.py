"""Reading a YAML configuration file with errors that name the file and the key.

Shared by the origin's and steering's configuration modules (the edge's own,
larger, module has its own richer reader): load a file once, and check mappings
for unknown keys with a did-you-mean hint, so a typo is an error instead of a
setting silently left at its default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from .units import UnitError, parse_duration


def read_yaml(path: Path | None, error: type[ValueError]) -> tuple[str, object]:
    """(source name for messages, parsed document); an empty or absent file is ``{}``."""
    if path is None:
        return "<no config file>", {}
    source = str(path)
    try:
        return source, yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise error(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise error(
            f"{source}:{where}: invalid YAML" + (f": {problem}" if problem else "")
        ) from None


class KeyChecker:
    """Errors as ``<file>: <dotted.key>: <what is wrong>``."""

    def __init__(self, source: str, error: type[ValueError]) -> None:
        self.source = source
        self.error = error

    def fail(self, key: str, msg: str) -> ValueError:
        return self.error(f"{self.source}: {key}: {msg}")

    def mapping(self, raw: object, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(key or "(top level)", f"expected a mapping, got {type(raw).__name__}")
        for k in raw:
            if k not in allowed:
                close = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                raise self.fail(f"{key}.{k}" if key else str(k), f"unknown key{hint}")
        return raw

    def number(self, v: object, key: str, lo: float, hi: float) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise self.fail(key, f"expected a number from {lo:g} to {hi:g}, got {v!r}")
        return float(v)

    def duration(self, v: object, key: str, lo: float, hi: float) -> float:
        """Seconds, from a number or a string with a unit ("30s", "500ms", "1h")."""
        try:
            if isinstance(v, bool):
                raise UnitError("bool", value=v)
            n = parse_duration(v) if isinstance(v, str) else float(v)  # type: ignore[arg-type]
        except (UnitError, TypeError, ValueError):
            raise self.fail(key, f"expected a duration like 30s, got {v!r}") from None
        if not lo <= n <= hi:
            raise self.fail(key, f"expected {lo:g}s to {hi:g}s, got {n:g}s")
        return n
