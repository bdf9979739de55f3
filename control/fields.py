"""Validation of JSON request bodies and query strings: typed getters with clear reasons.

Pure (no aiohttp): handlers parse the body with `parse_json` and read it through `Fields`,
which collects every problem and raises one `BadRequest` whose details name each field::

    f = Fields(body)
    name = f.text("name", max_len=64)
    year = f.integer("year", lo=1870, hi=2100, required=False)
    f.done()  # unknown fields and every collected problem -> BadRequest

Strings are NFC-normalised and stripped; control characters are refused, so what is stored
is what a list shows. Numbers must be JSON numbers (``true`` is not a number, NaN and
infinities are refused by the parser).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from typing import Any

from .errors import BadRequest

_MISSING = object()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object from a request body, or BadRequest."""
    if not raw.strip():
        raise BadRequest("a JSON object body is required")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


def clean_text(value: str) -> str | None:
    """NFC, stripped; None when it holds control characters (other than none at all)."""
    text = unicodedata.normalize("NFC", value).strip()
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return None
    return text


class Fields:
    def __init__(self, doc: Mapping[str, Any], where: str = "body") -> None:
        self.doc = doc
        self.where = where
        self.seen: set[str] = set()
        self.problems: dict[str, str] = {}

    def _get(self, name: str, required: bool) -> Any:
        self.seen.add(name)
        value = self.doc.get(name, _MISSING)
        if value is _MISSING or (value is None and not required):
            if required:
                self.problems[name] = "is required"
            return _MISSING
        return value

    def fail(self, name: str, reason: str) -> None:
        self.problems.setdefault(name, reason)

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        min_len: int = 1,
        max_len: int = 200,
        default: str | None = None,
    ) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return default
        text = clean_text(value)
        if text is None:
            self.fail(name, "must not contain control characters")
            return default
        if not min_len <= len(text) <= max_len:
            self.fail(name, f"must be {min_len} to {max_len} characters")
            return default
        return text

    def secret(self, name: str, *, max_len: int = 1024) -> str:
        """A password: taken as given (no stripping or normalising beyond what auth does)."""
        value = self._get(name, True)
        if value is _MISSING:
            return ""
        if not isinstance(value, str) or not value or len(value) > max_len:
            self.fail(name, f"must be a string of 1 to {max_len} characters")
            return ""
        return value

    def integer(
        self, name: str, *, lo: int, hi: int, required: bool = True, default: int | None = None
    ) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.fail(name, "must be an integer")
                return default
        if not lo <= value <= hi:
            self.fail(name, f"must be from {lo} to {hi}")
            return default
        return value

    def number(
        self,
        name: str,
        *,
        lo: float,
        hi: float,
        required: bool = True,
        default: float | None = None,
    ) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, "must be a number")
            return default
        # Range first: a JSON integer may be too large for a float (isfinite would raise).
        if not lo <= value <= hi or (isinstance(value, float) and not math.isfinite(value)):
            self.fail(name, f"must be a number from {lo:g} to {hi:g}")
            return default
        return float(value)

    def boolean(self, name: str, *, required: bool = True, default: bool | None = None) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.fail(name, "must be true or false")
            return default
        return value

    def choice(
        self, name: str, options: tuple[str, ...], *, required: bool = True, default: Any = None
    ) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return default
        if value not in options:
            self.fail(name, f"must be one of {', '.join(options)}")
            return default
        return value

    def text_list(
        self, name: str, *, max_items: int = 50, max_len: int = 100, required: bool = False
    ) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, list) or len(value) > max_items:
            self.fail(name, f"must be a list of at most {max_items} strings")
            return None
        out: list[str] = []
        for item in value:
            text = clean_text(item) if isinstance(item, str) else None
            if text is None or not 1 <= len(text) <= max_len:
                self.fail(name, f"items must be strings of 1 to {max_len} characters")
                return None
            if text not in out:
                out.append(text)
        return out

    def mapping(self, name: str, *, required: bool = False) -> Any:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.fail(name, "must be an object")
            return None
        return value

    def done(self) -> None:
        for key in self.doc:
            if key not in self.seen:
                self.problems.setdefault(str(key)[:64], "unknown field")
        if self.problems:
            first = next(iter(self.problems))
            raise BadRequest(
                f"invalid {self.where}: {first} {self.problems[first]}",
                {"fields": dict(self.problems)},
            )


def query_fields(query: Mapping[str, str]) -> Fields:
    """Fields over a query string: numbers arrive as text and are converted here."""
    doc: dict[str, Any] = {}
    for key, value in query.items():
        doc[key] = value
    return _QueryFields(doc, "query")


class _QueryFields(Fields):
    def integer(
        self, name: str, *, lo: int, hi: int, required: bool = True, default: int | None = None
    ) -> Any:
        raw = self.doc.get(name)
        if isinstance(raw, str):
            try:
                self.doc = {**self.doc, name: int(raw, 10)}
            except ValueError:
                self.seen.add(name)
                self.fail(name, "must be an integer")
                return default
        return super().integer(name, lo=lo, hi=hi, required=required, default=default)

    def boolean(self, name: str, *, required: bool = True, default: bool | None = None) -> Any:
        raw = self.doc.get(name)
        if isinstance(raw, str):
            if raw not in ("true", "false", "1", "0"):
                self.seen.add(name)
                self.fail(name, "must be true or false")
                return default
            self.doc = {**self.doc, name: raw in ("true", "1")}
        return super().boolean(name, required=required, default=default)


def page_params(query: Mapping[str, str], *, default: int = 20, maximum: int = 100) -> Fields:
    """A query Fields with ``offset`` and ``limit`` already read: use ``.offset``/``.limit``."""
    f = query_fields(query)
    f.offset = f.integer("offset", lo=0, hi=1_000_000, required=False, default=0)  # type: ignore[attr-defined]
    f.limit = f.integer("limit", lo=1, hi=maximum, required=False, default=default)  # type: ignore[attr-defined]
    return f


def page(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    """The one pagination shape every list endpoint answers with."""
    return {"items": items, "total": total, "offset": offset, "limit": limit}
