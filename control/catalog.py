"""The catalog: titles (movies, and series with seasons of episodes), their search index and
what playback needs to know about their media.

Storage. ``titles`` and ``episodes`` (control/schema.py) are the truth. Titles come from
administrators (control/routes/catalog.py) and from the origin's catalog feed
(control/feed.py); the feed only ever writes media fields of a title an administrator has
described (duration, renditions, poster and sprite, published), never its metadata.

Memory. Every instance keeps the *published* titles in memory: a `control.search.SearchIndex`
for search and autocomplete, and per title its card (what lists show) and browse keys. Reads
(browse, search, autocomplete, genres, ``summaries``, ``recommend_titles``) never touch the
database. Every catalog write runs in one transaction that first bumps the ``meta`` row
``catalog_version``; that row lock also serialises catalog writers across instances
(PostgreSQL; SQLite serialises writers anyway), so checks made inside the transaction hold.
After the commit the writing instance applies the rows it wrote to its memory; when its
loaded version was not the one just before its own (another instance wrote in between) it
re-synchronises instead. A loop (`start`) compares the database's version with the loaded
one every `REFRESH_INTERVAL` seconds and re-synchronises on a difference.

Re-synchronising reads every published title and re-indexes only those whose indexed
columns differ, yielding to the event loop every `SYNC_BATCH` re-indexed titles: about 0.2 s
for 10k unchanged titles. The first load indexes everything before the service listens:
1.5 to 4 s for 10k titles with 30-word synopses and five cast names on a busy 2-core machine
(tests/test_control_catalog.py prints it), three quarters of it in ``SearchIndex.add``.

Visibility. A profile's ``maturity_limit`` hides every title rated above it from every read,
before counting and paginating, so totals and pages never reveal a hidden title.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from cachetools import LRUCache

from .db import Tx
from .errors import BadRequest, Conflict, NotFound
from .recommend import Title as RecTitle
from .responses import dumps
from .search import Doc, SearchIndex, normalize, tokenize

__all__ = [
    "MEDIA_KEY_RE",
    "SLUG_RE",
    "CatalogStore",
    "Media",
    "NotPlayable",
    "check_artwork",
    "prettify",
    "safe_relative_path",
    "slugify",
]

log = logging.getLogger("control")

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
# The origin's title keys (origin/ingest.py TITLE_RE): served under /v/<key>/.
MEDIA_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
ARTWORK_KIND_RE = re.compile(r"[a-z0-9_-]{1,32}\Z")
# A file below a title's base path (/v/<media_key>/): at most 500 characters of segments that
# do not start with '.' (no '.', '..' or hidden name), at most 255 characters each, and no '..'
# anywhere (the edge's tokens refuse it). The same rule as steering's feed check
# (steering/fill.py _SEGMENT): a file stored here that steering refused would be one it can
# never place.
_PATH_RE = re.compile(r"[A-Za-z0-9._~/-]{1,500}\Z")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,254}\Z")
MAX_ARTWORK = 16
SEARCH_CACHE_SIZE = 4096  # answers kept (a page of 20 cards is ~6 KiB: ~25 MiB at most)
REFRESH_INTERVAL = 2.0
SYNC_BATCH = 256

_T = TypeVar("_T")

# Indexed columns of a published title: a change in any of them re-indexes it.
_PUBLISHED_COLUMNS = (
    "id, kind, name, synopsis, year, maturity, genres, cast_members, artwork, released_at"
)
_PUBLISHED_NAMES = tuple(c.strip() for c in _PUBLISHED_COLUMNS.split(","))
_TITLE_COLUMNS = (
    "id, kind, name, synopsis, year, maturity, genres, cast_members, artwork, duration, "
    "media_key, renditions, published, source, released_at, updated_at"
)
_EPISODE_COLUMNS = (
    "id, title_id, season, number, name, synopsis, duration, media_key, renditions, published, "
    "updated_at"
)


class NotPlayable(Conflict):
    """The title (or episode) exists but has no media the player could fetch."""

    code = "not_playable"


@dataclass(frozen=True, slots=True)
class Media:
    """What playback needs: where the media is (``/v/<media_key>/``) and what it offers."""

    title_id: str
    episode_id: str  # '' for a movie
    media_key: str
    name: str
    maturity: int
    duration: float | None
    renditions: list[dict[str, Any]]


# -- pure helpers ----------------------------------------------------------------------------


def slugify(text: str, max_len: int = 64) -> str:
    """A slug of [a-z0-9-]: accents dropped, other runs become '-'; '' when nothing is left."""
    s = re.sub(r"[^a-z0-9]+", "-", normalize(text)).strip("-")
    return s[:max_len].rstrip("-")


def prettify(key: str) -> str:
    """A display name for an origin key: 'the_big-heist' -> 'The Big Heist'."""
    words = [w for w in re.split(r"[-_]+", key) if w]
    return " ".join(w[:1].upper() + w[1:] for w in words) or key


def safe_relative_path(value: object) -> str | None:
    """A path relative to a title's media base that the whole fleet accepts (the rule at
    ``_SEGMENT_RE``), or None: one that could escape the base, or that steering or an edge
    would refuse."""
    if not isinstance(value, str) or not _PATH_RE.match(value) or ".." in value:
        return None
    if not all(_SEGMENT_RE.match(part) for part in value.split("/")):
        return None  # also an absolute path (an empty first segment) or '//'
    return value


def _http_url(value: str) -> bool:
    if len(value) > 1000 or any(c.isspace() or not c.isprintable() for c in value):
        return False
    u = urlsplit(value)
    return u.scheme in ("http", "https") and bool(u.hostname) and "@" not in u.netloc


def check_artwork(value: Mapping[str, Any]) -> tuple[dict[str, str] | None, str]:
    """(artwork, '') when valid, else (None, reason): kind -> relative path or http(s) URL."""
    if len(value) > MAX_ARTWORK:
        return None, f"must have at most {MAX_ARTWORK} entries"
    out: dict[str, str] = {}
    for kind, ref in value.items():
        if not ARTWORK_KIND_RE.match(kind):
            return None, "keys must be 1 to 32 characters of a-z, 0-9, '_' and '-'"
        if not isinstance(ref, str):
            return None, f"{kind}: must be a string"
        if ref.startswith(("http://", "https://")):
            if not _http_url(ref):
                return None, f"{kind}: not a valid http(s) URL"
        elif safe_relative_path(ref) is None:
            return None, f"{kind}: must be an http(s) URL or a relative path without '..'"
        out[kind] = ref
    return out, ""


def _loads(text: Any, default: Any) -> Any:
    if not isinstance(text, str):
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def admin_title(row: Mapping[str, Any]) -> dict[str, Any]:
    """A titles row as the admin API shows it."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "name": row["name"],
        "synopsis": row["synopsis"],
        "year": _int(row["year"]),
        "maturity": int(row["maturity"]),
        "genres": _loads(row["genres"], []),
        "cast": _loads(row["cast_members"], []),
        "artwork": _loads(row["artwork"], {}),
        "duration": _float(row["duration"]),
        "media_key": row["media_key"],
        "renditions": _loads(row["renditions"], []),
        "published": bool(row["published"]),
        "source": row["source"],
        "released_at": float(row["released_at"]),
        "updated_at": float(row["updated_at"]),
    }


