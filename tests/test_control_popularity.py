"""control/popularity.py, the pure core the fill feed and the fill simulator share: tables of
cases, no event loop."""

from __future__ import annotations

import itertools
import math

import pytest

from control.popularity import (
    DAY,
    MediaFile,
    Rendition,
    Survival,
    SurvivalTally,
    decay_weight,
    editorial_boost,
    file_scores,
    rendition_for,
    segment_number,
)


@pytest.mark.parametrize(
    ("age", "half_life", "weight"),
    [
        (0.0, 1.0, 1.0),
        (DAY, 1.0, 0.5),  # one half-life: half
        (2 * DAY, 1.0, 0.25),
        (DAY / 2, 1.0, 2**-0.5),
        (DAY, 2.0, 2**-0.5),
        (3 * DAY, 3.0, 0.5),
        (-3600.0, 1.0, 1.0),  # a client clock ahead: counts as now, never more
        (365 * DAY, 1.0, 0.5**365),
    ],
)
def test_decay_weight(age: float, half_life: float, weight: float) -> None:
    assert decay_weight(age, half_life) == pytest.approx(weight, rel=1e-12)


@pytest.mark.parametrize("half_life", [0.0, -1.0, math.inf, math.nan])
def test_decay_weight_refuses_a_half_life_that_is_not_positive(half_life: float) -> None:
    with pytest.raises(ValueError, match="half_life_days"):
        decay_weight(0.0, half_life)


NOW = 1_790_000_000.0


@pytest.mark.parametrize(
    ("published_at", "boost_views", "boost_days", "views"),
    [
        (None, 50.0, 3.0, 0.0),  # no publication time: no boost
        (NOW, 50.0, 3.0, 50.0),  # published now: the whole boost
        (NOW + 2 * DAY, 50.0, 3.0, 50.0),  # scheduled: the whole boost tonight
        (NOW - DAY, 50.0, 3.0, 50.0 * 2 / 3),  # fades linearly
        (NOW - 1.5 * DAY, 30.0, 3.0, 15.0),
        (NOW - 3 * DAY, 50.0, 3.0, 0.0),  # gone after boost_days
        (NOW - 30 * DAY, 50.0, 3.0, 0.0),  # never negative
        (NOW, 0.0, 3.0, 0.0),  # boost off
        (NOW, 50.0, 0.0, 0.0),  # boost off
    ],
)
def test_editorial_boost(
    published_at: float | None, boost_views: float, boost_days: float, views: float
) -> None:
    assert editorial_boost(published_at, NOW, boost_views, boost_days) == pytest.approx(views)


R240 = Rendition("240p", 240, 400_000)
R480 = Rendition("480p", 480, 1_200_000)
R720 = Rendition("720p", 720, 2_800_000)
R720HI = Rendition("720p_hi", 720, 4_000_000)
R2160 = Rendition("2160p", 2160, 16_000_000)
LADDER = (R240, R480, R720, R2160)


@pytest.mark.parametrize(
    ("renditions", "cap", "expected"),
    [
        ((), None, None),
        ((), 720, None),
        (LADDER, None, R2160),  # no cap: the tallest
        (LADDER, 2160, R2160),
        (LADDER, 1080, R720),  # the tallest no taller than the cap
        (LADDER, 720, R720),
        (LADDER, 600, R480),
        (LADDER, 100, R240),  # all taller: the shortest
        ((R2160, R240, R720), 1080, R720),  # order given does not matter
        ((R720, R720HI, R480), 1080, R720HI),  # a tie in height: the higher bandwidth
        ((R720HI, R720), 100, R720),  # all taller, tie: the lower bandwidth
    ],
)
def test_rendition_for(
    renditions: tuple[Rendition, ...], cap: int | None, expected: Rendition | None
) -> None:
    assert rendition_for(renditions, cap) == expected


FILES = [
    MediaFile("master.m3u8", 1, "0" * 16),
    MediaFile("manifest.mpd", 1, "0" * 16),
    MediaFile("master_single.m3u8", 1, "0" * 16),
    MediaFile("poster.jpg", 1, "0" * 16),
    MediaFile("audio_128k/seg00001.m4s", 1, "0" * 16),
    MediaFile("240p/seg00001.m4s", 1, "0" * 16),
    MediaFile("480p/index.m3u8", 1, "0" * 16),
    MediaFile("480p/seg00001.m4s", 1, "0" * 16),
    MediaFile("720p/seg00001.m4s", 1, "0" * 16),
    MediaFile("720p/single.mp4", 1, "0" * 16),
    MediaFile("720p/single.m3u8", 1, "0" * 16),
    MediaFile("2160p/seg00001.m4s", 1, "0" * 16),
    MediaFile("720pextra/seg00001.m4s", 1, "0" * 16),  # not a rendition's directory
]


