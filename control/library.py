"""Personal state of a profile: resume positions, watch history, My List and thumbs ratings.

Resume positions sync across devices by last-writer-wins on the *client's* clock: every write
carries ``client_at`` (when the player observed the position) and the row keeps the write
with the latest ``client_at``; a tie goes to the larger position, so the outcome does not
depend on arrival order. The comparison happens inside the upsert (``ON CONFLICT ... DO UPDATE
... WHERE``), so two instances racing on the same row cannot undo each other. A ``client_at``
more than :data:`MAX_CLOCK_SKEW_S` ahead of the server clock is refused: it would pin the
position against every later write.

Rows are per (profile, title, episode); a movie's episode is ``''`` in the table and ``null``
in the API. History is one entry per title (its latest row); titles the profile may not see
now (unpublished, removed, above its maturity limit) are left out of every list, though
their rows are kept (a raised maturity limit brings them back).

What is "next" for a title (``GET .../resume/{title_id}``):

* a movie: itself, at the resume position (0 when finished or never started);
* a series: take the latest watched episode (by ``client_at``, among the title's current
  episodes). Unfinished: resume it. Finished: the following episode in (season, number)
  order, at its own resume position; after the last episode, ``null``. Never watched: the
  first episode at 0. A series without episodes has no next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, Conflict, NotFound

log = logging.getLogger("control")

MAX_CLOCK_SKEW_S = 300.0  # a client_at further ahead of the server clock is refused
MAX_POSITION_S = 7 * 86400.0  # positions and durations above a week are not media
FINISHED_FRACTION = 0.95  # position >= 95 % of the duration counts as finished
MAX_LIST = 500  # titles in one profile's My List


class ListFull(Conflict):
    """My List holds MAX_LIST titles already."""

    code = "list_full"


# One statement for both resume writes (PUT /resume and playback events): the row is written
# unless a later client_at (or, at the same client_at, a larger position) is stored already
# (latest client timestamp wins across devices). INSERT ... SELECT from profiles, so a profile
# deleted meanwhile writes nothing instead of failing a foreign key (a playback event writes
# inside its play's transaction, which must not abort for that). The CASTs type the
# parameters for PostgreSQL, which would otherwise read an untyped SELECT-list value as text.
_UPSERT_HEAD = (
    "INSERT INTO watch_state (profile_id, title_id, episode_id, position, duration,"
    " finished, client_at, updated_at)"
    " SELECT id, ?, ?, CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION),"
    " CAST(? AS INTEGER), CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION)"
    " FROM profiles WHERE id = ?"
)
_UPSERT_TAIL = (
    " ON CONFLICT (profile_id, title_id, episode_id) DO UPDATE SET"
    " position = excluded.position, duration = excluded.duration,"
    " finished = excluded.finished, client_at = excluded.client_at,"
    " updated_at = excluded.updated_at"
    " WHERE excluded.client_at > watch_state.client_at"
    " OR (excluded.client_at = watch_state.client_at"
    " AND excluded.position > watch_state.position)"
)
_UPSERT_POSITION = _UPSERT_HEAD + _UPSERT_TAIL
# A playback event's write also gives way to a deletion of the title from the profile's
# history made after the play started (both server times; see `LibraryStore.delete_history`).
_UPSERT_PLAY_POSITION = (
    _UPSERT_HEAD + " AND NOT EXISTS (SELECT 1 FROM history_deletions d"
    " WHERE d.profile_id = profiles.id AND d.title_id = ?"
    " AND d.deleted_at >= CAST(? AS DOUBLE PRECISION))" + _UPSERT_TAIL
)


async def upsert_position(
    tx: Any,
    profile_id: str,
    title_id: str,
    episode_id: str | None,
    position: float,
    duration: float | None,
    client_at: float,
    now: float,
    finished: bool | None = None,
    play_started: float | None = None,
) -> int:
    """Write a resume position through ``tx`` (a transaction or the database); the number of
    rows written (0: a later write is stored, the profile is gone, or, for a playback event
    (``play_started``: its play's start, server time), the title was deleted from the
    profile's history since the play started). A position past a known duration is clamped
    to it; ``finished`` defaults to position >= 95 % of the duration."""
    if duration is not None and duration > 0:
        position = min(position, duration)
    if finished is None:
        finished = bool(duration) and position >= FINISHED_FRACTION * float(duration or 0)
    params: tuple[Any, ...] = (
        title_id,
        episode_id or "",
        float(position),
        duration,
        1 if finished else 0,
        float(client_at),
        float(now),
        profile_id,
    )
    if play_started is None:
        n: int = await tx.execute(_UPSERT_POSITION, params)
    else:
        n = await tx.execute(_UPSERT_PLAY_POSITION, (*params, title_id, float(play_started)))
    return n


@dataclass(frozen=True, slots=True)
class WatchRow:
    title_id: str
    episode_id: str  # '' for a movie
    position: float
    duration: float | None
    finished: bool
    client_at: float
    updated_at: float

    @classmethod
    def of(cls, r: dict[str, Any]) -> WatchRow:
        return cls(
            str(r["title_id"]),
            str(r["episode_id"]),
            float(r["position"]),
            None if r["duration"] is None else float(r["duration"]),
            bool(r["finished"]),
            float(r["client_at"]),
            float(r["updated_at"]),
        )

    def key(self) -> tuple[float, float]:
        """Last-writer-wins order: client time, then the larger position."""
        return (self.client_at, self.position)

    def public(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id or None,
            "position": self.position,
            "duration": self.duration,
            "finished": self.finished,
            "client_at": self.client_at,
            "updated_at": self.updated_at,
        }


_WATCH_COLUMNS = "title_id, episode_id, position, duration, finished, client_at, updated_at"


def _latest_per_title(rows: list[WatchRow]) -> list[WatchRow]:
    """The latest row of each title, most recent first (ties by title id)."""
    latest: dict[str, WatchRow] = {}
    for w in rows:
        prev = latest.get(w.title_id)
        if prev is None or w.key() > prev.key():
            latest[w.title_id] = w
    return sorted(latest.values(), key=lambda w: (-w.client_at, w.title_id))


def continue_watching(rows: list[WatchRow]) -> list[str]:
    """Titles whose latest position is unfinished, most recent first (not filtered)."""
    return [w.title_id for w in _latest_per_title(rows) if not w.finished]


class LibraryStore:
    def __init__(self, control: Any) -> None:
        self.control = control

    # -- helpers -------------------------------------------------------------------------

    async def card(self, profile: Any, title_id: str) -> dict[str, Any]:
        """The title's card if the profile may see it; NotFound otherwise."""
        cards = await self.control.catalog.summaries([title_id], profile.maturity_limit)
        card = cards.get(title_id)
        if card is None:
            raise NotFound("no such title")
        return dict(card)

    async def episodes(self, title_id: str) -> list[str]:
        """The title's published episode ids in viewing order (season, number)."""
        rows = await self.control.db.fetchall(
            "SELECT id FROM episodes WHERE title_id = ? AND published = 1"
            " ORDER BY season, number, id",
            (title_id,),
        )
        return [str(r["id"]) for r in rows]

    async def _rows(self, profile_id: str, title_id: str | None = None) -> list[WatchRow]:
        if title_id is None:
            rows = await self.control.db.fetchall(
                f"SELECT {_WATCH_COLUMNS} FROM watch_state WHERE profile_id = ?", (profile_id,)
            )
        else:
            rows = await self.control.db.fetchall(
                f"SELECT {_WATCH_COLUMNS} FROM watch_state WHERE profile_id = ? AND title_id = ?",
                (profile_id, title_id),
            )
        return [WatchRow.of(r) for r in rows]

    # -- resume positions ----------------------------------------------------------------

    async def record_position(
        self,
        profile_id: str,
        title_id: str,
        episode_id: str | None,
        position: float,
        duration: float | None,
        client_at: float,
        finished: bool | None = None,
    ) -> bool:
        """Store a position unless a write with a later client_at (or, at the same client_at,
        a larger position) is stored already; True when this write was applied.

        ``finished`` defaults to position >= 95 % of a known duration. A position past the
        duration is clamped to it. BadRequest when client_at is more than five minutes ahead
        of the server clock.
        """
        now = self.control.clock()
        if client_at > now + MAX_CLOCK_SKEW_S:
            raise BadRequest(
                "client_at is ahead of the server clock; check the device's clock",
                {"fields": {"client_at": f"must not be more than {MAX_CLOCK_SKEW_S:g} s ahead"}},
            )
        n = await upsert_position(
            self.control.db,
            profile_id,
            title_id,
            episode_id,
            position,
            duration,
            client_at,
            now,
            finished,
        )
        applied = bool(n > 0)
        log.debug(
            "event=resume_write profile=%s title=%s episode=%s applied=%s",
            profile_id,
            title_id,
            episode_id or "-",
            applied,
        )
        return applied

    async def resume_position(
        self, profile_id: str, title_id: str, episode_id: str | None
    ) -> float:
        """Where playback of the title (episode) should start: 0 when none or finished."""
        row = await self.control.db.fetchone(
            "SELECT position, finished FROM watch_state"
            " WHERE profile_id = ? AND title_id = ? AND episode_id = ?",
            (profile_id, title_id, episode_id or ""),
        )
        if row is None or row["finished"]:
            return 0.0
        return float(row["position"])

    async def put_resume(
        self,
        profile: Any,
        title_id: str,
        episode_id: str | None,
        position: float,
        duration: float | None,
        client_at: float,
    ) -> dict[str, Any]:
        """The PUT resume route: the title must be visible and the episode one of its own
        (required for a series, refused for a movie). Answers {applied, ...stored state}."""
        card = await self.card(profile, title_id)
        if card.get("kind") == "series":
            if episode_id is None:
                raise BadRequest(
                    "episode_id is required for a series",
                    {"fields": {"episode_id": "is required for a series"}},
                )
            if episode_id not in await self.episodes(title_id):
                raise NotFound("no such episode")
        elif episode_id is not None:
            raise NotFound("no such episode")
        applied = await self.record_position(
            profile.id, title_id, episode_id, position, duration, client_at
        )
        rows = await self.control.db.fetchall(
            f"SELECT {_WATCH_COLUMNS} FROM watch_state"
            " WHERE profile_id = ? AND title_id = ? AND episode_id = ?",
            (profile.id, title_id, episode_id or ""),
        )
        state = WatchRow.of(rows[0]).public() if rows else {}
        return {"applied": applied, "title_id": title_id, **state}

    async def resume(self, profile: Any, title_id: str) -> dict[str, Any]:
        """The GET resume route: every stored position of the title and what to play next."""
        card = await self.card(profile, title_id)
        rows = sorted(await self._rows(profile.id, title_id), key=lambda w: w.key(), reverse=True)
        kind = str(card.get("kind", "movie"))
        nxt: dict[str, Any] | None
        if kind != "series":
            movie = next((w for w in rows if not w.episode_id), None)
            pos = 0.0 if movie is None or movie.finished else movie.position
            nxt = {"episode_id": None, "position": pos}
        else:
            nxt = self._next_episode(rows, await self.episodes(title_id))
        return {
            "title_id": title_id,
            "kind": kind,
            "positions": [w.public() for w in rows],
            "next": nxt,
        }

    @staticmethod
    def _next_episode(rows_latest_first: list[WatchRow], order: list[str]) -> dict[str, Any] | None:
        if not order:
            return None
        index = {e: i for i, e in enumerate(order)}
        by_episode = {w.episode_id: w for w in rows_latest_first if w.episode_id in index}
        latest = next((w for w in rows_latest_first if w.episode_id in index), None)
        if latest is None:
            return {"episode_id": order[0], "position": 0.0}
        if not latest.finished:
            return {"episode_id": latest.episode_id, "position": latest.position}
        i = index[latest.episode_id] + 1
        if i >= len(order):
            return None
        following = by_episode.get(order[i])
        pos = following.position if following is not None and not following.finished else 0.0
        return {"episode_id": order[i], "position": pos}

    # -- history -------------------------------------------------------------------------

    async def history(self, profile: Any, offset: int, limit: int) -> tuple[list[Any], int]:
        """One entry per title (its latest position), most recent first; only titles the
        profile may see now."""
        latest = _latest_per_title(await self._rows(profile.id))
        cards = await self.control.catalog.summaries(
            [w.title_id for w in latest], profile.maturity_limit
        )
        visible = [w for w in latest if w.title_id in cards]
        items = [
            {"title": cards[w.title_id], **w.public()} for w in visible[offset : offset + limit]
        ]
        return items, len(visible)

    async def delete_history(self, profile: Any, title_id: str) -> int:
        """Forget every position of the title (hides it from history, Continue Watching and
        the next batch's recommendations). Idempotent; the number of rows removed.

        A play of the title under way (on another device, say) would write it back with its
        next heartbeat: when there is one, the deletion is remembered (history_deletions) and
        heartbeats of plays started before it record no position. Playing the title again
        afterwards records it again. Resume writes (PUT) are not held back: they carry the
        device's clock, which cannot be compared with the deletion's.

        The live plays' rows are locked first: a heartbeat locks its play's row first too, so
        on PostgreSQL one of the two transactions waits for the other, and the heartbeat's
        next statements see the remembered deletion (at READ COMMITTED a statement already
        under way would not)."""
        now = float(self.control.clock())
        async with self.control.db.transaction() as tx:
            live = await tx.execute(
                "UPDATE plays SET updated_at = updated_at WHERE account_id = ? AND"
                " profile_id = ? AND title_id = ? AND stopped_at IS NULL AND lease_expires_at > ?",
                (profile.account_id, profile.id, title_id, now),
            )
            n = await tx.execute(
                "DELETE FROM watch_state WHERE profile_id = ? AND title_id = ?",
                (profile.id, title_id),
            )
            if live:
                await tx.execute(
                    "INSERT INTO history_deletions (profile_id, title_id, deleted_at)"
                    " VALUES (?, ?, ?) ON CONFLICT (profile_id, title_id) DO UPDATE SET"
                    " deleted_at = CASE WHEN excluded.deleted_at > history_deletions.deleted_at"
                    " THEN excluded.deleted_at ELSE history_deletions.deleted_at END",
                    (profile.id, title_id, now),
                )
            # The profile's deletions no live play started before any more: done with.
            await tx.execute(
                "DELETE FROM history_deletions WHERE profile_id = ? AND NOT EXISTS"
                " (SELECT 1 FROM plays p WHERE p.account_id = ? AND p.profile_id ="
                " history_deletions.profile_id AND p.title_id = history_deletions.title_id"
                " AND p.stopped_at IS NULL AND p.lease_expires_at > ?"
                " AND p.started_at <= history_deletions.deleted_at)",
                (profile.id, profile.account_id, now),
            )
        log.info(
            "event=history_delete profile=%s title=%s rows=%d live_plays=%d",
            profile.id,
            title_id,
            n,
            live,
        )
        return int(n)

    async def continue_watching(self, profile_id: str) -> list[str]:
        """Titles whose latest position is unfinished, most recent first (not filtered)."""
        return continue_watching(await self._rows(profile_id))

    # -- My List -------------------------------------------------------------------------

    async def list_titles(self, profile: Any, offset: int, limit: int) -> tuple[list[Any], int]:
        rows = await self.control.db.fetchall(
            "SELECT title_id, added_at FROM my_list WHERE profile_id = ?"
            " ORDER BY added_at DESC, title_id",
            (profile.id,),
        )
        cards = await self.control.catalog.summaries(
            [str(r["title_id"]) for r in rows], profile.maturity_limit
        )
        visible = [r for r in rows if r["title_id"] in cards]
        items = [
            {"title": cards[r["title_id"]], "added_at": float(r["added_at"])}
            for r in visible[offset : offset + limit]
        ]
        return items, len(visible)

    async def add_to_list(self, profile: Any, title_id: str) -> bool:
        """Add a visible title (NotFound otherwise); True if it was not listed yet. ListFull
        beyond MAX_LIST titles (titles removed from the catalog do not count)."""
        await self.card(profile, title_id)
        async with self.control.db.transaction() as tx:
            # Serialise with the account's other writes so the cap cannot be raced past.
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (profile.account_id,)
            )
            there = await tx.fetchone(
                "SELECT 1 AS one FROM my_list WHERE profile_id = ? AND title_id = ?",
                (profile.id, title_id),
            )
            if there is not None:
                return False
            count = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM my_list WHERE profile_id = ?", (profile.id,)
            )
            if count is not None and int(count["n"]) >= MAX_LIST:
                await tx.execute(
                    "DELETE FROM my_list WHERE profile_id = ?"
                    " AND NOT EXISTS (SELECT 1 FROM titles t WHERE t.id = my_list.title_id)",
                    (profile.id,),
                )
                count = await tx.fetchone(
                    "SELECT COUNT(*) AS n FROM my_list WHERE profile_id = ?", (profile.id,)
                )
                if count is not None and int(count["n"]) >= MAX_LIST:
                    raise ListFull(f"My List holds {MAX_LIST} titles; remove one first")
            await tx.execute(
                "INSERT INTO my_list (profile_id, title_id, added_at) VALUES (?, ?, ?)",
                (profile.id, title_id, self.control.clock()),
            )
        return True

    async def remove_from_list(self, profile_id: str, title_id: str) -> bool:
        n = await self.control.db.execute(
            "DELETE FROM my_list WHERE profile_id = ? AND title_id = ?", (profile_id, title_id)
        )
        return bool(n)

    # -- ratings -------------------------------------------------------------------------

    async def ratings(self, profile: Any, offset: int, limit: int) -> tuple[list[Any], int]:
        rows = await self.control.db.fetchall(
            "SELECT title_id, rating, rated_at FROM ratings WHERE profile_id = ?"
            " ORDER BY rated_at DESC, title_id",
            (profile.id,),
        )
        cards = await self.control.catalog.summaries(
            [str(r["title_id"]) for r in rows], profile.maturity_limit
        )
        visible = [r for r in rows if r["title_id"] in cards]
        items = [
            {
                "title": cards[r["title_id"]],
                "rating": int(r["rating"]),
                "rated_at": float(r["rated_at"]),
            }
            for r in visible[offset : offset + limit]
        ]
        return items, len(visible)

    async def rate(self, profile: Any, title_id: str, rating: int) -> None:
        """Thumbs up (1) or down (-1) a visible title (NotFound otherwise); replaces any
        earlier rating."""
        if rating not in (1, -1):
            raise BadRequest("rating must be 1 or -1", {"fields": {"rating": "must be 1 or -1"}})
        await self.card(profile, title_id)
        await self.control.db.execute(
            "INSERT INTO ratings (profile_id, title_id, rating, rated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (profile_id, title_id) DO UPDATE SET"
            " rating = excluded.rating, rated_at = excluded.rated_at",
            (profile.id, title_id, rating, self.control.clock()),
        )

    async def unrate(self, profile_id: str, title_id: str) -> bool:
        n = await self.control.db.execute(
            "DELETE FROM ratings WHERE profile_id = ? AND title_id = ?", (profile_id, title_id)
        )
        return bool(n)

    async def thumbs_down(self, profile_id: str) -> set[str]:
        rows = await self.control.db.fetchall(
            "SELECT title_id FROM ratings WHERE profile_id = ? AND rating = -1", (profile_id,)
        )
        return {str(r["title_id"]) for r in rows}
