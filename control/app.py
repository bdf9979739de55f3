"""The control plane service: ``create_app(config)``.

JSON over HTTP under ``/v1``; the OpenAPI document at ``/openapi.json`` lists every route
(control/openapi.py). One error shape (control/errors.py). Middlewares, outermost first:
errors (every failure in our shape; a 500 is logged, never detailed to the client), CORS
(the configured origins; preflights answered here), metrics and the access log line.

Resources live in one cleanup context (`_lifecycle`): the database (migrated at start), the
HTTP client session (steering, origin feed), the stores, and background tasks (origin feed
poller, recommendation schedule, catalog refresh for several instances).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import db as dbmod
from .config import ControlConfig
from .errors import (
    HTTP_CODES,
    ControlError,
    Forbidden,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)
from .fields import parse_json
from .metrics import Metrics
from .responses import respond
from .schema import MIGRATIONS

log = logging.getLogger("control")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Control:
    """Everything a handler needs; one per application (``request.app[CONTROL]``)."""

    def __init__(self, config: ControlConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.db: dbmod.Database = None  # type: ignore[assignment]  # set at start-up
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]
        # The stores, set at start-up (see _lifecycle); typed loosely to keep imports one-way.
        self.accounts: Any = None
        self.billing: Any = None
        self.catalog: Any = None
        self.library: Any = None
        self.home: Any = None
        self.playback: Any = None
        self.feed: Any = None
        self.fill: Any = None  # control.fill.FillFeed: the popularity feed for edge fill
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False
        # Singleton jobs (recommendation schedule, origin feed poller) run in the primary
        # worker only; every worker refreshes its own catalog index.
        self.primary = True
        # With several workers: this one's number and the directory where each publishes a
        # snapshot of its metrics for the others' /metrics answers.
        self.worker = 0
        self.metrics_dir: Path | None = None

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        self.tasks.append(asyncio.ensure_future(_logged(coro, name)))


async def _logged(coro: Awaitable[None], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("event=task_failed task=%s", name)


CONTROL = web.AppKey("control", Control)
SESSION = web.RequestKey("session", object)  # the request's authenticated session, cached


# -- request helpers used by the route modules -----------------------------------------------


def control_of(request: web.Request) -> Control:
    return request.app[CONTROL]


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; 415 for another content type, 413 above max_body."""
    ctype = request.content_type
    if ctype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = await request.read()  # bounded by client_max_size (config max_body) -> 413
    return parse_json(raw)


def bearer_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("sign in required")
    return token


async def session_of(request: web.Request) -> Any:
    """The request's valid session (control.accounts.Session), or 401."""
    cached = request.get(SESSION)
    if cached is not None:
        return cached
    s = await control_of(request).accounts.authenticate(bearer_token(request))
    request[SESSION] = s
    return s


async def admin_of(request: web.Request) -> Any:
    s = await session_of(request)
    if s.role != "admin":
        raise Forbidden("administrators only")
    return s


async def profile_of(request: web.Request, profile_id: str | None = None) -> Any:
    """The session's profile ``profile_id`` (default: the route's {profile_id}); 404 when it
    belongs to another account, so other accounts' ids cannot be probed."""
    pid = profile_id if profile_id is not None else request.match_info["profile_id"]
    accounts = control_of(request).accounts
    s = request.get(SESSION)
    if s is not None:
        return await accounts.get_profile(s.account_id, pid)
    s, profile = await accounts.authenticate_profile(bearer_token(request), pid)
    request[SESSION] = s
    return profile


# -- middlewares ---------------------------------------------------------------------------


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    return str(resource.canonical)


