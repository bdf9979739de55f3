"""Table tests of the request-head parser (``edge.http1``): pure functions, no event loop.

Every rejection is checked with its status and its reason label (the reason is what
``edge_bad_requests_total{reason}`` counts).
"""

from __future__ import annotations

import pytest

from edge.errors import HTTPError
from edge.http1 import MAX_TARGET, Request, normalize_path, parse_head


def head(*lines: str | bytes) -> bytes:
    """A request head from its lines (no final blank line, as ``parse_head`` expects)."""
    return b"\r\n".join(x if isinstance(x, bytes) else x.encode("ascii") for x in lines)


def rejected(data: bytes) -> HTTPError:
    with pytest.raises(HTTPError) as info:
        parse_head(data)
    return info.value


# -- valid requests ---------------------------------------------------------------------------


def test_simple_get() -> None:
    req = parse_head(head("GET /v/t1/seg.m4s HTTP/1.1", "Host: cdn.example"))
    assert req == Request(
        method="GET",
        target="/v/t1/seg.m4s",
        path="/v/t1/seg.m4s",
        query="",
        version="HTTP/1.1",
        headers={"host": "cdn.example"},
        keep_alive=True,
    )


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "keep-alive", True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.1", "CLOSE", False),
        ("HTTP/1.1", "keep-alive, close", False),
        ("HTTP/1.1", "Upgrade, Close", False),
        ("HTTP/1.1", "", True),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
        ("HTTP/1.0", "Keep-Alive", True),
        ("HTTP/1.0", "close", False),
        ("HTTP/1.0", "", False),
    ],
)
def test_keep_alive_rules(version: str, connection: str | None, keep_alive: bool) -> None:
    lines = [f"GET /a {version}", "Host: h"]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    req = parse_head(head(*lines))
    assert req.version == version
    assert req.keep_alive is keep_alive


def test_http10_needs_no_host() -> None:
    req = parse_head(head("GET /a HTTP/1.0"))
    assert (req.version, req.headers, req.keep_alive) == ("HTTP/1.0", {}, False)


def test_http10_request_line_alone() -> None:
    # A head that is only the request line (no trailing CRLF: parse_head gets the head
    # without the blank line).
    assert parse_head(b"HEAD /x HTTP/1.0").method == "HEAD"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", ""),
        ("/a", "/a", ""),
        ("/a/", "/a/", ""),
        ("/a?", "/a", ""),
        ("/a?b=1", "/a", "b=1"),
        ("/a?b=1&c=2", "/a", "b=1&c=2"),
        ("/a?b=1?c=2", "/a", "b=1?c=2"),
        ("/?x", "/", "x"),
        ("/a?b=%zz", "/a", "b=%zz"),  # the query is opaque: not decoded, not checked
        ("/a?b=/../c", "/a", "b=/../c"),
        ("/v/a%20b.m4s", "/v/a b.m4s", ""),
        ("/v/%C3%A9t%C3%A9.mp4", "/v/\u00e9t\u00e9.mp4", ""),
        ("/v/a%2Fb", "/v/a/b", ""),
        ("/v/%252e%252e/x", "/v/%2e%2e/x", ""),  # decoded once only
        ("/v/.hidden", "/v/.hidden", ""),
        ("/v/a..b", "/v/a..b", ""),
        ("/v/...", "/v/...", ""),
        ("/v/..a/b", "/v/..a/b", ""),
        ("/v/a.", "/v/a.", ""),
        ("/v/a~b_c-d(e)!$&'*+,;=:@", "/v/a~b_c-d(e)!$&'*+,;=:@", ""),
        # absolute-form (RFC 9112 §3.2.2): only the path and query matter.
        ("http://cdn.example/v/a.m4s", "/v/a.m4s", ""),
        ("http://cdn.example:8080/v/a.m4s?x=1", "/v/a.m4s", "x=1"),
        ("https://cdn.example/v/a%20b", "/v/a b", ""),
        ("http://cdn.example", "/", ""),
    ],
)
def test_target_path_and_query(target: str, path: str, query: str) -> None:
    req = parse_head(head(f"GET {target} HTTP/1.1", "Host: h"))
    assert (req.target, req.path, req.query) == (target, path, query)


def test_options_asterisk() -> None:
    req = parse_head(head("OPTIONS * HTTP/1.1", "Host: h"))
    assert (req.method, req.path, req.query) == ("OPTIONS", "*", "")


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "BREW", "get", "M-SEARCH", "X_1!"])
def test_any_token_is_a_method(method: str) -> None:
    # Unknown methods parse; the handler answers them (501), not the parser.
    assert parse_head(head(f"{method} /a HTTP/1.1", "Host: h")).method == method