def admin_episode(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title_id": row["title_id"],
        "season": int(row["season"]),
        "number": int(row["number"]),
        "name": row["name"],
        "synopsis": row["synopsis"],
        "duration": _float(row["duration"]),
        "media_key": row["media_key"],
        "renditions": _loads(row["renditions"], []),
        "published": bool(row["published"]),
        "updated_at": float(row["updated_at"]),
    }


def _playable(row: Mapping[str, Any]) -> bool:
    """Media a player can fetch: a media key, available, with renditions from the origin."""
    return bool(row["media_key"]) and bool(row["published"]) and bool(_loads(row["renditions"], []))


def _viewer_episode(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "season": int(row["season"]),
        "number": int(row["number"]),
        "name": row["name"],
        "synopsis": row["synopsis"],
        "duration": _float(row["duration"]),
        "playable": _playable(row),
    }


@dataclass(slots=True)
class _Entry:
    """A published title in memory."""

    signature: tuple[Any, ...]  # the indexed columns, to notice changes
    card: dict[str, Any]  # id, name, kind, year, maturity, genres, artwork
    name_key: str
    genre_keys: frozenset[str]
    released_at: float
    popularity: float
    doc: Doc
    maturity: int  # the card's, read on every card a page shows
    # The card encoded once: a home page writes dozens of cards, and encoding them on every
    # request was a tenth of its time (orjson inserts a Fragment's bytes as they are).
    fragment: orjson.Fragment


def _signature(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in _PUBLISHED_NAMES)


