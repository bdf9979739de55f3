"""Byte-range requests (RFC 9110 §14): parse ``Range``, build ``Content-Range`` and lay out
``multipart/byteranges`` bodies.

Pure functions, no I/O. :func:`parse_range` runs on every request, so it sticks to plain
``str`` operations with early exits (no regular expressions, no per-call setup).

Choices where RFC 9110 leaves room (all of them "ignore the header", which is always safe:
the client gets the whole representation with 200):

* A syntactically invalid header is ignored as a whole, even if some of its range-specs are
  fine (§14.2: a server MAY ignore a Range field it cannot parse). Optional whitespace is
  accepted only around list elements (after ``=``, around commas, at the ends), as the list
  syntax of §5.6.1 allows; never inside a range-spec (``1 - 2`` is invalid, unlike in Go's
  and nginx's laxer parsers).
* More than ``max_ranges`` range-specs (empty list elements do not count, unsatisfiable
  ones do) -> ignored. ``max_ranges <= 0`` disables ranges altogether.
* Abusive sets -> ignored (§14.2 allows ignoring "more than two overlapping ranges" and
  similar denial-of-service patterns): the sum of the satisfiable ranges' lengths exceeds the
  representation size (what Go's net/http does), or more than two of the satisfiable ranges
  overlap another one.
* Ranges are returned in the order the client asked for; nothing is sorted or coalesced
  (§14.2 lets a server coalesce, but keeping the order keeps the response predictable and
  the abuse checks above already bound the work).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "UNSATISFIABLE",
    "ByteRange",
    "Unsatisfiable",
    "content_range",
    "make_boundary",
    "multipart_layout",
    "parse_range",
    "unsatisfied_range",
]


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One satisfiable byte range; ``end`` is inclusive, as in HTTP."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(enum.Enum):
    """Type of :data:`UNSATISFIABLE`; an enum so that ``is UNSATISFIABLE`` narrows for mypy."""

    UNSATISFIABLE = "unsatisfiable"

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


#: Returned by :func:`parse_range` when the server must answer 416 (RFC 9110 §15.5.17).
UNSATISFIABLE: Final = Unsatisfiable.UNSATISFIABLE

# Numbers with more significant digits than this are never converted with int(): they are
# larger than any representation we can hold, and int() on a megabyte of digits is slow
# (and refused beyond sys.get_int_max_str_digits()).
_MAX_DIGITS: Final = 18
_HUGE: Final = 10**_MAX_DIGITS
_OWS: Final = " \t"

# Result codes of _spec(); real results are (start, end) with start >= 0.
_INVALID: Final = (-1, -1)
_UNSAT: Final = (-2, -2)


def _num(s: str) -> int:
    """Value of an ASCII decimal string; -1 if not one; ``_HUGE`` if it has too many digits.

    ``str.isdigit`` alone would accept Arabic-Indic digits or superscripts, and ``int`` would
    accept "+1", " 1" or "1_0"; ``isascii() and isdigit()`` is exactly ``1*DIGIT`` (§14.1.1).
    """
    if not (s.isascii() and s.isdigit()):
        return -1
    if len(s) > _MAX_DIGITS:
        s = s.lstrip("0")
        if len(s) > _MAX_DIGITS:
            return _HUGE
    return int(s)


def _digits_gt(a: str, b: str) -> bool:
    """a > b for ASCII digit strings of any length, without converting them."""
    a = a.lstrip("0")
    b = b.lstrip("0")
    return (len(a), a) > (len(b), b)


def _spec(spec: str, size: int) -> tuple[int, int]:
    """Parse one non-empty range-spec against ``size``: (start, end) clamped, or a code."""
    first, dash, last = spec.partition("-")
    if not dash:
        return _INVALID
    if not first:
        # suffix-range = "-" suffix-length (§14.1.1).
        n = _num(last)
        if n < 0:
            return _INVALID
        if n == 0:
            # A zero suffix-length selects nothing (§14.1.1: a range-set is satisfiable only
            # with a non-zero suffix-length).
            return _UNSAT
        if size == 0:
            # §14.1.2: a non-zero suffix on an empty representation IS satisfiable (the whole,
            # empty, representation), so 416 is wrong (§15.5.17); yet no Content-Range can
            # express it. Ignore the header (§14.2) and answer 200 with the empty body.
            return _INVALID
        return (size - n if n < size else 0), size - 1
    start = _num(first)
    if start < 0:
        return _INVALID
    if not last:
        return (start, size - 1) if start < size else _UNSAT
    end = _num(last)
    if end < 0:
        return _INVALID
    # last-pos < first-pos makes the range-spec invalid, not merely unsatisfiable
    # (§14.1.1). Compare before clamping, exactly even for absurdly long numbers.
    if end < start or (end == _HUGE and start == _HUGE and _digits_gt(first, last)):
        return _INVALID
    if start >= size:
        return _UNSAT
    return start, (end if end < size else size - 1)


def parse_range(
    value: str | None, size: int, max_ranges: int = 16
) -> list[ByteRange] | Literal[Unsatisfiable.UNSATISFIABLE] | None:
    """Interpret a ``Range`` header for a representation of ``size`` bytes.

    Returns the satisfiable ranges in request order, ``None`` to ignore the header (serve
    200), or :data:`UNSATISFIABLE` (serve 416 with ``Content-Range: bytes */size``).
    ``size`` must be below 10**18.
    """
    if not value:
        return None
    if not 0 <= size < _HUGE:
        raise ValueError(f"unsupported representation size {size}")
    if value.startswith("bytes="):
        rest = value[6:]
    else:
        # The range unit is case-insensitive (§14.1). Surrounding whitespace is not part of
        # a field value (§5.5); strip it in case the caller did not.
        value = value.strip(_OWS)
        if value[5:6] != "=" or value[:5].lower() != "bytes":
            return None
        rest = value[6:]
    if max_ranges <= 0:
        return None

    if "," not in rest:
        # Fast path: a single range-spec, by far the most common request.
        spec = rest.strip(_OWS)
        if not spec:
            return None
        start, end = _spec(spec, size)
        if start >= 0:
            return [ByteRange(start, end)]
        return UNSATISFIABLE if start == _UNSAT[0] else None

    ranges: list[ByteRange] = []
    count = 0
    total = 0
    # Walk the elements with find() rather than split() so that a header with thousands of
    # elements costs no more than the first max_ranges + 1 of them.
    pos = 0
    stop = len(rest)
    while pos <= stop:
        comma = rest.find(",", pos)
        if comma < 0:
            comma = stop
        spec = rest[pos:comma].strip(_OWS)
        pos = comma + 1
        if not spec:
            # Empty list elements are allowed and ignored (§5.6.1.2).
            continue
        count += 1
        if count > max_ranges:
            return None
        start, end = _spec(spec, size)
        if start >= 0:
            ranges.append(ByteRange(start, end))
            total += end - start + 1
        elif start == _INVALID[0]:
            return None
    if count == 0:
        # "bytes=" followed only by separators: range-set needs at least one range-spec.
        return None
    if not ranges:
        return UNSATISFIABLE
    if total > size or (len(ranges) > 2 and _overlapping(ranges) > 2):
        # §14.2: a server MAY ignore ranges that look like a denial-of-service attempt.
        return None
    return ranges


def _overlapping(ranges: list[ByteRange]) -> int:
    """How many of ``ranges`` overlap at least one other range."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i].start)
    involved: set[int] = set()
    reach = order[0]  # index of the range with the largest end seen so far
    for i in order[1:]:
        r = ranges[i]
        # Sorted by start: r overlaps an earlier range iff it overlaps the one reaching
        # furthest.
        if r.start <= ranges[reach].end:
            involved.add(i)
            involved.add(reach)
        if r.end > ranges[reach].end:
            reach = i
    return len(involved)


