"""Playback authorization and playback events (the service behind control/routes/playback.py).

Starting playback (`PlaybackService.authorize`) for a profile and a title (or episode):

1. the account's plan (`BillingStore.entitlement`: 402 without one; a canceled subscription
   plays until its period ends); then whether the title exists for this profile: an unknown or
   unpublished title, and one rated above the profile's maturity limit, are both 404 (the
   catalog hides the latter from that profile, so it does not exist here), checked BEFORE
   anything that would tell them apart (a series without episode_id 400, a title without media
   409 ``not_playable``), so a hidden title is always 404; then the media
   (`CatalogStore.media`: 404 for an unknown episode, 400, 409 ``not_playable``);
2. the concurrent-stream limit, in ONE transaction serialised per account (``UPDATE accounts
   SET version = version + 1`` first, control/db.py): plays of the account whose lease ran out
   without a stop are marked stopped (``stopped_at = lease_expires_at``; counted in
   ``control_leases_expired``), the live ones counted (``stopped_at IS NULL AND
   lease_expires_at > now``), and at ``plan.max_streams`` the start is refused (409
   ``stream_limit``, details ``{max_streams, active}``); otherwise the play row is inserted
   with a lease of ``playback.lease_ttl``, the region it is served from (the site of
   steering's first edge, '' on the fallback URL) and the plan's ``max_height``, which the
   proactive fill's popularity of files reads (control/fill.py). A lease is live only while ``lease_expires_at >
   now``, so a player that vanishes frees its slot after ``lease_ttl`` with no reaper;
3. the steering service's ranked edges for the title and the player's address (control/steer.py;
   steering's own last resort, the origin, is left out: it refuses players); on a timeout or
   error, ``playback.fallback_url`` (a token-checking edge or load-balanced name for the edges)
   as the only "edge" (counted as ``control_playback_starts{steering_fallback}``); neither
   available: 503, the lease released;
4. edge tokens (edge/tokens.py), valid ``token_ttl``, bound to the player's address with
   ``bind_client_ip``. The plan's resolution is enforced by the tokens (control/manifest.py):
   the per-session playlist gives every rendition and audio track its own token scoped to its
   directory (``/v/<key>/<rendition>/``). Only when the plan allows the title's whole ladder
   does the answer also carry a title-wide token (``/v/<key>/``) in every edge's
   ``url_prefix`` and the origin's own master.m3u8 / manifest.mpd through the first edge
   (``manifests.hls_edge`` / ``dash``). For a capped plan (``capped``: true) ``hls_edge`` is
   null and the player plays through ``manifests.hls``; its ``dash`` is this service's
   per-session MPD (``/v1/playback/<play_id>/manifest.mpd?token=``, control/mpd.py): the
   origin's MPD, read once per media key through the first edge, cut to the plan, each
   Representation under a BaseURL with its own directory token.

``manifests.hls``, the per-session multivariant playlist served by this service, is a URL that
works without headers (native HLS players cannot send Authorization): it carries ``?token=``, a
token of the same signing keys for the path ``/v1/playback/<play_id>/master.m3u8`` with the
edge tokens' expiry and binding. The playlist route accepts that token or the bearer session
of the play's account; anything else is 404 (401 with neither).

``control_playback_starts{outcome}``: ``ok``, ``steering_fallback`` (granted on the fallback
URL), ``no_subscription`` (402), ``not_found`` (404: unknown title or episode), ``maturity``
(404: above the profile's limit), ``bad_request`` (400: a series without episode_id),
``not_playable`` (409), ``stream_limit`` (409), ``unavailable`` (503).

Playback events (`PlaybackService.event`), per play, from a session of the same account
(another account's play is 404): ``progress`` renews the lease (``lease_expires_at = now +
lease_ttl``) and records the position; a lease that expired already is refused (409
``lease_expired``: the player starts again, which re-checks the limit). Every progress event
(the heartbeat) re-checks the subscription: when the account is no longer entitled, the lease
ends there (the position is recorded as by a stop) and the answer is 402
``subscription_required`` (counted as ``control_playback_events{subscription_ended}``), so a
stream cannot outlive its subscription. ``stop`` ends the lease and records the final
position; ``error`` counts and logs the error. A stopped play refuses every event (409
``stopped``; ``lease_expired`` when it was stopped because its lease ran out). A position past
the media's known duration is clamped to the duration (the answer's ``position`` is what was
recorded). Seconds watched grow by the position's change bounded by the wall time since the
last update (and by the lease's end), so a client cannot inflate them; ``bytes`` are deltas.
Positions go to `LibraryStore.record_position` (resume and history; the batch reads plays rows
for play counts and popularity). ``DELETE /v1/playback/{id}`` (`stop`) is idempotent: a play
that is over already (stopped, or its lease ran out) answers 204 as well.

Each event's read-modify-write runs in a transaction that first writes the play's row (a no-op
``UPDATE``), which takes its row lock in PostgreSQL and serialises concurrent events of one
play (SQLite's write transactions are serialised anyway).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from cachetools import TTLCache

from edge.tokens import TokenRejected, sign, verify

from .accounts import SESSION_COLUMNS, SESSION_FROM, token_digest
from .errors import (
    BadRequest,
    Conflict,
    ControlError,
    NotFound,
    StreamLimit,
    SubscriptionRequired,
    Unavailable,
)
from .fields import page
from .fill import REGION_RE
from .library import upsert_position
from .manifest import (
    BASE_PATHWAY,
    RankedEdge,
    allowed_renditions,
    covers_ladder,
    fallback_edge,
    hls_multivariant,
    mpd_path,
    playlist_path,
    public_rendition,
    rendition_directories,
    rendition_prefix,
    steering_url,
    title_prefix,
    url_prefix,
    valid_media_key,
)
from .mpd import MAX_MPD_BYTES, MpdError, parse_mpd, session_mpd
from .steer import SteeringClient, SteeringFailed

log = logging.getLogger("control")

EVENT_KINDS = ("progress", "stop", "error")
MAX_CLOCK_SKEW_S = 300.0  # as control/library.py: a client_at further ahead is refused
MAX_ERROR_CHARS = 200


class LeaseExpired(Conflict):
    """The play's lease ran out (no heartbeat within lease_ttl): start playback again."""

    code = "lease_expired"


