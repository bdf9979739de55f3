"""Parsing of the human units used in configuration: sizes, durations and rates.

Everything here is pure (no I/O) so the config loader, CLI flags and tests share one set of rules.

Sizes (``parse_size``) are bytes, written as a whole number or a number with a unit:

* ``B`` - bytes.
* ``KiB MiB GiB TiB PiB`` - powers of 1024 (IEC).
* ``K M G T P`` - also powers of 1024, as in nginx (``max_size=500g``) and GNU coreutils
  (``truncate -s 1G``), so values copied from those configs mean what they meant there.
* ``kB KB MB GB TB PB`` - powers of 1000 (SI), as disk vendors and coreutils use them.

Size units are case-insensitive (``500gib`` == ``500GiB``): a size has no bit-based units,
so case cannot change the meaning. A fraction needs a unit (``1.5GB``) and is truncated to whole
bytes; a bare number is a count of bytes and must be whole.

Durations (``parse_duration``) are seconds: a plain number, or numbers with the units ``ms s m h
d``, optionally combined largest first (``1m30s``, ``1h 30m``). Duration units are lowercase only,
because in nginx ``M`` means months and a silently different meaning is worse than an error.

Rates (``parse_rate``) are bytes per second: a plain whole number, a bit rate (``10Gbit/s``,
``10Gbps``, ``800Mbit/s``; ``k M G T`` powers of 1000 as network links are sold, ``Ki Mi Gi Ti``
powers of 1024) or a byte rate (any size unit containing ``B`` followed by ``/s``: ``125MB/s``,
``1GiB/s``). Because bits and bytes differ by 8x, the ``b``/``B`` case is significant in rates
and every spelling where it could be misread (``Mb/s``, ``MBps``, ``10G/s``) is rejected rather
than guessed.

Negative values, NaN/infinity, booleans (YAML reads ``yes``/``on`` as true) and empty strings are
rejected everywhere.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Final

__all__ = [
    "UnitError",
    "describe_value",
    "format_size",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

_KIB: Final = 1024

# Keys are lowercase: size units are matched case-insensitively.
_SIZE_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": _KIB,
    "kib": _KIB,
    "m": _KIB**2,
    "mib": _KIB**2,
    "g": _KIB**3,
    "gib": _KIB**3,
    "t": _KIB**4,
    "tib": _KIB**4,
    "p": _KIB**5,
    "pib": _KIB**5,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
}

_SIZE_HELP: Final = (
    "a whole number of bytes, or a number with a unit: "
    "B; KiB, MiB, GiB, TiB, PiB or K, M, G, T, P (powers of 1024); "
    "kB, MB, GB, TB, PB (powers of 1000)"
)

_DURATION_UNITS: Final[dict[str, Decimal]] = {
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}

_DURATION_HELP: Final = (
    "seconds as a plain number, or a number with a unit: ms, s, m, h, d (lowercase), "
    'optionally combined largest first like "1m30s"'
)

# Rate prefixes are case-insensitive (tc writes "mbit", datasheets "Mbit"); the b/B that
# follows is not, see the module docstring.
_BIT_PREFIXES: Final[dict[str, int]] = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": _KIB,
    "mi": _KIB**2,
    "gi": _KIB**3,
    "ti": _KIB**4,
}

_RATE_HELP: Final = (
    "bytes per second as a whole number, a bit rate like 10Gbit/s, 10Gbps, 800Mbit/s "
    "(k, M, G, T = powers of 1000; Ki, Mi, Gi, Ti = powers of 1024) "
    "or a byte rate like 125MB/s, 1GiB/s (a size unit with an upper-case B, then /s)"
)

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_UNIT_RE: Final = re.compile(rf"({_NUMBER})\s*(\S*)", re.ASCII)
_DURATION_PART_RE: Final = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)", re.ASCII)
_RATE_BITS_RE: Final = re.compile(r"([A-Za-z]{0,2}?)(?:bit/s|bits/s|bps)", re.ASCII)
_RATE_BYTES_RE: Final = re.compile(r"([A-Za-z]{0,2}?)B/s", re.ASCII)


class UnitError(ValueError):
    """A value that is not a valid size, duration or rate.

    ``detail`` says what was wrong without the key, so callers that name the location
    themselves (the config loader) can reuse it; ``str()`` is ``"key: detail"``.
    """

    def __init__(self, detail: str, *, value: object, key: str = "") -> None:
        self.detail = detail
        self.value = value
        self.key = key
        super().__init__(f"{key}: {detail}" if key else detail)


def describe_value(value: object) -> str:
    """Show a value the way the operator wrote it, with its type where that is the surprise.

    YAML turns ``yes`` into true and ``12:30`` into 750, so a type error is only
    understandable if it says what the file actually produced.
    """
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _check_number_type(value: object, what: str, example: str, key: str) -> None:
    """Reject bools and non-scalars up front; bool is an int subclass and would parse as 0/1."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnitError(
            f"expected {what} like {example}, got {describe_value(value)}", value=value, key=key
        )


def _fail(what: str, example: str, value: object, reason: str, key: str) -> UnitError:
    return UnitError(
        f"expected {what} like {example}, got {describe_value(value)} ({reason})",
        value=value,
        key=key,
    )


def _strip_sign(text: str, what: str, example: str, value: object, key: str) -> str:
    text = text.strip()
    if not text:
        raise _fail(what, example, value, "empty", key)
    if text.startswith("-"):
        raise _fail(what, example, value, "must not be negative", key)
    return text


