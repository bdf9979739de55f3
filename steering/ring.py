"""Consistent hashing of content keys over a site's healthy edges.

The steering service answers "which edge should this player fetch this title from". Within a
site the answer must be *sticky* (the same title goes to the same edge so its cache stays hot),
*capacity-aware* (an edge with twice the capacity takes twice the titles), *minimally
disruptive* (losing an edge moves only that edge's titles) and *safe under hot titles* (one
viral title must spill over to the next edge instead of melting the first).

Scheme: weighted rendezvous hashing (highest random weight, HRW). Every (key, member) pair gets
a pseudo-random score and members are ranked by score. We chose it over a classic ring with
virtual nodes because:

* balance is that of independent random choices (peak-to-mean ~1.01 at N=10, ~1.05 at N=50
  over 100k keys, the multinomial floor), where a ring with 1000 points per edge adds a few
  percent of arc-length error per edge on top;
* removing a member changes no other member's score, so only keys whose first choice was that
  member move, and adding one moves only keys the new member now wins: both by construction,
  not statistically;
* the full ranking is the natural ordered list of fallbacks for a ranked steering answer;
* its cost is O(N) hashes per key, which at site sizes (N <= ~50) is a few microseconds, and
  there is no ring of N * 1000 points to rebuild on every fleet change.

Weights use the logarithmic method (Schindelhauer & Schomaker): with u uniform in (0, 1) the
score -w / ln(u) makes member i win with probability w_i / sum(w), exactly. We rank by the
equivalent ln(u) / w (larger is better), which avoids a division.

Hashes are xxh3-64 with fixed seeds, never Python's ``hash()``: ``hash()`` of a str is salted
per process (PYTHONHASHSEED), and steering replicas and restarts must agree on every answer.

``BoundedLoads`` adds consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
2018) on top of the ranking: a member whose load would exceed c times its fair share is skipped
in rank order, so hot keys spill to the key's next-preferred edge.

The module is pure: no I/O, no clock, no event loop. Callers build a new ``Ring`` whenever the
set of healthy edges or their weights change.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import xxhash

__all__ = ["BoundedLoads", "Member", "Ring"]

# Seed for deriving a member's 64-bit seed from its id. Changing it reshuffles every key on
# every site at once, which is a fleet-wide cache flush: never change it.
_MEMBER_SEED = 0x6F70656E63646E31  # b"opencdn1"

_hash = xxhash.xxh3_64_intdigest

# ln(u) with u = (top 53 bits + 0.5) / 2**53: exact as a double, strictly inside (0, 1), so the
# log is finite and negative and there is no division by zero anywhere.
_TWO_M53 = 2.0**-53


def _encode(key: str) -> bytes:
    # surrogatepass: keys come from URLs and must never make steering raise; lone surrogates
    # still get a stable, distinct encoding.
    return key.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class Member:
    """One edge of a site: its stable id and its relative capacity."""

    id: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"member id must be a non-empty string, got {self.id!r}")
        # NaN and inf would silently break the score order, so they are rejected too.
        if not isinstance(self.weight, int | float) or not (
            math.isfinite(self.weight) and self.weight > 0
        ):
            raise ValueError(
                f"member {self.id!r}: weight must be finite and > 0, got {self.weight!r}"
            )


class Ring:
    """Immutable weighted rendezvous ranking of members for content keys."""

    __slots__ = ("_equal", "_ids", "_index", "_pairs", "_seeds", "_shares", "_weights")

    def __init__(self, members: Iterable[Member]) -> None:
        # Sort by id so the answer does not depend on the order the caller listed the edges
        # in (e.g. dict order of a health report); ties in score, vanishingly rare with 64-bit
        # hashes, then also break the same way in every process.
        ms = sorted(members, key=lambda m: m.id)
        if not ms:
            raise ValueError("a ring needs at least one member")
        for a, b in itertools.pairwise(ms):
            if a.id == b.id:
                raise ValueError(f"duplicate member id {a.id!r}")
        self._ids: tuple[str, ...] = tuple(m.id for m in ms)
        self._index: dict[str, int] = {m: i for i, m in enumerate(self._ids)}
        self._weights: tuple[float, ...] = tuple(float(m.weight) for m in ms)
        # A member's seed depends only on its own id, so adding or removing another member
        # cannot change its scores: that is what makes disruption minimal.
        self._seeds: tuple[int, ...] = tuple(_hash(_encode(m), _MEMBER_SEED) for m in self._ids)
        total = math.fsum(self._weights)
        self._shares: tuple[float, ...] = tuple(w / total for w in self._weights)
        # With equal weights the log transform is monotone, so ranking by the raw 64-bit hash
        # gives the same order with integer-only arithmetic: faster, and bit-exact on every
        # platform (no libm in the path).
        self._equal = len(set(self._weights)) == 1
        self._pairs: tuple[tuple[int, float], ...] = tuple(
            (s, 1.0 / w) for s, w in zip(self._seeds, self._weights, strict=True)
        )

    # -- introspection -------------------------------------------------------------------

    @property
    def members(self) -> tuple[Member, ...]:
        """The members, sorted by id."""
        return tuple(Member(i, w) for i, w in zip(self._ids, self._weights, strict=True))

    @property
    def ids(self) -> tuple[str, ...]:
        return self._ids

    def share(self, member: str) -> float:
        """The member's weight as a fraction of the total (its expected share of keys)."""
        return self._shares[self._index[member]]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, member: object) -> bool:
        return member in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __repr__(self) -> str:
        return f"Ring({list(self.members)!r})"

    # -- lookups -------------------------------------------------------------------------

    def _scores(self, key: str) -> list[int] | list[float]:
        kb = _encode(key)
        if self._equal:
            return [_hash(kb, s) for s in self._seeds]
        log = math.log
        return [log(((_hash(kb, s) >> 11) + 0.5) * _TWO_M53) * iw for s, iw in self._pairs]

    def _order(self, key: str) -> list[int]:
        """Member indices, most preferred first."""
        scores = self._scores(key)
        # sorted() is stable and indices are in id order, so equal scores break by id.
        return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)

    def rank(self, key: str, n: int | None = None) -> list[str]:
        """All member ids (or the first ``n``) in preference order for ``key``."""
        if n is not None:
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
            if n == 1:
                return [self.pick(key)]
        ids = self._ids
        order = self._order(key)
        if n is not None:
            order = order[:n]
        return [ids[i] for i in order]

    def pick(self, key: str) -> str:
        """The most preferred member for ``key`` (``rank(key)[0]``, without the sort)."""
        scores = self._scores(key)
        # max() returns the first maximal index, i.e. the same tie-break as the stable sort.
        best = max(range(len(scores)), key=scores.__getitem__)
        return self._ids[best]