class PlaybackStopped(Conflict):
    """The play was stopped already."""

    code = "stopped"


class NotPlayable(Conflict):
    code = "not_playable"


def _reaped(row: dict[str, Any]) -> bool:
    """Whether the play was stopped because its lease ran out (see `_REAP`)."""
    return row["stopped_at"] is not None and float(row["stopped_at"]) == float(
        row["lease_expires_at"]
    )


# A play whose lease ran out is marked stopped at the instant its lease ended; an explicit stop
# writes the time of the stop instead, so the two are told apart later (`_reaped`).
_REAP = "UPDATE plays SET stopped_at = lease_expires_at"


# What a playback event reads before its transaction, in one query: the media's duration as
# CatalogStore.media would give it (None when the title or episode is no longer playable) and
# the account's subscription (billing.entitlement_of). LEFT JOINs: a play whose title is gone
# still takes events, recorded without a duration.
_EVENT_META = (
    "SELECT p.id AS p_id, p.episode_id, t.kind AS t_kind, t.published AS t_published,"
    " t.media_key AS t_key, t.duration AS t_duration, e.media_key AS e_key,"
    " e.published AS e_published, e.duration AS e_duration,"
    " sub.status AS sub_status, sub.plan_id AS sub_plan, sub.period_end AS sub_end"
    " FROM plays p"
    " LEFT JOIN titles t ON t.id = p.title_id"
    " LEFT JOIN episodes e ON e.id = p.episode_id AND e.title_id = p.title_id"
    " LEFT JOIN subscriptions sub ON sub.account_id = p.account_id"
    " WHERE p.id = ? AND p.account_id = ?"
)
# The same with the bearer token's session, for a heartbeat's one read (the session is
# checked first: 401 before anything about the play).
_EVENT_SESSION_META = (
    f"SELECT {SESSION_COLUMNS}, p.id AS p_id, p.episode_id, t.kind AS t_kind,"
    " t.published AS t_published, t.media_key AS t_key, t.duration AS t_duration,"
    " e.media_key AS e_key, e.published AS e_published, e.duration AS e_duration,"
    " sub.status AS sub_status, sub.plan_id AS sub_plan, sub.period_end AS sub_end"
    f" {SESSION_FROM}"
    " LEFT JOIN plays p ON p.id = ? AND p.account_id = s.account_id"
    " LEFT JOIN titles t ON t.id = p.title_id"
    " LEFT JOIN episodes e ON e.id = p.episode_id AND e.title_id = p.title_id"
    " LEFT JOIN subscriptions sub ON sub.account_id = p.account_id"
    " WHERE s.token_hash = ?"
)
_UNREAD: Any = object()


# What a playback start reads besides the catalog, in one query: the account's subscription,
# its streams in use (a read before steering is asked; the transaction re-counts) and the
# profile's resume position of the title (episode).
_START_STATE = (
    "SELECT s.status AS sub_status, s.plan_id AS sub_plan, s.period_end AS sub_end,"
    " (SELECT COUNT(*) FROM plays WHERE account_id = ? AND stopped_at IS NULL"
    " AND lease_expires_at > ?) AS active,"
    " w.position AS position, w.finished AS finished"
    " FROM (SELECT 1 AS one) AS one"
    " LEFT JOIN watch_state w ON w.profile_id = ? AND w.title_id = ? AND w.episode_id = ?"
    " LEFT JOIN subscriptions s ON s.account_id = ?"
)


