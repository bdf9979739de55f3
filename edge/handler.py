"""What the edge does with one request: admission, token, cache, ranges, body.

HTTP semantics follow RFC 9110: preconditions (§13.2.2) are evaluated against
the cached representation before ranges; If-Range (§13.1.5) decides whether a
Range is honoured; one range answers 206 with Content-Range, several answer
206 multipart/byteranges (§14.6), none satisfiable answers 416 with
``Content-Range: bytes */len`` (§15.5.17).

Once the response head is on the wire the status can no longer change, so any
later failure (upstream broke, object changed, disk error) aborts the
connection: the client sees a truncated response, never a wrong body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from .conditionals import evaluate_preconditions, format_http_date, if_range_allows
from .errors import (
    REASONS,
    EdgeError,
    HTTPError,
    NotFound,
    RangeNotSatisfiable,
    UpstreamError,
)
from .http1 import Request
from .metrics import EdgeStats
from .pull import Fill, Puller
from .ranges import (
    UNSATISFIABLE,
    ByteRange,
    content_range,
    make_boundary,
    multipart_layout,
    unsatisfied_range,
)
from .ranges import parse_range as _parse_range
from .server import Connection, ConnectionAborted, http_date_now, simple_response
from .store import ObjectMeta, SliceHandle, SliceStore
from .tokens import TokenRejected, TokenVerifier, split_token

if TYPE_CHECKING:
    from .config import EdgeConfig
    from .server import Server

log = logging.getLogger("edge.handler")
access = logging.getLogger("edge.access")

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
CORS = (
    "Access-Control-Allow-Origin: *\r\n"
    "Access-Control-Expose-Headers: Content-Length, Content-Range, ETag, Accept-Ranges, X-Cache\r\n"
)


@lru_cache(maxsize=8192)
def _http_date(ts: int) -> str:
    return format_http_date(ts)


class ObjectChanged(EdgeError):
    """Cached slices of one object disagree with the representation announced."""

    status = 502
    reason = "changed"


class EdgeHandler:
    def __init__(
        self,
        config: EdgeConfig,
        store: SliceStore,
        puller: Puller,
        verifier: TokenVerifier | None,
        stats: EdgeStats,
        *,
        special: dict[str, Callable[[], tuple[int, str, bytes]]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.puller = puller
        self.verifier = verifier
        self.stats = stats
        self.public = tuple(config.signing.public_prefixes)
        self.max_ranges = config.limits.max_ranges
        self.retry_after = config.limits.retry_after
        self.slice_size = store.slice_size
        self.access_log = config.log.access_log
        self.special = special or {}
        self.draining = False
        self.server: Server | None = None

    # -- entry point -------------------------------------------------------------

    async def __call__(self, conn: Connection, req: Request) -> bool:
        t0 = time.perf_counter()
        status = 500
        sent = 0
        cache = "-"
        keep = req.keep_alive and not self.draining
        try:
            status, sent, cache, keep = await self._handle(conn, req, t0, keep)
        except ConnectionAborted:
            self.stats.client_aborts += 1
            status, keep = 499, False
            raise
        except (EdgeError, OSError) as exc:
            # Only reached after the head was sent: abort rather than send a wrong body.
            self.stats.client_aborts += 1
            log.warning(
                "event=response_aborted path=%s error=%r",
                split_token(req.path)[1],  # never log the token
                f"{type(exc).__name__}: {exc}",
            )
            status, keep = 499, False
            conn.abort()
            raise ConnectionAborted(str(exc)) from exc
        finally:
            self.stats.count_status(status)
            if self.access_log:
                access.info(
                    "event=request method=%s path=%s status=%d bytes=%d cache=%s ms=%.2f peer=%s",
                    req.method,
                    split_token(req.path)[1],
                    status,
                    sent,
                    cache,
                    (time.perf_counter() - t0) * 1000,
                    conn.peer,
                )
        return keep

    async def _reply(
        self,
        conn: Connection,
        status: int,
        message: str,
        keep: bool,
        extra: str = "",
        head_only: bool = False,
    ) -> tuple[int, int, str, bool]:
        await conn.send(
            simple_response(status, message, close=not keep, extra=extra, head_only=head_only)
        )
        return status, 0, "-", keep

    async def _handle(
        self, conn: Connection, req: Request, t0: float, keep: bool
    ) -> tuple[int, int, str, bool]:
        method = req.method
        head_only = method == "HEAD"
        if method != "GET" and not head_only:
            if method == "OPTIONS":
                return await self._preflight(conn, keep)
            if method in KNOWN_METHODS:
                return await self._reply(
                    conn, 405, f"{method} not allowed", keep, "Allow: GET, HEAD, OPTIONS\r\n"
                )
            return await self._reply(conn, 501, f"unknown method {method}", keep)

        path = req.path
        special = self.special.get(path)
        if special is not None:
            code, ctype, body = special()
            head = (
                f"HTTP/1.1 {code} {REASONS.get(code, 'OK')}\r\nDate: {http_date_now()}\r\n"
                f"Server: opencdn-edge\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-store\r\n{'Connection: keep-alive' if keep else 'Connection: close'}\r\n\r\n"
            ).encode()
            await conn.send(head if head_only else head + body)
            return code, 0 if head_only else len(body), "-", keep

        # Admission control: refuse at once so players fail over to another edge.
        server = self.server
        if self.draining or (server is not None and server.over_egress()):
            reason = "draining" if self.draining else "egress"
            self.stats.overload[reason] = self.stats.overload.get(reason, 0) + 1
            return await self._reply(
                conn, 503, reason, False, f"Retry-After: {self.retry_after}\r\n", head_only
            )

        token, path = split_token(path)
        if not path.startswith(self.public):
            if self.verifier is None:
                self.stats.token_rejections["missing"] = (
                    self.stats.token_rejections.get("missing", 0) + 1
                )
                return await self._reply(conn, 403, "forbidden: missing", keep, head_only=head_only)
            try:
                self.verifier.check(token, path, conn.peer)
            except TokenRejected as exc:
                r = exc.reason
                self.stats.token_rejections[r] = self.stats.token_rejections.get(r, 0) + 1
                return await self._reply(conn, 403, f"forbidden: {r}", keep, head_only=head_only)

        headers = req.headers
        range_value = headers.get("range")
        try:
            meta, hit, pending = await self._locate(path, range_value)
        except NotFound:
            return await self._reply(conn, 404, "not found", keep, head_only=head_only)
        except RangeNotSatisfiable as exc:
            return await self._reply(
                conn,
                416,
                "range not satisfiable",
                keep,
                f"Content-Range: {unsatisfied_range(exc.size)}\r\n",
                head_only,
            )
        except UpstreamError as exc:
            return await self._reply(
                conn, 502, f"upstream: {exc.reason}", keep, head_only=head_only
            )
        try:
            return await self._respond(conn, req, t0, keep, path, meta, hit, pending)
        finally:
            if pending is not None:
                pending.release()

    async def _respond(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        path: str,
        meta: ObjectMeta,
        hit: bool,
        pending: Fill | None,
    ) -> tuple[int, int, str, bool]:
        method = req.method
        head_only = method == "HEAD"
        headers = req.headers
        range_value = headers.get("range")
        cache = "hit" if hit else "miss"

        pre = evaluate_preconditions(method, headers, meta.etag, meta.last_modified)
        if pre == 304:
            # RFC 9110 §15.4.5: the validators a 200 would carry, no body.
            head = (
                f"HTTP/1.1 304 Not Modified\r\nDate: {http_date_now()}\r\nServer: opencdn-edge\r\n"
                f"ETag: {meta.etag}\r\nLast-Modified: {_http_date(meta.last_modified)}\r\n"
                f"{CORS}{'Connection: keep-alive' if keep else 'Connection: close'}\r\n\r\n"
            ).encode()
            await conn.send(head)
            return 304, 0, cache, keep
        if pre == 412:
            return await self._reply(conn, 412, "precondition failed", keep, head_only=head_only)

        size = meta.size
        ranges = None
        if range_value is not None:
            if_range = headers.get("if-range")
            if if_range is None or if_range_allows(if_range, meta.etag, meta.last_modified):
                ranges = _parse_range(range_value, size, self.max_ranges)
        if ranges is UNSATISFIABLE:
            return await self._reply(
                conn,
                416,
                "range not satisfiable",
                keep,
                f"Content-Range: {unsatisfied_range(size)}\r\n",
                head_only,
            )

        common = (
            f"Date: {http_date_now()}\r\nServer: opencdn-edge\r\nAccept-Ranges: bytes\r\n"
            f"ETag: {meta.etag}\r\nLast-Modified: {_http_date(meta.last_modified)}\r\n"
            f"X-Cache: {'HIT' if hit else 'MISS'}\r\n{CORS}"
            f"{'Connection: keep-alive' if keep else 'Connection: close'}\r\n\r\n"
        )
        if not ranges:
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {meta.content_type}\r\n"
                f"Content-Length: {size}\r\n{common}"
            ).encode()
            parts: list[tuple[bytes, ByteRange]] = [(b"", ByteRange(0, size - 1))] if size else []
            closing = b""
            status = 200
        elif len(ranges) == 1:
            r = ranges[0]
            head = (
                f"HTTP/1.1 206 Partial Content\r\nContent-Type: {meta.content_type}\r\n"
                f"Content-Range: {content_range(r, size)}\r\nContent-Length: {r.length}\r\n{common}"
            ).encode()
            parts = [(b"", r)]
            closing = b""
            status = 206
        else:
            boundary = make_boundary()
            parts, closing, total = multipart_layout(ranges, size, meta.content_type, boundary)
            head = (
                "HTTP/1.1 206 Partial Content\r\n"
                f"Content-Type: multipart/byteranges; boundary={boundary}\r\n"
                f"Content-Length: {total}\r\n{common}"
            ).encode()
            status = 206

        if head_only:
            await conn.send(head)
            self.stats.ttfb[cache].observe(time.perf_counter() - t0)
            return status, 0, cache, keep
        # MSG_MORE lets the head share a packet with the body, but only a hit's body is ready
        # at once; on a miss the kernel would hold the head back while the upstream answers.
        await conn.send(head, more=hit and bool(parts))
        self.stats.ttfb[cache].observe(time.perf_counter() - t0)
        before = conn.bytes_out
        for part_head, r in parts:
            if part_head:
                await conn.send(part_head, more=hit)
            await self._send_range(conn, path, meta, r.start, r.end, pending)
        if closing:
            await conn.send(closing)
        return status, conn.bytes_out - before, cache, keep

    async def _preflight(self, conn: Connection, keep: bool) -> tuple[int, int, str, bool]:
        # CORS preflight for players on another origin that send Range or conditionals.
        head = (
            f"HTTP/1.1 204 No Content\r\nDate: {http_date_now()}\r\nServer: opencdn-edge\r\n"
            "Allow: GET, HEAD, OPTIONS\r\n"
            "Access-Control-Allow-Origin: *\r\n"
            "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
            "Access-Control-Allow-Headers: Range, If-Range, If-None-Match, If-Modified-Since, "
            "If-Match, If-Unmodified-Since\r\n"
            "Access-Control-Max-Age: 86400\r\n"
            f"{'Connection: keep-alive' if keep else 'Connection: close'}\r\n\r\n"
        ).encode()
        await conn.send(head)
        return 204, 0, "-", keep

    # -- finding the object ---------------------------------------------------------

    async def _locate(
        self, path: str, range_value: str | None
    ) -> tuple[ObjectMeta, bool, Fill | None]:
        """The object's metadata, from the cache if any slice we need is there.

        The slice to look at first is the one holding the first requested byte
        (so a seek into a large object does not fetch slice 0); unknown sizes
        are learned from the first fill's upstream answer.
        """
        idx = 0
        if range_value is not None and range_value.startswith("bytes="):
            first = range_value[6:].split("-", 1)[0].strip()
            if first.isdigit() and len(first) < 19:
                idx = int(first) // self.slice_size
        h = self.store.open_slice(path, idx)
        if h is not None:
            return h.meta, True, None
        if idx:
            h = self.store.open_slice(path, 0)
            if h is not None:
                return h.meta, False, None
        fill = self.puller.get(path, idx)
        # Hold the fill's file open until this request is done with it (see Fill.release).
        fill.readers += 1
        try:
            return await fill.wait_meta(), False, fill
        except RangeNotSatisfiable:
            fill.release()
            if not idx:
                raise
        except BaseException:
            fill.release()
            raise
        # The first range starts beyond the object. That alone does not make the answer 416
        # (the header may be invalid, other ranges may fit, preconditions come first), so
        # learn the representation from its first slice and decide as on a hit.
        fill = self.puller.get(path, 0)
        fill.readers += 1
        try:
            return await fill.wait_meta(), False, fill
        except BaseException:
            fill.release()
            raise

    # -- sending bodies -----------------------------------------------------------

    async def _send_range(
        self,
        conn: Connection,
        path: str,
        meta: ObjectMeta,
        start: int,
        end: int,
        pending: Fill | None,
    ) -> None:
        store = self.store
        stats = self.stats
        size = self.slice_size
        pos = start
        while pos <= end:
            idx = pos // size
            base = idx * size
            n = min(end + 1, base + size) - pos
            h = (
                None
                if pending is not None and pending.index == idx
                else store.open_slice(path, idx)
            )
            if h is not None:
                stats.lookups_hit += 1
                if h.meta.etag != meta.etag:
                    self._changed(path, meta)
                await self._from_handle(conn, h, pos - base, n)
                stats.bytes_hit += n
            else:
                stats.lookups_miss += 1
                if pending is not None and pending.index == idx:
                    fill = pending
                else:
                    fill = self.puller.get(path, idx, expect_etag=meta.etag)
                await self._from_fill(conn, fill, pos - base, n)
                stats.bytes_miss += n
            pos += n

    def _changed(self, path: str, meta: ObjectMeta) -> None:
        n = self.store.purge(path)
        log.warning("event=object_changed path=%s purged_slices=%d", path, n)
        raise ObjectChanged(f"{path} changed upstream")

    async def _from_handle(self, conn: Connection, h: SliceHandle, rel: int, n: int) -> None:
        if rel + n > h.length:
            raise ObjectChanged("slice shorter than the object's size implies")
        store = self.store
        store.acquire(h)
        try:
            await conn.sendfile(h.fd, h.body_offset + rel, n)
        finally:
            store.release(h)

    async def _from_fill(self, conn: Connection, fill: Fill, rel: int, n: int) -> None:
        fill.readers += 1
        try:
            while n > 0:
                while fill.avail <= rel:
                    if fill.error is not None:
                        raise fill.error
                    if fill.done:
                        raise ObjectChanged("slice shorter than the object's size implies")
                    await fill.wait()
                m = min(fill.avail - rel, n)
                if fill.mem is not None:
                    await conn.send(bytes(fill.mem[rel : rel + m]), more=m < n)
                else:
                    await conn.sendfile(fill.fd, fill.body_offset + rel, m)
                rel += m
                n -= m
        finally:
            fill.release()


def http_status_of(exc: BaseException) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    return 500
