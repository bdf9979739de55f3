"""The fill shell: read the control plane's popularity feeds, keep and serve the manifests.

``fill.py`` plans; this module does the I/O around it:

* every ``fill.refresh`` (and on ``POST /fill/refresh``) each site's feed is read from
  ``<popularity_url>/v1/fill/popularity?region=<site>&limit=<fill.feed_limit>`` with the
  bearer token in ``fill.credential_file``. A read that fails (unreachable, an HTTP error, a
  feed that breaks the contract as a whole, a credential file that cannot be read) keeps the
  last good feed and the manifests in force; failures are logged once per transition, not once
  per read, and counted by result. Objects of a good feed that break the contract (a file name
  the edge would refuse...) are left out and counted (``skipped``), logged once per change;
* the manifests and the feeds' digests are kept in ``fill.state_file`` (``fillstate.py``);
* after a read, a site's manifests are rebuilt only when an input of the plan changed (the
  feed's digest, an edge's weight or capacity, the fill settings), with the manifests in force
  as the previous ones (stickiness), so identical refreshes keep identical versions;
* an edge's capacity comes from ``fill_capacity`` in its config, else from the
  ``disk_capacity`` of its last heartbeat; a capacity that appears or changes rebuilds the
  site at once (in the background task, not in the heartbeat's handler);
* the state file is written after every change (temporary file, fsync, rename) so a
  restarted steering service serves the same manifests at once, and the next plan is still
  sticky.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import xxhash

from .config import EdgeConfig, SteeringConfig
from .fill import FillEdge, FillProgress, PopularityFeed, parse_feed, plan_site
from .fillstate import Served, SiteState, object_doc, read_state, state_doc, write_atomically

log = logging.getLogger("steering.fill")

# One feed read: 100k objects are ~14 MB of JSON (~140 bytes an object). The caps follow
# fill.feed_limit: 30 s per 100k objects asked (at least 30 s), and 640 bytes an object (plus
# 1 MiB) of body, over four times a typical object, and ~62 MiB at the default 100k; the memory
# a feed takes once parsed is in fill.py (MAX_FEED_OBJECTS).
FEED_TIMEOUT_PER_OBJECT = 30.0 / 100_000
MIN_FEED_TIMEOUT = 30.0
FEED_BYTES_PER_OBJECT = 640
FEED_BYTES_BASE = 1024 * 1024
RESULTS = ("ok", "unreachable", "http_error", "malformed", "credential")


def feed_timeout(limit: int) -> float:
    return max(MIN_FEED_TIMEOUT, limit * FEED_TIMEOUT_PER_OBJECT)


def max_feed_bytes(limit: int) -> int:
    return FEED_BYTES_BASE + limit * FEED_BYTES_PER_OBJECT


class CredentialError(Exception):
    """``fill.credential_file`` cannot give a token (unreadable, not UTF-8, no token)."""


class FillUnavailable(Exception):
    """Base of the fill shell's errors; ``app._fill_error`` maps each to an HTTP status."""


class FillDisabled(FillUnavailable):
    """No ``fill.popularity_url`` configured: the routes do not exist (404)."""


