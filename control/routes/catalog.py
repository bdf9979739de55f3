"""HTTP routes: the catalog for viewers (browse, details, search, autocomplete, genres) and
for administrators (titles and episodes, and a sync with the origin's catalog feed).

Thin handlers over control/catalog.py and control/feed.py. Every viewer route needs a
session and a ``profile_id`` of the signed-in account (another account's profile is a 404);
the profile's maturity limit hides the titles rated above it from every answer, counts
included, and a hidden title's details are a 404 like an unknown one's.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from aiohttp import web

from ..app import admin_of, control_of, profile_of, read_body, session_of
from ..catalog import MEDIA_KEY_RE, SLUG_RE, CatalogStore, check_artwork
from ..errors import ControlError, NotFound, Unavailable
from ..feed import FeedError
from ..fields import Fields, page, page_params, query_fields
from ..openapi import PAGE_PARAMS, error_responses, json_body, json_response, page_of
from ..responses import respond

routes = web.RouteTableDef()

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
KINDS = ("movie", "series")
SOURCES = ("admin", "origin")
MAX_NAME = 200
MAX_SYNOPSIS = 5000
MAX_GENRES, MAX_GENRE_LEN = 20, 40
MAX_CAST, MAX_CAST_LEN = 100, 100
MAX_DURATION = 1e7  # seconds (about 115 days)
MAX_SEASON, MAX_EPISODE = 1000, 10000
MAX_QUERY = 200
MAX_SUGGESTIONS = 20
YEAR_LO, YEAR_HI = 1870, 2100


def _catalog(request: web.Request) -> CatalogStore:
    store: CatalogStore = control_of(request).catalog
    return store


def _path_id(request: web.Request, name: str, what: str) -> str:
    """A path parameter: malformed ids cannot exist, so they are a 404."""
    value = request.match_info[name]
    if not _ID.match(value):
        raise NotFound(f"no such {what}")
    return value


def _profile_id(f: Fields) -> str:
    pid = f.text("profile_id", max_len=64)
    if pid is not None and not _ID.match(pid):
        f.fail("profile_id", "must be 1 to 64 of A-Z a-z 0-9 _ -")
    return str(pid)


def _filters(f: Fields) -> dict[str, Any]:
    return {
        "genre": f.text("genre", required=False, max_len=MAX_GENRE_LEN),
        "kind": f.choice("kind", KINDS, required=False),
        "year": f.integer("year", lo=YEAR_LO, hi=YEAR_HI, required=False),
    }


# -- viewers -------------------------------------------------------------------------------


@routes.get("/v1/titles")
async def browse(request: web.Request) -> web.Response:
    await session_of(request)
    f = page_params(request.query)
    pid = _profile_id(f)
    filters = _filters(f)
    f.done()
    profile = await profile_of(request, pid)
    offset, limit = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = _catalog(request).browse(
        profile.maturity_limit, offset=offset, limit=limit, **filters
    )
    return respond(page(items, total, offset, limit))


@routes.get("/v1/titles/{title_id}")
async def details(request: web.Request) -> web.Response:
    await session_of(request)
    title_id = _path_id(request, "title_id", "title")
    f = query_fields(request.query)
    pid = _profile_id(f)
    f.done()
    profile = await profile_of(request, pid)
    return respond(await _catalog(request).details(title_id, profile.maturity_limit))


@routes.get("/v1/search")
async def search(request: web.Request) -> web.Response:
    # The session and the profile in one query once the query string names the profile; a
    # bad query string is answered only after the session is checked (401 before 400).
    try:
        f = page_params(request.query)
        pid = _profile_id(f)
        q = f.text("q", required=False, min_len=0, max_len=MAX_QUERY, default="")
        filters = _filters(f)
        f.done()
    except ControlError:
        await session_of(request)
        raise
    profile = await profile_of(request, pid)
    control_of(request).metrics.inc("control_search_requests", "search")
    offset, limit = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = _catalog(request).search(
        q, profile.maturity_limit, offset=offset, limit=limit, **filters
    )
    return respond({**page(items, total, offset, limit), "query": q})


@routes.get("/v1/autocomplete")
async def autocomplete(request: web.Request) -> web.Response:
    await session_of(request)
    f = query_fields(request.query)
    pid = _profile_id(f)
    q = f.text("q", required=False, min_len=0, max_len=MAX_QUERY, default="")
    limit = f.integer("limit", lo=1, hi=MAX_SUGGESTIONS, required=False, default=10)
    f.done()
    profile = await profile_of(request, pid)
    control_of(request).metrics.inc("control_search_requests", "autocomplete")
    # As typed (NFC, not stripped): a trailing space says the last word is finished.
    typed = unicodedata.normalize("NFC", request.query.get("q", "")) if q else ""
    names = _catalog(request).autocomplete(typed, profile.maturity_limit, limit)
    return respond({"query": q, "suggestions": names})


@routes.get("/v1/genres")
async def genres(request: web.Request) -> web.Response:
    await session_of(request)
    f = page_params(request.query, default=100)
    pid = _profile_id(f)
    f.done()
    profile = await profile_of(request, pid)
    offset, limit = f.offset, f.limit  # type: ignore[attr-defined]
    items = _catalog(request).genres(profile.maturity_limit)
    return respond(page(items[offset : offset + limit], len(items), offset, limit))


# -- administrators ------------------------------------------------------------------------


def _not_null(f: Fields, body: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if name in body and body[name] is None:
            f.fail(name, "must not be null")


def _title_body(body: dict[str, Any], *, create: bool) -> dict[str, Any]:
    """The validated fields of a title body; for an update only the fields given."""
    f = Fields(body)
    _not_null(
        f,
        body,
        ("id", "kind", "name", "synopsis", "maturity", "genres", "cast", "artwork", "published"),
    )
    v: dict[str, Any] = {}
    if create:
        tid = f.text("id", required=False, max_len=64)
        if tid is not None and not SLUG_RE.match(tid):
            f.fail("id", "must be a slug: 1 to 64 of a-z, 0-9 and '-', not starting with '-'")
        v["id"] = tid
    v["kind"] = f.choice("kind", KINDS, required=create)
    v["name"] = f.text("name", required=create, max_len=MAX_NAME)
    v["synopsis"] = f.text("synopsis", required=False, min_len=0, max_len=MAX_SYNOPSIS)
    v["year"] = f.integer("year", lo=YEAR_LO, hi=YEAR_HI, required=False)
    v["maturity"] = f.integer("maturity", lo=0, hi=18, required=False)
    v["genres"] = f.text_list("genres", max_items=MAX_GENRES, max_len=MAX_GENRE_LEN)
    v["cast"] = f.text_list("cast", max_items=MAX_CAST, max_len=MAX_CAST_LEN)
    artwork = f.mapping("artwork")
    if artwork is not None:
        artwork, reason = check_artwork(artwork)
        if artwork is None:
            f.fail("artwork", reason)
    v["artwork"] = artwork
    v["duration"] = f.number("duration", lo=0, hi=MAX_DURATION, required=False)
    v["media_key"] = _media_key(f)
    v["published"] = f.boolean("published", required=False)
    f.done()
    if create:
        out = {k: x for k, x in v.items() if x is not None}
        out.setdefault("maturity", 0)
        out.setdefault("published", True)
        return out
    # An update: what the body names (null clears year, duration and media_key).
    return {k: x for k, x in v.items() if k in body}


def _media_key(f: Fields) -> Any:
    key = f.text("media_key", required=False, max_len=64)
    if key is not None and not MEDIA_KEY_RE.match(key):
        f.fail("media_key", "must be an origin title: 1 to 64 of a-z, 0-9, '_' and '-'")
    return key


def _episode_body(body: dict[str, Any], *, create: bool) -> dict[str, Any]:
    f = Fields(body)
    _not_null(f, body, ("season", "number", "name", "synopsis"))
    v = {
        "season": f.integer("season", lo=1, hi=MAX_SEASON, required=create),
        "number": f.integer("number", lo=1, hi=MAX_EPISODE, required=create),
        "name": f.text("name", required=create, max_len=MAX_NAME),
        "synopsis": f.text("synopsis", required=False, min_len=0, max_len=MAX_SYNOPSIS),
        "duration": f.number("duration", lo=0, hi=MAX_DURATION, required=False),
        "media_key": _media_key(f),
    }
    f.done()
    if create:
        return {k: x for k, x in v.items() if x is not None}
    return {k: x for k, x in v.items() if k in body}


@routes.get("/v1/admin/titles")
async def admin_list(request: web.Request) -> web.Response:
    await admin_of(request)
    f = page_params(request.query)
    kind = f.choice("kind", KINDS, required=False)
    published = f.boolean("published", required=False)
    source = f.choice("source", SOURCES, required=False)
    f.done()
    offset, limit = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = await _catalog(request).admin_list(
        kind=kind, published=published, source=source, offset=offset, limit=limit
    )
    return respond(page(items, total, offset, limit))


@routes.post("/v1/admin/titles")
async def admin_create(request: web.Request) -> web.Response:
    await admin_of(request)
    spec = _title_body(await read_body(request), create=True)
    return respond(await _catalog(request).create_title(spec), status=201)


@routes.get("/v1/admin/titles/{title_id}")
async def admin_get(request: web.Request) -> web.Response:
    await admin_of(request)
    title_id = _path_id(request, "title_id", "title")
    query_fields(request.query).done()
    return respond(await _catalog(request).admin_get(title_id))


@routes.put("/v1/admin/titles/{title_id}")
async def admin_update(request: web.Request) -> web.Response:
    await admin_of(request)
    title_id = _path_id(request, "title_id", "title")
    changes = _title_body(await read_body(request), create=False)
    return respond(await _catalog(request).update_title(title_id, changes))


@routes.delete("/v1/admin/titles/{title_id}")
async def admin_delete(request: web.Request) -> web.Response:
    await admin_of(request)
    title_id = _path_id(request, "title_id", "title")
    await _catalog(request).delete_title(title_id)
    return web.Response(status=204)


@routes.post("/v1/admin/titles/{title_id}/episodes")
async def admin_create_episode(request: web.Request) -> web.Response:
    await admin_of(request)
    title_id = _path_id(request, "title_id", "title")
    spec = _episode_body(await read_body(request), create=True)
    return respond(await _catalog(request).create_episode(title_id, spec), status=201)


@routes.put("/v1/admin/titles/{title_id}/episodes/{episode_id}")
async def admin_update_episode(request: web.Request) -> web.Response:
    await admin_of(request)
    title_id = _path_id(request, "title_id", "title")
    episode_id = _path_id(request, "episode_id", "episode")
    changes = _episode_body(await read_body(request), create=False)
    out = await _catalog(request).update_episode(title_id, episode_id, changes)
    return respond(out)


@routes.delete("/v1/admin/titles/{title_id}/episodes/{episode_id}")
async def admin_delete_episode(request: web.Request) -> web.Response:
    await admin_of(request)
    title_id = _path_id(request, "title_id", "title")
    episode_id = _path_id(request, "episode_id", "episode")
    await _catalog(request).delete_episode(title_id, episode_id)
    return web.Response(status=204)


@routes.post("/v1/admin/catalog/sync")
async def admin_sync(request: web.Request) -> web.Response:
    await admin_of(request)
    try:
        applied, seq = await control_of(request).feed.poll()
    except FeedError as exc:
        raise Unavailable(f"the origin catalog feed failed: {exc}") from None
    return respond({"applied": applied, "seq": seq})


# -- OpenAPI -------------------------------------------------------------------------------

_SESSION: list[dict[str, list[str]]] = [{"session": []}]
_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"}
_NULLABLE_NUMBER = {"type": ["number", "null"], "minimum": 0}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
_SYNOPSIS = {"type": "string", "maxLength": MAX_SYNOPSIS}
_YEAR = {"type": ["integer", "null"], "minimum": YEAR_LO, "maximum": YEAR_HI}
_MATURITY = {"type": "integer", "minimum": 0, "maximum": 18}
_GENRES = {
    "type": "array",
    "maxItems": MAX_GENRES,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_GENRE_LEN},
}
_CAST = {
    "type": "array",
    "maxItems": MAX_CAST,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_CAST_LEN},
}
_ARTWORK = {
    "type": "object",
    "description": (
        "kind (poster, sprite, backdrop...) -> an http(s) URL or a path relative to the "
        "title's media base /v/<media_key>/"
    ),
    "maxProperties": 16,
    "propertyNames": {"pattern": "^[a-z0-9_-]{1,32}$"},
    "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 1000},
}
_MEDIA_KEY: dict[str, Any] = {
    "type": ["string", "null"],
    "minLength": 1,
    "maxLength": 64,
    "pattern": "^[a-z0-9][a-z0-9_-]*$",
    "description": "the origin title served under /v/<media_key>/ (movies and episodes)",
}
_RENDITION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "width": {"type": ["integer", "null"]},
        "height": {"type": ["integer", "null"]},
        "bandwidth": {"type": ["integer", "null"]},
        "codecs": {"type": ["string", "null"]},
        "frame_rate": {"type": ["number", "string", "null"]},
    },
}


def _param(
    name: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _ID_SCHEMA,
    }


_PROFILE = _param(
    "profile_id",
    _ID_SCHEMA,
    "a profile of the signed-in account (its maturity limit applies)",
    required=True,
)
_FILTERS = [
    _param("genre", {"type": "string", "minLength": 1, "maxLength": MAX_GENRE_LEN},
           "only titles of this genre (case and accents ignored)"),
    _param("kind", {"type": "string", "enum": list(KINDS)}, "only movies or only series"),
    _param("year", {"type": "integer", "minimum": YEAR_LO, "maximum": YEAR_HI},
           "only titles of this year"),
]  # fmt: skip
_TITLE_PATH = _path("title_id", "the title's id (a slug)")
_EPISODE_PATH = _path("episode_id", "the episode's id")
_CARD = "#/components/schemas/CatalogCard"


def _ok(description: str, ref: str) -> dict[str, Any]:
    return json_response(description, {"$ref": ref})


_NO_CONTENT = {"description": "done; no body"}

_CARD_PROPS: dict[str, Any] = {
    "id": {"type": "string"},
    "name": {"type": "string"},
    "kind": {"type": "string", "enum": list(KINDS)},
    "year": {"type": ["integer", "null"]},
    "maturity": _MATURITY,
    "genres": {"type": "array", "items": {"type": "string"}},
    "artwork": {"type": "object", "additionalProperties": {"type": "string"}},
}
_CARD_REQUIRED = ["id", "name", "kind", "year", "maturity", "genres", "artwork"]

_ADMIN_EPISODE = {
    "type": "object",
    "required": [
        "id", "title_id", "season", "number", "name", "synopsis", "duration", "media_key",
        "renditions", "published", "updated_at",
    ],
    "properties": {
        "id": {"type": "string"},
        "title_id": {"type": "string"},
        "season": {"type": "integer", "minimum": 1},
        "number": {"type": "integer", "minimum": 1},
        "name": {"type": "string"},
        "synopsis": {"type": "string"},
        "duration": _NULLABLE_NUMBER,
        "media_key": {"type": ["string", "null"]},
        "renditions": {"type": "array", "items": _RENDITION},
        "published": {
            "type": "boolean",
            "description": "false while the origin has withdrawn the episode's media",
        },
        "updated_at": {"type": "number"},
    },
}  # fmt: skip

_ADMIN_TITLE = {
    "type": "object",
    "required": [
        "id", "kind", "name", "synopsis", "year", "maturity", "genres", "cast", "artwork",
        "duration", "media_key", "renditions", "published", "source", "released_at",
        "updated_at",
    ],
    "properties": {
        **_CARD_PROPS,
        "synopsis": {"type": "string"},
        "cast": {"type": "array", "items": {"type": "string"}},
        "duration": _NULLABLE_NUMBER,
        "media_key": {"type": ["string", "null"]},
        "renditions": {"type": "array", "items": _RENDITION},
        "published": {"type": "boolean"},
        "source": {"type": "string", "enum": list(SOURCES)},
        "released_at": {"type": "number", "description": "unix seconds it entered the catalog"},
        "updated_at": {"type": "number"},
        "episodes": {
            "type": "array",
            "description": "series: every episode, by season and number (not in lists)",
            "items": {"$ref": "#/components/schemas/CatalogAdminEpisode"},
        },
    },
}  # fmt: skip


def _title_write(create: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "name"] if create else [],
        "description": (
            "A new title: the id is derived from the name when left out."
            if create
            else "The fields to replace; fields left out keep their values; null clears "
            "year, duration and media_key. The kind cannot change."
        ),
        "properties": {
            **(
                {"id": {"type": "string", "minLength": 1, "maxLength": 64,
                        "pattern": "^[a-z0-9][a-z0-9-]*$"}}
                if create else {}
            ),
            "kind": {"type": "string", "enum": list(KINDS)},
            "name": _NAME,
            "synopsis": _SYNOPSIS,
            "year": _YEAR,
            "maturity": _MATURITY,
            "genres": _GENRES,
            "cast": _CAST,
            "artwork": _ARTWORK,
            "duration": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_DURATION,
                         "description": "seconds; movies only"},
            "media_key": {**_MEDIA_KEY, "description": "movies only: " + _MEDIA_KEY["description"]},
            "published": {"type": "boolean"},
        },
    }  # fmt: skip


def _episode_write(create: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["season", "number", "name"] if create else [],
        "properties": {
            "season": {"type": "integer", "minimum": 1, "maximum": MAX_SEASON},
            "number": {"type": "integer", "minimum": 1, "maximum": MAX_EPISODE},
            "name": _NAME,
            "synopsis": _SYNOPSIS,
            "duration": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_DURATION},
            "media_key": _MEDIA_KEY,
        },
    }


OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/titles": {
            "get": {
                "operationId": "browseTitles",
                "summary": "Browse the published titles a profile may see",
                "description": "Most popular first, then by name.",
                "tags": ["catalog"],
                "security": _SESSION,
                "parameters": [_PROFILE, *_FILTERS, *PAGE_PARAMS],
                "responses": {
                    "200": json_response("a page of title cards", page_of(_CARD)),
                    **error_responses(400, 401, 404),
                },
            }
        },
        "/v1/titles/{title_id}": {
            "get": {
                "operationId": "getTitle",
                "summary": "A title's details; a series with its seasons and episodes",
                "description": "404 for a title that is unknown, unpublished or above the "
                "profile's maturity limit.",
                "tags": ["catalog"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH, _PROFILE],
                "responses": {
                    "200": _ok("the title", "#/components/schemas/CatalogTitleDetails"),
                    **error_responses(400, 401, 404),
                },
            }
        },
        "/v1/search": {
            "get": {
                "operationId": "searchTitles",
                "summary": "Full-text search over titles, synopses, cast and genres",
                "description": (
                    "Every word must match (else any word), the last one also as a prefix; "
                    "misspelt words of four letters or more are corrected. An empty q "
                    "browses like GET /v1/titles. Each item names the (corrected) query "
                    "words it matched."
                ),
                "tags": ["catalog"],
                "security": _SESSION,
                "parameters": [
                    _PROFILE,
                    _param("q", {"type": "string", "maxLength": MAX_QUERY}, "the query"),
                    *_FILTERS,
                    *PAGE_PARAMS,
                ],
                "responses": {
                    "200": _ok("a page of matches", "#/components/schemas/CatalogSearchPage"),
                    **error_responses(400, 401, 404),
                },
            }
        },
        "/v1/autocomplete": {
            "get": {
                "operationId": "autocompleteTitles",
                "summary": "Title names completing what the user typed, most popular first",
                "tags": ["catalog"],
                "security": _SESSION,
                "parameters": [
                    _PROFILE,
                    _param("q", {"type": "string", "maxLength": MAX_QUERY}, "typed so far"),
                    _param(
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_SUGGESTIONS,
                            "default": 10,
                        },
                        "most suggestions",
                    ),
                ],
                "responses": {
                    "200": _ok("suggestions", "#/components/schemas/CatalogSuggestions"),
                    **error_responses(400, 401, 404),
                },
            }
        },
        "/v1/genres": {
            "get": {
                "operationId": "listGenres",
                "summary": "Genres of the titles a profile may see, with their counts",
                "tags": ["catalog"],
                "security": _SESSION,
                "parameters": [
                    _PROFILE,
                    PAGE_PARAMS[0],
                    _param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
                        "most genres per page",
                    ),
                ],
                "responses": {
                    "200": json_response(
                        "genres, most titles first",
                        page_of("#/components/schemas/CatalogGenre"),
                    ),
                    **error_responses(400, 401, 404),
                },
            }
        },
        "/v1/admin/titles": {
            "get": {
                "operationId": "adminListTitles",
                "summary": "Every title, published or not (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [
                    _param("kind", {"type": "string", "enum": list(KINDS)}, "only this kind"),
                    _param("published", {"type": "boolean"}, "only (un)published titles"),
                    _param(
                        "source",
                        {"type": "string", "enum": list(SOURCES)},
                        "only titles an administrator or the origin created",
                    ),
                    *PAGE_PARAMS,
                ],
                "responses": {
                    "200": json_response(
                        "a page of titles, by id",
                        page_of("#/components/schemas/CatalogAdminTitle"),
                    ),
                    **error_responses(400, 401, 403),
                },
            },
            "post": {
                "operationId": "adminCreateTitle",
                "summary": "Create a title (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/CatalogTitleCreate"),
                "responses": {
                    "201": _ok("the title", "#/components/schemas/CatalogAdminTitle"),
                    **error_responses(400, 401, 403, 409, 413, 415),
                },
            },
        },
        "/v1/admin/titles/{title_id}": {
            "get": {
                "operationId": "adminGetTitle",
                "summary": "A title with its episodes (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH],
                "responses": {
                    "200": _ok("the title", "#/components/schemas/CatalogAdminTitle"),
                    **error_responses(400, 401, 403, 404),
                },
            },
            "put": {
                "operationId": "adminUpdateTitle",
                "summary": "Change a title's fields (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH],
                "requestBody": json_body("#/components/schemas/CatalogTitleUpdate"),
                "responses": {
                    "200": _ok("the title", "#/components/schemas/CatalogAdminTitle"),
                    **error_responses(400, 401, 403, 404, 409, 413, 415),
                },
            },
            "delete": {
                "operationId": "adminDeleteTitle",
                "summary": "Delete a title and its episodes (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH],
                "responses": {"204": _NO_CONTENT, **error_responses(401, 403, 404)},
            },
        },
        "/v1/admin/titles/{title_id}/episodes": {
            "post": {
                "operationId": "adminCreateEpisode",
                "summary": "Add an episode to a series (administrators)",
                "description": "409 for a movie, a taken season/number or media key.",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH],
                "requestBody": json_body("#/components/schemas/CatalogEpisodeCreate"),
                "responses": {
                    "201": _ok("the episode", "#/components/schemas/CatalogAdminEpisode"),
                    **error_responses(400, 401, 403, 404, 409, 413, 415),
                },
            }
        },
        "/v1/admin/titles/{title_id}/episodes/{episode_id}": {
            "put": {
                "operationId": "adminUpdateEpisode",
                "summary": "Change an episode's fields (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH, _EPISODE_PATH],
                "requestBody": json_body("#/components/schemas/CatalogEpisodeUpdate"),
                "responses": {
                    "200": _ok("the episode", "#/components/schemas/CatalogAdminEpisode"),
                    **error_responses(400, 401, 403, 404, 409, 413, 415),
                },
            },
            "delete": {
                "operationId": "adminDeleteEpisode",
                "summary": "Delete an episode (administrators)",
                "tags": ["catalog admin"],
                "security": _SESSION,
                "parameters": [_TITLE_PATH, _EPISODE_PATH],
                "responses": {"204": _NO_CONTENT, **error_responses(401, 403, 404)},
            },
        },
        "/v1/admin/catalog/sync": {
            "post": {
                "operationId": "adminSyncCatalog",
                "summary": "Read the origin's catalog feed now (administrators)",
                "description": (
                    "Applies every feed entry after the stored sequence number. 409 "
                    "(feed_disabled) without catalog_feed.url; 503 when the origin cannot "
                    "be read (refused, timed out, wrong credential, not a feed)."
                ),
                "tags": ["catalog admin"],
                "security": _SESSION,
                "responses": {
                    "200": _ok("what was applied", "#/components/schemas/CatalogSyncResult"),
                    **error_responses(401, 403, 409, 503),
                },
            }
        },
    },
    "schemas": {
        "CatalogCard": {
            "type": "object",
            "description": "A title as lists show it",
            "required": _CARD_REQUIRED,
            "properties": _CARD_PROPS,
        },
        "CatalogSearchPage": {
            "type": "object",
            "required": ["items", "total", "offset", "limit", "query"],
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [*_CARD_REQUIRED, "matched"],
                        "properties": {
                            **_CARD_PROPS,
                            "matched": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "the query words matched, as corrected",
                            },
                        },
                    },
                },
                "total": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1},
                "query": {"type": "string"},
            },
        },
        "CatalogSuggestions": {
            "type": "object",
            "required": ["query", "suggestions"],
            "properties": {
                "query": {"type": "string"},
                "suggestions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "CatalogGenre": {
            "type": "object",
            "required": ["genre", "count"],
            "properties": {
                "genre": {"type": "string"},
                "count": {"type": "integer", "minimum": 1},
            },
        },
        "CatalogTitleDetails": {
            "type": "object",
            "required": [
                *_CARD_REQUIRED,
                "synopsis",
                "cast",
                "duration",
                "released_at",
                "playable",
                "seasons",
            ],
            "properties": {
                **_CARD_PROPS,
                "synopsis": {"type": "string"},
                "cast": {"type": "array", "items": {"type": "string"}},
                "duration": _NULLABLE_NUMBER,
                "released_at": {"type": "number"},
                "playable": {
                    "type": "boolean",
                    "description": "a movie whose media the origin has published",
                },
                "seasons": {
                    "type": "array",
                    "description": "series: seasons in order, each with its episodes",
                    "items": {
                        "type": "object",
                        "required": ["season", "episodes"],
                        "properties": {
                            "season": {"type": "integer", "minimum": 1},
                            "episodes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": [
                                        "id",
                                        "season",
                                        "number",
                                        "name",
                                        "synopsis",
                                        "duration",
                                        "playable",
                                    ],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "season": {"type": "integer", "minimum": 1},
                                        "number": {"type": "integer", "minimum": 1},
                                        "name": {"type": "string"},
                                        "synopsis": {"type": "string"},
                                        "duration": _NULLABLE_NUMBER,
                                        "playable": {"type": "boolean"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "CatalogAdminTitle": _ADMIN_TITLE,
        "CatalogAdminEpisode": _ADMIN_EPISODE,
        "CatalogTitleCreate": _title_write(True),
        "CatalogTitleUpdate": _title_write(False),
        "CatalogEpisodeCreate": _episode_write(True),
        "CatalogEpisodeUpdate": _episode_write(False),
        "CatalogSyncResult": {
            "type": "object",
            "required": ["applied", "seq"],
            "properties": {
                "applied": {"type": "integer", "minimum": 0},
                "seq": {"type": "integer", "minimum": 0, "description": "the last entry read"},
            },
        },
    },
}
