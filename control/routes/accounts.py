"""HTTP routes: sign-up, sign-in and out, the account, password change, profiles, roles.

Thin handlers over control/accounts.py (see its docstring for the security choices: uniform
sign-in errors, rate limits, session revocation, per-account serialisation).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..accounts import MAX_DEVICE, MAX_PROFILE_NAME, ROLES, AccountStore, SignedIn, valid_id
from ..app import admin_of, control_of, read_body, session_of
from ..clients import client_address
from ..errors import NotFound
from ..fields import Fields, page, page_params
from ..openapi import PAGE_PARAMS, error_responses, json_body, json_response, page_of
from ..responses import respond

routes = web.RouteTableDef()

MAX_EMAIL_CHARS = 320


def _store(request: web.Request) -> AccountStore:
    store: AccountStore = control_of(request).accounts
    return store


def _remote(request: web.Request) -> str:
    """The client's address keying the per-address limits (trusted proxies applied)."""
    return client_address(request)


def path_id(request: web.Request, name: str, what: str) -> str:
    """A path parameter that must look like one of our ids; anything else is a 404."""
    value = request.match_info[name]
    if not valid_id(value):
        raise NotFound(f"no such {what}")
    return value


def _signed_in(s: SignedIn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "account": s.account.to_json(),
        "token": s.token,
        "expires_at": s.expires_at,
    }
    if s.profile is not None:
        out["profile"] = s.profile.to_json()
    return out


@routes.post("/v1/accounts")
async def signup(request: web.Request) -> web.Response:
    f = Fields(await read_body(request))
    email = f.text("email", max_len=MAX_EMAIL_CHARS)
    password = f.secret("password")
    name = f.text("name", required=False, max_len=MAX_PROFILE_NAME)
    try:
        f.done()
    except Exception:
        control_of(request).metrics.inc("control_signups", "invalid")
        raise
    s = await _store(request).signup(email, password, name, _remote(request))
    return respond(_signed_in(s), status=201)


@routes.post("/v1/sessions")
async def signin(request: web.Request) -> web.Response:
    f = Fields(await read_body(request))
    email = f.text("email", max_len=MAX_EMAIL_CHARS)
    password = f.secret("password")
    device = f.text("device", required=False, max_len=MAX_DEVICE, default="")
    f.done()
    s = await _store(request).signin(email, password, _remote(request), device)
    return respond(_signed_in(s), status=201)


@routes.delete("/v1/sessions/current")
async def signout(request: web.Request) -> web.Response:
    s = await session_of(request)
    await _store(request).signout(s)
    return web.Response(status=204)


@routes.delete("/v1/sessions")
async def signout_everywhere(request: web.Request) -> web.Response:
    s = await session_of(request)
    await _store(request).signout_everywhere(s.account_id)
    return web.Response(status=204)


@routes.get("/v1/account")
async def get_account(request: web.Request) -> web.Response:
    s = await session_of(request)
    account = await _store(request).get_account(s.account_id)
    return respond(account.to_json())