def play_region(edges: list[RankedEdge], fallback: bool) -> str:
    """The region a play counts for in the popularity of files: the site of steering's first
    edge, where the player is sent first (and where fill placed the title's files). '' when
    steering was not asked or failed (playback.fallback_url): such plays count only in the
    all-regions scores. A site that is not a valid region name is recorded as ''."""
    if fallback or not edges:
        return ""
    site = edges[0].site
    return site if REGION_RE.fullmatch(site) else ""


def _playable_duration(meta: dict[str, Any]) -> float | None:
    """The duration of a play's media from `_EVENT_META`, with CatalogStore.media's rules."""
    if meta["t_kind"] is None or not meta["t_published"]:
        return None
    if meta["t_kind"] == "series":
        if not meta["episode_id"] or not meta["e_key"] or not meta["e_published"]:
            return None
        value = meta["e_duration"]
    else:
        if meta["episode_id"] or not meta["t_key"]:
            return None
        value = meta["t_duration"]
    return float(value) if value else None  # 0 is unknown, as in _duration: never clamp to it


def _sub_row(meta: dict[str, Any]) -> dict[str, Any]:
    """The subscription columns billing.entitlement_of reads, from `_EVENT_META`."""
    return {
        "status": meta["sub_status"],
        "plan_id": meta["sub_plan"],
        "period_end": meta["sub_end"],
    }


@dataclass(frozen=True, slots=True)
class _SessionMedia:
    cfg: Any  # PlaybackConfig
    renditions: list[dict[str, Any]]
    max_height: int
    edge_url: str  # the session's first edge
    key: str
    tokens: dict[str, str]  # directory -> token
    client_ip: str


