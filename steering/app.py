"""The steering service: ``create_app(config)`` wires fleet health, locality and rings.

Routes (JSON unless noted):

- ``GET /v1/steer?key=K[&client=IP]``: the ranked answer for one content key: the client's
  site's edges in ring order (bounded loads; degraded/overloaded edges later), then the
  next-closest sites', then the origin, each with the reason it is there. ``client`` is the
  player's address as the control plane saw it; without it the request's own address (or a
  trusted proxy's X-Forwarded-For) is used.
- ``GET /v1/steering/hls?key=K&client=IP`` and ``/v1/steering/dash?...``: HLS and DASH
  Content Steering manifests for players (pathway = edge id), reloaded every ``steering_ttl``.
- ``POST /heartbeat``: an edge's heartbeat, with a Bearer heartbeat credential. Its optional
  ``fill`` object (the edge's fill progress) is only a report: an invalid one (version skew)
  is logged once per edge and ignored, never a reason to refuse the heartbeat.
- ``GET /fleet``: every edge's health, load, last heartbeat and reason, and its fill
  (``fill``: the progress of its last heartbeat; ``fill_manifest``: the manifest it is given).
- ``GET /fill/manifest/{edge_id}``: the edge's fill manifest (``fillfeed.py``, ``fill.py``),
  with a heartbeat credential. 404 when fill is disabled or the edge unknown, 503 with
  Retry-After before the first feed read or while the edge's capacity is unknown.
- ``POST /fill/refresh``: read every site's popularity feed now and answer when the manifests
  are rebuilt (heartbeat credential), for operators and tests.
- ``GET /healthz``, ``GET /metrics``.

Metrics (``/metrics``, Prometheus):

- ``steering_decisions_total{outcome}``: answers by outcome (local, fallback, origin, none).
- ``steering_decision_seconds``: histogram of the time to compute an answer.
- ``steering_edges{state}``: edges by health state (unknown, up, degraded, overloaded,
  draining, down).
- ``steering_site_usable_edges{site}``: for each site with edges, those players are sent
  to now (any state but down and draining); 0 means the site's players go to other sites.
- ``steering_transitions_total``: edge health transitions.
- ``steering_fill_feed_reads_total{site,result}``: popularity feed reads by result (ok,
  unreachable, http_error, malformed, credential).
- ``steering_fill_feed_skipped_objects_total{site}``: objects of good feed reads left out
  because they break the contract (counted at every read that has them).
- ``steering_fill_manifests_served_total``: fill manifests answered with 200/304.
- ``steering_fill_manifest_objects{edge}``, ``steering_fill_manifest_bytes{edge}``: the size of
  each edge's manifest in force.
- ``steering_fill_churn_bytes{edge}``: bytes added plus removed by the last rebuild of the
  edge's manifest.
- ``steering_edge_fill_bytes_done{edge}``, ``steering_edge_fill_bytes_total{edge}``: fill
  progress the edge reports in its heartbeats.

Edges are probed actively (``GET <edge>/healthz`` every ``probe_interval``) besides their
heartbeats; ``Fleet.tick`` runs four times a second so a dead edge leaves answers within
``dead_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from edge.metrics import Histogram

from .config import EdgeConfig, SteeringConfig
from .fill import FeedError, FillProgress, parse_progress
from .fillfeed import FillDisabled, FillService, FillUnavailable, NoManifest
from .health import Fleet, Heartbeat, UnknownEdge
from .ring import BoundedLoads, Member, Ring

log = logging.getLogger("steering")

WINDOW = 10.0  # seconds over which bounded loads count decisions


def read_tokens(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


class Steering:
    def __init__(self, config: SteeringConfig, *, clock: Any = time.time) -> None:
        # Wall time: heartbeats carry the edge's wall clock and the fleet checks their skew.
        self.config = config
        self.clock = clock
        self.edges: dict[str, EdgeConfig] = {e.id: e for e in config.edges}
        self.site_edges = _by_site(config)
        self.fleet = Fleet(
            self.edges,
            clock=clock,
            dead_after=config.dead_after,
            recover_after=config.recover_after,
        )
        self.locator = self._locator()
        self.bounded: dict[str, BoundedLoads] = {}
        self.usable_key: dict[str, tuple[str, ...]] = {}
        self.window_start = clock()
        self.decisions: dict[str, int] = {}
        self.latency = Histogram()
        self.transitions = 0
        self._tokens: tuple[int, list[str]] | None = None
        self.fill_report_invalid: set[str] = set()  # edges whose last fill report was invalid
        self.fill = FillService(config, clock=clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def _locator(self) -> Any:
        from .locality import EdgePrefixes, Locator, Site, load_czf

        czf = None
        if self.config.coverage_zone_file is not None:
            czf = load_czf(Path(self.config.coverage_zone_file))
        return Locator(
            [Site(s.name, s.latitude, s.longitude) for s in self.config.sites],
            [EdgePrefixes(e.id, e.site, e.prefixes, e.embedded) for e in self.config.edges],
            czf,
            default_site=self.config.default_site
            or (self.config.sites[0].name if self.config.sites else None),
        )

    # -- choosing ------------------------------------------------------------------------

    def _site_loads(self, site: str) -> BoundedLoads | None:
        usable = tuple(e for e in self.site_edges.get(site, ()) if self.fleet.usable(e))
        if not usable:
            return None
        now = self.clock()
        if now - self.window_start > WINDOW:
            # A new window: loads are decisions per window, so old ones stop counting.
            self.bounded.clear()
            self.window_start = now
        if self.usable_key.get(site) != usable or site not in self.bounded:
            ring = Ring(Member(i, self.edges[i].weight) for i in usable)
            # Bounded loads act once a site carries real load: below ~8 decisions per edge in
            # the window, a title simply stays on its edge (cache locality first).
            self.bounded[site] = BoundedLoads(ring, self.config.bounded_load, min_bound=8)
            self.usable_key[site] = usable
        return self.bounded[site]

    def steer(self, key: str, client: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        where = self.locator.locate(client)
        answer: list[dict[str, Any]] = []
        sites = [where.site, *[s for s in where.sites_by_distance if s != where.site]]
        for n, site in enumerate(sites):
            loads = self._site_loads(site)
            if loads is None:
                continue
            if n == 0:
                first = loads.assign(key)
                order = [first, *[m for m in loads.ranked(key) if m != first]]
            else:
                order = loads.ring.rank(key)
            preferred = set(where.edge_ids_preferred) if n == 0 else set()
            # Stable: ring order, but edges that serve the client's prefix first and edges
            # reporting trouble (degraded, overloaded) last.
            order.sort(key=lambda e: (e not in preferred, self.fleet.penalty(e)))
            for e in order[: self.config.answer_size]:
                if n == 0:
                    why = where.reason if e in preferred else f"{where.reason}; ring order"
                else:
                    why = f"fallback site {site}"
                penalty = self.fleet.penalty(e)
                if penalty:
                    why += f"; ranked lower: {self.fleet.state(e).name.lower()}"
                answer.append({"edge": e, "site": site, "url": self.edges[e].url, "reason": why})
        if self.config.origin_url is not None:
            answer.append(
                {
                    "edge": "origin",
                    "site": None,
                    "url": self.config.origin_url,
                    "reason": "last resort",
                }
            )
        outcome = (
            "local"
            if answer and answer[0]["site"] == where.site
            else ("fallback" if answer and answer[0]["site"] else "origin" if answer else "none")
        )
        self.decisions[outcome] = self.decisions.get(outcome, 0) + 1
        self.latency.observe(time.perf_counter() - t0)
        return {
            "key": key,
            "client": str(client),
            "site": where.site,
            "reason": where.reason,
            "edges": answer,
        }

    def reload(self, config: SteeringConfig) -> None:
        """Apply a new configuration; raises (keeping everything as it was) if it is unusable.

        Health of edges that stay is kept; new edges start UNKNOWN (usable at once).
        """
        self.config, old_config = config, self.config
        try:
            locator = self._locator()
        except Exception:
            self.config = old_config
            raise
        self.locator = locator
        self.edges = {e.id: e for e in config.edges}
        self.site_edges = _by_site(config)
        self.fleet.set_edges(self.edges)
        self.fleet.dead_after = config.dead_after
        self.fleet.recover_after = config.recover_after
        self.fill.configure(config)
        self.fill_report_invalid &= set(self.edges)
        self._tokens = None
        self.bounded.clear()
        self.usable_key.clear()

    def heartbeat_tokens(self) -> list[str]:
        """Accepted heartbeat credentials, re-read only when the file changes."""
        path = self.config.heartbeat_credentials_file
        if path is None:
            return []
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return self._tokens[1] if self._tokens else []
        if self._tokens is None or self._tokens[0] != mtime:
            last = self._tokens[1] if self._tokens else []
            try:
                self._tokens = (mtime, read_tokens(Path(path)))
            except (OSError, UnicodeDecodeError) as exc:
                # Not a 500 on every heartbeat: the last good tokens stay, logged once per
                # change of the file (its bytes are not quoted: they are secrets).
                log.error(
                    "event=heartbeat_credentials_unreadable path=%s error=%r kept=%d",
                    path,
                    exc.strerror if isinstance(exc, OSError) else "not UTF-8 text",
                    len(last),
                )
                self._tokens = (mtime, last)
        return self._tokens[1]

    # -- health ----------------------------------------------------------------------------

    def tick(self) -> None:
        for t in self.fleet.tick():
            self.transitions += 1
            log.info(
                "event=edge_transition edge=%s from=%s to=%s reason=%r",
                t.edge_id,
                t.old.name.lower(),
                t.new.name.lower(),
                t.reason,
            )


def _by_site(config: SteeringConfig) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for e in config.edges:
        out.setdefault(e.site, []).append(e.id)
    return {site: tuple(ids) for site, ids in out.items()}


class _Collector(Collector):
    def __init__(self, s: Steering) -> None:
        self.s = s

    def collect(self) -> Any:
        c = CounterMetricFamily("steering_decisions", "Answers by outcome", labels=["outcome"])
        for k, v in sorted(self.s.decisions.items()):
            c.add_metric([k], v)
        yield c
        h = HistogramMetricFamily("steering_decision_seconds", "Time to compute an answer")
        h.add_metric([], self.s.latency.cumulative(), self.s.latency.sum)
        yield h
        g = GaugeMetricFamily("steering_edges", "Edges by health state", labels=["state"])
        for k, v in sorted(self.s.fleet.counts.items()):
            g.add_metric([k], v)
        yield g
        g = GaugeMetricFamily(
            "steering_site_usable_edges",
            "Edges of the site players are sent to now (not down or draining)",
            labels=["site"],
        )
        for site, ids in sorted(self.s.site_edges.items()):
            g.add_metric([site], sum(1 for e in ids if self.s.fleet.usable(e)))
        yield g
        yield CounterMetricFamily(
            "steering_transitions", "Edge health transitions", value=self.s.transitions
        )
        fill = self.s.fill
        c = CounterMetricFamily(
            "steering_fill_feed_reads", "Popularity feed reads by result", labels=["site", "result"]
        )
        for (site, result), v in sorted(fill.reads.items()):
            c.add_metric([site, result], v)
        yield c
        c = CounterMetricFamily(
            "steering_fill_feed_skipped_objects",
            "Feed objects left out because they break the contract",
            labels=["site"],
        )
        for site, v in sorted(fill.skipped.items()):
            c.add_metric([site], v)
        yield c
        yield CounterMetricFamily(
            "steering_fill_manifests_served",
            "Fill manifests answered to edges",
            value=fill.manifests_served,
        )
        edge_gauges = (
            ("steering_fill_manifest_objects", "Objects in the edge's fill manifest"),
            ("steering_fill_manifest_bytes", "Bytes of the edge's fill manifest"),
            ("steering_fill_churn_bytes", "Bytes added plus removed by the last rebuild"),
            ("steering_edge_fill_bytes_done", "Fill bytes done, as the edge reports"),
            ("steering_edge_fill_bytes_total", "Fill bytes to do, as the edge reports"),
        )
        families = {n: GaugeMetricFamily(n, h, labels=["edge"]) for n, h in edge_gauges}
        for edge_id in self.s.edges:
            srv = fill.served.get(edge_id)
            if srv is not None:
                families["steering_fill_manifest_objects"].add_metric(
                    [edge_id], len(srv.manifest.objects)
                )
                families["steering_fill_manifest_bytes"].add_metric([edge_id], srv.manifest.bytes)
            if edge_id in fill.churn_bytes:
                families["steering_fill_churn_bytes"].add_metric(
                    [edge_id], fill.churn_bytes[edge_id]
                )
            prog = fill.progress.get(edge_id)
            if prog is not None:
                families["steering_edge_fill_bytes_done"].add_metric([edge_id], prog.bytes_done)
                families["steering_edge_fill_bytes_total"].add_metric([edge_id], prog.bytes_total)
        yield from families.values()


STEERING = web.AppKey("steering", Steering)
PROBERS = web.AppKey("probers", object)


def reload_app(app: web.Application, config: SteeringConfig) -> None:
    """SIGHUP: apply ``config``, or log why not and keep the last good state."""
    s = app[STEERING]
    try:
        s.reload(config)
    except Exception as exc:
        log.error("event=reload_failed error=%r note=%r", str(exc), "kept the last good state")
        return
    sync = app.get(PROBERS)
    if callable(sync):
        sync()
    log.info("event=reloaded sites=%d edges=%d", len(config.sites), len(config.edges))


def create_app(config: SteeringConfig) -> web.Application:
    app = web.Application()
    app[STEERING] = Steering(config)
    app.cleanup_ctx.append(_background)
    app.cleanup_ctx.append(_fill_background)
    app.router.add_get("/v1/steer", _steer)
    app.router.add_get("/v1/steering/hls", _hls)
    app.router.add_get("/v1/steering/dash", _dash)
    app.router.add_post("/heartbeat", _heartbeat)
    app.router.add_get("/fleet", _fleet)
    app.router.add_get("/fill/manifest/{edge_id}", _fill_manifest)
    app.router.add_post("/fill/refresh", _fill_refresh)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    s = app[STEERING]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        ticker = loop.create_task(_ticker(s))
        probers: dict[str, asyncio.Task[None]] = {}

        def sync_probers() -> None:
            # One prober per configured edge; a reload adds and removes them.
            for edge_id in list(probers):
                if edge_id not in s.edges:
                    probers.pop(edge_id).cancel()
            for e in s.config.edges:
                if e.id not in probers:
                    probers[e.id] = loop.create_task(_prober(s, session, e.id))

        sync_probers()
        app[PROBERS] = sync_probers
        yield
        for t in [ticker, *probers.values()]:
            t.cancel()
        for t in [ticker, *probers.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def _fill_background(app: web.Application) -> AsyncIterator[None]:
    """The fill task: feeds every ``fill.refresh``, replans when capacities change. Its own
    session: feed reads take seconds, far beyond the probes' 1 s timeout."""
    fill = app[STEERING].fill
    async with aiohttp.ClientSession() as session:
        fill.session = session
        task = asyncio.get_running_loop().create_task(_fill_loop(fill))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fill.settle()
        fill.session = None


