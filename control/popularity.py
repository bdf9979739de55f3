"""Popularity of files for proactive fill: pure functions, no I/O and no clock.

Open Connect fills its appliances at night with what will be watched tomorrow. Tomorrow is
predicted from the recent past: every play adds the *views* it made of its title (seconds
watched / duration, so half a film is half a view), weighted down by its age with a half-life
(``decay_weight``), and a new release, which nobody has watched yet, gets an editorial boost
that fades over its first days (``editorial_boost``).

A title's views become scores of its *files*, the objects an edge stores. The score of a file
is "bytes streamed divided by file size": a player that watches a fraction ``v`` of a title at
rendition ``r`` reads about ``v`` times the bytes of each of ``r``'s files (it streams the
whole timeline's segments in proportion), so a file's score is the views of the plays that
streamed its rendition. Which rendition a play streamed is not recorded segment by segment;
ABR on a good network settles on the tallest rendition the plan allows, so a play counts for
the tallest rendition no taller than its plan's ``max_height`` (``rendition_for``). Files that
every player reads whatever its rendition (playlists, the MPD, audio, artwork) get all the
title's views. The single-file (byte-range) variant of a rendition is read only by players
that ask for ``master_single.m3u8``, which the control plane does not hand out: it gets
``single_file_share`` of its rendition's views (0 by default: reactive LRU keeps what is used).

Used by the control plane's fill feed (control/fill.py) and by the fill simulator
(loadtests/fillsim.py), so the benchmark predicts the way the product does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DAY",
    "MediaFile",
    "Rendition",
    "decay_weight",
    "editorial_boost",
    "file_scores",
    "rendition_for",
]

DAY = 86400.0  # seconds
# Files of a rendition that only the single-file (byte-range) HLS variant reads.
SINGLE_FILE_NAMES = frozenset({"single.mp4", "single.m3u8"})
SINGLE_FILE_ROOT = frozenset({"master_single.m3u8"})


@dataclass(frozen=True, slots=True)
class Rendition:
    """A video rendition of a title, as the origin's manifest.json names it."""

    name: str  # its directory under the title, e.g. "1080p"
    height: int  # pixels
    bandwidth: int  # bits/s (peak)


@dataclass(frozen=True, slots=True)
class MediaFile:
    """One file of a packaged title, as the origin's manifest.json lists it."""

    path: str  # relative to the title's base path /v/<key>/, e.g. "1080p/seg00001.m4s"
    size: int  # bytes
    xxh64: str  # hex digest of the whole file


def decay_weight(age_seconds: float, half_life_days: float) -> float:
    """The weight of an event ``age_seconds`` old: 1 now, 0.5 one half-life ago. A future
    event (a client clock ahead of ours) counts as now, never more."""
    if half_life_days <= 0 or not math.isfinite(half_life_days):
        raise ValueError("half_life_days must be a positive number")
    age = max(0.0, age_seconds)
    return math.pow(0.5, age / (half_life_days * DAY))


def editorial_boost(
    published_at: float | None, now: float, boost_views: float, boost_days: float
) -> float:
    """Views credited to a new release before anyone has watched it: ``boost_views`` on the
    day it is published, fading linearly to 0 after ``boost_days``. A title published in the
    future (scheduled) gets the full boost, so tonight's fill places tomorrow's release."""
    if published_at is None or boost_views <= 0 or boost_days <= 0:
        return 0.0
    age_days = (now - published_at) / DAY
    if age_days <= 0:
        return boost_views
    return boost_views * max(0.0, 1.0 - age_days / boost_days)


def rendition_for(renditions: Sequence[Rendition], max_height: int | None) -> Rendition | None:
    """The rendition a play with this height cap streams most of the time: the tallest no
    taller than the cap (ties: the higher bandwidth), or the shortest when all are taller.
    ``None`` cap: no limit."""
    if not renditions:
        return None
    fit = [r for r in renditions if max_height is None or r.height <= max_height]
    if not fit:
        return min(renditions, key=lambda r: (r.height, r.bandwidth, r.name))
    return max(fit, key=lambda r: (r.height, r.bandwidth, r.name))


def file_scores(
    views_by_cap: Mapping[int | None, float],
    renditions: Sequence[Rendition],
    files: Iterable[MediaFile],
    *,
    single_file_share: float = 0.0,
) -> list[tuple[MediaFile, float]]:
    """Each file's score from a title's views, grouped by the plays' height caps.

    ``views_by_cap`` maps a plan's ``max_height`` (``None``: no cap) to the decayed views of
    the plays made under it; the editorial boost, which has no plan, goes under ``None``.
    Returns every file with its score (possibly 0), in the order given."""
    total = sum(v for v in views_by_cap.values() if v > 0)
    per_rendition: dict[str, float] = {}
    for cap, views in views_by_cap.items():
        if views <= 0:
            continue
        r = rendition_for(renditions, cap)
        if r is not None:
            per_rendition[r.name] = per_rendition.get(r.name, 0.0) + views
    names = {r.name for r in renditions}
    out: list[tuple[MediaFile, float]] = []
    for f in files:
        head, sep, rest = f.path.partition("/")
        if sep and head in names:
            score = per_rendition.get(head, 0.0)
            if rest in SINGLE_FILE_NAMES:
                score *= single_file_share
        elif f.path in SINGLE_FILE_ROOT:
            score = total * single_file_share
        else:
            score = total  # playlists, MPD, audio, artwork: read by every player
        out.append((f, score))
    return out
