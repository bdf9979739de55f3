"""Deciding a GET/HEAD response from a representation's metadata (RFC 9110).

Shared by every server of the project that serves stored bytes (the edge, the
origin): preconditions are evaluated in the order of §13.2.2, If-Range (§13.1.5)
decides whether a Range is honoured, and the head of a 200, a single-range 206
or a multipart/byteranges 206 (§14.6) is built so the caller only has to send
the listed byte ranges after it. Pure functions: no I/O, no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from .conditionals import evaluate_preconditions, format_http_date, if_range_allows
from .ranges import UNSATISFIABLE, ByteRange, content_range, make_boundary, multipart_layout
from .ranges import parse_range as _parse_range

KEEP = "Connection: keep-alive\r\n\r\n"
CLOSE = "Connection: close\r\n\r\n"


class Plan:
    """A response decided from metadata: the head, then byte ranges of the object."""

    __slots__ = ("closing", "head", "hit", "parts", "status")

    def __init__(
        self,
        status: int,
        head: bytes,
        parts: list[tuple[bytes, ByteRange]],
        closing: bytes,
        hit: bool = True,
    ) -> None:
        self.status = status
        self.head = head
        self.parts = parts  # (bytes to send before the range, the range)
        self.closing = closing
        self.hit = hit  # for caches: every byte the body needs is stored locally


@lru_cache(maxsize=8192)
def last_modified_line(ts: int) -> str:
    """The Last-Modified header line; none for an unknown date (ts < 0)."""
    return f"Last-Modified: {format_http_date(ts)}\r\n" if ts >= 0 else ""


def evaluate(
    method: str,
    headers: Mapping[str, str],
    etag: str,
    last_modified: int,
    size: int,
    max_ranges: int,
) -> tuple[int, list[ByteRange] | None, int]:
    """(status, ranges, last_modified) with status 200, 206, 304, 412 or 416.

    ``last_modified`` 0 means the date is unknown: RFC 9110 §13.1.3/§13.1.4 then
    say to ignore the date conditionals, and no If-Range date can match; the
    returned date is then -1 (see ``last_modified_line``).
    """
    lm = last_modified
    if not lm:
        lm = -1
        if "if-modified-since" in headers or "if-unmodified-since" in headers:
            headers = {
                k: v
                for k, v in headers.items()
                if k != "if-modified-since" and k != "if-unmodified-since"
            }
    pre = evaluate_preconditions(method, headers, etag, lm)
    if pre is not None:
        return pre, None, lm
    range_value = headers.get("range")
    if range_value is None:
        return 200, None, lm
    if_range = headers.get("if-range")
    if if_range is not None and not if_range_allows(if_range, etag, lm):
        return 200, None, lm
    ranges = _parse_range(range_value, size, max_ranges)
    if ranges is UNSATISFIABLE:
        return 416, None, lm
    if not ranges:
        return 200, None, lm
    return 206, ranges, lm


def not_modified(etag: str, lm: int, common: str, keep: bool) -> bytes:
    """RFC 9110 §15.4.5: a 304 carries the validators a 200 would, and no body."""
    return (
        f"HTTP/1.1 304 Not Modified\r\n{common}ETag: {etag}\r\n{last_modified_line(lm)}"
        f"{KEEP if keep else CLOSE}"
    ).encode()


def build(
    ranges: list[ByteRange] | None,
    size: int,
    etag: str,
    lm: int,
    content_type: str,
    common: str,
    keep: bool,
    hit: bool = True,
) -> Plan:
    """The head and body layout of a 200 (``ranges`` None) or 206; ``common`` holds
    header lines every response of this server carries (Date, Server, ...)."""
    tail = (
        f"Accept-Ranges: bytes\r\nETag: {etag}\r\n{last_modified_line(lm)}{common}"
        f"{KEEP if keep else CLOSE}"
    )
    if not ranges:
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n{tail}"
        ).encode()
        return Plan(200, head, [(b"", ByteRange(0, size - 1))] if size else [], b"", hit)
    if len(ranges) == 1:
        r = ranges[0]
        head = (
            f"HTTP/1.1 206 Partial Content\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: {content_range(r, size)}\r\nContent-Length: {r.length}\r\n{tail}"
        ).encode()
        return Plan(206, head, [(b"", r)], b"", hit)
    boundary = make_boundary()
    parts, closing, total = multipart_layout(ranges, size, content_type, boundary)
    head = (
        "HTTP/1.1 206 Partial Content\r\n"
        f"Content-Type: multipart/byteranges; boundary={boundary}\r\n"
        f"Content-Length: {total}\r\n{tail}"
    ).encode()
    return Plan(206, head, parts, closing, hit)
