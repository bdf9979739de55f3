"""steering.health: fleet health with hysteresis, driven by a fake clock."""

from __future__ import annotations

import logging

import pytest

from steering.health import EdgeState, Fleet, Heartbeat, Transition, UnknownEdge

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def hb(
    clock: Clock, edge: str = "a", state: str = "ok", load: float = 0.2, **kw: float
) -> Heartbeat:
    return Heartbeat(
        edge_id=edge,
        state=state,
        load=load,
        egress_bps=1e9,
        disk_used=10,
        disk_capacity=100,
        cached_bytes=10,
        sent_at=kw.get("sent_at", clock.now),
    )


def make(**kw: float) -> tuple[Fleet, Clock]:
    clock = Clock()
    fleet = Fleet(["a", "b", "c"], clock=clock, **kw)  # type: ignore[arg-type]
    return fleet, clock


def kill(fleet: Fleet, clock: Clock, edge: str = "a") -> None:
    """Bring ``edge`` up with one heartbeat, then let it die by silence."""
    fleet.heartbeat(hb(clock, edge))
    clock.advance(fleet.dead_after)
    fleet.tick()
    assert fleet.state(edge) is EdgeState.DOWN


def test_fresh_start_answers_from_config() -> None:
    fleet, _ = make()
    assert [h.state for h in fleet.snapshot()] == [EdgeState.UNKNOWN] * 3
    assert all(fleet.usable(e) for e in "abc")
    assert [fleet.penalty(e) for e in "abc"] == [0, 0, 0]
    assert fleet.counts["unknown"] == 3
    assert fleet.tick() == []


def test_converges_as_heartbeats_arrive() -> None:
    fleet, clock = make()
    fleet.heartbeat(hb(clock, "a"))
    fleet.heartbeat(hb(clock, "b", state="degraded"))
    assert (fleet.state("a"), fleet.state("b"), fleet.state("c")) == (
        EdgeState.UP,
        EdgeState.DEGRADED,
        EdgeState.UNKNOWN,
    )
    transitions = fleet.tick()
    assert [(t.edge_id, t.old, t.new) for t in transitions] == [
        ("a", EdgeState.UNKNOWN, EdgeState.UP),
        ("b", EdgeState.UNKNOWN, EdgeState.DEGRADED),
    ]
    assert fleet.tick() == []  # reported once


# (seconds of silence after the last heartbeat, DOWN?): dead at dead_after, not before.
@pytest.mark.parametrize(
    ("silence", "down"),
    [(0.0, False), (1.0, False), (2.999, False), (3.0, True), (3.5, True), (60.0, True)],
)
def test_dead_exactly_at_dead_after(silence: float, down: bool) -> None:
    fleet, clock = make()
    fleet.heartbeat(hb(clock, "a"))
    clock.advance(silence)
    fleet.tick()
    assert (fleet.state("a") is EdgeState.DOWN) is down
    assert fleet.usable("a") is not down


def test_dead_after_is_configurable() -> None:
    fleet, clock = make(dead_after=10.0)
    fleet.heartbeat(hb(clock, "a"))
    clock.advance(9.9)
    fleet.tick()
    assert fleet.usable("a")
    clock.advance(0.1)
    fleet.tick()
    assert not fleet.usable("a")


def test_never_heard_from_goes_down_after_dead_after_from_start() -> None:
    fleet, clock = make()
    clock.advance(2.9)
    fleet.tick()
    assert fleet.state("c") is EdgeState.UNKNOWN
    clock.advance(0.1)
    assert {t.edge_id for t in fleet.tick()} == {"a", "b", "c"}
    assert fleet.counts["down"] == 3


def test_good_probes_alone_keep_an_edge_alive() -> None:
    fleet, clock = make()
    for _ in range(10):
        fleet.probe_result("a", True)
        clock.advance(2.0)
        fleet.tick()
    assert fleet.state("a") is EdgeState.UP


# Probe failures alone: DOWN after fail_after (K) consecutive failures, or by
# silence after dead_after, whichever comes first. A good probe resets K.
@pytest.mark.parametrize(
    ("probes", "down"),
    [
        ([False], False),
        ([False, False], False),
        ([False, False, False], True),
        ([False, False, True, False, False], False),
        ([False, True, False, True, False], False),
        ([True, False, False, False], True),
    ],
)
def test_consecutive_probe_failures(probes: list[bool], down: bool) -> None:
    fleet, clock = make(dead_after=100.0)
    fleet.heartbeat(hb(clock, "a"))
    for ok in probes:
        clock.advance(0.5)
        fleet.probe_result("a", ok, "connection refused")
    fleet.tick()
    assert (fleet.state("a") is EdgeState.DOWN) is down