@pytest.mark.parametrize(
    ("lines", "headers"),
    [
        # Field names fold to lower case.
        (["HOST: h", "X-Custom-Thing: v"], {"host": "h", "x-custom-thing": "v"}),
        (["hOsT: h", "rAnGe: bytes=0-1"], {"host": "h", "range": "bytes=0-1"}),
        # Optional whitespace around the value is trimmed, inner whitespace kept.
        (["Host:h", "Range:  \tbytes=0-1 \t"], {"host": "h", "range": "bytes=0-1"}),
        (["Host: h", "X-A: a  b\tc"], {"host": "h", "x-a": "a  b\tc"}),
        (["Host: h", "X-Empty:", "X-Blank:   "], {"host": "h", "x-empty": "", "x-blank": ""}),
        # Only the first colon separates name and value.
        (["Host: h:8080", "X-T: a:b: c"], {"host": "h:8080", "x-t": "a:b: c"}),
        # Repeated fields are joined with ", " in order (RFC 9110 §5.3), case-insensitively.
        (
            ["Host: h", "Accept: a", "X-Other: o", "accept: b", "ACCEPT: c"],
            {"host": "h", "accept": "a, b, c", "x-other": "o"},
        ),
        (
            ["Host: h", 'If-None-Match: "a"', 'If-None-Match: "b"'],
            {"host": "h", "if-none-match": '"a", "b"'},
        ),
        # A zero Content-Length means no body: fine.
        (["Host: h", "Content-Length: 0"], {"host": "h", "content-length": "0"}),
        (["Host: h", "Content-Length:  0 "], {"host": "h", "content-length": "0"}),
        # An empty Host is allowed (RFC 9112 §3.2), its absence is not.
        (["Host:"], {"host": ""}),
        # Empty lines inside the head are tolerated.
        (["Host: h", ""], {"host": "h"}),
    ],
)
def test_headers(lines: list[str], headers: dict[str, str]) -> None:
    assert parse_head(head("GET /a HTTP/1.1", *lines)).headers == headers


def test_target_of_exactly_max_length_is_accepted() -> None:
    target = "/" + "a" * (MAX_TARGET - 1)
    assert parse_head(head(f"GET {target} HTTP/1.1", "Host: h")).path == target


# -- rejections -------------------------------------------------------------------------------

BAD_REQUEST = (400, "bad_request")
BAD_HEADER = (400, "bad_header")
BAD_PATH = (400, "bad_path")
BAD_VERSION = (505, "bad_version")
BODY_413 = (413, "body")
BODY_400 = (400, "body")
TOO_LONG = (414, "uri_too_long")

H = "Host: h"