async def _fill_loop(fill: FillService) -> None:
    while True:
        try:
            await fill.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not end fill for good: log it, retry after a pause
            log.exception("event=fill_task_failed")
            await asyncio.sleep(min(fill.config.fill.refresh, 60.0))


async def _ticker(s: Steering) -> None:
    while True:
        s.tick()
        await asyncio.sleep(0.25)


async def _prober(s: Steering, session: aiohttp.ClientSession, edge_id: str) -> None:
    while True:
        edge = s.edges.get(edge_id)
        if edge is None:
            return
        try:
            async with session.get(edge.url + "/healthz") as r:
                # A draining edge answers 503 {"state": "draining"}: it is alive, and its
                # heartbeat already says it is draining (FleetHealth.probe_result). Counting
                # that as a failed probe turned every drained edge DOWN after fail_after probes.
                ok = r.status == 200 or (r.status == 503 and await _says_draining(r))
                detail = f"status {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, str(exc) or type(exc).__name__
        s.fleet.probe_result(edge.id, ok, detail)
        await asyncio.sleep(s.config.probe_interval)


async def _says_draining(r: aiohttp.ClientResponse) -> bool:
    try:
        doc = json.loads(await r.content.read(4096))
    except (ValueError, aiohttp.ClientError):
        return False
    return isinstance(doc, dict) and doc.get("state") == "draining"