def test_failed_probes_are_not_reset_by_heartbeats() -> None:
    # The edge can reach us, but players cannot reach its /healthz: it must leave.
    fleet, clock = make()
    for _ in range(3):
        clock.advance(0.5)
        fleet.heartbeat(hb(clock, "a"))
        fleet.probe_result("a", False, "timeout")
    assert fleet.state("a") is EdgeState.DOWN
    assert fleet.snapshot()[0].reason == "3 probe failures: timeout"


def test_probe_failure_alone_after_dead_after() -> None:
    fleet, clock = make(fail_after=10)
    fleet.heartbeat(hb(clock, "a"))
    clock.advance(1.0)
    fleet.probe_result("a", False)
    clock.advance(1.9)
    fleet.tick()
    assert fleet.usable("a")
    clock.advance(0.1)
    fleet.tick()
    assert not fleet.usable("a")


# Hysteresis: signals after the edge died, and whether it is back.
G, B = True, False


@pytest.mark.parametrize(
    ("signals", "back"),
    [
        ([G], False),
        ([G, G], False),
        ([G, G, G], True),
        ([G, B, G, B, G, B, G, B], False),  # flapping never returns
        ([G, G, B, G, G], False),
        ([G, G, B, G, G, G], True),
        ([B, B, B, B, G, G, G], True),
    ],
)
def test_recovery_needs_n_consecutive_goods(signals: list[bool], back: bool) -> None:
    fleet, clock = make()
    kill(fleet, clock)
    for ok in signals:
        clock.advance(0.5)
        fleet.probe_result("a", ok)
        fleet.tick()
    assert (fleet.state("a") is EdgeState.UP) is back


@pytest.mark.parametrize("recover_after", [1, 3, 5])
def test_recovery_by_heartbeats(recover_after: int) -> None:
    fleet, clock = make(recover_after=recover_after)
    kill(fleet, clock)
    for i in range(recover_after):
        assert fleet.state("a") is EdgeState.DOWN, i
        clock.advance(1.0)
        fleet.heartbeat(hb(clock, "a"))
    assert fleet.state("a") is EdgeState.UP
    assert "consecutive good checks" in fleet.snapshot()[0].reason


def test_sparse_goods_are_not_consecutive() -> None:
    # One heartbeat every dead_after seconds is not a healthy edge.
    fleet, clock = make()
    kill(fleet, clock)
    for _ in range(6):
        clock.advance(3.0)
        fleet.heartbeat(hb(clock, "a"))
        fleet.tick()
    assert fleet.state("a") is EdgeState.DOWN


def test_recovery_after_probe_failures_without_probes() -> None:
    # Down by probe failures; the prober then stops, heartbeats keep coming.
    fleet, clock = make(dead_after=100.0)
    for _ in range(3):
        fleet.probe_result("a", False)
    assert fleet.state("a") is EdgeState.DOWN
    for _ in range(3):
        clock.advance(1.0)
        fleet.heartbeat(hb(clock, "a"))
    fleet.tick()
    assert fleet.state("a") is EdgeState.UP


def test_recovers_into_what_the_edge_reports() -> None:
    fleet, clock = make()
    kill(fleet, clock)
    for _ in range(3):
        clock.advance(1.0)
        fleet.heartbeat(hb(clock, "a", state="draining"))
    assert fleet.state("a") is EdgeState.DRAINING


@pytest.mark.parametrize(
    ("state", "load", "expected", "usable", "penalty"),
    [
        ("ok", 0.0, EdgeState.UP, True, 0),
        ("ok", 0.89, EdgeState.UP, True, 0),
        ("ok", 0.9, EdgeState.OVERLOADED, True, 20),
        ("ok", 1.7, EdgeState.OVERLOADED, True, 20),
        ("degraded", 0.1, EdgeState.DEGRADED, True, 10),
        ("degraded", 0.95, EdgeState.OVERLOADED, True, 20),
        ("draining", 0.1, EdgeState.DRAINING, False, 1000),
        ("draining", 0.95, EdgeState.DRAINING, False, 1000),
    ],
)
def test_reported_state_and_load(
    state: str, load: float, expected: EdgeState, usable: bool, penalty: int
) -> None:
    fleet, clock = make()
    fleet.heartbeat(hb(clock, "a", state=state, load=load))
    assert fleet.state("a") is expected
    assert fleet.usable("a") is usable
    assert fleet.penalty("a") == penalty


def test_penalties_order_edges_before_they_fail() -> None:
    fleet, clock = make()
    fleet.heartbeat(hb(clock, "a", load=0.95))
    fleet.heartbeat(hb(clock, "b", state="degraded"))
    fleet.heartbeat(hb(clock, "c"))
    assert sorted("abc", key=fleet.penalty) == ["c", "b", "a"]


# Overload hysteresis: enters at 0.9, clears below 0.8.
@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ([0.95, 0.85], EdgeState.OVERLOADED),
        ([0.95, 0.8], EdgeState.OVERLOADED),
        ([0.95, 0.79], EdgeState.UP),
        ([0.85, 0.89], EdgeState.UP),
        ([0.95, 0.5, 0.85], EdgeState.UP),
    ],
)
def test_overload_hysteresis(loads: list[float], expected: EdgeState) -> None:
    fleet, clock = make()
    for load in loads:
        clock.advance(0.5)
        fleet.heartbeat(hb(clock, "a", load=load))
    assert fleet.state("a") is expected


