"""Popularity of files for proactive fill: pure functions, no I/O and no clock.

Open Connect fills its appliances at night with what will be watched tomorrow. Tomorrow is
predicted from the recent past: every play (a session, however long) counts once, weighted
down by its age with a half-life (``decay_weight``), and a new release, which nobody has
watched yet, gets an editorial boost of plays that fades over its first days
(``editorial_boost``).

A title's plays become scores of its *files*, the objects an edge stores. The score of a file
is "bytes streamed divided by file size", the number of times the file is read in full:

* a player reads a title **from where it starts up to the position it reaches**, so the
  segment starting at fraction ``x`` of the duration is read by the plays that reach ``x``.
  Viewers stop early (a large share sample a title and leave), so the first segments are read
  far more than the last. ``Survival`` is that curve: ``S(x)``, the share of plays that reach
  fraction ``x`` (``S(0) = 1``, non-increasing), estimated from the plays' reached positions
  (``SurvivalTally``: a fixed-bin histogram of ``position / duration``, cumulated from the
  end). A title's ``n`` plays stream about ``n * S(x)`` times the bytes of its segment at
  ``x``: that is exactly "bytes streamed / file size" for a segment, and the segment's score.
  One curve for all titles: a title's own few plays would make a noisy curve, while how far
  people watch varies much less between titles than how many watch.
* files that every player reads whatever its position (``init.mp4``, playlists, the MPD,
  artwork) are read once per play: their score is the play count.
* which rendition a play streamed is not recorded segment by segment; ABR on a good network
  settles on the tallest rendition the plan allows, so a play counts for the tallest rendition
  no taller than its plan's ``max_height`` (``rendition_for``). Files outside a rendition's
  directory (audio, playlists, artwork) get all the title's plays.
* the single-file (byte-range) variant of a rendition is read only by players that ask for
  ``master_single.m3u8``, which the control plane does not hand out: its playlists get
  ``single_file_share`` of the plays, its ``single.mp4`` that share of the mean of a segment's
  score (``plays * mean(S)``: the byte ranges read of the whole file).

With no position data ``S == 1`` everywhere: every file of a rendition scores its plays (the
uniform spread of earlier versions). A segment's start is ``(k - 1) * segment_seconds /
duration`` for ``seg%05d.m4s`` number ``k`` (origin/package.py numbers them from 1) when both
are known (manifest.json has them), else ``(k - 1) / N`` with ``N`` the highest segment number
of its directory among the files given (exact when the duration is ``N`` whole segments, one
segment early at most otherwise).

Used by the control plane's fill feed (control/fill.py) and by the fill simulator
(loadtests/fillsim.py), so the benchmark predicts the way the product does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "DAY",
    "SURVIVAL_BINS",
    "MediaFile",
    "Rendition",
    "Survival",
    "SurvivalTally",
    "decay_weight",
    "editorial_boost",
    "file_scores",
    "rendition_for",
    "segment_number",
]

DAY = 86400.0  # seconds
# Files of a rendition that only the single-file (byte-range) HLS variant reads.
SINGLE_FILE_NAMES = frozenset({"single.mp4", "single.m3u8"})
SINGLE_FILE_MEDIA = "single.mp4"  # the media itself: read in byte ranges up to the position
SINGLE_FILE_ROOT = frozenset({"master_single.m3u8"})
SURVIVAL_BINS = 1000  # histogram bins over [0, 1]: 0.1% of a title (6 s of a 100-min film)


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
    """Plays credited to a new release before anyone has watched it: ``boost_views`` on the
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


@dataclass(frozen=True, slots=True)
class Survival:
    """``S(x)``: the share of plays that reach fraction ``x`` of a title's duration.

    ``points[k]`` is ``S(k / bins)`` for ``k = 0..bins`` (``bins = len(points) - 1``):
    ``points[0] == 1``, non-increasing, ``points[-1]`` the share that reached the end. Between
    two points ``S`` is linear (positions spread evenly within a bin). ``Survival()`` is the
    curve without data: 1 everywhere."""

    points: tuple[float, ...] = (1.0, 1.0)

    def __post_init__(self) -> None:
        p = self.points
        if len(p) < 2 or p[0] != 1.0:
            raise ValueError("a survival curve needs at least 2 points and starts at 1")
        if any(not 0.0 <= b <= a for a, b in pairwise(p)):
            raise ValueError("a survival curve is non-increasing within [0, 1]")

    @property
    def bins(self) -> int:
        return len(self.points) - 1

    def __call__(self, x: float) -> float:
        """``S(x)``; 1 for ``x <= 0`` (every play reads the first segment), ``S(1)`` beyond 1."""
        if not x > 0.0:  # NaN too: no position known, count every play
            return 1.0
        p = self.points
        if x >= 1.0:
            return p[-1]
        pos = x * (len(p) - 1)
        k = int(pos)
        return p[k] + (p[k + 1] - p[k]) * (pos - k)

    def mean(self) -> float:
        """The mean fraction reached, ``integral of S over [0, 1]``: the share of a whole
        file's bytes an average play reads (the single-file variant's score per play)."""
        p = self.points
        return math.fsum(p[k] + p[k + 1] for k in range(len(p) - 1)) / (2 * (len(p) - 1))


