"""control/player/abr.py (BBA) and control/player/playout.py (the simulated playout clock):
tables of buffer levels, rates and event times."""

from __future__ import annotations

import pytest

from control.player.abr import AbrConfig, Bba
from control.player.playout import Playout

RATES = [500_000, 1_000_000, 2_000_000, 4_000_000]  # bit/s, lowest first
CFG = AbrConfig(reservoir=5.0, cushion=10.0, max_buffer=20.0)


@pytest.mark.parametrize(
    ("buffer_s", "rate"),
    [
        (0.0, 500_000),
        (5.0, 500_000),  # the reservoir: lowest rate
        (7.5, 500_000 + 3_500_000 * 0.25),  # linear across the cushion
        (10.0, 2_250_000),
        (15.0, 4_000_000),  # reservoir + cushion: top rate
        (19.0, 4_000_000),
    ],
)
def test_rate_map(buffer_s: float, rate: float) -> None:
    assert Bba(RATES, CFG).rate_map(buffer_s) == pytest.approx(rate)


@pytest.mark.parametrize(
    ("buffer_s", "prev", "index", "reason"),
    [
        (3.0, 3, 0, "reservoir"),  # under the reservoir: straight to the lowest
        (16.0, 0, 3, "upper"),  # above the cushion: straight to the highest
        # f(7.0) = 1.2 Mbit/s >= R+ (1.0) from 0: up to the highest rate below f.
        (7.0, 0, 1, "up"),
        # f(11.0) = 2.6 Mbit/s from 0: more than one step at once (max rate below f).
        (11.0, 0, 2, "up"),
        # Hysteresis: f between R- and R+ of the previous rate holds it.
        (7.0, 1, 1, "hold"),  # f = 1.2: between 0.5 and 2.0
        (9.0, 1, 1, "hold"),  # f = 1.9
        (9.5, 1, 2, "up"),  # f = 2.075 reaches R+ (2.0): up one
        (6.2, 2, 1, "down"),  # f = 0.92 <= R- (1.0): down to the lowest rate above f
    ],
)
def test_bba0_decisions(buffer_s: float, prev: int, index: int, reason: str) -> None:
    d = Bba(RATES, CFG).choose(buffer_s, prev)
    assert (d.index, d.reason) == (index, reason)
    assert not d.startup


def test_hysteresis_band_is_wide() -> None:
    """From 2 Mbit/s (index 2) the rate holds for every f(B) strictly between 1 and 4 Mbit/s,
    so a buffer wandering between 6.5 and 14.9 s never changes it; below and above it moves."""
    bba = Bba(RATES, CFG)
    for tenth in range(66, 149):
        assert bba.choose(tenth / 10, 2).index == 2, tenth / 10
    d = bba.choose(6.4, 2)  # f = 0.99 <= R- (1.0): down to the lowest rate above f
    assert (d.index, d.reason) == (1, "down")
    d = bba.choose(5.5, 3)  # f = 0.85 from 4.0: down to 1.0 (min rate above f)
    assert (d.index, d.reason) == (1, "down")


def test_a_buffer_that_oscillates_does_not_flap() -> None:
    bba = Bba(RATES, CFG)
    prev, switches = 1, 0
    for level in [9.0, 8.0, 9.2, 7.2, 9.1, 8.3] * 5:
        d = bba.choose(level, prev)
        switches += d.index != prev
        prev = d.index
    assert switches == 0 and prev == 1


@pytest.mark.parametrize(
    ("gained", "startup_after", "index", "reason"),
    [
        (3.9, True, 2, "startup-up"),  # 3.9 of a 4 s segment: > 0.875 x 4, step up
        (3.0, True, 1, "startup-hold"),  # arrived at most 4x faster: hold
        (-0.5, False, 0, "reservoir"),  # the buffer shrank: startup over, BBA-0 (B=2 s)
    ],
)
def test_startup_steps_up_while_downloads_are_fast(
    gained: float, startup_after: bool, index: int, reason: str
) -> None:
    bba = Bba(RATES, CFG)
    d = bba.choose(2.0, 1, startup=True, gained_s=gained, segment_s=4.0)
    assert (d.index, d.startup, d.reason) == (index, startup_after, reason)


