"""The origin application: ``create_app(config)`` owns storage, the feed and the server.

Like the edge, the aiohttp application is the owner of resources through cleanup
contexts (storage client, catalog feed database, the HTTP server on
``config.listen``); the server itself is the project's own (``edge.server``), which
answers /healthz, /metrics, /catalog/feed and the assets.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge.config import LimitsConfig
from edge.server import Server

from .catalog import CatalogFeed
from .config import OriginConfig, read_tokens
from .metrics import OriginCollector
from .server import OriginHandler, OriginStats
from .storage import Storage, open_storage

log = logging.getLogger("origin.app")

# Storage errors within this many seconds make the origin report itself degraded.
RECENT = 60.0


class Origin:
    def __init__(self, config: OriginConfig) -> None:
        self.config = config
        self.stats = OriginStats()
        self.storage: Storage | None = None
        self.feed: CatalogFeed | None = None
        self.server: Server | None = None
        self.last_storage_errors = 0
        self.degraded_until = 0.0
        self._tokens: dict[str, tuple[int, list[str]]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(OriginCollector(self.snapshot))

    def tokens(self, which: str) -> list[str]:
        """Accepted credentials; the file is re-read when it changes (one stat per request),
        so rotation needs no restart. An unreadable file keeps the last good list."""
        path = getattr(self.config, f"{which}_credentials_file")
        if path is None:
            return []
        cached = self._tokens.get(which)
        try:
            mtime = os.stat(path).st_mtime_ns
            if cached is not None and cached[0] == mtime:
                return cached[1]
            tokens = read_tokens(path)
        except (OSError, ValueError) as exc:
            log.error("event=credentials_unreadable which=%s error=%r", which, str(exc))
            return cached[1] if cached is not None else []
        self._tokens[which] = (mtime, tokens)
        return tokens

    def snapshot(self) -> dict[str, Any]:
        return {
            "stats": self.stats,
            "conns": len(self.server.conns) if self.server else 0,
            "titles": self.feed.published_count() if self.feed else 0,
        }

    def health_body(self) -> tuple[int, str, bytes]:
        errors = sum(self.stats.storage_errors.values())
        now = time.time()
        if errors != self.last_storage_errors:
            self.last_storage_errors = errors
            self.degraded_until = now + RECENT
        reasons = ["storage_errors: recent storage failures"] if now < self.degraded_until else []
        doc = {
            "state": "degraded" if reasons else "ok",
            "storage": self.config.storage.backend,
            "reasons": reasons,
        }
        return 200, "application/json", json.dumps(doc).encode() + b"\n"

    def metrics_body(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


ORIGIN = web.AppKey("origin", Origin)


def create_app(config: OriginConfig) -> web.Application:
    app = web.Application()
    app[ORIGIN] = Origin(config)
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(_server_ctx)
    return app


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    origin = app[ORIGIN]
    origin.storage = open_storage(origin.config.storage.spec())
    origin.feed = CatalogFeed(origin.config.catalog_db)
    yield
    origin.feed.close()
    await origin.storage.close()


async def _server_ctx(app: web.Application) -> AsyncIterator[None]:
    origin = app[ORIGIN]
    cfg = origin.config
    assert origin.storage is not None and origin.feed is not None
    if cfg.fill_credentials_file is None:
        log.warning("event=no_fill_credentials note=%r", "every asset request will get 401")
    handler = OriginHandler(
        origin.storage,
        origin.feed,
        origin.stats,
        fill_tokens=lambda: origin.tokens("fill"),
        catalog_tokens=lambda: origin.tokens("catalog"),
        metadata_ttl=cfg.metadata_ttl,
        access_log=cfg.access_log,
        special={"/healthz": origin.health_body, "/metrics": origin.metrics_body},
    )
    server = Server(handler, LimitsConfig())
    await server.start(cfg.listen.host, cfg.listen.port)
    origin.server = server
    log.info(
        "event=origin_listening listen=%s:%d storage=%s",
        cfg.listen.host,
        server.port,
        cfg.storage.backend,
    )
    yield
    await server.stop(5.0)
