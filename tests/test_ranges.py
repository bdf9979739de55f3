"""Table tests for edge.ranges (RFC 9110 §14)."""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ranges import (
    UNSATISFIABLE,
    ByteRange,
    Unsatisfiable,
    content_range,
    make_boundary,
    multipart_layout,
    parse_range,
    unsatisfied_range,
)

IGNORE = None
U = UNSATISFIABLE
HUGE = "9" * 30  # far more digits than any 64-bit offset

Expected = list[tuple[int, int]] | Unsatisfiable | None


def check(value: str | None, size: int, expected: Expected, **kw: int) -> None:
    got = parse_range(value, size, **kw)
    if isinstance(expected, list):
        assert isinstance(got, list), got
        assert [(r.start, r.end) for r in got] == expected
    else:
        assert got is expected


# --- header absent, wrong unit, unit spelling ---------------------------------------------

UNIT_CASES = [
    (None, 10, IGNORE),
    ("", 10, IGNORE),
    ("   ", 10, IGNORE),
    ("foo", 10, IGNORE),
    ("bytes", 10, IGNORE),  # no "="
    ("bytes0-1", 10, IGNORE),
    ("bytes 0-1", 10, IGNORE),
    ("bytes:0-1", 10, IGNORE),
    ("bytes =0-1", 10, IGNORE),
    ("=0-1", 10, IGNORE),
    ("byte=0-1", 10, IGNORE),
    ("bytesx=0-1", 10, IGNORE),
    ("items=0-1", 10, IGNORE),
    ("none=0-1", 10, IGNORE),
    ("Bytes=0-1", 10, [(0, 1)]),
    ("BYTES=0-1", 10, [(0, 1)]),
    ("bYtEs=2-", 10, [(2, 9)]),
    ("BYTES=20-", 10, U),
    ("bytes=0-1", 10, [(0, 1)]),
]


@pytest.mark.parametrize(("value", "size", "expected"), UNIT_CASES)
def test_unit(value: str | None, size: int, expected: Expected) -> None:
    check(value, size, expected)


# --- syntax errors: the whole header is ignored -------------------------------------------

INVALID = [
    "bytes=",
    "bytes=-",
    "bytes=--",
    "bytes=7",
    "bytes= 7 ",
    "bytes=--5",
    "bytes=-5-",
    "bytes=1--2",
    "bytes=1-2-3",
    "bytes=a-b",
    "bytes=A-",
    "bytes=A- ",
    "bytes=A-Z",
    "bytes= -Z",
    "bytes=5-Z",
    "bytes=Ran-dom, garbage",
    "bytes=0x01-0x02",
    "bytes=1e3-",
    "bytes=1.0-2",
    "bytes=+1-2",
    "bytes=1-+2",
    "bytes=-+2",
    "bytes=-1-2",  # a negative first-pos is not a thing
    "bytes=1_0-20",
    "bytes=5-4",
    "bytes=0-2,5-4",
    "bytes=2-5,4-3",
    "bytes=--5,4--3",
    "bytes=1 -2",  # no whitespace inside a range-spec (Go and nginx accept these)
    "bytes=1- 2",
    "bytes=1 - 2",
    "bytes=1 2-3",
    "bytes=- 5",
    "bytes=   1 -2   ,  4- 5, 7 - 8 , ,,",
    "bytes=0-1;2-3",
    "bytes=0-1 2-3",
    "bytes=0-1,garbage",
    "bytes=0-1,-",
    "bytes=0-1,5-4",  # one bad spec spoils the whole set
    "bytes=0-1,20-10",
    "bytes=         ",
    "bytes= , , ,   ",
    "bytes=,",
    "bytes=0-1\n",  # only SP and HTAB are OWS
    "bytes=0-1\r\n",
    "bytes=0-1,\u00a02-3",  # NO-BREAK SPACE is not OWS either
    "bytes=\u3000" + "0-1",
    "bytes=0-1\x00",
    "bytes=\u0661-\u0662",  # ARABIC-INDIC DIGITs
    "bytes=0-\u0661",
    "bytes=-\u0661",
    "bytes=\u00b2-",  # SUPERSCRIPT TWO
    "bytes=\uff11-\uff12",  # FULLWIDTH DIGITs
    "bytes=" + HUGE + "-5",  # last-pos < first-pos, however long first-pos is
    "bytes=" + HUGE + "-" + "9" * 29,
    "bytes=" + "0" * 50 + "9-" + "0" * 50 + "8",
]