# -- handlers -----------------------------------------------------------------------------------


def _client(request: web.Request, s: Steering) -> Any:
    from .locality import LocalityError, parse_client_address

    given = request.query.get("client")
    try:
        if given is not None:
            return parse_client_address(given, None, ())
        proxies = [ipaddress.ip_network(p, strict=False) for p in s.config.trusted_proxies]
        # Every X-Forwarded-For line, in order (RFC 9110 section 5.3: one list, however split).
        forwarded = ", ".join(request.headers.getall("X-Forwarded-For", [])) or None
        return parse_client_address(request.remote or "", forwarded, proxies)
    except LocalityError as exc:
        raise web.HTTPBadRequest(text=f"client address: {exc}\n") from exc


def _key(request: web.Request) -> str:
    key = request.query.get("key", "")
    if not key or len(key) > 1024 or any(ord(c) < 32 for c in key):
        raise web.HTTPBadRequest(text="query parameter 'key' (the content key) is required\n")
    return key


async def _steer(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    return web.json_response(s.steer(_key(request), _client(request, s)))


def _pathways(request: web.Request) -> tuple[Steering, dict[str, Any], str]:
    s = request.app[STEERING]
    key = _key(request)
    client = _client(request, s)
    answer = s.steer(key, client)
    params = {"key": key, "client": str(client)}
    if "base" in request.query:
        params["base"] = request.query["base"]
    # Relative (path and query only): players resolve it against the steering URI they used,
    # which stays right behind a TLS-terminating proxy that our own view of the URL is not.
    reload = f"{request.path}?{urlencode(params)}"
    return s, answer, reload


def _steering_doc(request: web.Request, dash: bool) -> dict[str, Any]:
    """A content steering manifest: pathway (DASH: service location) = edge id, each a clone
    of the playlist's base pathway with the edge's host, in the ranked answer's order; the
    base (the origin's host in the playlist) stays last when the answer ends with the origin."""
    from .manifests import PathwayClone, SteeringError, dash_steering, hls_steering, pathway_id

    s, answer, reload = _pathways(request)
    base = request.query.get("base", "origin")
    try:
        pathway_id(base)
    except SteeringError as exc:
        raise web.HTTPBadRequest(text=f"base: {exc}\n") from exc
    if base in s.edges:
        raise web.HTTPBadRequest(text="base: the playlist's pathway cannot be an edge id\n")
    edges = [e for e in answer["edges"] if e["edge"] != "origin"]
    clones = [
        PathwayClone(base_id=base, id=pathway_id(e["edge"]), host=_clone_host(e["url"]))
        for e in edges
    ]
    priority = [pathway_id(e["edge"]) for e in edges]
    if dash or any(e["edge"] == "origin" for e in answer["edges"]):
        priority.append(base)
    if not priority:
        raise web.HTTPServiceUnavailable(text="no usable edge and no origin configured\n")
    build = dash_steering if dash else hls_steering
    return build(priority, ttl=s.config.steering_ttl, reload_uri=reload, clones=clones)


# Steering manifests are fetched by browser players (hls.js, dash.js) from pages on another
# origin (the control plane's web player): without CORS the browser hides the answer and the
# player never learns the other pathways. Nothing in them is secret (no tokens: pathways are
# hosts), and no credentials are involved, so any origin may read them.
_PLAYER_HEADERS = {"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"}


async def _hls(request: web.Request) -> web.Response:
    doc = _steering_doc(request, dash=False)
    return web.json_response(doc, headers=_PLAYER_HEADERS)


async def _dash(request: web.Request) -> web.Response:
    doc = _steering_doc(request, dash=True)
    return web.json_response(doc, headers=_PLAYER_HEADERS)


def _authorize(request: web.Request, s: Steering) -> None:
    """A heartbeat credential (heartbeats and fill routes), compared in constant time."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    tokens = s.heartbeat_tokens()
    if scheme.lower() != "bearer" or not any(
        hmac.compare_digest(token.strip().encode(), t.encode()) for t in tokens
    ):
        raise web.HTTPUnauthorized(text="heartbeat credential required\n")


async def _heartbeat(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    _authorize(request, s)
    try:
        doc = json.loads(await request.text(), parse_constant=_no_constant)
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        hb = Heartbeat(
            edge_id=str(doc["edge_id"]),
            state="draining" if doc.get("draining") else str(doc.get("state", "ok")),
            load=float(doc.get("load", 0.0)),
            egress_bps=float(doc.get("egress_bps", 0.0)),
            disk_used=int(doc.get("disk_used", 0)),
            disk_capacity=int(doc.get("disk_capacity", 0)),
            cached_bytes=int(doc.get("cached_bytes", 0)),
            sent_at=float(doc.get("sent_at", time.time())),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise web.HTTPBadRequest(text=f"malformed heartbeat: {exc}\n") from exc
    try:
        accepted = s.fleet.heartbeat(hb)
    except UnknownEdge as exc:
        raise web.HTTPForbidden(text=f"unknown edge {hb.edge_id!r}\n") from exc
    except ValueError as exc:  # a state or load the fleet refuses
        raise web.HTTPBadRequest(text=f"malformed heartbeat: {exc}\n") from exc
    if accepted:  # a stale or skewed heartbeat must not roll progress back either
        s.fill.record_heartbeat(hb.edge_id, hb.disk_capacity, _fill_report(s, hb.edge_id, doc))
    s.tick()
    return web.json_response({"ok": True, "state": s.fleet.state(hb.edge_id).name.lower()})


def _fill_report(s: Steering, edge_id: str, doc: dict[str, Any]) -> FillProgress | None:
    """The heartbeat's optional fill progress, or None. An invalid one (an edge newer or older
    than steering) is dropped, with the progress shown so far, and logged once per edge per
    transition: the heartbeat stays good, so the edge keeps its place in routing."""
    raw = doc.get("fill")
    try:
        progress = None if raw is None else parse_progress(raw)
    except FeedError as exc:
        if edge_id not in s.fill_report_invalid:
            s.fill_report_invalid.add(edge_id)
            log.warning(
                "event=heartbeat_fill_invalid edge=%s error=%r note=%r",
                edge_id,
                str(exc)[:300],
                "ignored; the heartbeat is accepted",
            )
        s.fill.progress.pop(edge_id, None)  # unknown now: not the last valid report
        return None
    if edge_id in s.fill_report_invalid:
        s.fill_report_invalid.discard(edge_id)
        log.info("event=heartbeat_fill_valid edge=%s", edge_id)
    return progress


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


async def _fleet(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    out = []
    for h in s.fleet.snapshot():
        e = s.edges[h.edge_id]
        out.append(
            {
                "edge": h.edge_id,
                "site": e.site,
                "url": e.url,
                "state": h.state.name.lower(),
                "reason": h.reason,
                "load": h.load,
                "last_heartbeat_age": None
                if h.last_heartbeat is None
                else round(s.clock() - h.last_heartbeat, 3),
                "transitions": h.transitions,
                **s.fill.fleet_doc(h.edge_id),
            }
        )
    return web.json_response({"edges": out})


def _fill_error(exc: FillUnavailable) -> web.HTTPException:
    """The fill shell's errors as HTTP, in one place."""
    if isinstance(exc, FillDisabled):
        return web.HTTPNotFound(text=f"{exc}\n")
    if isinstance(exc, NoManifest):
        return web.HTTPServiceUnavailable(
            text=f"{exc}\n", headers={"Retry-After": str(exc.retry_after)}
        )
    return web.HTTPServiceUnavailable(text=f"{exc}\n")  # pragma: no cover - no other kind


