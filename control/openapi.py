"""The OpenAPI 3.1 document served at /openapi.json, assembled from the route modules.

Each route module declares its own paths and component schemas next to its handlers
(``OPENAPI``); this module adds the shared parts (error shape, pagination, security) and
merges them. tests/test_control_openapi.py checks that every route the application serves
is documented, and runs a schema-driven test (schemathesis) against a live server.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def page_of(item_ref: str) -> dict[str, Any]:
    """The schema of a paginated list of ``item_ref`` (a '#/components/schemas/X' ref)."""
    return {
        "type": "object",
        "required": ["items", "total", "offset", "limit"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": item_ref}},
            "total": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1},
        },
    }


PAGE_PARAMS = [
    {
        "name": "offset",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 0},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
]


def error_responses(*statuses: int) -> dict[str, Any]:
    """Responses in the error shape for the given statuses (400, 401, 404, ...)."""
    return {
        str(s): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


def json_body(schema_ref: str, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
    }


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SERVICE_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "Liveness and database reachability",
            "responses": {
                "200": json_response("healthy", {"type": "object"}),
                "503": json_response("the database is unreachable", {"type": "object"}),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": json_response("OpenAPI 3.1", {"type": "object"})},
        }
    },
}


@functools.cache
def _document() -> dict[str, Any]:
    from .routes import MODULES

    paths: dict[str, Any] = dict(_SERVICE_PATHS)
    schemas: dict[str, Any] = {"Error": ERROR}
    for module in MODULES:
        part = module.OPENAPI
        for path, item in part.get("paths", {}).items():
            merged = paths.setdefault(path, {})
            overlap = set(merged) & set(item)
            if overlap:
                raise ValueError(f"{path}: {sorted(overlap)} declared twice")
            merged.update(item)
        for name, schema in part.get("schemas", {}).items():
            if name in schemas and schemas[name] != schema:
                raise ValueError(f"schema {name} declared twice, differently")
            schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opencdn control plane",
            "version": "1",
            "description": (
                "Accounts, profiles, subscriptions, catalog, search, personal state, "
                "recommendations, playback authorization and the popularity feed of "
                "proactive fill. Every error has the Error shape; "
                "lists are paginated with offset/limit."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer"},
                # Steering's token for the fill feed (fill.credential_file), not a session.
                "fill": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def document() -> dict[str, Any]:
    return copy.deepcopy(_document())