def test_startup_ends_when_the_map_asks_for_more() -> None:
    bba = Bba(RATES, CFG)
    d = bba.choose(16.0, 1, startup=True, gained_s=3.9, segment_s=4.0)
    assert (d.index, d.startup, d.reason) == (3, False, "upper")


def test_a_startup_sequence_on_a_fast_network() -> None:
    """Nothing buffered: the first segment is the lowest rate; on a fast network startup climbs
    one rate a segment while BBA-0 alone would sit in the reservoir at the bottom."""
    bba = Bba(RATES, CFG)
    d = bba.first()
    assert (d.index, d.startup) == (0, True)
    buffer_s, chosen = 0.0, [d.index]
    for _ in range(3):
        buffer_s += 3.95  # each 4 s segment arrives in a blink
        d = bba.choose(buffer_s, d.index, startup=d.startup, gained_s=3.95, segment_s=4.0)
        chosen.append(d.index)
    assert chosen == [0, 1, 2, 3]
    plain = Bba(RATES, AbrConfig(reservoir=5.0, cushion=10.0, max_buffer=20.0, startup=False))
    assert plain.first().startup is False
    assert plain.choose(3.95, 0).index == 0  # in the reservoir


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reservoir": -1.0}, "reservoir"),
        ({"cushion": 0.0}, "cushion"),
        ({"max_buffer": float("nan")}, "max_buffer"),
        ({"reservoir": 10.0, "cushion": 20.0, "max_buffer": 20.0}, "at least reservoir"),
    ],
)
def test_config_is_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AbrConfig(**kwargs)


@pytest.mark.parametrize("rates", [[], [0, 1], [2, 1], [1, 1]])
def test_rates_are_checked(rates: list[int]) -> None:
    with pytest.raises(ValueError, match="rates"):
        Bba(rates)
    with pytest.raises(ValueError, match="prev"):
        Bba([1, 2]).choose(1.0, 5)


# -- the playout clock ----------------------------------------------------------------------


def test_playout_starts_plays_and_finishes_at_speed() -> None:
    p = Playout(start=0.0, end=8.0, t0=100.0, speed=4.0, resume_s=4.0)
    p.add(2.0, 100.1)  # half a segment's worth: not yet
    assert not p.playing and p.startup_s is None
    p.add(4.0, 100.2)
    assert p.playing and p.startup_s == pytest.approx(0.2)
    assert p.level(100.45) == pytest.approx(3.0)  # 0.25 s of wall time at 4x = 1 s of media
    p.add(8.0, 100.5)
    assert p.until_position(8.0, 100.5) == pytest.approx((8.0 - 1.2) / 4)
    p.advance(103.0)
    assert p.finished and p.position == 8.0 and p.rebuffers == 0
    assert p.finished_at == pytest.approx(100.2 + 8.0 / 4)


def test_playout_stall_is_timed_from_when_the_buffer_ran_dry() -> None:
    p = Playout(start=0.0, end=12.0, t0=0.0, speed=2.0, resume_s=4.0)
    p.add(4.0, 1.0)  # plays from t=1; the 4 s run out at t=3
    p.advance(5.0)
    assert not p.playing and p.rebuffers == 1 and p.stalled_at == pytest.approx(3.0)
    assert p.until_position(6.0, 5.0) is None
    p.add(6.0, 5.5)  # 2 s buffered: below resume_s, still stalled
    assert not p.playing and p.rebuffers == 1
    p.add(8.0, 6.0)
    assert p.playing and p.rebuffer_s == pytest.approx(3.0)
    p.add(12.0, 6.5)
    p.advance(60.0)
    assert p.finished and p.rebuffers == 1


def test_playout_resumes_with_less_than_resume_s_at_the_end() -> None:
    p = Playout(start=10.0, end=11.0, t0=0.0, speed=1.0, resume_s=4.0)
    p.add(11.0, 0.5)  # only 1 s is left of the title: that is enough to start
    assert p.playing and p.position == 10.0
    with pytest.raises(ValueError):
        Playout(start=0.0, end=1.0, t0=0.0, speed=0.0)