def _json_error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    return respond(error_body(code, message, details), status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    c = control_of(request)
    t0 = time.perf_counter()
    route = _route_name(request)
    try:
        response = await handler(request)
    except ControlError as exc:
        response = _json_error(exc.status, exc.code, exc.message, exc.details)
        retry = exc.details.get("retry_after") if exc.details else None
        if retry is not None:
            response.headers["Retry-After"] = str(max(1, int(retry + 0.999)))
        if exc.status == 401:
            # RFC 9110 section 11.6.1: a 401 names the scheme that would work (RFC 6750).
            response.headers["WWW-Authenticate"] = 'Bearer realm="opencdn"'

    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "error")
        message = exc.reason
        if exc.status == 413:
            message = f"request body larger than {c.config.max_body} bytes"
        response = _json_error(exc.status, code, message)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except dbmod.IntegrityError as exc:
        c.metrics.inc("control_db_errors", "integrity")
        log.warning("event=integrity_error route=%s error=%r", route, str(exc)[:200])
        response = _json_error(409, "conflict", "the change conflicts with existing data")
    except dbmod.UnavailableError as exc:
        c.metrics.inc("control_db_errors", "unavailable")
        log.error("event=database_unavailable route=%s error=%r", route, str(exc)[:200])
        response = _json_error(503, "unavailable", "the database is unavailable; retry")
        response.headers["Retry-After"] = "1"
    except dbmod.DatabaseError:
        c.metrics.inc("control_db_errors", "other")
        log.exception("event=database_error route=%s method=%s", route, request.method)
        response = _json_error(500, "internal", "internal error")
    except ConnectionResetError:
        # The client left while its answer was being written: nobody gets a response, so it
        # is neither a 500 nor an error of ours. Counted under its own status label.
        log.debug("event=client_gone route=%s method=%s", route, request.method)
        c.metrics.inc("control_requests", route, request.method, "client_closed")
        raise
    except Exception:
        log.exception("event=internal_error route=%s method=%s", route, request.method)
        response = _json_error(500, "internal", "internal error")
    # An error raised through cors_middleware left it no response to mark: mark it here, so
    # a browser lets the web player read the error (401, 409 stream_limit, 429...).
    _allow_origin(request, response)
    elapsed = time.perf_counter() - t0
    c.metrics.inc("control_requests", route, request.method, str(response.status))
    c.metrics.observe(route, elapsed)
    return response


