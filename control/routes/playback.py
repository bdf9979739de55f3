"""HTTP routes: playback authorization, the account's live streams, playback events and the
per-session HLS multivariant playlist. Thin handlers over control/playback.py."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..app import control_of, profile_of, read_body, session_of
from ..errors import NotFound
from ..fields import Fields, page_params
from ..manifest import HLS_CONTENT_TYPE
from ..openapi import PAGE_PARAMS, error_responses, json_body, json_response, page_of
from ..playback import EVENT_KINDS, MAX_ERROR_CHARS, PlaybackService

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
    s = await session_of(request)
    f = Fields(await read_body(request))
    profile_id = _id_field(f, "profile_id")
    title_id = _id_field(f, "title_id")
    episode_id = _id_field(f, "episode_id", required=False)
    device = f.text("device", required=False, max_len=MAX_DEVICE, default="")
    f.done()
    profile = await profile_of(request, profile_id)
    answer = await _service(request).authorize(
        s.account_id,
        profile,
        title_id,
        episode_id,
        device=device,
        client_ip=request.remote or "",
        control_url=_control_url(request),
    )
    return web.json_response(answer, status=201, headers={"Cache-Control": "no-store"})


@routes.get("/v1/playback")
async def live_streams(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = page_params(request.query)
    f.done()
    result = await _service(request).live(s.account_id, f.offset, f.limit)  # type: ignore[attr-defined]
    return web.json_response(result, headers={"Cache-Control": "no-store"})


@routes.post("/v1/playback/{play_id}/events")
async def playback_event(request: web.Request) -> web.Response:
    s = await session_of(request)
    play_id = _play_id(request)
    f = Fields(await read_body(request))
    kind = f.choice("kind", EVENT_KINDS)
    needs_position = kind in ("progress", "stop")
    position = f.number("position", lo=0, hi=MAX_POSITION, required=needs_position)
    client_at = f.number("client_at", lo=MIN_CLIENT_AT, hi=MAX_CLIENT_AT, required=needs_position)
    nbytes = f.integer("bytes", lo=0, hi=MAX_BYTES_DELTA, required=False, default=0)
    error = f.text("error", required=False, min_len=0, max_len=MAX_ERROR_CHARS, default="")
    f.done()
    result = await _service(request).event(
        s.account_id,
        play_id,
        kind,
        position=position,
        client_at=client_at,
        nbytes=nbytes,
        error=error,
    )
    return web.json_response(result)


@routes.delete("/v1/playback/{play_id}")
async def stop_playback(request: web.Request) -> web.Response:
    s = await session_of(request)
    play_id = _play_id(request)
    await _service(request).stop(s.account_id, play_id)
    return web.Response(status=204)


@routes.get("/v1/playback/{play_id}/master.m3u8")
async def session_playlist(request: web.Request) -> web.Response:
    s = await session_of(request)
    play_id = _play_id(request)
    text = await _service(request).playlist(s.account_id, play_id)
    return web.Response(
        text=text,
        headers={"Content-Type": HLS_CONTENT_TYPE, "Cache-Control": "no-store"},
    )


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

OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/playback": {
            "post": {
                "operationId": "startPlayback",
                "summary": "Authorise playback of a title or episode for a profile",
                "description": (
                    "Checks the plan (402 subscription_required without one; a canceled "
                    "subscription plays until its period ends), the title (404; 400 for a series "
                    "without episode_id; 409 not_playable), the profile's maturity limit (a "
                    "title above it is 404) and the plan's concurrent streams (409 stream_limit, "
                    "details {max_streams, active}). Takes a stream lease, renewed by progress "
                    "events every heartbeat_interval seconds and lost after lease_expires_at "
                    "without one. Answers the renditions the plan allows, signed edge URL "
                    "prefixes in steering's rank order, the manifests and the content steering "
                    "URLs. 503 when playback is not configured or no edge is reachable."
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
                    "position and client_at are required for progress and stop. A lease that "
                    "expired answers 409 lease_expired (start again); a stopped session 409 "
                    "stopped."
                ),
                "tags": ["playback"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/PlaybackEvent"),
                "responses": {
                    "200": json_response(
                        "applied", {"$ref": "#/components/schemas/PlaybackEventResult"}
                    ),
                    **error_responses(400, 401, 404, 409, 413, 415),
                },
            },
        },
        "/v1/playback/{play_id}": {
            "parameters": [_PLAY_PARAM],
            "delete": {
                "operationId": "stopPlayback",
                "summary": "Stop a playback session, freeing its stream slot",
                "description": "409 stopped (or lease_expired) when it has ended already.",
                "tags": ["playback"],
                "security": _SESSION,
                "responses": {
                    "204": {"description": "stopped"},
                    **error_responses(401, 404, 409),
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
                    "edge under the session's signed prefix; with steering configured, an "
                    "EXT-X-CONTENT-STEERING tag (pathway 'cdn', cloned onto every edge by the "
                    "steering server) and PATHWAY-ID on every variant."
                ),
                "tags": ["playback"],
                "security": _SESSION,
                "responses": {
                    "200": {
                        "description": "the multivariant playlist (RFC 8216)",
                        "content": {HLS_CONTENT_TYPE: {"schema": {"type": "string"}}},
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
                "renditions": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/components/schemas/Rendition"},
                },
                "edges": {
                    "type": "array",
                    "minItems": 1,
                    "description": "in steering's rank order; the origin when steering is down",
                    "items": {
                        "type": "object",
                        "required": ["id", "url_prefix"],
                        "properties": {
                            "id": {"type": "string"},
                            "url_prefix": {
                                "type": "string",
                                "description": "<edge>/_t/<token>/v/<key>/: the title's files",
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
                            "description": "this service's per-session multivariant playlist",
                        },
                        "hls_edge": {
                            "type": "string",
                            "description": "the origin's master.m3u8 on the first edge",
                        },
                        "dash": {"type": "string", "description": "manifest.mpd, first edge"},
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
            "required": ["play_id", "stopped", "lease_expires_at", "heartbeat_interval"],
            "properties": {
                "play_id": {"type": "string"},
                "stopped": {"type": "boolean"},
                "lease_expires_at": {"type": "number"},
                "heartbeat_interval": {"type": "number"},
            },
        },
    },
}
