"""HTTP routes: a profile's resume positions, history, My List, ratings and home rows; the
recommendation batch trigger.

Thin handlers over control/library.py and control/home.py (see their docstrings: last-writer-
wins resume sync on the client's clock, what "next" means for a series, the serving-time
filters of home rows). Every route under /v1/profiles/{profile_id} answers 404 for another
account's profile, and a title id that is malformed, unknown or above the profile's maturity
limit is a 404 wherever the title must exist.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from ..app import admin_of, control_of, profile_of, read_body
from ..errors import NotFound
from ..fields import Fields, page, page_params
from ..library import MAX_LIST, MAX_POSITION_S, LibraryStore
from ..openapi import PAGE_PARAMS, error_responses, json_body, json_response, page_of
from ..responses import respond

routes = web.RouteTableDef()

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_CLIENT_AT = 1e11  # unix seconds; anything later is not a clock


def _library(request: web.Request) -> LibraryStore:
    store: LibraryStore = control_of(request).library
    return store


def _title_id(request: web.Request) -> str:
    """The {title_id} path parameter: malformed ids cannot exist, so they are a 404."""
    value = request.match_info["title_id"]
    if not _ID.match(value):
        raise NotFound("no such title")
    return value


def _no_query(request: web.Request) -> None:
    f = Fields(dict(request.query), "query")
    f.done()


# -- resume positions ----------------------------------------------------------------------


@routes.put("/v1/profiles/{profile_id}/resume/{title_id}")
async def put_resume(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    f = Fields(await read_body(request))
    episode_id = f.text("episode_id", required=False, max_len=64)
    position = f.number("position", lo=0, hi=MAX_POSITION_S)
    duration = f.number("duration", lo=0, hi=MAX_POSITION_S, required=False)
    client_at = f.number("client_at", lo=0, hi=MAX_CLIENT_AT)
    if episode_id is not None and not _ID.match(episode_id):
        f.fail("episode_id", "must be 1 to 64 of A-Z a-z 0-9 _ -")
    if duration is not None and duration <= 0:
        f.fail("duration", "must be a positive number")
    f.done()
    state = await _library(request).put_resume(
        profile, title_id, episode_id, position, duration, client_at
    )
    return respond(state)


@routes.get("/v1/profiles/{profile_id}/resume/{title_id}")
async def get_resume(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    _no_query(request)
    return respond(await _library(request).resume(profile, title_id))


# -- history -------------------------------------------------------------------------------


@routes.get("/v1/profiles/{profile_id}/history")
async def get_history(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    f = page_params(request.query)
    f.done()
    off, lim = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = await _library(request).history(profile, off, lim)
    return respond(page(items, total, off, lim))


@routes.delete("/v1/profiles/{profile_id}/history/{title_id}")
async def delete_history(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    await _library(request).delete_history(profile, title_id)
    return web.Response(status=204)


# -- My List -------------------------------------------------------------------------------


@routes.get("/v1/profiles/{profile_id}/list")
async def get_list(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    f = page_params(request.query)
    f.done()
    off, lim = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = await _library(request).list_titles(profile, off, lim)
    return respond(page(items, total, off, lim))


@routes.put("/v1/profiles/{profile_id}/list/{title_id}")
async def put_list(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    await _library(request).add_to_list(profile, title_id)
    return web.Response(status=204)


@routes.delete("/v1/profiles/{profile_id}/list/{title_id}")
async def delete_list(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    await _library(request).remove_from_list(profile.id, title_id)
    return web.Response(status=204)


# -- ratings -------------------------------------------------------------------------------


@routes.get("/v1/profiles/{profile_id}/ratings")
async def get_ratings(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    f = page_params(request.query)
    f.done()
    off, lim = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = await _library(request).ratings(profile, off, lim)
    return respond(page(items, total, off, lim))


@routes.put("/v1/profiles/{profile_id}/ratings/{title_id}")
async def put_rating(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    f = Fields(await read_body(request))
    rating = f.integer("rating", lo=-1, hi=1)
    if rating == 0:
        f.fail("rating", "must be 1 (thumbs up) or -1 (thumbs down)")
    f.done()
    await _library(request).rate(profile, title_id, rating)
    return web.Response(status=204)


@routes.delete("/v1/profiles/{profile_id}/ratings/{title_id}")
async def delete_rating(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    title_id = _title_id(request)
    await _library(request).unrate(profile.id, title_id)
    return web.Response(status=204)


# -- home rows and the batch ---------------------------------------------------------------


@routes.get("/v1/profiles/{profile_id}/home")
async def get_home(request: web.Request) -> web.Response:
    profile = await profile_of(request)
    _no_query(request)
    return respond(await control_of(request).home.home(profile))


@routes.post("/v1/admin/recompute")
async def recompute(request: web.Request) -> web.Response:
    await admin_of(request)
    _no_query(request)
    t0 = time.perf_counter()
    n = await control_of(request).home.recompute()
    return respond({"profiles": n, "seconds": round(time.perf_counter() - t0, 6)})


# -- OpenAPI -------------------------------------------------------------------------------

_SESSION: list[dict[str, list[str]]] = [{"session": []}]
_CARD = "#/components/schemas/CatalogCard"  # control/routes/catalog.py
_NUM_OR_NULL = {"type": ["number", "null"]}


def _id_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": "^[A-Za-z0-9_-]+$",
        },
    }


_PROFILE_PARAM = _id_param("profile_id", "a profile of the signed-in account")
_TITLE_PARAM = _id_param("title_id", "a title the profile may see")
_PROFILE_ONLY = [_PROFILE_PARAM]
_PROFILE_TITLE = [_PROFILE_PARAM, _TITLE_PARAM]

_STATE_PROPS: dict[str, Any] = {
    "episode_id": {"type": ["string", "null"], "description": "null for a movie"},
    "position": {"type": "number", "minimum": 0, "description": "seconds"},
    "duration": {**_NUM_OR_NULL, "description": "seconds, when the player knew it"},
    "finished": {"type": "boolean"},
    "client_at": {"type": "number", "description": "the writing device's clock, unix s"},
    "updated_at": {"type": "number", "description": "when the server stored it, unix s"},
}
_STATE_REQUIRED = list(_STATE_PROPS)

OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/profiles/{profile_id}/resume/{title_id}": {
            "parameters": _PROFILE_TITLE,
            "get": {
                "operationId": "getResume",
                "summary": "Stored positions of a title and what to play next",
                "description": (
                    "positions: one per episode (a movie: one, episode_id null), latest first. "
                    "next: a movie resumes at its position (0 when finished or never started); "
                    "a series resumes its latest watched episode if unfinished, else starts "
                    "the following episode (season, number order) at its own position, and "
                    "is null after the last episode; never watched: the first episode at 0."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "responses": {
                    "200": json_response("positions", {"$ref": "#/components/schemas/Resume"}),
                    **error_responses(400, 401, 404),
                },
            },
            "put": {
                "operationId": "putResume",
                "summary": "Store a playback position (cross-device sync)",
                "description": (
                    "Last writer wins on client_at (the device's clock when it saw the "
                    "position); on equal client_at the larger position wins. An older write "
                    "arriving later is not applied: 200 with applied false and the stored "
                    "state. client_at more than 300 s ahead of the server clock is a 400. A "
                    "series needs episode_id (one of its episodes, else 404); a movie takes "
                    "none (404). finished: position >= 95 % of duration; a position past "
                    "the duration is clamped to it."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/ResumeWrite"),
                "responses": {
                    "200": json_response(
                        "the stored state", {"$ref": "#/components/schemas/ResumeState"}
                    ),
                    **error_responses(400, 401, 404, 413, 415),
                },
            },
        },
        "/v1/profiles/{profile_id}/history": {
            "parameters": _PROFILE_ONLY,
            "get": {
                "operationId": "getHistory",
                "summary": "Watch history: one entry per title, most recent first",
                "description": (
                    "Each title's latest position. Titles the profile may not see now "
                    "(maturity limit, unpublished, removed) are left out."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "parameters": PAGE_PARAMS,
                "responses": {
                    "200": json_response("history", page_of("#/components/schemas/HistoryEntry")),
                    **error_responses(400, 401, 404),
                },
            },
        },
        "/v1/profiles/{profile_id}/history/{title_id}": {
            "parameters": _PROFILE_TITLE,
            "delete": {
                "operationId": "deleteHistory",
                "summary": "Hide a title from history",
                "description": (
                    "Forgets every stored position of the title: it leaves history, Continue "
                    "Watching and (from the next batch run) the recommendations' inputs. "
                    "Idempotent. A device still playing it will write it back."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "responses": {"204": {"description": "removed"}, **error_responses(401, 404)},
            },
        },
        "/v1/profiles/{profile_id}/list": {
            "parameters": _PROFILE_ONLY,
            "get": {
                "operationId": "getMyList",
                "summary": "My List, most recently added first",
                "description": "Titles the profile may not see now are left out.",
                "tags": ["library"],
                "security": _SESSION,
                "parameters": PAGE_PARAMS,
                "responses": {
                    "200": json_response("My List", page_of("#/components/schemas/ListEntry")),
                    **error_responses(400, 401, 404),
                },
            },
        },
        "/v1/profiles/{profile_id}/list/{title_id}": {
            "parameters": _PROFILE_TITLE,
            "put": {
                "operationId": "addToMyList",
                "summary": "Add a title to My List (idempotent)",
                "description": (
                    f"404 for a title the profile may not see; 409 list_full beyond {MAX_LIST} "
                    "titles. Adding a listed title again keeps its place."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "responses": {
                    "204": {"description": "listed"},
                    **error_responses(401, 404, 409),
                },
            },
            "delete": {
                "operationId": "removeFromMyList",
                "summary": "Remove a title from My List (idempotent)",
                "tags": ["library"],
                "security": _SESSION,
                "responses": {"204": {"description": "not listed"}, **error_responses(401, 404)},
            },
        },
        "/v1/profiles/{profile_id}/ratings": {
            "parameters": _PROFILE_ONLY,
            "get": {
                "operationId": "getRatings",
                "summary": "The profile's thumbs ratings, most recent first",
                "tags": ["library"],
                "security": _SESSION,
                "parameters": PAGE_PARAMS,
                "responses": {
                    "200": json_response("ratings", page_of("#/components/schemas/RatingEntry")),
                    **error_responses(400, 401, 404),
                },
            },
        },
        "/v1/profiles/{profile_id}/ratings/{title_id}": {
            "parameters": _PROFILE_TITLE,
            "put": {
                "operationId": "putRating",
                "summary": "Thumbs up (1) or down (-1) a title",
                "description": (
                    "Replaces an earlier rating. A thumbs-down title is left out of the "
                    "profile's home rows; a thumbs-up counts as a finished watch for the "
                    "recommendations."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/RatingWrite"),
                "responses": {
                    "204": {"description": "rated"},
                    **error_responses(400, 401, 404, 413, 415),
                },
            },
            "delete": {
                "operationId": "deleteRating",
                "summary": "Remove a rating (idempotent)",
                "tags": ["library"],
                "security": _SESSION,
                "responses": {"204": {"description": "not rated"}, **error_responses(401, 404)},
            },
        },
        "/v1/profiles/{profile_id}/home": {
            "parameters": _PROFILE_ONLY,
            "get": {
                "operationId": "getHome",
                "summary": "The profile's home rows",
                "description": (
                    "Continue Watching is built live from the stored positions; the other "
                    "rows come from the recommendation batch (source batch, computed_at its "
                    "run time) or, for a profile it has not covered, from popularity "
                    "(source fallback, computed_at null). Every row is filtered now by the "
                    "profile's maturity limit and thumbs-down ratings; empty rows are "
                    "dropped; a title appears in one row at most."
                ),
                "tags": ["library"],
                "security": _SESSION,
                "responses": {
                    "200": json_response("home rows", {"$ref": "#/components/schemas/Home"}),
                    **error_responses(400, 401, 404),
                },
            },
        },
        "/v1/admin/recompute": {
            "post": {
                "operationId": "adminRecompute",
                "summary": "Run the recommendation batch now",
                "description": (
                    "Recomputes every profile's home rows and title popularity (also run "
                    "every recommend.interval seconds). profiles: how many profiles' rows "
                    "were stored; seconds: how long it took."
                ),
                "tags": ["admin"],
                "security": _SESSION,
                "responses": {
                    "200": json_response(
                        "done",
                        {
                            "type": "object",
                            "required": ["profiles", "seconds"],
                            "properties": {
                                "profiles": {"type": "integer", "minimum": 0},
                                "seconds": {"type": "number", "minimum": 0},
                            },
                        },
                    ),
                    **error_responses(400, 401, 403),
                },
            },
        },
    },
    "schemas": {
        "ResumeWrite": {
            "type": "object",
            "additionalProperties": False,
            "required": ["position", "client_at"],
            "properties": {
                "episode_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": "^[A-Za-z0-9_-]+$",
                    "description": "required for a series, absent for a movie",
                },
                "position": {"type": "number", "minimum": 0, "maximum": MAX_POSITION_S},
                "duration": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_POSITION_S},
                "client_at": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_CLIENT_AT,
                    "description": "the device's clock when it saw the position, unix s",
                },
            },
        },
        "ResumeState": {
            "type": "object",
            "required": ["applied", "title_id", *_STATE_REQUIRED],
            "properties": {
                "applied": {"type": "boolean", "description": "false: a later write won"},
                "title_id": {"type": "string"},
                **_STATE_PROPS,
            },
        },
        "Resume": {
            "type": "object",
            "required": ["title_id", "kind", "positions", "next"],
            "properties": {
                "title_id": {"type": "string"},
                "kind": {"type": "string", "enum": ["movie", "series"]},
                "positions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": _STATE_REQUIRED,
                        "properties": _STATE_PROPS,
                    },
                },
                "next": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["episode_id", "position"],
                            "properties": {
                                "episode_id": {"type": ["string", "null"]},
                                "position": {"type": "number", "minimum": 0},
                            },
                        },
                    ]
                },
            },
        },
        "HistoryEntry": {
            "type": "object",
            "required": ["title", *_STATE_REQUIRED],
            "properties": {"title": {"$ref": _CARD}, **_STATE_PROPS},
        },
        "ListEntry": {
            "type": "object",
            "required": ["title", "added_at"],
            "properties": {"title": {"$ref": _CARD}, "added_at": {"type": "number"}},
        },
        "RatingWrite": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rating"],
            "properties": {"rating": {"type": "integer", "enum": [1, -1]}},
        },
        "RatingEntry": {
            "type": "object",
            "required": ["title", "rating", "rated_at"],
            "properties": {
                "title": {"$ref": _CARD},
                "rating": {"type": "integer", "enum": [1, -1]},
                "rated_at": {"type": "number"},
            },
        },
        "Home": {
            "type": "object",
            "required": ["rows", "computed_at", "source"],
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "label", "titles"],
                        "properties": {
                            "name": {
                                "type": "string",
                                "enum": [
                                    "continue_watching",
                                    "because_you_watched",
                                    "top_in_genre",
                                    "trending",
                                    "new_releases",
                                    "popular",
                                ],
                            },
                            "label": {"type": "string"},
                            "titles": {"type": "array", "minItems": 1, "items": {"$ref": _CARD}},
                        },
                    },
                },
                "computed_at": {"type": ["number", "null"]},
                "source": {"type": "string", "enum": ["batch", "fallback"]},
            },
        },
    },
}
