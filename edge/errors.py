"""The edge's exception tree, mapped to HTTP status in one place (``status_for``)."""

from __future__ import annotations


class EdgeError(Exception):
    """Base of everything the edge raises on purpose."""

    status = 500
    reason = "internal"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class HTTPError(EdgeError):
    """A request the edge refuses; carries its own status."""

    def __init__(self, status: int, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason or f"http_{status}")
        self.status = status


class NotFound(EdgeError):
    status = 404
    reason = "not_found"


class RangeNotSatisfiable(EdgeError):
    """The requested range starts beyond the object (learned from the upstream)."""

    status = 416
    reason = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"range beyond {size} bytes")
        self.size = size


class Forbidden(EdgeError):
    """A token was missing, expired, forged or out of scope."""

    status = 403
    reason = "forbidden"


class Overloaded(EdgeError):
    """Beyond connection or egress limits, or draining: 503 with Retry-After."""

    status = 503
    reason = "overloaded"


class UpstreamError(EdgeError):
    """No upstream gave a usable answer (connect errors, 5xx, timeouts, truncation)."""

    status = 502
    reason = "upstream"


class UpstreamMismatch(UpstreamError):
    """An upstream answered something other than what was asked; never cached."""

    reason = "mismatch"

    def __init__(self, message: str = "", *, changed: bool = False) -> None:
        super().__init__(message, reason="mismatch")
        self.changed = changed


REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def status_for(exc: BaseException) -> int:
    if isinstance(exc, EdgeError):
        return exc.status
    return 500
