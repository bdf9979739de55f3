"""Serving the master copies to edges: authenticated GET/HEAD with full Range support.

The origin runs on the edge's HTTP/1.1 server (``edge.server``) and decides
responses with the same RFC 9110 code (``edge.response``), so edges see the
same semantics from both. What differs is where bytes come from: a local
file goes out with ``sendfile`` (synchronously when its metadata is cached),
an S3 object is streamed range by range through the event loop, never held
whole in memory.

Every response carries a strong ETag and ``X-Checksum-XXH64`` (of the whole
object, from storage metadata), which the edge verifies when it fills a whole
object. Only requests with a fill credential are served (401 otherwise), and
only files of published titles: ``v/<title>/...`` is visible once the title's
``manifest.json`` is stored, which publishing writes last.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cachetools import TTLCache

from edge.http1 import Request
from edge.metrics import Histogram
from edge.ranges import unsatisfied_range
from edge.response import Plan, build, evaluate, not_modified
from edge.server import Connection, ConnectionAborted, http_date_now, simple_response
from edge.tokens import redact

from .catalog import CatalogFeed
from .storage import InvalidKey, ObjectInfo, Storage, StorageError, check_key

log = logging.getLogger("origin.server")
access = logging.getLogger("origin.access")

Answer = bool | Coroutine[Any, Any, bool]
KNOWN_METHODS = frozenset({"POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_MISSING = object()


class OriginStats:
    """Plain counters on the hot path; origin.metrics turns them into Prometheus families."""

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.bytes_served = 0
        # Exported from 0, so that increase() sees the first failure (no series to start from
        # would hide it from Prometheus' OriginStorageErrors alert).
        self.storage_errors: dict[str, int] = {"stat": 0, "read": 0}
        self.auth_failures: dict[str, int] = {}
        self.storage_latency = Histogram()

    def count(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1


def authorized(header: str | None, tokens: list[str]) -> bool:
    """Bearer token check in constant time per candidate (the list is short)."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    got = token.strip().encode()
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(got, t.encode())
    return ok