def test_transitions_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    fleet, clock = make()
    caplog.set_level(logging.INFO, logger="steering.health")
    fleet.heartbeat(hb(clock, "a"))
    clock.advance(3.0)
    fleet.heartbeat(hb(clock, "b"))
    out = fleet.tick()
    assert [(t.edge_id, t.old.value, t.new.value) for t in out] == [
        ("a", "unknown", "up"),
        ("b", "unknown", "up"),
        ("a", "up", "down"),
        ("c", "unknown", "down"),
    ]
    assert all(isinstance(t, Transition) and t.reason for t in out)
    assert fleet.transitions_total == {
        ("unknown", "up"): 2,
        ("up", "down"): 1,
        ("unknown", "down"): 1,
    }
    assert fleet.counts == {
        "unknown": 0,
        "up": 1,
        "degraded": 0,
        "overloaded": 0,
        "draining": 0,
        "down": 2,
    }
    assert {h.edge_id: h.transitions for h in fleet.snapshot()} == {"a": 2, "b": 1, "c": 1}
    assert "edge a: up -> down" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_set_edges_keeps_known_states() -> None:
    fleet, clock = make()
    fleet.heartbeat(hb(clock, "a", state="draining"))
    for _ in range(3):
        fleet.probe_result("b", False)
    clock.advance(1.0)
    fleet.set_edges(["b", "a", "d"])
    assert [h.edge_id for h in fleet.snapshot()] == ["b", "a", "d"]
    assert (fleet.state("a"), fleet.state("b"), fleet.state("d")) == (
        EdgeState.DRAINING,
        EdgeState.DOWN,
        EdgeState.UNKNOWN,
    )
    with pytest.raises(UnknownEdge):
        fleet.usable("c")
    # The new edge gets its own dead_after from the reload, not from start.
    clock.advance(2.9)
    fleet.tick()
    assert fleet.state("d") is EdgeState.UNKNOWN


def test_unknown_edge_rejected() -> None:
    fleet, clock = make()
    with pytest.raises(UnknownEdge):
        fleet.heartbeat(hb(clock, "mallory"))
    with pytest.raises(KeyError):  # UnknownEdge is a KeyError for callers mapping to 404
        fleet.probe_result("mallory", True)
    assert "mallory" not in {h.edge_id for h in fleet.snapshot()}


@pytest.mark.parametrize(
    ("sent_at_offset", "accepted", "why"),
    [
        (0.0, True, None),
        (-29.0, True, None),
        (29.0, True, None),
        (-31.0, False, "skew"),
        (3600.0, False, "skew"),
        (float("nan"), False, "skew"),
    ],
)
def test_clock_skew(sent_at_offset: float, accepted: bool, why: str | None) -> None:
    fleet, clock = make()
    result = fleet.heartbeat(hb(clock, "a", sent_at=clock.now + sent_at_offset))
    assert result is accepted
    assert fleet.state("a") is (EdgeState.UP if accepted else EdgeState.UNKNOWN)
    assert fleet.rejected == ({why: 1} if why else {})


def test_replayed_or_reordered_heartbeat_cannot_revive() -> None:
    fleet, clock = make()
    old = hb(clock, "a")
    fleet.heartbeat(old)
    kill(fleet, clock, "b")  # time passes
    fleet.tick()
    assert fleet.state("a") is EdgeState.DOWN
    for _ in range(5):
        assert fleet.heartbeat(old) is False
    assert fleet.state("a") is EdgeState.DOWN
    assert fleet.rejected == {"stale": 5}


@pytest.mark.parametrize(
    "bad",
    [
        {"state": "happy"},
        {"load": -0.1},
        {"load": float("inf")},
    ],
)
def test_malformed_heartbeat(bad: dict[str, object]) -> None:
    fleet, clock = make()
    args: dict[str, object] = {"state": "ok", "load": 0.1} | bad
    with pytest.raises(ValueError):
        fleet.heartbeat(hb(clock, "a", **args))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [{"dead_after": 0}, {"recover_after": 0}, {"fail_after": 0}, {"overload_clear": 0.95}],
)
def test_bad_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Fleet(["a"], clock=Clock(), **kw)  # type: ignore[arg-type]


def test_snapshot_is_a_copy() -> None:
    fleet, clock = make()
    fleet.heartbeat(hb(clock, "a", load=0.3))
    snap = fleet.snapshot()[0]
    assert (snap.last_heartbeat, snap.last_probe, snap.load) == (clock.now, None, 0.3)
    snap.state = EdgeState.DOWN
    assert fleet.state("a") is EdgeState.UP