_CORS_HEADERS = "Authorization, Content-Type"
_CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the web player (Fetch standard): only configured origins; no cookies are used
    (bearer tokens), so credentials are never allowed."""
    origins = control_of(request).config.cors_origins
    origin = request.headers.get("Origin")
    allowed = origin is not None and ("*" in origins or origin in origins)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            raise Forbidden("origin not allowed")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*" if "*" in origins else str(origin),
                "Access-Control-Allow-Methods": _CORS_METHODS,
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
    response = await handler(request)
    _allow_origin(request, response)
    return response


def _allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    """The CORS headers of an actual (not preflight) response to an allowed origin."""
    origins = control_of(request).config.cors_origins
    origin = request.headers.get("Origin")
    if origin is None or not ("*" in origins or origin in origins):
        return
    if "Access-Control-Allow-Origin" in response.headers or response.prepared:
        return
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else str(origin)
    response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    response.headers.add("Vary", "Origin")


class AccessLogger(aiohttp.abc.AbstractAccessLogger):
    """One structured line per request; the query string is left out (it may hold search
    terms, nothing secret, but keeps lines short) and no header is logged."""

    @property
    def enabled(self) -> bool:
        # Read once per connection by aiohttp: below INFO, log() is not even called (its
        # arguments, the peer address among them, cost something on every request).
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "event=request method=%s path=%s status=%d ms=%.1f remote=%s",
            request.method,
            request.path[:200],
            response.status,
            time * 1000,
            request.remote,
        )


# -- service routes ------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    c = control_of(request)
    try:
        await c.db.ping()
    except dbmod.DatabaseError as exc:
        # The reason goes to the log, not to whoever polls the health check.
        log.error("event=healthz_failed error=%r", str(exc)[:200])
        return respond({"status": "unavailable", "database": c.db.dialect}, status=503)
    return respond(
        {
            "status": "ok",
            "database": c.db.dialect,
            "titles": int(c.metrics.gauges["control_catalog_titles"]),
        }
    )


async def _metrics(request: web.Request) -> web.Response:
    c = control_of(request)
    registry = c.metrics.registry
    if c.metrics_dir is not None:
        from .metrics import Metrics, read_snapshots

        others = read_snapshots(c.metrics_dir, f"worker-{c.worker}.json")
        registry = Metrics.merged([c.metrics.snapshot(), *others]).registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _publish_metrics(c: Control) -> None:
    """Every second, this worker's snapshot for the others' /metrics (see control/metrics.py)."""
    assert c.metrics_dir is not None
    path = c.metrics_dir / f"worker-{c.worker}.json"
    while True:
        try:
            c.metrics.write_snapshot(path)
        except OSError as exc:
            log.warning("event=metrics_snapshot_failed error=%r", str(exc)[:200])
        await asyncio.sleep(1.0)


async def _openapi(request: web.Request) -> web.Response:
    from .openapi import document

    return respond(document(), headers={"Cache-Control": "max-age=60"})


# -- lifecycle -----------------------------------------------------------------------------


async def open_database(config: ControlConfig, now: float) -> dbmod.Database:
    d = config.database
    database = await dbmod.connect(d.url, pool_min=d.pool_min, pool_max=d.pool_max)
    try:
        applied = await dbmod.migrate(database, MIGRATIONS, now)
    except BaseException:
        await database.close()
        raise
    if applied:
        log.info("event=migrated versions=%s dialect=%s", applied, database.dialect)
    return database


@contextlib.asynccontextmanager
async def running(c: Control, *, background: bool = True) -> AsyncIterator[Control]:
    """Open the database (migrating it), build the stores and load the catalog; with
    ``background``, also start the feed poller, schedules and refresh loops. Used by the
    service (`_lifecycle`) and by the CLI's one-shot commands (recompute, create-admin)."""
    from .accounts import AccountStore
    from .billing import BillingStore
    from .catalog import CatalogStore
    from .feed import FeedReader
    from .fill import FillFeed
    from .home import HomeStore
    from .library import LibraryStore
    from .playback import PlaybackService

    c.db = await open_database(c.config, c.clock())
    c.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        c.accounts = AccountStore(c)
        c.billing = BillingStore(c)
        c.catalog = CatalogStore(c)
        c.library = LibraryStore(c)
        c.home = HomeStore(c)
        c.playback = PlaybackService(c)
        c.feed = FeedReader(c)
        c.fill = FillFeed(c)
        await c.catalog.load()
        if background:
            # The catalog index is long-lived: keep the collector from walking it on every
            # full collection (~70 ms per pass on 10k titles, measured in bench_search).
            # Collecting first keeps garbage out of the frozen set; it costs ~0.2 s, so only
            # where the catalog is big enough for the pauses to matter.
            if c.metrics.gauges["control_catalog_titles"] >= 1000:
                gc.collect()
            gc.freeze()
            if c.metrics_dir is not None:
                c.spawn(_publish_metrics(c), "metrics_snapshot")
            for store in (c.accounts, c.billing, c.catalog, c.feed, c.home, c.playback):
                start = getattr(store, "start", None)
                if start is not None:
                    start()
        c.started = True
        yield c
    finally:
        c.started = False
        for task in c.tasks:
            task.cancel()
        for task in c.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        c.tasks.clear()
        if c.playback is not None:
            c.playback.close()
        await c.http.close()
        await c.db.close()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    async with running(app[CONTROL]):
        yield


def create_app(
    config: ControlConfig,
    *,
    clock: Callable[[], float] = time.time,
    primary: bool = True,
    worker: int = 0,
    metrics_dir: Path | None = None,
) -> web.Application:
    from .routes import ROUTE_TABLES

    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[error_middleware, cors_middleware],
    )
    app[CONTROL] = Control(config, clock=clock)
    app[CONTROL].primary = primary
    app[CONTROL].worker = worker
    app[CONTROL].metrics_dir = metrics_dir
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app