@pytest.mark.parametrize("value", INVALID)
@pytest.mark.parametrize("size", [0, 1, 10, 10_000])
def test_invalid_syntax_is_ignored(value: str, size: int) -> None:
    check(value, size, IGNORE)


# --- whitespace around list elements (RFC 9110 §5.6.1) -----------------------------------

WHITESPACE_CASES = [
    ("  bytes=0-1", [(0, 1)]),  # leading/trailing OWS is not part of the field value
    ("bytes=0-1  ", [(0, 1)]),
    ("\tbytes=0-1\t", [(0, 1)]),
    ("bytes= 0-1", [(0, 1)]),
    ("bytes=\t0-1\t", [(0, 1)]),
    ("bytes=0-1 ,2-3", [(0, 1), (2, 3)]),
    ("bytes=0-1, 2-3", [(0, 1), (2, 3)]),
    ("bytes= 0-1 , 2-3 ", [(0, 1), (2, 3)]),
    ("bytes=0-1\t,\t2-3", [(0, 1), (2, 3)]),
    ("  Bytes= 5- , -1  ", [(5, 9), (9, 9)]),
]


@pytest.mark.parametrize(("value", "expected"), WHITESPACE_CASES)
def test_whitespace(value: str, expected: Expected) -> None:
    check(value, 10, expected)


# --- single ranges ---------------------------------------------------------------------------

SINGLE_CASES = [
    # closed ranges
    ("bytes=0-9", 10, [(0, 9)]),
    ("bytes=0-0", 10, [(0, 0)]),
    ("bytes=9-9", 10, [(9, 9)]),
    ("bytes=3-6", 10, [(3, 6)]),
    ("bytes=0-499", 10_000, [(0, 499)]),
    ("bytes=500-999", 10_000, [(500, 999)]),
    ("bytes=0-0", 1, [(0, 0)]),
    # last-pos at or beyond the end is clamped (§14.1.1)
    ("bytes=0-10", 10, [(0, 9)]),
    ("bytes=0-20", 10, [(0, 9)]),
    ("bytes=5-10", 10, [(5, 9)]),
    ("bytes=9-100", 10, [(9, 9)]),
    ("bytes=0-9223372036854775808", 10, [(0, 9)]),
    ("bytes=0-" + HUGE, 10, [(0, 9)]),
    ("bytes=0-" + "9" * 10_000, 10, [(0, 9)]),  # beyond int()'s digit limit
    # first-pos at or beyond the end: unsatisfiable (416)
    ("bytes=10-", 10, U),
    ("bytes=11-", 10, U),
    ("bytes=10-10", 10, U),
    ("bytes=10-20", 10, U),
    ("bytes=18446744073709551616-", 10, U),
    ("bytes=" + HUGE + "-", 10, U),
    ("bytes=" + "9" * 29 + "-" + HUGE, 10, U),
    ("bytes=1-", 1, U),
    # open-ended
    ("bytes=0-", 10, [(0, 9)]),
    ("bytes=5-", 10, [(5, 9)]),
    ("bytes=9-", 10, [(9, 9)]),
    ("bytes=9500-", 10_000, [(9500, 9999)]),
    # suffix
    ("bytes=-1", 10, [(9, 9)]),
    ("bytes=-5", 10, [(5, 9)]),
    ("bytes=-9", 10, [(1, 9)]),
    ("bytes=-10", 10, [(0, 9)]),
    ("bytes=-11", 10, [(0, 9)]),  # longer than the representation: all of it
    ("bytes=-15", 10, [(0, 9)]),
    ("bytes=-" + HUGE, 10, [(0, 9)]),
    ("bytes=-500", 10_000, [(9500, 9999)]),
    ("bytes=-1", 1, [(0, 0)]),
    ("bytes=-0", 10, U),  # a zero suffix-length selects nothing
    ("bytes=-000", 10, U),
    # leading zeros are just digits
    ("bytes=000-0009", 10, [(0, 9)]),
    ("bytes=-0005", 10, [(5, 9)]),
    ("bytes=" + "0" * 40 + "1-" + "0" * 40 + "2", 10, [(1, 2)]),
    ("bytes=" + "0" * 40 + "3-", 10, [(3, 9)]),
]


