"""What the edge does with one request: admission, token, cache, ranges, body.

HTTP semantics follow RFC 9110: preconditions (§13.2.2) are evaluated against
the cached representation before ranges; If-Range (§13.1.5) decides whether a
Range is honoured; one range answers 206 with Content-Range, several answer
206 multipart/byteranges (§14.6), none satisfiable answers 416 with
``Content-Range: bytes */len`` (§15.5.17).

The handler is called synchronously from the server's ``data_received``. A
request whose slices are all cached is answered there and then (the hit
path); anything that must wait (a miss, or a client whose socket is full)
returns a coroutine that the server runs as the connection's task.

Once the response head is on the wire the status can no longer change, so any
later failure (upstream broke, object changed, disk error) aborts the
connection: the client sees a truncated response, never a wrong body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .errors import REASONS, EdgeError, NotFound, RangeNotSatisfiable, UpstreamError
from .http1 import Request
from .metrics import EdgeStats
from .pull import Fill, Puller
from .ranges import ByteRange, unsatisfied_range
from .response import CLOSE as _CLOSE
from .response import KEEP as _KEEP
from .response import Plan, build, evaluate, not_modified
from .server import Connection, ConnectionAborted, http_date_now, simple_response
from .store import ObjectMeta, SliceHandle, SliceStore
from .tokens import TokenRejected, TokenVerifier, redact, split_token

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
PREFLIGHT = (
    "Allow: GET, HEAD, OPTIONS\r\n"
    "Access-Control-Allow-Origin: *\r\n"
    "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
    "Access-Control-Allow-Headers: Range, If-Range, If-None-Match, If-Modified-Since, "
    "If-Match, If-Unmodified-Since\r\n"
    "Access-Control-Max-Age: 86400\r\n"
)
# Slices a response may span and still be answered from data_received (16 MiB at 2 MiB).
FAST_SLICES = 8

Answer = bool | Coroutine[Any, Any, bool]
# A response body as a list of pieces: bytes, or (slice handle, offset in its body, count).
Segment = bytes | tuple[SliceHandle, int, int]


def only_if_cached(req: Request) -> bool:
    """RFC 9111 §5.2.1.7: the client wants a stored response or 504, never an upstream fetch.

    Directive names are case-insensitive (§5.2); repeated fields arrive joined with ", ".
    Peers of a site ask each other this way during the nightly fill.
    """
    value = req.headers.get("cache-control")
    if value is None:
        return False
    return any(d.strip().lower() == "only-if-cached" for d in value.split(","))


def _log_path(path: str) -> str:
    """The request path as logged: never a token, wherever it appears."""
    return redact(split_token(path)[1])


class ObjectChanged(EdgeError):
    """Cached slices of one object disagree with the representation announced."""

    status = 502
    reason = "changed"


class NotCached(EdgeError):
    """An only-if-cached request for something not (or no longer) completely cached."""

    status = 504
    reason = "not_cached"


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

    # -- bookkeeping ---------------------------------------------------------------

    def _done(
        self, conn: Connection, req: Request, t0: float, status: int, cache: str, sent: int
    ) -> None:
        self.stats.count_status(status)
        if self.access_log:
            access.info(
                "event=request method=%s path=%s status=%d bytes=%d cache=%s ms=%.2f peer=%s",
                req.method,
                _log_path(req.path),
                status,
                sent,
                cache,
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
                status, message, close=not keep, extra=extra, head_only=req.method == "HEAD"
            )
        )
        self._done(conn, req, t0, status, "-", 0)
        return keep

    # -- entry point: synchronous ----------------------------------------------------

    def __call__(self, conn: Connection, req: Request) -> Answer:
        t0 = time.perf_counter()
        keep = req.keep_alive and not self.draining
        method = req.method
        if method != "GET" and method != "HEAD":
            if method == "OPTIONS":
                # CORS preflight for players on another origin that send Range or conditionals.
                conn.write(
                    (
                        f"HTTP/1.1 204 No Content\r\nDate: {http_date_now()}\r\n"
                        f"Server: opencdn-edge\r\n{PREFLIGHT}{_KEEP if keep else _CLOSE}"
                    ).encode()
                )
                self._done(conn, req, t0, 204, "-", 0)
                return keep
            if method in KNOWN_METHODS:
                return self._simple(
                    conn,
                    req,
                    t0,
                    405,
                    f"{method} not allowed",
                    keep,
                    "Allow: GET, HEAD, OPTIONS\r\n",
                )
            return self._simple(conn, req, t0, 501, f"unknown method {method}", keep)

        path = req.path
        special = self.special.get(path)
        if special is not None:
            code, ctype, body = special()
            head = (
                f"HTTP/1.1 {code} {REASONS.get(code, 'OK')}\r\nDate: {http_date_now()}\r\n"
                f"Server: opencdn-edge\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-store\r\n{_KEEP if keep else _CLOSE}"
            ).encode()
            conn.write(head if method == "HEAD" else head + body)
            self._done(conn, req, t0, code, "-", 0 if method == "HEAD" else len(body))
            return keep

        # Admission control: refuse at once so players fail over to another edge.
        server = self.server
        if self.draining or (server is not None and server.over_egress()):
            reason = "draining" if self.draining else "egress"
            self.stats.overload[reason] = self.stats.overload.get(reason, 0) + 1
            return self._simple(
                conn, req, t0, 503, reason, False, f"Retry-After: {self.retry_after}\r\n"
            )

        token, path = split_token(path)
        if not path.startswith(self.public):
            rejected = None
            if self.verifier is None:
                rejected = "missing"
            else:
                try:
                    self.verifier.check(token, path, conn.peer)
                except TokenRejected as exc:
                    rejected = exc.reason
            if rejected is not None:
                tr = self.stats.token_rejections
                tr[rejected] = tr.get(rejected, 0) + 1
                return self._simple(conn, req, t0, 403, f"forbidden: {rejected}", keep)

        # The hit path: the slice holding the first requested byte is cached.
        range_value = req.headers.get("range")
        h = self.store.open_slice(path, self._first_slice(range_value))
        cached_only = only_if_cached(req)
        if cached_only:
            return self._cached_only(conn, req, t0, keep, path, h)
        if h is None:
            return self._slow(conn, req, t0, keep, path)
        meta = h.meta
        plan = self._plan(conn, req, t0, keep, meta, True)
        if plan is None:
            return keep
        return self._serve_hit(conn, req, t0, keep, path, meta, plan)

    def _cached_only(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        path: str,
        h: SliceHandle | None,
    ) -> Answer:
        """``Cache-Control: only-if-cached``: answer from the cache or 504, never upstream.

        Every slice the response needs must be cached (for a whole-object GET: every slice);
        preconditions and ranges are evaluated as on any hit. A slice evicted between this
        check and its turn to be sent aborts the response rather than fetch it.
        """
        counts = self.stats.only_if_cached
        plan = None
        if h is not None:
            plan = self._plan(conn, req, t0, keep, h.meta, True, path)
            if plan is None:
                counts["hit"] += 1  # a complete short answer (304, 412, 416) from the cache
                return keep
        if plan is None or not plan.hit:
            counts["miss"] += 1
            return self._simple(conn, req, t0, 504, "not cached (only-if-cached)", keep)
        counts["hit"] += 1
        assert h is not None
        return self._serve_hit(conn, req, t0, keep, path, h.meta, plan, cached_only=True)

    def _serve_hit(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        path: str,
        meta: ObjectMeta,
        plan: Plan,
        cached_only: bool = False,
    ) -> Answer:
        if req.method == "HEAD":
            conn.write(plan.head)
            self.stats.ttfb["hit"].observe(time.perf_counter() - t0)
            self._done(conn, req, t0, plan.status, "hit", 0)
            return keep
        segments = self._cached_segments(path, meta, plan)
        if segments is None:
            # Some slice is missing or stale, or the body is large: the slow path resolves
            # (and fills) slices one at a time as it sends them.
            return self._slow(conn, req, t0, keep, path, cached_only)
        # Every handle in ``segments`` is acquired: neither evicted nor closed until released.
        conn.write(plan.head)
        self.stats.ttfb["hit"].observe(time.perf_counter() - t0)
        sent = 0
        stats = self.stats
        try:
            for i, seg in enumerate(segments):
                if type(seg) is bytes:
                    conn.write(seg)
                    continue
                h, off, n = seg  # type: ignore[misc]
                done = conn.sendfile_now(h.fd, h.body_offset + off, n)
                stats.bytes_hit += done
                stats.lookups_hit += 1
                sent += done
                if done < n:
                    # The client's socket is full: finish in a task, which takes over the
                    # handles still to send.
                    rest: list[Segment] = [(h, off + done, n - done), *segments[i + 1 :]]
                    for seg2 in segments[:i]:
                        if type(seg2) is not bytes:
                            self.store.release(seg2[0])  # type: ignore[index]
                    segments = []
                    return self._finish_hit(conn, req, t0, keep, plan.status, rest, sent)
        except OSError as exc:
            # A cached file went bad under us (short, I/O error): never serve it again.
            self._bad_slice(segments, exc)
            raise ConnectionAborted(str(exc)) from exc
        finally:
            for seg in segments:
                if type(seg) is not bytes:
                    self.store.release(seg[0])  # type: ignore[index]
        self._done(conn, req, t0, plan.status, "hit", sent)
        return keep

    def _bad_slice(self, segments: list[Segment], exc: OSError) -> None:
        for seg in segments:
            if type(seg) is not bytes:
                h = seg[0]  # type: ignore[index]
                log.warning(
                    "event=slice_unreadable path=%s slice=%d error=%r", h.path, h.index, str(exc)
                )
                self.store.purge(h.path)
                return

    @staticmethod
    def _first_slice_of(range_value: str | None, slice_size: int) -> int:
        # The slice holding the first requested byte, so a seek into a large object
        # does not need slice 0; malformed values just mean slice 0.
        if range_value is not None and range_value.startswith("bytes="):
            first = range_value[6:].split("-", 1)[0].strip()
            if first.isdigit() and len(first) < 19:
                return int(first) // slice_size
        return 0

    def _first_slice(self, range_value: str | None) -> int:
        return self._first_slice_of(range_value, self.slice_size)

    # -- deciding the response from metadata ------------------------------------------

    def _plan(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        meta: ObjectMeta,
        hit: bool,
        path: str = "",
    ) -> Plan | None:
        """The response head and ranges; None when a complete short answer was written.

        With ``path``, ``hit`` is recomputed for X-Cache: whether every slice the
        response needs is cached (the slow path may serve a mix).
        """
        status, ranges, lm = evaluate(
            req.method, req.headers, meta.etag, meta.last_modified, meta.size, self.max_ranges
        )
        if status == 304:
            common = f"Date: {http_date_now()}\r\nServer: opencdn-edge\r\n{CORS}"
            conn.write(not_modified(meta.etag, lm, common, keep))
            self._done(conn, req, t0, 304, "hit" if hit else "miss", 0)
            return None
        if status == 412:
            self._simple(conn, req, t0, 412, "precondition failed", keep)
            return None
        size = meta.size
        if status == 416:
            extra = f"Content-Range: {unsatisfied_range(size)}\r\n"
            self._simple(conn, req, t0, 416, "range not satisfiable", keep, extra)
            return None
        if path and hit:
            spans = ranges or ([ByteRange(0, size - 1)] if size else [])
            step = self.slice_size
            has = self.store.has_slice
            hit = all(
                has(path, i) for r in spans for i in range(r.start // step, r.end // step + 1)
            )
        common = (
            f"Date: {http_date_now()}\r\nServer: opencdn-edge\r\n"
            f"X-Cache: {'HIT' if hit else 'MISS'}\r\n{CORS}"
        )
        return build(ranges, size, meta.etag, lm, meta.content_type, common, keep, hit)

    def _cached_segments(self, path: str, meta: ObjectMeta, plan: Plan) -> list[Segment] | None:
        """The body as cached pieces, each handle acquired; None if it cannot be done at once.

        That is: a slice missing or stale, or more than ``FAST_SLICES`` of them (a big body
        would hold many descriptors; the slow path opens one slice at a time instead).
        """
        out: list[Segment] = []
        size = self.slice_size
        store = self.store
        count = 0
        for part_head, r in plan.parts:
            if part_head:
                out.append(part_head)
            pos, end = r.start, r.end
            while pos <= end:
                idx = pos // size
                base = idx * size
                n = min(end + 1, base + size) - pos
                count += 1
                h = store.open_slice(path, idx) if count <= FAST_SLICES else None
                if h is None or h.meta.etag != meta.etag or pos - base + n > h.length:
                    for seg in out:
                        if type(seg) is not bytes:
                            store.release(seg[0])  # type: ignore[index]
                    return None
                store.acquire(h)
                out.append((h, pos - base, n))
                pos += n
        if plan.closing:
            out.append(plan.closing)
        return out

    # -- finishing in a task ---------------------------------------------------------

    async def _finish_hit(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        status: int,
        rest: list[Segment],
        sent: int,
    ) -> bool:
        store = self.store
        handles = [seg[0] for seg in rest if type(seg) is not bytes]  # acquired by the caller
        try:
            for i, seg in enumerate(rest):
                if type(seg) is bytes:
                    await conn.send(seg)
                    continue
                h, off, n = seg  # type: ignore[misc]
                await conn.sendfile(h.fd, h.body_offset + off, n)
                self.stats.bytes_hit += n
                if i:
                    self.stats.lookups_hit += 1
                sent += n
            await conn.drain()
        except ConnectionAborted:
            self.stats.client_aborts += 1
            self._done(conn, req, t0, 499, "hit", sent)
            raise
        finally:
            for h in handles:
                store.release(h)
        self._done(conn, req, t0, status, "hit", sent)
        return keep

    async def _slow(
        self,
        conn: Connection,
        req: Request,
        t0: float,
        keep: bool,
        path: str,
        cached_only: bool = False,
    ) -> bool:
        try:
            meta, hit, pending = await self._locate(path, req.headers.get("range"), cached_only)
        except NotFound:
            return self._simple(conn, req, t0, 404, "not found", keep)
        except NotCached:
            return self._simple(conn, req, t0, 504, "not cached (only-if-cached)", keep)
        except RangeNotSatisfiable as exc:
            return self._simple(
                conn,
                req,
                t0,
                416,
                "range not satisfiable",
                keep,
                f"Content-Range: {unsatisfied_range(exc.size)}\r\n",
            )
        except UpstreamError as exc:
            return self._simple(conn, req, t0, 502, f"upstream: {exc.reason}", keep)
        cache = "hit" if hit else "miss"
        status = 499
        before = conn.bytes_out
        try:
            plan = self._plan(conn, req, t0, keep, meta, hit, path)
            if plan is None:
                await conn.drain()
                return keep
            status = plan.status
            cache = "hit" if plan.hit else "miss"
            if req.method == "HEAD":
                await conn.send(plan.head)
                self.stats.ttfb[cache].observe(time.perf_counter() - t0)
                self._done(conn, req, t0, status, cache, 0)
                return keep
            conn.write(plan.head)
            self.stats.ttfb[cache].observe(time.perf_counter() - t0)
            body_start = conn.bytes_out
            for part_head, r in plan.parts:
                if part_head:
                    conn.write(part_head)
                await self._send_range(conn, path, meta, r.start, r.end, pending, cached_only)
            if plan.closing:
                conn.write(plan.closing)
            await conn.drain()
            self._done(conn, req, t0, status, cache, conn.bytes_out - body_start)
            return keep
        except ConnectionAborted:
            self.stats.client_aborts += 1
            self._done(conn, req, t0, 499, cache, conn.bytes_out - before)
            raise
        except (EdgeError, OSError) as exc:
            # Only reached after the head was sent: abort rather than send a wrong body.
            self.stats.client_aborts += 1
            log.warning(
                "event=response_aborted path=%s error=%r",
                path,  # without the token
                f"{type(exc).__name__}: {exc}",
            )
            self._done(conn, req, t0, 499, cache, conn.bytes_out - before)
            raise ConnectionAborted(str(exc)) from exc
        finally:
            if pending is not None:
                pending.release()

    # -- finding the object -------------------------------------------------------------

    async def _locate(
        self, path: str, range_value: str | None, cached_only: bool = False
    ) -> tuple[ObjectMeta, bool, Fill | None]:
        """The object's metadata, from the cache if any slice we need is there.

        Unknown sizes are learned from the first fill's upstream answer.
        """
        idx = self._first_slice(range_value)
        h = self.store.open_slice(path, idx)
        if h is not None:
            return h.meta, True, None
        if cached_only:
            raise NotCached("evicted before an only-if-cached response started")
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

    # -- sending bodies ------------------------------------------------------------------

    async def _send_range(
        self,
        conn: Connection,
        path: str,
        meta: ObjectMeta,
        start: int,
        end: int,
        pending: Fill | None,
        cached_only: bool = False,
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
                    self._changed(path)
                await self._from_handle(conn, h, pos - base, n)
                stats.bytes_hit += n
            else:
                if cached_only:
                    # only-if-cached promised no upstream fetch: cut the response instead.
                    raise ObjectChanged("slice evicted during an only-if-cached response")
                stats.lookups_miss += 1
                if pending is not None and pending.index == idx:
                    fill = pending
                else:
                    fill = self.puller.get(path, idx, expect_etag=meta.etag)
                await self._from_fill(conn, fill, meta, pos - base, n)
                stats.bytes_miss += n
            pos += n

    def _changed(self, path: str) -> None:
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

    async def _from_fill(
        self, conn: Connection, fill: Fill, meta: ObjectMeta, rel: int, n: int
    ) -> None:
        fill.readers += 1
        try:
            while n > 0:
                while fill.avail <= rel:
                    if fill.error is not None:
                        raise fill.error
                    if fill.done:
                        raise ObjectChanged("slice shorter than the object's size implies")
                    await fill.wait()
                if fill.meta is not None and fill.meta.etag != meta.etag:
                    # A fill started by another request, for another version of the object.
                    self._changed(fill.path)
                m = min(fill.avail - rel, n)
                if fill.mem is not None:
                    await conn.send(bytes(fill.mem[rel : rel + m]))
                else:
                    await conn.sendfile(fill.fd, fill.body_offset + rel, m)
                rel += m
                n -= m
        finally:
            fill.release()
