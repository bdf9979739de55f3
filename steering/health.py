"""Fleet health for steering: heartbeats plus active probes, with hysteresis.

Pure: no sockets, no event loop, no wall clock. The steering server feeds in
authenticated heartbeats (``Fleet.heartbeat``) and results of its own /healthz
probes (``Fleet.probe_result``), and calls ``Fleet.tick`` about once a second;
every decision uses the injected ``clock`` so tests drive time by hand.

The rules, and why:

* Fresh start: every configured edge is UNKNOWN and *usable*. A restarted
  steering service must answer players at once from config rather than send
  everyone away while it waits for the fleet to report in; it converges as
  heartbeats arrive (each one moves the edge to UP/DEGRADED/OVERLOADED/DRAINING).
* Dead: an edge with no heartbeat and no good probe for ``dead_after`` seconds
  (measured from its last good signal, or from start/config load if it never
  sent one) is DOWN at the next ``tick``, i.e. ``now - last_good >= dead_after``.
  With ticks every second or faster the edge leaves all answers within
  ``dead_after`` plus one tick.
* Probe failures alone: one failed /healthz probe is not enough (a lost packet
  must not eject an edge). The edge goes DOWN after ``fail_after`` *consecutive*
  failed probes (default 3), or by the ``dead_after`` rule above if nothing good
  arrives meanwhile. A heartbeat does *not* reset the failed-probe count: the
  probe tests the path players use, the heartbeat only proves the edge can reach
  us, so an edge whose data plane is unreachable still leaves.
* Hysteresis: a DOWN edge returns only after ``recover_after`` consecutive good
  signals (heartbeats or good probes). Any failed probe resets that count to 0,
  and so does silence of ``dead_after`` between two good signals, so a flapping
  edge (good, bad, good, bad, ...) stays DOWN instead of oscillating.
* Ranking before failure: DEGRADED (the edge says so: disk errors, upstream
  trouble, cache full) and OVERLOADED (reported load >= ``overload_at``) stay
  usable with a ``penalty`` so steering prefers healthier edges in the same site.
  Overload has its own small hysteresis: it clears only below ``overload_clear``
  (default ``overload_at - 0.1``) so an edge hovering at the threshold does not
  flip every heartbeat.
* Draining: an edge that reports "draining" gets no new players (``usable`` is
  False) but is not DOWN; existing sessions finish on it.

Transitions are returned by ``tick`` (including those caused by heartbeats and
probes since the previous tick), logged, and counted in ``transitions_total``.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

log = logging.getLogger("steering.health")

HEARTBEAT_STATES = frozenset({"ok", "degraded", "draining"})


class EdgeState(enum.Enum):
    UNKNOWN = "unknown"  # fresh start or new in config: usable, answers from config
    UP = "up"
    DEGRADED = "degraded"
    OVERLOADED = "overloaded"
    DRAINING = "draining"
    DOWN = "down"


# Ranking within a site: lower is better. DOWN/DRAINING are not usable at all;
# their penalty is only there so a caller that sorts everything gets a sane order.
_PENALTY = {
    EdgeState.UNKNOWN: 0,
    EdgeState.UP: 0,
    EdgeState.DEGRADED: 10,
    EdgeState.OVERLOADED: 20,
    EdgeState.DRAINING: 1000,
    EdgeState.DOWN: 1000,
}


class UnknownEdge(KeyError):
    """A heartbeat or probe for an edge not in the configuration (API: 403/404)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    edge_id: str
    state: str  # "ok" | "degraded" | "draining"
    load: float  # 0..1+, e.g. max(connections, egress) / capacity
    egress_bps: float
    disk_used: int
    disk_capacity: int
    cached_bytes: int
    sent_at: float  # the edge's clock, seconds since the epoch


@dataclass(slots=True)
class EdgeHealth:
    edge_id: str
    state: EdgeState
    reason: str
    last_heartbeat: float | None  # our clock at receipt (not sent_at: edge clocks skew)
    last_probe: float | None
    consecutive_good: int
    consecutive_bad: int  # consecutive failed probes
    load: float
    transitions: int


@dataclass(frozen=True, slots=True)
class Transition:
    edge_id: str
    old: EdgeState
    new: EdgeState
    reason: str
    at: float


