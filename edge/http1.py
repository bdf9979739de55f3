"""HTTP/1.1 request heads (RFC 9112), parsed by plain functions.

The data plane only needs GET and HEAD without bodies, so this parser is
small, strict where laxness is dangerous (request smuggling, path traversal)
and fast on the common case. It never raises anything but ``HTTPError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import HTTPError

MAX_TARGET = 8192
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_BAD_CHARS = re.compile(r"[\x00\r\n]")
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]\Z")
_CTL = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str  # percent-decoded and checked: absolute, no dot segments, no empty segments
    query: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    keep_alive: bool


def normalize_path(raw: str) -> str:
    """Decode and check a request path; 400 for anything that could escape a root.

    Rejecting (instead of resolving) dot segments and empty segments keeps
    one object one cache key, and makes ``/v/%2e%2e/etc`` plainly invalid.
    """
    if not raw.startswith("/"):
        raise HTTPError(400, "path must start with /", reason="bad_path")
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise HTTPError(400, "malformed percent-encoding", reason="bad_path")
        try:
            path = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(400, "path is not valid UTF-8", reason="bad_path") from None
    else:
        path = raw
    if _CTL.search(path):
        raise HTTPError(400, "control character or backslash in path", reason="bad_path")
    if "//" in path:
        raise HTTPError(400, "empty path segment", reason="bad_path")
    if "/." in path:
        for seg in path.split("/"):
            if seg in (".", ".."):
                raise HTTPError(400, "dot segment in path", reason="bad_path")
    return path


def parse_head(head: bytes) -> Request:
    """Parse a request head (everything before the blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        # RFC 9110 §5.5: field values are ASCII in practice; anything else is a bad client.
        raise HTTPError(400, "non-ASCII bytes in request head", reason="bad_request") from None
    # RFC 9110 §5.5 and RFC 9112 §2.2: NUL, and CR or LF outside the CRLF line ends, are
    # invalid anywhere in the head (bare CR/LF are a request smuggling vector).
    lines = text.split("\r\n")
    crlf = text.count("\r\n")
    if "\x00" in text or text.count("\r") != crlf or text.count("\n") != crlf:
        where = "bad_request" if _BAD_CHARS.search(lines[0]) else "bad_header"
        raise HTTPError(400, "NUL or bare CR/LF in request head", reason=where)
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HTTPError(400, "malformed request line", reason="bad_request")
    method, target, version = parts
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        if _VERSION.match(version):
            raise HTTPError(505, f"unsupported version {version}", reason="bad_version")
        raise HTTPError(400, "malformed request line", reason="bad_request")
    if not _TOKEN.match(method):
        raise HTTPError(400, "malformed method", reason="bad_request")
    if len(target) > MAX_TARGET:
        raise HTTPError(414, "request target too long", reason="uri_too_long")

    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            # RFC 9112 §5.2: obsolete line folding; rejecting it is allowed and safest.
            raise HTTPError(400, "obsolete line folding", reason="bad_header")
        name, sep, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace between field name and colon.
        if not sep or not _TOKEN.match(name):
            raise HTTPError(400, "malformed header field", reason="bad_header")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name in ("host", "content-length"):
                raise HTTPError(400, f"repeated {name}", reason="bad_header")
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value

    if version == "HTTP/1.1" and "host" not in headers:
        # RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without Host.
        raise HTTPError(400, "missing Host", reason="bad_request")
    if "transfer-encoding" in headers:
        raise HTTPError(400, "request bodies are not accepted here", reason="body")
    clen = headers.get("content-length")
    if clen is not None and clen != "0":
        if not clen.isdigit():
            raise HTTPError(400, "malformed Content-Length", reason="bad_header")
        raise HTTPError(413, "request bodies are not accepted here", reason="body")

    if "#" in target:
        # A fragment is never sent (RFC 9110 §4.2.5); one here is a broken or hostile client.
        raise HTTPError(400, "fragment in request target", reason="bad_request")
    if target.startswith("/"):
        raw_path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):
        # RFC 9112 §3.2.2: absolute-form; the path is what matters to us.
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        raw_path, _, query = (rest[slash:] if slash >= 0 else "/").partition("?")
    elif target == "*" and method == "OPTIONS":
        raw_path, query = "*", ""
    else:
        raise HTTPError(400, "malformed request target", reason="bad_request")
    path = raw_path if raw_path == "*" else normalize_path(raw_path)

    conn = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    # RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
    keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
    return Request(method, target, path, query, version, headers, keep_alive)
