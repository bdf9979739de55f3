"""The origin's catalog feed: titles the origin publishes enter the catalog by themselves.

The origin never calls the control plane; the control plane reads ``GET {url}/catalog/feed
?since=SEQ`` (origin/server.py ``_feed``, origin/catalog.py) with ``Authorization: Bearer
<token>``, the token being the first line of ``catalog_feed.credential_file`` (re-read on every
poll, so a rotated token needs no restart). The answer is ``{"titles": [entry...], "next":
SEQ}``, at most 500 entries a page, each entry::

    {"seq": 7, "title": "<origin key>", "published": true, "at": 1790000000.0,
     "duration": 5400.0, "renditions": [{"name", "width", "height", "bandwidth", "codecs",
     "frame_rate", "audio", "audio_channels"}...], "hls": "master.m3u8",
     "hls_single_file": "master_single.m3u8",
     "dash": "manifest.mpd", "poster": "poster.jpg", "sprite": "sprite.jpg",
     "base_path": "/v/<key>/", "job": 12}

and a withdrawal is ``{"seq", "title", "published": false, "at"}``. A rendition's ``audio`` is
the name of the audio track it plays with (its directory and HLS audio group, null for none) and
``audio_channels`` that track's channel count: both are kept (only when ``audio`` is set), so
the per-session playlist can write the same EXT-X-MEDIA groups as the origin's master.m3u8
(control/manifest.py).

Applying an entry (one transaction per page, with the page's ``next`` stored in ``meta``
``feed_seq:<url>``, so a restart neither loses nor repeats an entry; the catalog version is
bumped by the same transaction, see control/catalog.py):

* the key is an episode's ``media_key`` (an administrator attached it): that episode's
  duration and renditions are updated and it is available; a withdrawal makes it unavailable;
* the key is a title's ``media_key``: only media fields change (duration, renditions, the
  poster and sprite paths relative to ``/v/<key>/``, unless an administrator set that
  artwork to a URL) and it is published; a withdrawal unpublishes it. Metadata an
  administrator edits (name, synopsis, genres, cast, maturity, year) is never touched;
* an unknown key creates a movie: id = the key as a slug (``_`` becomes ``-``; a hash suffix
  when that id is taken), name = the key prettified, maturity `NEW_TITLE_MATURITY` (unrated
  media stays hidden from children's profiles until an administrator rates it), released now.

Files of each title, for proactive fill (control/fill.py). A published entry also asks for the
key's files (``media_files_wanted``, in the page's transaction; a withdrawal deletes the key's
``media_files`` at once). After each poll a separate task (`FeedReader.sync_files`) reads
``GET {url}/v/<key>/manifest.json`` (with ``fill.origin_credential_file``, the origin's fill
credential, or else the catalog credential), validates its ``files`` strictly
(`parse_media_files`) and replaces the key's rows. It never holds up the catalog: a failure
(network, status, a document refused) is logged, counted (``control_media_files_fetches``) and
left wanted for the next round; transient ones are retried a few times first.

A malformed entry is logged, counted (``control_feed_skipped``) and skipped; it does not
hold up the entries after it. A failed poll (connection refused, timeout, a status other
than 200, a body that is not a feed page) is logged and counted and the loop goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from edge.config import read_credential_file

from .catalog import (
    MEDIA_KEY_RE,
    free_id,
    media_key_owner,
    prettify,
    safe_relative_path,
    slugify,
)
from .db import Tx
from .errors import Conflict
from .popularity import MediaFile

__all__ = [
    "NEW_TITLE_MATURITY",
    "FeedDisabled",
    "FeedEntry",
    "FeedError",
    "FeedReader",
    "parse_media_files",
    "parse_page",
]

log = logging.getLogger("control")

NEW_TITLE_MATURITY = 18
FETCH_TIMEOUT = 15.0  # seconds for one page, connecting included
MAX_PAGE_BYTES = 16 * 1024 * 1024
MAX_PAGES_PER_POLL = 1000  # 500k entries: a catch-up after a long outage, then the next poll
MAX_RENDITIONS = 64
# Files of a title (the origin's manifest.json): a 3 h title in 2 s segments at 10 renditions
# has ~55k; the document is ~150 bytes a file.
MAX_MEDIA_FILES = 100_000
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_FILE_SIZE = 2**50  # bytes (1 PiB): anything larger is not a file size
MANIFEST_TRIES = 3  # reads of one manifest per round when the failure may be transient
MANIFEST_RETRY_S = 0.2  # first pause between them (doubling)
MANIFESTS_PER_ROUND = 50  # keys read per round; the rest wait for the next one
_XXH64 = re.compile(r"[0-9a-fA-F]{16}\Z")


class FeedError(Exception):
    """A poll failed (the origin, the network, or the page); nothing of the page was applied."""


class FeedDisabled(Conflict):
    code = "feed_disabled"


class _Stale(Exception):
    """Another instance applied this page first."""


@dataclass(frozen=True, slots=True)
class FeedEntry:
    seq: int
    key: str
    published: bool
    duration: float | None = None
    renditions: tuple[dict[str, Any], ...] = ()
    poster: str | None = None
    sprite: str | None = None


def _rendition(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("a rendition is not an object")
    out: dict[str, Any] = {}
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ValueError("a rendition has no name")
    out["name"] = name
    for k in ("width", "height", "bandwidth"):
        v = raw.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**40):
            raise ValueError(f"rendition {k} is not a count")
        out[k] = v
    codecs = raw.get("codecs")
    if codecs is not None and (not isinstance(codecs, str) or len(codecs) > 200):
        raise ValueError("rendition codecs is not a short string")
    out["codecs"] = codecs
    fr = raw.get("frame_rate")
    if isinstance(fr, bool) or not (
        fr is None
        or (isinstance(fr, int | float) and 0 <= fr < 1e6 and math.isfinite(fr))
        or (isinstance(fr, str) and len(fr) <= 32)
    ):
        raise ValueError("rendition frame_rate is not a rate")
    out["frame_rate"] = fr
    audio = raw.get("audio")
    if audio is not None:
        if not isinstance(audio, str) or not 1 <= len(audio) <= 64:
            raise ValueError("rendition audio is not a track name")
        channels = raw.get("audio_channels")
        if channels is not None and (
            isinstance(channels, bool) or not isinstance(channels, int) or not 0 <= channels < 256
        ):
            raise ValueError("rendition audio_channels is not a count")
        out["audio"] = audio
        out["audio_channels"] = channels
    return out


def parse_entry(raw: Any, since: int, last: int) -> FeedEntry:
    """A validated entry, or ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    seq = raw.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not since < seq <= last:
        raise ValueError(f"seq {seq!r} is not in ({since}, {last}]")
    key = raw.get("title")
    if not isinstance(key, str) or not MEDIA_KEY_RE.match(key):
        raise ValueError(f"title key {str(key)[:80]!r} is not an origin title")
    published = raw.get("published")
    if not isinstance(published, bool):
        raise ValueError("published is not true or false")
    if not published:
        return FeedEntry(seq, key, False)
    duration = raw.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 <= duration <= 1e7  # before isfinite: a huge JSON integer overflows a float
        or not math.isfinite(duration)
    ):
        raise ValueError("duration is not a number of seconds")
    renditions = raw.get("renditions", [])
    if not isinstance(renditions, list) or len(renditions) > MAX_RENDITIONS:
        raise ValueError("renditions is not a list")
    return FeedEntry(
        seq=seq,
        key=key,
        published=True,
        duration=None if duration is None else float(duration),
        renditions=tuple(_rendition(r) for r in renditions),
        poster=safe_relative_path(raw.get("poster")),
        sprite=safe_relative_path(raw.get("sprite")),
    )


