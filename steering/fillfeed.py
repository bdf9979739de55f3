"""The fill shell: read the control plane's popularity feeds, keep and serve the manifests.

``fill.py`` plans; this module does the I/O around it:

* every ``fill.refresh`` (and on ``POST /fill/refresh``) each site's feed is read from
  ``<popularity_url>/v1/fill/popularity?region=<site>`` with the bearer token in
  ``fill.credential_file``. A read that fails (unreachable, an HTTP error, a feed that breaks
  the contract) keeps the last good feed and the manifests in force; failures are logged once
  per transition, not once per read, and counted by result;
* after a read, a site's manifests are rebuilt only when an input of the plan changed (the
  feed's digest, an edge's weight or capacity, the fill settings), with the manifests in force
  as the previous ones (stickiness), so identical refreshes keep identical versions;
* an edge's capacity comes from ``fill_capacity`` in its config, else from the
  ``disk_capacity`` of its last heartbeat; a capacity that appears or changes rebuilds the
  site at once (in the background task, not in the heartbeat's handler);
* the manifests and the feeds' digests are written to ``fill.state_file`` (temporary file,
  fsync, rename) so a restarted steering service serves the same manifests at once, and the
  next plan is still sticky.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import xxhash

from .config import EdgeConfig, SteeringConfig
from .fill import (
    FillEdge,
    FillProgress,
    Manifest,
    Placed,
    PopularityFeed,
    manifest_version,
    parse_feed,
    plan_site,
)

log = logging.getLogger("steering.fill")

FEED_TIMEOUT = 30.0  # seconds for one feed read: 100k objects are ~15 MB of JSON
MAX_FEED_BYTES = 64 * 1024 * 1024
STATE_FORMAT = 1
RESULTS = ("ok", "unreachable", "http_error", "malformed", "credential")


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
class Served:
    """A manifest in force, with its rendered body (cleared when the config changes)."""

    site: str
    manifest: Manifest
    generated_at: float
    body: bytes | None = None


@dataclass(slots=True)
class SiteState:
    feed: PopularityFeed | None = None
    feed_digest: str | None = None  # also known after a restart, before the feed is re-read
    inputs: str | None = None  # digest of the inputs of the manifests in force
    read_at: float | None = None
    result: str | None = None  # of the last read
    detail: str = ""
    left_out: int = 0


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
        for line in Path(path).read_text().splitlines():
            if line.strip() and not line.strip().startswith("#"):
                return line.strip()
        raise OSError(f"{path}: no token in the file")

    async def _read(
        self, session: aiohttp.ClientSession, site: str
    ) -> tuple[str, PopularityFeed | None, str]:
        """(result, feed or None, detail) of one read of ``site``'s feed."""
        url = f"{self.config.fill.popularity_url}/v1/fill/popularity"
        try:
            token = self._token()
        except OSError as exc:
            return "credential", None, str(exc)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            async with session.get(
                url,
                params={"region": site},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=FEED_TIMEOUT),
            ) as r:
                if r.status != 200:
                    return "http_error", None, f"status {r.status}"
                body = await r.content.read(MAX_FEED_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return "unreachable", None, str(exc) or type(exc).__name__
        if len(body) > MAX_FEED_BYTES:
            return "malformed", None, f"more than {MAX_FEED_BYTES} bytes"
        try:
            doc = json.loads(body, parse_constant=_no_constant)
            return "ok", parse_feed(doc, site), ""
        except (ValueError, RecursionError) as exc:  # FeedError and JSON errors
            return "malformed", None, str(exc)

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
                    if feed.digest != st.feed_digest:
                        log.info(
                            "event=fill_feed_read site=%s objects=%d fallback=%s",
                            site,
                            len(feed.objects),
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
            "objects": [_object_doc(p) for p in m.objects],
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

    # -- state file --------------------------------------------------------------------------

    def _state_doc(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            # Heartbeat capacities too: a restarted service must not plan its first feed read
            # as if the edges that have not reported yet had no disk (a flap of manifests).
            "capacities": dict(sorted(self.heartbeat_capacity.items())),
            "sites": {
                site: {"feed_digest": st.feed_digest, "inputs": st.inputs, "read_at": st.read_at}
                for site, st in sorted(self.sites.items())
            },
            "manifests": {
                edge_id: {
                    "site": srv.site,
                    "generated_at": srv.generated_at,
                    "capacity": srv.manifest.capacity,
                    "objects": [_object_doc(p) for p in srv.manifest.objects],
                }
                for edge_id, srv in sorted(self.served.items())
            },
        }

    async def _persist(self) -> None:
        path = self.config.fill.state_file
        if path is None:
            return
        data = json.dumps(self._state_doc(), separators=(",", ":")).encode()
        # Shielded and kept: a shutdown that cancels us waits for the write (``settle``)
        # rather than leave a thread writing behind a stopped service.
        self.writing = asyncio.ensure_future(asyncio.to_thread(_write_atomically, path, data))
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
        """Manifests of the last run, served at once; an unreadable file is logged and ignored
        (the next feed read rebuilds everything, only less sticky)."""
        path = self.config.fill.state_file
        if path is None or not path.exists():
            return
        try:
            doc = json.loads(path.read_bytes(), parse_constant=_no_constant)
            sites, served = _parse_state(doc)
            capacities = {
                str(k): int(v) for k, v in doc.get("capacities", {}).items() if int(v) > 0
            }
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            log.error("event=fill_state_unreadable path=%s error=%r", path, str(exc))
            return
        for edge_id, srv in served.items():
            e = self.edges.get(edge_id)
            if e is not None and e.site == srv.site:
                self.served[edge_id] = srv
        for site, st in sites.items():
            if site in self.site_edges:
                self.sites[site] = st
        for edge_id, n in capacities.items():
            if edge_id in self.edges:
                self.heartbeat_capacity.setdefault(edge_id, n)
        log.info("event=fill_state_loaded path=%s manifests=%d", path, len(self.served))


def _object_doc(p: Placed) -> dict[str, Any]:
    o = p.obj
    return {
        "key": o.key,
        "path": o.path,
        "size": o.size,
        "xxh64": o.xxh64,
        "score": o.score,
        "holders": list(p.holders),
    }


def _parse_state(doc: Any) -> tuple[dict[str, SiteState], dict[str, Served]]:
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ValueError(f"not a fill state file of format {STATE_FORMAT}")
    sites = {}
    for site, d in doc["sites"].items():
        digest, inputs, read_at = d["feed_digest"], d["inputs"], d["read_at"]
        if not all(v is None or isinstance(v, str) for v in (digest, inputs)):
            raise ValueError(f"sites.{site}: digests must be strings")
        sites[str(site)] = SiteState(
            feed_digest=digest,
            inputs=inputs,
            read_at=None if read_at is None else float(read_at),
        )
    served: dict[str, Served] = {}
    for edge_id, d in doc["manifests"].items():
        site = str(d["site"])
        raw = d["objects"]
        # The objects pass the feed's own checks: a hand-edited file cannot smuggle a path.
        feed = parse_feed(
            {
                "region": site,
                "objects": [{k: v for k, v in o.items() if k != "holders"} for o in raw],
            },
            site,
        )
        placed = []
        for o, r in zip(feed.objects, raw, strict=True):
            holders = r["holders"]
            if not isinstance(holders, list) or not all(isinstance(h, str) for h in holders):
                raise ValueError(f"manifests.{edge_id}: holders must be a list of edge ids")
            placed.append(Placed(o, tuple(holders)))
        served[str(edge_id)] = Served(
            site, _manifest(str(edge_id), int(d["capacity"]), placed), float(d["generated_at"])
        )
    return sites, served


def _manifest(edge_id: str, capacity: int, placed: list[Placed]) -> Manifest:
    return Manifest(
        edge=edge_id,
        capacity=capacity,
        objects=tuple(placed),
        bytes=sum(p.obj.size for p in placed),
        version=manifest_version((p.obj.path, p.obj.xxh64) for p in placed),
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename, fsync the directory: a crash leaves the old file or the
    new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")