@routes.put("/v1/account/password")
async def change_password(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = Fields(await read_body(request))
    current = f.secret("current_password")
    new = f.secret("new_password")
    f.done()
    await _store(request).change_password(s, current, new)
    return web.Response(status=204)


@routes.get("/v1/profiles")
async def list_profiles(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = page_params(request.query)
    f.done()
    profiles = await _store(request).profiles_of(s.account_id)
    items = [p.to_json() for p in profiles[f.offset : f.offset + f.limit]]  # type: ignore[attr-defined]
    return respond(page(items, len(profiles), f.offset, f.limit))  # type: ignore[attr-defined]


@routes.post("/v1/profiles")
async def create_profile(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = Fields(await read_body(request))
    name = f.text("name", max_len=MAX_PROFILE_NAME)
    maturity = f.integer("maturity_limit", lo=0, hi=18, required=False)
    kids = f.boolean("kids", required=False, default=False)
    f.done()
    p = await _store(request).create_profile(s.account_id, name, maturity, kids)
    return respond(p.to_json(), status=201)


@routes.get("/v1/profiles/{profile_id}")
async def get_profile(request: web.Request) -> web.Response:
    s = await session_of(request)
    pid = path_id(request, "profile_id", "profile")
    p = await _store(request).get_profile(s.account_id, pid)
    return respond(p.to_json())


@routes.patch("/v1/profiles/{profile_id}")
async def update_profile(request: web.Request) -> web.Response:
    s = await session_of(request)
    pid = path_id(request, "profile_id", "profile")
    f = Fields(await read_body(request))
    name = f.text("name", required=False, max_len=MAX_PROFILE_NAME)
    maturity = f.integer("maturity_limit", lo=0, hi=18, required=False)
    kids = f.boolean("kids", required=False)
    f.done()
    p = await _store(request).update_profile(
        s.account_id, pid, name=name, maturity_limit=maturity, kids=kids
    )
    return respond(p.to_json())


@routes.delete("/v1/profiles/{profile_id}")
async def delete_profile(request: web.Request) -> web.Response:
    s = await session_of(request)
    pid = path_id(request, "profile_id", "profile")
    await _store(request).delete_profile(s.account_id, pid)
    return web.Response(status=204)


@routes.put("/v1/admin/accounts/{account_id}/role")
async def set_role(request: web.Request) -> web.Response:
    await admin_of(request)
    account_id = path_id(request, "account_id", "account")
    f = Fields(await read_body(request))
    role = f.choice("role", ROLES)
    f.done()
    account = await _store(request).set_role(account_id, role)
    return respond(account.to_json())


# -- OpenAPI -------------------------------------------------------------------------------

_SESSION: list[dict[str, list[str]]] = [{"session": []}]
_ACCOUNT = "#/components/schemas/Account"
_PROFILE = "#/components/schemas/Profile"


def _id_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
    }


_EMAIL = {"type": "string", "minLength": 1, "maxLength": MAX_EMAIL_CHARS, "format": "email"}
_PASSWORD = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1024,
    "description": "8 to 1024 characters after NFC normalisation",
}
_PROFILE_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_PROFILE_NAME}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/accounts": {
            "post": {
                "operationId": "signUp",
                "summary": "Create an account, its first profile and a session",
                "description": (
                    "The e-mail is normalised (trimmed, lower-cased). An address that already "
                    "has an account answers 409 conflict. Rate-limited per client address "
                    "(behind a trusted proxy, the X-Forwarded-For client) and per e-mail "
                    "address."
                ),
                "tags": ["accounts"],
                "requestBody": json_body("#/components/schemas/SignUp"),
                "responses": {
                    "201": json_response(
                        "signed up and signed in",
                        {"$ref": "#/components/schemas/SignedUp"},
                    ),
                    **error_responses(400, 409, 413, 415, 429),
                },
            }
        },
        "/v1/sessions": {
            "post": {
                "operationId": "signIn",
                "summary": "Sign in: a bearer session token",
                "description": (
                    "An unknown e-mail and a wrong password answer the same 401. Rate-limited "
                    "per client address (behind a trusted proxy, the X-Forwarded-For client) "
                    "and per e-mail address."
                ),
                "tags": ["accounts"],
                "requestBody": json_body("#/components/schemas/SignIn"),
                "responses": {
                    "201": json_response("signed in", {"$ref": "#/components/schemas/SignedIn"}),
                    **error_responses(400, 401, 413, 415, 429),
                },
            },
            "delete": {
                "operationId": "signOutEverywhere",
                "summary": "Sign out every session of the account",
                "tags": ["accounts"],
                "security": _SESSION,
                "responses": {"204": {"description": "signed out"}, **error_responses(401)},
            },
        },
        "/v1/sessions/current": {
            "delete": {
                "operationId": "signOut",
                "summary": "Sign out this session",
                "tags": ["accounts"],
                "security": _SESSION,
                "responses": {"204": {"description": "signed out"}, **error_responses(401)},
            }
        },
        "/v1/account": {
            "get": {
                "operationId": "getAccount",
                "summary": "The signed-in account",
                "tags": ["accounts"],
                "security": _SESSION,
                "responses": {
                    "200": json_response("the account", {"$ref": _ACCOUNT}),
                    **error_responses(401),
                },
            }
        },
        "/v1/account/password": {
            "put": {
                "operationId": "changePassword",
                "summary": "Change the password; every other session is signed out",
                "description": "A wrong current_password is a 400 naming that field.",
                "tags": ["accounts"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/PasswordChange"),
                "responses": {
                    "204": {"description": "changed"},
                    **error_responses(400, 401, 409, 413, 415, 429),
                },
            }
        },
        "/v1/profiles": {
            "get": {
                "operationId": "listProfiles",
                "summary": "The account's viewer profiles, oldest first",
                "tags": ["profiles"],
                "security": _SESSION,
                "parameters": PAGE_PARAMS,
                "responses": {
                    "200": json_response("profiles", page_of(_PROFILE)),
                    **error_responses(400, 401),
                },
            },
            "post": {
                "operationId": "createProfile",
                "summary": "Add a viewer profile",
                "description": (
                    "409 beyond profiles.max_per_account or for a name the account already "
                    "uses. A kids profile has maturity_limit at most 7."
                ),
                "tags": ["profiles"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/ProfileCreate"),
                "responses": {
                    "201": json_response("created", {"$ref": _PROFILE}),
                    **error_responses(400, 401, 409, 413, 415),
                },
            },
        },
        "/v1/profiles/{profile_id}": {
            "parameters": [_id_param("profile_id", "a profile of the signed-in account")],
            "get": {
                "operationId": "getProfile",
                "summary": "One profile (404 for another account's)",
                "tags": ["profiles"],
                "security": _SESSION,
                "responses": {
                    "200": json_response("the profile", {"$ref": _PROFILE}),
                    **error_responses(401, 404),
                },
            },
            "patch": {
                "operationId": "updateProfile",
                "summary": "Rename a profile or change its maturity limit or kids flag",
                "tags": ["profiles"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/ProfileUpdate"),
                "responses": {
                    "200": json_response("the profile", {"$ref": _PROFILE}),
                    **error_responses(400, 401, 404, 409, 413, 415),
                },
            },
            "delete": {
                "operationId": "deleteProfile",
                "summary": "Delete a profile and its history, list and ratings",
                "description": "The last profile of an account cannot be deleted (409).",
                "tags": ["profiles"],
                "security": _SESSION,
                "responses": {
                    "204": {"description": "deleted"},
                    **error_responses(401, 404, 409),
                },
            },
        },
        "/v1/admin/accounts/{account_id}/role": {
            "parameters": [_id_param("account_id", "an account")],
            "put": {
                "operationId": "adminSetRole",
                "summary": "Make an account a user or an administrator",
                "description": "The last administrator cannot be demoted (409).",
                "tags": ["admin"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/RoleChange"),
                "responses": {
                    "200": json_response("the account", {"$ref": _ACCOUNT}),
                    **error_responses(400, 401, 403, 404, 409, 413, 415),
                },
            },
        },
    },
    "schemas": {
        "Account": {
            "type": "object",
            "required": ["id", "email", "role", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "email": {"type": "string"},
                "role": {"type": "string", "enum": list(ROLES)},
                "created_at": {"type": "number", "description": "unix seconds"},
            },
        },
        "Profile": {
            "type": "object",
            "required": ["id", "name", "maturity_limit", "kids", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "maturity_limit": {"type": "integer", "minimum": 0, "maximum": 18},
                "kids": {"type": "boolean"},
                "created_at": {"type": "number"},
            },
        },
        "SignUp": {
            "type": "object",
            "additionalProperties": False,
            "required": ["email", "password"],
            "properties": {
                "email": _EMAIL,
                "password": _PASSWORD,
                "name": {**_PROFILE_NAME, "description": "the first profile's name"},
            },
        },
        "SignIn": {
            "type": "object",
            "additionalProperties": False,
            "required": ["email", "password"],
            "properties": {
                "email": _EMAIL,
                "password": _PASSWORD,
                "device": {"type": "string", "minLength": 1, "maxLength": MAX_DEVICE},
            },
        },
        "SignedIn": {
            "type": "object",
            "required": ["account", "token", "expires_at"],
            "properties": {
                "account": {"$ref": _ACCOUNT},
                "token": {"type": "string", "description": "send as Authorization: Bearer"},
                "expires_at": {"type": "number", "description": "unix seconds"},
            },
        },
        "SignedUp": {
            "type": "object",
            "required": ["account", "token", "expires_at", "profile"],
            "properties": {
                "account": {"$ref": _ACCOUNT},
                "token": {"type": "string"},
                "expires_at": {"type": "number"},
                "profile": {"$ref": _PROFILE},
            },
        },
        "PasswordChange": {
            "type": "object",
            "additionalProperties": False,
            "required": ["current_password", "new_password"],
            "properties": {"current_password": _PASSWORD, "new_password": _PASSWORD},
        },
        "ProfileCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": _PROFILE_NAME,
                "maturity_limit": {"type": "integer", "minimum": 0, "maximum": 18},
                "kids": {"type": "boolean"},
            },
        },
        "ProfileUpdate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": _PROFILE_NAME,
                "maturity_limit": {"type": "integer", "minimum": 0, "maximum": 18},
                "kids": {"type": "boolean"},
            },
        },
        "RoleChange": {
            "type": "object",
            "additionalProperties": False,
            "required": ["role"],
            "properties": {"role": {"type": "string", "enum": list(ROLES)}},
        },
    },
}