def content_range(r: ByteRange, size: int) -> str:
    """``Content-Range`` value for a 206 part (§14.4), e.g. ``bytes 0-499/1234``."""
    return f"bytes {r.start}-{r.end}/{size}"


def unsatisfied_range(size: int) -> str:
    """``Content-Range`` value for a 416 response (§14.4), e.g. ``bytes */1234``."""
    return f"bytes */{size}"


def make_boundary() -> str:
    """A fresh multipart boundary: 32 hex digits, unguessable so that it cannot appear in
    the ranges' data by accident or by an attacker's design (RFC 2046 §5.1.1)."""
    return secrets.token_hex(16)


# RFC 2046 §5.1.1 bchars; we do not allow the (legal but awkward) space at all.
_BCHARS: Final = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
)


def multipart_layout(
    ranges: Sequence[ByteRange], size: int, content_type: str, boundary: str
) -> tuple[list[tuple[bytes, ByteRange]], bytes, int]:
    """Lay out a ``multipart/byteranges`` body (§14.6) without touching the data.

    Returns ``(parts, closing, total_length)``: the body is, for each ``(head, r)`` in
    ``parts``, ``head`` followed by bytes ``r.start..r.end`` of the representation, then
    ``closing``; ``total_length`` is its exact ``Content-Length``. The first delimiter has no
    leading CRLF (RFC 2046 §5.1.1 makes it part of the delimiter only after a body part).
    An empty ``content_type`` omits the parts' ``Content-Type`` line.
    """
    if not 1 <= len(boundary) <= 70 or not _BCHARS.issuperset(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    if "\r" in content_type or "\n" in content_type:
        raise ValueError("CR or LF in content type")
    ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
    parts: list[tuple[bytes, ByteRange]] = []
    total = 0
    sep = ""
    for r in ranges:
        if r.end >= size:
            raise ValueError(f"range {r.start}-{r.end} outside a {size}-byte representation")
        head = (
            f"{sep}--{boundary}\r\n{ctype}Content-Range: {content_range(r, size)}\r\n\r\n"
        ).encode("latin-1")
        sep = "\r\n"
        parts.append((head, r))
        total += len(head) + r.length
    if not parts:
        raise ValueError("multipart/byteranges needs at least one range")
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    return parts, closing, total + len(closing)
