"""HTTP route: the popularity feed steering reads to plan the edges' nightly fill. A thin
handler over control/fill.py.

Checked in this order, so nothing is revealed to a caller without the credential: the feed is
enabled (``fill.credential_file``; 404 otherwise, as if the route did not exist), the bearer
token (401), then the query (400 with the fields at fault)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..app import control_of
from ..config import MAX_FILL_LIMIT
from ..errors import ControlError, NotFound, Unauthorized
from ..fields import query_fields
from ..fill import REGION_RE
from ..openapi import error_responses, json_response
from ..responses import respond

routes = web.RouteTableDef()


@routes.get("/v1/fill/popularity")
async def fill_popularity(request: web.Request) -> web.Response:
    c = control_of(request)
    feed = c.fill
    try:
        feed.authorize(request.headers.get("Authorization"))
        f = query_fields(request.query)
        region = f.text("region", max_len=64)
        if region is not None and not REGION_RE.fullmatch(region):
            f.fail("region", "must be 1-64 letters, digits, '.', '_' or '-'")
        limit = f.integer(
            "limit", lo=1, hi=MAX_FILL_LIMIT, required=False, default=feed.config.limit
        )
        f.done()
    except ControlError as exc:
        outcome = (
            "disabled"
            if isinstance(exc, NotFound)
            else "unauthorized"
            if isinstance(exc, Unauthorized)
            else "bad_request"
            if exc.status == 400
            else "error"
        )
        if outcome != "error":
            c.metrics.inc("control_fill_feed_requests", outcome)
        raise
    answer = await feed.popularity(region, limit)
    c.metrics.inc("control_fill_feed_requests", "fallback" if answer["fallback"] else "ok")
    return respond(answer, headers={"Cache-Control": "no-store"})


_OBJECT = {
    "type": "object",
    "required": ["key", "path", "size", "xxh64", "score"],
    "properties": {
        "key": {"type": "string", "description": "the title's media key"},
        "path": {"type": "string", "description": "/v/<key>/<file>, as edges serve it"},
        "size": {"type": "integer", "minimum": 0, "description": "bytes"},
        "xxh64": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "score": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "decayed reads of the file (bytes streamed / file size)",
        },
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/fill/popularity": {
            "get": {
                "operationId": "fillPopularity",
                "summary": "Files a region will watch, by popularity (for steering's fill plans)",
                "description": (
                    "For steering, with the token in the control plane's fill.credential_file "
                    "(not a user session). Each play counts once, decayed by half every "
                    "half_life_days, for the site of the edge it was sent to first; new releases "
                    "get an editorial boost. A segment file scores its rendition's plays (the "
                    "one the plan's cap streams) times the share of plays reaching its position; "
                    "playlists, audio and artwork get every play. Objects "
                    "with a score above 0, by score descending then path, at most limit. A "
                    "region with no plays gets the all-regions scores and fallback true. "
                    "Computed at most once per fill.cache_ttl. 404 when the feed is not "
                    "enabled (no fill.credential_file)."
                ),
                "tags": ["fill"],
                "security": [{"fill": []}],
                "parameters": [
                    {
                        "name": "region",
                        "in": "query",
                        "required": True,
                        "description": "steering's site name",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "most objects answered (default: fill.limit)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_FILL_LIMIT},
                    },
                ],
                "responses": {
                    "200": json_response(
                        "the region's popular files",
                        {"$ref": "#/components/schemas/FillPopularity"},
                    ),
                    **error_responses(400, 401, 404, 503),
                },
            }
        }
    },
    "schemas": {
        "FillPopularity": {
            "type": "object",
            "required": ["region", "fallback", "computed_at", "half_life_days", "objects"],
            "properties": {
                "region": {"type": "string"},
                "fallback": {
                    "type": "boolean",
                    "description": "the region had no plays: these are the all-regions scores",
                },
                "computed_at": {
                    "type": ["number", "null"],
                    "description": "unix seconds the scores were computed at",
                },
                "half_life_days": {"type": "number"},
                "objects": {"type": "array", "items": _OBJECT},
            },
        }
    },
}