class OriginHandler:
    def __init__(
        self,
        storage: Storage,
        feed: CatalogFeed,
        stats: OriginStats,
        *,
        fill_tokens: Callable[[], list[str]],
        catalog_tokens: Callable[[], list[str]],
        metadata_ttl: float = 5.0,
        max_ranges: int = 16,
        access_log: bool = True,
        special: dict[str, Callable[[], tuple[int, str, bytes]]] | None = None,
    ) -> None:
        self.storage = storage
        self.feed = feed
        self.stats = stats
        self.fill_tokens = fill_tokens
        self.catalog_tokens = catalog_tokens
        self.max_ranges = max_ranges
        self.access_log = access_log
        self.special = special or {}
        ttl = max(metadata_ttl, 0.001)
        # Hot metadata, positive and negative: an edge fleet asks for the same few objects.
        self.meta: TTLCache[str, ObjectInfo | None] = TTLCache(maxsize=65536, ttl=ttl)

    # -- bookkeeping ---------------------------------------------------------------

    def _done(self, conn: Connection, req: Request, t0: float, status: int, sent: int) -> None:
        self.stats.count(status)
        self.stats.bytes_served += sent
        if self.access_log:
            access.info(
                "event=request method=%s path=%s status=%d bytes=%d ms=%.2f peer=%s",
                req.method,
                redact(req.path),  # a player's signed token never reaches the log
                status,
                sent,
                (time.perf_counter() - t0) * 1000,
                conn.peer,
            )

    def _simple(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        status: int,
        message: str,
        keep: bool,
        extra: str = "",
    ) -> bool:
        conn.write(
            simple_response(
                status,
                message,
                close=not keep,
                extra=extra,
                head_only=req.method == "HEAD",
                server="opencdn-origin",
            )
        )
        self._done(conn, req, t0, status, 0)
        return keep

    # -- entry point ----------------------------------------------------------------

    def __call__(self, conn: Connection, req: Request) -> Answer:
        t0 = time.perf_counter()
        keep = req.keep_alive
        method = req.method
        if method != "GET" and method != "HEAD":
            if method in KNOWN_METHODS:
                return self._simple(
                    conn, req, t0, 405, f"{method} not allowed", keep, "Allow: GET, HEAD\r\n"
                )
            return self._simple(conn, req, t0, 501, f"unknown method {method}", keep)
        path = req.path
        special = self.special.get(path)
        if special is not None:
            code, ctype, body = special()
            head = (
                f"HTTP/1.1 {code} {'OK' if code == 200 else 'Service Unavailable'}\r\n"
                f"Date: {http_date_now()}\r\nServer: opencdn-origin\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
            ).encode()
            conn.write(head if method == "HEAD" else head + body)
            self._done(conn, req, t0, code, 0 if method == "HEAD" else len(body))
            return keep

        if path == "/catalog/feed":
            if not authorized(req.headers.get("authorization"), self.catalog_tokens()):
                return self._unauthorized(conn, req, t0, keep, "catalog")
            return self._feed(conn, req, t0, keep)
        if not authorized(req.headers.get("authorization"), self.fill_tokens()):
            return self._unauthorized(conn, req, t0, keep, "fill")
        try:
            key = check_key(path[1:])
        except InvalidKey:
            return self._simple(conn, req, t0, 404, "not found", keep)
        info = self.meta.get(key, _MISSING)
        marker = _marker(key)
        published = self.meta.get(marker, _MISSING) if marker else True
        if info is None or published is None:
            # Known missing (cached for metadata_ttl), or its title is not published.
            return self._simple(conn, req, t0, 404, "not found", keep)
        if info is _MISSING or published is _MISSING:
            return self._slow(conn, req, t0, keep, key, marker)
        assert isinstance(info, ObjectInfo)
        local = self.storage.local_path(key)
        if local is None:
            return self._slow(conn, req, t0, keep, key, marker)
        return self._respond_local(conn, req, t0, keep, info, local)

    def _unauthorized(
        self, conn: Connection, req: Request, t0: float, keep: bool, what: str
    ) -> bool:
        self.stats.auth_failures[what] = self.stats.auth_failures.get(what, 0) + 1
        return self._simple(
            conn,
            req,
            t0,
            401,
            f"a {what} credential is required",
            keep,
            'WWW-Authenticate: Bearer realm="opencdn-origin"\r\n',
        )

    # -- deciding -------------------------------------------------------------------------

    def _plan(
        self, conn: Connection, req: Request, t0: float, keep: bool, info: ObjectInfo
    ) -> Plan | None:
        status, ranges, lm = evaluate(
            req.method, req.headers, info.etag, info.mtime, info.size, self.max_ranges
        )
        common = f"Date: {http_date_now()}\r\nServer: opencdn-origin\r\n"
        if status == 304:
            conn.write(not_modified(info.etag, lm, common, keep))
            self._done(conn, req, t0, 304, 0)
            return None
        if status == 412:
            self._simple(conn, req, t0, 412, "precondition failed", keep)
            return None
        if status == 416:
            extra = f"Content-Range: {unsatisfied_range(info.size)}\r\n"
            self._simple(conn, req, t0, 416, "range not satisfiable", keep, extra)
            return None
        common += f"X-Checksum-XXH64: {info.checksum}\r\n"
        return build(ranges, info.size, info.etag, lm, info.content_type, common, keep)

    # -- local files: sendfile ---------------------------------------------------------------

    def _respond_local(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        info: ObjectInfo,
        local: str,
        fresh: bool = False,
    ) -> Answer:
        """``fresh``: ``info`` was just read from storage; if the file still disagrees,
        answer rather than look again (a file being rewritten would loop otherwise)."""
        plan = self._plan(conn, req, t0, keep, info)
        if plan is None:
            return keep
        if req.method == "HEAD":
            conn.write(plan.head)
            self._done(conn, req, t0, plan.status, 0)
            return keep
        try:
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return self._stale(conn, req, t0, keep, info, fresh, "gone")
        try:
            if os.fstat(fd).st_size != info.size:
                # Replaced since its metadata was read: never send it under the old labels.
                os.close(fd)
                fd = -1
                return self._stale(conn, req, t0, keep, info, fresh, "changed")
        except OSError:
            os.close(fd)
            raise
        sent = 0
        parts = plan.parts
        try:
            conn.write(plan.head)
            for i, (part_head, r) in enumerate(parts):
                if part_head:
                    conn.write(part_head)
                n = conn.sendfile_now(fd, r.start, r.length)
                sent += n
                if n < r.length:
                    rest = [(b"", type(r)(r.start + n, r.end)), *parts[i + 1 :]]
                    coro = self._finish_local(conn, req, t0, keep, plan, fd, rest, sent)
                    fd = -1  # the continuation owns it now
                    return coro
            if plan.closing:
                conn.write(plan.closing)
        finally:
            if fd >= 0:
                os.close(fd)
        self._done(conn, req, t0, plan.status, sent)
        return keep

    def _stale(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        info: ObjectInfo,
        fresh: bool,
        why: str,
    ) -> Answer:
        self.meta.pop(info.key, None)
        self.storage.forget(info.key)
        if fresh:
            log.warning("event=object_unstable key=%s why=%s", info.key, why)
            return self._simple(
                conn, req, t0, 503, "object is being replaced", keep, "Retry-After: 1\r\n"
            )
        return self._slow(conn, req, t0, keep, info.key, _marker(info.key))

    async def _finish_local(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        plan: Plan,
        fd: int,
        rest: list[Any],
        sent: int,
    ) -> bool:
        try:
            for part_head, r in rest:
                if part_head:
                    conn.write(part_head)
                await conn.sendfile(fd, r.start, r.length)
                sent += r.length
            if plan.closing:
                conn.write(plan.closing)
            await conn.drain()
        except (ConnectionAborted, asyncio.CancelledError):
            self._done(conn, req, t0, 499, sent)
            raise
        finally:
            os.close(fd)
        self._done(conn, req, t0, plan.status, sent)
        return keep

    # -- the general path: metadata lookups, S3 streaming ---------------------------------------

    async def _stat(self, key: str) -> ObjectInfo | None:
        t = time.perf_counter()
        try:
            info = await self.storage.stat(key)
        except StorageError:
            self.stats.storage_errors["stat"] = self.stats.storage_errors.get("stat", 0) + 1
            raise
        finally:
            self.stats.storage_latency.observe(time.perf_counter() - t)
        self.meta[key] = info
        return info

    async def _slow(
        self, conn: Connection, req: Request, t0: float, keep: bool, key: str, marker: str | None
    ) -> bool:
        try:
            if marker is not None and await self._stat(marker) is None:
                return self._simple(conn, req, t0, 404, "not found", keep)
            info = await self._stat(key)
        except StorageError as exc:
            log.warning("event=storage_error op=stat key=%s error=%r", key, str(exc))
            return self._simple(
                conn, req, t0, 503, "storage unavailable", keep, "Retry-After: 2\r\n"
            )
        if info is None:
            return self._simple(conn, req, t0, 404, "not found", keep)
        local = self.storage.local_path(key)
        if local is not None:
            answer = self._respond_local(conn, req, t0, keep, info, local, fresh=True)
            if isinstance(answer, bool):
                await conn.drain()
                return answer
            return await answer
        plan = self._plan(conn, req, t0, keep, info)
        if plan is None:
            return keep
        conn.write(plan.head)
        if req.method == "HEAD":
            self._done(conn, req, t0, plan.status, 0)
            return keep
        sent = 0
        try:
            for part_head, r in plan.parts:
                if part_head:
                    conn.write(part_head)
                got = 0
                async for chunk in self.storage.read(key, r.start, r.end):
                    await conn.send(chunk)
                    got += len(chunk)
                    sent += len(chunk)
                if got != r.length:
                    raise StorageError(f"{key}: read {got} of {r.length} bytes")
            if plan.closing:
                conn.write(plan.closing)
            await conn.drain()
        except StorageError as exc:
            # The head is out: cut the response rather than send a wrong body.
            self.stats.storage_errors["read"] = self.stats.storage_errors.get("read", 0) + 1
            log.warning("event=storage_error op=read key=%s error=%r", key, str(exc))
            self._done(conn, req, t0, 499, sent)
            raise ConnectionAborted(str(exc)) from exc
        except (ConnectionAborted, asyncio.CancelledError):
            self._done(conn, req, t0, 499, sent)
            raise
        self._done(conn, req, t0, plan.status, sent)
        return keep

    # -- the catalog feed ---------------------------------------------------------------

    async def _feed(self, conn: Connection, req: Request, t0: float, keep: bool) -> bool:
        since = 0
        for part in req.query.split("&"):
            name, _, value = part.partition("=")
            if name == "since":
                if not value.isdigit() or len(value) > 18:
                    return self._simple(conn, req, t0, 400, "since must be a sequence number", keep)
                since = int(value)
        entries, last = self.feed.since(since)
        body = json.dumps({"titles": entries, "next": last}, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 200 OK\r\nDate: {http_date_now()}\r\nServer: opencdn-origin\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode()
        head_only = req.method == "HEAD"
        await conn.send(head if head_only else head + body)
        self._done(conn, req, t0, 200, 0 if head_only else len(body))
        return keep


def _marker(key: str) -> str | None:
    """The publication marker guarding ``key``: v/<title>/manifest.json for title files."""
    parts = key.split("/", 2)
    if len(parts) == 3 and parts[0] == "v":
        return f"v/{parts[1]}/manifest.json"
    return None