class NoManifest(FillUnavailable):
    """No manifest for this edge yet (no feed read, or its capacity unknown): 503."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(slots=True)
class FillService:
    config: SteeringConfig
    clock: Callable[[], float] = time.time
    sites: dict[str, SiteState] = field(default_factory=dict)
    served: dict[str, Served] = field(default_factory=dict)
    heartbeat_capacity: dict[str, int] = field(default_factory=dict)
    progress: dict[str, FillProgress] = field(default_factory=dict)
    churn_bytes: dict[str, int] = field(default_factory=dict)
    reads: dict[tuple[str, str], int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # feed objects left out, per site
    manifests_served: int = 0
    session: aiohttp.ClientSession | None = None
    writing: asyncio.Future[None] | None = None  # the state file write in progress
    dirty: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    edges: dict[str, EdgeConfig] = field(default_factory=dict)
    site_edges: dict[str, tuple[EdgeConfig, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.configure(self.config)
        self.load_state()

    # -- configuration and inputs ------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.config.fill.popularity_url is not None

    def configure(self, config: SteeringConfig) -> None:
        """A (re)loaded configuration: edges gone or moved lose their manifest; every site
        is replanned from its last feed (weights, capacities or settings may have changed)."""
        self.config = config
        self.edges = {e.id: e for e in config.edges}
        by_site: dict[str, list[EdgeConfig]] = {}
        for e in config.edges:
            by_site.setdefault(e.site, []).append(e)
        self.site_edges = {k: tuple(v) for k, v in by_site.items()}
        for edge_id, srv in list(self.served.items()):
            kept = self.edges.get(edge_id)
            if kept is None or kept.site != srv.site:
                del self.served[edge_id]
                self.churn_bytes.pop(edge_id, None)
            else:
                srv.body = None  # peers' URLs may have changed
        for site in list(self.sites):
            if site not in self.site_edges:
                del self.sites[site]
        self.dirty.update(self.site_edges)
        self.wake.set()

    def capacity(self, edge_id: str) -> int | None:
        e = self.edges[edge_id]
        if e.fill_capacity is not None:
            return e.fill_capacity
        return self.heartbeat_capacity.get(edge_id)

    def record_heartbeat(
        self, edge_id: str, disk_capacity: int, progress: FillProgress | None
    ) -> None:
        """An accepted heartbeat: its fill progress, and its capacity for planning."""
        if progress is not None:
            self.progress[edge_id] = progress
        if disk_capacity > 0 and self.heartbeat_capacity.get(edge_id) != disk_capacity:
            self.heartbeat_capacity[edge_id] = disk_capacity
            e = self.edges.get(edge_id)
            if e is not None and e.fill_capacity is None:
                self.dirty.add(e.site)
                self.wake.set()

    # -- reading feeds -----------------------------------------------------------------------

    def _token(self) -> str | None:
        path = self.config.fill.credential_file
        if path is None:
            return None
        try:
            text = Path(path).read_bytes().decode()
        except OSError as exc:
            raise CredentialError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            # Said without the bytes: they may be most of the secret.
            raise CredentialError(f"{path}: not UTF-8 text") from None
        for line in text.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                return line.strip()
        raise CredentialError(f"{path}: no token in the file")

    async def _read(
        self, session: aiohttp.ClientSession, site: str
    ) -> tuple[str, PopularityFeed | None, str]:
        """(result, feed or None, detail) of one read of ``site``'s feed."""
        url = f"{self.config.fill.popularity_url}/v1/fill/popularity"
        limit = self.config.fill.feed_limit
        max_bytes = max_feed_bytes(limit)
        try:
            token = self._token()
        except CredentialError as exc:
            return "credential", None, str(exc)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            async with session.get(
                url,
                # Always the limit: the control plane's default (fill.limit) may be far
                # smaller than what a site's edges hold.
                params={"region": site, "limit": str(limit)},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=feed_timeout(limit)),
            ) as r:
                if r.status != 200:
                    return "http_error", None, f"status {r.status}"
                body = await _read_body(r.content, max_bytes)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return "unreachable", None, str(exc) or type(exc).__name__
        if body is None:
            return "malformed", None, f"more than {max_bytes} bytes"
        try:
            doc = json.loads(body, parse_constant=_no_constant)
            return "ok", parse_feed(doc, site, limit=limit), ""
        except (ValueError, RecursionError) as exc:  # FeedError and JSON errors
            return "malformed", None, str(exc)

    def _note_skipped(self, site: str, st: SiteState, feed: PopularityFeed) -> None:
        """Count a good feed's skipped objects; log them when their number or the first one
        changes (not at every read of the same feed)."""
        if feed.skipped:
            self.skipped[site] = self.skipped.get(site, 0) + feed.skipped
        now = (feed.skipped, feed.skip_detail)
        if now != st.skipped and feed.skipped:
            log.warning(
                "event=fill_feed_objects_skipped site=%s skipped=%d objects=%d first=%r",
                site,
                feed.skipped,
                len(feed.objects),
                feed.skip_detail[:300],
            )
        elif now != st.skipped:
            log.info("event=fill_feed_objects_skipped site=%s skipped=0", site)
        st.skipped = now

    def _note(self, site: str, st: SiteState, result: str, detail: str) -> None:
        """Count the read; log a failure once per (result, detail) and the recovery once."""
        self.reads[(site, result)] = self.reads.get((site, result), 0) + 1
        if result != "ok" and (st.result, st.detail) != (result, detail):
            log.warning(
                "event=fill_feed_failed site=%s result=%s detail=%r kept=%s",
                site,
                result,
                detail[:300],
                "last good feed" if st.feed is not None else "nothing",
            )
        elif result == "ok" and st.result not in (None, "ok"):
            log.info("event=fill_feed_recovered site=%s", site)
        st.result, st.detail = result, detail

    async def refresh(self) -> dict[str, Any]:
        """Read every site's feed now and rebuild what changed; a summary per site."""
        if not self.enabled:
            raise FillDisabled("fill is disabled (no fill.popularity_url)")
        session = self.session
        if session is None:
            raise NoManifest("the fill task is not running", 1)
        async with self.lock:
            sites = sorted(self.site_edges)
            reads = await asyncio.gather(*(self._read(session, site) for site in sites))
            out: dict[str, Any] = {}
            persist = False
            for site, (result, feed, detail) in zip(sites, reads, strict=True):
                st = self.sites.setdefault(site, SiteState())
                self._note(site, st, result, detail)
                if feed is not None:
                    self._note_skipped(site, st, feed)
                    if feed.digest != st.feed_digest:
                        log.info(
                            "event=fill_feed_read site=%s objects=%d skipped=%d fallback=%s",
                            site,
                            len(feed.objects),
                            feed.skipped,
                            str(feed.fallback).lower(),
                        )
                    new = feed.digest != st.feed_digest
                    st.feed, st.feed_digest, st.read_at = feed, feed.digest, self.clock()
                    persist |= new
                changed = self._rebuild(site)
                persist |= changed
                out[site] = {
                    "result": result,
                    "detail": detail or None,
                    "objects": None if st.feed is None else len(st.feed.objects),
                    "skipped": None if st.feed is None else st.feed.skipped,
                    "rebuilt": changed,
                }
            self.dirty.difference_update(sites)
            if persist:
                await self._persist()
        return {"sites": out}

    async def rebuild_dirty(self) -> None:
        async with self.lock:
            changed = False
            for site in sorted(self.dirty):
                changed |= self._rebuild(site)
            self.dirty.clear()
            if changed:
                await self._persist()

    async def run(self) -> None:
        """The background task: refresh every ``fill.refresh``, replan on capacity changes."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.enabled:
                await self.wake.wait()  # a reload may enable fill
                self.wake.clear()
                continue
            await self.refresh()
            deadline = loop.time() + self.config.fill.refresh
            while self.enabled and (remaining := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await self.wake.wait()
                except TimeoutError:
                    break
                self.wake.clear()
                await self.rebuild_dirty()

    # -- planning ----------------------------------------------------------------------------

    def _inputs(self, site: str, feed: PopularityFeed) -> str:
        f = self.config.fill
        h = xxhash.xxh64(f"{feed.digest} {f.share!r} {f.max_copies} {f.stickiness!r}\n".encode())
        for e in sorted(self.site_edges.get(site, ()), key=lambda e: e.id):
            h.update(f"{e.id} {e.weight!r} {self.capacity(e.id)}\n".encode())
        return h.hexdigest()

    def _rebuild(self, site: str) -> bool:
        """Replan ``site`` if an input changed; True if its manifests were replaced."""
        st = self.sites.get(site)
        edges = self.site_edges.get(site, ())
        if st is None or st.feed is None or not edges:
            return False
        inputs = self._inputs(site, st.feed)
        if inputs == st.inputs:
            return False
        previous = {
            e.id: {p.obj.path: p.obj.size for p in self.served[e.id].manifest.objects}
            for e in edges
            if e.id in self.served
        }
        f = self.config.fill
        t0 = time.perf_counter()
        plan = plan_site(
            [FillEdge(e.id, e.weight, self.capacity(e.id)) for e in edges],
            st.feed.objects,
            previous,
            share=f.share,
            max_copies=f.max_copies,
            stickiness=f.stickiness,
        )
        now = self.clock()
        for e in edges:
            m = plan.manifests.get(e.id)
            if m is None:
                # Capacity unknown now (e.g. a fill_capacity removed): keep what it has.
                continue
            old = self.served.get(e.id)
            if old is None or old.manifest.version != m.version:
                self.served[e.id] = Served(site, m, now)
            else:
                old.manifest, old.body = m, None  # same objects; holders may differ
            self.churn_bytes[e.id] = plan.churn[e.id].bytes
        st.inputs, st.left_out = inputs, plan.left_out
        log.info(
            "event=fill_manifests_built site=%s edges=%d objects=%d left_out=%d "
            "churn_bytes=%d ms=%.1f",
            site,
            len(plan.manifests),
            len(st.feed.objects),
            plan.left_out,
            sum(c.bytes for c in plan.churn.values()),
            (time.perf_counter() - t0) * 1000,
        )
        return True

    # -- serving -----------------------------------------------------------------------------

    def manifest_body(self, edge_id: str) -> tuple[bytes, str]:
        """(JSON body, version) of ``edge_id``'s manifest (the caller checked the edge exists)."""
        if not self.enabled:
            raise FillDisabled("fill is disabled (no fill.popularity_url)")
        srv = self.served.get(edge_id)
        if srv is None:
            site = self.edges[edge_id].site
            st = self.sites.get(site)
            if st is None or st.feed is None:
                raise NoManifest(
                    "no popularity feed read yet", int(min(self.config.fill.refresh, 60))
                )
            raise NoManifest("the edge's capacity is not known yet (no heartbeat)", 10)
        if srv.body is None:
            srv.body = json.dumps(self.manifest_doc(edge_id, srv), separators=(",", ":")).encode()
        self.manifests_served += 1
        return srv.body, srv.manifest.version

    def manifest_doc(self, edge_id: str, srv: Served) -> dict[str, Any]:
        m = srv.manifest
        return {
            "edge": edge_id,
            "site": srv.site,
            "version": m.version,
            "generated_at": srv.generated_at,
            "capacity": m.capacity,
            "bytes": m.bytes,
            "peers": [
                {"edge": e.id, "url": e.url}
                for e in sorted(self.site_edges.get(srv.site, ()), key=lambda e: e.id)
                if e.id != edge_id
            ],
            "objects": [object_doc(p) for p in m.objects],
        }

    def fleet_doc(self, edge_id: str) -> dict[str, Any]:
        """What /fleet shows of an edge's fill: its manifest and its reported progress."""
        srv = self.served.get(edge_id)
        prog = self.progress.get(edge_id)
        return {
            "fill": None if prog is None else prog.to_json(),
            "fill_manifest": None
            if srv is None
            else {
                "version": srv.manifest.version,
                "objects": len(srv.manifest.objects),
                "bytes": srv.manifest.bytes,
                "capacity": srv.manifest.capacity,
                "generated_at": srv.generated_at,
            },
        }

    # -- state file (fillstate.py) -------------------------------------------------------------

    async def _persist(self) -> None:
        path = self.config.fill.state_file
        if path is None:
            return
        doc = state_doc(self.sites, self.served, self.heartbeat_capacity)
        data = json.dumps(doc, separators=(",", ":")).encode()
        # Shielded and kept: a shutdown that cancels us waits for the write (``settle``)
        # rather than leave a thread writing behind a stopped service.
        self.writing = asyncio.ensure_future(asyncio.to_thread(write_atomically, path, data))
        try:
            await asyncio.shield(self.writing)
        except OSError as exc:
            log.error("event=fill_state_write_failed path=%s error=%r", path, str(exc))

    async def settle(self) -> None:
        """Wait for a state file write still in progress (at shutdown)."""
        if self.writing is not None:
            try:
                await self.writing
            except OSError as exc:
                log.error("event=fill_state_write_failed error=%r", str(exc))

    def load_state(self) -> None:
        """Manifests of the last run, served at once; a file that cannot be used is logged and
        ignored (the next feed read rebuilds everything, only less sticky)."""
        path = self.config.fill.state_file
        if path is None or not path.exists():
            return
        state = read_state(path)
        if state is None:
            return
        for edge_id, srv in state.served.items():
            e = self.edges.get(edge_id)
            if e is not None and e.site == srv.site:
                self.served[edge_id] = srv
        for site, st in state.sites.items():
            if site in self.site_edges:
                self.sites[site] = st
        for edge_id, n in state.capacities.items():
            if edge_id in self.edges:
                self.heartbeat_capacity.setdefault(edge_id, n)
        log.info("event=fill_state_loaded path=%s manifests=%d", path, len(self.served))


async def _read_body(content: aiohttp.StreamReader, max_bytes: int) -> bytes | None:
    """The whole body, or None past ``max_bytes``. Not ``content.read(n)``: that answers what
    is buffered so far (one chunk, ~128 KiB), which cut every real feed short."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(1024 * 1024):
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")
