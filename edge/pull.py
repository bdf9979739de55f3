"""Pull-through fills: one upstream fetch per missing slice, however many ask.

A ``Fill`` downloads one slice into the store's temporary file. Every client
that wants the slice meanwhile, the first one included, reads the part that
has arrived so far straight from that file with ``sendfile`` and waits for
more, so the first byte never waits for the whole slice and N concurrent
misses cost exactly one upstream fetch.

If the disk cannot take the slice (full of pinned data, failed, or a write
error midway) the fill keeps the bytes in memory instead (at most one slice)
and the clients are served all the same: the edge passes through and reports
itself degraded rather than failing players.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

import xxhash

from .errors import EdgeError, RangeNotSatisfiable, UpstreamError, UpstreamMismatch
from .store import ObjectMeta, SliceStore, SliceWriter, slice_key
from .upstream import Upstreams

log = logging.getLogger("edge.pull")

MAX_RESUMES = 2

# Called by a proactive fill after each chunk: (fill, bytes) -> waits as the rate limit says.
Throttle = Callable[["Fill", int], Awaitable[None]]


class SizeMismatch(EdgeError):
    """A proactive fill's source has the object at another size than the caller expects.

    Raised as soon as the first slice tells the size, so a wrong object costs one slice,
    not a whole download; that slice stays cached for the caller to purge.
    """

    reason = "size_mismatch"

    def __init__(self, path: str, meta: ObjectMeta, expected: int) -> None:
        super().__init__(f"{path} is {meta.size} bytes at the source, expected {expected}")
        self.meta = meta
        self.expected = expected


class Fill:
    """One slice on its way from upstream to disk."""

    __slots__ = (
        "_waiter",
        "avail",
        "body_offset",
        "closer",
        "done",
        "error",
        "expect_etag",
        "fd",
        "index",
        "key",
        "length",
        "mem",
        "meta",
        "path",
        "pinned",
        "purged",
        "readers",
        "source",
        "task",
        "throttle",
        "upstreams",
        "verify",
        "writer",
        "written",
    )

    def __init__(self, key: int, path: str, index: int, expect_etag: str | None, pinned: bool):
        self.key = key
        self.path = path
        self.index = index
        self.expect_etag = expect_etag
        self.pinned = pinned
        self.meta: ObjectMeta | None = None
        self.length = 0
        self.written = 0  # body bytes received so far
        self.avail = 0  # body bytes readers may use: the last byte waits for checksum verification
        self.verify = False
        self.purged = False  # purged while filling: serve the readers, cache nothing
        self.writer: SliceWriter | None = None  # None once committed, aborted or never cached
        self.closer: SliceWriter | None = None  # owns ``fd``; closed when the last reader leaves
        self.fd = -1
        self.body_offset = 0
        self.mem: bytearray | None = None
        self.done = False
        self.error: BaseException | None = None
        self.readers = 0
        self.source = ""
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        # The nightly fill's own source (a peer or parent) and rate limiter; None: the
        # configured upstreams, unthrottled (player misses).
        self.upstreams: Upstreams | None = None
        self.throttle: Throttle | None = None

    def _notify(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def wait(self) -> None:
        """Until more bytes, the metadata, completion or an error arrive."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    async def wait_meta(self) -> ObjectMeta:
        while self.meta is None:
            if self.error is not None:
                raise self.error
            await self.wait()
        return self.meta

    def _close_fd(self) -> None:
        if self.closer is not None and self.done and self.readers == 0:
            self.closer.close()
            self.closer = None

    def release(self) -> None:
        self.readers -= 1
        self._close_fd()