REJECTIONS = [
    # Malformed request lines.
    ("empty head", b"", BAD_REQUEST),
    ("only a method", head("GET", H), BAD_REQUEST),
    ("no version", head("GET /a", H), BAD_REQUEST),
    ("four parts", head("GET /a HTTP/1.1 extra", H), BAD_REQUEST),
    ("double space", head("GET  /a HTTP/1.1", H), BAD_REQUEST),
    ("leading space", head(" GET /a HTTP/1.1", H), BAD_REQUEST),
    ("trailing space", head("GET /a HTTP/1.1 ", H), BAD_REQUEST),
    ("tabs as separators", head("GET\t/a\tHTTP/1.1", H), BAD_REQUEST),
    ("space in target", head("GET /a b HTTP/1.1", H), BAD_REQUEST),
    ("bare LF request line", b"GET /a HTTP/1.1\nHost: h", BAD_REQUEST),
    # Bad method tokens.
    ("empty method", head(" /a HTTP/1.1", H), BAD_REQUEST),
    ("method with @", head("GE@T /a HTTP/1.1", H), BAD_REQUEST),
    ("method with (", head("G(T /a HTTP/1.1", H), BAD_REQUEST),
    ("method with /", head("GET/ /a HTTP/1.1", H), BAD_REQUEST),
    ("method with quote", head('G"T /a HTTP/1.1', H), BAD_REQUEST),
    ("method with control", head("G\x01T /a HTTP/1.1", H), BAD_REQUEST),
    ("method with DEL", head("G\x7fT /a HTTP/1.1", H), BAD_REQUEST),
    # Versions: well-formed but not 1.x -> 505, anything else -> 400.
    ("HTTP/2.0", head("GET /a HTTP/2.0", H), BAD_VERSION),
    ("HTTP/3.0", head("GET /a HTTP/3.0", H), BAD_VERSION),
    ("HTTP/1.2", head("GET /a HTTP/1.2", H), BAD_VERSION),
    ("HTTP/0.9", head("GET /a HTTP/0.9", H), BAD_VERSION),
    ("HTTP/9.9", head("GET /a HTTP/9.9", H), BAD_VERSION),
    ("HTTP/2", head("GET /a HTTP/2", H), BAD_REQUEST),
    ("HTTP/1", head("GET /a HTTP/1", H), BAD_REQUEST),
    ("HTTP/", head("GET /a HTTP/", H), BAD_REQUEST),
    ("lower-case name", head("GET /a http/1.1", H), BAD_REQUEST),
    ("HTTPS/1.1", head("GET /a HTTPS/1.1", H), BAD_REQUEST),
    ("garbage version", head("GET /a FOO", H), BAD_REQUEST),
    ("HTTP/1.1x", head("GET /a HTTP/1.1x", H), BAD_REQUEST),
    ("HTTP/11.1", head("GET /a HTTP/11.1", H), BAD_REQUEST),
    ("HTTP/x.1", head("GET /a HTTP/x.1", H), BAD_REQUEST),
    # Host.
    ("HTTP/1.1 without Host", head("GET /a HTTP/1.1"), BAD_REQUEST),
    ("HTTP/1.1 with other headers but no Host", head("GET /a HTTP/1.1", "X-Host: h"), BAD_REQUEST),
    ("repeated Host", head("GET /a HTTP/1.1", H, "Host: h"), BAD_HEADER),
    ("repeated Host, other case", head("GET /a HTTP/1.1", "Host: a", "hOST: b"), BAD_HEADER),
    ("repeated Host on 1.0", head("GET /a HTTP/1.0", "Host: a", "Host: b"), BAD_HEADER),
    # Content-Length and Transfer-Encoding: no request bodies here.
    (
        "repeated Content-Length",
        head("GET /a HTTP/1.1", H, "Content-Length: 0", "Content-Length: 0"),
        BAD_HEADER,
    ),
    (
        "repeated Content-Length differing",
        head("GET /a HTTP/1.1", H, "Content-Length: 0", "content-length: 5"),
        BAD_HEADER,
    ),
    ("Content-Length 5", head("GET /a HTTP/1.1", H, "Content-Length: 5"), BODY_413),
    ("Content-Length 1", head("GET /a HTTP/1.0", "Content-Length: 1"), BODY_413),
    ("Content-Length huge", head("GET /a HTTP/1.1", H, "Content-Length: " + "9" * 40), BODY_413),
    ("Content-Length negative", head("GET /a HTTP/1.1", H, "Content-Length: -1"), BAD_HEADER),
    ("Content-Length plus", head("GET /a HTTP/1.1", H, "Content-Length: +5"), BAD_HEADER),
    ("Content-Length word", head("GET /a HTTP/1.1", H, "Content-Length: abc"), BAD_HEADER),
    ("Content-Length list", head("GET /a HTTP/1.1", H, "Content-Length: 0, 0"), BAD_HEADER),
    ("Content-Length empty", head("GET /a HTTP/1.1", H, "Content-Length:"), BAD_HEADER),
    (
        "Transfer-Encoding chunked",
        head("GET /a HTTP/1.1", H, "Transfer-Encoding: chunked"),
        BODY_400,
    ),
    (
        "Transfer-Encoding identity",
        head("GET /a HTTP/1.1", H, "Transfer-Encoding: identity"),
        BODY_400,
    ),
    ("Transfer-Encoding empty", head("GET /a HTTP/1.1", H, "Transfer-Encoding:"), BODY_400),
    (
        "Transfer-Encoding odd case",
        head("GET /a HTTP/1.1", H, "TRANSFER-encoding: chunked"),
        BODY_400,
    ),
    (
        "Transfer-Encoding and Content-Length",
        head("GET /a HTTP/1.1", H, "Content-Length: 0", "Transfer-Encoding: chunked"),
        BODY_400,
    ),
    ("Transfer-Encoding on 1.0", head("GET /a HTTP/1.0", "Transfer-Encoding: chunked"), BODY_400),
    # Header field syntax.
    ("obs-fold with space", head("GET /a HTTP/1.1", H, "X-A: a", " b"), BAD_HEADER),
    ("obs-fold with tab", head("GET /a HTTP/1.1", H, "X-A: a", "\tb"), BAD_HEADER),
    ("whitespace before first field", head("GET /a HTTP/1.1", " Host: h"), BAD_HEADER),
    ("space before colon", head("GET /a HTTP/1.1", "Host : h"), BAD_HEADER),
    ("tab before colon", head("GET /a HTTP/1.1", H, "Range\t: bytes=0-1"), BAD_HEADER),
    ("space in name", head("GET /a HTTP/1.1", H, "X A: b"), BAD_HEADER),
    ("no colon", head("GET /a HTTP/1.1", H, "X-A b"), BAD_HEADER),
    ("empty name", head("GET /a HTTP/1.1", H, ": b"), BAD_HEADER),
    ("separator in name", head("GET /a HTTP/1.1", H, "X(A): b"), BAD_HEADER),
    ("slash in name", head("GET /a HTTP/1.1", H, "X/A: b"), BAD_HEADER),
    ("control in name", head("GET /a HTTP/1.1", H, "X\x01A: b"), BAD_HEADER),
    # Non-ASCII bytes anywhere in the head.
    ("non-ASCII in target", head(b"GET /caf\xc3\xa9 HTTP/1.1", H), BAD_REQUEST),
    ("non-ASCII in method", head(b"G\xc9T /a HTTP/1.1", H), BAD_REQUEST),
    ("non-ASCII in value", head("GET /a HTTP/1.1", H, b"X-A: caf\xc3\xa9"), BAD_REQUEST),
    ("non-ASCII in name", head("GET /a HTTP/1.1", H, b"X-\xff: a"), BAD_REQUEST),
    ("latin-1 byte", head("GET /a HTTP/1.1", H, b"X-A: \xa0"), BAD_REQUEST),
    # Request targets.
    ("target too long", head(f"GET /{'a' * MAX_TARGET} HTTP/1.1", H), TOO_LONG),
    ("target too long, even 1.0", head(f"GET /{'a' * 100_000} HTTP/1.0"), TOO_LONG),
    ("relative target", head("GET a/b HTTP/1.1", H), BAD_REQUEST),
    ("empty-ish target", head("GET ? HTTP/1.1", H), BAD_REQUEST),
    ("authority-form", head("CONNECT cdn.example:443 HTTP/1.1", H), BAD_REQUEST),
    ("asterisk for GET", head("GET * HTTP/1.1", H), BAD_REQUEST),
    ("other scheme", head("GET ftp://h/a HTTP/1.1", H), BAD_REQUEST),
    ("fragment", head("GET /a#b HTTP/1.1", H), BAD_REQUEST),
    ("bare fragment", head("GET /#x HTTP/1.1", H), BAD_REQUEST),
    ("fragment, absolute-form", head("GET http://h/a#b HTTP/1.1", H), BAD_REQUEST),
    ("traversal, plain", head("GET /v/../etc/passwd HTTP/1.1", H), BAD_PATH),
    ("traversal, %2e%2e", head("GET /v/%2e%2e/etc/passwd HTTP/1.1", H), BAD_PATH),
    ("traversal, absolute-form", head("GET http://h/v/%2e%2e/x HTTP/1.1", H), BAD_PATH),
    ("double slash", head("GET //etc/passwd HTTP/1.1", H), BAD_PATH),
    ("backslash", head("GET /v/..\\x HTTP/1.1", H), BAD_PATH),
    ("NUL", head("GET /v/a%00.m4s HTTP/1.1", H), BAD_PATH),
    ("bad escape", head("GET /v/%zz HTTP/1.1", H), BAD_PATH),
    ("invalid UTF-8", head("GET /v/%ff HTTP/1.1", H), BAD_PATH),
    ("raw tab in target", head("GET /v/a\tb HTTP/1.1", H), BAD_PATH),
    ("raw DEL in target", head("GET /v/a\x7fb HTTP/1.1", H), BAD_PATH),
    ("raw control in target", head("GET /v/a\x01b HTTP/1.1", H), BAD_PATH),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [pytest.param(data, expected, id=name) for name, data, expected in REJECTIONS],
)
def test_rejections(data: bytes, expected: tuple[int, str]) -> None:
    exc = rejected(data)
    assert (exc.status, exc.reason) == expected


