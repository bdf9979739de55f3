"""Tables for edge.units: what each unit means, and what is refused and why."""

from __future__ import annotations

import math

import pytest

from edge.units import UnitError, format_size, parse_duration, parse_rate, parse_size

KiB = 1024
MiB = KiB**2
GiB = KiB**3
TiB = KiB**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500GiB", 500 * GiB),
        ("2MiB", 2 * MiB),
        ("64KiB", 64 * KiB),
        ("1TiB", TiB),
        ("1PiB", 1024 * TiB),
        ("1.5GB", 1_500_000_000),
        ("10 MB", 10_000_000),
        ("1kB", 1000),
        ("1KB", 1000),
        ("2TB", 2 * 10**12),
        ("4096", 4096),
        ("0", 0),
        ("7B", 7),
        (4096, 4096),
        (0, 0),
        # Single letters are binary, as in nginx and coreutils.
        ("500g", 500 * GiB),
        ("500G", 500 * GiB),
        ("64k", 64 * KiB),
        ("2M", 2 * MiB),
        ("1T", TiB),
        # Size units are case-insensitive: there are no bit units to confuse them with.
        ("500gib", 500 * GiB),
        ("500GIB", 500 * GiB),
        ("10mb", 10_000_000),
        # Fractions with a unit are truncated to whole bytes.
        ("1.5KiB", 1536),
        ("0.1KiB", 102),
        (".5MiB", MiB // 2),
        ("  2MiB  ", 2 * MiB),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("lots", "a whole number of bytes, or a number with a unit"),
        ("", "empty"),
        ("   ", "empty"),
        ("-5", "must not be negative"),
        (-5, "must not be negative"),
        ("-1GiB", "must not be negative"),
        ("5 parsecs", 'unknown unit "parsecs"'),
        ("5Gb/s", 'unknown unit "Gb/s"'),
        ("1.5", "a byte count must be whole"),
        ("1.5B", "a byte count must be whole"),
        ("nan", "a number with a unit"),
        ("inf", "a number with a unit"),
        ("1e9", 'unknown unit "e9"'),
        ("1,000", "unknown unit"),
        ("GiB", "a number with a unit"),
        (1.5e9, "whole number of bytes or use a unit"),
        (math.nan, "whole number of bytes or use a unit"),
    ],
)
def test_parse_size_rejects(value: object, reason: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_size(value)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith('expected a size like "500GiB", got ')
    assert reason in message
    assert info.value.value == value or (isinstance(value, float) and math.isnan(value))


@pytest.mark.parametrize("value", [True, False, None, [1], {"a": 1}])
def test_parse_size_rejects_non_scalars(value: object) -> None:
    # YAML turns `yes` into True, and bool is an int: it must not quietly become 1 byte.
    with pytest.raises(UnitError, match="expected a size"):
        parse_size(value)  # type: ignore[arg-type]


def test_unit_error_names_key_and_value() -> None:
    with pytest.raises(UnitError) as info:
        parse_size("lots", key="cache.dirs[0].size")
    assert str(info.value).startswith(
        'cache.dirs[0].size: expected a size like "500GiB", got "lots"'
    )
    assert info.value.key == "cache.dirs[0].size"
    assert info.value.value == "lots"
    assert not info.value.detail.startswith("cache.dirs")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0.25s", 0.25),
        ("10", 10.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("0s", 0.0),
        (10, 10.0),
        (2.5, 2.5),
        (0, 0.0),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        (" 10 s ", 10.0),
    ],
)
def test_parse_duration(value: str | int | float, expected: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "seconds as a plain number"),
        ("", "empty"),
        ("-1s", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        (math.nan, "must be a finite number"),
        (math.inf, "must be a finite number"),
        ("nan", "seconds as a plain number"),
        # Upper case is refused: nginx reads "1M" as a month.
        ("1M", 'unknown unit "M"'),
        ("10S", 'unknown unit "S"'),
        ("10 sec", 'unknown unit "sec"'),
        ("1m30", "30 has no unit"),
        ("1s1m", "largest first"),
        ("1m1m", "largest first"),
    ],
)
def test_parse_duration_rejects(value: object, reason: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert str(info.value).startswith('expected a duration like "10s", got ')
    assert reason in str(info.value)


@pytest.mark.parametrize("value", [True, False, None, ["1s"]])
def test_parse_duration_rejects_non_scalars(value: object) -> None:
    with pytest.raises(UnitError, match="expected a duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10Gbit/s", 1_250_000_000),
        ("10Gbps", 1_250_000_000),
        ("10gbit/s", 1_250_000_000),
        ("800Mbit/s", 100_000_000),
        ("800mbps", 100_000_000),
        ("100kbit/s", 12_500),
        ("1.5Gbit/s", 187_500_000),
        ("8bit/s", 1),
        ("8Mibit/s", MiB),
        ("1GiB/s", GiB),
        ("125MB/s", 125_000_000),
        ("125 MB/s", 125_000_000),
        ("1kB/s", 1000),
        ("100B/s", 100),
        ("1000", 1000),
        (1000, 1000),
        (0, 0),
    ],
)
def test_parse_rate(value: str | int, expected: int) -> None:
    assert parse_rate(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # Bits and bytes differ by 8x: every spelling that could be either is refused.
        ("10Mb/s", "ambiguous: write 10Mbit/s for bits or 10MB/s for bytes"),
        ("10MBps", "ambiguous"),
        ("10G/s", "ambiguous"),
        ("10Gbit", 'missing "/s"'),
        ("10GB", 'missing "/s"'),
        ("fast", "bytes per second as a whole number"),
        ("10 furlongs/s", 'unknown unit "furlongs/s"'),
        ("-1Gbit/s", "must not be negative"),
        (-1, "must not be negative"),
        ("", "empty"),
        ("1.5", "a byte count must be whole"),
        (1.5, "whole number of bytes"),
    ],
)
def test_parse_rate_rejects(value: object, reason: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_rate(value)  # type: ignore[arg-type]
    assert str(info.value).startswith('expected a rate like "10Gbit/s", got ')
    assert reason in str(info.value)


@pytest.mark.parametrize("value", [True, None, ["1Gbit/s"]])
def test_parse_rate_rejects_non_scalars(value: object) -> None:
    with pytest.raises(UnitError, match="expected a rate"):
        parse_rate(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (2 * MiB, "2.0 MiB"),
        (MiB - 1, "1.0 MiB"),
        (500 * GiB, "500.0 GiB"),
        (3 * TiB, "3.0 TiB"),
        (1024**6, "1.0 EiB"),
        (1024**7, "1024.0 EiB"),
        (-2 * MiB, "-2.0 MiB"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 64 * KiB, 2 * MiB, 500 * GiB, 7 * TiB])
def test_format_size_round_trips_for_whole_units(n: int) -> None:
    assert parse_size(format_size(n).replace(" ", "")) == n
