"""The arithmetic of the load tests: pure functions and small classes with no I/O, no locust
and no gevent, so tests/test_locust.py checks them with tables.

Zipf popularity, weighted mixes, think times, account and path lists, sharding across
distributed workers, the choice of a variant for a bitrate, pacing a viewer's downloads at the
rate it plays, ranges and their Content-Range, and the cold set's single walk.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "ColdWalk",
    "Weighted",
    "Zipf",
    "check_content_range",
    "closest_variant",
    "fetch_wait",
    "heartbeat_every",
    "parse_accounts",
    "parse_mix",
    "parse_paths",
    "parse_seconds_range",
    "random_address",
    "random_range",
    "search_word",
    "shard",
    "streams_share",
]

_T = TypeVar("_T")


class Zipf:
    """Ranks 0..n-1 drawn with P(rank r) proportional to 1 / (r + 1) ** alpha.

    alpha 0 is uniform; VoD studies report 0.6-1.0 over titles (loadtests/README.md, "The
    workload model"). The cumulative weights are built once, each draw is a bisection."""

    def __init__(self, n: int, alpha: float) -> None:
        if n < 1:
            raise ValueError("Zipf needs at least one item")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError("the Zipf exponent must be >= 0")
        self.n = n
        self.alpha = alpha
        weights = (1.0 / float(r + 1) ** alpha for r in range(n))
        self._cum: list[float] = list(itertools.accumulate(weights))

    def probability(self, rank: int) -> float:
        total = self._cum[-1]
        before = self._cum[rank - 1] if rank else 0.0
        return (self._cum[rank] - before) / total

    def pick(self, rng: random.Random) -> int:
        x = rng.random() * self._cum[-1]
        return min(bisect.bisect_right(self._cum, x), self.n - 1)


@dataclass(frozen=True)
class Weighted:
    """A weighted choice among names (a --mix)."""

    weights: dict[str, float]
    _names: tuple[str, ...] = field(init=False, repr=False)
    _cum: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = tuple(n for n, w in self.weights.items() if w > 0)
        if not names:
            raise ValueError("the mix has no operation with a weight above 0")
        object.__setattr__(self, "_names", names)
        object.__setattr__(
            self, "_cum", tuple(itertools.accumulate(self.weights[n] for n in names))
        )

    def pick(self, rng: random.Random) -> str:
        x = rng.random() * self._cum[-1]
        return self._names[min(bisect.bisect_right(self._cum, x), len(self._names) - 1)]


def parse_mix(spec: str, known: Sequence[str]) -> dict[str, float]:
    """``"steer=5,search=2"`` -> weights for the names given; names left out weigh 0.

    Every name must be one of ``known`` (a typo is an error, not a silent 0)."""
    out: dict[str, float] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq:
            raise ValueError(f"--mix {item!r}: expected NAME=WEIGHT")
        if name not in known:
            raise ValueError(f"--mix: unknown operation {name!r} (known: {', '.join(known)})")
        if name in out:
            raise ValueError(f"--mix: {name!r} is given twice")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--mix {item!r}: {value.strip()!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"--mix {item!r}: a weight must be a number >= 0")
        out[name] = weight
    if not any(out.values()):
        raise ValueError("--mix: no operation has a weight above 0")
    return out


def parse_seconds_range(text: str, what: str) -> tuple[float, float]:
    """``"2"`` -> (2, 2); ``"1-5"`` -> (1, 5): seconds, low <= high, both >= 0."""
    lo_text, dash, hi_text = text.strip().partition("-")
    try:
        lo = float(lo_text)
        hi = float(hi_text) if dash else lo
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected SECONDS or LOW-HIGH") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise ValueError(f"{what} {text!r}: need 0 <= LOW <= HIGH")
    return lo, hi


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield n, line


def parse_accounts(text: str, source: str) -> list[tuple[str, str]]:
    """An accounts file: ``email,password`` lines; ``#`` comments, blank lines and a first line
    ``email,password`` (a header) are skipped. Passwords may hold commas (split at the first),
    but not ``#``. Errors name the file and line, never the password."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in _lines(text):
        email, comma, password = line.partition(",")
        email, password = email.strip(), password.strip()
        if not out and email.lower() == "email" and password.lower() == "password":
            continue
        if not comma or not email or not password:
            raise ValueError(f"{source}:{n}: expected 'email,password'")
        if "@" not in email:
            raise ValueError(f"{source}:{n}: {email!r} is not an e-mail address")
        if email.lower() in seen:
            raise ValueError(f"{source}:{n}: {email!r} is listed twice")
        seen.add(email.lower())
        out.append((email, password))
    if not out:
        raise ValueError(f"{source}: no accounts in it")
    return out


_PATH_RE = re.compile(r"/v/[A-Za-z0-9_-]{1,64}/[^\s?#%]+")


def parse_paths(text: str, source: str) -> list[tuple[str, int | None]]:
    """A paths file: ``/v/<title>/<file> [size]`` lines (size in bytes, when known, lets every
    whole-object answer's length be checked); ``#`` comments, blank lines skipped."""
    out: list[tuple[str, int | None]] = []
    for n, line in _lines(text):
        fields = line.split()
        if len(fields) > 2 or not _PATH_RE.fullmatch(fields[0]) or "/../" in fields[0]:
            raise ValueError(f"{source}:{n}: expected '/v/<title>/<file> [size]'")
        size = None
        if len(fields) == 2:
            if not fields[1].isdigit():
                raise ValueError(f"{source}:{n}: size {fields[1]!r} is not a number of bytes")
            size = int(fields[1])
        out.append((fields[0], size))
    if not out:
        raise ValueError(f"{source}: no paths in it")
    return out


def shard(items: Sequence[_T], index: int, count: int) -> list[_T]:
    """Worker ``index`` of ``count``'s share (every ``count``-th item), so distributed workers
    never share an account's streams or walk the same cold objects."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker {index} of {count}")
    return list(items[index::count])


def streams_share(streams: int, index: int, count: int) -> int:
    """Worker ``index`` of ``count``'s part of one account's ``streams`` concurrent plays, when
    every worker plays on that same account (``--email``): the plan's limit holds across the
    whole run. 0 when there are more workers than streams."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker {index} of {count}")
    return streams // count + (1 if index < streams % count else 0)


def closest_variant(bandwidths: Sequence[int], kbps: float) -> int:
    """The index of the BANDWIDTH (bit/s) closest to ``kbps``; the lower one on a tie."""
    if not bandwidths:
        raise ValueError("no variant")
    target = kbps * 1000
    return min(range(len(bandwidths)), key=lambda i: (abs(bandwidths[i] - target), bandwidths[i]))


def fetch_wait(level_s: float, buffer_s: float, segment_s: float, speed: float) -> float:
    """Wall seconds to wait before fetching the next segment, as a player does that keeps at
    most ``buffer_s`` media seconds ahead of its playhead: the next ``segment_s`` must fit, so
    it waits until the level (media seconds buffered) has drained to ``buffer_s - segment_s``,
    which at ``speed`` media seconds per wall second takes the excess / speed. Once the buffer
    is full, segments are fetched one segment duration / speed apart: the viewer downloads at
    the bitrate it plays."""
    room = max(0.0, buffer_s - segment_s)
    return max(0.0, level_s - room) / speed


def heartbeat_every(asked_s: float, cap_s: float) -> float:
    """Seconds between progress events: what the playback answer asks (a third of the lease),
    or ``cap_s`` when that is sooner (0: no cap). Short smoke runs need the cap to see any."""
    return min(asked_s, cap_s) if cap_s > 0 else asked_s


def random_range(size: int | None, n: int, rng: random.Random) -> tuple[int, int]:
    """A ``bytes=start-end`` range (inclusive) of ``n`` bytes inside an object of ``size``
    bytes (the object's first ``n`` bytes when its size is not known; all of it when it is
    smaller than ``n``)."""
    if n < 1:
        raise ValueError("a range has at least one byte")
    if size is None:
        return 0, n - 1
    if size < 1:
        raise ValueError("an empty object has no range")
    if size <= n:
        return 0, size - 1
    start = rng.randrange(0, size - n + 1)
    return start, start + n - 1


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def check_content_range(
    header: str | None, start: int, end: int, size: int | None, body_len: int
) -> str | None:
    """What is wrong with a 206 to ``bytes=start-end`` (None when nothing is). An object
    shorter than asked ends the range early (RFC 9110 section 14.1.2), so with an unknown size
    the answer's end may be below ``end``."""
    m = _CONTENT_RANGE.fullmatch((header or "").strip())
    if m is None:
        return f"Content-Range {header!r} is not 'bytes a-b/size'"
    a, b = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if size is not None and total != size:
        return f"Content-Range total {m.group(3)} is not the object's {size} bytes"
    want_end = end if total is None else min(end, total - 1)
    if a != start or b != want_end:
        return f"Content-Range {a}-{b} is not the asked {start}-{want_end}"
    if body_len != b - a + 1:
        return f"body of {body_len} bytes for a range of {b - a + 1}"
    return None


def random_address(rng: random.Random, networks: Sequence[str]) -> str:
    """A random host address in one of ``networks`` (CIDRs), for steering's ``client=``."""
    net = ipaddress.ip_network(rng.choice(networks), strict=False)
    if net.num_addresses <= 2:
        return str(net[rng.randrange(net.num_addresses)])
    # Not the network or broadcast address of a v4 subnet: players have host addresses.
    return str(net[rng.randrange(1, net.num_addresses - 1)])


class ColdWalk(Generic[_T]):
    """The cold set, walked once in a shuffled order: each object is asked once, so it misses
    (unless something else filled it). When every object has been asked, the walk starts
    again (``exhausted`` says so): from then on the "misses" are likely hits, which the
    measured hit ratio shows."""

    def __init__(self, items: Sequence[_T], rng: random.Random) -> None:
        self._items = list(items)
        rng.shuffle(self._items)
        self._next = 0
        self.passes = 0  # complete walks so far

    def __len__(self) -> int:
        return len(self._items)

    @property
    def exhausted(self) -> bool:
        return self.passes > 0

    def next(self) -> _T:
        if not self._items:
            raise IndexError("the cold set is empty")
        item = self._items[self._next]
        self._next += 1
        if self._next == len(self._items):
            self._next = 0
            self.passes += 1
        return item


def search_word(name: str, rng: random.Random) -> str:
    """A word of a title's name a viewer would type: one of its two longest (the telling
    ones), at least two characters when the name has such a word."""
    words: list[str] = [w for w in re.findall(r"\w+", name) if len(w) >= 2]
    words = words or [name.strip() or "a"]
    longest = sorted(words, key=len, reverse=True)[:2]
    return rng.choice(longest)