def test_only_http_errors_escape() -> None:
    # Whatever the bytes, the parser raises HTTPError or returns a Request, nothing else.
    samples = [bytes([b]) * 3 for b in range(256)] + [
        b"\r\n\r\n",
        b":",
        b"GET",
        b"GET / HTTP/1.1\r\n:",
        b"GET / HTTP/1.1\r\nHost",
        b"GET %  HTTP/1.1",
        b"GET /% HTTP/1.1\r\nHost: h",
        b"\x00\x00\x00 \x00 HTTP/1.1",
        b"GET http:// HTTP/1.1\r\nHost: h",
        b"GET http://h?x HTTP/1.1\r\nHost: h",
    ]
    for data in samples:
        try:
            req = parse_head(data)
        except HTTPError as exc:
            assert exc.status in (400, 413, 414, 505), data
        else:
            assert req.path.startswith("/"), data


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"X-A: a\x00b", id="NUL"),
        pytest.param(b"X-A: a\rb", id="bare-CR"),
        pytest.param(b"X-A: a\nHost: evil", id="bare-LF"),
        pytest.param(b"Range: bytes=0-1\rX: y", id="bare-CR-in-range"),
    ],
)
def test_cr_lf_nul_in_field_values_are_rejected(line: bytes) -> None:
    exc = rejected(head("GET /a HTTP/1.1", H, line))
    assert (exc.status, exc.reason) == BAD_HEADER


