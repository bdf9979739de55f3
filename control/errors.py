"""The control plane's exceptions, mapped to HTTP in one place (`error_body`, app middleware).

Every error response has one shape::

    {"error": {"code": "not_found", "message": "no such profile", "details": {...}}}

``code`` is stable (clients branch on it), ``message`` is for people, ``details`` is optional
(per-field validation reasons, ``retry_after`` seconds).
"""

from __future__ import annotations

from typing import Any


class ControlError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")
        self.details = details or {}


class BadRequest(ControlError):
    """The request is malformed or a field is invalid (details name the fields)."""

    status = 400
    code = "bad_request"


class Unauthorized(ControlError):
    """No, an expired or a revoked session; or wrong credentials (one message for all)."""

    status = 401
    code = "unauthorized"


class SubscriptionRequired(ControlError):
    status = 402
    code = "subscription_required"


class Forbidden(ControlError):
    status = 403
    code = "forbidden"


class NotFound(ControlError):
    """Also for another account's objects: their existence is not revealed."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ControlError):
    status = 405
    code = "method_not_allowed"


class Conflict(ControlError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ControlError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ControlError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ControlError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message or "too many requests", {"retry_after": round(retry_after, 1)})
        self.retry_after = retry_after


class StreamLimit(ControlError):
    """The plan's concurrent streams are all in use."""

    status = 409
    code = "stream_limit"


class Unavailable(ControlError):
    status = 503
    code = "unavailable"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


# Statuses aiohttp raises itself (routing, body limits), in our shape.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}
