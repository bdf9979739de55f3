"""The edge application: ``create_app(config)`` wires store, upstreams and servers.

The returned aiohttp application serves the admin API (health, metrics, drain,
purge) and owns every resource through cleanup contexts, in order: the slice
store (index rebuilt from disk), the upstream client session and fills, and
the data-plane server (``edge.server``) that players talk to. Tearing the app
down stops them in reverse: drain the data plane, cancel fills, close files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import EdgeConfig
from .config import read_credential_file as read_credential
from .errors import HTTPError
from .fill import FillRunner, release_pins
from .handler import EdgeHandler
from .health import Health, HealthFacts, evaluate
from .http1 import normalize_path
from .metrics import EdgeCollector, EdgeStats
from .pull import Puller
from .server import Server
from .store import SliceStore
from .tokens import TokenVerifier, load_keys, split_token
from .upstream import Upstreams, UpstreamSpec

log = logging.getLogger("edge.app")


class Edge:
    """Live state shared by the admin API and the data plane."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.stats = EdgeStats()
        self.store: SliceStore | None = None
        self.puller: Puller | None = None
        self.upstreams: Upstreams | None = None
        self.handler: EdgeHandler | None = None
        self.server: Server | None = None
        self.verifier: TokenVerifier | None = None
        self.fill: FillRunner | None = None  # None when fill is disabled
        self.key_mtime = 0.0
        self.draining = False
        self.heartbeats_sent = 0
        self.heartbeat_failures = 0
        self.started_at = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EdgeCollector(self.snapshot))

    # -- health and metrics ---------------------------------------------------------

    def health(self) -> Health:
        store, up, puller = self.store, self.upstreams, self.puller
        facts = HealthFacts(
            draining=self.draining,
            failed_disks=tuple(str(d.root) for d in store.failed_disks) if store else (),
            last_disk_error_at=store.last_disk_error_at if store else 0.0,
            last_disk_error=store.last_disk_error if store else None,
            last_not_cached_at=puller.last_not_cached if puller else 0.0,
            upstream_last_error_at=up.last_error_at if up else 0.0,
            upstream_last_success_at=up.last_success_at if up else 0.0,
            upstream_last_error=up.last_error if up else None,
            cache_used=store.used if store else 0,
            cache_capacity=store.capacity if store else 0,
        )
        return evaluate(facts, time.time())

    def snapshot(self) -> dict[str, Any]:
        store, up, puller, server = self.store, self.upstreams, self.puller, self.server
        overload = dict(self.stats.overload)
        requests = dict(self.stats.requests)
        if server is not None:
            for k, v in server.rejected.items():
                overload[k] = overload.get(k, 0) + v
                # A 503 the server sent at accept time, before any handler saw a request,
                # is a response sent all the same (edge_requests_total{status="503"}).
                requests[503] = requests.get(503, 0) + v
        return {
            "stats": self.stats,
            "requests": requests,
            "fetches": up.fetches if up else 0,
            "upstream_failures": dict(up.failures) if up else {},
            "upstream_bytes": puller.upstream_bytes if puller else 0,
            "fills_started": puller.started if puller else 0,
            "coalesced": puller.coalesced if puller else 0,
            "resumes": puller.resumes if puller else 0,
            "checksum_failures": puller.checksum_failures if puller else 0,
            "not_cached": puller.not_cached if puller else 0,
            "inflight": len(puller.inflight) if puller else 0,
            "evictions": store.evictions if store else 0,
            "evicted_bytes": store.evicted_bytes if store else 0,
            "disk_errors": store.disk_errors if store else 0,
            "used": store.used if store else 0,
            "capacity": store.capacity if store else 0,
            "objects": store.objects if store else 0,
            "pinned": sum(d.index.pinned_bytes for d in store.disks) if store else 0,
            "disks_failed": len(store.failed_disks) if store else 0,
            "client_aborts": self.stats.client_aborts,
            "connections_total": server.connections_total if server else 0,
            "connections_open": len(server.conns) if server else 0,
            "egress": server.egress_rate if server else 0.0,
            "overload": overload,
            "bad_requests": dict(server.bad_requests) if server else {},
            "health": self.health().state,
            "fill": self.fill.metrics() if self.fill else None,
        }

    def health_body(self) -> tuple[int, str, bytes]:
        h = self.health()
        doc = {
            "state": h.state,
            "node": self.config.node_id,
            "site": self.config.site,
            "reasons": list(h.reasons),
        }
        return h.http_status, "application/json", json.dumps(doc).encode() + b"\n"

    def metrics_body(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    # -- operations -------------------------------------------------------------------

    def set_draining(self, on: bool) -> None:
        self.draining = on
        if self.handler is not None:
            self.handler.draining = on
        log.info("event=drain state=%s", "on" if on else "off")

    def reload_keys(self) -> bool:
        """Re-read the signing key file (key rotation without downtime)."""
        path = self.config.signing.key_file
        if path is None or self.verifier is None:
            return False
        try:
            mtime = os.stat(path).st_mtime
            if mtime == self.key_mtime:
                return False
            keys = load_keys(Path(path))
        except (OSError, ValueError) as exc:
            log.error("event=keys_reload_failed error=%r", str(exc))
            return False
        self.verifier.replace_keys(keys)
        self.key_mtime = mtime
        log.info("event=keys_reloaded keys=%d current=%s", len(keys.keys), keys.current)
        return True


EDGE = web.AppKey("edge", Edge)


def create_app(config: EdgeConfig) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    edge = Edge(config)
    app[EDGE] = edge
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_server_ctx)
    app.cleanup_ctx.append(_fill_ctx)
    app.cleanup_ctx.append(_heartbeat_ctx)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/admin/drain", _drain)
    app.router.add_post("/admin/undrain", _undrain)
    app.router.add_post("/admin/purge", _purge)
    app.router.add_post("/admin/reload-keys", _reload_keys)
    app.router.add_get("/admin/stats", _stats)
    app.router.add_post("/admin/fill", _fill_now)
    app.router.add_get("/admin/fill", _fill_status)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    edge = app[EDGE]
    cfg = edge.config.cache
    store = SliceStore(
        [(d.path, d.size) for d in cfg.dirs],
        slice_size=cfg.slice_size,
        max_open_files=cfg.max_open_files,
        reserve=cfg.reserve,
    )
    t0 = time.perf_counter()
    # Rebuilding walks the whole cache; keep the loop free while it runs.
    objects, removed = await asyncio.get_running_loop().run_in_executor(None, store.rebuild)
    log.info(
        "event=store_ready objects=%d removed=%d bytes=%d capacity=%d secs=%.2f",
        objects,
        removed,
        store.used,
        store.capacity,
        time.perf_counter() - t0,
    )
    edge.store = store
    yield
    store.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    edge = app[EDGE]
    cfg = edge.config
    specs = [
        UpstreamSpec(
            url=u.url,
            credential=read_credential(Path(u.credential_file)) if u.credential_file else None,
            connect_timeout=u.connect_timeout,
            read_timeout=u.read_timeout,
            fill_timeout=u.fill_timeout,
        )
        for u in cfg.upstreams
    ]
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        edge.upstreams = Upstreams(
            specs, session, retries=cfg.upstream_retries, node_id=cfg.node_id
        )
        assert edge.store is not None
        edge.puller = Puller(edge.store, edge.upstreams)
        yield
        await edge.puller.shutdown()