@pytest.mark.parametrize(("value", "size", "expected"), SINGLE_CASES)
def test_single_range(value: str, size: int, expected: Expected) -> None:
    check(value, size, expected)


# --- zero-length representation: nothing is satisfiable ------------------------------------

EMPTY_CASES = [
    ("bytes=0-", U),
    ("bytes=0-0", U),
    ("bytes=0-100", U),
    ("bytes=1-", U),
    # §14.1.2: a non-zero suffix of an empty representation is satisfiable, so not 416, but
    # no Content-Range can express it: the header is ignored (200 with the empty body).
    ("bytes=-1", IGNORE),
    ("bytes=-100", IGNORE),
    ("bytes=-0", U),
    ("bytes=0-5,-3", IGNORE),
    ("bytes=0-0,,1-1", U),
    ("bytes=5-4", IGNORE),  # syntax is checked before satisfiability
    ("bytes=0-0,x", IGNORE),
    ("foo=0-", IGNORE),
    ("", IGNORE),
]


@pytest.mark.parametrize(("value", "expected"), EMPTY_CASES)
def test_zero_length_representation(value: str, expected: Expected) -> None:
    check(value, 0, expected)


# --- several ranges ---------------------------------------------------------------------------

MULTI_CASES = [
    ("bytes=1-2,5-", 10, [(1, 2), (5, 9)]),
    ("bytes=-2 , 7-", 11, [(9, 10), (7, 10)]),
    ("bytes=0-0 ,2-2, 7-", 11, [(0, 0), (2, 2), (7, 10)]),
    ("bytes=0-0,-1", 10_000, [(0, 0), (9999, 9999)]),
    ("bytes=500-600,601-999", 10_000, [(500, 600), (601, 999)]),
    ("bytes=0-4,5-9", 10, [(0, 4), (5, 9)]),  # lengths add up to exactly the size
    # the client's order is kept
    ("bytes=8-9,0-1,4-5", 10, [(8, 9), (0, 1), (4, 5)]),
    ("bytes=-1,0-0", 10, [(9, 9), (0, 0)]),
    # unsatisfiable members are dropped; the rest is served
    ("bytes=15-,0-5", 10, [(0, 5)]),
    ("bytes=0-1,20-30,-0", 10, [(0, 1)]),
    ("bytes=10-,3-4,11-12", 10, [(3, 4)]),
    # none satisfiable: 416
    ("bytes=20-,30-", 10, U),
    ("bytes=20-,-0", 10, U),
    ("bytes=10-10,10-", 10, U),
    # empty list elements are skipped (§5.6.1.2)
    ("bytes=0-1,,2-3", 10, [(0, 1), (2, 3)]),
    ("bytes=,0-1", 10, [(0, 1)]),
    ("bytes=0-1,", 10, [(0, 1)]),
    ("bytes=,,0-1,,", 10, [(0, 1)]),
    ("bytes=0-1, ,\t,2-3", 10, [(0, 1), (2, 3)]),
    # end clamping applies to every member
    ("bytes=0-1,8-100", 10, [(0, 1), (8, 9)]),
    ("bytes=1-1,-" + HUGE, 100, IGNORE),  # clamped suffix: all 100 bytes, plus one
]


@pytest.mark.parametrize(("value", "size", "expected"), MULTI_CASES)
def test_multiple_ranges(value: str, size: int, expected: Expected) -> None:
    check(value, size, expected)


# --- overlapping and abusive sets (§14.2) -------------------------------------------------