class Puller:
    """Starts and coalesces fills; counts what happens."""

    def __init__(
        self,
        store: SliceStore,
        upstreams: Upstreams,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.clock = clock
        self.inflight: dict[int, Fill] = {}
        self.idle = asyncio.Event()  # set whenever no fill is running (tests and drain wait on it)
        self.idle.set()
        self.started = 0
        self.coalesced = 0
        self.upstream_bytes = 0
        self.checksum_failures = 0
        self.not_cached = 0  # fills passed through without caching (disk full / failed)
        self.last_not_cached = 0.0
        self.resumes = 0

    def get(
        self,
        path: str,
        index: int,
        *,
        expect_etag: str | None = None,
        pinned: bool = False,
        source: Upstreams | None = None,
        throttle: Throttle | None = None,
    ) -> Fill:
        key = slice_key(path, index)
        fill = self.inflight.get(key)
        if fill is not None and fill.error is None:
            self.coalesced += 1
            return fill
        fill = Fill(key, path, index, expect_etag, pinned)
        fill.upstreams = source
        fill.throttle = throttle
        self.inflight[key] = fill
        self.idle.clear()
        self.started += 1
        fill.task = asyncio.get_running_loop().create_task(self._run(fill))
        return fill

    async def prefetch(
        self,
        path: str,
        *,
        pinned: bool = False,
        source: Upstreams | None = None,
        throttle: Throttle | None = None,
        expect_size: int | None = None,
    ) -> tuple[ObjectMeta, int]:
        """Proactive insert: cache every slice of ``path``, optionally pinned.

        The nightly fill's entry point; it shares coalescing, validation and the
        store's insert path with player misses. Returns the object's metadata and
        how many slices had to be fetched (0 when all were cached already).

        ``source`` replaces the configured upstreams (a peer or a parent) and
        ``throttle`` paces the download; a slice a player miss is already fetching
        is joined instead (its bytes are the player's, unthrottled). With ``expect_size``,
        ``SizeMismatch`` is raised as soon as the first slice shows another size.
        """
        store = self.store
        meta: ObjectMeta | None = None
        fetched = 0
        index = 0
        count = 1
        while index < count:
            h = store.open_slice(path, index)
            if h is not None and meta is not None and h.meta.etag != meta.etag:
                store.purge(path)  # a stale slice of an older version
                h = None
            if h is not None:
                meta = meta or h.meta
            else:
                fill = self.get(
                    path,
                    index,
                    expect_etag=meta.etag if meta else None,
                    pinned=pinned,
                    source=source,
                    throttle=throttle,
                )
                fill.readers += 1
                try:
                    while not fill.done:
                        await fill.wait()
                finally:
                    fill.release()
                if fill.error is not None:
                    raise fill.error
                meta = meta or fill.meta
                fetched += 1
            assert meta is not None
            if index == 0 and expect_size is not None and meta.size != expect_size:
                raise SizeMismatch(path, meta, expect_size)
            if pinned:
                store.set_pinned(path, index, True)
            count = max(1, -(-meta.size // store.slice_size))
            index += 1
        assert meta is not None
        return meta, fetched

    async def _run(self, fill: Fill) -> None:
        try:
            await self._download(fill)
        except asyncio.CancelledError:
            fill.error = UpstreamError("fill cancelled", reason="cancelled")
            raise
        except UpstreamError as exc:
            # Failures found mid-body (truncation, checksum, too many bytes) count like the rest.
            if not isinstance(exc, RangeNotSatisfiable) and fill.meta is not None:
                (fill.upstreams or self.upstreams).record_failure(exc.reason, fill.source, str(exc))
            if isinstance(exc, UpstreamMismatch) and exc.changed:
                # The upstream holds a new version: every cached slice of the old one is
                # stale. The request that found out fails; the next one starts afresh.
                n = self.store.purge(fill.path)
                log.warning("event=object_changed path=%s purged_slices=%d", fill.path, n)
            fill.error = exc
        except (EdgeError, OSError) as exc:
            fill.error = exc
        except Exception as exc:  # never leave waiters hanging
            log.exception("event=fill_crashed path=%s slice=%d", fill.path, fill.index)
            fill.error = exc
        finally:
            if fill.writer is not None and fill.error is not None:
                self.store.abort(fill.writer)
            fill.done = True
            if self.inflight.get(fill.key) is fill:
                del self.inflight[fill.key]
                if not self.inflight:
                    self.idle.set()
            fill._close_fd()
            fill._notify()

    async def _download(self, fill: Fill) -> None:
        size = self.store.slice_size
        start = fill.index * size
        end = start + size - 1
        up = fill.upstreams or self.upstreams
        try:
            resp = await up.fetch(fill.path, start, end, fill.expect_etag)
        except UpstreamError:
            # A proactive fill's own source (a peer) failed, and a player has joined the
            # fill meanwhile: players first, so fetch from the configured upstreams.
            if up is self.upstreams or fill.readers <= 1:
                raise
            up = fill.upstreams = self.upstreams
            fill.throttle = None
            resp = await up.fetch(fill.path, start, end, fill.expect_etag)
        meta = resp.meta
        fill.meta = meta
        fill.length = resp.length
        fill.source = resp.source
        writer = self.store.begin_insert(
            fill.path, fill.index, resp.length, meta, pinned=fill.pinned
        )
        if writer is None:
            fill.mem = bytearray()
            self.not_cached += 1
            self.last_not_cached = self.clock()
        else:
            fill.writer = fill.closer = writer
            fill.fd = writer.fd
            fill.body_offset = writer.body_offset
        fill._notify()

        hasher = xxhash.xxh64() if resp.whole and meta.checksum else None
        # With a checksum to verify, hold the last byte back until it matches, so a client
        # never receives a complete body that turns out to be wrong.
        fill.verify = hasher is not None
        body = resp.body
        resumes = 0
        while True:
            try:
                async for chunk in body:
                    if hasher is not None:
                        hasher.update(chunk)
                    self._append(fill, chunk)
                    self.upstream_bytes += len(chunk)
                    fill._notify()
                    if fill.throttle is not None:
                        await fill.throttle(fill, len(chunk))
                break
            except UpstreamError as exc:
                # Resume where the broken transfer stopped, from the same or the next upstream,
                # insisting on the same representation (ETag).
                if resumes >= MAX_RESUMES or isinstance(exc, UpstreamMismatch):
                    raise
                resumes += 1
                self.resumes += 1
                log.info(
                    "event=fill_resume path=%s slice=%d at=%d error=%r",
                    fill.path,
                    fill.index,
                    fill.written,
                    str(exc),
                )
                resp = await up.fetch(
                    fill.path, start + fill.written, start + fill.length - 1, meta.etag
                )
                if resp.length != fill.length - fill.written:
                    raise UpstreamMismatch("resumed range has the wrong length") from exc
                body = resp.body

        if fill.written != fill.length:
            raise UpstreamMismatch(f"got {fill.written} of {fill.length} bytes")
        if hasher is not None:
            if hasher.hexdigest() != meta.checksum:
                self.checksum_failures += 1
                raise UpstreamMismatch(
                    f"checksum mismatch for {fill.path}: {hasher.hexdigest()} != {meta.checksum}"
                )
            fill.avail = fill.written
            fill._notify()
        if fill.writer is not None and fill.purged:
            self.store.abort(fill.writer)
            fill.writer = None
        if fill.writer is not None:
            loop = asyncio.get_running_loop()
            # fsync is slow; never on the event loop.
            writer, fill.writer = fill.writer, None
            store = self.store
            fut = loop.run_in_executor(None, store.finish, writer)
            try:
                error = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # Shutting down: the thread runs on regardless, and the writer's descriptor
                # must stay open until it is done. Wait for it (through further cancels),
                # publish, then give up.
                while not fut.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(fut)
                store.publish(writer, fut.result())
                raise
            ok = store.publish(writer, error)
            if not ok:
                self.not_cached += 1
                self.last_not_cached = self.clock()

    def _append(self, fill: Fill, chunk: bytes) -> None:
        if fill.written + len(chunk) > fill.length:
            raise UpstreamMismatch("upstream sent more bytes than announced")
        if fill.mem is not None:
            fill.mem += chunk
        else:
            assert fill.writer is not None
            try:
                fill.writer.write(chunk)
            except OSError as exc:
                # The disk failed midway: keep serving from memory, stop caching this slice.
                self.store._disk_error(fill.writer.disk, exc)
                fill.mem = bytearray(
                    os.pread(fill.fd, fill.written, fill.body_offset) if fill.written else b""
                )
                if len(fill.mem) != fill.written:
                    raise UpstreamError("could not recover a failed slice write") from exc
                fill.mem += chunk
                self.store.abort(fill.writer)
                fill.writer = None  # readers may still be using fd: ``closer`` closes it later
                self.not_cached += 1
                self.last_not_cached = self.clock()
        fill.written += len(chunk)
        fill.avail = (
            fill.written - 1 if fill.verify and fill.written == fill.length else fill.written
        )

    def invalidate(self, path: str) -> None:
        """A purge: fills of ``path`` in progress finish for their readers but cache nothing."""
        for fill in self.inflight.values():
            if fill.path == path:
                fill.purged = True

    async def shutdown(self) -> None:
        tasks = [f.task for f in self.inflight.values() if f.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