def parse_size(value: str | int, *, key: str = "") -> int:
    """Parse a size in bytes: ``"500GiB"``, ``"1.5GB"``, ``"10 MB"``, ``"4096"``, ``4096``."""
    what, example = "a size", '"500GiB"'
    _check_number_type(value, what, example, key)
    if isinstance(value, float):
        # YAML only yields a float for "1.5e9"-style input; a byte count should be written
        # exactly, so ask for a unit rather than guess at rounding.
        raise _fail(what, example, value, "write a whole number of bytes or use a unit", key)
    if isinstance(value, int):
        if value < 0:
            raise _fail(what, example, value, "must not be negative", key)
        return value
    text = _strip_sign(value, what, example, value, key)
    match = _NUMBER_UNIT_RE.fullmatch(text)
    if match is None:
        raise _fail(what, example, value, _SIZE_HELP, key)
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise _fail(what, example, value, f"unknown unit {json.dumps(unit)}; {_SIZE_HELP}", key)
    amount = Decimal(number)
    if multiplier == 1 and amount != amount.to_integral_value():
        raise _fail(what, example, value, "a byte count must be whole", key)
    return int(amount * multiplier)


def parse_duration(value: str | int | float, *, key: str = "") -> float:
    """Parse a duration in seconds: ``"500ms"``, ``"10s"``, ``"2m"``, ``"1h30m"``, ``1.5``."""
    what, example = "a duration", '"10s"'
    _check_number_type(value, what, example, key)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(what, example, value, "must be a finite number", key)
        if value < 0:
            raise _fail(what, example, value, "must not be negative", key)
        return float(value)
    text = _strip_sign(value, what, example, value, key)
    if re.fullmatch(_NUMBER, text, re.ASCII):
        return float(Decimal(text))
    total = Decimal(0)
    pos = 0
    last_unit_rank = -1
    ranks = list(_DURATION_UNITS)
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise _fail(what, example, value, _DURATION_HELP, key)
        number, unit = match.groups()
        if not unit:
            raise _fail(what, example, value, f"{number} has no unit; {_DURATION_HELP}", key)
        if unit not in _DURATION_UNITS:
            raise _fail(
                what, example, value, f"unknown unit {json.dumps(unit)}; {_DURATION_HELP}", key
            )
        rank = ranks.index(unit)
        if rank <= last_unit_rank:
            # "1s1m" or "1m1m" is almost certainly a typo, not an intended sum.
            raise _fail(what, example, value, "combine units largest first, each once", key)
        last_unit_rank = rank
        total += Decimal(number) * _DURATION_UNITS[unit]
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return float(total)


def parse_rate(value: str | int, *, key: str = "") -> int:
    """Parse a rate in bytes per second: ``"10Gbit/s"``, ``"10Gbps"``, ``"125MB/s"``, ``1000``."""
    what, example = "a rate", '"10Gbit/s"'
    _check_number_type(value, what, example, key)
    if isinstance(value, float):
        raise _fail(what, example, value, "write a whole number of bytes or use a unit", key)
    if isinstance(value, int):
        if value < 0:
            raise _fail(what, example, value, "must not be negative", key)
        return value
    text = _strip_sign(value, what, example, value, key)
    match = _NUMBER_UNIT_RE.fullmatch(text)
    if match is None:
        raise _fail(what, example, value, _RATE_HELP, key)
    number, unit = match.groups()
    amount = Decimal(number)
    if not unit:
        if amount != amount.to_integral_value():
            raise _fail(what, example, value, "a byte count must be whole", key)
        return int(amount)
    bits = _RATE_BITS_RE.fullmatch(unit)
    if bits is not None and bits.group(1).lower() in _BIT_PREFIXES:
        return int(amount * _BIT_PREFIXES[bits.group(1).lower()] / 8)
    byte_rate = _RATE_BYTES_RE.fullmatch(unit)
    if byte_rate is not None:
        prefix = byte_rate.group(1).lower()
        multiplier = _SIZE_UNITS.get(prefix + "b") if prefix else 1
        if multiplier is not None:
            return int(amount * multiplier)
    raise _fail(what, example, value, _rate_hint(number, unit), key)


def _rate_hint(number: str, unit: str) -> str:
    """Explain the likely mix-up; rates are where a wrong guess costs a factor of 8."""
    for suffix in ("b/s", "Bps", "/s"):
        prefix = unit.removesuffix(suffix)
        if prefix != unit and prefix.lower() in _BIT_PREFIXES:
            return (
                f"ambiguous: write {number}{prefix}bit/s for bits or {number}{prefix}B/s for "
                f"bytes per second"
            )
    with_per_second = unit + "/s"
    if _RATE_BITS_RE.fullmatch(with_per_second) or _RATE_BYTES_RE.fullmatch(with_per_second):
        return f'missing "/s": write {number}{with_per_second} for a rate'
    return f"unknown unit {json.dumps(unit)}; {_RATE_HELP}"


_FORMAT_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(n: int) -> str:
    """Format a byte count for humans with binary units: ``format_size(2 * 1024**2) == "2.0 MiB"``."""
    sign = "-" if n < 0 else ""
    magnitude = abs(n)
    if magnitude < _KIB:
        return f"{sign}{magnitude} B"
    exponent = 0
    scaled = float(magnitude)
    while exponent < len(_FORMAT_UNITS) - 1 and round(scaled, 1) >= _KIB:
        # Compare the rounded value so 1023.96 KiB becomes "1.0 MiB", never "1024.0 KiB".
        scaled /= _KIB
        exponent += 1
    return f"{sign}{scaled:.1f} {_FORMAT_UNITS[exponent]}"