ABUSE_CASES = [
    # two overlapping ranges are fine...
    ("bytes=500-700,601-999", 10_000, [(500, 700), (601, 999)]),
    ("bytes=0-3,3-5", 10, [(0, 3), (3, 5)]),
    ("bytes=0-1,1-2,5-6", 100, [(0, 1), (1, 2), (5, 6)]),
    ("bytes=0-1,2-3,4-5,6-7", 100, [(0, 1), (2, 3), (4, 5), (6, 7)]),  # adjacent only
    # ...more than two ranges involved in overlaps are ignored
    ("bytes=0-1,1-2,2-3", 100, IGNORE),
    ("bytes=0-0,0-0,0-0", 100, IGNORE),
    ("bytes=0-50,10-11,20-21", 100, IGNORE),
    ("bytes=0-1,1-2,10-11,11-12", 100, IGNORE),  # two separate overlapping pairs
    ("bytes=20-21,0-50,60-61,10-11", 100, IGNORE),
    # only satisfiable ranges count towards overlaps
    ("bytes=0-1,1-2,200-300,200-", 100, [(0, 1), (1, 2)]),
    # more bytes asked for than the representation has: ignored, as Go does
    ("bytes=0-9,0-9", 10, IGNORE),
    ("bytes=0-5,4-9", 10, IGNORE),
    ("bytes=0-,0-", 10, IGNORE),
    ("bytes=-10,0-", 10, IGNORE),
    ("bytes=0-,-1", 10, IGNORE),
    ("bytes=-" + HUGE + ",0-0", 10, IGNORE),
]


@pytest.mark.parametrize(("value", "size", "expected"), ABUSE_CASES)
def test_overlapping_and_abusive(value: str, size: int, expected: Expected) -> None:
    check(value, size, expected)


def _spread(n: int) -> str:
    return "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(n))


MAX_RANGES_CASES = [
    (_spread(16), 16, [(2 * i, 2 * i) for i in range(16)]),
    (_spread(17), 16, IGNORE),
    (_spread(1000), 16, IGNORE),
    ("bytes=" + "0-0," * 100_000, 16, IGNORE),
    ("bytes=0-0,2-2", 2, [(0, 0), (2, 2)]),
    ("bytes=0-0,2-2,4-4", 2, IGNORE),
    ("bytes=0-0,200-,300-", 2, IGNORE),  # unsatisfiable specs count too
    ("bytes=200-,300-,400-", 2, IGNORE),  # ...even when none is satisfiable
    ("bytes=0-0,,,,2-2", 2, [(0, 0), (2, 2)]),  # empty elements do not
    ("bytes=0-0", 1, [(0, 0)]),
    ("bytes=0-0,2-2", 1, IGNORE),
    ("bytes=0-0", 0, IGNORE),  # max_ranges <= 0 disables ranges
    ("bytes=0-0", -1, IGNORE),
]


@pytest.mark.parametrize(("value", "max_ranges", "expected"), MAX_RANGES_CASES)
def test_max_ranges(value: str, max_ranges: int, expected: Expected) -> None:
    check(value, 100, expected, max_ranges=max_ranges)


def test_default_max_ranges_is_16() -> None:
    assert isinstance(parse_range(_spread(16), 100), list)
    assert parse_range(_spread(17), 100) is None


@pytest.mark.parametrize("size", [-1, 10**18, 10**30])
def test_unsupported_size(size: int) -> None:
    with pytest.raises(ValueError):
        parse_range("bytes=0-", size)


def test_absent_header_needs_no_size_check() -> None:
    assert parse_range(None, -1) is None


# --- a reference model, fuzzed -----------------------------------------------------------

_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def _model(value: str, size: int, max_ranges: int = 16) -> Expected:
    """A slow, obviously-correct restatement of the rules, for comparison."""
    v = value.strip(" \t")
    if v[:6].lower() != "bytes=":
        return None
    specs = [e.strip(" \t") for e in v[6:].split(",")]
    specs = [s for s in specs if s]
    if not specs or len(specs) > max_ranges:
        return None
    out: list[tuple[int, int]] = []
    for s in specs:
        m = _SPEC.fullmatch(s)
        if m is None or (not m[1] and not m[2]):
            return None
        if not m[1]:
            n = int(m[2])
            if n > 0 and size == 0:
                return None  # satisfiable but inexpressible: ignore the header
            if n > 0:
                out.append((max(size - n, 0), size - 1))
            continue
        a = int(m[1])
        b = int(m[2]) if m[2] else None
        if b is not None and b < a:
            return None
        if a < size:
            out.append((a, size - 1 if b is None else min(b, size - 1)))
    if not out:
        return U
    if sum(b - a + 1 for a, b in out) > size:
        return None
    overlapping = {
        i
        for i, (a, b) in enumerate(out)
        for j, (c, d) in enumerate(out)
        if i != j and a <= d and c <= b
    }
    if len(overlapping) > 2:
        return None
    return out