@dataclass(slots=True)
class _Track:
    health: EdgeHealth
    since: float  # when we started watching: the reference for "never heard from"
    last_good: float | None = None  # last heartbeat or good probe (our clock)
    reported: str | None = None  # state from the last accepted heartbeat
    last_sent_at: float | None = None  # sent_at of the last accepted heartbeat
    last_detail: str = ""  # detail of the last failed probe


class Fleet:
    """Health of the configured edges. See the module docstring for the rules."""

    def __init__(
        self,
        edge_ids: Iterable[str],
        *,
        clock: Callable[[], float],
        dead_after: float = 3.0,
        recover_after: int = 3,
        overload_at: float = 0.9,
        overload_clear: float | None = None,
        fail_after: int = 3,
        max_skew: float = 30.0,
    ) -> None:
        if dead_after <= 0:
            raise ValueError("dead_after must be > 0")
        if recover_after < 1 or fail_after < 1:
            raise ValueError("recover_after and fail_after must be >= 1")
        self._clock = clock
        self.dead_after = dead_after
        self.recover_after = recover_after
        self.overload_at = overload_at
        self.overload_clear = overload_at - 0.1 if overload_clear is None else overload_clear
        if self.overload_clear > overload_at:
            raise ValueError("overload_clear must be <= overload_at")
        self.fail_after = fail_after
        self.max_skew = max_skew
        self._edges: dict[str, _Track] = {}
        self._pending: list[Transition] = []
        self.transitions_total: dict[tuple[str, str], int] = {}
        # Heartbeats refused, by reason ("skew", "stale"), for /metrics.
        self.rejected: dict[str, int] = {}
        self.set_edges(edge_ids)

    # -- configuration -------------------------------------------------------

    def set_edges(self, edge_ids: Iterable[str]) -> None:
        """Config reload: known edges keep their state, new ones start UNKNOWN."""
        now = self._clock()
        wanted = list(dict.fromkeys(edge_ids))
        kept: dict[str, _Track] = {}
        for edge_id in wanted:  # config order: snapshots and /metrics follow it
            if edge_id in self._edges:
                kept[edge_id] = self._edges[edge_id]
            else:
                kept[edge_id] = _Track(
                    EdgeHealth(
                        edge_id, EdgeState.UNKNOWN, "not heard from yet", None, None, 0, 0, 0.0, 0
                    ),
                    since=now,
                )
        self._edges = kept

    # -- inputs --------------------------------------------------------------

    def heartbeat(self, hb: Heartbeat) -> bool:
        """Record an (already authenticated) heartbeat. False if ignored.

        Raises UnknownEdge for an edge not in config and ValueError for a
        malformed one. A heartbeat whose ``sent_at`` is more than ``max_skew``
        from our clock, or not newer than the last one accepted (replayed or
        reordered), is ignored and counted in ``rejected``: the edge's clock or
        the network is wrong, and an old "ok" must not revive a dead edge.
        """
        track = self._track(hb.edge_id)
        if hb.state not in HEARTBEAT_STATES:
            raise ValueError(f"heartbeat state must be one of {sorted(HEARTBEAT_STATES)}")
        if not math.isfinite(hb.load) or hb.load < 0:
            raise ValueError("heartbeat load must be a finite number >= 0")
        now = self._clock()
        if not math.isfinite(hb.sent_at) or abs(hb.sent_at - now) > self.max_skew:
            self._reject("skew", hb.edge_id, f"sent_at {hb.sent_at} vs now {now}")
            return False
        if track.last_sent_at is not None and hb.sent_at <= track.last_sent_at:
            self._reject("stale", hb.edge_id, f"sent_at {hb.sent_at} <= {track.last_sent_at}")
            return False
        track.last_sent_at = hb.sent_at
        track.reported = hb.state
        h = track.health
        h.last_heartbeat = now
        h.load = hb.load
        self._good(track, now)
        self._evaluate(track, now)
        return True

    def probe_result(self, edge_id: str, ok: bool, detail: str = "") -> None:
        """Result of an active probe of the edge's /healthz.

        The prober should report ok=True for any answer from a live edge it can
        reach; /healthz answers 503 while draining, which the heartbeat already
        tells us, so counting it as a failure only makes a draining edge DOWN
        after ``fail_after`` probes, which changes nothing for players.
        """
        track = self._track(edge_id)
        now = self._clock()
        h = track.health
        h.last_probe = now
        if ok:
            h.consecutive_bad = 0
            self._good(track, now)
        else:
            h.consecutive_bad += 1
            h.consecutive_good = 0  # breaks the recovery streak: this is the hysteresis
            track.last_detail = detail
        self._evaluate(track, now)

    def tick(self) -> list[Transition]:
        """Re-evaluate every edge against the clock; return all transitions since the last tick."""
        now = self._clock()
        for track in self._edges.values():
            self._evaluate(track, now)
        out, self._pending = self._pending, []
        return out

    # -- queries -------------------------------------------------------------

    def usable(self, edge_id: str) -> bool:
        return self._track(edge_id).health.state not in (EdgeState.DOWN, EdgeState.DRAINING)

    def penalty(self, edge_id: str) -> int:
        return _PENALTY[self._track(edge_id).health.state]

    def state(self, edge_id: str) -> EdgeState:
        return self._track(edge_id).health.state

    def snapshot(self) -> list[EdgeHealth]:
        return [replace(t.health) for t in self._edges.values()]

    @property
    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in EdgeState}
        for t in self._edges.values():
            out[t.health.state.value] += 1
        return out

    # -- internals -----------------------------------------------------------

    def _track(self, edge_id: str) -> _Track:
        try:
            return self._edges[edge_id]
        except KeyError:
            raise UnknownEdge(edge_id) from None

    def _reject(self, why: str, edge_id: str, detail: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1
        log.warning("heartbeat from %s ignored (%s): %s", edge_id, why, detail)

    def _good(self, track: _Track, now: float) -> None:
        h = track.health
        # "Consecutive" means without a failure *and* without a silence long
        # enough to have declared the edge dead: an edge that says hello once
        # every 10 s is not healthy just because nothing failed in between.
        if track.last_good is not None and now - track.last_good >= self.dead_after:
            h.consecutive_good = 0
        h.consecutive_good += 1
        track.last_good = now

    def _live_state(self, track: _Track) -> tuple[EdgeState, str]:
        """The state an alive edge is in, from what it last reported."""
        h = track.health
        if track.reported == "draining":
            return EdgeState.DRAINING, "edge reports draining"
        limit = self.overload_clear if h.state is EdgeState.OVERLOADED else self.overload_at
        if h.load >= limit:
            return EdgeState.OVERLOADED, f"load {h.load:.2f} >= {limit:.2f}"
        if track.reported == "degraded":
            return EdgeState.DEGRADED, "edge reports degraded"
        return EdgeState.UP, "alive"

    def _evaluate(self, track: _Track, now: float) -> None:
        h = track.health
        if h.state is EdgeState.DOWN:
            fresh = track.last_good is not None and now - track.last_good < self.dead_after
            if not (fresh and h.consecutive_good >= self.recover_after):
                return
            # Enough evidence: forget older probe failures, or the next line
            # would send it straight back down.
            h.consecutive_bad = 0
            new, why = self._live_state(track)
            self._move(track, new, f"{h.consecutive_good} consecutive good checks; {why}", now)
            return
        last = track.last_good if track.last_good is not None else track.since
        if now - last >= self.dead_after:
            silent = f"no heartbeat or good probe for {now - last:.1f}s"
            self._move(track, EdgeState.DOWN, silent, now)
        elif h.consecutive_bad >= self.fail_after:
            detail = f": {track.last_detail}" if track.last_detail else ""
            self._move(track, EdgeState.DOWN, f"{h.consecutive_bad} probe failures{detail}", now)
        elif track.last_good is None:
            return  # still UNKNOWN: usable from config until heard from or timed out
        else:
            new, why = self._live_state(track)
            self._move(track, new, why, now)

    def _move(self, track: _Track, new: EdgeState, reason: str, now: float) -> None:
        h = track.health
        old = h.state
        h.reason = reason
        if new is old:
            return
        if new is EdgeState.DOWN:
            h.consecutive_good = 0  # recovery counts goods from the moment it died
        h.state = new
        h.transitions += 1
        key = (old.value, new.value)
        self.transitions_total[key] = self.transitions_total.get(key, 0) + 1
        self._pending.append(Transition(h.edge_id, old, new, reason, now))
        level = logging.WARNING if new is EdgeState.DOWN else logging.INFO
        log.log(level, "edge %s: %s -> %s (%s)", h.edge_id, old.value, new.value, reason)