class BoundedLoads:
    """Consistent hashing with bounded loads over a ``Ring``.

    Tracks the current load of each member (active sessions, or decisions in a sliding window:
    the caller decides what one unit is and calls ``release`` when it ends). A new assignment
    goes to the first member in the key's rank order whose load stays within its bound:

        load + 1 <= ceil(c * (total_load + 1) * share)

    where ``share`` is the member's weight over the ring's total weight. Since c >= 1 the
    bounds sum to at least total_load + 1, so some member always has room. Without releases
    this keeps every member at or below ceil(c * total * share) at all times; a release can
    leave a member above the (now smaller) bound, which then only stops it taking new keys.

    Not thread-safe; steering keeps one per site inside its event loop.
    """

    __slots__ = ("_c", "_caps", "_loads", "_min", "_ring", "_total", "loads")

    def __init__(self, ring: Ring, c: float = 1.25, *, min_bound: int = 1) -> None:
        """``min_bound``: every member may take at least this much load before it spills.
        With few units in play the ceiling bound is tiny (at total 1 it is 1 for all but the
        biggest share), which would send a title's second viewer elsewhere for no reason:
        stickiness matters more than balance until a site carries real load."""
        if not (isinstance(c, int | float) and math.isfinite(c) and c >= 1.0):
            raise ValueError(f"c must be a finite number >= 1, got {c!r}")
        if min_bound < 1:
            raise ValueError(f"min_bound must be >= 1, got {min_bound!r}")
        self._min = min_bound
        self._ring = ring
        self._c = float(c)
        # c * share precomputed per member in ring order: the bound is this times (total + 1).
        self._caps: tuple[float, ...] = tuple(self._c * s for s in ring._shares)
        self._loads: list[int] = [0] * len(ring)
        self._total = 0
        self.loads: Mapping[str, int] = _LoadsView(ring._ids, self._loads)

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def c(self) -> float:
        return self._c

    @property
    def total(self) -> int:
        return self._total

    def bound(self, member: str) -> int:
        """The most load ``member`` may have after the next assignment."""
        i = self._ring._index[member]
        return max(self._min, math.ceil(self._caps[i] * (self._total + 1)))

    def _fits(self, i: int, nxt: int) -> bool:
        return self._loads[i] + 1 <= max(self._min, math.ceil(self._caps[i] * nxt))

    def assign(self, key: str) -> str:
        """Pick a member for ``key`` and count one unit of load on it."""
        nxt = self._total + 1
        order = self._ring._order(key)
        chosen = next((i for i in order if self._fits(i, nxt)), None)
        if chosen is None:  # pragma: no cover - impossible for c >= 1, see the class docstring
            # Float rounding is the only conceivable way here; fall back to the least loaded
            # relative to share rather than fail a player's request.
            chosen = min(order, key=lambda i: self._loads[i] / self._caps[i])
        self._loads[chosen] += 1
        self._total = nxt
        return self._ring._ids[chosen]

    def release(self, member: str) -> None:
        """Remove one unit of load from ``member`` (a session ended or left the window)."""
        i = self._ring._index.get(member)
        if i is None:
            raise KeyError(member)
        if self._loads[i] <= 0:
            raise ValueError(f"member {member!r} has no load to release")
        self._loads[i] -= 1
        self._total -= 1

    def ranked(self, key: str) -> list[str]:
        """The key's rank order with members that could not take one more unit moved last.

        Both groups keep their rank order, so a ranked steering answer still prefers the
        key's sticky edges, just not ones already over their bound. Does not count load.
        """
        nxt = self._total + 1
        ids = self._ring._ids
        ok: list[str] = []
        over: list[str] = []
        for i in self._ring._order(key):
            (ok if self._fits(i, nxt) else over).append(ids[i])
        return ok + over


class _LoadsView(Mapping[str, int]):
    """Read-only live view of the loads, so callers cannot desynchronise the total."""

    __slots__ = ("_ids", "_index", "_loads")

    def __init__(self, ids: tuple[str, ...], loads: list[int]) -> None:
        self._ids = ids
        self._index = MappingProxyType({m: i for i, m in enumerate(ids)})
        self._loads = loads

    def __getitem__(self, member: str) -> int:
        return self._loads[self._index[member]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return repr(dict(self))