def parse_page(doc: Any, since: int) -> tuple[list[FeedEntry], list[tuple[Any, str]], int]:
    """(entries, [(seq, reason) of skipped ones], next); FeedError for a page that is not a
    feed page at all."""
    if not isinstance(doc, dict) or not isinstance(doc.get("titles"), list):
        raise FeedError("the answer is not a feed page (no titles list)")
    last = doc.get("next")
    if isinstance(last, bool) or not isinstance(last, int) or last < since:
        raise FeedError(f"the page's next {str(last)[:40]!r} is not a sequence number >= {since}")
    entries: list[FeedEntry] = []
    skipped: list[tuple[Any, str]] = []
    for raw in doc["titles"]:
        try:
            entries.append(parse_entry(raw, since, last))
        except ValueError as exc:
            seq = raw.get("seq") if isinstance(raw, dict) else None
            skipped.append((seq, str(exc)))
    return entries, skipped, last


class _Transient(Exception):
    """A manifest read that may succeed if tried again (network, 5xx, 429)."""


def parse_media_files(doc: Any, key: str, dropped: list[str] | None = None) -> list[MediaFile]:
    """The files of the origin's ``/v/<key>/manifest.json`` (origin/package.py
    build_manifest), or ValueError naming what is wrong. A file whose path breaks the fleet's
    file name rule (catalog.py ``safe_relative_path``, the rule steering and the edges apply
    too) is left out, and why appended to ``dropped``: one odd name must not cost the title
    all its files. Every size must be a whole number of bytes, every xxh64 16 hex digits; a
    path listed twice, or a document naming another title, is refused whole rather than half
    used."""
    if not isinstance(doc, dict):
        raise ValueError("the manifest is not a JSON object")
    title = doc.get("title")
    if title is not None and title != key:
        raise ValueError(f"the manifest is of title {str(title)[:80]!r}, not {key!r}")
    files = doc.get("files")
    if not isinstance(files, list):
        raise ValueError("the manifest has no files list")
    if len(files) > MAX_MEDIA_FILES:
        raise ValueError(f"the manifest lists {len(files)} files, more than {MAX_MEDIA_FILES}")
    out: list[MediaFile] = []
    seen: set[str] = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise ValueError(f"files[{i}] is not an object")
        path = safe_relative_path(f.get("path"))
        if path is None:
            if dropped is not None:
                dropped.append(f"files[{i}].path {str(f.get('path'))[:80]!r}")
            continue
        if path in seen:
            raise ValueError(f"files[{i}].path {path!r} is listed twice")
        seen.add(path)
        size = f.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
            raise ValueError(f"files[{i}].size is not a number of bytes")
        digest = f.get("xxh64")
        if not isinstance(digest, str) or not _XXH64.match(digest):
            raise ValueError(f"files[{i}].xxh64 is not 16 hex digits")
        out.append(MediaFile(path, size, digest.lower()))
    return out


