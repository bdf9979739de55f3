"""The popularity feed of proactive fill: which files each region will watch tomorrow.

Steering reads ``GET /v1/fill/popularity?region=<site>`` (control/routes/fill.py) and turns it
into one fill manifest per edge. The answer ranks *files* (the objects edges store) by the
score control/popularity.py defines, "bytes streamed divided by file size":

* every play (a session, however long; one that watched nothing is left out) counts once,
  weighted by ``decay_weight(now - updated_at, fill.half_life_days)``; only plays updated
  within ``fill.window_days`` count. Plays are grouped by (region, media key, the plan's
  ``max_height`` at the start), since the cap decides which rendition was streamed;
* the same plays, all regions together, give the survival curve of viewing (`Survival`: the
  share of plays that reach each fraction of a title), each play the fraction it reached,
  ``max(position, seconds_watched) / duration`` (the last position, or at least what it
  watched from the start when it seeked back), with the same decayed weight;
* a title published within ``fill.boost_days`` (or scheduled in the future) gets
  ``editorial_boost`` plays (``fill.boost_views``) with no cap, in every region, so tonight's
  fill places tomorrow's release before anyone has watched it;
* ``file_scores`` turns a title's plays into its files' scores: a segment the plays of its
  rendition times the survival at its start, the files every player reads the plays
  (control/popularity.py; control/feed.py stores the files from the origin's manifest.json;
  a title without files, e.g. one made by admin CRUD without origin media, never appears).
  Objects with a score above 0 are answered, by score descending then path, at most
  ``limit`` of them.

The region of a play is the site of the first edge steering gave it (control/playback.py); a
region without plays in the window (a new site, or a name steering knows and we never saw) is
answered the all-regions scores with ``"fallback": true``. Plays served by
``playback.fallback_url`` (region '') count only there.

Cost. Steering asks hourly for each of N sites; the plays are read and decayed once per
``fill.cache_ttl`` (`FillFeed`, one computation for all regions, concurrent requests wait for
the same one), and each (region, limit) answer is kept with it. Plays are read in pages of
PLAYS_PAGE rows, files in batches of FILES_BATCH titles, with the event loop free between
them (and between the titles of a batch while their files are scored). Only the titles that can reach the top ``limit`` have their files read: no file of a
title scores more than the title's total plays (`TopFiles`: ``S <= 1``), so the walk down the
titles in that order stops once the ``limit``-th best score beats the next title's total.

The pure parts (`PlayTally`, `boosts`, `merge_boost`, `ranked_titles`, `TopFiles`) take the
clock's time as an argument and are tested with tables (tests/test_control_fill.py).
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.config import read_credential_file

from .errors import NotFound, Unauthorized, Unavailable
from .popularity import (
    DAY,
    MediaFile,
    Rendition,
    Survival,
    SurvivalTally,
    decay_weight,
    editorial_boost,
    file_scores,
)

__all__ = [
    "REGION_RE",
    "FillFeed",
    "FillTitle",
    "Play",
    "PlayTally",
    "TopFiles",
    "boosts",
    "merge_boost",
    "ranked_titles",
    "renditions_of",
]

log = logging.getLogger("control")

# Region names: steering's site names (what ?region= accepts, what a play records).
REGION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Plays read per query: on SQLite (which runs on the event loop) a page of 2000 holds the loop
# ~25 ms, reading and tallying included; 100k plays take ~1.5 s in all, in 50 slices.
PLAYS_PAGE = 2000
FILES_BATCH = 32  # titles whose files are read per query
ANSWERS_KEPT = 64  # (region, limit) answers kept per computation

Plays = dict[int | None, float]  # a title's decayed plays by the plays' cap (None: no cap)


@dataclass(frozen=True, slots=True)
class FillTitle:
    """A published media key (a movie, or an episode) as the feed needs it."""

    key: str
    duration: float | None  # seconds; None or 0: plays of it are not counted
    renditions: tuple[Rendition, ...]
    published_at: float | None  # the catalog's publication (released_at); may be ahead


@dataclass(frozen=True, slots=True)
class Play:
    region: str  # '' for a play on playback.fallback_url
    key: str
    max_height: int | None  # the plan's cap at the start; None for plays before it was kept
    seconds_watched: float
    updated_at: float
    position: float = 0.0  # the last position recorded, seconds


def renditions_of(raw: Any) -> tuple[Rendition, ...]:
    """The catalog's stored renditions (the feed's JSON list) as popularity Renditions;
    entries without a name are left out, a missing height or bandwidth counts as 0."""
    out: list[Rendition] = []
    for r in raw if isinstance(raw, list) else ():
        if not isinstance(r, dict) or not isinstance(r.get("name"), str):
            continue
        h, b = r.get("height"), r.get("bandwidth")
        out.append(
            Rendition(
                r["name"],
                h if isinstance(h, int) and not isinstance(h, bool) else 0,
                b if isinstance(b, int) and not isinstance(b, bool) else 0,
            )
        )
    return tuple(out)


class PlayTally:
    """Decayed plays per region and in all regions, and the survival curve of viewing, play by
    play (pure: ``now`` given)."""

    def __init__(
        self, now: float, half_life_days: float, window_days: float, bins: int | None = None
    ) -> None:
        self.now = now
        self.half_life_days = half_life_days
        self.since = now - window_days * DAY
        self.by_region: dict[str, dict[str, Plays]] = {}
        self.total: dict[str, Plays] = {}
        self.reached = SurvivalTally() if bins is None else SurvivalTally(bins)
        self.plays = 0  # plays counted

    def add(self, play: Play, title: FillTitle | None) -> bool:
        """Count one play; False when it does not count (outside the window, an unknown or
        unpublished title, no duration, nothing watched)."""
        if title is None or not title.duration or title.duration <= 0:
            return False
        if play.updated_at < self.since or play.seconds_watched <= 0:
            return False
        weight = decay_weight(self.now - play.updated_at, self.half_life_days)
        _add(self.total, play.key, play.max_height, weight)
        if play.region:
            _add(self.by_region.setdefault(play.region, {}), play.key, play.max_height, weight)
        reached = max(play.position, play.seconds_watched)
        self.reached.add(reached / title.duration, weight)
        self.plays += 1
        return True

    def survival(self) -> Survival:
        """The survival curve of the plays counted (1 everywhere before any)."""
        return self.reached.curve()


def _add(plays: dict[str, Plays], key: str, cap: int | None, v: float) -> None:
    caps = plays.setdefault(key, {})
    caps[cap] = caps.get(cap, 0.0) + v


def boosts(
    titles: Iterable[FillTitle], now: float, boost_views: float, boost_days: float
) -> dict[str, float]:
    """The editorial boost of every title that has one (published within boost_days, or
    scheduled)."""
    out: dict[str, float] = {}
    for t in titles:
        b = editorial_boost(t.published_at, now, boost_views, boost_days)
        if b > 0:
            out[t.key] = b
    return out


def merge_boost(plays: Mapping[str, Plays], boost: Mapping[str, float]) -> dict[str, Plays]:
    """``plays`` plus each title's boost under the uncapped plays (None): a boost has no plan.
    The inputs are left as they are."""
    out = {k: dict(caps) for k, caps in plays.items()}
    for key, b in boost.items():
        caps = out.setdefault(key, {})
        caps[None] = caps.get(None, 0.0) + b
    return out


def ranked_titles(plays: Mapping[str, Plays]) -> list[tuple[float, str]]:
    """(total plays, key) of the titles with plays, most first (then by key): no file of a
    title scores more than its total (file_scores: the survival is at most 1, and so is
    single_file_share)."""
    totals = [(sum(v for v in caps.values() if v > 0), key) for key, caps in plays.items()]
    return sorted(((t, k) for t, k in totals if t > 0), key=lambda p: (-p[0], p[1]))


@dataclass(slots=True)
class TopFiles:
    """The best ``limit`` objects of titles fed to it in `ranked_titles` order."""

    limit: int
    items: list[tuple[float, str, str, MediaFile]] = field(default_factory=list)
    _best: list[float] = field(default_factory=list)  # min-heap of the best `limit` scores

    def add(self, key: str, scored: Iterable[tuple[MediaFile, float]]) -> None:
        for f, score in scored:
            if score <= 0:
                continue
            if len(self._best) < self.limit:
                heapq.heappush(self._best, score)
            elif score >= self._best[0]:
                heapq.heappushpop(self._best, score)
            else:
                continue  # below the best `limit` already: never answered
            self.items.append((score, f"/v/{key}/{f.path}", key, f))

    def full_above(self, bound: float) -> bool:
        """Whether no title whose files score at most ``bound`` can change the answer: the
        ``limit``-th best score beats it (a tie could still win on path, so not >=)."""
        return len(self._best) >= self.limit and self._best[0] > bound

    def objects(self) -> list[dict[str, Any]]:
        top = sorted(self.items, key=lambda i: (-i[0], i[1]))[: self.limit]
        return [
            {"key": key, "path": path, "size": f.size, "xxh64": f.xxh64, "score": score}
            for score, path, key, f in top
        ]


# -- the service ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Snapshot:
    """One computation: plays per region and in all regions (boost included), and the
    survival curve of all regions' plays."""

    computed_at: float
    expires_at: float
    titles: dict[str, FillTitle]
    regions: dict[str, dict[str, Plays]]
    total: dict[str, Plays]
    survival: Survival
    answers: dict[tuple[str | None, int], list[dict[str, Any]]] = field(default_factory=dict)


