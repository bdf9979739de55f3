"""The nightly fill runner: the I/O shell around ``edge.fillplan``.

Owned by a cleanup context of the edge application (``edge.app``). Outside the fill window it
sleeps until the window's next start (computed from the window, not polled; the sleep is cut
into hours so a clock step is noticed). Inside, it fetches this edge's manifest from steering
(``GET <steering.url>/fill/manifest/<node_id>``; on a failure it keeps the manifest it has,
fills from that, and tries again every ``fill.manifest_retry``; a 404 means fill is off
upstream, or steering does not know this edge: logged once, no retries until the next window),
applies it (pins the present slices of its objects, as far as the manifest's and the store's
capacity go, unpins every slice of objects that left it; with no previous manifest, e.g. a
lost state file or a new node id, every pinned slice not of this manifest is released), and
downloads what is missing, ``fill.concurrency`` objects at a time, each from the first source
that has it:

1. the peers of its site, holders first, with ``Cache-Control: only-if-cached`` and a
   short-lived token this edge signs with its own signing keys (a 504 means "not there"); a
   peer that failed to connect or answer in time ``PEER_MAX_FAILURES`` times in a row is
   skipped for the rest of the run;
2. each of ``fill.parents``, which pull through;
3. the origin: the configured upstreams.

The bytes go through ``Puller.prefetch``: the same coalescing, validation and crash-safe
insert path (temporary file, fsync, rename) as player misses, pinned. An object counts only
once all its slices are stored and their bytes, read back, match the manifest's xxh64; on a
mismatch it is purged, counted, and the next source is tried (a size other than the
manifest's is noticed at the first slice). Whatever a source throws is logged and counted and
the next source tried: one bad object never stops the night.

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

The event loop also serves players: manifests of millions of slices are pinned in steps that
give the loop back every ``_YIELD_EVERY`` slices, the manifest is decoded and the state file
encoded in a thread, and progress is kept as running totals rather than recounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Container, Iterable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import xxhash

from .config import EdgeConfig, read_credential_file
from .errors import EdgeError, NotFound
from .fillplan import (
    SKIP_BAD_PATH,
    SKIP_OVER_CAPACITY,
    FillManifest,
    FillObject,
    ManifestError,
    TokenBucket,
    WorkItem,
    parse_manifest,
    plan_work,
    slice_count,
    within_capacity,
)
from .pull import Fill, Puller, SizeMismatch, Throttle
from .store import ObjectMeta, SliceStore, slice_key, write_atomic
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
# Pin, unpin or check this many slices, then give the event loop back (about 10 ms of work).
_YIELD_EVERY = 4096
# A peer that failed this many times in a row to connect or to answer in time is skipped for
# the rest of the run: manifests list every edge of the site, and a dead one would otherwise
# cost a timeout per object. A 504 (not cached) or any other answer resets the count.
PEER_MAX_FAILURES = 3
_PEER_DOWN_REASONS = ("connect", "body", "slow", "truncated")  # Upstreams.failures reasons


class ManifestUnavailable(Exception):
    """Steering has no manifest for us now (503, network error, bad document)."""


class FillOffUpstream(ManifestUnavailable):
    """Steering answered 404: fill is disabled there, or it does not know this edge."""


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


async def release_pins(store: SliceStore, keep: Container[int] = ()) -> tuple[int, int]:
    """Unpin every pinned slice whose key is not in ``keep``: (slices, bytes) released.

    In steps, giving the loop back between them (a cache holds millions of slices).
    """
    slices = released = 0
    for i, n in enumerate(store.unpin_except(keep), 1):
        if n:
            slices += 1
            released += n
        if i % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return slices, released


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
        # The manifest's objects this edge fills and pins (valid paths, within capacity),
        # their sizes by path, and what they add up to (progress without recounting).
        self.plan: tuple[FillObject, ...] = ()
        self._sizes: dict[str, int] = {}
        self._total_bytes = 0
        self.done: set[str] = set()  # paths of ``plan`` verified complete on this edge
        self._done_bytes = 0
        self.skipped: dict[str, int] = {}  # objects of the manifest not filled, by reason
        self._peer_failures: dict[str, int] = {}  # consecutive failures to connect/answer
        self._dead_peers: set[str] = set()
        self._off_upstream = False  # steering answered 404; logged once
        self._manifest_json: tuple[dict[str, Any], bytes] | None = None  # encoded for _save
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
        # Running totals: asked every heartbeat and scrape, so never a walk of the manifest.
        total, done = len(self.plan), len(self.done)
        return {
            "objects_total": total,
            "objects_done": done,
            "objects_left": total - done,
            "bytes_total": self._total_bytes,
            "bytes_done": self._done_bytes,
            "bytes_left": self._total_bytes - self._done_bytes,
        }

    def _mark_done(self, path: str) -> None:
        size = self._sizes.get(path)
        if size is not None and path not in self.done:
            self.done.add(path)
            self._done_bytes += size

    def _unmark_done(self, path: str) -> None:
        if path in self.done:
            self.done.discard(path)
            self._done_bytes -= self._sizes[path]

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
            "objects_skipped": dict(self.skipped),
            "peers_skipped": sorted(self._dead_peers),
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
        self._peer_failures.clear()  # a peer skipped last night is asked again
        self._dead_peers.clear()
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
        # A 404 is no outage: steering has no fill (or no such edge) and retrying every
        # manifest_retry all window long would only repeat it; the next window asks again.
        while True:
            if await self._attempt(end) or self._off_upstream:
                return
            await asyncio.sleep(self.cfg.manifest_retry)

    async def _attempt(self, end: float | None) -> bool:
        """Read the manifest and fill from it (or from the current one). True if read."""
        try:
            got_manifest = await self._fetch_manifest()
        except FillOffUpstream as exc:
            got = False
            self.last_error = f"manifest: {exc}"
            if not self._off_upstream:
                self._off_upstream = True
                log.warning(
                    "event=fill_off_upstream error=%r action=wait_for_next_window", str(exc)
                )
        except ManifestUnavailable as exc:
            got = False
            self.last_error = f"manifest: {exc}"
            log.warning("event=fill_manifest_unavailable error=%r", str(exc))
        else:
            self._off_upstream = False
            await self._apply(got_manifest)
            got = True
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
            # Read each time (it may be rotated); missing, empty or half-written mid-rotation
            # is an outage like any other: keep the manifest we have and try again later.
            try:
                token = read_credential_file(steering.credential_file)
            except (OSError, ValueError) as exc:
                raise ManifestUnavailable(f"steering credential: {exc}") from exc
            headers["Authorization"] = f"Bearer {token}"
        self.manifest_fetches += 1
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
        try:
            async with self.session.get(url, headers=headers, timeout=timeout) as r:
                if r.status == 404:
                    why = (await r.content.read(200)).decode(errors="replace").strip()
                    raise FillOffUpstream(
                        "status 404, fill is off upstream" + (f": {why}" if why else "")
                    )
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
            # Up to 256 MiB of JSON: decoded and checked off the loop.
            manifest, doc = await asyncio.to_thread(_decode_manifest, bytes(body))
        except (ValueError, ManifestError) as exc:
            raise ManifestUnavailable(f"invalid manifest: {exc}") from exc
        if manifest.edge != self.config.node_id:
            raise ManifestUnavailable(f"manifest is for edge {manifest.edge!r}")
        return manifest, doc

    async def _apply(
        self, got: tuple[FillManifest, dict[str, Any]], *, fetched: bool = True
    ) -> None:
        """Switch to a manifest: pins follow it; verified objects stay verified.

        Always applied, even with the version we have: steering keeps the version (a hash of
        the paths and checksums) when only the peers or the holders change. ``fetched``:
        from steering (False: from the state file, whose left-out objects were counted).
        """
        manifest, doc = got
        old = self.manifest
        store = self.store
        kept, over = within_capacity(
            manifest.objects, manifest.capacity, store.capacity, store.slice_size
        )
        plan = tuple(kept)
        keep = {o.path for o in plan}
        unpinned = released = 0
        if old is not None:
            # Left the manifest, or now past its capacity: ordinary LRU content again.
            unpinned += await self._pin_all([o for o in self.plan if o.path not in keep], False)
        pinned = await self._pin_all(plan, True)
        if old is None:
            # Nothing says what an earlier manifest pinned (first start, a lost or corrupt
            # state file, a new node id): release every pin that is not this manifest's.
            n, released = await release_pins(store, await self._slice_keys(plan))
            unpinned += n
        before = old.by_path() if old is not None else {}
        self.manifest, self.manifest_doc, self.plan = manifest, doc, plan
        self._sizes = {o.path: o.size for o in plan}
        self._total_bytes = sum(self._sizes.values())
        self.done = {
            o.path for o in plan if o.path in self.done and before.get(o.path, o).xxh64 == o.xxh64
        }
        self._done_bytes = sum(self._sizes[p] for p in self.done)
        skipped = {SKIP_BAD_PATH: 0, SKIP_OVER_CAPACITY: len(over)}
        for sk in manifest.skipped:
            skipped[sk.reason] = skipped.get(sk.reason, 0) + 1
        self.skipped = {r: skipped.get(r, 0) for r in (SKIP_BAD_PATH, SKIP_OVER_CAPACITY)}
        if fetched:
            for reason, n in self.skipped.items():
                if n:
                    self.objects[("manifest", reason)] = (
                        self.objects.get(("manifest", reason), 0) + n
                    )
        self._dirty = True
        self._update_peers()
        log.info(
            "event=fill_manifest version=%s objects=%d bytes=%d filled_objects=%d "
            "peers=%d pinned_slices=%d unpinned_slices=%d released_bytes=%d",
            manifest.version,
            len(manifest.objects),
            manifest.bytes,
            len(plan),
            len(manifest.peers),
            pinned,
            unpinned,
            released,
        )
        for sk in manifest.skipped[:10]:  # a sample: a broken feed could skip thousands
            log.warning(
                "event=fill_manifest_skipped reason=%s what=%r error=%r",
                sk.reason,
                sk.what[:200],
                sk.detail,
            )
        if over:
            log.warning(
                "event=fill_over_capacity objects=%d bytes=%d capacity=%d store_capacity=%d",
                len(over),
                sum(o.size for o in over),
                manifest.capacity,
                store.capacity,
            )

    async def _pin_all(self, objects: Iterable[FillObject], on: bool) -> int:
        """Pin (or unpin) every present slice of ``objects``; returns how many changed."""
        store = self.store
        n = steps = 0
        for obj in objects:
            for i in range(slice_count(obj.size, store.slice_size)):
                n += store.set_pinned(obj.path, i, on)
                steps += 1
                if steps % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        return n

    async def _slice_keys(self, objects: Collection[FillObject]) -> set[int]:
        keys: set[int] = set()
        for obj in objects:
            for i in range(slice_count(obj.size, self.store.slice_size)):
                keys.add(slice_key(obj.path, i))
                if len(keys) % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        return keys

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

    def _signable(self, path: str) -> bool:
        """Whether a peer can be asked for ``path`` (a token can be signed for it)."""
        try:
            self._sign(path)
        except ValueError as exc:
            log.warning("event=fill_peer_token_failed path=%r error=%r", path[:200], str(exc))
            return False
        return True

    # -- filling ------------------------------------------------------------------------

    async def _complete_paths(self) -> set[str]:
        """Paths of the plan complete on disk; a done object with a slice gone is not done."""
        store = self.store
        complete: set[str] = set()
        steps = 0
        for obj in self.plan:
            if obj.path not in self.done:
                continue
            n = slice_count(obj.size, store.slice_size)
            if all(store.has_slice(obj.path, i) for i in range(n)):
                complete.add(obj.path)
            else:
                self._unmark_done(obj.path)  # evicted or purged since
            steps += n
            if steps >= _YIELD_EVERY:
                steps = 0
                await asyncio.sleep(0)
        return complete

    async def _fill_missing(self) -> None:
        assert self.manifest is not None
        complete = await self._complete_paths()
        work = plan_work(
            self.manifest, self.config.node_id, lambda o: o.path in complete, self.plan
        )
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

    def _sources(self, item: WorkItem) -> list[tuple[str, str, Upstreams | None]]:
        """(kind, name, client) to try in order; name is the peer's edge for peers."""
        out: list[tuple[str, str, Upstreams | None]] = []
        for p in item.peers:
            if p in self._dead_peers:
                self._count("peer", "peer_down")  # a timeout saved
            elif p in self._peers:
                out.append(("peer", p, self._peers[p]))
        if out and not self._signable(item.obj.path):
            self._count("peer", "token_failed")  # no token, no peer: parents and the origin
            out = []
        out += [("parent", "", up) for up in self._parents]
        out.append(("origin", "", None))
        return out

    def _count(self, source: str, result: str) -> None:
        self.objects[(source, result)] = self.objects.get((source, result), 0) + 1

    async def _fill_one(self, item: WorkItem) -> None:
        obj = item.obj
        for kind, name, source in self._sources(item):
            if name in self._dead_peers:
                self._count(kind, "peer_down")  # given up while an earlier peer was tried
                continue
            down_before = _down_failures(source) if kind == "peer" else 0
            try:
                result = await self._try_source(obj, kind, source)
            except Exception as exc:  # one bad object (or source) must never stop the night
                log.exception(
                    "event=fill_source_crashed path=%s source=%s error=%r", obj.path, kind, str(exc)
                )
                result = "error"
            self._count(kind, result)
            if kind == "peer" and source is not None:
                # Only errors that were connection failures or timeouts count against the
                # peer; any answer (a 504 "not cached" included) shows it is alive.
                down = result == "error" and _down_failures(source) > down_before
                self._peer_health(name, source, down)
            if result in ("ok", "present"):
                self._mark_done(obj.path)
                self._dirty = True
                return
            if result == "not_stored":
                # The disk would not take it (full of pinned data, or failed): no other
                # source changes that.
                return
        log.warning("event=fill_object_failed path=%s", obj.path)

    async def _try_source(self, obj: FillObject, kind: str, source: Upstreams | None) -> str:
        """One source's attempt at ``obj``: the result counted for it."""
        try:
            meta, fetched = await self.puller.prefetch(
                obj.path,
                pinned=True,
                source=source,
                throttle=self._throttle(kind),
                expect_size=obj.size,
            )
        except NotCached:
            return "not_cached"
        except NotFound:
            return "not_found"
        except SizeMismatch as exc:
            # Known from the first slice: the rest is not downloaded at all.
            self.verify_failures += 1
            n = self.store.purge(obj.path, exc.meta.size)
            log.warning(
                "event=fill_size_mismatch path=%s source=%s size=%d expected=%d purged_slices=%d",
                obj.path,
                kind,
                exc.meta.size,
                obj.size,
                n,
            )
            return "checksum"
        except (EdgeError, OSError) as exc:
            log.info(
                "event=fill_source_failed path=%s source=%s error=%r", obj.path, kind, str(exc)
            )
            return "error"
        if not all(
            self.store.has_slice(obj.path, i)
            for i in range(slice_count(meta.size, self.store.slice_size))
        ):
            return "not_stored"
        if not await self._verify(obj, meta):
            self.verify_failures += 1
            n = self.store.purge(obj.path, meta.size)
            log.warning(
                "event=fill_checksum_mismatch path=%s source=%s purged_slices=%d",
                obj.path,
                kind,
                n,
            )
            return "checksum"
        return "ok" if fetched else "present"

    def _peer_health(self, name: str, source: Upstreams, down: bool) -> None:
        if not down:
            self._peer_failures[name] = 0
            return
        n = self._peer_failures.get(name, 0) + 1
        self._peer_failures[name] = n
        if n >= PEER_MAX_FAILURES and name not in self._dead_peers:
            self._dead_peers.add(name)
            log.warning(
                "event=fill_peer_skipped peer=%s url=%s failures=%d last_error=%r",
                name,
                source.specs[0].url,
                n,
                source.last_error,
            )

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
        doc, done = self.manifest_doc, list(self.done)  # the set changes while we write
        try:
            # Encoding 100k objects takes a fifth of a second: never on the loop, and the
            # manifest (it changes once a night) only once.
            cached = self._manifest_json
            if cached is None or cached[0] is not doc:
                cached = self._manifest_json = (doc, await asyncio.to_thread(_dumps, doc))
            await asyncio.to_thread(_write_state, self.state_path, cached[1], done)
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
            doc = await asyncio.to_thread(json.loads, raw)
            manifest, _ = await asyncio.to_thread(_check_manifest, doc["manifest"])
            done = {p for p in doc["done"] if isinstance(p, str)}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event=fill_state_invalid path=%s error=%r", self.state_path, str(exc))
            return
        if manifest.edge != self.config.node_id:
            # The node id changed: that manifest was another edge's. Start afresh (the first
            # manifest applied then releases its pins).
            log.warning(
                "event=fill_state_other_edge path=%s edge=%s node_id=%s",
                self.state_path,
                manifest.edge,
                self.config.node_id,
            )
            return
        self.done = done
        await self._apply((manifest, doc["manifest"]), fetched=False)
        self._dirty = False
        log.info("event=fill_state_loaded version=%s %s", manifest.version, _kv(self.progress()))

    async def stop(self) -> None:
        self._stopping = True
        await self._save(force=True)


def _kv(d: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())


def _down_failures(up: Upstreams | None) -> int:
    """Failed attempts of ``up`` that mean it is unreachable or too slow (not an answer)."""
    return sum(up.failures.get(r, 0) for r in _PEER_DOWN_REASONS) if up is not None else 0


def _check_manifest(doc: Any) -> tuple[FillManifest, dict[str, Any]]:
    return parse_manifest(doc), doc


def _decode_manifest(body: bytes) -> tuple[FillManifest, dict[str, Any]]:
    """Steering's answer -> (manifest, document); ValueError/ManifestError. In a thread."""
    return _check_manifest(json.loads(body))


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _write_state(path: Path, manifest_json: bytes, done: list[str]) -> None:
    """fill.state.json: {"manifest": ..., "done": [...]}. Blocking: run it in a thread."""
    done.sort()
    write_atomic(path, b'{"manifest":' + manifest_json + b',"done":' + _dumps(done) + b"}")