@pytest.mark.parametrize(
    ("views", "share", "expected"),
    [
        # A basic plan (480) and an uncapped play: each rendition its plays' views; what
        # every player reads gets all; the single-file variant nothing by default.
        (
            {480: 2.0, None: 1.0},
            0.0,
            {
                "master.m3u8": 3.0, "manifest.mpd": 3.0, "master_single.m3u8": 0.0,
                "poster.jpg": 3.0, "audio_128k/seg00001.m4s": 3.0, "240p/seg00001.m4s": 0.0,
                "480p/index.m3u8": 2.0, "480p/seg00001.m4s": 2.0, "720p/seg00001.m4s": 0.0,
                "720p/single.mp4": 0.0, "720p/single.m3u8": 0.0, "2160p/seg00001.m4s": 1.0,
                "720pextra/seg00001.m4s": 3.0,
            },
        ),
        # A standard plan (1080: streams 720p) with a share for the single-file variant.
        (
            {1080: 4.0},
            0.5,
            {
                "master.m3u8": 4.0, "manifest.mpd": 4.0, "master_single.m3u8": 2.0,
                "poster.jpg": 4.0, "audio_128k/seg00001.m4s": 4.0, "240p/seg00001.m4s": 0.0,
                "480p/index.m3u8": 0.0, "480p/seg00001.m4s": 0.0, "720p/seg00001.m4s": 4.0,
                "720p/single.mp4": 2.0, "720p/single.m3u8": 2.0, "2160p/seg00001.m4s": 0.0,
                "720pextra/seg00001.m4s": 4.0,
            },
        ),
        # Two caps streaming the same rendition add up; no views or negative ones count 0.
        (
            {720: 1.0, 1080: 0.5, 2160: 0.0, 480: -1.0},
            0.0,
            {
                "master.m3u8": 1.5, "manifest.mpd": 1.5, "master_single.m3u8": 0.0,
                "poster.jpg": 1.5, "audio_128k/seg00001.m4s": 1.5, "240p/seg00001.m4s": 0.0,
                "480p/index.m3u8": 0.0, "480p/seg00001.m4s": 0.0, "720p/seg00001.m4s": 1.5,
                "720p/single.mp4": 0.0, "720p/single.m3u8": 0.0, "2160p/seg00001.m4s": 0.0,
                "720pextra/seg00001.m4s": 1.5,
            },
        ),
        ({}, 0.0, {f.path: 0.0 for f in FILES}),
    ],
)  # fmt: skip
def test_file_scores(
    views: dict[int | None, float], share: float, expected: dict[str, float]
) -> None:
    got = file_scores(views, LADDER, FILES, single_file_share=share)
    assert [f for f, _ in got] == FILES  # every file, in the order given
    assert {f.path: s for f, s in got} == pytest.approx(expected)


def test_file_scores_without_renditions_give_every_file_all_views() -> None:
    """A title whose ladder is unknown: nothing is a rendition's directory."""
    got = file_scores({None: 2.0}, (), FILES[:2] + FILES[5:6])
    assert [s for _, s in got] == [2.0, 2.0, 2.0]


# -- the survival curve of viewing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("reached", "bins", "points"),
    [
        # (fractions reached, with weights; bins; S at k / bins)
        ([], 4, (1.0, 1.0)),  # no data: 1 everywhere
        ([(0.5, 1.0)], 4, (1.0, 1.0, 1.0, 0.0, 0.0)),
        ([(1.0, 1.0)], 4, (1.0, 1.0, 1.0, 1.0, 1.0)),  # to the end: the last point counts it
        ([(0.1, 3.0), (1.0, 1.0)], 4, (1.0, 0.25, 0.25, 0.25, 0.25)),
        ([(0.0, 1.0), (0.25, 1.0), (0.6, 2.0)], 4, (1.0, 0.75, 0.5, 0.0, 0.0)),
        ([(1.7, 1.0), (-0.2, 1.0)], 2, (1.0, 0.5, 0.5)),  # clamped to [0, 1]
        ([(0.29, 1.0)], 100, (1.0,) * 30 + (0.0,) * 71),  # 0.29 * 100 is 28.999...: bin 29
        ([(0.5, 0.0), (0.5, -1.0), (math.nan, 1.0), (0.5, math.inf)], 2, (1.0, 1.0)),  # ignored
    ],
)
def test_survival_tally(
    reached: list[tuple[float, float]], bins: int, points: tuple[float, ...]
) -> None:
    tally = SurvivalTally(bins)
    for f, w in reached:
        tally.add(f, w)
    assert tally.curve().points == pytest.approx(points)