async def _server_ctx(app: web.Application) -> AsyncIterator[None]:
    edge = app[EDGE]
    cfg = edge.config
    if cfg.signing.key_file is not None:
        edge.verifier = TokenVerifier(load_keys(Path(cfg.signing.key_file)))
        edge.key_mtime = os.stat(cfg.signing.key_file).st_mtime
    assert edge.store is not None and edge.puller is not None
    handler = EdgeHandler(
        cfg,
        edge.store,
        edge.puller,
        edge.verifier,
        edge.stats,
        special={"/healthz": edge.health_body, "/metrics": edge.metrics_body},
    )
    handler.draining = edge.draining
    edge.handler = handler
    server = Server(handler, cfg.limits)
    handler.server = server
    await server.start(cfg.listen.host, cfg.listen.port)
    edge.server = server
    log.info(
        "event=edge_listening node=%s site=%s listen=%s:%d",
        cfg.node_id,
        cfg.site,
        cfg.listen.host,
        server.port,
    )
    watcher = asyncio.get_running_loop().create_task(_housekeeping(edge))
    yield
    watcher.cancel()
    edge.set_draining(True)
    await server.stop(cfg.limits.drain_timeout)


def heartbeat_doc(edge: Edge) -> dict[str, Any]:
    """What steering learns about this edge every ``steering.interval`` seconds."""
    cfg = edge.config
    health = edge.health()
    server, store = edge.server, edge.store
    conns = len(server.conns) if server else 0
    egress = server.egress_rate if server else 0.0
    load = conns / cfg.limits.max_connections
    if cfg.limits.max_egress:
        load = max(load, egress / cfg.limits.max_egress)
    return {
        "edge_id": cfg.node_id,
        "site": cfg.site,
        "state": health.state,
        "reasons": list(health.reasons),
        "draining": edge.draining,
        "load": round(load, 4),
        "connections": conns,
        "egress_bps": round(egress * 8),
        "disk_used": store.used if store else 0,
        "disk_capacity": store.capacity if store else 0,
        "cached_bytes": store.used if store else 0,
        "sent_at": time.time(),
        **({"fill": edge.fill.heartbeat()} if edge.fill is not None else {}),
    }