_pos = st.one_of(st.integers(0, 40).map(str), st.just(""), st.just("00012"))
_piece = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", _pos, _pos),
    st.sampled_from(["", " ", "x", "-", "1", "٣-", "0- 1", "\t2-3 "]),
)


@settings(database=None, max_examples=500, deadline=None)
@given(
    unit=st.sampled_from(["bytes=", "Bytes=", " bytes=", "bytes= ", "bits="]),
    pieces=st.lists(_piece, min_size=0, max_size=5),
    size=st.integers(0, 30),
)
def test_matches_reference_model(unit: str, pieces: list[str], size: int) -> None:
    value = unit + ",".join(pieces)
    check(value, size, _model(value, size))


@settings(database=None, max_examples=300, deadline=None)
@given(value=st.text(max_size=40), size=st.integers(0, 50))
def test_never_crashes(value: str, size: int) -> None:
    got = parse_range(value, size)
    if isinstance(got, list):
        assert got
        for r in got:
            assert 0 <= r.start <= r.end < size


# --- ByteRange, header values -----------------------------------------------------------


@pytest.mark.parametrize(("start", "end", "length"), [(0, 0, 1), (0, 9, 10), (5, 9, 5)])
def test_byte_range_length(start: int, end: int, length: int) -> None:
    assert ByteRange(start, end).length == length


