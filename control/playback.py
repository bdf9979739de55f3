"""Playback authorization and playback events (the service behind control/routes/playback.py).

Starting playback (`PlaybackService.authorize`) for a profile and a title (or episode):

1. the account's plan (`BillingStore.entitlement`: 402 without one; a canceled subscription
   plays until its period ends), the title (`CatalogStore.media`: 404 / 400 / 409
   ``not_playable``) and the profile's maturity limit (a title above it is 404, as if it did
   not exist: the catalog hides it from that profile too);
2. the concurrent-stream limit, in ONE transaction serialised per account (``UPDATE accounts
   SET version = version + 1`` first, control/db.py): plays of the account whose lease ran out
   without a stop are marked stopped (``stopped_at = lease_expires_at``; counted in
   ``control_leases_expired``), the live ones counted (``stopped_at IS NULL AND
   lease_expires_at > now``), and at ``plan.max_streams`` the start is refused (409
   ``stream_limit``, details ``{max_streams, active}``); otherwise the play row is inserted
   with a lease of ``playback.lease_ttl``. A lease is live only while ``lease_expires_at >
   now``, so a player that vanishes frees its slot after ``lease_ttl`` with no reaper;
3. the steering service's ranked edges for the title and the player's address (control/steer.py);
   on a timeout or error, ``playback.origin_url`` as the only "edge" (counted as
   ``control_playback_starts{steering_fallback}``); neither available: 503, the lease released;
4. one edge token (edge/tokens.py) for the prefix ``/v/<media key>/``, valid ``token_ttl``,
   bound to the player's address with ``bind_client_ip``; every edge's URL prefix carries it.

The answer lists the renditions the plan allows (height <= ``plan.max_height``; the lowest when
none fits), the signed edge prefixes in rank order, the manifests (the per-session HLS
multivariant playlist served by this service, which enforces the plan's resolution; the
origin's own master.m3u8 and manifest.mpd through the first edge) and the content steering
URLs for the session (control/manifest.py explains the pathways).

Playback events (`PlaybackService.event`), per play, from a session of the same account
(another account's play is 404): ``progress`` renews the lease (``lease_expires_at = now +
lease_ttl``) and records the position; a lease that expired already is refused (409
``lease_expired``: the player starts again, which re-checks the limit). ``stop`` ends the lease
and records the final position; ``error`` counts and logs the error. A stopped play refuses
every event (409 ``stopped``; ``lease_expired`` when it was stopped because its lease ran out).
Seconds watched grow by the position's change bounded by the wall time since the last
update (and by the lease's end), so a client cannot inflate them; ``bytes`` are deltas.
Positions go to `LibraryStore.record_position` (resume and history; the batch reads plays rows
for play counts and popularity).

Each event's read-modify-write runs in a transaction that first writes the play's row (a no-op
``UPDATE``), which takes its row lock in PostgreSQL and serialises concurrent events of one
play (SQLite's write transactions are serialised anyway).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from edge.tokens import sign

from .db import IntegrityError
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
from .manifest import (
    BASE_PATHWAY,
    RankedEdge,
    allowed_renditions,
    fallback_edge,
    hls_multivariant,
    public_rendition,
    steering_url,
    title_prefix,
    url_prefix,
    valid_media_key,
)
from .steer import SteeringFailed, ranked_edges

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


class PlaybackService:
    def __init__(self, control: Any) -> None:
        self.control = control

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
        if keys is None or (cfg.steering_url is None and cfg.origin_url is None):
            self._count("unavailable")
            raise Unavailable(
                "playback is not configured (signing keys, and steering or an origin URL)"
            )
        plan = await c.billing.entitlement(account_id)
        if plan is None:
            self._count("no_subscription")
            raise SubscriptionRequired("a subscription is required to play")
        try:
            media = await c.catalog.media(title_id, episode_id)
        except (NotFound, BadRequest, Conflict):
            self._count("not_playable")
            raise
        if media.maturity > profile.maturity_limit:
            # Not 403: the catalog hides the title from this profile, so it does not exist here.
            self._count("maturity")
            raise NotFound("no such title")
        renditions = allowed_renditions(media.renditions, plan.max_height)
        if not valid_media_key(media.media_key) or not renditions:
            self._count("not_playable")
            raise NotPlayable("the title has no playable media yet")

        now = float(c.clock())
        expires = int(now + cfg.token_ttl)
        try:
            token = sign(
                keys,
                title_prefix(media.media_key),
                expires,
                client_ip if cfg.bind_client_ip else None,
            )
        except ValueError as exc:
            self._count("unavailable")
            log.warning("event=playback_sign_failed error=%r", str(exc)[:200])
            raise Unavailable("cannot sign a playback token for this client") from None

        play_id = secrets.token_urlsafe(12)
        lease_expires_at = now + cfg.lease_ttl
        granted, active, reaped = False, 0, 0
        async with c.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            reaped = await tx.execute(
                f"{_REAP} WHERE account_id = ? AND stopped_at IS NULL AND lease_expires_at <= ?",
                (account_id, now),
            )
            row = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM plays"
                " WHERE account_id = ? AND stopped_at IS NULL AND lease_expires_at > ?",
                (account_id, now),
            )
            active = int(row["n"]) if row else 0
            if active < plan.max_streams:
                await tx.execute(
                    "INSERT INTO plays (id, account_id, profile_id, title_id, episode_id,"
                    " media_key, device, client_ip, started_at, updated_at, lease_expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

        try:
            edges, fallback = await self._edges(media.media_key, client_ip)
        except Unavailable:
            await c.db.execute(
                "UPDATE plays SET stopped_at = ? WHERE id = ? AND stopped_at IS NULL",
                (now, play_id),
            )
            self._count("unavailable")
            raise
        await c.db.execute(
            "UPDATE plays SET edges = ? WHERE id = ?",
            (json.dumps([{"id": e.id, "url": e.url} for e in edges]), play_id),
        )
        resume = await c.library.resume_position(profile.id, media.title_id, media.episode_id or "")
        self._count("steering_fallback" if fallback else "ok")
        log.info(
            "event=playback_start outcome=ok account=%s play=%s title=%s episode=%s edges=%d"
            " fallback=%s",
            account_id,
            play_id,
            media.title_id,
            media.episode_id or "-",
            len(edges),
            fallback,
        )
        prefixes = [url_prefix(e.url, token, media.media_key) for e in edges]
        steering = None
        if cfg.steering_public_url is not None:
            steering = {
                kind: steering_url(cfg.steering_public_url, kind, media.media_key, client_ip)
                for kind in ("hls", "dash")
            }
        return {
            "play_id": play_id,
            "lease_expires_at": lease_expires_at,
            "heartbeat_interval": cfg.lease_ttl / 3,
            "expires_at": expires,
            "resume_position": float(resume),
            "title_id": media.title_id,
            "episode_id": media.episode_id or None,
            "max_height": plan.max_height,
            "renditions": [public_rendition(r) for r in renditions],
            "edges": [{"id": e.id, "url_prefix": p} for e, p in zip(edges, prefixes, strict=True)],
            "manifests": {
                "hls": f"{control_url.rstrip('/')}/v1/playback/{play_id}/master.m3u8",
                "hls_edge": prefixes[0] + "master.m3u8",
                "dash": prefixes[0] + "manifest.mpd",
            },
            "steering": steering,
        }

    async def _edges(self, media_key: str, client_ip: str) -> tuple[list[RankedEdge], bool]:
        """(ranked edges, whether they are the origin fallback)."""
        c = self.control
        cfg = c.config.playback
        if cfg.steering_url is None:
            return [fallback_edge(cfg.origin_url)], False
        try:
            edges = await ranked_edges(
                c.http, cfg.steering_url, media_key, client_ip, cfg.steering_timeout
            )
        except SteeringFailed as exc:
            c.metrics.inc("control_steering_requests", exc.outcome)
            log.warning(
                "event=steering_failed outcome=%s detail=%r fallback=%s",
                exc.outcome,
                exc.detail,
                "origin" if cfg.origin_url else "none",
            )
            if cfg.origin_url is None:
                raise Unavailable("no edge is available for playback; retry") from None
            return [fallback_edge(cfg.origin_url)], True
        c.metrics.inc("control_steering_requests", "ok")
        return edges, False

    # -- the per-session multivariant playlist --------------------------------------------

    async def _play(self, account_id: str, play_id: str) -> dict[str, Any]:
        row: dict[str, Any] | None = await self.control.db.fetchone(
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

    async def playlist(self, account_id: str, play_id: str) -> str:
        """The session's HLS multivariant playlist (see control/manifest.py)."""
        c = self.control
        cfg = c.config.playback
        row = await self._play(account_id, play_id)
        self._refuse_if_over(row, float(c.clock()))
        if cfg.signing_keys is None:
            raise Unavailable("playback is not configured")
        plan = await c.billing.entitlement(account_id)
        if plan is None:
            raise SubscriptionRequired("a subscription is required to play")
        media = await c.catalog.media(row["title_id"], row["episode_id"] or None)
        renditions = allowed_renditions(media.renditions, plan.max_height)
        edges = json.loads(row["edges"] or "[]")
        if not renditions or not edges:
            raise NotPlayable("the title has no playable media")
        key = str(row["media_key"])
        # The very token the start answered with: same prefix, expiry and binding.
        token = sign(
            cfg.signing_keys,
            title_prefix(key),
            int(float(row["started_at"]) + cfg.token_ttl),
            row["client_ip"] if cfg.bind_client_ip else None,
        )
        steering = None
        if cfg.steering_public_url is not None:
            steering = steering_url(cfg.steering_public_url, "hls", key, str(row["client_ip"]))
        return hls_multivariant(
            renditions,
            prefix=url_prefix(edges[0]["url"], token, key),
            steering_uri=steering,
            pathway=BASE_PATHWAY,
        )

    # -- events ---------------------------------------------------------------------------

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
    ) -> dict[str, Any]:
        """Apply one playback event; the answer of ``POST /v1/playback/{play_id}/events``."""
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
        refusal: ControlError | None = None
        reaped = False
        async with c.db.transaction() as tx:
            # A write first: the play's row lock serialises concurrent events of this play.
            n = await tx.execute(
                "UPDATE plays SET updated_at = updated_at WHERE id = ? AND account_id = ?",
                (play_id, account_id),
            )
            row = await tx.fetchone(
                "SELECT * FROM plays WHERE id = ? AND account_id = ?", (play_id, account_id)
            )
            if n == 0 or row is None:
                raise NotFound("no such playback session")
            lease_end = float(row["lease_expires_at"])
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
                watched = min(abs(position - float(row["position"])), elapsed)
                if kind == "progress":
                    lease_end = now + cfg.lease_ttl
                    await tx.execute(
                        "UPDATE plays SET position = ?, updated_at = ?, lease_expires_at = ?,"
                        " seconds_watched = seconds_watched + ?, bytes = bytes + ? WHERE id = ?",
                        (position, now, lease_end, watched, nbytes, play_id),
                    )
                else:
                    await tx.execute(
                        "UPDATE plays SET position = ?, updated_at = ?, stopped_at = ?,"
                        " seconds_watched = seconds_watched + ?, bytes = bytes + ? WHERE id = ?",
                        (position, now, now, watched, nbytes, play_id),
                    )
        if reaped:
            c.metrics.inc("control_leases_expired")
            log.info("event=leases_expired account=%s play=%s count=1", account_id, play_id)
        if refusal is not None:
            raise refusal
        c.metrics.inc("control_playback_events", kind)
        if kind == "error":
            log.warning(
                "event=playback_error account=%s play=%s title=%s error=%r",
                account_id,
                play_id,
                row["title_id"],
                error[:MAX_ERROR_CHARS],
            )
        elif position is not None and client_at is not None:
            duration = await self._duration(row["title_id"], row["episode_id"])
            try:
                await c.library.record_position(
                    row["profile_id"],
                    row["title_id"],
                    row["episode_id"] or "",
                    position,
                    duration,
                    client_at,
                )
            except IntegrityError:  # the profile was deleted while it played
                log.info("event=position_dropped play=%s reason=profile_gone", play_id)
            if kind == "stop":
                log.info(
                    "event=playback_stop account=%s play=%s title=%s position=%.1f",
                    account_id,
                    play_id,
                    row["title_id"],
                    position,
                )
        stopped = kind == "stop"
        return {
            "play_id": play_id,
            "stopped": stopped,
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
        reported)."""
        c = self.control
        now = float(c.clock())
        n = await c.db.execute(
            "UPDATE plays SET stopped_at = ? WHERE id = ? AND account_id = ? AND stopped_at IS NULL",
            (now, play_id, account_id),
        )
        if n == 0:
            row = await self._play(account_id, play_id)  # 404 for unknown and others'
            self._refuse_if_over(row, now)
            raise PlaybackStopped("the playback session was stopped")
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