async def _fill_manifest(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    if not s.fill.enabled:
        raise _fill_error(FillDisabled("fill is disabled (no fill.popularity_url)"))
    _authorize(request, s)
    edge_id = request.match_info["edge_id"]
    if edge_id not in s.edges:
        raise web.HTTPNotFound(text=f"unknown edge {edge_id[:64]!r}\n")
    try:
        body, version = s.fill.manifest_body(edge_id)
    except FillUnavailable as exc:
        raise _fill_error(exc) from exc
    etag = f'"{version}"'
    headers = {"ETag": etag, "Cache-Control": "no-store"}
    # RFC 9110 section 13.1.2: a weak comparison, "*" matches any current representation.
    tags = [
        t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")
    ]
    if etag in tags or "*" in tags:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def _fill_refresh(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    if not s.fill.enabled:
        raise _fill_error(FillDisabled("fill is disabled (no fill.popularity_url)"))
    _authorize(request, s)
    try:
        return web.json_response(await s.fill.refresh())
    except FillUnavailable as exc:
        raise _fill_error(exc) from exc


async def _healthz(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    return web.json_response({"state": "ok", "edges": s.fleet.counts})


async def _metrics(request: web.Request) -> web.Response:
    s = request.app[STEERING]
    return web.Response(
        body=generate_latest(s.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def _clone_host(url: str) -> str:
    """The HOST of an edge's pathway clone: its host name only. Players replace the URI's
    host name and keep its port (hls.js sets URL.hostname, which ignores a ':port'), so the
    edges of one fleet must share the playlist's scheme and port."""
    host = urlsplit(url).hostname or ""
    return f"[{host}]" if ":" in host else host
