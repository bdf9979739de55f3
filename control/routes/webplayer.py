"""HTTP routes: the web player (control/web/), the hls.js it plays with, and dash.js.

The player is plain HTML, CSS and JavaScript with no build step, served from the control plane
so it calls the API on its own origin (no CORS set-up needed for the API). hls.js comes from the
npm registry (``npm ci`` at the repository root, which bin/run and bin/test do) and is served
from ``node_modules`` at ``/vendor/hls.js``: nothing is loaded from a third-party CDN. Without
``node_modules`` the page still loads and says how to install it; ``/vendor/hls.js`` is a 404.
dash.js (the DASH Industry Forum's player, npm package ``dashjs``) is served the same way at
``/vendor/dash.js`` (its UMD build, which defines ``window.dashjs``), for pages that play
``manifests.dash`` (the MPD) instead: tests/test_dash_player.py plays the fleet's MPD with it.

Files are answered with ``FileResponse`` (sendfile, ``ETag``/``Last-Modified`` and 304s) and
``Cache-Control: no-cache``: names carry no content hash (no build step), so browsers
revalidate instead of keeping a stale player after an upgrade. Only a fixed list of names is
served; anything else is a 404 in the API's error shape, so no path reaches the file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ..app import control_of
from ..errors import NotFound
from ..openapi import error_responses

routes = web.RouteTableDef()

WEB_DIR: Final = Path(__file__).resolve().parent.parent / "web"
# The repository's node_modules (``npm ci`` at the root, next to package.json), unless the
# configuration's ``node_modules`` says where they are (a non-editable install).
NODE_MODULES: Final = Path(__file__).resolve().parents[2] / "node_modules"
HLS_JS: Final = Path("hls.js", "dist", "hls.min.js")
DASH_JS: Final = Path("dashjs", "dist", "modern", "umd", "dash.all.min.js")


def _vendor(request: web.Request, name: Path, what: str) -> web.FileResponse:
    path = (control_of(request).config.node_modules or NODE_MODULES) / name
    if not path.is_file():
        raise NotFound(
            f"{what} is not installed: run `npm ci` at the repository root (or set node_modules)"
        )
    return _file(path)


_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The static files the page loads (index.html is served at /).
STATIC: Final = ("app.js", "app.css")

# The page talks to its own origin (the API), to edges and steering (any host: they are in
# the playback answer) and plays MSE blobs; hls.js may run its demuxer in a blob worker. No
# inline script or style, no plugins, no framing.
CSP: Final = (
    "default-src 'self'; connect-src 'self' http: https:; img-src 'self' http: https: data:; "
    "media-src 'self' blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def _file(path: Path, *, page: bool = False) -> web.FileResponse:
    if not path.is_file():
        raise NotFound("no such file")
    headers = {
        "Content-Type": _TYPES[path.suffix],
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if page:
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"  # never leak signed URLs or ids
    return web.FileResponse(path, headers=headers)


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return _file(WEB_DIR / "index.html", page=True)


@routes.get("/web/{name}")
async def static(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise NotFound("no such file")
    return _file(WEB_DIR / name)


@routes.get("/vendor/hls.js")
async def hls_js(request: web.Request) -> web.FileResponse:
    return _vendor(request, HLS_JS, "hls.js")


@routes.get("/vendor/dash.js")
async def dash_js(request: web.Request) -> web.FileResponse:
    return _vendor(request, DASH_JS, "dash.js")


# -- OpenAPI -------------------------------------------------------------------------------


def _text(description: str, media: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


OPENAPI: dict[str, Any] = {
    "paths": {
        "/": {
            "get": {
                "summary": "The web player (HTML page)",
                "tags": ["web"],
                "responses": {"200": _text("the page", "text/html"), **error_responses(404)},
            }
        },
        "/web/{name}": {
            "get": {
                "summary": "The web player's script and style sheet",
                "tags": ["web"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(STATIC)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    **error_responses(404),
                },
            }
        },
        "/vendor/hls.js": {
            "get": {
                "summary": "hls.js, as installed from the npm registry (npm ci)",
                "tags": ["web"],
                "responses": {
                    "200": _text("the library", "text/javascript"),
                    **error_responses(404),
                },
            }
        },
        "/vendor/dash.js": {
            "get": {
                "summary": "dash.js (npm package dashjs), as installed from the npm registry (npm ci)",
                "tags": ["web"],
                "responses": {
                    "200": _text("the library", "text/javascript"),
                    **error_responses(404),
                },
            }
        },
    },
    "schemas": {},
}