async def _want_files(tx: Tx, e: FeedEntry, now: float) -> None:
    """A publication asks for the key's files (a re-publication again: they may differ); a
    withdrawal removes them at once, so fill stops placing what players can no longer get."""
    if e.published:
        await tx.execute(
            "INSERT INTO media_files_wanted (media_key, seq, attempts, last_error, updated_at)"
            " VALUES (?, ?, 0, NULL, ?) ON CONFLICT (media_key) DO UPDATE SET"
            " seq = excluded.seq, attempts = 0, last_error = NULL, updated_at = excluded.updated_at",
            (e.key, e.seq, now),
        )
    else:
        await tx.execute("DELETE FROM media_files_wanted WHERE media_key = ?", (e.key,))
        await tx.execute("DELETE FROM media_files WHERE media_key = ?", (e.key,))


class FeedReader:
    def __init__(self, control: Any) -> None:
        self.control = control
        self.config = control.config.catalog_feed
        self.url: str | None = self.config.url
        self.seq_key = f"feed_seq:{self.url}"
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._files_lock = asyncio.Lock()
        self._files_wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def start(self) -> None:
        if self.enabled:
            self.control.spawn(self._loop(), "catalog_feed")
            self.control.spawn(self._files_loop(), "media_files")

    def wake(self) -> None:
        """Poll now rather than at the end of the interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.poll()
            except FeedError:
                pass  # logged and counted by poll
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.interval)
            except TimeoutError:
                pass

    async def stored_seq(self) -> int:
        row = await self.control.db.fetchone(
            "SELECT value FROM meta WHERE key = ?", (self.seq_key,)
        )
        return int(row["value"]) if row else 0

    async def poll(self) -> tuple[int, int]:
        """Read the feed up to its end and apply it: (entries applied, last seq)."""
        if not self.enabled:
            raise FeedDisabled("no origin catalog feed is configured (catalog_feed.url)")
        metrics = self.control.metrics
        async with self._lock:
            try:
                applied, seq = await self._poll_locked()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.inc("control_feed_polls", "error")
                reason = str(exc)[:300] or type(exc).__name__
                log.warning("event=feed_poll outcome=error url=%s error=%r", self.url, reason)
                if isinstance(exc, FeedError):
                    raise
                raise FeedError(reason) from exc
        metrics.inc("control_feed_polls", "ok")
        log.debug(
            "event=feed_poll outcome=ok url=%s applied=%d seq=%d",
            self.url,
            applied,
            seq,
        )
        return applied, seq

    async def _poll_locked(self) -> tuple[int, int]:
        seq = await self.stored_seq()
        applied = 0
        for _ in range(MAX_PAGES_PER_POLL):
            doc = await self._fetch(seq)
            entries, skipped, last = parse_page(doc, seq)
            if last <= seq:
                break
            try:
                applied += await self._apply_page(seq, entries, skipped, last)
            except _Stale:
                seq = await self.stored_seq()
                log.debug("event=feed_page_stale url=%s seq=%d", self.url, seq)
                continue
            seq = last
        return applied, seq

    async def _fetch(self, since: int) -> Any:
        assert self.url is not None and self.config.credential_file is not None
        try:
            token = read_credential_file(self.config.credential_file)
        except (OSError, ValueError) as exc:
            raise FeedError(f"cannot read the credential file: {exc}") from None
        try:
            async with self.control.http.get(
                f"{self.url}/catalog/feed",
                params={"since": str(since)},
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            ) as r:
                if r.status != 200:
                    hint = " (check catalog_feed.credential_file)" if r.status in (401, 403) else ""
                    raise FeedError(f"the origin answered {r.status}{hint}")
                body = bytearray()
                async for chunk in r.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise FeedError(f"a feed page larger than {MAX_PAGE_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FeedError(f"cannot reach the origin: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FeedError(f"the feed page is not JSON: {exc}") from None

    async def _apply_page(
        self,
        since: int,
        entries: list[FeedEntry],
        skipped: list[tuple[Any, str]],
        last: int,
    ) -> int:
        now = self.control.clock()
        ops: list[tuple[str, str]] = []

        async def op(tx: Tx) -> tuple[None, set[str]]:
            row = await tx.fetchone("SELECT value FROM meta WHERE key = ?", (self.seq_key,))
            if (int(row["value"]) if row else 0) != since:
                raise _Stale()
            touched: set[str] = set()
            for entry in entries:
                await _want_files(tx, entry, now)
                what, title_id = await self._apply_entry(tx, entry, now)
                if title_id:
                    touched.add(title_id)
                if what:
                    ops.append((what, entry.key))
            await tx.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (self.seq_key, str(last)),
            )
            return None, touched

        await self.control.catalog.write(op)
        metrics = self.control.metrics
        for seq, reason in skipped:
            metrics.inc("control_feed_skipped")
            log.warning(
                "event=feed_entry_skipped url=%s seq=%s reason=%r",
                self.url,
                seq,
                reason,
            )
        if entries:
            metrics.inc("control_feed_entries", n=len(entries))
            if any(e.published for e in entries):
                self._files_wake.set()
        for what, key in ops:
            metrics.inc("control_catalog_changes", "origin", what)
            log.info("event=feed_entry_applied op=%s key=%s", what, key)
        return len(entries)

    # -- the files of each title ------------------------------------------------------------

    async def _files_loop(self) -> None:
        while True:
            self._files_wake.clear()
            try:
                await self.sync_files()
            except Exception as exc:  # a database hiccup: the work stays wanted
                log.warning("event=media_files_sync_failed error=%r", str(exc)[:200])
            try:
                await asyncio.wait_for(self._files_wake.wait(), timeout=self.config.interval)
            except TimeoutError:
                pass

    @property
    def files_busy(self) -> bool:
        """Whether a round of manifest reads is running or due now (for tests and tools)."""
        return self._files_lock.locked() or self._files_wake.is_set()

    async def sync_files(self, max_keys: int = MANIFESTS_PER_ROUND) -> tuple[int, int]:
        """Read the manifests of up to ``max_keys`` wanted keys (those failing least first) and
        store their files: (keys stored, keys failed)."""
        if not self.enabled:
            raise FeedDisabled("no origin catalog feed is configured (catalog_feed.url)")
        c = self.control
        async with self._files_lock:
            rows = await c.db.fetchall(
                "SELECT media_key, seq, attempts FROM media_files_wanted"
                " ORDER BY attempts, seq LIMIT ?",
                (max_keys,),
            )
            stored = failed = 0
            for row in rows:
                key, seq = str(row["media_key"]), int(row["seq"])
                if await self._sync_key(key, seq, int(row["attempts"])):
                    stored += 1
                else:
                    failed += 1
            left = await c.db.fetchone("SELECT COUNT(*) AS n FROM media_files_wanted")
            c.metrics.set_gauge("control_media_files_wanted", float(left["n"] if left else 0))
        return stored, failed

    async def _sync_key(self, key: str, seq: int, attempts: int) -> bool:
        c = self.control
        outcome, error = "ok", ""
        files: list[MediaFile] = []
        dropped: list[str] = []
        try:
            files = parse_media_files(await self._manifest(key), key, dropped)
        except FeedError as exc:
            outcome, error = "error", str(exc)
        except ValueError as exc:
            outcome, error = "invalid", str(exc)
        now = c.clock()
        if outcome != "ok":
            await c.db.execute(
                "UPDATE media_files_wanted SET attempts = attempts + 1, last_error = ?,"
                " updated_at = ? WHERE media_key = ? AND seq = ?",
                (error[:300], now, key, seq),
            )
            c.metrics.inc("control_media_files_fetches", outcome)  # once recorded
            log.warning(
                "event=media_files_fetch outcome=%s key=%s attempts=%d error=%r",
                outcome,
                key,
                attempts + 1,
                error[:300],
            )
            return False
        async with c.db.transaction() as tx:
            # Still wanted for this publication? A withdrawal or a newer publication since the
            # read makes these files stale: leave them to the next round.
            row = await tx.fetchone(
                "SELECT seq FROM media_files_wanted WHERE media_key = ?", (key,)
            )
            if row is None or int(row["seq"]) != seq:
                log.info("event=media_files_fetch outcome=superseded key=%s", key)
                return False
            await tx.execute("DELETE FROM media_files WHERE media_key = ?", (key,))
            await tx.executemany(
                "INSERT INTO media_files (media_key, path, size, xxh64) VALUES (?, ?, ?, ?)",
                [(key, f.path, f.size, f.xxh64) for f in files],
            )
            await tx.execute("DELETE FROM media_files_wanted WHERE media_key = ?", (key,))
        # Counted once stored (tests and operators read "ok" as "the files are there").
        c.metrics.inc("control_media_files_fetches", "ok")
        if dropped:
            c.metrics.inc("control_media_files_dropped", n=len(dropped))
            log.warning(
                "event=media_files_dropped key=%s dropped=%d first=%r",
                key,
                len(dropped),
                dropped[0],
            )
        log.info(
            "event=media_files_fetch outcome=ok key=%s files=%d bytes=%d",
            key,
            len(files),
            sum(f.size for f in files),
        )
        return True

    async def _manifest(self, key: str) -> Any:
        """The parsed ``/v/<key>/manifest.json``, tried up to MANIFEST_TRIES times while the
        failure may be transient; FeedError when it cannot be had, ValueError when it is not
        JSON."""
        pause = MANIFEST_RETRY_S
        for attempt in range(1, MANIFEST_TRIES + 1):
            try:
                return await self._manifest_once(key)
            except _Transient as exc:
                if attempt == MANIFEST_TRIES:
                    raise FeedError(str(exc)) from None
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")

    async def _manifest_once(self, key: str) -> Any:
        assert self.url is not None
        cred = self.control.config.fill.origin_credential_file or self.config.credential_file
        assert cred is not None
        try:
            token = read_credential_file(cred)
        except (OSError, ValueError) as exc:
            raise FeedError(f"cannot read the credential file: {exc}") from None
        try:
            async with self.control.http.get(
                f"{self.url}/v/{key}/manifest.json",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            ) as r:
                if r.status >= 500 or r.status == 429:
                    raise _Transient(f"the origin answered {r.status}")
                if r.status != 200:
                    hint = (
                        " (check fill.origin_credential_file: the origin's fill credential)"
                        if r.status in (401, 403)
                        else ""
                    )
                    raise FeedError(f"the origin answered {r.status}{hint}")
                body = bytearray()
                async for chunk in r.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise ValueError(f"a manifest larger than {MAX_MANIFEST_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(f"cannot reach the origin: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"the manifest is not JSON: {exc}") from None

    async def _apply_entry(self, tx: Tx, e: FeedEntry, now: float) -> tuple[str, str]:
        """Apply one entry: (op for the changes counter or '', the title id touched or '')."""
        renditions = json.dumps(list(e.renditions), separators=(",", ":"))
        owner = await media_key_owner(tx, e.key)
        if owner is not None and owner[0] == "episode":
            ep = await tx.fetchone(
                "SELECT title_id, published FROM episodes WHERE id = ?", (owner[1],)
            )
            assert ep is not None
            if e.published:
                await tx.execute(
                    "UPDATE episodes SET duration = ?, renditions = ?, published = 1, "
                    "updated_at = ? WHERE id = ?",
                    (e.duration, renditions, now, owner[1]),
                )
            elif ep["published"]:
                await tx.execute(
                    "UPDATE episodes SET published = 0, updated_at = ? WHERE id = ?",
                    (now, owner[1]),
                )
            else:
                return "", ""
            await tx.execute("UPDATE titles SET updated_at = ? WHERE id = ?", (now, ep["title_id"]))
            return "update", ep["title_id"]
        if owner is not None:
            tid = owner[1]
            row = await tx.fetchone("SELECT artwork, published FROM titles WHERE id = ?", (tid,))
            assert row is not None
            if not e.published:
                if not row["published"]:
                    return "", ""
                await tx.execute(
                    "UPDATE titles SET published = 0, updated_at = ? WHERE id = ?",
                    (now, tid),
                )
                return "delete", tid
            artwork = _merge_artwork(row["artwork"], e)
            await tx.execute(
                "UPDATE titles SET duration = ?, renditions = ?, artwork = ?, published = 1, "
                "updated_at = ? WHERE id = ?",
                (e.duration, renditions, artwork, now, tid),
            )
            return "update", tid
        if not e.published:
            return "", ""  # withdrawn before we ever saw it
        tid = await _origin_id(tx, e.key)
        await tx.execute(
            "INSERT INTO titles(id, kind, name, synopsis, year, maturity, genres, cast_members, "
            "artwork, duration, media_key, renditions, published, source, released_at, "
            "updated_at) VALUES (?, 'movie', ?, '', NULL, ?, '[]', '[]', ?, ?, ?, ?, 1, "
            "'origin', ?, ?)",
            (
                tid,
                prettify(e.key),
                NEW_TITLE_MATURITY,
                _merge_artwork("{}", e),
                e.duration,
                e.key,
                renditions,
                now,
                now,
            ),
        )
        return "create", tid


def _merge_artwork(current: Any, e: FeedEntry) -> str:
    """The feed's poster and sprite over the stored artwork, except where an administrator
    set a URL."""
    try:
        art = json.loads(current) if isinstance(current, str) else {}
    except ValueError:
        art = {}
    if not isinstance(art, dict):
        art = {}
    for kind, path in (("poster", e.poster), ("sprite", e.sprite)):
        existing = art.get(kind)
        if path is None or (
            isinstance(existing, str) and existing.startswith(("http://", "https://"))
        ):
            continue
        art[kind] = path
    return json.dumps(art, ensure_ascii=False, separators=(",", ":"))


async def _origin_id(tx: Tx, key: str) -> str:
    """The title id for a new origin key: its slug, or the slug plus a hash when taken."""
    base = slugify(key) or "title"
    if not await tx.fetchone("SELECT id FROM titles WHERE id = ?", (base,)):
        return base
    h = hashlib.sha256(key.encode()).hexdigest()[:8]
    candidate = f"{base[:55].rstrip('-')}-{h}"
    if not await tx.fetchone("SELECT id FROM titles WHERE id = ?", (candidate,)):
        return candidate
    return await free_id(tx, candidate)
