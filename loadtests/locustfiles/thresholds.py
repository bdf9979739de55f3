"""Pass/fail thresholds of a locust run: pure, so they are tested without gevent.

A run fails when

* its overall error rate (failed requests / all requests, in percent) is above
  ``--max-error-rate``;
* the 95th percentile response time of a request name is above its limit: ``--p95 SPEC`` gives
  per-name limits, ``--p95-default`` the limit of every other name;
* a name given in ``--p95`` made no request at all (a misspelt name would otherwise never be
  checked), or the run made no request at all.

Requests named ``... (429 rate limited)`` (a sign-in the control plane's rate limit refused,
waited out and tried again: not a failure) are left out of the error rate and do not count as
work done: a run whose users never got past the limiter made no request.

``SPEC`` is ``NAME=MS`` items separated by commas, e.g. ``"GET segment=800,POST
/v1/playback=300"``; ``MS`` may be ``off`` to exempt a name from the default. A NAME matches a
stats entry's name, or its method and name (``GET /v1/search`` matches the entry named
``/v1/search`` of method GET, and the entry named ``GET /v1/search`` whatever its method).
Request names hold no comma and no ``=`` (they are route templates), so the split is
unambiguous.

Locust's percentiles come from its rounded response-time buckets (whole milliseconds below
100 ms, then 10 ms, then 100 ms steps), so a limit is compared with that figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["RATE_LIMITED", "Row", "Thresholds", "evaluate", "parse_default", "parse_p95"]

RATE_LIMITED = " (429 rate limited)"  # the suffix of a rate-limited request's name


@dataclass(frozen=True, slots=True)
class Row:
    """One stats entry: what locust's ``StatsEntry`` says of a request name."""

    method: str
    name: str
    requests: int
    failures: int
    p95_ms: float


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_error_rate: float = 1.0  # percent of all requests; above it the run fails
    p95_default_ms: float | None = 2000.0  # None: names without their own limit are unchecked
    p95_ms: Mapping[str, float | None] = field(default_factory=dict)  # None: exempt


def _limit(text: str, item: str) -> float | None:
    value = text.strip().lower()
    if value == "off":
        return None
    try:
        ms = float(value)
    except ValueError:
        raise ValueError(f"--p95 {item!r}: {text.strip()!r} is not milliseconds or 'off'") from None
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"--p95 {item!r}: the limit must be a number of milliseconds >= 0")
    return ms


def parse_p95(spec: str) -> dict[str, float | None]:
    """``"GET segment=800,POST /v1/playback=off"`` -> ``{"GET segment": 800.0, ...: None}``."""
    out: dict[str, float | None] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, value = item.rpartition("=")
        name = " ".join(name.split())  # "GET  segment" is "GET segment"
        if not eq or not name:
            raise ValueError(f"--p95 {item!r}: expected NAME=MILLISECONDS")
        if name in out:
            raise ValueError(f"--p95: {name!r} is given twice")
        out[name] = _limit(value, item)
    return out


def parse_default(text: str) -> float | None:
    """``--p95-default``: milliseconds, or ``off``."""
    return _limit(text, "default")


def _matches(key: str, row: Row) -> bool:
    return key == row.name or key == f"{row.method} {row.name}"


def evaluate(rows: Iterable[Row], t: Thresholds) -> list[str]:
    """Every threshold the run broke, as one line each; empty when it passed."""
    rows = list(rows)
    waits = sum(r.requests for r in rows if r.name.endswith(RATE_LIMITED))
    rows = [r for r in rows if not r.name.endswith(RATE_LIMITED)]
    failed: list[str] = []
    total = sum(r.requests for r in rows)
    errors = sum(r.failures for r in rows)
    if total == 0:
        why = f" ({waits} sign-in attempts were rate limited)" if waits else ""
        return [f"the run made no request at all{why}"]
    rate = 100.0 * errors / total
    if rate > t.max_error_rate:
        failed.append(
            f"error rate {rate:.2f}% ({errors} of {total} requests) is above "
            f"--max-error-rate {t.max_error_rate:g}%"
        )
    for key in t.p95_ms:
        if not any(_matches(key, r) and r.requests for r in rows):
            failed.append(f"p95 of {key!r}: no request of that name was made (a typo?)")
    for r in sorted(rows, key=lambda r: (r.name, r.method)):
        if not r.requests:
            continue
        keys = [k for k in t.p95_ms if _matches(k, r)]
        if keys:
            limit, source = t.p95_ms[keys[0]], f"--p95 {keys[0]}"
        else:
            limit, source = t.p95_default_ms, "--p95-default"
        if limit is not None and r.p95_ms > limit:
            failed.append(
                f"p95 of {r.name!r} ({r.method}) is {r.p95_ms:g} ms, above {limit:g} ms "
                f"({source}; {r.requests} requests)"
            )
    return failed
