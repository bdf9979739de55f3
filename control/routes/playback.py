"""HTTP routes: playback authorization, the account's live streams, playback events and the
per-session HLS multivariant playlist. Thin handlers over control/playback.py.

The playlist route takes either the play's ``?token=`` (what ``manifests.hls`` carries, so
native HLS players, which cannot send headers, can load it) or the bearer session of the play's
account. A token that does not verify is 404 like another account's play (nothing is revealed),
unless an Authorization header is sent too, which is then checked as on every other route."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..app import bearer_token, control_of, profile_of, read_body, session_of
from ..clients import client_address
from ..errors import ControlError, NotFound
from ..fields import Fields, page_params
from ..manifest import HLS_CONTENT_TYPE
from ..mpd import DASH_CONTENT_TYPE
from ..openapi import PAGE_PARAMS, error_responses, json_body, json_response, page_of
from ..playback import EVENT_KINDS, MAX_ERROR_CHARS, PlaybackService
from ..responses import respond

routes = web.RouteTableDef()

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_DEVICE = 100
MAX_POSITION = 7 * 86400.0  # seconds; as control/library.py
MAX_BYTES_DELTA = 10**12  # bytes one event may report
MIN_CLIENT_AT = 946684800.0  # 2000-01-01: a device clock before that is not set
MAX_CLIENT_AT = 10**11


def _service(request: web.Request) -> PlaybackService:
    service: PlaybackService = control_of(request).playback
    return service


def _play_id(request: web.Request) -> str:
    value = request.match_info["play_id"]
    if not _ID.match(value):
        raise NotFound("no such playback session")
    return value


def _id_field(f: Fields, name: str, *, required: bool = True) -> Any:
    value = f.text(name, required=required, max_len=64)
    if value is not None and not _ID.match(value):
        f.fail(name, "must be an id of letters, digits, '_' and '-'")
        return None
    return value


def _control_url(request: web.Request) -> str:
    public = control_of(request).config.public_url
    return str(public) if public else f"{request.scheme}://{request.host}"


@routes.post("/v1/playback")
async def start_playback(request: web.Request) -> web.Response:
    # The session and the profile are read in one query, once the body names the profile; a
    # bad body is answered only after the session is checked (401 before 400, as elsewhere).
    try:
        f = Fields(await read_body(request))
        profile_id = _id_field(f, "profile_id")
        title_id = _id_field(f, "title_id")
        episode_id = _id_field(f, "episode_id", required=False)
        device = f.text("device", required=False, max_len=MAX_DEVICE, default="")
        f.done()
    except (ControlError, web.HTTPException):  # 400, 413, 415
        await session_of(request)
        raise
    profile = await profile_of(request, profile_id)
    s = await session_of(request)  # set by profile_of: no query
    answer = await _service(request).authorize(
        s.account_id,
        profile,
        title_id,
        episode_id,
        device=device,
        client_ip=client_address(request),
        control_url=_control_url(request),
    )
    return respond(answer, status=201, headers={"Cache-Control": "no-store"})


@routes.get("/v1/playback")
async def live_streams(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = page_params(request.query)
    f.done()
    result = await _service(request).live(s.account_id, f.offset, f.limit)  # type: ignore[attr-defined]
    return respond(result, headers={"Cache-Control": "no-store"})


@routes.post("/v1/playback/{play_id}/events")
async def playback_event(request: web.Request) -> web.Response:
    # The session is read with the play in one query; a bad request is answered only after
    # the session is checked (401 before 400, 413, 415).
    try:
        play_id = _play_id(request)
        f = Fields(await read_body(request))
        kind = f.choice("kind", EVENT_KINDS)
        needs_position = kind in ("progress", "stop")
        position = f.number("position", lo=0, hi=MAX_POSITION, required=needs_position)
        client_at = f.number(
            "client_at", lo=MIN_CLIENT_AT, hi=MAX_CLIENT_AT, required=needs_position
        )
        nbytes = f.integer("bytes", lo=0, hi=MAX_BYTES_DELTA, required=False, default=0)
        error = f.text("error", required=False, min_len=0, max_len=MAX_ERROR_CHARS, default="")
        f.done()
    except (ControlError, web.HTTPException):
        await session_of(request)
        raise
    result = await _service(request).event_by_token(
        bearer_token(request),
        play_id,
        kind,
        position=position,
        client_at=client_at,
        nbytes=nbytes,
        error=error,
    )
    return respond(result)


@routes.delete("/v1/playback/{play_id}")
async def stop_playback(request: web.Request) -> web.Response:
    s = await session_of(request)
    play_id = _play_id(request)
    await _service(request).stop(s.account_id, play_id)
    return web.Response(status=204)


async def _session_manifest(request: web.Request, *, dash: bool) -> web.Response:
    """A per-session manifest (HLS playlist, or with ``dash`` a capped plan's MPD): for the
    manifest's own ``?token=`` (no header needed, as native players fetch it) or the bearer
    session of the play's account; a token that does not verify is 404, like another
    account's play."""
    play_id = _play_id(request)
    service = _service(request)
    build = service.mpd if dash else service.playlist
    token = request.query.get("token")
    if token is not None and service.playlist_token_ok(
        play_id, token, client_address(request), dash=dash
    ):
        text = await build(None, play_id)
    elif token is not None and "Authorization" not in request.headers:
        raise NotFound("no such playback session")
    else:
        s = await session_of(request)
        text = await build(s.account_id, play_id)
    return web.Response(
        text=text,
        headers={
            "Content-Type": DASH_CONTENT_TYPE if dash else HLS_CONTENT_TYPE,
            "Cache-Control": "no-store",
        },
    )


@routes.get("/v1/playback/{play_id}/master.m3u8")
async def session_playlist(request: web.Request) -> web.Response:
    return await _session_manifest(request, dash=False)


@routes.get("/v1/playback/{play_id}/manifest.mpd")
async def session_mpd(request: web.Request) -> web.Response:
    """A capped plan's per-session DASH MPD (control/mpd.py)."""
    return await _session_manifest(request, dash=True)


# -- OpenAPI -------------------------------------------------------------------------------

_SESSION: list[dict[str, list[str]]] = [{"session": []}]
_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"}
_PLAY_PARAM = {
    "name": "play_id",
    "in": "path",
    "required": True,
    "description": "a playback session of the signed-in account (404 for another account's)",
    "schema": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _manifest_token(description: str) -> dict[str, Any]:
    """The ``token`` query parameter of a per-session manifest route."""
    return {
        "name": "token",
        "in": "query",
        "required": False,
        "description": description,
        # Tokens are [A-Za-z0-9_.-] (edge/tokens.py); a manifest token is about 200
        # characters at most (a 64-character play id, IPv6-bound).
        "schema": {"type": "string", "maxLength": 512, "pattern": "^[A-Za-z0-9_.-]*$"},
    }


OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/playback": {
            "post": {
                "operationId": "startPlayback",
                "summary": "Authorise playback of a title or episode for a profile",
                "description": (
                    "Checks the plan (402 subscription_required without one; a canceled "
                    "subscription plays until its period ends), the title (404 when unknown, "
                    "unpublished or above the profile's maturity limit, checked first, so a "
                    "hidden title is always 404; then 400 for a series without episode_id, 409 "
                    "not_playable) and the plan's concurrent streams (409 stream_limit, details "
                    "{max_streams, active}). Takes a stream lease, renewed by progress events "
                    "every heartbeat_interval seconds and lost after lease_expires_at without "
                    "one. Answers the renditions the plan allows, the edges in steering's rank "
                    "order (steering's own 'origin' entry left out; the configured fallback URL, "
                    "id 'fallback', when steering is unreachable), the manifests and the content "
                    "steering URLs. The plan's resolution is enforced by the edge tokens: "
                    "manifests.hls (a URL needing no headers) lists only the allowed renditions, "
                    "each with its own token for its directory. Only when the plan allows every "
                    "rendition of the title (capped false) do edges[].url_prefix, "
                    "manifests.hls_edge and manifests.dash carry a title-wide token; for a "
                    "capped plan the first two are null, the player plays through "
                    "manifests.hls, and manifests.dash is this service's per-session MPD "
                    "(its own token, needing no headers either). 503 when playback is not "
                    "configured or no edge is reachable."
                ),
                "tags": ["playback"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/PlaybackStart"),
                "responses": {
                    "201": json_response(
                        "playback authorised", {"$ref": "#/components/schemas/Playback"}
                    ),
                    **error_responses(400, 401, 402, 404, 409, 413, 415, 503),
                },
            },
            "get": {
                "operationId": "listLiveStreams",
                "summary": "The account's live streams (what holds the plan's stream slots)",
                "tags": ["playback"],
                "security": _SESSION,
                "parameters": PAGE_PARAMS,
                "responses": {
                    "200": json_response(
                        "live streams, oldest first", page_of("#/components/schemas/LiveStream")
                    ),
                    **error_responses(400, 401),
                },
            },
        },
        "/v1/playback/{play_id}/events": {
            "parameters": [_PLAY_PARAM],
            "post": {
                "operationId": "playbackEvent",
                "summary": "Report progress (the heartbeat renewing the lease), a stop or an error",
                "description": (
                    "progress renews the stream lease and records the resume position; stop ends "
                    "the lease and records the final position; error is counted and logged. "
                    "position and client_at are required for progress and stop; a position past "
                    "the media's duration is clamped to it (the answer's position is the one "
                    "recorded). Every progress event re-checks the subscription: when it has "
                    "ended, the lease ends there (the position recorded as by a stop) and the "
                    "answer is 402 subscription_required. A lease that expired answers 409 "
                    "lease_expired (start again); a stopped session 409 stopped."
                ),
                "tags": ["playback"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/PlaybackEvent"),
                "responses": {
                    "200": json_response(
                        "applied", {"$ref": "#/components/schemas/PlaybackEventResult"}
                    ),
                    **error_responses(400, 401, 402, 404, 409, 413, 415),
                },
            },
        },
        "/v1/playback/{play_id}": {
            "parameters": [_PLAY_PARAM],
            "delete": {
                "operationId": "stopPlayback",
                "summary": "Stop a playback session, freeing its stream slot",
                "description": (
                    "Idempotent: a session that has ended already (stopped, or its lease ran "
                    "out) answers 204 too."
                ),
                "tags": ["playback"],
                "security": _SESSION,
                "responses": {
                    "204": {"description": "stopped (or over already)"},
                    **error_responses(401, 404),
                },
            },
        },
        "/v1/playback/{play_id}/master.m3u8": {
            "parameters": [_PLAY_PARAM],
            "get": {
                "operationId": "sessionPlaylist",
                "summary": "The session's HLS multivariant playlist",
                "description": (
                    "Only the renditions the plan allows, with absolute URIs on the first-ranked "
                    "edge, each variant and each audio group (EXT-X-MEDIA TYPE=AUDIO, as the "
                    "origin's master.m3u8 writes them) under its own directory with its own "
                    "token, so no other rendition can be fetched with them; with steering "
                    "configured, an EXT-X-CONTENT-STEERING tag (pathway 'cdn', cloned onto every "
                    "edge by the steering server) and PATHWAY-ID on every variant. "
                    "Authorised by the token query parameter (manifests.hls carries it: no "
                    "header needed, for native HLS players) or by the bearer session of the "
                    "play's account. A token that does not verify (tampered, expired, another "
                    "play's, another client's address when tokens are bound) is 404, like "
                    "another account's play."
                ),
                "tags": ["playback"],
                "security": [*_SESSION, {}],
                "parameters": [
                    _manifest_token(
                        "the playlist token of manifests.hls (signed with the edge keys for "
                        "this path, expiring with the session's edge tokens)"
                    )
                ],
                "responses": {
                    "200": {
                        "description": "the multivariant playlist (RFC 8216)",
                        "content": {HLS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                    },
                    **error_responses(401, 402, 404, 409, 503),
                },
            },
        },
        "/v1/playback/{play_id}/manifest.mpd": {
            "parameters": [_PLAY_PARAM],
            "get": {
                "operationId": "sessionMpd",
                "summary": "A capped plan's per-session DASH MPD",
                "description": (
                    "The origin's MPD (read through the session's first edge) with only the "
                    "Representations the plan allows, each under its own BaseURL on that edge "
                    "with its directory's token (serviceLocation 'cdn'); with steering "
                    "configured, a ContentSteering element (DASH-IF Content Steering). "
                    "Authorised like the session playlist: the token query parameter of "
                    "manifests.dash, or the bearer session of the play's account. 409 "
                    "not_playable when the title has no usable MPD; 503 when it cannot be "
                    "read now."
                ),
                "tags": ["playback"],
                "security": [*_SESSION, {}],
                "parameters": [_manifest_token("the MPD token of manifests.dash")],
                "responses": {
                    "200": {
                        "description": "the MPD (ISO/IEC 23009-1)",
                        "content": {DASH_CONTENT_TYPE: {"schema": {"type": "string"}}},
                    },
                    **error_responses(401, 402, 404, 409, 503),
                },
            },
        },
    },
    "schemas": {
        "PlaybackStart": {
            "type": "object",
            "additionalProperties": False,
            "required": ["profile_id", "title_id"],
            "properties": {
                "profile_id": _ID_SCHEMA,
                "title_id": _ID_SCHEMA,
                "episode_id": {**_ID_SCHEMA, "description": "required for a series"},
                "device": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_DEVICE,
                    "description": "shown in the list of live streams",
                },
            },
        },
        "Playback": {
            "type": "object",
            "required": [
                "play_id",
                "lease_expires_at",
                "heartbeat_interval",
                "expires_at",
                "resume_position",
                "title_id",
                "episode_id",
                "max_height",
                "capped",
                "renditions",
                "edges",
                "manifests",
                "steering",
            ],
            "properties": {
                "play_id": {"type": "string"},
                "lease_expires_at": {
                    "type": "number",
                    "description": "unix seconds; the stream slot is lost then without progress",
                },
                "heartbeat_interval": {
                    "type": "number",
                    "description": "seconds between progress events (a third of the lease)",
                },
                "expires_at": {
                    "type": "integer",
                    "description": "unix seconds when the edge URL token expires",
                },
                "resume_position": {"type": "number", "minimum": 0},
                "title_id": {"type": "string"},
                "episode_id": _NULLABLE_STRING,
                "max_height": {"type": "integer", "description": "the plan's tallest rendition"},
                "capped": {
                    "type": "boolean",
                    "description": (
                        "true when the plan withholds some of the title's renditions: no "
                        "title-wide token then (edges[].url_prefix and manifests.hls_edge are "
                        "null); play manifests.hls, or manifests.dash (a per-session MPD)"
                    ),
                },
                "renditions": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/components/schemas/Rendition"},
                },
                "edges": {
                    "type": "array",
                    "minItems": 1,
                    "description": (
                        "in steering's rank order (never steering's 'origin' entry); the "
                        "configured fallback URL (id 'fallback') when steering is unreachable"
                    ),
                    "items": {
                        "type": "object",
                        "required": ["id", "url", "url_prefix"],
                        "properties": {
                            "id": {"type": "string"},
                            "url": {
                                "type": "string",
                                "description": "the edge's base URL (no token)",
                            },
                            "url_prefix": {
                                "type": ["string", "null"],
                                "description": (
                                    "<edge>/_t/<token>/v/<key>/, a title-wide token for the "
                                    "title's files; null when the plan is capped"
                                ),
                            },
                        },
                    },
                },
                "manifests": {
                    "type": "object",
                    "required": ["hls", "hls_edge", "dash"],
                    "properties": {
                        "hls": {
                            "type": "string",
                            "description": (
                                "this service's per-session multivariant playlist, the only "
                                "one limited to the plan's renditions; carries its own token "
                                "(?token=), so it loads without an Authorization header"
                            ),
                        },
                        "hls_edge": {
                            "type": ["string", "null"],
                            "description": (
                                "the origin's master.m3u8 on the first edge (whole ladder); "
                                "null when the plan is capped"
                            ),
                        },
                        "dash": {
                            "type": ["string", "null"],
                            "description": (
                                "the origin's manifest.mpd on the first edge (whole ladder); "
                                "when the plan is capped, this service's per-session MPD "
                                "(GET /v1/playback/{play_id}/manifest.mpd with its token)"
                            ),
                        },
                    },
                },
                "steering": {
                    "type": ["object", "null"],
                    "description": "content steering server URIs (null without steering)",
                    "required": ["hls", "dash"],
                    "properties": {"hls": {"type": "string"}, "dash": {"type": "string"}},
                },
            },
        },
        "Rendition": {
            "type": "object",
            "required": ["name", "width", "height", "bandwidth", "codecs", "frame_rate"],
            "properties": {
                "name": {"type": "string"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "bandwidth": {"type": "integer"},
                "codecs": {"type": "string"},
                "frame_rate": {"type": "number"},
            },
        },
        "LiveStream": {
            "type": "object",
            "required": [
                "play_id",
                "device",
                "profile_id",
                "profile_name",
                "title_id",
                "title_name",
                "episode_id",
                "started_at",
                "lease_expires_at",
            ],
            "properties": {
                "play_id": {"type": "string"},
                "device": {"type": "string"},
                "profile_id": {"type": "string"},
                "profile_name": _NULLABLE_STRING,
                "title_id": {"type": "string"},
                "title_name": _NULLABLE_STRING,
                "episode_id": _NULLABLE_STRING,
                "started_at": {"type": "number"},
                "lease_expires_at": {"type": "number"},
            },
        },
        "PlaybackEvent": {
            "type": "object",
            "additionalProperties": False,
            "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": list(EVENT_KINDS)},
                "position": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_POSITION,
                    "description": "seconds into the title; required for progress and stop",
                },
                "client_at": {
                    "type": "number",
                    "minimum": MIN_CLIENT_AT,
                    "maximum": MAX_CLIENT_AT,
                    "description": (
                        "unix seconds on the device when it saw the position; required for "
                        "progress and stop; at most 300 s ahead of the server clock"
                    ),
                },
                "bytes": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_BYTES_DELTA,
                    "description": "bytes received since the previous event",
                },
                "error": {"type": "string", "maxLength": MAX_ERROR_CHARS},
            },
        },
        "PlaybackEventResult": {
            "type": "object",
            "required": [
                "play_id",
                "stopped",
                "position",
                "lease_expires_at",
                "heartbeat_interval",
            ],
            "properties": {
                "play_id": {"type": "string"},
                "stopped": {"type": "boolean"},
                "position": {
                    "type": "number",
                    "description": (
                        "the play's recorded position: the event's, clamped to the media's "
                        "duration when known"
                    ),
                },
                "lease_expires_at": {"type": "number"},
                "heartbeat_interval": {"type": "number"},
            },
        },
    },
}