@pytest.mark.parametrize("version", ["HTTP/1.a", "HTTP/1x1", "HTTP/2..", "HTTP/1-1", "HTTP/1.\x00"])
def test_malformed_version_with_a_digit_is_400_not_505(version: str) -> None:
    exc = rejected(head(f"GET /a {version}", H))
    assert (exc.status, exc.reason) == BAD_REQUEST


@pytest.mark.parametrize("target", ["/a?b#c", "/a?#", "http://h/a?x#y"])
def test_fragment_after_query_is_rejected(target: str) -> None:
    exc = rejected(head(f"GET {target} HTTP/1.1", H))
    assert (exc.status, exc.reason) == BAD_REQUEST


# -- normalize_path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/", "/"),
        ("/a/b/c.m4s", "/a/b/c.m4s"),
        ("/a/b/", "/a/b/"),
        ("/%41%42%43", "/ABC"),
        ("/a%2fb", "/a/b"),
        ("/a%20b", "/a b"),
        ("/a+b", "/a+b"),  # '+' is not a space in a path
        ("/%E2%82%AC", "/\u20ac"),
        ("/%f0%9f%8e%ac.mp4", "/\U0001f3ac.mp4"),
        ("/%25", "/%"),
        ("/%2525", "/%25"),
        ("/.a", "/.a"),
        ("/a.", "/a."),
        ("/..a", "/..a"),
        ("/a..", "/a.."),
        ("/...", "/..."),
        ("/%2e%2e%2e", "/..."),
        ("/a/.b/..c/d..", "/a/.b/..c/d.."),
        ("/%2ea", "/.a"),
    ],
)
def test_normalize_path_valid(raw: str, path: str) -> None:
    assert normalize_path(raw) == path


@pytest.mark.parametrize(
    "raw",
    [
        # Not absolute.
        "",
        "a",
        "a/b",
        "%2fa",
        "./a",
        # Dot segments, plain.
        "/..",
        "/../a",
        "/a/..",
        "/a/../b",
        "/a/.",
        "/./a",
        "/a/./b",
        "/.",
        # Dot segments, percent-encoded in any case and combination.
        "/%2e%2e",
        "/%2e%2e/etc/passwd",
        "/a/%2E%2E/b",
        "/a/%2E%2E%2Fb",
        "/a%2F%2E%2E%2Fb",
        "/a/..%2fb",
        "/a/..%2Fb",
        "/a/%2e./b",
        "/a/.%2e/b",
        "/a/%2e/b",
        "/a/%2e",
        "/a%2f.",
        "/a%2f..",
        # Empty segments.
        "//",
        "//a",
        "/a//b",
        "/a/b//",
        "/a/%2fb",
        "/a%2f%2fb",
        "/%2F",
        # Backslashes (Windows-style separators).
        "/a\\b",
        "/..\\a",
        "/a/%5c..",
        "/a/%5C",
        # NUL and other control characters, raw or encoded.
        "/a%00",
        "/a%00.m4s",
        "/a\x00b",
        "/a%0d%0aX-Injected:%20y",
        "/a%0a",
        "/a%09b",
        "/a\tb",
        "/a%1f",
        "/a%7f",
        "/a\x7f",
        # Malformed percent-encoding.
        "/%zz",
        "/a%",
        "/a%4",
        "/a%4g",
        "/a%g4",
        "/a%%41",
        "/a%-1",
        "/a% 1",
        # Invalid UTF-8 after decoding.
        "/%ff",
        "/%fe%ff",
        "/%c3",  # truncated sequence
        "/%c3%28",
        "/%c0%ae%c0%ae/etc",  # overlong '.'
        "/%e0%80%af",  # overlong '/'
        "/%ed%a0%80",  # UTF-16 surrogate
        "/%80",
    ],
)
def test_normalize_path_rejects(raw: str) -> None:
    with pytest.raises(HTTPError) as info:
        normalize_path(raw)
    assert (info.value.status, info.value.reason) == BAD_PATH
