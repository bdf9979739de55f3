"""Home rows per profile: the recommendation batch and the serving path.

Batch (:meth:`HomeStore.recompute`; ``python -m control recompute``, the schedule every
``recommend.interval`` seconds, or ``POST /v1/admin/recompute``): reads every watch position
(plus thumbs-up ratings, counted as finished watches at the rating time), the published
catalogue and each profile's maturity limit, runs the pure ``control.recommend.recompute`` in
the default executor (it is CPU work; the service keeps answering), then in one transaction
stores the rows of every profile with history (``home_rows``), drops the stored rows of
profiles left without history (they are served the fallback) and replaces the ``popularity``
table with the trending scores, which also feed search's tie-break.

Serving (:meth:`HomeStore.home`):

* Continue Watching is built live from the profile's positions (latest unfinished first),
  never from the batch, so it is never stale;
* then the stored rows (``source: "batch"``), or, for a profile without stored rows, the
  popularity fallback (``recommend.popular_rows`` over the ``popularity`` table, or trending
  over all positions when the batch never ran), cached per maturity limit for
  :data:`FALLBACK_TTL_S` seconds (``source: "fallback"``);
* every row is filtered at serving time: titles the profile may not see (maturity limit,
  unpublished, removed), titles it rated thumbs-down, and titles already shown in an earlier
  row are dropped, and so is a row left empty. "Because you watched X" names X by its title
  name and is dropped if X itself is not visible.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from . import recommend
from .catalog import bump_version
from .library import WatchRow, continue_watching
from .recommend import Row, Title, Watch
from .responses import dumps

log = logging.getLogger("control")

FALLBACK_TTL_S = 60.0
_BECAUSE = "Because you watched "

# A profile's home state in one round trip: its watch states (k 'w', for Continue Watching, in
# the columns WatchRow.of reads), its thumbs-down titles (k 'r') and its stored batch rows (k
# 'h': the rows' JSON in title_id, computed_at in position), one column set for all.
_STATE_SQL = (
    "SELECT 'h' AS k, rows AS title_id, NULL AS episode_id, computed_at AS position,"
    " NULL AS duration, NULL AS finished, NULL AS client_at, NULL AS updated_at"
    " FROM home_rows WHERE profile_id = ?"
    " UNION ALL SELECT 'w', title_id, episode_id, position, duration, finished, client_at,"
    " updated_at FROM watch_state WHERE profile_id = ?"
    " UNION ALL SELECT 'r', title_id, NULL, NULL, NULL, NULL, NULL, NULL"
    " FROM ratings WHERE profile_id = ? AND rating = -1"
)


def _watch(profile: str, title: str, at: float, position: float, duration: Any, done: Any) -> Watch:
    progress = min(1.0, position / float(duration)) if duration else 0.0
    return Watch(profile, title, at=float(at), progress=progress, finished=bool(done))


def _batch(
    watch_rows: list[dict[str, Any]],
    thumbs_up: list[dict[str, Any]],
    titles: Mapping[str, Title],
    maturity: dict[str, int],
    now: float,
    row_size: int,
    half_life_days: float,
    min_support: int,
) -> tuple[dict[str, list[Row]], dict[str, float]]:
    """The executor part of a batch run: pure CPU over plain data."""
    watches = [
        _watch(
            r["profile_id"],
            r["title_id"],
            # A device clock a little ahead (accepted up to 5 min) must not hide a watch the
            # server already has from this run: it happened no later than now.
            min(float(r["client_at"]), now),
            r["position"],
            r["duration"],
            r["finished"],
        )
        for r in watch_rows
    ]
    watches += [
        Watch(r["profile_id"], r["title_id"], float(r["rated_at"]), 1.0, True) for r in thumbs_up
    ]
    active = sorted({w.profile for w in watches if w.at <= now} & maturity.keys())
    rows = recommend.recompute(
        watches,
        titles,
        now=now,
        profiles=active,
        max_maturity=maturity,
        row_size=row_size,
        half_life_days=half_life_days,
        min_support=min_support,
    )
    trending = recommend.trending_scores(watches, now, half_life_days)
    return rows, trending


def _stored(rows: Iterable[Row]) -> str:
    """Rows as stored in home_rows: JSON list of {name, label, titles[, anchor]}."""
    out = []
    for r in rows:
        doc: dict[str, Any] = {"name": r.name, "label": r.label, "titles": list(r.titles)}
        if r.name == "because_you_watched" and r.label.startswith(_BECAUSE):
            doc["anchor"] = r.label[len(_BECAUSE) :]
        out.append(doc)
    return json.dumps(out, separators=(",", ":"))


class HomeStore:
    def __init__(self, control: Any) -> None:
        self.control = control
        self._lock = asyncio.Lock()
        self._fallback: dict[int, tuple[float, list[Row]]] = {}  # maturity -> (expiry, rows)
        self._scores: tuple[float, dict[str, float]] | None = None  # (expiry, trending)

    def start(self) -> None:
        interval = self.control.config.recommend.interval
        if interval > 0:
            self.control.spawn(self._schedule(interval), "recompute")

    async def _schedule(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.recompute()
            except Exception:  # counted and logged by recompute; try again next interval
                pass

    # -- the batch -----------------------------------------------------------------------

    async def recompute(self) -> int:
        """Recompute and store every profile's home rows; the number of profiles stored."""
        async with self._lock:
            c = self.control
            t0 = time.perf_counter()
            try:
                n = await self._recompute()
            except Exception:
                c.metrics.inc("control_recompute_runs", "error")
                log.exception("event=recompute outcome=error")
                raise
            c.metrics.inc("control_recompute_runs", "ok")
            c.metrics.inc("control_recompute_profiles", n=n)
            c.metrics.set_gauge("control_recompute_last_success_seconds", c.clock())
            log.info(
                "event=recompute outcome=ok profiles=%d seconds=%.3f",
                n,
                time.perf_counter() - t0,
            )
            return n

    async def _recompute(self) -> int:
        c = self.control
        cfg = c.config.recommend
        now = c.clock()
        watch_rows = await c.db.fetchall(
            "SELECT profile_id, title_id, position, duration, finished, client_at FROM watch_state"
        )
        thumbs_up = await c.db.fetchall(
            "SELECT profile_id, title_id, rated_at FROM ratings WHERE rating = 1"
        )
        maturity = {
            str(r["id"]): int(r["maturity_limit"])
            for r in await c.db.fetchall("SELECT id, maturity_limit FROM profiles")
        }
        titles = dict(c.catalog.recommend_titles())
        job = functools.partial(
            _batch,
            watch_rows,
            thumbs_up,
            titles,
            maturity,
            now,
            cfg.row_size,
            cfg.half_life_days,
            cfg.min_support,
        )
        rows, trending = await asyncio.get_running_loop().run_in_executor(None, job)
        stored = [(p, _stored(r), now, p) for p, r in rows.items()]
        async with c.db.transaction() as tx:
            # A profile deleted since it was read is skipped rather than failing the batch.
            await tx.executemany(
                "INSERT INTO home_rows (profile_id, rows, computed_at)"
                " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM profiles WHERE id = ?)"
                " ON CONFLICT (profile_id) DO UPDATE SET"
                " rows = excluded.rows, computed_at = excluded.computed_at",
                stored,
            )
            # Profiles whose history is gone are served the (fresher) fallback again.
            # NOT EXISTS, not NOT IN: PostgreSQL turns NOT IN over a big subquery into a
            # rescan per row once it outgrows work_mem (minutes at 100k profiles); NOT EXISTS
            # is an anti-join on both engines.
            await tx.execute(
                "DELETE FROM home_rows WHERE"
                " NOT EXISTS (SELECT 1 FROM watch_state w WHERE w.profile_id = home_rows.profile_id)"
                " AND NOT EXISTS (SELECT 1 FROM ratings r"
                " WHERE r.profile_id = home_rows.profile_id AND r.rating = 1)"
            )
            version = await bump_version(tx, "popularity_version")
            await tx.execute(
                "INSERT INTO meta(key, value) VALUES ('recompute_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(now),),
            )
            await tx.execute("DELETE FROM popularity")
            await tx.executemany(
                "INSERT INTO popularity (title_id, score, computed_at) VALUES (?, ?, ?)",
                [(t, s, now) for t, s in sorted(trending.items())],
            )
        self._fallback.clear()
        self._scores = None
        c.catalog.set_popularity(trending)
        c.catalog.popularity_version = version
        return len(stored)

    # -- serving -------------------------------------------------------------------------

    async def _trending(self, now: float) -> dict[str, float]:
        """The fallback's scores: the batch's popularity table or, before any batch run,
        trending over every stored position; cached FALLBACK_TTL_S like the rows."""
        if self._scores is not None and self._scores[0] > now:
            return self._scores[1]
        c = self.control
        trending = {
            str(r["title_id"]): float(r["score"])
            for r in await c.db.fetchall("SELECT title_id, score FROM popularity")
        }
        if not trending:
            rows = await c.db.fetchall("SELECT title_id, client_at FROM watch_state")
            watches = [Watch("", r["title_id"], float(r["client_at"]), 0.0, False) for r in rows]
            trending = recommend.trending_scores(watches, now, c.config.recommend.half_life_days)
        self._scores = (now + FALLBACK_TTL_S, trending)
        return trending

    async def _popular(self, maturity_limit: int) -> list[Row]:
        """The fallback rows for a maturity limit, cached FALLBACK_TTL_S (control clock)."""
        c = self.control
        now = c.clock()
        hit = self._fallback.get(maturity_limit)
        if hit is not None and hit[0] > now:
            return hit[1]
        popular = recommend.popular_rows(
            c.catalog.recommend_titles(),
            await self._trending(now),
            now=now,
            max_maturity=maturity_limit,
            row_size=c.config.recommend.row_size,
        )
        self._fallback[maturity_limit] = (now + FALLBACK_TTL_S, popular)
        return popular

    async def home(self, profile: Any) -> dict[str, Any]:
        """{rows, computed_at, source} for the profile (see the module docstring); the cards are
        encoded JSON (orjson Fragments), for `respond`."""
        c = self.control
        size = c.config.recommend.row_size
        stored, live, disliked = await self._profile_state(profile.id)
        base: list[dict[str, Any]]
        if stored is not None:
            source, computed_at = "batch", float(stored["position"])
            base = list(orjson.loads(stored["title_id"]))
        else:
            source, computed_at = "fallback", None
            base = [
                {"name": r.name, "label": r.label, "titles": list(r.titles)}
                for r in await self._popular(profile.maturity_limit)
            ]
        rows = [{"name": "continue_watching", "label": "Continue Watching", "titles": live}]
        rows += [r for r in base if r.get("name") != "continue_watching"]
        wanted: list[str] = []
        for r in rows:
            wanted.extend(r["titles"])
            if r.get("anchor"):
                wanted.append(r["anchor"])
        cards = c.catalog.encoded_cards(dict.fromkeys(wanted), profile.maturity_limit)
        used: set[str] = set()
        out: list[dict[str, Any]] = []
        for r in rows:
            label = str(r["label"])
            anchor = r.get("anchor")
            if anchor:
                if anchor not in cards:
                    continue  # the label would name a title the profile may not see
                label = _BECAUSE + str(cards[anchor][0])
            picked = [
                t
                for t in dict.fromkeys(r["titles"])
                if t in cards and t not in disliked and t not in used
            ][:size]
            if not picked:
                continue
            used.update(picked)
            out.append({"name": r["name"], "label": label, "titles": [cards[t][1] for t in picked]})
        return {"rows": out, "computed_at": computed_at, "source": source}

    async def _profile_state(
        self, profile_id: str
    ) -> tuple[dict[str, Any] | None, list[str], set[str]]:
        """(the stored batch rows {title_id: JSON, position: computed_at} or None, Continue
        Watching, the titles rated thumbs-down) in ONE query: a home page is the commonest
        request, and on PostgreSQL each round trip costs more than these index lookups do."""
        rows = await self.control.db.fetchall(_STATE_SQL, (profile_id, profile_id, profile_id))
        stored: dict[str, Any] | None = None
        watched: list[WatchRow] = []
        disliked: set[str] = set()
        for r in rows:
            k = r["k"]
            if k == "h":
                stored = r
            elif k == "w":
                watched.append(WatchRow.of(r))
            else:
                disliked.add(str(r["title_id"]))
        return stored, continue_watching(watched), disliked

    async def rows(self, profile: Any) -> list[dict[str, Any]]:
        # The cards are encoded JSON (orjson Fragments): decoded here for Python callers.
        rows: list[dict[str, Any]] = orjson.loads(dumps(await self.home(profile)))["rows"]
        return rows
