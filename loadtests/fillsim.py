"""A day in simulation: one cache under LRU, LRU plus nightly fill, and Belady's optimum.

The pure core of ``loadtests/bench_fill.py``: a seeded workload generator, the trace format,
the fill predictor and the three policies. No I/O and no clock; every function is a plain
function of its arguments, so tests/test_fillsim.py checks them on tables of tiny traces.

A trace is a time-ordered list of requests, each for a whole *object* (a fixed-size chunk of a
title: equal sizes make Belady's furthest-next-use rule exactly optimal, the short last chunk of
a title aside). The policies share one code path for hits and misses so that they differ only
in what they keep:

* **LRU** is the edge's own index, ``edge.lru.LRUIndex``, so the simulation evicts as the edge
  does (``make_room`` with its bounded scan; an object that does not fit passes through).
* **LRU plus fill** uses the same index. At the fill hour each night it predicts tomorrow from
  the past with the control plane's formula (``control.popularity``: every request adds its
  bytes / its object's size, weighted by ``decay_weight``; releases scheduled for the next day
  get ``editorial_boost``), pins the best objects up to ``fill_share`` of the capacity and
  unpins those that left the set (they become ordinary LRU content, as on the edge).
* **Belady** evicts the cached objects needed furthest in the future and does not admit an
  object needed later than all of them (bypass), with next uses from one backward pass.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from control.popularity import (
    DAY,
    SURVIVAL_BINS,
    SurvivalTally,
    decay_weight,
    editorial_boost,
)
from edge.lru import LRUIndex

__all__ = [
    "DAY",
    "HOUR",
    "MIB",
    "Result",
    "Sessions",
    "Titles",
    "Trace",
    "TraceError",
    "Workload",
    "WorkloadParams",
    "diurnal_weights",
    "expected",
    "format_trace",
    "generate",
    "measured_day",
    "next_uses",
    "oracle",
    "parse_trace",
    "predict",
    "predict_objects",
    "select_fill",
    "simulate_belady",
    "simulate_fill",
    "simulate_lru",
    "titles_of",
    "viewing_survival",
    "zipf_weights",
]

HOUR = 3600.0
MIB = 1 << 20


class TraceError(ValueError):
    """A trace that cannot be used; the message names the file and, if any, the line."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests in time order: ``times[i]`` (seconds, day 0 starting at 0) for object
    ``objects[i]`` (an id, 0..n-1) whose size is ``sizes[id]`` bytes; ``names[id]`` is the
    object's token in the trace file. ``releases`` maps the objects of scheduled new releases
    to their publication time (generated workloads only: the schedule a studio announces)."""

    times: array[float]
    objects: array[int]
    sizes: array[int]
    names: list[str]
    releases: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times)

    def index_at(self, t: float) -> int:
        """The index of the first request at or after ``t``."""
        return bisect_left(self.times, t)

    def catalog_bytes(self) -> int:
        return sum(self.sizes)


# -- the trace format -----------------------------------------------------------------------


class _TraceBuilder:
    def __init__(self, where: str) -> None:
        self.where = where
        self.ids: dict[str, int] = {}
        self.first_line: list[int] = []
        self.times: array[float] = array("d")
        self.objects: array[int] = array("q")
        self.sizes: array[int] = array("q")
        self.names: list[str] = []

    def add(self, t: float, name: str, size: int, line: int) -> None:
        at = f"{self.where}:{line}"
        if not math.isfinite(t) or t < 0:
            raise TraceError(f"{at}: time {t!r} must be a finite number of seconds >= 0")
        if self.times and t < self.times[-1]:
            raise TraceError(
                f"{at}: time {t} is before the previous request's {self.times[-1]}: "
                "a trace must be in time order"
            )
        if size <= 0:
            raise TraceError(f"{at}: size {size} must be a positive number of bytes")
        oid = self.ids.get(name)
        if oid is None:
            oid = self.ids[name] = len(self.names)
            self.names.append(name)
            self.sizes.append(size)
            self.first_line.append(line)
        elif self.sizes[oid] != size:
            raise TraceError(
                f"{at}: object {name} has size {size} here but {self.sizes[oid]} on line "
                f"{self.first_line[oid]}"
            )
        self.times.append(t)
        self.objects.append(oid)

    def build(self) -> Trace:
        if not self.times:
            raise TraceError(f"{self.where}: no requests")
        return Trace(self.times, self.objects, self.sizes, self.names)


def parse_trace(lines: Iterable[str], where: str) -> Trace:
    """Read ``time object size`` lines (seconds as a float, an opaque token, bytes); ``#``
    starts a comment. A bad line is an error naming ``where`` and the line, never skipped."""
    b = _TraceBuilder(where)
    for n, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 3:
            raise TraceError(f"{where}:{n}: expected 'time object size', got {len(parts)} field(s)")
        t_text, name, size_text = parts
        try:
            t = float(t_text)
        except ValueError:
            raise TraceError(f"{where}:{n}: time {t_text!r} is not a number") from None
        try:
            size = int(size_text)
        except ValueError:
            raise TraceError(
                f"{where}:{n}: size {size_text!r} is not a whole number of bytes"
            ) from None
        b.add(t, name, size, n)
    return b.build()


def format_trace(trace: Trace, header: Sequence[str] = ()) -> Iterator[str]:
    """The trace as lines that ``parse_trace`` reads back (times to the millisecond)."""
    for h in header:
        yield f"# {h}\n"
    yield "# time_s object size_bytes\n"
    names, sizes = trace.names, trace.sizes
    for t, o in zip(trace.times, trace.objects, strict=True):
        yield f"{t:.3f} {names[o]} {sizes[o]}\n"


def measured_day(trace: Trace) -> int:
    """The last full day of a trace: the day of its last request if the trace reaches that
    day's last hour, else the day before. Day 0 cannot be measured (nothing warms up)."""
    last = trace.times[-1]
    day = int(last // DAY)
    if last < (day + 1) * DAY - HOUR:
        day -= 1
    if day < 1:
        raise TraceError("the trace needs at least two days: one to warm up, one to measure")
    return day


# -- the workload generator -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadParams:
    """The generator's knobs; bench_fill.py prints them and loadtests/README.md justifies them."""

    titles: int = 4000  # back catalog
    days: int = 4  # the last one is measured
    sessions_per_day: int = 30_000
    zipf_alpha: float = 0.8
    size_median: int = 1536 * MIB  # title bytes (one rendition), lognormal
    size_sigma: float = 0.6
    size_min: int = 256 * MIB
    size_max: int = 8192 * MIB
    chunk_size: int = 32 * MIB
    bitrate: float = 5e6  # bits/s: a session reads one chunk per chunk_size * 8 / bitrate s
    churn_sigma: float = 0.3  # daily noise of a title's log-popularity
    churn_keep: float = 0.9  # AR(1) memory of that noise (pull back to the Zipf base)
    releases_per_day: int = 4
    release_hour: float = 9.0  # local time of publication
    release_rank_max: int = 100  # a release starts at a log-uniform rank in 1..this
    release_decay: float = 0.7  # a release's popularity is multiplied by this each day
    release_floor: float = 0.05  # ... down to this share of its first day's
    peak_hour: int = 21
    trough_hour: int = 5
    peak_ratio: float = 4.0  # requests in the peak hour / in the trough hour
    abandon_share: float = 0.3  # sessions that stop within the first abandon_max of a title
    abandon_max: float = 0.1
    complete_share: float = 0.4  # sessions that watch to the end; the rest stop uniformly

    def check(self) -> None:
        positive = ("titles", "days", "sessions_per_day", "chunk_size", "size_min", "bitrate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not self.size_min <= self.size_median <= self.size_max:
            raise ValueError("size_min <= size_median <= size_max is required")
        if self.peak_hour % 24 == self.trough_hour % 24 or self.peak_ratio < 1:
            raise ValueError("the peak and trough hours must differ and peak_ratio be >= 1")
        if not 0 <= self.abandon_share + self.complete_share <= 1:
            raise ValueError("abandon_share + complete_share must be within 0..1")
        if not (0 < self.churn_keep < 1 and 0 < self.release_decay <= 1):
            raise ValueError("churn_keep must be in (0, 1) and release_decay in (0, 1]")
        if self.release_rank_max < 1 or self.releases_per_day < 0:
            raise ValueError("release_rank_max must be >= 1 and releases_per_day >= 0")

    def chunk_seconds(self) -> float:
        return self.chunk_size * 8 / self.bitrate


@dataclass(frozen=True, slots=True)
class Workload:
    """A generated trace, with what made it (for tests and the printed summary)."""

    params: WorkloadParams
    trace: Trace
    title_sizes: list[int]  # back catalog first, then the releases in release order
    title_first_object: list[int]
    release_day: dict[int, int]  # release title -> the day it is published
    session_starts: array[float]
    session_titles: array[int]
    session_chunks: array[int]  # chunks each session requested (from chunk 0, in order)
    # Each day's popularity weights of every title (0 before a release is out): the rate the
    # day's sessions are drawn with, for the expected-rate bound (``expected``).
    day_weights: list[list[float]] = field(default_factory=list)


def zipf_weights(n: int, alpha: float) -> list[float]:
    """Weight of ranks 0..n-1: 1 / (rank + 1) ** alpha."""
    return [1.0 / (r + 1) ** alpha for r in range(n)]


def diurnal_weights(peak_hour: int, trough_hour: int, ratio: float) -> list[float]:
    """Relative request rate of each hour of the day: 1 at the trough, ``ratio`` at the peak,
    linear in between (rising from the trough to the peak, falling back after it)."""
    up = (peak_hour - trough_hour) % 24
    down = 24 - up
    out = []
    for h in range(24):
        a = (h - trough_hour) % 24
        if a <= up:
            out.append(1.0 + (ratio - 1.0) * a / up)
        else:
            out.append(ratio - (ratio - 1.0) * (a - up) / down)
    return out


def generate(p: WorkloadParams, seed: int) -> Workload:
    """A few days of chunk requests: Zipf titles whose ranks drift daily, new releases that
    start near the top and fade, sessions started on a diurnal curve that read a title from
    its start to a watched fraction, one chunk per chunk's playing time."""
    p.check()
    rng = random.Random(seed)
    n_rel = p.releases_per_day * p.days
    n_titles = p.titles + n_rel
    mu = math.log(p.size_median)
    sizes = [
        min(p.size_max, max(p.size_min, int(rng.lognormvariate(mu, p.size_sigma))))
        for _ in range(n_titles)
    ]
    first: list[int] = []
    obj_sizes: array[int] = array("q")
    names: list[str] = []
    for t, size in enumerate(sizes):
        first.append(len(obj_sizes))
        n_chunks = -(-size // p.chunk_size)
        for c in range(n_chunks):
            obj_sizes.append(min(p.chunk_size, size - c * p.chunk_size))
            names.append(f"t{t}c{c}")
    first.append(len(obj_sizes))

    base = zipf_weights(max(p.titles, p.release_rank_max), p.zipf_alpha)
    release_day = {p.titles + i: i // p.releases_per_day for i in range(n_rel)}
    published = {t: d * DAY + p.release_hour * HOUR for t, d in release_day.items()}
    release_peak = {
        t: base[int(math.exp(rng.uniform(0.0, math.log(p.release_rank_max)))) - 1]
        for t in release_day
    }
    stationary = p.churn_sigma / math.sqrt(1.0 - p.churn_keep**2)
    drift = [rng.gauss(0.0, stationary) for _ in range(p.titles)]
    hours = list(accumulate(diurnal_weights(p.peak_hour, p.trough_hour, p.peak_ratio)))
    chunk_s = p.chunk_seconds()
    end = p.days * DAY
    shift = max(1, len(obj_sizes).bit_length())
    packed: list[int] = []
    day_weights: list[list[float]] = []
    starts: array[float] = array("d")
    chosen: array[int] = array("q")
    read: array[int] = array("q")
    for day in range(p.days):
        if day:
            drift = [p.churn_keep * x + rng.gauss(0.0, p.churn_sigma) for x in drift]
        weights = [base[i] * math.exp(drift[i]) for i in range(p.titles)]
        for t, d in release_day.items():
            age = day - d
            fade = max(p.release_decay**age, p.release_floor) if age >= 0 else 0.0
            weights.append(release_peak[t] * fade)
        day_weights.append(weights)
        cum = list(accumulate(weights))
        day_starts = sorted(
            day * DAY + (rng.choices(range(24), cum_weights=hours)[0] + rng.random()) * HOUR
            for _ in range(p.sessions_per_day)
        )
        for start in day_starts:
            title = rng.choices(range(n_titles), cum_weights=cum)[0]
            while published.get(title, 0.0) > start:  # nobody plays a title before it is out
                title = rng.choices(range(n_titles), cum_weights=cum)[0]
            starts.append(start)
            chosen.append(title)
            u = rng.random()
            if u < p.abandon_share:
                watched = rng.uniform(0.0, p.abandon_max)
            elif u < p.abandon_share + p.complete_share:
                watched = 1.0
            else:
                watched = rng.uniform(p.abandon_max, 1.0)
            n_chunks = first[title + 1] - first[title]
            c = 0
            for c in range(max(1, math.ceil(watched * n_chunks))):
                at = start + c * chunk_s
                if at >= end:
                    c -= 1
                    break
                packed.append(round(at * 1000) << shift | (first[title] + c))
            read.append(c + 1)
    packed.sort()
    mask = (1 << shift) - 1
    times = array("d", [(x >> shift) / 1000 for x in packed])
    objects = array("q", [x & mask for x in packed])
    del packed
    releases = {o: published[t] for t in release_day for o in range(first[t], first[t + 1])}
    trace = Trace(times, objects, obj_sizes, names, releases)
    return Workload(p, trace, sizes, first, release_day, starts, chosen, read, day_weights)


def viewing_survival(p: WorkloadParams, x: float) -> float:
    """P(a session reads past fraction ``x`` of its title), from the generator's viewing
    model: ``abandon_share`` stop uniformly within ``abandon_max``, ``complete_share`` watch
    it all, the rest stop uniformly in ``abandon_max..1``."""
    if x <= 0:
        return 1.0
    rest = 1.0 - p.abandon_share - p.complete_share
    early = p.abandon_share * max(0.0, 1.0 - x / p.abandon_max)
    late = rest * min(1.0, max(0.0, (1.0 - x) / (1.0 - p.abandon_max)))
    return early + late + p.complete_share


def expected(w: Workload, fill_times: Sequence[float]) -> list[dict[int, float]]:
    """Each night's *expected* requests of every chunk over the next day, from the rates the
    generator draws that day's sessions with (the titles' weights) and its viewing model:
    weight x S(chunk start). Not a policy either: it is the best any predictor that does not
    see the future's random draws could know, so what fill with it cannot reach, no
    predictor can. (The day of the night is used; a fill at 02:00 serves mostly that day.)"""
    p = w.params
    first = w.title_first_object
    out: list[dict[int, float]] = []
    for now in fill_times:
        day = min(int(now // DAY), len(w.day_weights) - 1)
        scores: dict[int, float] = {}
        for t, weight in enumerate(w.day_weights[day]):
            if weight <= 0:
                continue
            n = first[t + 1] - first[t]
            for c in range(n):
                scores[first[t] + c] = weight * viewing_survival(p, c / n)
        out.append(scores)
    return out


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """What one policy did over the measured window, in bytes."""

    policy: str
    capacity: int
    served: int  # bytes requested
    hit: int  # bytes served from the cache
    origin: int  # bytes fetched for misses while serving
    fill: int = 0  # bytes fetched by the nightly fill (not already cached)
    churn: int = 0  # bytes that entered the fill set
    fill_set: int = 0  # bytes of the fill set

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit / self.served if self.served else 0.0

    @property
    def offload(self) -> float:
        """Share of the served bytes not fetched from the origin while serving."""
        return 1.0 - self.origin / self.served if self.served else 0.0

    @property
    def offload_with_fill(self) -> float:
        """The same, counting the night's fill bytes as fetched from the origin."""
        return 1.0 - (self.origin + self.fill) / self.served if self.served else 0.0

    @property
    def churn_share(self) -> float:
        return self.churn / self.fill_set if self.fill_set else 0.0


def _served(trace: Trace, lo: int, hi: int) -> int:
    sizes, objects = trace.sizes, trace.objects
    return sum(sizes[objects[i]] for i in range(lo, hi))


# -- LRU ------------------------------------------------------------------------------------


def _run_lru(trace: Trace, idx: LRUIndex, start: int, stop: int, lo: int) -> tuple[int, int]:
    """Serve requests ``start..stop`` through the edge's index; bytes hit and missed from
    ``lo`` on. A miss is inserted if ``make_room`` makes it fit, else passed through."""
    objects, sizes = trace.objects, trace.sizes
    touch, make_room, insert = idx.touch, idx.make_room, idx.insert
    capacity = idx.capacity
    hit = miss = 0
    for i in range(start, stop):
        o = objects[i]
        if touch(o):
            if i >= lo:
                hit += sizes[o]
            continue
        size = sizes[o]
        if i >= lo:
            miss += size
        # An object larger than the whole cache passes through without evicting anything.
        if size <= capacity and make_room(size)[1]:
            insert(o, size)
    return hit, miss


def simulate_lru(trace: Trace, capacity: int, lo: int, hi: int, *, start: int = 0) -> Result:
    """LRU alone over requests ``start..hi`` (an empty cache at ``start``), measured over
    ``lo..hi``."""
    hit, miss = _run_lru(trace, LRUIndex(capacity), start, hi, lo)
    return Result("LRU", capacity, _served(trace, lo, hi), hit, miss)


# -- LRU plus nightly fill ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Titles:
    """Which title and chunk each object of a trace is, read from its name
    (``<title>c<chunk>``, as the generator names them): ``title[o]``, ``chunk[o]``;
    ``objects[t][c]`` is the object of chunk ``c`` of title ``t`` (-1 if the trace never
    requests it) and ``len(objects[t])`` the title's chunk count; ``names[t]`` the title."""

    title: array[int]
    chunk: array[int]
    objects: list[list[int]]
    names: list[str]


_CHUNK_NAME = re.compile(r"(.+)c(\d+)")


def titles_of(trace: Trace) -> Titles | None:
    """The titles of a trace whose every object name says its title and chunk, else None
    (the predictor then scores each object from its own requests)."""
    ids: dict[str, int] = {}
    title: array[int] = array("q")
    chunk: array[int] = array("q")
    objects: list[list[int]] = []
    for o, name in enumerate(trace.names):
        m = _CHUNK_NAME.fullmatch(name)
        if m is None:
            return None
        t = ids.setdefault(m.group(1), len(ids))
        if t == len(objects):
            objects.append([])
        c = int(m.group(2))
        row = objects[t]
        if c >= len(row):
            row.extend([-1] * (c + 1 - len(row)))
        row[c] = o
        title.append(t)
        chunk.append(c)
    return Titles(title, chunk, objects, list(ids))


@dataclass(slots=True)
class Sessions:
    """Sessions rebuilt from a trace's requests, fed in time order (``feed``): a request for a
    title's chunk 0 starts one; a request for chunk ``c > 0`` continues the most recent session
    of that title whose last chunk was ``c - 1`` (sessions of a title that run at once read at
    the same pace, so swapping two of them changes no count). A request continuing nothing (a
    trace cut mid-session, a seek) is left out. ``start[s]``, ``title[s]``, ``chunks[s]``
    (chunks read so far)."""

    titles: Titles
    start: array[float] = field(default_factory=lambda: array("d"))
    title: array[int] = field(default_factory=lambda: array("q"))
    chunks: array[int] = field(default_factory=lambda: array("q"))
    _waiting: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    _pos: int = 0

    def feed(self, trace: Trace, stop: int) -> None:
        """Take in requests from where the last call stopped up to index ``stop``."""
        tof, cof = self.titles.title, self.titles.chunk
        objects, times = trace.objects, trace.times
        waiting = self._waiting
        start, title, chunks = self.start, self.title, self.chunks
        for i in range(self._pos, stop):
            o = objects[i]
            t, c = tof[o], cof[o]
            if c == 0:
                sid = len(start)
                start.append(times[i])
                title.append(t)
                chunks.append(1)
            else:
                stack = waiting.get((t, c))
                if not stack:
                    continue
                sid = stack.pop()
                chunks[sid] = c + 1
            waiting.setdefault((t, c + 1), []).append(sid)
        self._pos = max(self._pos, stop)


def predict(
    trace: Trace,
    fill_times: Sequence[float],
    *,
    titles: Titles | None = None,
    half_life_days: float = 1.0,
    boost_views: float = 0.0,
    boost_days: float = 2.0,
    bins: int = SURVIVAL_BINS,
) -> list[dict[int, float]]:
    """Each night's predicted score of every object, from the requests before that night.

    With ``titles`` (``titles_of``), as control/fill.py scores files: a title's score is its
    decayed count of sessions (``decay_weight`` of each session's start), one survival curve
    (``control.popularity.SurvivalTally``) is estimated from every session's reached fraction
    (the middle of its last chunk: ``(chunks - 0.5) / n``), and chunk ``c`` of an ``n``-chunk
    title scores ``count * S(c / n)``; a release published by the next night gets
    ``editorial_boost`` sessions. Without ``titles``, each object is scored from its own
    requests (``predict_objects``). The release's true popularity is never looked at."""
    if titles is None:
        return predict_objects(
            trace,
            fill_times,
            half_life_days=half_life_days,
            boost_views=boost_views,
            boost_days=boost_days,
        )
    release_titles: dict[int, float] = {}
    for o, published in trace.releases.items():
        release_titles[titles.title[o]] = published
    sessions = Sessions(titles)
    rows = titles.objects
    out: list[dict[int, float]] = []
    for now in fill_times:
        sessions.feed(trace, trace.index_at(now))
        counts: dict[int, float] = {}
        tally = SurvivalTally(bins)
        for t0, t, n in zip(sessions.start, sessions.title, sessions.chunks, strict=True):
            w = decay_weight(now - t0, half_life_days)
            counts[t] = counts.get(t, 0.0) + w
            tally.add((n - 0.5) / len(rows[t]), w)
        for t, published in release_titles.items():
            if published <= now + DAY:  # the schedule is known a day ahead
                b = editorial_boost(published, now, boost_views, boost_days)
                if b > 0:
                    counts[t] = counts.get(t, 0.0) + b
        s = tally.curve()
        night: dict[int, float] = {}
        for t, count in counts.items():
            row = rows[t]
            n = len(row)
            for c, o in enumerate(row):
                if o >= 0:
                    night[o] = count * s(c / n)
        out.append(night)
    return out


def predict_objects(
    trace: Trace,
    fill_times: Sequence[float],
    *,
    half_life_days: float = 1.0,
    boost_views: float = 0.0,
    boost_days: float = 2.0,
) -> list[dict[int, float]]:
    """The fallback for a trace whose object names do not say their title: each object is
    scored from its own requests (noisy for a tail chunk with a few requests a day). A request
    adds its bytes / its object's size (one read of the object) weighted by ``decay_weight``
    of its age, and the objects of a release published by the next night get
    ``editorial_boost`` reads."""
    out: list[dict[int, float]] = []
    scores: dict[int, float] = {}
    at: float | None = None
    pos = 0
    times, objects = trace.times, trace.objects
    for now in fill_times:
        if at is not None:
            f = decay_weight(now - at, half_life_days)
            scores = {o: s * f for o, s in scores.items()}
        stop = trace.index_at(now)
        get = scores.get
        for i in range(pos, stop):
            o = objects[i]
            scores[o] = get(o, 0.0) + decay_weight(now - times[i], half_life_days)
        pos, at = stop, now
        night = dict(scores)
        for o, published in trace.releases.items():
            if published <= now + DAY:  # the schedule is known a day ahead
                b = editorial_boost(published, now, boost_views, boost_days)
                if b > 0:
                    night[o] = night.get(o, 0.0) + b
        out.append(night)
    return out


def oracle(trace: Trace, fill_times: Sequence[float]) -> list[dict[int, float]]:
    """Each night's *true* requests of the next 24 hours: what a perfect predictor would see.
    Not a policy (it reads the future); it splits the gap between fill and Belady into what
    prediction loses and what a set fixed for a day cannot do."""
    out: list[dict[int, float]] = []
    objects = trace.objects
    for now in fill_times:
        counts: dict[int, float] = {}
        for i in range(trace.index_at(now), trace.index_at(now + DAY)):
            o = objects[i]
            counts[o] = counts.get(o, 0.0) + 1.0
        out.append(counts)
    return out


def select_fill(
    scores: dict[int, float],
    sizes: Sequence[int],
    budget: int,
    previous: frozenset[int] | set[int],
    margin: float,
) -> set[int]:
    """The objects to pin: best predicted score first, up to ``budget`` bytes. An object of
    yesterday's set counts its score times ``1 + margin``, so a newcomer replaces it only when
    it is better by that margin (day-to-day churn stays low). Ties: the smaller id."""
    keep = 1.0 + margin

    def rank(item: tuple[int, float]) -> tuple[float, int]:
        o, s = item
        return (-s * keep if o in previous else -s, o)

    chosen: set[int] = set()
    used = 0
    for o, s in sorted(scores.items(), key=rank):
        if s <= 0:
            continue
        size = sizes[o]
        if used + size <= budget:
            chosen.add(o)
            used += size
    return chosen


def simulate_fill(
    trace: Trace,
    capacity: int,
    lo: int,
    hi: int,
    fill_times: Sequence[float],
    nightly: Sequence[dict[int, float]],
    *,
    fill_share: float = 0.8,
    margin: float = 0.1,
    start: int = 0,
) -> Result:
    """LRU plus the nightly fill, measured over ``lo..hi``. At ``fill_times[k]`` the set
    chosen from ``nightly[k]`` is pinned at once (the fill is taken to be complete at the
    start of its window); objects that left it become ordinary LRU content (unpinned as
    most recently used, as the edge does)."""
    idx = LRUIndex(capacity)
    sizes = trace.sizes
    budget = int(fill_share * capacity)
    pinned: set[int] = set()
    hit = miss = fill = churn = fill_set = 0
    pos = start  # an empty cache there; nights before it are skipped
    for now, scores in zip(fill_times, nightly, strict=True):
        if trace.index_at(now) < start:
            # Not applied (the cache starts empty at ``start``), but chosen all the same, so
            # the first applied night is sticky to, and its churn measured against, the last.
            pinned = select_fill(scores, sizes, budget, pinned, margin)
            continue
        stop = min(trace.index_at(now), hi)
        h, m = _run_lru(trace, idx, pos, stop, lo)
        hit, miss, pos = hit + h, miss + m, stop
        if stop >= hi:
            break
        new = select_fill(scores, sizes, budget, pinned, margin)
        for o in pinned - new:
            idx.unpin(o)
        for o in new:
            idx.pin(o)  # already cached: nothing to fetch
        fetched = 0
        for o in sorted(new):
            if o in idx:
                continue
            if idx.make_room(sizes[o])[1]:
                idx.insert(o, sizes[o], pinned=True)
                fetched += sizes[o]
            else:
                new.discard(o)
        if stop >= lo:  # a night inside the measured window
            fill += fetched
            churn += sum(sizes[o] for o in new - pinned)
            fill_set = sum(sizes[o] for o in new)
        pinned = new
    h, m = _run_lru(trace, idx, pos, hi, lo)
    return Result(
        "LRU+fill", capacity, _served(trace, lo, hi), hit + h, miss + m, fill, churn, fill_set
    )


# -- Belady ---------------------------------------------------------------------------------


def next_uses(objects: Sequence[int]) -> array[int]:
    """``out[i]``: the index of the next request for ``objects[i]``, or ``len(objects)``."""
    n = len(objects)
    out: array[int] = array("q", bytes(8 * n))
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        o = objects[i]
        out[i] = last.get(o, n)
        last[o] = i
    return out


def simulate_belady(
    trace: Trace,
    capacity: int,
    lo: int,
    hi: int,
    nxt: Sequence[int] | None = None,
    *,
    start: int = 0,
) -> Result:
    """Belady's MIN with bypass over requests ``start..hi`` (an empty cache at ``start``),
    measured over ``lo..hi``: on a miss,
    evict the cached objects whose next request is furthest away, but only those needed later
    than the missed object; if that frees too little, do not admit it. With equal sizes this
    is optimal (tests check it against a brute force); a short last chunk makes it a close
    approximation of the byte-optimal policy, which is NP-hard in general."""
    objects, sizes = trace.objects, trace.sizes
    n = len(objects)
    if nxt is None:
        nxt = next_uses(objects)
    shift = max(1, n.bit_length())  # heap entries: -(next_use << shift | object), a max-heap
    mask = (1 << shift) - 1
    cache: dict[int, int] = {}  # object -> its next use
    heap: list[int] = []
    push, pop = heapq.heappush, heapq.heappop
    used = hit = miss = 0
    for i in range(start, hi):
        o = objects[i]
        nu = nxt[i]
        size = sizes[o]
        if o in cache:
            if i >= lo:
                hit += size
            if nu >= n:  # never asked again: its room is better spent
                del cache[o]
                used -= size
            else:
                cache[o] = nu
                push(heap, -(nu << shift | o))
            continue
        if i >= lo:
            miss += size
        if nu >= n or size > capacity:
            continue
        freed: list[tuple[int, int]] = []
        while used + size > capacity:
            key = -heap[0]
            far, victim = key >> shift, key & mask
            if cache.get(victim) != far:
                pop(heap)  # stale: the object was asked again or evicted since
                continue
            if far <= nu:
                break  # every cached object is needed before this one: bypass it
            pop(heap)
            del cache[victim]
            used -= sizes[victim]
            freed.append((far, victim))
        if used + size > capacity:
            for far, victim in freed:
                cache[victim] = far
                used += sizes[victim]
                push(heap, -(far << shift | victim))
            continue
        cache[o] = nu
        used += size
        push(heap, -(nu << shift | o))
        if len(heap) > 4 * len(cache) + 1024:  # drop stale entries, keep the heap small
            heap = [-(f << shift | v) for v, f in cache.items()]
            heapq.heapify(heap)
    return Result("Belady", capacity, _served(trace, lo, hi), hit, miss)
