"""Table tests for edge.conditionals (RFC 9110 §13 and §5.6.7)."""

from __future__ import annotations

import email.utils
import random

import pytest

from edge.conditionals import (
    evaluate_preconditions,
    format_http_date,
    if_range_allows,
    parse_etag_list,
    parse_http_date,
)

# Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date.
T = 784111777
NOW_2024 = 1717200000.0  # 2024-06-01
ETAG = '"v1"'
LM = T
D_LM = "Sun, 06 Nov 1994 08:49:37 GMT"
D_BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
D_AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"
D_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"
D_850 = "Sunday, 06-Nov-94 08:49:37 GMT"
D_ASCTIME = "Sun Nov  6 08:49:37 1994"


# --- format_http_date ----------------------------------------------------------------------

FORMAT_CASES = [
    (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
    (T, D_LM),
    (T + 0.999, D_LM),  # fractions are floored, never rounded up
    (T - 1, D_BEFORE),
    (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
    (-0.5, "Wed, 31 Dec 1969 23:59:59 GMT"),
    (951782400, "Tue, 29 Feb 2000 00:00:00 GMT"),
    (2**31, "Tue, 19 Jan 2038 03:14:08 GMT"),
    (1483228799, "Sat, 31 Dec 2016 23:59:59 GMT"),
    (253402300799, "Fri, 31 Dec 9999 23:59:59 GMT"),
    (-2208988800, "Mon, 01 Jan 1900 00:00:00 GMT"),
]


@pytest.mark.parametrize(("ts", "expected"), FORMAT_CASES)
def test_format_http_date(ts: float, expected: str) -> None:
    assert format_http_date(ts) == expected
    assert format_http_date(ts) == expected  # again, from the cache


def test_format_http_date_matches_stdlib() -> None:
    rng = random.Random(9110)
    for _ in range(2000):
        ts = rng.randrange(0, 253402300800)
        assert format_http_date(ts) == email.utils.formatdate(ts, usegmt=True)


# --- parse_http_date -----------------------------------------------------------------------

VALID_DATES = [
    # the three forms of §5.6.7
    (D_LM, T),
    (D_850, T),
    (D_ASCTIME, T),
    ("Sun Nov 06 08:49:37 1994", T),  # asctime day as 2DIGIT
    # case-insensitive, as RFC 9111 §4.2 asks of caches
    ("sun, 06 nov 1994 08:49:37 gmt", T),
    ("SUN, 06 NOV 1994 08:49:37 GMT", T),
    ("SUNDAY, 06-NOV-94 08:49:37 GMT", T),
    ("sun nov  6 08:49:37 1994", T),
    # the day name is syntax only; it is not checked against the date
    ("Mon, 06 Nov 1994 08:49:37 GMT", T),
    ("Wednesday, 06-Nov-94 08:49:37 GMT", T),
    ("Fri Nov  6 08:49:37 1994", T),
    # field-value whitespace
    ("  " + D_LM + " ", T),
    ("\t" + D_ASCTIME, T),
    # calendar edges
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
    ("Wed, 31 Dec 1969 23:59:59 GMT", -1),
    ("Tue, 29 Feb 2000 00:00:00 GMT", 951782400),
    ("Sat, 29 Feb 2020 00:00:00 GMT", 1582934400),
    ("Tue, 19 Jan 2038 03:14:08 GMT", 2**31),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799),
    ("Mon, 01 Jan 1900 00:00:00 GMT", -2208988800),
    ("Sat, 01 Jan 0000 00:00:00 GMT", -62167219200),
    ("Sat, 31 Dec 2016 23:59:60 GMT", 1483228800),  # leap second: the next second
    ("Sat Feb 29 12:00:00 2020", 1582977600),
]


@pytest.mark.parametrize(("value", "expected"), VALID_DATES)
def test_parse_http_date(value: str, expected: int) -> None:
    assert parse_http_date(value, now=NOW_2024) == expected


INVALID_DATES = [
    "",
    " ",
    "garbage",
    "0",
    "784111777",
    "1994-11-06T08:49:37Z",
    # wrong zone
    "Sun, 06 Nov 1994 08:49:37 UTC",
    "Sun, 06 Nov 1994 08:49:37 +0000",
    "Sun, 06 Nov 1994 08:49:37 EST",
    "Sunday, 06-Nov-94 08:49:37 UTC",
    "Sun, 06 Nov 1994 08:49:37",
    # broken IMF-fixdate layout
    "Sun, 6 Nov 1994 08:49:37 GMT",
    "Sun,  6 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov 94 08:49:37 GMT",
    "Sun,06 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 8:49:37 GMT",
    "Sun, 06 Nov 1994  8:49:37 GMT",
    "Sun, 06 Nov 1994 08-49-37 GMT",
    "Sun, 06 Nov 1994 08:49:37GMT ",
    "Sun, 06-Nov-1994 08:49:37 GMT",
    "Sun 06 Nov 1994 08:49:37 GMT",
    "Sunday, 06 Nov 1994 08:49:37 GMT",
    # bad names
    "Xyz, 06 Nov 1994 08:49:37 GMT",
    "Sun, 06 Foo 1994 08:49:37 GMT",
    "Sonday, 06-Nov-94 08:49:37 GMT",
    "Sun, 06-Nov-94 08:49:37 GMT",  # rfc850-date needs the long day name
    "Sunday, 06-Nvm-94 08:49:37 GMT",
    "Sun Nvm  6 08:49:37 1994",
    "Sunday Nov  6 08:49:37 1994",
    # out-of-range fields
    "Sun, 00 Nov 1994 08:49:37 GMT",
    "Sun, 31 Nov 1994 08:49:37 GMT",
    "Sun, 32 Dec 1994 08:49:37 GMT",
    "Sun, 29 Feb 2021 08:49:37 GMT",
    "Thu, 29 Feb 1900 00:00:00 GMT",
    "Sun, 06 Nov 1994 24:00:00 GMT",
    "Sun, 06 Nov 1994 08:60:00 GMT",
    "Sun, 06 Nov 1994 08:49:61 GMT",
    "Sunday, 31-Apr-94 08:49:37 GMT",
    "Sun Nov 31 08:49:37 1994",
    "Sun Nov  0 08:49:37 1994",
    # not digits
    "Sun, 0x Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov +994 08:49:37 GMT",
    "Sun, 06 Nov 1994 +8:49:37 GMT",
    "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # ARABIC-INDIC DIGITs
    "Sun, 06 Nov \uff11\uff19\uff19\uff14 08:49:37 GMT",  # FULLWIDTH DIGITs
    "Sunday, 06-Nov-9x 08:49:37 GMT",
    "Sun Nov  x 08:49:37 1994",
    # broken asctime layout
    "Sun Nov 6 08:49:37 1994",
    "Sun Nov  6 08:49:37 94",
    "Sun Nov  6 08:49:37 1994 GMT",
    "Sun Nov   6 08:49:37 1994",
    # lists and trailing junk: not a single HTTP-date (§13.1.3, §13.1.4)
    D_LM + ", " + D_AFTER,
    D_LM + "; length=1234",
    D_LM + "x",
    "x" + D_LM,
    D_LM + "\r\n",
]


@pytest.mark.parametrize("value", INVALID_DATES)
def test_parse_http_date_invalid(value: str) -> None:
    assert parse_http_date(value, now=NOW_2024) is None


# §5.6.7: a two-digit year more than 50 years in the future means the most recent past year
# with those digits.
RFC850_YEAR_CASES = [
    (NOW_2024, "94", 1994),
    (NOW_2024, "24", 2024),
    (NOW_2024, "00", 2000),
    (NOW_2024, "74", 2074),  # exactly 50 years ahead: still the future
    (NOW_2024, "75", 1975),
    (NOW_2024, "99", 1999),
    (915148800.0, "00", 2000),  # from 1999
    (915148800.0, "49", 2049),
    (915148800.0, "50", 1950),
    (915148800.0, "98", 1998),
]


@pytest.mark.parametrize(("now", "yy", "year"), RFC850_YEAR_CASES)
def test_rfc850_two_digit_year(now: float, yy: str, year: int) -> None:
    got = parse_http_date(f"Monday, 01-Jan-{yy} 00:00:00 GMT", now=now)
    assert got == parse_http_date(f"Mon, 01 Jan {year:04d} 00:00:00 GMT")


def test_rfc850_uses_the_clock_by_default() -> None:
    assert parse_http_date(D_850) == T


def test_parse_http_date_round_trip() -> None:
    rng = random.Random(5607)
    for _ in range(2000):
        ts = rng.randrange(-62167219200, 253402300800)
        text = format_http_date(ts)
        assert parse_http_date(text) == ts
        if ts >= -2208988800:  # the stdlib reads years below 100 as two-digit years
            assert email.utils.parsedate_to_datetime(text).timestamp() == ts


# --- parse_etag_list -----------------------------------------------------------------------

ETAG_LISTS = [
    ('"abc"', ['"abc"']),
    ('W/"abc"', ['W/"abc"']),
    ('""', ['""']),  # an empty opaque-tag is valid
    ('W/""', ['W/""']),
    ('"a", "b"', ['"a"', '"b"']),
    ('"a",W/"b"', ['"a"', 'W/"b"']),
    (' "a" , "b" ', ['"a"', '"b"']),
    ('\t"a"\t,\t"b"\t', ['"a"', '"b"']),
    ('"a",,"b"', ['"a"', '"b"']),  # empty list elements (§5.6.1.2)
    (',"a"', ['"a"']),
    ('"a",', ['"a"']),
    (', ,"a", ,', ['"a"']),
    ('"a,b"', ['"a,b"']),  # a comma inside the quotes is part of the tag
    ('"a/b=c!#$%&()"', ['"a/b=c!#$%&()"']),
    ('"\xe9t\xe9"', ['"\xe9t\xe9"']),  # obs-text
    ('"a", "a"', ['"a"', '"a"']),
    ("*", ["*"]),
    (" * ", ["*"]),
    ("", []),
    (" , ,", []),
]


@pytest.mark.parametrize(("value", "expected"), ETAG_LISTS)
def test_parse_etag_list(value: str, expected: list[str]) -> None:
    assert parse_etag_list(value) == expected


MALFORMED_ETAG_LISTS = [
    "abc",
    '"abc',
    'abc"',
    '"',
    'w/"abc"',  # the weak prefix is case-sensitive
    "W/abc",
    'W/ "abc"',
    'W"abc"',
    "W/",
    '"a" "b"',
    '"a";"b"',
    '"a"b"',
    '"a"x',
    'W/"a"W/"b"',
    '"a b"',  # no spaces inside
    '"a\tb"',
    '"a\x7fb"',
    '"a\x00b"',
    '"\u20ac"',  # not obs-text
    '*, "a"',  # "*" only on its own
    '"a", *',
    "**",
    '"a", garbage',
]


@pytest.mark.parametrize("value", MALFORMED_ETAG_LISTS)
def test_parse_etag_list_malformed(value: str) -> None:
    assert parse_etag_list(value) is None


# --- evaluate_preconditions ---------------------------------------------------------------

PRECONDITION_CASES = [
    # nothing conditional
    ("GET", {}, None),
    ("GET", {"range": "bytes=0-1", "if-range": '"x"'}, None),
    # If-Match: strong comparison, "*" matches any current representation (§13.1.1)
    ("GET", {"if-match": ETAG}, None),
    ("GET", {"if-match": '"v2"'}, 412),
    ("GET", {"if-match": 'W/"v1"'}, 412),
    ("GET", {"if-match": '"v2", "v1"'}, None),
    ("GET", {"if-match": '"v2", W/"v1"'}, 412),
    ("GET", {"if-match": "*"}, None),
    ("GET", {"if-match": '"V1"'}, 412),  # opaque-tags are case-sensitive
    ("GET", {"if-match": "garbage"}, 412),  # malformed: cannot hold
    ("GET", {"if-match": ""}, 412),
    ("HEAD", {"if-match": '"v2"'}, 412),
    ("PUT", {"if-match": ETAG}, None),
    ("PUT", {"if-match": '"v2"'}, 412),
    ("DELETE", {"if-match": "*"}, None),
    # If-Unmodified-Since (§13.1.4)
    ("GET", {"if-unmodified-since": D_LM}, None),
    ("GET", {"if-unmodified-since": D_AFTER}, None),
    ("GET", {"if-unmodified-since": D_BEFORE}, 412),
    ("POST", {"if-unmodified-since": D_BEFORE}, 412),
    ("GET", {"if-unmodified-since": D_850}, None),
    ("GET", {"if-unmodified-since": "Sun, 06 Nov 1994 08:49:36 GMT"}, 412),
    ("GET", {"if-unmodified-since": "garbage"}, None),  # invalid: ignored
    ("GET", {"if-unmodified-since": D_BEFORE + ", " + D_BEFORE}, None),  # a list: ignored
    ("GET", {"if-unmodified-since": ""}, None),
    # ...is not evaluated when If-Match is present (§13.2.2 step 2)
    ("GET", {"if-match": ETAG, "if-unmodified-since": D_BEFORE}, None),
    ("GET", {"if-match": "*", "if-unmodified-since": D_BEFORE}, None),
    ("GET", {"if-match": '"v2"', "if-unmodified-since": D_AFTER}, 412),
    # If-None-Match: weak comparison; 304 for GET/HEAD, 412 otherwise (§13.1.2)
    ("GET", {"if-none-match": ETAG}, 304),
    ("HEAD", {"if-none-match": ETAG}, 304),
    ("GET", {"if-none-match": 'W/"v1"'}, 304),
    ("GET", {"if-none-match": '"v2"'}, None),
    ("GET", {"if-none-match": '"v2", W/"v1"'}, 304),
    ("GET", {"if-none-match": '"v2", "v3"'}, None),
    ("GET", {"if-none-match": "*"}, 304),
    ("GET", {"if-none-match": '"V1"'}, None),
    ("GET", {"if-none-match": ""}, None),
    ("GET", {"if-none-match": "v1"}, None),  # malformed: matches nothing
    ("POST", {"if-none-match": ETAG}, 412),
    ("PUT", {"if-none-match": "*"}, 412),
    ("DELETE", {"if-none-match": 'W/"v1"'}, 412),
    ("PUT", {"if-none-match": '"v2"'}, None),
    # If-Modified-Since: GET/HEAD only; 304 when not modified since (§13.1.3)
    ("GET", {"if-modified-since": D_LM}, 304),
    ("HEAD", {"if-modified-since": D_LM}, 304),
    ("GET", {"if-modified-since": D_AFTER}, 304),
    ("GET", {"if-modified-since": D_BEFORE}, None),
    ("GET", {"if-modified-since": D_850}, 304),
    ("GET", {"if-modified-since": D_ASCTIME}, 304),
    ("GET", {"if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"}, None),
    ("GET", {"if-modified-since": D_FUTURE}, 304),  # future dates are not special-cased
    ("GET", {"if-modified-since": "garbage"}, None),
    ("GET", {"if-modified-since": ""}, None),
    ("GET", {"if-modified-since": "Sun, 06 Nov 1994 08:49:37 UTC"}, None),
    ("GET", {"if-modified-since": D_LM + "; length=123"}, None),
    ("GET", {"if-modified-since": D_LM + ", " + D_LM}, None),  # more than one member
    ("POST", {"if-modified-since": D_LM}, None),
    ("PUT", {"if-modified-since": D_LM}, None),
    ("DELETE", {"if-modified-since": D_AFTER}, None),
    ("get", {"if-modified-since": D_LM}, None),  # methods are case-sensitive
    # ...is not evaluated when If-None-Match is present (§13.2.2 step 4)
    ("GET", {"if-none-match": '"v2"', "if-modified-since": D_LM}, None),
    ("GET", {"if-none-match": "garbage", "if-modified-since": D_LM}, None),
    ("GET", {"if-none-match": ETAG, "if-modified-since": D_BEFORE}, 304),
    ("GET", {"if-none-match": '"v2"', "if-modified-since": D_BEFORE}, None),
    # step 1/2 failures win over steps 3/4
    ("GET", {"if-match": '"v2"', "if-none-match": ETAG}, 412),
    ("GET", {"if-match": '"v2"', "if-modified-since": D_LM}, 412),
    ("GET", {"if-unmodified-since": D_BEFORE, "if-none-match": ETAG}, 412),
    ("GET", {"if-unmodified-since": D_BEFORE, "if-modified-since": D_LM}, 412),
    # steps 1/2 pass, then 3/4 decide
    ("GET", {"if-match": ETAG, "if-none-match": ETAG}, 304),
    ("GET", {"if-match": "*", "if-none-match": "*"}, 304),
    ("PUT", {"if-match": "*", "if-none-match": "*"}, 412),
    ("GET", {"if-match": ETAG, "if-modified-since": D_LM}, 304),
    ("GET", {"if-match": ETAG, "if-modified-since": D_BEFORE}, None),
    ("GET", {"if-unmodified-since": D_LM, "if-none-match": ETAG}, 304),
    ("GET", {"if-unmodified-since": D_AFTER, "if-modified-since": D_LM}, 304),
    ("GET", {"if-unmodified-since": "garbage", "if-modified-since": D_LM}, 304),
    # all four at once
    (
        "GET",
        {
            "if-match": ETAG,
            "if-unmodified-since": D_BEFORE,
            "if-none-match": '"v2"',
            "if-modified-since": D_LM,
        },
        None,
    ),
    (
        "GET",
        {
            "if-match": ETAG,
            "if-unmodified-since": D_BEFORE,
            "if-none-match": 'W/"v1"',
            "if-modified-since": D_BEFORE,
        },
        304,
    ),
    (
        "HEAD",
        {
            "if-match": '"v0"',
            "if-unmodified-since": D_AFTER,
            "if-none-match": ETAG,
            "if-modified-since": D_LM,
        },
        412,
    ),
    # methods that select no representation ignore all preconditions (§13.2.1)
    ("OPTIONS", {"if-match": '"v2"'}, None),
    ("TRACE", {"if-none-match": "*"}, None),
    ("CONNECT", {"if-unmodified-since": D_BEFORE}, None),
]


@pytest.mark.parametrize(("method", "headers", "expected"), PRECONDITION_CASES)
def test_evaluate_preconditions(method: str, headers: dict[str, str], expected: int | None) -> None:
    assert evaluate_preconditions(method, headers, ETAG, LM) == expected


# A representation without an ETag (etag == ""): no tag matches it, but "*" still does.
NO_ETAG_CASES = [
    ("GET", {"if-match": '"v1"'}, 412),
    ("GET", {"if-match": '""'}, 412),
    ("GET", {"if-match": "*"}, None),
    ("GET", {"if-none-match": '""'}, None),
    ("GET", {"if-none-match": 'W/""'}, None),
    ("GET", {"if-none-match": "*"}, 304),
    ("GET", {"if-modified-since": D_LM}, 304),
]


@pytest.mark.parametrize(("method", "headers", "expected"), NO_ETAG_CASES)
def test_evaluate_preconditions_without_etag(
    method: str, headers: dict[str, str], expected: int | None
) -> None:
    assert evaluate_preconditions(method, headers, "", LM) == expected


# --- if_range_allows ---------------------------------------------------------------------

IF_RANGE_CASES = [
    (None, True),  # no If-Range: honour the Range
    # entity-tags: strong comparison only (§13.1.5)
    (ETAG, True),
    (" " + ETAG + " ", True),
    ('"v2"', False),
    ('W/"v1"', False),  # a weak tag never matches
    ('W/"v2"', False),
    ('"V1"', False),
    ('"v1", "v2"', False),  # one entity-tag, not a list
    ('"v1', False),
    ('"v1"x', False),
    ("v1", False),
    ("*", False),
    ("", False),
    ("   ", False),
    # dates: only an exact match with Last-Modified
    (D_LM, True),
    (D_850, True),
    (D_ASCTIME, True),
    (D_BEFORE, False),
    (D_AFTER, False),
    (D_FUTURE, False),
    ("Sun, 32 Nov 1994 08:49:37 GMT", False),
    ("Sun, 06 Nov 1994 08:49:37 UTC", False),
    ("garbage", False),
    ("784111777", False),
]


@pytest.mark.parametrize(("value", "expected"), IF_RANGE_CASES)
def test_if_range_allows(value: str | None, expected: bool) -> None:
    assert if_range_allows(value, ETAG, LM) is expected


@pytest.mark.parametrize(("value", "expected"), [(None, True), ('""', False), (D_LM, True)])
def test_if_range_allows_without_etag(value: str | None, expected: bool) -> None:
    assert if_range_allows(value, "", LM) is expected