class SurvivalTally:
    """A weighted histogram of the fractions plays reached, turned into a `Survival`.

    ``add(fraction, weight)``: a play that reached ``fraction`` of the duration (clamped to
    [0, 1]; a NaN or a weight <= 0 is left out). Bin ``k < bins`` holds ``[k/bins,
    (k+1)/bins)``; the last, ``bins``, the plays that reached the end. ``curve()`` cumulates
    from the end: ``S(k / bins)`` = weight of the plays at or past ``k / bins`` / all."""

    __slots__ = ("bins", "counts", "total")

    def __init__(self, bins: int = SURVIVAL_BINS) -> None:
        if bins < 1:
            raise ValueError("bins must be >= 1")
        self.bins = bins
        self.counts = [0.0] * (bins + 1)
        self.total = 0.0

    def add(self, fraction: float, weight: float = 1.0) -> None:
        if not (weight > 0.0 and math.isfinite(weight)) or math.isnan(fraction):
            return
        f = min(1.0, max(0.0, fraction))
        # The epsilon keeps 0.29 * 100 (28.999999999999996) in bin 29.
        k = self.bins if f >= 1.0 else min(self.bins - 1, int(f * self.bins + 1e-9))
        self.counts[k] += weight
        self.total += weight

    def curve(self) -> Survival:
        """The estimated curve; without data, ``Survival()`` (1 everywhere)."""
        if self.total <= 0.0:
            return Survival()
        out = [0.0] * (self.bins + 1)
        acc = 0.0
        for k in range(self.bins, 0, -1):
            acc += self.counts[k]
            out[k] = min(1.0, acc / self.total)
        out[0] = 1.0
        for k in range(1, self.bins + 1):  # float sums: keep it non-increasing
            out[k] = min(out[k], out[k - 1])
        return Survival(tuple(out))


def segment_number(name: str) -> int | None:
    """The number of a media segment's file name (``seg00042.m4s``: 42), else None."""
    if len(name) >= 12 and name.startswith("seg") and name.endswith(".m4s"):
        digits = name[3:-4]
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def file_scores(
    plays_by_cap: Mapping[int | None, float],
    renditions: Sequence[Rendition],
    files: Iterable[MediaFile],
    *,
    survival: Survival | None = None,
    duration: float | None = None,
    segment_seconds: float | None = None,
    single_file_share: float = 0.0,
) -> list[tuple[MediaFile, float]]:
    """Each file's score from a title's plays, grouped by the plays' height caps.

    ``plays_by_cap`` maps a plan's ``max_height`` (``None``: no cap) to the decayed count of
    the plays made under it; the editorial boost, which has no plan, goes under ``None``. A
    segment (``<dir>/segNNNNN.m4s``) scores its directory's plays times ``survival`` at its
    start (see the module doc; ``None``: 1 everywhere); other files their plays. Returns every
    file with its score (possibly 0), in the order given."""
    s = survival if survival is not None else Survival()
    files = list(files)
    total = sum(v for v in plays_by_cap.values() if v > 0)
    per_rendition: dict[str, float] = {}
    for cap, plays in plays_by_cap.items():
        if plays <= 0:
            continue
        r = rendition_for(renditions, cap)
        if r is not None:
            per_rendition[r.name] = per_rendition.get(r.name, 0.0) + plays
    names = {r.name for r in renditions}
    # A segment's start as a fraction of the duration: from segment_seconds when known, else
    # from the number of segments in its directory.
    step: float | None = None
    if duration and segment_seconds and duration > 0 and segment_seconds > 0:
        step = segment_seconds / duration
    split = [f.path.rpartition("/") for f in files]  # (directory, "/", name)
    numbers = [segment_number(name) for _, _, name in split]
    last: dict[str, int] = {}
    if step is None:
        for (directory, _, _), n in zip(split, numbers, strict=True):
            if n is not None and n > last.get(directory, 0):
                last[directory] = n
    out: list[tuple[MediaFile, float]] = []
    for f, (directory, _, _), n in zip(files, split, numbers, strict=True):
        head, sep, rest = f.path.partition("/")
        if sep and head in names:
            score = per_rendition.get(head, 0.0)
            if rest == SINGLE_FILE_MEDIA:
                score *= single_file_share * s.mean()
            elif rest in SINGLE_FILE_NAMES:
                score *= single_file_share
        elif f.path in SINGLE_FILE_ROOT:
            score = total * single_file_share
        else:
            score = total  # playlists, MPD, audio, artwork: read by every player
        if n is not None and score > 0:
            x = (n - 1) * step if step is not None else (n - 1) / last[directory]
            score *= s(x)
        out.append((f, score))
    return out