@pytest.mark.parametrize(("start", "end"), [(-1, 0), (5, 4), (-3, -1)])
def test_byte_range_rejects_nonsense(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        ByteRange(start, end)


def test_byte_range_is_frozen() -> None:
    r = ByteRange(0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.start = 1  # type: ignore[misc]


def test_unsatisfiable_sentinel() -> None:
    assert UNSATISFIABLE is Unsatisfiable.UNSATISFIABLE
    assert repr(UNSATISFIABLE) == "UNSATISFIABLE"
    assert UNSATISFIABLE is not None


@pytest.mark.parametrize(
    ("r", "size", "expected"),
    [
        (ByteRange(0, 499), 1234, "bytes 0-499/1234"),
        (ByteRange(0, 0), 1, "bytes 0-0/1"),
        (ByteRange(9500, 9999), 10_000, "bytes 9500-9999/10000"),
    ],
)
def test_content_range(r: ByteRange, size: int, expected: str) -> None:
    assert content_range(r, size) == expected


@pytest.mark.parametrize(("size", "expected"), [(0, "bytes */0"), (1234, "bytes */1234")])
def test_unsatisfied_range(size: int, expected: str) -> None:
    assert unsatisfied_range(size) == expected


def test_make_boundary() -> None:
    boundaries = {make_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for b in boundaries:
        assert re.fullmatch(r"[0-9a-f]{32}", b)


# --- multipart/byteranges ---------------------------------------------------------------

DATA = bytes(range(256)) * 4 + b"\r\n--\r\n\n\r" * 3  # includes CR, LF and dashes
SIZE = len(DATA)


def build_body(parts: list[tuple[bytes, ByteRange]], closing: bytes, data: bytes) -> bytes:
    return b"".join(head + data[r.start : r.end + 1] for head, r in parts) + closing


def split_body(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A strict multipart reader for exactly the framing RFC 2046 §5.1.1 describes."""
    delim = b"\r\n--" + boundary.encode()
    assert body.startswith(delim[2:] + b"\r\n")
    assert body.endswith(delim + b"--\r\n")
    chunks = (b"\r\n" + body[: -len(b"--\r\n")]).split(delim)
    assert chunks[0] == chunks[-1] == b""
    out = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        head, sep, payload = chunk[2:].partition(b"\r\n\r\n")
        assert sep
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        out.append((fields, payload))
    return out


LAYOUT_CASES = [
    [ByteRange(0, 0)],
    [ByteRange(0, 99), ByteRange(200, 299)],
    [ByteRange(SIZE - 1, SIZE - 1), ByteRange(0, 0)],
    [ByteRange(1000, SIZE - 1), ByteRange(0, 1023), ByteRange(500, 510)],
    [ByteRange(0, SIZE - 1)],
    [ByteRange(i, i) for i in range(1020, SIZE)],
]


@pytest.mark.parametrize("ranges", LAYOUT_CASES)
@pytest.mark.parametrize("content_type", ["video/mp4", "text/plain; charset=utf-8"])
def test_multipart_layout(ranges: list[ByteRange], content_type: str) -> None:
    boundary = make_boundary()
    parts, closing, total = multipart_layout(ranges, SIZE, content_type, boundary)
    assert [r for _, r in parts] == ranges
    assert closing == f"\r\n--{boundary}--\r\n".encode()
    body = build_body(parts, closing, DATA)
    assert total == len(body)

    split = split_body(body, boundary)
    assert len(split) == len(ranges)
    for (fields, payload), r in zip(split, ranges, strict=True):
        assert fields == {
            "Content-Type": content_type,
            "Content-Range": f"bytes {r.start}-{r.end}/{SIZE}",
        }
        assert payload == DATA[r.start : r.end + 1]

    # And the standard library's MIME parser reads the same parts back.
    head = f"Content-Type: multipart/byteranges; boundary={boundary}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert msg.is_multipart()
    mime_parts = list(msg.iter_parts())
    assert len(mime_parts) == len(ranges)
    for part, r in zip(mime_parts, ranges, strict=True):
        assert part["Content-Range"] == f"bytes {r.start}-{r.end}/{SIZE}"
        assert part.get_content_type() == content_type.split(";")[0]
        assert part.get_payload(decode=True) == DATA[r.start : r.end + 1]
    assert msg.defects == []


def test_multipart_layout_first_part_has_no_leading_crlf() -> None:
    parts, _, _ = multipart_layout([ByteRange(0, 1), ByteRange(3, 4)], 10, "text/plain", "B")
    assert parts[0][0] == b"--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n"
    assert parts[1][0] == (
        b"\r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 3-4/10\r\n\r\n"
    )


def test_multipart_layout_exact_bytes() -> None:
    parts, closing, total = multipart_layout([ByteRange(0, 2), ByteRange(7, 9)], 10, "a/b", "XY")
    body = build_body(parts, closing, b"0123456789")
    assert body == (
        b"--XY\r\nContent-Type: a/b\r\nContent-Range: bytes 0-2/10\r\n\r\n012"
        b"\r\n--XY\r\nContent-Type: a/b\r\nContent-Range: bytes 7-9/10\r\n\r\n789"
        b"\r\n--XY--\r\n"
    )
    assert total == len(body)


def test_multipart_layout_without_content_type() -> None:
    parts, closing, total = multipart_layout([ByteRange(0, 0), ByteRange(2, 2)], 3, "", "B")
    body = build_body(parts, closing, b"abc")
    assert body == (
        b"--B\r\nContent-Range: bytes 0-0/3\r\n\r\na\r\n--B\r\nContent-Range: bytes 2-2/3\r\n\r\nc"
        b"\r\n--B--\r\n"
    )
    assert total == len(body)


@pytest.mark.parametrize(
    ("ranges", "size", "content_type", "boundary"),
    [
        ([], 10, "a/b", "B"),  # nothing to lay out
        ([ByteRange(0, 10)], 10, "a/b", "B"),  # beyond the representation
        ([ByteRange(0, 1)], 10, "a/b\r\nX-Evil: 1", "B"),  # header injection
        ([ByteRange(0, 1)], 10, "a/b\n", "B"),
        ([ByteRange(0, 1)], 10, "a/b", ""),  # boundary: 1 to 70 bchars (RFC 2046)
        ([ByteRange(0, 1)], 10, "a/b", "x" * 71),
        ([ByteRange(0, 1)], 10, "a/b", "a b"),
        ([ByteRange(0, 1)], 10, "a/b", "a\r\nb"),
        ([ByteRange(0, 1)], 10, "a/b", 'a"b'),
    ],
)
def test_multipart_layout_rejects(
    ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> None:
    with pytest.raises(ValueError):
        multipart_layout(ranges, size, content_type, boundary)