def _entry(row: Mapping[str, Any], popularity: float) -> _Entry:
    genres = [g for g in _loads(row["genres"], []) if isinstance(g, str)]
    cast = [c for c in _loads(row["cast_members"], []) if isinstance(c, str)]
    year = _int(row["year"])
    maturity = int(row["maturity"])
    card = {
        "id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "year": year,
        "maturity": maturity,
        "genres": genres,
        "artwork": _loads(row["artwork"], {}),
    }
    doc = Doc(
        id=row["id"],
        title=row["name"],
        synopsis=row["synopsis"] or "",
        cast=tuple(cast),
        genres=tuple(genres),
        year=year,
        kind=row["kind"],
        maturity=maturity,
        popularity=popularity,
    )
    return _Entry(
        signature=_signature(row),
        card=card,
        name_key=normalize(row["name"]),
        genre_keys=frozenset(normalize(g).strip() for g in genres),
        released_at=float(row["released_at"]),
        popularity=popularity,
        doc=doc,
        maturity=maturity,
        fragment=orjson.Fragment(dumps(card)),
    )


async def bump_version(tx: Tx, key: str = "catalog_version") -> int:
    """Bump ``catalog_version`` first in a catalog transaction: the new version. The row lock
    it takes serialises catalog writers of every instance until the commit. The batch bumps
    ``popularity_version`` the same way when it replaces the popularity table."""
    row = await tx.fetchone(
        "INSERT INTO meta(key, value) VALUES (?, '1') "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) "
        "RETURNING value",
        (key,),
    )
    assert row is not None
    return int(row["value"])


async def published_row(tx: Tx, title_id: str) -> dict[str, Any] | None:
    return await tx.fetchone(
        f"SELECT {_PUBLISHED_COLUMNS} FROM titles WHERE id = ? AND published = 1", (title_id,)
    )


async def media_key_owner(tx: Tx, key: str) -> tuple[str, str] | None:
    """('title', id) or ('episode', id) holding ``key`` (unique across both tables)."""
    row = await tx.fetchone("SELECT id FROM titles WHERE media_key = ?", (key,))
    if row:
        return "title", row["id"]
    row = await tx.fetchone("SELECT id FROM episodes WHERE media_key = ?", (key,))
    if row:
        return "episode", row["id"]
    return None