# Published media keys: movies with media, and available episodes of published series.
_TITLES_SQL = (
    "SELECT media_key, duration, renditions, released_at FROM titles"
    " WHERE published = 1 AND kind = 'movie' AND media_key IS NOT NULL"
    " UNION ALL SELECT e.media_key, e.duration, e.renditions, t.released_at"
    " FROM episodes e JOIN titles t ON t.id = e.title_id"
    " WHERE t.published = 1 AND e.published = 1 AND e.media_key IS NOT NULL"
)
# Plays in pages, in the order of the plays_started index. started_at bounds the scan: a play
# updated within the window started at most the window plus a play's longest life (its tokens'
# token_ttl) ago, so the index, not the whole table, is read; updated_at decides. Each page
# starts the index range at the previous page's last started_at (the lone `started_at >= ?`
# is what both engines seek on; the OR only skips that instant's plays already read), so a
# page costs its own rows, not every row before it.
_PLAYS_SQL = (
    "SELECT id, region, media_key, max_height, seconds_watched, position, started_at,"
    " updated_at"
    " FROM plays WHERE started_at >= ? AND updated_at >= ? AND seconds_watched > 0"
    " AND (started_at > ? OR id > ?)"
    " ORDER BY started_at, id LIMIT ?"
)


class FillFeed:
    """The feed behind ``GET /v1/fill/popularity``; one per Control (``Control.fill``)."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.config = control.config.fill
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.config.credential_file is not None

    def authorize(self, header: str | None) -> None:
        """404 when the feed is off (the route does not exist for anyone), 401 unless
        ``header`` is ``Bearer <the token in fill.credential_file>`` (checked in constant time;
        the file is re-read, so a rotated token needs no restart)."""
        if not self.enabled:
            raise NotFound("the fill popularity feed is not enabled (fill.credential_file)")
        scheme, _, given = (header or "").partition(" ")
        given = given.strip()
        try:
            expected = read_credential_file(self.config.credential_file)
        except (OSError, ValueError) as exc:
            log.error("event=fill_credential_unreadable error=%r", str(exc)[:200])
            raise Unavailable("the fill credential cannot be read; retry") from None
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), expected.encode()
        ):
            raise Unauthorized("a fill credential is required")

    async def popularity(self, region: str, limit: int) -> dict[str, Any]:
        """The answer of ``GET /v1/fill/popularity`` (see the module doc)."""
        async with self._lock:  # one computation however many sites ask at once
            snap = await self._current()
            fallback = region not in snap.regions
            which = None if fallback else region
            objects = snap.answers.get((which, limit))
            if objects is None:
                plays = snap.total if which is None else snap.regions[which]
                objects = await self._objects(plays, snap.titles, snap.survival, limit)
                if len(snap.answers) >= ANSWERS_KEPT:
                    snap.answers.pop(next(iter(snap.answers)))
                snap.answers[(which, limit)] = objects
        self.control.metrics.set_gauge("control_fill_feed_objects", float(len(objects)))
        return {
            "region": region,
            "fallback": fallback,
            "computed_at": snap.computed_at,
            "half_life_days": self.config.half_life_days,
            "objects": objects,
        }

    async def _current(self) -> _Snapshot:
        now = float(self.control.clock())
        snap = self._snapshot
        if snap is not None and snap.expires_at > now:
            return snap
        metrics = self.control.metrics
        t0 = time.perf_counter()
        try:
            snap = await self._compute(now)
        except Exception:
            metrics.inc("control_fill_feed_computations", "error")
            log.exception("event=fill_feed_computed outcome=error")
            raise
        seconds = time.perf_counter() - t0
        metrics.inc("control_fill_feed_computations", "ok")
        metrics.set_gauge("control_fill_feed_compute_seconds", seconds)
        self._snapshot = snap
        return snap

    async def _compute(self, now: float) -> _Snapshot:
        cfg = self.config
        db = self.control.db
        titles: dict[str, FillTitle] = {}
        for n, r in enumerate(await db.fetchall(_TITLES_SQL), 1):
            if n % 1000 == 0:
                await asyncio.sleep(0)  # parsing 10k ladders takes ~150 ms: in slices
            try:
                renditions = renditions_of(json.loads(r["renditions"] or "[]"))
            except ValueError:
                renditions = ()
            key = str(r["media_key"])
            duration = None if r["duration"] is None else float(r["duration"])
            titles[key] = FillTitle(key, duration, renditions, float(r["released_at"]))
        tally = PlayTally(now, cfg.half_life_days, cfg.window_days)
        since = tally.since
        after: tuple[float, str] = (since - self.control.config.playback.token_ttl, "")
        read = 0
        while True:
            rows = await db.fetchall(_PLAYS_SQL, (after[0], since, after[0], after[1], PLAYS_PAGE))
            for r in rows:
                play = Play(
                    str(r["region"] or ""),
                    str(r["media_key"]),
                    None if r["max_height"] is None else int(r["max_height"]),
                    float(r["seconds_watched"]),
                    float(r["updated_at"]),
                    float(r["position"] or 0.0),
                )
                tally.add(play, titles.get(play.key))
            read += len(rows)
            if len(rows) < PLAYS_PAGE:
                break
            after = (float(rows[-1]["started_at"]), str(rows[-1]["id"]))
            await asyncio.sleep(0)  # let requests in between pages
        boost = boosts(titles.values(), now, cfg.boost_views, cfg.boost_days)
        snap = _Snapshot(
            computed_at=now,
            expires_at=now + cfg.cache_ttl,
            titles=titles,
            regions={g: merge_boost(v, boost) for g, v in tally.by_region.items()},
            total=merge_boost(tally.total, boost),
            survival=tally.survival(),
        )
        log.info(
            "event=fill_feed_computed outcome=ok plays_read=%d plays_counted=%d titles=%d"
            " boosted=%d regions=%d mean_reached=%.3f",
            read,
            tally.plays,
            len(titles),
            len(boost),
            len(snap.regions),
            snap.survival.mean(),
        )
        return snap

    async def _objects(
        self,
        plays: Mapping[str, Plays],
        titles: Mapping[str, FillTitle],
        survival: Survival,
        limit: int,
    ) -> list[dict[str, Any]]:
        """The best ``limit`` objects: titles walked by total plays, their files read in
        batches, until no further title can enter the answer."""
        ranked = [(total, key) for total, key in ranked_titles(plays) if key in titles]
        top = TopFiles(limit)
        share = self.config.single_file_share
        for start in range(0, len(ranked), FILES_BATCH):
            batch = ranked[start : start + FILES_BATCH]
            if top.full_above(batch[0][0]):
                break
            # SQLite's reads do not yield (control/db.py): let requests in between batches.
            await asyncio.sleep(0)
            files = await self._files([key for _, key in batch])
            for _, key in batch:
                # A title's scores take ~1 us a file (54k files for the largest manifest):
                # the event loop is let in between titles, not only between batches.
                await asyncio.sleep(0)
                scored = file_scores(
                    plays[key],
                    titles[key].renditions,
                    files.get(key, ()),
                    survival=survival,
                    single_file_share=share,
                )
                top.add(key, scored)
        return top.objects()

    async def _files(self, keys: Sequence[str]) -> dict[str, list[MediaFile]]:
        marks = ", ".join("?" for _ in keys)
        rows = await self.control.db.fetchall(
            f"SELECT media_key, path, size, xxh64 FROM media_files WHERE media_key IN ({marks})",
            tuple(keys),
        )
        out: dict[str, list[MediaFile]] = {}
        for r in rows:
            out.setdefault(str(r["media_key"]), []).append(
                MediaFile(str(r["path"]), int(r["size"]), str(r["xxh64"]))
            )
        return out
