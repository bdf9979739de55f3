"""HTTP routes: playback (stub, being written)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

routes = web.RouteTableDef()

OPENAPI: dict[str, Any] = {"paths": {}, "schemas": {}}