class PlaybackService:
    def __init__(self, control: Any) -> None:
        self.control = control
        # Origin MPDs by media key, for capped plans' DASH sessions (`_origin_mpd`).
        self._mpds: TTLCache[str, bytes] = TTLCache(maxsize=256, ttl=300)
        self._mpd_fetches: dict[str, asyncio.Future[bytes]] = {}  # fetches under way, by key
        # Kept-alive connections to steering, made on first use (control/steer.py).
        self._steering: SteeringClient | None = None

    def close(self) -> None:
        if self._steering is not None:
            self._steering.close()

    # -- start ----------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        self.control.metrics.inc("control_playback_starts", outcome)

    async def authorize(
        self,
        account_id: str,
        profile: Any,
        title_id: str,
        episode_id: str | None,
        *,
        device: str,
        client_ip: str,
        control_url: str,
    ) -> dict[str, Any]:
        """Authorise playback; the answer of ``POST /v1/playback`` (see the module doc)."""
        c = self.control
        cfg = c.config.playback
        keys = cfg.signing_keys
        if keys is None or (cfg.steering_url is None and cfg.fallback_url is None):
            self._count("unavailable")
            raise Unavailable(
                "playback is not configured (signing keys, and steering or a fallback URL)"
            )
        now = float(c.clock())
        # The subscription, the streams in use and the resume position in one read; the
        # checks below still run in their order (402, then 404, then 409).
        state = await c.db.fetchone(
            _START_STATE,
            (account_id, now, profile.id, title_id, episode_id or "", account_id),
        )
        assert state is not None  # FROM a one-row subquery
        sub = None if state["sub_status"] is None else _sub_row(state)
        plan = await c.billing.entitlement_of(account_id, sub)
        if plan is None:
            self._count("no_subscription")
            raise SubscriptionRequired("a subscription is required to play")
        t = await c.catalog.published_title(title_id)
        if t is None:
            self._count("not_found")
            raise NotFound("no such title")
        if int(t["maturity"]) > profile.maturity_limit:
            # Not 403: the catalog hides the title from this profile, so it does not exist here.
            self._count("maturity")
            raise NotFound("no such title")
        try:
            media = await c.catalog.media_of(t, episode_id)
        except NotFound:
            self._count("not_found")
            raise
        except BadRequest:
            self._count("bad_request")
            raise
        except Conflict:
            self._count("not_playable")
            raise
        if media.maturity > profile.maturity_limit:  # re-rated in between
            self._count("maturity")
            raise NotFound("no such title")
        renditions = allowed_renditions(media.renditions, plan.max_height)
        if not valid_media_key(media.media_key) or not renditions:
            self._count("not_playable")
            raise NotPlayable("the title has no playable media yet")
        full = covers_ladder(media.renditions, renditions)

        expires = int(now + cfg.token_ttl)
        bound = client_ip if cfg.bind_client_ip else None
        play_id = secrets.token_urlsafe(12)
        try:
            playlist_token = sign(keys, playlist_path(play_id), expires, bound)
            title_token = (
                sign(keys, title_prefix(media.media_key), expires, bound) if full else None
            )
            # A capped plan's DASH players get a per-session MPD (control/mpd.py).
            mpd_token = None if full else sign(keys, mpd_path(play_id), expires, bound)
        except ValueError as exc:
            self._count("unavailable")
            log.warning("event=playback_sign_failed error=%r", str(exc)[:200])
            raise Unavailable("cannot sign a playback token for this client") from None

        lease_expires_at = now + cfg.lease_ttl
        # Steering is asked before the play is written, so that the play's row is inserted with
        # its edges in the one write transaction of a start (a failure to steer then leaves
        # nothing behind). A read of the streams in use comes first, so that a start refused
        # for the stream limit does not cost steering a request; the transaction re-counts
        # under the account's lock, which is what decides.
        edges: list[RankedEdge] | None = None
        fallback = False
        if int(state["active"]) < plan.max_streams:
            try:
                edges, fallback = await self._edges(media.media_key, client_ip)
            except Unavailable:
                self._count("unavailable")
                raise
        granted, active, reaped = False, 0, 0
        async with c.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            reaped = await tx.execute(
                f"{_REAP} WHERE account_id = ? AND stopped_at IS NULL AND lease_expires_at <= ?",
                (account_id, now),
            )
            active = await self._active_streams(account_id, now, tx)
            if edges is not None and active < plan.max_streams:
                # region and max_height feed the popularity of files for proactive fill
                # (control/fill.py): in the same INSERT, so a start costs no extra query.
                await tx.execute(
                    "INSERT INTO plays (id, account_id, profile_id, title_id, episode_id,"
                    " media_key, device, client_ip, started_at, updated_at, lease_expires_at,"
                    " edges, region, max_height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        play_id,
                        account_id,
                        profile.id,
                        media.title_id,
                        media.episode_id or "",
                        media.media_key,
                        device,
                        client_ip,
                        now,
                        now,
                        lease_expires_at,
                        json.dumps([{"id": e.id, "url": e.url} for e in edges]),
                        play_region(edges, fallback),
                        plan.max_height,
                    ),
                )
                granted = True
        if reaped > 0:
            c.metrics.inc("control_leases_expired", n=reaped)
            log.info("event=leases_expired account=%s count=%d", account_id, reaped)
        if not granted:
            self._count("stream_limit")
            log.info(
                "event=playback_start outcome=stream_limit account=%s active=%d max=%d",
                account_id,
                active,
                plan.max_streams,
            )
            raise StreamLimit(
                f"all {plan.max_streams} streams of the plan are in use",
                {"max_streams": plan.max_streams, "active": active},
            )
        assert edges is not None  # granted only with edges

        # Where to start: 0 when never watched or finished (LibraryStore.resume_position).
        resume = 0.0 if state["finished"] or state["position"] is None else state["position"]
        self._count("steering_fallback" if fallback else "ok")
        log.info(
            "event=playback_start outcome=ok account=%s play=%s title=%s episode=%s edges=%d"
            " fallback=%s capped=%s",
            account_id,
            play_id,
            media.title_id,
            media.episode_id or "-",
            len(edges),
            fallback,
            not full,
        )
        prefixes: list[str | None] = [
            url_prefix(e.url, title_token, media.media_key) if title_token else None for e in edges
        ]
        first = prefixes[0]
        steering = None
        if cfg.steering_public_url is not None:
            steering = {
                kind: steering_url(cfg.steering_public_url, kind, media.media_key, client_ip)
                for kind in ("hls", "dash")
            }
        playlist = f"{control_url.rstrip('/')}{playlist_path(play_id)}?" + urlencode(
            {"token": playlist_token}
        )
        if first:  # the whole ladder: the origin's MPD on the first edge
            dash = first + "manifest.mpd"
        else:  # capped: this service's per-session MPD
            assert mpd_token is not None
            dash = f"{control_url.rstrip('/')}{mpd_path(play_id)}?" + urlencode(
                {"token": mpd_token}
            )
        return {
            "play_id": play_id,
            "lease_expires_at": lease_expires_at,
            "heartbeat_interval": cfg.lease_ttl / 3,
            "expires_at": expires,
            "resume_position": float(resume),
            "title_id": media.title_id,
            "episode_id": media.episode_id or None,
            "max_height": plan.max_height,
            "capped": not full,
            "renditions": [public_rendition(r) for r in renditions],
            "edges": [
                {"id": e.id, "url": e.url, "url_prefix": p}
                for e, p in zip(edges, prefixes, strict=True)
            ],
            "manifests": {
                "hls": playlist,
                "hls_edge": first + "master.m3u8" if first else None,
                "dash": dash,
            },
            "steering": steering,
        }

    async def _active_streams(self, account_id: str, now: float, tx: Any = None) -> int:
        """The account's plays holding a stream slot (lease not expired, not stopped)."""
        row = await (tx or self.control.db).fetchone(
            "SELECT COUNT(*) AS n FROM plays"
            " WHERE account_id = ? AND stopped_at IS NULL AND lease_expires_at > ?",
            (account_id, now),
        )
        return int(row["n"]) if row else 0

    async def _edges(self, media_key: str, client_ip: str) -> tuple[list[RankedEdge], bool]:
        """(ranked edges, whether they are the fallback URL standing in for steering)."""
        c = self.control
        cfg = c.config.playback
        if cfg.steering_url is None:
            return [fallback_edge(cfg.fallback_url)], False
        try:
            if self._steering is None:
                self._steering = SteeringClient(cfg.steering_url, cfg.steering_timeout)
            edges = await self._steering.ranked_edges(media_key, client_ip)
        except SteeringFailed as exc:
            c.metrics.inc("control_steering_requests", exc.outcome)
            log.warning(
                "event=steering_failed outcome=%s detail=%r fallback=%s",
                exc.outcome,
                exc.detail,
                "fallback_url" if cfg.fallback_url else "none",
            )
            if cfg.fallback_url is None:
                raise Unavailable("no edge is available for playback; retry") from None
            return [fallback_edge(cfg.fallback_url)], True
        c.metrics.inc("control_steering_requests", "ok")
        return edges, False

    # -- the per-session multivariant playlist --------------------------------------------

    async def _play(self, account_id: str | None, play_id: str) -> dict[str, Any]:
        """The play (of ``account_id``; of any account when None: the caller holds the
        play's playlist token)."""
        if account_id is None:
            row: dict[str, Any] | None = await self.control.db.fetchone(
                "SELECT * FROM plays WHERE id = ?", (play_id,)
            )
        else:
            row = await self.control.db.fetchone(
                "SELECT * FROM plays WHERE id = ? AND account_id = ?", (play_id, account_id)
            )
        if row is None:
            raise NotFound("no such playback session")
        return row

    def _refuse_if_over(self, row: dict[str, Any], now: float) -> None:
        if row["stopped_at"] is not None:
            if _reaped(row):
                raise LeaseExpired("the stream lease expired; start playback again")
            raise PlaybackStopped("the playback session was stopped")
        if float(row["lease_expires_at"]) <= now:
            raise LeaseExpired("the stream lease expired; start playback again")

    def playlist_token_ok(
        self, play_id: str, token: str, client_ip: str | None, *, dash: bool = False
    ) -> bool:
        """Whether ``token`` (the ``?token=`` of ``manifests.hls``, with ``dash`` of the
        per-session ``manifests.dash``) authorises that manifest of ``play_id`` for
        ``client_ip`` now."""
        keys = self.control.config.playback.signing_keys
        if keys is None:
            return False
        path = mpd_path(play_id) if dash else playlist_path(play_id)
        try:
            verify(keys, token, path, float(self.control.clock()), client_ip)
        except (TokenRejected, ValueError) as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else "malformed"
            log.info("event=playlist_token_refused play=%s reason=%s", play_id, reason)
            return False
        return True

    async def playlist(self, account_id: str | None, play_id: str) -> str:
        """The session's HLS multivariant playlist (see control/manifest.py). ``account_id``
        None: the caller presented the play's playlist token (`playlist_token_ok`)."""
        s = await self._session_media(account_id, play_id)
        steering = None
        if s.cfg.steering_public_url is not None:
            steering = steering_url(s.cfg.steering_public_url, "hls", s.key, s.client_ip)
        return hls_multivariant(
            s.renditions,
            edge_url=s.edge_url,
            media_key=s.key,
            tokens=s.tokens,
            steering_uri=steering,
            pathway=BASE_PATHWAY,
        )

    async def mpd(self, account_id: str | None, play_id: str) -> str:
        """The session's DASH MPD (control/mpd.py): the origin's, read through the session's
        first edge, cut to the plan. ``account_id`` None: the caller presented the MPD's
        token."""
        s = await self._session_media(account_id, play_id)
        origin = await self._origin_mpd(s.key, s.edge_url)
        steering = None
        if s.cfg.steering_public_url is not None:
            steering = steering_url(s.cfg.steering_public_url, "dash", s.key, s.client_ip)
        try:
            return session_mpd(
                origin,
                max_height=s.max_height,
                edge_url=s.edge_url,
                media_key=s.key,
                tokens=s.tokens,
                steering_uri=steering,
            )
        except MpdError as exc:
            log.warning("event=mpd_unusable key=%s error=%r", s.key, str(exc)[:200])
            raise NotPlayable("the title has no usable DASH manifest") from None

    async def _origin_mpd(self, key: str, edge_url: str) -> bytes:
        """The origin's manifest.mpd of ``key``, fetched through ``edge_url`` with a short
        title-wide token of our own, kept a few minutes (a title's files do not change under
        one media key). Concurrent misses of one key share one fetch: a new release's first
        minute of capped DASH starts makes one request, not one each."""
        cached = self._mpds.get(key)
        if cached is not None:
            return cached
        pending = self._mpd_fetches.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_mpd(key, edge_url))
            self._mpd_fetches[key] = pending
            pending.add_done_callback(lambda _: self._mpd_fetches.pop(key, None))
        # shield: a caller that gives up (its client left) does not cancel the others' fetch.
        return await asyncio.shield(pending)

    async def _fetch_mpd(self, key: str, edge_url: str) -> bytes:
        c = self.control
        keys = c.config.playback.signing_keys
        assert keys is not None
        token = sign(keys, title_prefix(key), int(float(c.clock()) + 60), None)
        url = url_prefix(edge_url, token, key) + "manifest.mpd"
        try:
            async with c.http.get(
                url, timeout=aiohttp.ClientTimeout(total=5), allow_redirects=False
            ) as r:
                if r.status == 404:
                    raise NotPlayable("the title has no DASH manifest")
                if r.status != 200:
                    raise Unavailable(f"the title's DASH manifest is unavailable ({r.status})")
                body = await r.content.read(MAX_MPD_BYTES + 1)
                while len(body) <= MAX_MPD_BYTES:  # read(n) answers what has arrived
                    more = await r.content.read(MAX_MPD_BYTES + 1 - len(body))
                    if not more:
                        break
                    body += more
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("event=mpd_fetch_failed key=%s error=%r", key, str(exc)[:200])
            raise Unavailable("the title's DASH manifest is unavailable; retry") from None
        try:
            parse_mpd(body)  # only an MPD is kept (not, say, an error page answered with 200)
        except MpdError as exc:
            log.warning("event=mpd_unusable key=%s error=%r", key, str(exc)[:200])
            raise NotPlayable("the title has no usable DASH manifest") from None
        self._mpds[key] = body
        return body

    async def _session_media(self, account_id: str | None, play_id: str) -> _SessionMedia:
        """What a session's manifests are made of: the play (live), its plan's renditions and
        one token per directory, with the start's expiry and binding."""
        c = self.control
        cfg = c.config.playback
        row = await self._play(account_id, play_id)
        self._refuse_if_over(row, float(c.clock()))
        if cfg.signing_keys is None:
            raise Unavailable("playback is not configured")
        plan = await c.billing.entitlement(str(row["account_id"]))
        if plan is None:
            raise SubscriptionRequired("a subscription is required to play")
        media = await c.catalog.media(row["title_id"], row["episode_id"] or None)
        renditions = allowed_renditions(media.renditions, plan.max_height)
        edges = json.loads(row["edges"] or "[]")
        if not renditions or not edges:
            raise NotPlayable("the title has no playable media")
        key = str(row["media_key"])
        # The start's expiry and binding; one token per directory the player fetches from.
        expires = int(float(row["started_at"]) + cfg.token_ttl)
        bound = str(row["client_ip"]) if cfg.bind_client_ip else None
        tokens = {
            d: sign(cfg.signing_keys, rendition_prefix(key, d), expires, bound)
            for d in rendition_directories(renditions)
        }
        return _SessionMedia(
            cfg, renditions, plan.max_height, str(edges[0]["url"]), key, tokens,
            str(row["client_ip"]),
        )  # fmt: skip

    # -- events ---------------------------------------------------------------------------

    async def event_by_token(self, token: str, play_id: str, kind: str, **kw: Any) -> Any:
        """`event` for the session of a bearer token, read with the play in one query (a
        heartbeat is a fifth of the traffic; each read costs more while others write)."""
        c = self.control
        digest = token_digest(token)
        row = await c.db.fetchone(_EVENT_SESSION_META, (play_id, digest))
        session = c.accounts.session_of_row(row, digest)
        assert row is not None
        meta = row if row["p_id"] is not None else None
        return await self.event(session.account_id, play_id, kind, meta=meta, **kw)

    async def event(
        self,
        account_id: str,
        play_id: str,
        kind: str,
        *,
        position: float | None = None,
        client_at: float | None = None,
        nbytes: int = 0,
        error: str = "",
        meta: Any = _UNREAD,
    ) -> dict[str, Any]:
        """Apply one playback event; the answer of ``POST /v1/playback/{play_id}/events``.
        ``meta``: the play's `_EVENT_META` row when the caller read it already (None: no
        such play of the account)."""
        if kind not in EVENT_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(EVENT_KINDS)}")
        c = self.control
        cfg = c.config.playback
        now = float(c.clock())
        if kind != "error" and (position is None or client_at is None):
            missing = {
                k: "is required"
                for k, v in (("position", position), ("client_at", client_at))
                if v is None
            }
            raise BadRequest(f"a {kind} event needs position and client_at", {"fields": missing})
        if client_at is not None and client_at > now + MAX_CLOCK_SKEW_S:
            raise BadRequest(
                "client_at is ahead of the server clock; check the device's clock",
                {"fields": {"client_at": f"must not be more than {MAX_CLOCK_SKEW_S:g} s ahead"}},
            )
        # One read before the transaction (no write lock held meanwhile): the play's media,
        # for its duration, and the account's subscription, which a heartbeat re-checks (a
        # stream must not outlive it). An unknown or another account's play gets its 404 from
        # the transaction below.
        if meta is _UNREAD:
            meta = await c.db.fetchone(_EVENT_META, (play_id, account_id))
        duration: float | None = None
        if meta is not None and position is not None:
            duration = _playable_duration(meta)
            if duration is not None and position > duration:
                position = duration
        entitled = True
        if kind == "progress" and meta is not None:
            sub = None if meta["sub_status"] is None else _sub_row(meta)
            entitled = await c.billing.entitlement_of(account_id, sub) is not None
        refusal: ControlError | None = None
        reaped = revoked = False
        resumed = True
        async with c.db.transaction() as tx:
            # A write first: the play's row lock serialises concurrent events of this play.
            row = await tx.fetchone(
                "UPDATE plays SET updated_at = updated_at WHERE id = ? AND account_id = ?"
                " RETURNING *",
                (play_id, account_id),
            )
            if row is None:
                raise NotFound("no such playback session")
            lease_end = float(row["lease_expires_at"])
            recorded = float(row["position"])
            if row["stopped_at"] is not None:
                refusal = (
                    LeaseExpired("the stream lease expired; start playback again")
                    if _reaped(row)
                    else PlaybackStopped("the playback session was stopped")
                )
            elif lease_end <= now and kind != "stop":
                # The player vanished for longer than the lease; the slot is gone.
                await tx.execute(f"{_REAP} WHERE id = ? AND stopped_at IS NULL", (play_id,))
                reaped = True
                refusal = LeaseExpired("the stream lease expired; start playback again")
            elif kind == "error":
                await tx.execute(
                    "UPDATE plays SET errors = errors + 1, last_error = ? WHERE id = ?",
                    (error[:MAX_ERROR_CHARS], play_id),
                )
            elif position is not None:
                # Watched time: the position's change, but never more than the wall time
                # since the last update, nor past the lease's end.
                end = min(now, lease_end)
                elapsed = max(0.0, end - float(row["updated_at"]))
                watched = min(abs(position - recorded), elapsed)
                recorded = position
                if kind == "progress" and entitled:
                    lease_end = now + cfg.lease_ttl
                    await tx.execute(
                        "UPDATE plays SET position = ?, updated_at = ?, lease_expires_at = ?,"
                        " seconds_watched = seconds_watched + ?, bytes = bytes + ? WHERE id = ?",
                        (position, now, lease_end, watched, nbytes, play_id),
                    )
                else:  # a stop, or a heartbeat of an account no longer entitled: the end
                    revoked = kind == "progress"
                    await tx.execute(
                        "UPDATE plays SET position = ?, updated_at = ?, stopped_at = ?,"
                        " seconds_watched = seconds_watched + ?, bytes = bytes + ? WHERE id = ?",
                        (position, now, now, watched, nbytes, play_id),
                    )
                if client_at is not None:
                    # In the same transaction: one commit per heartbeat, not two.
                    resumed = (
                        await upsert_position(
                            tx,
                            row["profile_id"],
                            row["title_id"],
                            row["episode_id"] or "",
                            position,
                            duration,
                            client_at,
                            now,
                            # A title deleted from history while this play went on stays
                            # deleted: the play's start, not the device's clock, decides.
                            play_started=float(row["started_at"]),
                        )
                        > 0
                    )
        if reaped:
            c.metrics.inc("control_leases_expired")
            log.info("event=leases_expired account=%s play=%s count=1", account_id, play_id)
        if refusal is not None:
            raise refusal
        c.metrics.inc("control_playback_events", "subscription_ended" if revoked else kind)
        if kind == "error":
            log.warning(
                "event=playback_error account=%s play=%s title=%s error=%r",
                account_id,
                play_id,
                row["title_id"],
                error[:MAX_ERROR_CHARS],
            )
        elif position is not None and client_at is not None:
            log.debug(
                "event=resume_write profile=%s title=%s episode=%s applied=%s",
                row["profile_id"],
                row["title_id"],
                row["episode_id"] or "-",
                resumed,
            )
            if kind == "stop" or revoked:
                log.info(
                    "event=playback_stop account=%s play=%s title=%s position=%.1f reason=%s",
                    account_id,
                    play_id,
                    row["title_id"],
                    position,
                    "subscription_ended" if revoked else "stop",
                )
        if revoked:
            raise SubscriptionRequired(
                "the subscription has ended: the stream was stopped",
                {"play_id": play_id, "stopped": True},
            )
        return {
            "play_id": play_id,
            "stopped": kind == "stop",
            "position": recorded,
            "lease_expires_at": lease_end,
            "heartbeat_interval": cfg.lease_ttl / 3,
        }

    async def _duration(self, title_id: str, episode_id: str) -> float | None:
        try:
            media = await self.control.catalog.media(title_id, episode_id or None)
        except ControlError:  # unpublished or removed since: record without a duration
            return None
        return float(media.duration) if media.duration else None

    async def stop(self, account_id: str, play_id: str) -> None:
        """``DELETE /v1/playback/{play_id}``: end the lease (the position stays the last one
        reported). Idempotent: a play that is over already (stopped, or its lease ran out) is
        left as it is, and the answer is the same; 404 only for unknown and others' plays."""
        c = self.control
        now = float(c.clock())
        reaped = False
        async with c.db.transaction() as tx:
            n = await tx.execute(
                "UPDATE plays SET stopped_at = ? WHERE id = ? AND account_id = ?"
                " AND stopped_at IS NULL AND lease_expires_at > ?",
                (now, play_id, account_id, now),
            )
            if n == 0:
                # Over already, or not ours (404). A lease that ran out without being marked
                # yet is marked as expired (not as stopped now): its slot was freed back then.
                reaped = (
                    await tx.execute(
                        f"{_REAP} WHERE id = ? AND account_id = ? AND stopped_at IS NULL",
                        (play_id, account_id),
                    )
                    > 0
                )
                row = await tx.fetchone(
                    "SELECT id FROM plays WHERE id = ? AND account_id = ?", (play_id, account_id)
                )
                if row is None:
                    raise NotFound("no such playback session")
        if reaped:
            c.metrics.inc("control_leases_expired")
            log.info("event=leases_expired account=%s play=%s count=1", account_id, play_id)
        if n == 0:
            log.debug(
                "event=playback_stop account=%s play=%s outcome=already_over", account_id, play_id
            )
            return
        c.metrics.inc("control_playback_events", "stop")
        log.info("event=playback_stop account=%s play=%s", account_id, play_id)

    # -- the account's live streams ---------------------------------------------------------

    async def live(self, account_id: str, offset: int, limit: int) -> dict[str, Any]:
        """The plays holding a stream slot now: what a user sees to free one."""
        c = self.control
        now = float(c.clock())
        where = "p.account_id = ? AND p.stopped_at IS NULL AND p.lease_expires_at > ?"
        total = await c.db.fetchone(
            f"SELECT COUNT(*) AS n FROM plays p WHERE {where}", (account_id, now)
        )
        rows = await c.db.fetchall(
            "SELECT p.id, p.device, p.profile_id, pr.name AS profile_name, p.title_id,"
            " p.episode_id, p.started_at, p.lease_expires_at FROM plays p"
            f" LEFT JOIN profiles pr ON pr.id = p.profile_id WHERE {where}"
            " ORDER BY p.started_at, p.id LIMIT ? OFFSET ?",
            (account_id, now, limit, offset),
        )
        cards = await c.catalog.summaries(sorted({r["title_id"] for r in rows}), 18) if rows else {}
        items = [
            {
                "play_id": r["id"],
                "device": r["device"],
                "profile_id": r["profile_id"],
                "profile_name": r["profile_name"],
                "title_id": r["title_id"],
                "title_name": (cards.get(r["title_id"]) or {}).get("name"),
                "episode_id": r["episode_id"] or None,
                "started_at": float(r["started_at"]),
                "lease_expires_at": float(r["lease_expires_at"]),
            }
            for r in rows
        ]
        return page(items, int(total["n"]) if total else 0, offset, limit)