async def _fill_ctx(app: web.Application) -> AsyncIterator[None]:
    """The nightly fill runner: only with a steering service to read manifests from."""
    edge = app[EDGE]
    cfg = edge.config
    if not cfg.fill.enabled or cfg.steering.url is None:
        store = edge.store
        if store is not None and store.pinned_bytes:
            # Pins of an earlier fill would otherwise hold their slices forever: nothing
            # releases them while fill is off.
            slices, released = await release_pins(store)
            await store.flush_pins_async()
            log.info("event=fill_disabled_unpinned slices=%d bytes=%d", slices, released)
        yield
        return
    assert edge.store is not None and edge.puller is not None and edge.upstreams is not None
    runner = FillRunner(
        cfg,
        edge.store,
        edge.puller,
        edge.upstreams.session,
        lambda: edge.verifier.keys if edge.verifier is not None else None,
    )
    edge.fill = runner
    task = asyncio.get_running_loop().create_task(runner.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await runner.stop()


async def _heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    edge = app[EDGE]
    cfg = edge.config.steering
    if cfg.url is None:
        yield
        return
    headers = {}
    if cfg.credential_file is not None:
        headers["Authorization"] = f"Bearer {read_credential(Path(cfg.credential_file))}"
    timeout = aiohttp.ClientTimeout(total=max(cfg.interval, 1.0))
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        task = asyncio.get_running_loop().create_task(_send_heartbeats(edge, session, cfg.url))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _send_heartbeats(edge: Edge, session: aiohttp.ClientSession, url: str) -> None:
    interval = edge.config.steering.interval
    failing = False
    while True:
        try:
            async with session.post(url + "/heartbeat", json=heartbeat_doc(edge)) as r:
                ok = r.status < 300
                detail = f"status {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, str(exc) or type(exc).__name__
        edge.heartbeats_sent += ok
        edge.heartbeat_failures += not ok
        if ok == failing:  # log transitions only, not every beat
            failing = not ok
            if failing:
                log.warning("event=heartbeat_failing url=%s detail=%r", url, detail)
            else:
                log.info("event=heartbeat_ok url=%s", url)
        await asyncio.sleep(interval)


async def _housekeeping(edge: Edge) -> None:
    # Operators rotate keys by editing the key file: pick it up within seconds. Pin
    # changes are persisted in batches.
    while True:
        await asyncio.sleep(5.0)
        edge.reload_keys()
        if edge.store is not None:
            await edge.store.flush_pins_async()


# -- admin API ---------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    code, ctype, body = request.app[EDGE].health_body()
    return web.Response(status=code, body=body, content_type=ctype)


async def _metrics(request: web.Request) -> web.Response:
    _, _, body = request.app[EDGE].metrics_body()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _authorize(request: web.Request) -> None:
    path = request.app[EDGE].config.admin.credential_file
    if path is None:
        raise web.HTTPForbidden(text="admin credential not configured (admin.credential_file)\n")
    try:
        want = read_credential(Path(path))
    except (OSError, ValueError) as exc:
        raise web.HTTPInternalServerError(text="admin credential unreadable\n") from exc
    # RFC 9110 §11.1: the auth scheme is case-insensitive; the credential is not.
    scheme, _, got = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(got.strip().encode(), want.encode()):
        raise web.HTTPUnauthorized(
            text="missing or wrong admin credential\n", headers={"WWW-Authenticate": "Bearer"}
        )


async def _drain(request: web.Request) -> web.Response:
    _authorize(request)
    request.app[EDGE].set_draining(True)
    return web.json_response({"state": "draining"})


async def _undrain(request: web.Request) -> web.Response:
    _authorize(request)
    request.app[EDGE].set_draining(False)
    return web.json_response({"state": request.app[EDGE].health().state})


async def _purge(request: web.Request) -> web.Response:
    _authorize(request)
    raw = request.query.get("path", "")
    try:
        # The same normalisation as player requests, and a token prefix is not part of it.
        path = split_token(normalize_path(raw))[1]
    except HTTPError as exc:
        raise web.HTTPBadRequest(
            text=f"query parameter 'path' must be an absolute object path: {exc}\n"
        ) from exc
    if path.endswith("/"):
        raise web.HTTPBadRequest(text="purge takes one object path, not a directory\n")
    edge = request.app[EDGE]
    assert edge.store is not None
    if edge.puller is not None:
        edge.puller.invalidate(path)
    removed = edge.store.purge(path)
    return web.json_response({"path": path, "slices_removed": removed})


async def _reload_keys(request: web.Request) -> web.Response:
    _authorize(request)
    edge = request.app[EDGE]
    edge.key_mtime = 0.0
    return web.json_response({"reloaded": edge.reload_keys()})


async def _fill_now(request: web.Request) -> web.Response:
    """Start a fill now, whatever the window: 202 with the status, 409 if one runs."""
    _authorize(request)
    fill = request.app[EDGE].fill
    if fill is None:
        raise web.HTTPConflict(
            text="fill is disabled (needs steering.url and fill.enabled: true)\n"
        )
    if not fill.request():
        raise web.HTTPConflict(text="a fill is already running\n")
    status = fill.status()
    status["state"] = "filling"
    return web.json_response(status, status=202)


async def _fill_status(request: web.Request) -> web.Response:
    fill = request.app[EDGE].fill
    if fill is None:
        return web.json_response({"state": "idle", "enabled": False})
    return web.json_response({"enabled": True, **fill.status()})


async def _stats(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    snap = edge.snapshot()
    snap.pop("stats")
    h = edge.health()
    snap["health"] = {"state": h.state, "reasons": list(h.reasons)}
    snap["requests"] = {str(k): v for k, v in snap["requests"].items()}
    fill = snap.get("fill")
    if fill is not None:
        # Keyed by (source, result) tuples, which JSON cannot encode: "peer:ok".
        fill["objects"] = {f"{s}:{r}": n for (s, r), n in sorted(fill["objects"].items())}
    return web.json_response(snap)