@pytest.mark.parametrize(
    ("x", "s"),
    [
        (-1.0, 1.0), (0.0, 1.0), (math.nan, 1.0),  # every play reads the first segment
        (0.125, 0.875), (0.25, 0.75), (0.375, 0.625),  # linear within a bin
        (0.5, 0.5), (0.75, 0.0), (0.9, 0.0), (1.0, 0.0), (2.0, 0.0),
    ],
)  # fmt: skip
def test_survival_is_linear_between_points(x: float, s: float) -> None:
    curve = Survival((1.0, 0.75, 0.5, 0.0, 0.0))
    assert curve(x) == pytest.approx(s)
    assert curve.mean() == pytest.approx((1.75 + 1.25 + 0.5) / 8)
    assert Survival().mean() == 1.0 and Survival()(0.7) == 1.0


@pytest.mark.parametrize(
    "points", [(1.0,), (0.9, 0.5), (1.0, 0.5, 0.6), (1.0, -0.1), (1.0, math.nan)]
)
def test_survival_refuses_a_curve_that_is_not_one(points: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="survival curve"):
        Survival(points)


def test_survival_of_many_plays_is_non_increasing_and_starts_at_1() -> None:
    tally = SurvivalTally()
    for i in range(1000):
        tally.add((i * 7919 % 1000) / 999, 1.0 + i % 3)
    p = tally.curve().points
    assert p[0] == 1.0 and all(b <= a for a, b in itertools.pairwise(p))


@pytest.mark.parametrize(
    ("name", "number"),
    [("seg00001.m4s", 1), ("seg00042.m4s", 42), ("seg123456.m4s", 123456), ("seg1.m4s", None),
     ("init.mp4", None), ("seg00001.m4s.tmp", None), ("xseg00001.m4s", None)],
)  # fmt: skip
def test_segment_number(name: str, number: int | None) -> None:
    assert segment_number(name) == number


# A 40 s title in 10 s segments at one rendition, with audio and the single-file variant.
SEGMENTS = [
    MediaFile(p, 1, "0" * 16)
    for p in (
        "master.m3u8", "master_single.m3u8", "720p/init.mp4", "720p/index.m3u8",
        "720p/seg00001.m4s", "720p/seg00002.m4s", "720p/seg00003.m4s", "720p/seg00004.m4s",
        "720p/single.mp4", "720p/single.m3u8", "audio_128k/seg00001.m4s",
        "audio_128k/seg00004.m4s",
    )
]  # fmt: skip
# Half the plays stop before a quarter, a quarter before the end, a quarter finish.
CURVE = Survival((1.0, 0.5, 0.5, 0.5, 0.25))  # S(0.25) = S(0.5) = S(0.75) = 0.5


@pytest.mark.parametrize(
    ("survival", "duration", "segment_seconds", "share", "expected"),
    [
        # No curve: today's uniform spread, every file of the rendition its plays.
        (None, None, None, 0.5, [4, 2, 4, 4, 4, 4, 4, 4, 2, 2, 4, 4]),
        # Segment k starts at (k - 1) / 4 (4 segments in its directory): 4 * S(x). Audio the
        # same by its own numbers; single.mp4 half (the share) of 4 * mean(S) = 4 * 0.53125.
        (CURVE, None, None, 0.5, [4, 2, 4, 4, 4, 2, 2, 2, 1.0625, 2, 4, 2]),
        (CURVE, None, None, 0.0, [4, 0, 4, 4, 4, 2, 2, 2, 0, 0, 4, 2]),
        # segment_seconds and duration known: starts at (k - 1) * 10 / 80 = 0, 1/8, 1/4, 3/8.
        (CURVE, 80.0, 10.0, 0.0, [4, 0, 4, 4, 4, 3, 2, 2, 0, 0, 4, 2]),
    ],
)
def test_file_scores_with_a_survival_curve(
    survival: Survival | None,
    duration: float | None,
    segment_seconds: float | None,
    share: float,
    expected: list[float],
) -> None:
    got = file_scores(
        {720: 4.0},
        LADDER,
        iter(SEGMENTS),  # any iterable: read once
        survival=survival,
        duration=duration,
        segment_seconds=segment_seconds,
        single_file_share=share,
    )
    assert [f for f, _ in got] == SEGMENTS
    assert [s for _, s in got] == pytest.approx(expected)
