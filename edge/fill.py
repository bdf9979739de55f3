"""The nightly fill runner: the I/O shell around ``edge.fillplan``.

Owned by a cleanup context of the edge application (``edge.app``). Outside the fill window it
sleeps until the window's next start (computed from the window, not polled; the sleep is cut
into hours so a clock step is noticed). Inside, it fetches this edge's manifest from steering
(``GET <steering.url>/fill/manifest/<node_id>``; on a failure it keeps the manifest it has,
fills from that, and tries again every ``fill.manifest_retry``), applies it (pins the present
slices of its objects, unpins every slice of objects that left it), and downloads what is
missing, ``fill.concurrency`` objects at a time, each from the first source that has it:

1. the peers of its site, holders first, with ``Cache-Control: only-if-cached`` and a
   short-lived token this edge signs with its own signing keys (a 504 means "not there");
2. each of ``fill.parents``, which pull through;
3. the origin: the configured upstreams.

The bytes go through ``Puller.prefetch``: the same coalescing, validation and crash-safe
insert path (temporary file, fsync, rename) as player misses, pinned. An object counts only
once all its slices are stored and their bytes, read back, match the manifest's xxh64; on a
mismatch it is purged, counted, and the next source is tried.

Players first: fill downloads share a token bucket (``fill.rate``); a player asking for a
slice the fill is fetching joins that fill like any coalesced miss, and while a player is
attached the limiter does not hold the slice back (its bytes are still booked, so the fill
slows down afterwards instead). Slices the fill has not started are fetched by the player's
own, unthrottled fills, which the fill then joins. If the fill's peer source fails while a
player waits on the slice, the slice is fetched from the upstreams at once. Manifest retries
follow ``fill.manifest_retry``, not steering's Retry-After.

At the window's end the workers are cancelled: slices in flight finish (at most
``concurrency``), whole objects not yet verified are resumed next night. The manifest and the
set of verified objects are kept in ``fill.state.json`` in the first cache directory (written
atomically), so a restart resumes without downloading again what it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import xxhash

from .config import EdgeConfig, read_credential_file
from .errors import EdgeError, NotFound
from .fillplan import (
    FillManifest,
    FillObject,
    ManifestError,
    TokenBucket,
    WorkItem,
    left_paths,
    parse_manifest,
    plan_work,
    progress,
    slice_count,
)
from .pull import Fill, Puller, Throttle
from .store import ObjectMeta, SliceStore, write_atomic
from .tokens import SigningKeys, sign, signed_path
from .upstream import NotCached, Upstreams, UpstreamSpec

log = logging.getLogger("edge.fill")

STATE_FILE = "fill.state.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
PEER_TOKEN_TTL = 300  # seconds: long enough for one object, short enough to be useless later
SOURCES = ("peer", "parent", "origin")
# States of the heartbeat contract.
IDLE, WAITING, FILLING, DONE, ERROR = "idle", "waiting", "filling", "done", "error"
_MAX_SLEEP = 3600.0  # recompute the next start at least hourly (clock steps, DST)
_SAVE_EVERY = 5.0  # seconds between state-file writes while filling


class ManifestUnavailable(Exception):
    """Steering has no manifest for us now (503, network error, bad document)."""


def local_zone(name: str | None) -> tzinfo:
    """The window's time zone: the configured one, else the machine's (with its DST rules)."""
    if name is not None:
        return ZoneInfo(name)
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        with contextlib.suppress(ValueError, OSError, ZoneInfoNotFoundError):
            return ZoneInfo(env)
    with contextlib.suppress(ValueError, OSError), open("/etc/localtime", "rb") as f:
        return ZoneInfo.from_file(f, key="localtime")
    # No zone database entry: today's fixed offset (DST changes then need a restart).
    local = datetime.now().astimezone().tzinfo
    return local if local is not None else UTC


class FillRunner:
    """Schedules nightly fills and runs them; ``status()`` is what operators see."""

    def __init__(
        self,
        config: EdgeConfig,
        store: SliceStore,
        puller: Puller,
        session: aiohttp.ClientSession,
        keys: Callable[[], SigningKeys | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.cfg = config.fill
        self.store = store
        self.puller = puller
        self.session = session
        self.keys = keys
        self.clock = clock
        self.tz = local_zone(self.cfg.timezone)
        self.state = IDLE
        self.running = False
        self.manifest: FillManifest | None = None
        self.manifest_doc: dict[str, Any] | None = None
        self.done: set[str] = set()
        self.bytes = dict.fromkeys(SOURCES, 0)
        self.objects: dict[tuple[str, str], int] = {}
        self.verify_failures = 0
        self.manifest_fetches = 0
        self.last_error: str | None = None
        self.last_started_at: float | None = None
        self.last_finished_at: float | None = None
        self.next_start: float | None = None
        self.bucket = TokenBucket(self.cfg.rate, self.cfg.burst, time.monotonic)
        self.wake = asyncio.Event()  # an operator asked for a fill now
        self.finished = asyncio.Event()  # set whenever a fill run ends (tests, CLI)
        self._forced = False
        self._stopping = False
        self._dirty = False
        self._last_save = 0.0
        self.state_path = Path(config.cache.dirs[0].path) / STATE_FILE
        self._parents = [
            Upstreams(
                [
                    UpstreamSpec(
                        url=p.url,
                        credential=read_credential_file(p.credential_file)
                        if p.credential_file
                        else None,
                    )
                ],
                session,
                retries=config.upstream_retries,
                node_id=config.node_id,
            )
            for p in self.cfg.parents
        ]
        self._peers: dict[str, Upstreams] = {}

    # -- status -------------------------------------------------------------------------

    def progress(self) -> dict[str, int]:
        m = self.manifest
        p = progress(m.objects if m else (), self.done)
        return {
            "objects_total": p.objects_total,
            "objects_done": p.objects_done,
            "objects_left": p.objects_left,
            "bytes_total": p.bytes_total,
            "bytes_done": p.bytes_done,
            "bytes_left": p.bytes_left,
        }

    def heartbeat(self) -> dict[str, Any]:
        """The "fill" object of the heartbeat to steering."""
        p = self.progress()
        return {
            "state": self.state,
            "manifest": self.manifest.version if self.manifest else None,
            "objects_total": p["objects_total"],
            "objects_done": p["objects_done"],
            "bytes_total": p["bytes_total"],
            "bytes_done": p["bytes_done"],
            "window": str(self.cfg.window),
        }

    def status(self) -> dict[str, Any]:
        """GET /admin/fill."""
        m = self.manifest
        return {
            "state": self.state,
            "running": self.running,
            "window": str(self.cfg.window),
            "timezone": self.cfg.timezone,
            "manifest": m.version if m else None,
            "manifest_generated_at": m.generated_at if m else None,
            **self.progress(),
            "bytes_by_source": dict(self.bytes),
            "objects_by_result": {f"{s}:{r}": n for (s, r), n in sorted(self.objects.items())},
            "verify_failures": self.verify_failures,
            "last_error": self.last_error,
            "last_started_at": self.last_started_at,
            "last_finished_at": self.last_finished_at,
            "next_start": self.next_start,
        }

    def metrics(self) -> dict[str, Any]:
        p = self.progress()
        return {
            "bytes": dict(self.bytes),
            "objects": dict(self.objects),
            "verify_failures": self.verify_failures,
            "pending_objects": p["objects_left"],
            "pending_bytes": p["bytes_left"],
            "manifest_objects": p["objects_total"],
            "manifest_bytes": p["bytes_total"],
            "running": 1 if self.running else 0,
        }

    # -- scheduling ---------------------------------------------------------------------

    def request(self) -> bool:
        """Start a fill now, whatever the window (operators). False if one is running."""
        if self.running or self._forced:
            return False
        self._forced = True
        self.finished.clear()
        self.wake.set()
        return True

    async def run(self) -> None:
        """Forever: wait for the window (or an operator), fill, repeat."""
        await self._load_state()
        window = self.cfg.window
        while True:
            now = self.clock()
            if self._forced:
                await self._run_once(None)
                self._forced = False
                continue
            if window.inside(now, self.tz):
                end = window.next_end(now, self.tz)
                self.next_start = None
                await self._run_once(end)
                # Done (or out of retries) before the window closes: nothing more tonight,
                # unless an operator asks.
                await self._sleep_until(end)
                continue
            self.next_start = window.next_start(now, self.tz)
            if self.state not in (DONE, ERROR):
                self.state = WAITING
            log.info(
                "event=fill_waiting window=%s next_start=%.0f in_s=%.0f",
                window,
                self.next_start,
                self.next_start - now,
            )
            await self._sleep_until(self.next_start)

    async def _sleep_until(self, when: float) -> None:
        """Until ``when`` (epoch seconds) or an operator's request, at most an hour."""
        delay = min(max(when - self.clock(), 0.0), _MAX_SLEEP)
        if delay <= 0:
            return
        self.wake.clear()
        if self._forced:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)

    async def _run_once(self, end: float | None) -> None:
        """One night's fill; ``end`` is when the window closes (None: an operator's fill)."""
        self.running = True
        self.state = FILLING
        self.last_error = None
        self.last_started_at = self.clock()
        log.info("event=fill_start forced=%s end=%s", end is None, end)
        try:
            if end is None:
                await self._attempt(None)
            else:
                delay = max(end - self.clock(), 0.0)
                try:
                    async with asyncio.timeout(delay):
                        await self._attempt_until_manifest(end)
                except TimeoutError:
                    log.info("event=fill_window_closed %s", _kv(self.progress()))
        except Exception as exc:  # the runner must survive anything one night throws
            log.exception("event=fill_crashed")
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.running = False
            self.last_finished_at = self.clock()
            p = self.progress()
            if self.last_error is not None:
                self.state = ERROR
            elif self.manifest is not None and p["objects_left"] == 0:
                self.state = DONE
            else:
                self.state = WAITING if end is not None else ERROR
                if end is None and self.last_error is None:
                    self.last_error = f"{p['objects_left']} objects could not be filled"
            self.store.flush_pins()
            await self._save(force=True)
            log.info("event=fill_end state=%s %s", self.state, _kv(p))
            self.finished.set()

    async def _attempt_until_manifest(self, end: float) -> None:
        # Inside the window: keep trying to read tonight's manifest, filling from the one we
        # have meanwhile; the surrounding timeout stops this at the window's end.
        while True:
            if await self._attempt(end):
                return
            await asyncio.sleep(self.cfg.manifest_retry)

    async def _attempt(self, end: float | None) -> bool:
        """Read the manifest and fill from it (or from the current one). True if read."""
        try:
            self._apply(await self._fetch_manifest())
            got = True
        except ManifestUnavailable as exc:
            got = False
            self.last_error = f"manifest: {exc}"
            log.warning("event=fill_manifest_unavailable error=%r", str(exc))
        if self.manifest is not None:
            await self._fill_missing()
        if got:
            left = self.progress()["objects_left"]
            self.last_error = None if not left else f"{left} objects could not be filled"
        return got

    # -- manifest -----------------------------------------------------------------------

    async def _fetch_manifest(self) -> tuple[FillManifest, dict[str, Any]]:
        steering = self.config.steering
        assert steering.url is not None
        url = f"{steering.url}/fill/manifest/{self.config.node_id}"
        headers = {}
        if steering.credential_file is not None:
            token = read_credential_file(steering.credential_file)
            headers["Authorization"] = f"Bearer {token}"
        self.manifest_fetches += 1
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
        try:
            async with self.session.get(url, headers=headers, timeout=timeout) as r:
                if r.status != 200:
                    retry = r.headers.get("Retry-After", "")
                    raise ManifestUnavailable(
                        f"status {r.status}" + (f" retry-after {retry}" if retry else "")
                    )
                body = bytearray()
                async for chunk in r.content.iter_chunked(256 * 1024):
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise ManifestUnavailable("manifest larger than 256 MiB")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ManifestUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            doc = json.loads(body)
            manifest = parse_manifest(doc)
        except (ValueError, ManifestError) as exc:
            raise ManifestUnavailable(f"invalid manifest: {exc}") from exc
        if manifest.edge != self.config.node_id:
            raise ManifestUnavailable(f"manifest is for edge {manifest.edge!r}")
        return manifest, doc

    def _apply(self, got: tuple[FillManifest, dict[str, Any]]) -> None:
        """Switch to a new manifest: pins follow it; verified objects stay verified."""
        manifest, doc = got
        old = self.manifest
        if old is not None and old.version == manifest.version:
            self.manifest, self.manifest_doc = manifest, doc
            return
        unpinned = 0
        if old is not None:
            for o in left_paths(old.objects, manifest.objects):
                unpinned += self._pin(o, False)
        pinned = sum(self._pin(o, True) for o in manifest.objects)
        before = old.by_path() if old is not None else {}
        self.done = {
            o.path
            for o in manifest.objects
            if o.path in self.done and before.get(o.path, o).xxh64 == o.xxh64
        }
        self.manifest, self.manifest_doc = manifest, doc
        self._dirty = True
        self._update_peers()
        log.info(
            "event=fill_manifest version=%s objects=%d bytes=%d pinned_slices=%d "
            "unpinned_slices=%d",
            manifest.version,
            len(manifest.objects),
            manifest.bytes,
            pinned,
            unpinned,
        )

    def _pin(self, obj: FillObject, on: bool) -> int:
        n = 0
        for i in range(slice_count(obj.size, self.store.slice_size)):
            n += self.store.set_pinned(obj.path, i, on)
        return n

    def _update_peers(self) -> None:
        assert self.manifest is not None
        peers: dict[str, Upstreams] = {}
        for p in self.manifest.peers:
            up = self._peers.get(p.edge)
            if up is None or up.specs[0].url != p.url:
                spec = UpstreamSpec(
                    url=p.url,
                    headers=(("Cache-Control", "only-if-cached"),),
                    sign_path=self._sign,
                )
                up = Upstreams([spec], self.session, retries=0, node_id=self.config.node_id)
            peers[p.edge] = up
        self._peers = peers

    def _sign(self, path: str) -> str:
        # Edges of a fleet share signing keys: a peer accepts a token we mint ourselves.
        keys = self.keys()
        if keys is None:
            return path
        return signed_path(sign(keys, path, int(time.time()) + PEER_TOKEN_TTL), path)

    # -- filling ------------------------------------------------------------------------

    def _complete(self, obj: FillObject) -> bool:
        if obj.path not in self.done:
            return False
        for i in range(slice_count(obj.size, self.store.slice_size)):
            if not self.store.has_slice(obj.path, i):
                self.done.discard(obj.path)  # evicted or purged since
                return False
        return True

    async def _fill_missing(self) -> None:
        assert self.manifest is not None
        work = plan_work(self.manifest, self.config.node_id, self._complete)
        if not work:
            return
        log.info("event=fill_work objects=%d", len(work))
        queue = iter(work)

        async def worker() -> None:
            for item in queue:  # shared iterator: each item is taken once
                if self._stopping:
                    return
                await self._fill_one(item)
                await self._save()

        workers = [asyncio.create_task(worker()) for _ in range(self.cfg.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    def _sources(self, item: WorkItem) -> list[tuple[str, Upstreams | None]]:
        out: list[tuple[str, Upstreams | None]] = [
            ("peer", self._peers[p]) for p in item.peers if p in self._peers
        ]
        out += [("parent", up) for up in self._parents]
        out.append(("origin", None))
        return out

    def _count(self, source: str, result: str) -> None:
        self.objects[(source, result)] = self.objects.get((source, result), 0) + 1

    async def _fill_one(self, item: WorkItem) -> None:
        obj = item.obj
        for kind, source in self._sources(item):
            try:
                meta, fetched = await self.puller.prefetch(
                    obj.path, pinned=True, source=source, throttle=self._throttle(kind)
                )
            except NotCached:
                self._count(kind, "not_cached")
                continue
            except NotFound:
                self._count(kind, "not_found")
                continue
            except (EdgeError, OSError) as exc:
                self._count(kind, "error")
                log.info(
                    "event=fill_source_failed path=%s source=%s error=%r", obj.path, kind, str(exc)
                )
                continue
            if not all(
                self.store.has_slice(obj.path, i)
                for i in range(slice_count(meta.size, self.store.slice_size))
            ):
                # The disk would not take it (full of pinned data, or failed): no other
                # source changes that.
                self._count(kind, "not_stored")
                return
            if not await self._verify(obj, meta):
                self.verify_failures += 1
                self._count(kind, "checksum")
                n = self.store.purge(obj.path, meta.size)
                log.warning(
                    "event=fill_checksum_mismatch path=%s source=%s purged_slices=%d",
                    obj.path,
                    kind,
                    n,
                )
                continue
            self._count(kind, "ok" if fetched else "present")
            self.done.add(obj.path)
            self._dirty = True
            return
        log.warning("event=fill_object_failed path=%s", obj.path)

    def _throttle(self, kind: str) -> Throttle:
        async def throttle(fill: Fill, n: int) -> None:
            self.bytes[kind] += n
            wait = self.bucket.take(n)
            # Wait in short steps: a player joining the fill (readers > 1) ends the wait.
            while wait > 0 and fill.readers <= 1:
                step = min(wait, 0.05)
                await asyncio.sleep(step)
                wait -= step

        return throttle

    async def _verify(self, obj: FillObject, meta: ObjectMeta) -> bool:
        """Whether the stored slices hold exactly the manifest's bytes (size and xxh64)."""
        if meta.size != obj.size:
            return False
        store = self.store
        loop = asyncio.get_running_loop()
        h64 = xxhash.xxh64()
        for i in range(slice_count(obj.size, store.slice_size)):
            h = store.open_slice(obj.path, i)
            if h is None or h.meta.etag != meta.etag:
                return False
            store.acquire(h)
            try:
                data = await loop.run_in_executor(None, os.pread, h.fd, h.length, h.body_offset)
            finally:
                store.release(h)
            if len(data) != h.length:
                return False
            h64.update(data)
        return h64.hexdigest() == obj.xxh64

    # -- state file ---------------------------------------------------------------------

    async def _save(self, *, force: bool = False) -> None:
        if not self._dirty or self.manifest_doc is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < _SAVE_EVERY:
            return
        self._dirty = False
        self._last_save = now
        data = json.dumps(
            {"manifest": self.manifest_doc, "done": sorted(self.done)}, separators=(",", ":")
        ).encode()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, write_atomic, self.state_path, data
            )
        except OSError as exc:
            log.warning("event=fill_state_write_failed path=%s error=%r", self.state_path, str(exc))

    async def _load_state(self) -> None:
        try:
            raw = await asyncio.get_running_loop().run_in_executor(None, self.state_path.read_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("event=fill_state_unreadable path=%s error=%r", self.state_path, str(exc))
            return
        try:
            doc = json.loads(raw)
            manifest = parse_manifest(doc["manifest"])
            done = {p for p in doc["done"] if isinstance(p, str)}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event=fill_state_invalid path=%s error=%r", self.state_path, str(exc))
            return
        self.done = done
        self._apply((manifest, doc["manifest"]))
        self._dirty = False
        log.info("event=fill_state_loaded version=%s %s", manifest.version, _kv(self.progress()))

    async def stop(self) -> None:
        self._stopping = True
        await self._save(force=True)


def _kv(d: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())