class CatalogStore:
    def __init__(self, control: Any) -> None:
        self.control = control
        self.index = SearchIndex()
        self._entries: dict[str, _Entry] = {}
        self.version = 0  # the catalog_version the memory reflects
        self._popularity: dict[str, float] = {}
        self.popularity_version = 0  # the popularity_version the memory reflects
        self._order: list[str] | None = None  # browse order, rebuilt lazily
        self._genres: dict[int, list[dict[str, Any]]] = {}  # per maturity limit
        self._lock = asyncio.Lock()  # one writer of the memory at a time
        # Answers of search and autocomplete by (words, maturity, filters, page): viewers
        # repeat queries (two thirds of bench_control's stream), and one search scores
        # thousands of titles. Cleared whenever the catalog or the popularity changes.
        self._answers: LRUCache[tuple[Any, ...], Any] = LRUCache(maxsize=SEARCH_CACHE_SIZE)

    # -- loading and refreshing -------------------------------------------------------------

    async def load(self) -> None:
        """Read every published title (and stored popularity) into memory."""
        self.popularity_version = await self._meta_int("popularity_version")
        await self._recompute_gauge()
        rows = await self.control.db.fetchall("SELECT title_id, score FROM popularity")
        self._popularity = {
            r["title_id"]: float(r["score"]) for r in rows if math.isfinite(float(r["score"]))
        }
        async with self._lock:
            await self._sync_locked()

    def start(self) -> None:
        self.control.spawn(self._refresh_loop(), "catalog_refresh")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                await self.refresh()
                await self.refresh_popularity()
            except Exception as exc:  # a database hiccup: try again next time
                log.warning("event=catalog_refresh_failed error=%r", str(exc)[:200])

    async def _meta_int(self, key: str) -> int:
        row = await self.control.db.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return int(row["value"]) if row else 0

    async def db_version(self) -> int:
        return await self._meta_int("catalog_version")

    async def refresh_popularity(self) -> bool:
        """Take the popularity another worker's or instance's batch stored; whether it did."""
        version = await self._meta_int("popularity_version")
        if version == self.popularity_version:
            return False
        rows = await self.control.db.fetchall("SELECT title_id, score FROM popularity")
        self.set_popularity({r["title_id"]: float(r["score"]) for r in rows})
        self.popularity_version = version
        await self._recompute_gauge()
        return True

    async def _recompute_gauge(self) -> None:
        """The last batch's time, wherever it ran (a worker, another instance, the CLI)."""
        row = await self.control.db.fetchone("SELECT value FROM meta WHERE key = 'recompute_at'")
        if row is not None:
            self.control.metrics.set_gauge(
                "control_recompute_last_success_seconds", float(row["value"])
            )

    async def refresh(self) -> bool:
        """Re-synchronise when another instance changed the catalog; whether it did."""
        if await self.db_version() == self.version:
            return False
        async with self._lock:
            if await self.db_version() == self.version:
                return False
            before = self.version
            changed = await self._sync_locked()
        log.info(
            "event=catalog_refreshed from=%d to=%d titles_changed=%d", before, self.version, changed
        )
        return True

    async def _sync_locked(self) -> int:
        """Make memory match the database: re-index titles whose indexed columns changed."""
        version = await self.db_version()  # first: the rows read next are at least as new
        rows = await self.control.db.fetchall(
            f"SELECT {_PUBLISHED_COLUMNS} FROM titles WHERE published = 1"
        )
        seen: set[str] = set()
        changed = 0
        for row in rows:
            tid = row["id"]
            seen.add(tid)
            entry = self._entries.get(tid)
            if entry is None or entry.signature != _signature(row):
                self._put(row)
                changed += 1
                if changed % SYNC_BATCH == 0:
                    await asyncio.sleep(0)  # let requests in during a large re-index
        for tid in [t for t in self._entries if t not in seen]:
            self._drop(tid)
            changed += 1
        self.version = version
        self._changed()
        return changed

    def _put(self, row: Mapping[str, Any]) -> None:
        entry = _entry(row, self._popularity.get(row["id"], 0.0))
        self.index.add(entry.doc)
        self._entries[entry.card["id"]] = entry

    def _drop(self, title_id: str) -> None:
        self.index.remove(title_id)
        self._entries.pop(title_id, None)

    def _changed(self) -> None:
        self._answers.clear()
        self._order = None
        self._genres = {}
        metrics = self.control.metrics
        metrics.set_gauge("control_catalog_titles", float(len(self.index)))
        metrics.set_gauge("control_catalog_version", float(self.version))

    async def write(self, op: Callable[[Tx], Awaitable[tuple[_T, Iterable[str]]]]) -> _T:
        """Run ``op`` in a catalog transaction (version bumped first), then bring memory up to
        date. ``op`` returns (result, ids of the titles it touched)."""
        async with self.control.db.transaction() as tx:
            version = await bump_version(tx)
            result, touched = await op(tx)
            rows = {tid: await published_row(tx, tid) for tid in set(touched)}
        await self._apply(version, rows)
        return result

    async def _apply(self, version: int, rows: Mapping[str, Mapping[str, Any] | None]) -> None:
        async with self._lock:
            if version <= self.version:
                return  # a re-synchronisation after our commit already has it
            if version != self.version + 1:
                await self._sync_locked()  # another instance wrote in between
                return
            for tid, row in rows.items():
                if row is None:
                    self._drop(tid)
                else:
                    self._put(row)
            self.version = version
            self._changed()

    # -- popularity ----------------------------------------------------------------------

    def set_popularity(self, scores: Mapping[str, float]) -> None:
        """Replace every title's popularity (absent: 0): search tie-break and browse order."""
        clean = {t: float(s) for t, s in scores.items() if math.isfinite(float(s))}
        self._popularity = clean
        self._answers.clear()
        for tid, entry in self._entries.items():
            p = clean.get(tid, 0.0)
            if entry.popularity != p:
                entry.popularity = p
                self.index.set_popularity(tid, p)
        self._order = None

    # -- viewer reads (memory) -----------------------------------------------------------

    def _browse_order(self) -> list[str]:
        if self._order is None:
            entries = self._entries
            self._order = sorted(
                entries, key=lambda t: (-entries[t].popularity, entries[t].name_key, t)
            )
        return self._order

    def browse(
        self,
        max_maturity: int,
        *,
        genre: str | None = None,
        kind: str | None = None,
        year: int | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[dict[str, Any]], int]:
        """Visible published titles, most popular first, then by name."""
        gkey = normalize(genre).strip() if genre is not None else None
        entries = self._entries
        picked = [
            t
            for t in self._browse_order()
            if (e := entries[t]).maturity <= max_maturity
            and (gkey is None or gkey in e.genre_keys)
            and (kind is None or e.card["kind"] == kind)
            and (year is None or e.card["year"] == year)
        ]
        return [dict(entries[t].card) for t in picked[offset : offset + limit]], len(picked)

    def search(
        self,
        query: str,
        max_maturity: int,
        *,
        genre: str | None = None,
        kind: str | None = None,
        year: int | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[orjson.Fragment, int]:
        """Full-text search; an empty query (no words) browses like `browse`. The page's
        cards come as JSON already encoded (an orjson Fragment a response embeds as is)."""
        words = tuple(tokenize(query))
        key = ("search", words, max_maturity, genre, kind, year, offset, limit)
        cached = self._answers.get(key)
        metrics = self.control.metrics
        if cached is not None:
            metrics.inc("control_search_cache", "hit")
            return cached  # type: ignore[no-any-return]
        metrics.inc("control_search_cache", "miss")
        items, total = self._search(query, words, max_maturity, genre, kind, year, offset, limit)
        # Cached encoded: thousands of cached answers as dicts and lists were ~180k objects
        # for the garbage collector to walk (full collections of 50-120 ms, a search p99 of
        # 49 ms at 4 connections); one bytes object each is nothing to it.
        answer = (orjson.Fragment(dumps(items)), total)
        self._answers[key] = answer
        return answer

    def _search(
        self,
        query: str,
        words: tuple[str, ...],
        max_maturity: int,
        genre: str | None,
        kind: str | None,
        year: int | None,
        offset: int,
        limit: int,
    ) -> tuple[list[dict[str, Any]], int]:
        if not words:
            items, total = self.browse(
                max_maturity, genre=genre, kind=kind, year=year, offset=offset, limit=limit
            )
            return [{**card, "matched": []} for card in items], total
        page = self.index.search(
            query,
            max_maturity=max_maturity,
            genre=genre,
            kind=kind,
            year=year,
            offset=offset,
            limit=limit,
        )
        items = []
        for hit in page.hits:
            entry = self._entries.get(hit.id)
            if entry is not None:
                items.append({**entry.card, "matched": list(hit.matched)})
        return items, page.total

    def autocomplete(self, prefix: str, max_maturity: int, limit: int = 10) -> list[str]:
        key = ("autocomplete", prefix, max_maturity, limit)
        cached = self._answers.get(key)
        if cached is None:
            cached = self._answers[key] = tuple(
                self.index.autocomplete(prefix, max_maturity=max_maturity, limit=limit)
            )
        return list(cached)

    def genres(self, max_maturity: int) -> list[dict[str, Any]]:
        """Genres of the visible published titles with their counts, most titles first. Genres
        that differ only in case or accents count as one, shown in their commonest spelling."""
        cached = self._genres.get(max_maturity)
        if cached is not None:
            return cached
        counts: dict[str, int] = {}
        spellings: dict[str, dict[str, int]] = {}
        for entry in self._entries.values():
            if entry.maturity > max_maturity:
                continue
            for g in entry.card["genres"]:
                key = normalize(g).strip()
                counts[key] = counts.get(key, 0) + 1
                sp = spellings.setdefault(key, {})
                sp[g] = sp.get(g, 0) + 1
        labelled: list[tuple[str, int]] = []
        for key, n in counts.items():
            sp = spellings[key]
            labelled.append((min(sp, key=lambda s: (-sp[s], s)), n))
        labelled.sort(key=lambda g: (-g[1], normalize(g[0]), g[0]))
        out = [{"genre": label, "count": n} for label, n in labelled]
        self._genres[max_maturity] = out
        return out

    def visible(self, title_id: str, max_maturity: int) -> bool:
        entry = self._entries.get(title_id)
        return entry is not None and entry.maturity <= max_maturity

    async def summaries(self, title_ids: list[str], max_maturity: int) -> dict[str, dict[str, Any]]:
        """Cards of the published titles among ``title_ids`` a profile may see."""
        out: dict[str, dict[str, Any]] = {}
        for tid in title_ids:
            entry = self._entries.get(tid)
            if entry is not None and entry.maturity <= max_maturity:
                out[tid] = dict(entry.card)
        return out

    def encoded_cards(
        self, title_ids: Iterable[str], max_maturity: int
    ) -> dict[str, tuple[str, orjson.Fragment]]:
        """For a caller that only serialises the cards (a home page holds dozens): per
        visible title, (its name, its card already encoded as JSON)."""
        entries = self._entries
        out: dict[str, tuple[str, orjson.Fragment]] = {}
        for tid in title_ids:
            entry = entries.get(tid)
            if entry is not None and entry.maturity <= max_maturity:
                out[tid] = (entry.card["name"], entry.fragment)
        return out

    def recommend_titles(self) -> dict[str, RecTitle]:
        return {
            tid: RecTitle(
                id=tid,
                genres=tuple(e.card["genres"]),
                released=e.released_at,
                maturity=e.maturity,
            )
            for tid, e in self._entries.items()
        }

    async def details(self, title_id: str, max_maturity: int) -> dict[str, Any]:
        """A visible published title with its seasons and episodes; NotFound otherwise."""
        if not self.visible(title_id, max_maturity):
            raise NotFound("no such title")
        db = self.control.db
        row = await db.fetchone(
            f"SELECT {_TITLE_COLUMNS} FROM titles WHERE id = ? AND published = 1", (title_id,)
        )
        if row is None or int(row["maturity"]) > max_maturity:
            raise NotFound("no such title")  # changed since memory was brought up to date
        t = admin_title(row)
        seasons: list[dict[str, Any]] = []
        if t["kind"] == "series":
            eps = await db.fetchall(
                f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE title_id = ? "
                "ORDER BY season, number",
                (title_id,),
            )
            for ep in eps:
                if not seasons or seasons[-1]["season"] != int(ep["season"]):
                    seasons.append({"season": int(ep["season"]), "episodes": []})
                seasons[-1]["episodes"].append(_viewer_episode(ep))
        return {
            "id": t["id"],
            "kind": t["kind"],
            "name": t["name"],
            "synopsis": t["synopsis"],
            "year": t["year"],
            "maturity": t["maturity"],
            "genres": t["genres"],
            "cast": t["cast"],
            "artwork": t["artwork"],
            "duration": t["duration"],
            "released_at": t["released_at"],
            "playable": t["kind"] == "movie" and _playable(row),
            "seasons": seasons,
        }

    # -- playback -------------------------------------------------------------------------

    async def media(self, title_id: str, episode_id: str | None) -> Media:
        t = await self.published_title(title_id)
        if t is None:
            raise NotFound("no such title")
        return await self.media_of(t, episode_id)

    async def published_title(self, title_id: str) -> dict[str, Any] | None:
        """The stored row of a published title (for `media_of`), or None."""
        row: dict[str, Any] | None = await self.control.db.fetchone(
            f"SELECT {_TITLE_COLUMNS} FROM titles WHERE id = ? AND published = 1", (title_id,)
        )
        return row

    async def media_of(self, t: dict[str, Any], episode_id: str | None) -> Media:
        """`media` from the title's row (`published_title`): a caller that checked the row's
        maturity first does not read it twice."""
        db = self.control.db
        title_id = str(t["id"])
        if t["kind"] == "series":
            if not episode_id:
                raise BadRequest(
                    "a series plays an episode: give episode_id",
                    {"fields": {"episode_id": "is required for a series"}},
                )
            ep = await db.fetchone(
                f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE id = ? AND title_id = ?",
                (episode_id, title_id),
            )
            if ep is None:
                raise NotFound("no such episode")
            if not ep["media_key"] or not ep["published"]:
                raise NotPlayable("this episode has no media available")
            return Media(
                title_id=title_id,
                episode_id=ep["id"],
                media_key=ep["media_key"],
                name=f"{t['name']} S{ep['season']}E{ep['number']}: {ep['name']}",
                maturity=int(t["maturity"]),
                duration=_float(ep["duration"]),
                renditions=_loads(ep["renditions"], []),
            )
        if episode_id:
            raise NotFound("no such episode (a movie has none)")
        if not t["media_key"]:
            raise NotPlayable("this title has no media available")
        return Media(
            title_id=title_id,
            episode_id="",
            media_key=t["media_key"],
            name=t["name"],
            maturity=int(t["maturity"]),
            duration=_float(t["duration"]),
            renditions=_loads(t["renditions"], []),
        )

    # -- admin ---------------------------------------------------------------------------

    async def admin_list(
        self,
        *,
        kind: str | None = None,
        published: bool | None = None,
        source: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[dict[str, Any]], int]:
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if published is not None:
            where.append("published = ?")
            params.append(int(published))
        if source is not None:
            where.append("source = ?")
            params.append(source)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        db = self.control.db
        total_row = await db.fetchone(f"SELECT COUNT(*) AS n FROM titles {clause}", params)
        rows = await db.fetchall(
            f"SELECT {_TITLE_COLUMNS} FROM titles {clause} ORDER BY id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [admin_title(r) for r in rows], int(total_row["n"]) if total_row else 0

    async def admin_get(self, title_id: str, tx: Tx | None = None) -> dict[str, Any]:
        q = tx or self.control.db
        row = await q.fetchone(f"SELECT {_TITLE_COLUMNS} FROM titles WHERE id = ?", (title_id,))
        if row is None:
            raise NotFound("no such title")
        out = admin_title(row)
        eps = await q.fetchall(
            f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE title_id = ? ORDER BY season, number",
            (title_id,),
        )
        out["episodes"] = [admin_episode(e) for e in eps]
        return out

    async def create_title(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create an admin title from validated fields (see routes): 409 on a duplicate id or
        media key."""
        _check_kind_fields(spec["kind"], spec)
        now = self.control.clock()

        async def op(tx: Tx) -> tuple[dict[str, Any], list[str]]:
            tid = spec.get("id")
            if tid is not None:
                if await tx.fetchone("SELECT id FROM titles WHERE id = ?", (tid,)):
                    raise Conflict(f"a title with id {tid!r} exists", {"fields": {"id": "taken"}})
            else:
                tid = await free_id(tx, slugify(spec["name"]) or "title")
            key = spec.get("media_key")
            if key is not None and await media_key_owner(tx, key):
                raise Conflict(
                    f"media key {key!r} is used by another title or episode",
                    {"fields": {"media_key": "taken"}},
                )
            await tx.execute(
                "INSERT INTO titles(id, kind, name, synopsis, year, maturity, genres, "
                "cast_members, artwork, duration, media_key, renditions, published, source, "
                "released_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?, "
                "'admin', ?, ?)",
                (
                    tid,
                    spec["kind"],
                    spec["name"],
                    spec.get("synopsis") or "",
                    spec.get("year"),
                    spec.get("maturity", 0),
                    _dumps(spec.get("genres") or []),
                    _dumps(spec.get("cast") or []),
                    _dumps(spec.get("artwork") or {}),
                    spec.get("duration"),
                    key,
                    int(spec.get("published", True)),
                    now,
                    now,
                ),
            )
            return await self.admin_get(tid, tx), [tid]

        out = await self.write(op)
        self.control.metrics.inc("control_catalog_changes", "admin", "create")
        log.info("event=title_created title=%s kind=%s source=admin", out["id"], out["kind"])
        return out

    async def update_title(self, title_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Replace the given fields; fields left out keep their values."""
        now = self.control.clock()

        async def op(tx: Tx) -> tuple[dict[str, Any], list[str]]:
            row = await tx.fetchone(
                f"SELECT {_TITLE_COLUMNS} FROM titles WHERE id = ?", (title_id,)
            )
            if row is None:
                raise NotFound("no such title")
            kind = row["kind"]
            if "kind" in changes and changes["kind"] != kind:
                raise BadRequest(
                    "a title's kind cannot change (delete it and create it again)",
                    {"fields": {"kind": "cannot be changed"}},
                )
            _check_kind_fields(kind, changes)
            sets: dict[str, Any] = {}
            for name in ("name", "synopsis", "year", "maturity", "duration", "published"):
                if name in changes:
                    v = changes[name]
                    sets[name] = int(v) if name == "published" else v
            for name, column in (("genres", "genres"), ("cast", "cast_members")):
                if name in changes:
                    sets[column] = _dumps(changes[name] or [])
            if "artwork" in changes:
                sets["artwork"] = _dumps(changes["artwork"] or {})
            if "media_key" in changes and changes["media_key"] != row["media_key"]:
                key = changes["media_key"]
                if key is not None and await media_key_owner(tx, key):
                    raise Conflict(
                        f"media key {key!r} is used by another title or episode",
                        {"fields": {"media_key": "taken"}},
                    )
                sets["media_key"] = key
                sets["renditions"] = "[]"  # they described the previous media
            sets["updated_at"] = now
            assignments = ", ".join(f"{c} = ?" for c in sets)
            await tx.execute(
                f"UPDATE titles SET {assignments} WHERE id = ?", (*sets.values(), title_id)
            )
            return await self.admin_get(title_id, tx), [title_id]

        out = await self.write(op)
        self.control.metrics.inc("control_catalog_changes", "admin", "update")
        log.info("event=title_updated title=%s fields=%s", title_id, ",".join(sorted(changes)))
        return out

    async def delete_title(self, title_id: str) -> None:
        async def op(tx: Tx) -> tuple[None, list[str]]:
            if not await tx.execute("DELETE FROM titles WHERE id = ?", (title_id,)):
                raise NotFound("no such title")
            return None, [title_id]

        await self.write(op)
        self.control.metrics.inc("control_catalog_changes", "admin", "delete")
        log.info("event=title_deleted title=%s", title_id)

    async def create_episode(self, title_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        now = self.control.clock()

        async def op(tx: Tx) -> tuple[dict[str, Any], list[str]]:
            t = await tx.fetchone("SELECT kind FROM titles WHERE id = ?", (title_id,))
            if t is None:
                raise NotFound("no such title")
            if t["kind"] != "series":
                raise Conflict("a movie has no episodes")
            await _check_episode_slot(tx, title_id, spec["season"], spec["number"], None)
            key = spec.get("media_key")
            if key is not None and await media_key_owner(tx, key):
                raise Conflict(
                    f"media key {key!r} is used by another title or episode",
                    {"fields": {"media_key": "taken"}},
                )
            eid = secrets.token_urlsafe(12)
            await tx.execute(
                "INSERT INTO episodes(id, title_id, season, number, name, synopsis, duration, "
                "media_key, renditions, published, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '[]', 1, ?)",
                (
                    eid,
                    title_id,
                    spec["season"],
                    spec["number"],
                    spec["name"],
                    spec.get("synopsis") or "",
                    spec.get("duration"),
                    key,
                    now,
                ),
            )
            await tx.execute("UPDATE titles SET updated_at = ? WHERE id = ?", (now, title_id))
            row = await tx.fetchone(f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE id = ?", (eid,))
            assert row is not None
            return admin_episode(row), [title_id]

        out = await self.write(op)
        self.control.metrics.inc("control_catalog_changes", "admin", "update")
        log.info("event=episode_created title=%s episode=%s", title_id, out["id"])
        return out

    async def update_episode(
        self, title_id: str, episode_id: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        now = self.control.clock()

        async def op(tx: Tx) -> tuple[dict[str, Any], list[str]]:
            ep = await tx.fetchone(
                f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE id = ? AND title_id = ?",
                (episode_id, title_id),
            )
            if ep is None:
                raise NotFound("no such episode")
            season = changes.get("season", ep["season"])
            number = changes.get("number", ep["number"])
            if (season, number) != (ep["season"], ep["number"]):
                await _check_episode_slot(tx, title_id, season, number, episode_id)
            sets: dict[str, Any] = {
                k: changes[k]
                for k in ("season", "number", "name", "synopsis", "duration")
                if k in changes
            }
            if "media_key" in changes and changes["media_key"] != ep["media_key"]:
                key = changes["media_key"]
                if key is not None and await media_key_owner(tx, key):
                    raise Conflict(
                        f"media key {key!r} is used by another title or episode",
                        {"fields": {"media_key": "taken"}},
                    )
                sets["media_key"] = key
                sets["renditions"] = "[]"
                sets["published"] = 1
            sets["updated_at"] = now
            assignments = ", ".join(f"{c} = ?" for c in sets)
            await tx.execute(
                f"UPDATE episodes SET {assignments} WHERE id = ?", (*sets.values(), episode_id)
            )
            await tx.execute("UPDATE titles SET updated_at = ? WHERE id = ?", (now, title_id))
            row = await tx.fetchone(
                f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE id = ?", (episode_id,)
            )
            assert row is not None
            return admin_episode(row), [title_id]

        out = await self.write(op)
        self.control.metrics.inc("control_catalog_changes", "admin", "update")
        log.info("event=episode_updated title=%s episode=%s", title_id, episode_id)
        return out

    async def delete_episode(self, title_id: str, episode_id: str) -> None:
        now = self.control.clock()

        async def op(tx: Tx) -> tuple[None, list[str]]:
            n = await tx.execute(
                "DELETE FROM episodes WHERE id = ? AND title_id = ?", (episode_id, title_id)
            )
            if not n:
                raise NotFound("no such episode")
            await tx.execute("UPDATE titles SET updated_at = ? WHERE id = ?", (now, title_id))
            return None, [title_id]

        await self.write(op)
        self.control.metrics.inc("control_catalog_changes", "admin", "update")
        log.info("event=episode_deleted title=%s episode=%s", title_id, episode_id)


def _check_kind_fields(kind: str, fields: Mapping[str, Any]) -> None:
    if kind == "series":
        bad = {
            k: "only movies have one (a series' episodes do)"
            for k in ("media_key", "duration")
            if fields.get(k) is not None
        }
        if bad:
            raise BadRequest(
                f"invalid body: {next(iter(bad))} {next(iter(bad.values()))}", {"fields": bad}
            )


async def _check_episode_slot(
    tx: Tx, title_id: str, season: Any, number: Any, episode_id: str | None
) -> None:
    row = await tx.fetchone(
        "SELECT id FROM episodes WHERE title_id = ? AND season = ? AND number = ?",
        (title_id, season, number),
    )
    if row is not None and row["id"] != episode_id:
        raise Conflict(
            f"season {season} already has an episode {number}",
            {"fields": {"number": "taken"}},
        )


async def free_id(tx: Tx, base: str) -> str:
    """``base`` or ``base-2``, ``base-3``... whichever is free (inside the write transaction)."""
    base = base[:64].rstrip("-") or "title"
    if not await tx.fetchone("SELECT id FROM titles WHERE id = ?", (base,)):
        return base
    for n in range(2, 1000):
        suffix = f"-{n}"
        candidate = base[: 64 - len(suffix)].rstrip("-") + suffix
        if not await tx.fetchone("SELECT id FROM titles WHERE id = ?", (candidate,)):
            return candidate
    return f"{base[:51].rstrip('-')}-{secrets.token_hex(6)}"
