"""Conditional requests (RFC 9110 §13) and HTTP dates (§5.6.7).

Pure functions, no I/O and no locale: day and month names come from tables here, never from
``strftime``. Representations are described by their strong ETag in quoted form (``'"abc"'``,
or ``""`` when there is none) and their Last-Modified time in integer epoch seconds.

Choices where RFC 9110 leaves room:

* Dates are parsed case-insensitively (§5.6.7 says HTTP-date is case-sensitive, but RFC 9111
  §4.2 asks caches, which this edge is, to match case-insensitively). The day name must be a
  real day name but is not checked against the date (as in Go and nginx). Two-digit
  rfc850-date years follow the §5.6.7 "not more than 50 years in the future" rule.
* A malformed If-Match fails (412: the client's precondition cannot be shown to hold); a
  malformed If-None-Match matches nothing (so the request proceeds, and If-Modified-Since is
  still skipped because If-None-Match is present). Go's net/http behaves the same way.
* If-Modified-Since dates in the future are not treated specially: RFC 9110 dropped RFC
  2616's "a date later than the server's current time is invalid", and comparing with
  Last-Modified as-is keeps this module free of clocks.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping
from typing import Final

__all__ = [
    "evaluate_preconditions",
    "format_http_date",
    "if_range_allows",
    "parse_etag_list",
    "parse_http_date",
]

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # time.struct_time.tm_wday
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_DAY_ABBR: Final = frozenset(d.lower() for d in _DAYS)
_DAY_LONG: Final = frozenset(
    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
)
_MONTH_NUM: Final = {m.lower(): i + 1 for i, m in enumerate(_MONTHS)}
_MONTH_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Methods that do not select or modify a representation: their preconditions MUST be
# ignored (§13.2.1).
_NO_PRECONDITIONS: Final = frozenset(("CONNECT", "OPTIONS", "TRACE"))

# One entity-tag (§8.8.3): weak = %s"W/" (case-sensitive); etagc = %x21 / %x23-7E / obs-text.
_ETAG_RE: Final = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')


# --- dates ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _format_second(sec: int) -> str:
    t = time.gmtime(sec)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def format_http_date(ts: float) -> str:
    """IMF-fixdate (§5.6.7) for an epoch timestamp, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Fractions of a second are dropped (floored), as HTTP dates have one-second resolution.
    Results are memoised per second: a server formats the same few seconds over and over.
    """
    return _format_second(math.floor(ts))


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm); avoids
    ``calendar.timegm``/``datetime``, which reject year 0 and cost more."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _int(s: str) -> int:
    """Value of an all-ASCII-digits string, or -1 (``int`` alone accepts "+1", " 1", or
    non-ASCII digits)."""
    return int(s) if s.isascii() and s.isdigit() else -1


def _epoch(year: int, month: int, day: int, hms: str) -> int | None:
    """Validate the fields and convert; ``hms`` is the ``HH:MM:SS`` time-of-day."""
    if len(hms) != 8 or hms[2] != ":" or hms[5] != ":":
        return None
    hh, mm, ss = _int(hms[0:2]), _int(hms[3:5]), _int(hms[6:8])
    # second may be 60 for a leap second (§5.6.7); it then counts as the next second.
    if year < 0 or hh < 0 or hh > 23 or mm < 0 or mm > 59 or ss < 0 or ss > 60:
        return None
    if day < 1 or day > _MONTH_DAYS[month - 1]:
        return None
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return None
    return _days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss


def parse_http_date(value: str, now: float | None = None) -> int | None:
    """Epoch seconds of an HTTP-date (§5.6.7), or ``None`` if ``value`` is not one.

    Accepts IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``) and the obsolete rfc850-date
    (``Sunday, 06-Nov-94 08:49:37 GMT``) and asctime (``Sun Nov  6 08:49:37 1994``) forms.
    ``now`` (default: the current time) only matters for rfc850-date's two-digit years.
    """
    v = value.strip(" \t")
    n = len(v)
    if n == 29 and v[3:5] == ", ":
        # IMF-fixdate: day-name "," SP 2DIGIT SP month SP 4DIGIT SP time-of-day SP "GMT"
        if (
            v[7] != " "
            or v[11] != " "
            or v[16] != " "
            or v[25:].upper() != " GMT"
            or v[:3].lower() not in _DAY_ABBR
        ):
            return None
        month = _MONTH_NUM.get(v[8:11].lower(), 0)
        day, year = _int(v[5:7]), _int(v[12:16])
        if month == 0 or day < 0 or year < 0:
            return None
        return _epoch(year, month, day, v[17:25])
    if n == 24 and v[3] == " ":
        # asctime-date: day-name SP month SP ( 2DIGIT / ( SP DIGIT ) ) SP time-of-day SP 4DIGIT
        if v[7] != " " or v[10] != " " or v[19] != " " or v[:3].lower() not in _DAY_ABBR:
            return None
        month = _MONTH_NUM.get(v[4:7].lower(), 0)
        dd = v[8:10]
        day = _int(dd[1]) if dd[0] == " " else _int(dd)
        year = _int(v[20:24])
        if month == 0 or day < 0 or year < 0:
            return None
        return _epoch(year, month, day, v[11:19])
    comma = v.find(", ")
    if 6 <= comma <= 9 and n == comma + 24:
        # rfc850-date: day-name-l "," SP 2DIGIT "-" month "-" 2DIGIT SP time-of-day SP "GMT"
        if v[:comma].lower() not in _DAY_LONG:
            return None
        rest = v[comma + 2 :]  # "06-Nov-94 08:49:37 GMT"
        if rest[2] != "-" or rest[6] != "-" or rest[9] != " " or rest[18:].upper() != " GMT":
            return None
        month = _MONTH_NUM.get(rest[3:6].lower(), 0)
        day, yy = _int(rest[0:2]), _int(rest[7:9])
        if month == 0 or day < 0 or yy < 0:
            return None
        # §5.6.7: a two-digit year that appears to be more than 50 years in the future is
        # the most recent past year with the same last two digits; so pick the year with
        # those digits in (this_year - 50, this_year + 50].
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        year = this_year - this_year % 100 + yy
        if year > this_year + 50:
            year -= 100
        elif year <= this_year - 50:
            year += 100
        return _epoch(year, month, day, rest[10:18])
    return None


# --- entity-tags ---------------------------------------------------------------------------


def parse_etag_list(value: str) -> list[str] | None:
    """Entity-tags of an If-Match / If-None-Match value (§13.1.1, §13.1.2), ``W/`` prefixes
    and quotes kept; ``["*"]`` for ``*``; ``None`` if malformed.

    Empty list elements are skipped (§5.6.1.2), so a value of only commas and whitespace
    yields ``[]``. ``*`` is only valid on its own.
    """
    v = value.strip(" \t")
    if v == "*":
        return ["*"]
    tags: list[str] = []
    i, n = 0, len(v)
    while True:
        while i < n and v[i] in " \t,":
            i += 1
        if i >= n:
            return tags
        m = _ETAG_RE.match(v, i)
        if m is None:
            return None
        tags.append(m.group())
        i = m.end()
        while i < n and v[i] in " \t":
            i += 1
        if i < n and v[i] != ",":
            return None


def _strong_match(tag: str, etag: str) -> bool:
    # Strong comparison (§8.8.3.2): both strong and identical opaque-tags.
    return tag == etag and not tag.startswith("W/")


def _weak_match(tag: str, etag: str) -> bool:
    # Weak comparison (§8.8.3.2): opaque-tags identical, either or both may be weak.
    if not etag:
        return False
    return tag.removeprefix("W/") == etag.removeprefix("W/")


def evaluate_preconditions(
    method: str, headers: Mapping[str, str], etag: str, last_modified: int
) -> int | None:
    """Evaluate If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since in the
    order of RFC 9110 §13.2.2; return 412 or 304, or ``None`` to proceed normally.

    ``headers`` maps lower-case field names to (combined) values. Call this only when the
    response without conditionals would be 2xx (§13.2.1); Range/If-Range (step 5) is the
    caller's, see :func:`if_range_allows`.
    """
    if method in _NO_PRECONDITIONS:
        return None
    # Step 1: If-Match; step 2 (If-Unmodified-Since) only when If-Match is absent.
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = parse_etag_list(if_match)
        # "*" is true whenever a current representation exists, which it does here.
        if tags is None or not (tags == ["*"] or any(_strong_match(t, etag) for t in tags)):
            return 412
    else:
        ius = headers.get("if-unmodified-since")
        if ius is not None:
            # An invalid date, including a list of dates, is ignored (§13.1.4).
            date = parse_http_date(ius)
            if date is not None and last_modified > date:
                return 412
    # Step 3: If-None-Match; step 4 (If-Modified-Since) only when If-None-Match is absent.
    get_or_head = method in ("GET", "HEAD")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = parse_etag_list(if_none_match)
        if tags is not None and (tags == ["*"] or any(_weak_match(t, etag) for t in tags)):
            return 304 if get_or_head else 412
    elif get_or_head:
        ims = headers.get("if-modified-since")
        if ims is not None:
            # Ignored unless a single valid HTTP-date (§13.1.3); false (-> 304) when the
            # representation was last modified at or before that date.
            date = parse_http_date(ims)
            if date is not None and last_modified <= date:
                return 304
    return None


def if_range_allows(value: str | None, etag: str, last_modified: int) -> bool:
    """Whether a Range request may be honoured given its If-Range value (§13.1.5).

    True when there is no If-Range, when its entity-tag strongly matches ``etag`` (a weak tag
    never does), or when its HTTP-date is exactly ``last_modified``; False otherwise,
    including a malformed value, so that the full representation is sent with 200.
    """
    if value is None:
        return True
    v = value.strip(" \t")
    if v.startswith(('"', "W/")):
        m = _ETAG_RE.fullmatch(v)
        return m is not None and _strong_match(v, etag)
    # An HTTP-date counts as a strong validator here only on an exact match with
    # Last-Modified, which §13.1.5 permits via §8.8.2.2 for an origin-held timestamp.
    date = parse_http_date(v)
    return date is not None and date == last_modified
