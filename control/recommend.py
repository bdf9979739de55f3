"""Home-screen recommendation rows: the pure core of the batch job and of its fallback.

The batch job feeds :func:`recompute` every watch event and the catalogue; it returns the rows to
store per profile. Serving reads the stored rows and, for a profile with none (a new profile, or
the batch has not run yet), serves :func:`popular_rows`.

Rows, in the order they are shown:

* ``continue_watching``: titles whose latest watch is unfinished, most recent first;
* ``because_you_watched``: titles co-watched with a recently finished title X (item-to-item
  cosine similarity over profiles, :func:`cowatch_similarity`), X being the recent title most
  typical of the profile's taste;
* ``top_in_genre``: the most trending titles of the genre the profile watches most;
* ``trending``: exponentially decayed play counts (:func:`trending_scores`);
* ``new_releases``: released in the last 30 days, newest first.

Everything here is pure: time is the injected ``now`` and there is no I/O, so a batch run can be
replayed exactly and the tests need no clock.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

__all__ = [
    "DAY_S",
    "NEW_RELEASE_WINDOW_S",
    "Row",
    "Title",
    "Watch",
    "cowatch_similarity",
    "home_rows",
    "popular_rows",
    "recompute",
    "trending_scores",
]

DAY_S = 86400.0
NEW_RELEASE_WINDOW_S = 30 * DAY_S

# A profile that watched n titles contributes n*(n-1)/2 pairs; without a cap one heavy profile (or
# a bot) would dominate both the batch's run time and the similarities. Its most recent titles
# are the ones that say most about its current taste.
MAX_TITLES_PER_PROFILE = 200

# A profile with no rating in the batch's input gets only all-ages titles: showing a child
# something too mature is far worse than showing an adult too little.
FAIL_CLOSED_MATURITY = 0

# How many recently finished titles compete to be the "X" of Because You Watched X, and how
# fast an older one's vote fades. Tuned on loadtests/bench_recommend.py: looking further back
# than ~10 titles gains little, while a single anchor loses about a third of the hits.
ANCHOR_CANDIDATES = 10
ANCHOR_RECENCY_DECAY = 0.85


@dataclass(frozen=True)
class Title:
    id: str
    genres: tuple[str, ...]
    released: float  # epoch seconds
    maturity: int = 0


@dataclass(frozen=True)
class Watch:
    profile: str
    title: str
    at: float  # epoch seconds
    progress: float  # 0..1
    finished: bool


@dataclass(frozen=True)
class Row:
    name: str  # continue_watching | because_you_watched | top_in_genre | trending | new_releases | popular
    label: str
    titles: tuple[str, ...]


SimilarityIndex = Mapping[str, Sequence[tuple[str, float]]]


def trending_scores(
    watches: Iterable[Watch], now: float, half_life_days: float = 3.0
) -> dict[str, float]:
    """Play counts per title, each play weighted 0.5 ** (age / half-life).

    Plays after ``now`` are ignored rather than weighted above 1: they can only come from clock
    skew or from replaying the batch for a past ``now``, and in both cases counting them would
    let the future leak into the result.
    """
    if not half_life_days > 0:
        raise ValueError("half_life_days must be positive")
    half_life_s = half_life_days * DAY_S
    scores: dict[str, float] = defaultdict(float)
    for w in watches:
        if w.at > now:
            continue
        scores[w.title] += 0.5 ** ((now - w.at) / half_life_s)
    return dict(scores)


def cowatch_similarity(
    watches: Iterable[Watch],
    *,
    min_support: int = 2,
    top_k: int = 50,
    max_titles_per_profile: int = MAX_TITLES_PER_PROFILE,
) -> dict[str, list[tuple[str, float]]]:
    """Item-to-item cosine similarity over the sets of profiles that watched each title.

    sim(a, b) = |P(a) & P(b)| / sqrt(|P(a)| * |P(b)|). Dividing by the geometric mean of both
    audiences keeps a blockbuster that everyone watched from being "similar" to everything.
    Pairs co-watched by fewer than ``min_support`` profiles are dropped: one shared profile is
    anecdote, and for rare titles it would otherwise give a perfect score of 1.0.

    Each title keeps its ``top_k`` neighbours, best first (ties by id, for determinism). The
    score itself is symmetric; only the top-k truncation may keep a pair on one side.
    """
    if min_support < 1:
        raise ValueError("min_support must be >= 1")
    if top_k < 0:
        raise ValueError("top_k must be >= 0")
    if max_titles_per_profile < 1:
        raise ValueError("max_titles_per_profile must be >= 1")

    # Latest watch time per (profile, title): a set per profile, ordered by recency for the cap.
    last_seen: dict[str, dict[str, float]] = defaultdict(dict)
    for w in watches:
        seen = last_seen[w.profile]
        if w.at > seen.get(w.title, -math.inf):
            seen[w.title] = w.at

    audience: Counter[str] = Counter()
    together: Counter[tuple[str, str]] = Counter()
    for seen in last_seen.values():
        recent = sorted(seen, key=lambda t: (-seen[t], t))[:max_titles_per_profile]
        audience.update(recent)
        # Sorting makes each unordered pair one key, halving the counter's size.
        together.update(combinations(sorted(recent), 2))

    neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (a, b), n in together.items():
        if n < min_support:
            continue
        score = n / math.sqrt(audience[a] * audience[b])
        neighbours[a].append((b, score))
        neighbours[b].append((a, score))

    return {
        title: heapq.nsmallest(top_k, pairs, key=lambda p: (-p[1], p[0]))
        for title, pairs in neighbours.items()
    }


def _allowed(title_id: str, titles: Mapping[str, Title], max_maturity: int) -> bool:
    # A title missing from the catalogue (withdrawn, or not yet ingested) cannot be played.
    title = titles.get(title_id)
    return title is not None and title.maturity <= max_maturity


class _RowBuilder:
    """Collects rows while keeping each title in at most one of them.

    Rows are filled in display order, so a title lands in the first (most personal) row that
    wants it. A row left with nothing new is dropped: repeating titles from rows above adds no
    choice for the viewer.
    """

    def __init__(self, titles: Mapping[str, Title], max_maturity: int, row_size: int) -> None:
        if row_size < 0:
            raise ValueError("row_size must be >= 0")
        self.titles = titles
        self.max_maturity = max_maturity
        self.row_size = row_size
        self.used: set[str] = set()
        self.rows: list[Row] = []

    def take(self, candidates: Iterable[str], exclude: set[str]) -> tuple[str, ...]:
        picked: list[str] = []
        if self.row_size == 0:
            return ()
        for t in candidates:
            if t in self.used or t in exclude or t in picked:
                continue
            if not _allowed(t, self.titles, self.max_maturity):
                continue
            picked.append(t)
            if len(picked) == self.row_size:
                break
        return tuple(picked)

    def add(self, name: str, label: str, picked: tuple[str, ...]) -> bool:
        if not picked:
            return False
        self.used.update(picked)
        self.rows.append(Row(name, label, picked))
        return True


def _by_score(scores: Mapping[str, float]) -> list[str]:
    # Ties by id so that rows are stable between batch runs on equal data.
    return sorted(scores, key=lambda t: (-scores[t], t))


def _new_releases(titles: Mapping[str, Title], now: float) -> list[str]:
    # Titles with a future release date are announced, not playable, so they are left out.
    fresh = [t for t in titles.values() if now - NEW_RELEASE_WINDOW_S <= t.released <= now]
    return [t.id for t in sorted(fresh, key=lambda t: (-t.released, t.id))]


@dataclass(frozen=True)
class Shared:
    """Inputs every profile's rows share, computed once per batch rather than per profile
    (the per-profile re-sorting was half of a 5,000-profile batch)."""

    by_trend: list[str]  # title ids by trending score, ties by id
    new_releases: list[str]
    in_genre: Mapping[str, list[str]]  # genre -> its titles by trending rank, then id


def shared_inputs(titles: Mapping[str, Title], trending: Mapping[str, float], now: float) -> Shared:
    by_trend = _by_score(trending)
    rank = {t: i for i, t in enumerate(by_trend)}
    members: dict[str, list[str]] = defaultdict(list)
    for title in titles.values():
        for genre in set(title.genres):
            members[genre].append(title.id)
    last = len(rank)
    in_genre = {g: sorted(ids, key=lambda t: (rank.get(t, last), t)) for g, ids in members.items()}
    return Shared(by_trend, _new_releases(titles, now), in_genre)


def _because_you_watched(
    b: _RowBuilder, recent_first: Sequence[Watch], watched: set[str], similar: SimilarityIndex
) -> None:
    """Add the "Because you watched X" row: neighbours of one recently finished title X.

    Anchoring on the single latest title makes the row hostage to whatever the profile watched
    last, often a one-off popular pick. Instead the recent finished titles each vote for their
    unwatched neighbours (recent ones louder), and X is the recent title whose neighbourhood
    collects the most votes: the one most typical of the profile's taste. The row stays X's own
    neighbours, so the label is truthful, ordered by the votes. X must itself be allowed, or the
    label would name a title the profile may not see.
    """
    anchors = [w.title for w in recent_first if w.finished][:ANCHOR_CANDIDATES]
    votes: dict[str, float] = defaultdict(float)
    for i, anchor in enumerate(anchors):
        weight = ANCHOR_RECENCY_DECAY**i
        for t, score in similar.get(anchor, ()):
            if t not in watched:
                votes[t] += weight * score
    best: tuple[float, str, tuple[str, ...]] | None = None
    for anchor in anchors:
        if not _allowed(anchor, b.titles, b.max_maturity):
            continue
        ranked = sorted((t for t, _ in similar.get(anchor, ())), key=lambda t: (-votes[t], t))
        picked = b.take(ranked, watched)
        strength = sum(votes[t] for t in picked)
        # Strictly greater: on a tie the more recent anchor (seen first) keeps the row.
        if picked and (best is None or strength > best[0]):
            best = (strength, anchor, picked)
    if best is not None:
        b.add("because_you_watched", f"Because you watched {best[1]}", best[2])


def popular_rows(
    titles: Mapping[str, Title],
    trending: Mapping[str, float],
    *,
    now: float,
    max_maturity: int = 18,
    row_size: int = 10,
) -> list[Row]:
    """The popularity fallback: served to new profiles and whenever no batch output exists.

    The popular row ranks by trending score, then pads with the newest titles nobody has played
    yet, so a fresh deployment with no plays still has something to show.
    """
    b = _RowBuilder(titles, max_maturity, row_size)
    ranked = _by_score(trending)
    played = set(ranked)
    unplayed = sorted(
        (t for t in titles.values() if t.id not in played), key=lambda t: (-t.released, t.id)
    )
    b.add("popular", "Popular", b.take([*ranked, *(t.id for t in unplayed)], set()))
    b.add("new_releases", "New Releases", b.take(_new_releases(titles, now), set()))
    return b.rows


def home_rows(
    profile: str,
    history: Sequence[Watch],
    titles: Mapping[str, Title],
    *,
    similar: SimilarityIndex,
    trending: Mapping[str, float],
    now: float,
    max_maturity: int = 18,
    row_size: int = 10,
    shared: Shared | None = None,
) -> list[Row]:
    """The home rows of one profile, from its own watch history and the shared batch inputs.

    Only Continue Watching shows titles the profile has already started; every other row offers
    titles it has never played. No row ever shows a title above ``max_maturity``.
    """
    # Watches of other profiles or from after ``now`` are ignored, so a caller handing in a
    # wider slice cannot leak another profile's history or the future into these rows.
    own = [w for w in history if w.profile == profile and w.at <= now]
    if not own:
        return popular_rows(titles, trending, now=now, max_maturity=max_maturity, row_size=row_size)

    latest: dict[str, Watch] = {}
    for w in own:
        prev = latest.get(w.title)
        if prev is None or (w.at, w.progress) > (prev.at, prev.progress):
            latest[w.title] = w
    watched = set(latest)
    recent_first = sorted(latest.values(), key=lambda w: (-w.at, w.title))

    b = _RowBuilder(titles, max_maturity, row_size)

    # Continue Watching: the only row where watched titles belong, so it skips the exclusion.
    unfinished = [w.title for w in recent_first if not w.finished]
    b.add("continue_watching", "Continue Watching", b.take(unfinished, set()))

    _because_you_watched(b, recent_first, watched, similar)

    # Top in Genre: the profile's genres by how many distinct titles it watched in each; the
    # first one with something new to offer wins (ties by name, for determinism).
    genre_counts: Counter[str] = Counter()
    for t in watched:
        title = titles.get(t)
        if title is not None:
            genre_counts.update(set(title.genres))
    shared = shared or shared_inputs(titles, trending, now)
    for genre, _ in sorted(genre_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        # Titles of the genre that nobody played still qualify, after the played ones.
        if b.add(
            "top_in_genre", f"Top in {genre}", b.take(shared.in_genre.get(genre, ()), watched)
        ):
            break

    b.add("trending", "Trending Now", b.take(shared.by_trend, watched))
    b.add("new_releases", "New Releases", b.take(shared.new_releases, watched))
    return b.rows


def recompute(
    watches: Iterable[Watch],
    titles: Mapping[str, Title],
    *,
    now: float,
    profiles: Iterable[str],
    max_maturity: Mapping[str, int],
    row_size: int = 10,
    half_life_days: float = 3.0,
    min_support: int = 2,
) -> dict[str, list[Row]]:
    """The batch job's pure core: rows to store for each of ``profiles``.

    Watches after ``now`` are dropped up front so that rerunning the batch for a past ``now``
    reproduces what it stored then. A profile missing from ``max_maturity`` is served as
    all-ages (fail closed).
    """
    past = [w for w in watches if w.at <= now]
    trending = trending_scores(past, now, half_life_days)
    similar = cowatch_similarity(past, min_support=min_support)
    by_profile: dict[str, list[Watch]] = defaultdict(list)
    for w in past:
        by_profile[w.profile].append(w)
    shared = shared_inputs(titles, trending, now)
    return {
        p: home_rows(
            p,
            by_profile.get(p, []),
            titles,
            similar=similar,
            trending=trending,
            now=now,
            max_maturity=max_maturity.get(p, FAIL_CLOSED_MATURITY),
            row_size=row_size,
            shared=shared,
        )
        for p in profiles
    }
