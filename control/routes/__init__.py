"""The HTTP routes of the control plane, one module per area.

Each module defines ``routes`` (an aiohttp RouteTableDef) and ``OPENAPI`` (its part of the
OpenAPI document: ``{"paths": {...}, "schemas": {...}}``), merged by control/openapi.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import accounts, billing, catalog, fill, library, playback, webplayer

MODULES: tuple[Any, ...] = (accounts, billing, catalog, fill, library, playback, webplayer)
ROUTE_TABLES: tuple[web.RouteTableDef, ...] = tuple(m.routes for m in MODULES)
