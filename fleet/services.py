"""What the fleet runs, derived from its description: pure functions, no I/O.

Each service gets its own configuration file, written in that service's documented keys
(conf/*.example.yaml), so what the fleet starts is exactly what an operator would run:

* the origin serves local storage under the data directory to edges holding the fill
  credential, and its catalog feed to the control plane (the catalog credential);
* the control plane (SQLite under the data directory) reads the origin's catalog feed, asks
  steering for playback with the edges' signing keys (the first edge when steering is down),
  and serves the per-region popularity feed (the feed credential) to steering;
* steering knows the sites and edges, takes the edges' heartbeats (the heartbeat credential)
  and plans fill manifests from the control plane's popularity feed;
* each edge fills from the origin (the fill credential), verifies the same signing keys,
  reports to steering and fills at night in ``fill_window``.

The layout of the data directory is ``Layout``; the status line and the banner printed when
the fleet is ready are made here too, so they are tested without starting anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edge.config import Listen

from .config import FleetConfig, FleetEdge

__all__ = [
    "SECRETS",
    "Layout",
    "Service",
    "banner",
    "control_doc",
    "edge_doc",
    "format_status",
    "ladder_doc",
    "origin_doc",
    "services",
    "steering_doc",
]

# Secret files under <data>/secrets/ (mode 0600): the edges' signing keys, and one random token
# per credential the services exchange.
SECRETS: Final = (
    "signing.keys",  # KEYID SECRET lines: edges verify, the control plane signs
    "admin.token",  # edges' admin API
    "fill.token",  # edges (and the control plane, for manifest.json) -> origin
    "heartbeat.token",  # edges -> steering (heartbeats, fill manifests)
    "catalog.token",  # control plane -> origin's catalog feed
    "feed.token",  # steering -> control plane's popularity feed
    "admin.password",  # the control plane's administrator
    "demo.password",  # the demo viewer
)
# An edge's graceful stop waits this long for requests in flight; kept short so Ctrl-C is quick.
EDGE_DRAIN: Final = "2s"
# An ingest interrupted with the fleet leaves its job leased; the next start's ingest takes it
# over once this lease runs out, so keep it short (the worker renews it while it works).
INGEST_LEASE: Final = "10s"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything lives under the data directory."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def origin(self) -> Path:
        return self.root / "origin"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def steering(self) -> Path:
        return self.root / "steering"

    @property
    def ladder(self) -> Path:
        return self.conf / "ladder.yaml"

    @property
    def sample_source(self) -> Path:
        return self.root / "sample" / "source.mp4"

    @property
    def state(self) -> Path:
        """The running fleet: pids, URLs, logs (written when ready, removed at exit)."""
        return self.root / "fleet.json"

    @property
    def accounts(self) -> Path:
        """Which accounts were made (no passwords: those are under secrets/)."""
        return self.root / "accounts.json"

    @property
    def lock(self) -> Path:
        return self.root / "fleet.lock"

    def secret(self, name: str) -> Path:
        assert name in SECRETS, name
        return self.secrets / name

    def edge(self, edge_id: str) -> Path:
        return self.root / "edges" / edge_id

    def config(self, name: str) -> Path:
        return self.conf / f"{name}.yaml"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def published(self, title: str) -> Path:
        """The origin's publication marker of a title (written last by an ingest)."""
        return self.origin / "assets" / "v" / title / "manifest.json"


@dataclass(frozen=True, slots=True)
class Service:
    name: str  # origin, control, steering, or the edge's id
    kind: str  # origin | control | steering | edge
    module: str  # python -m <module> serve --config <config>
    health_url: str
    doc: Mapping[str, Any] = field(compare=False)  # its configuration file's content
    listens: tuple[tuple[str, Listen], ...] = ()  # (fleet key, address) it binds


def addr(listen: Listen) -> str:
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return f"{host}:{listen.port}"


def _url(listen: Listen) -> str:
    return f"http://{addr(listen)}"


def origin_doc(cfg: FleetConfig, lay: Layout) -> dict[str, Any]:
    o = lay.origin
    return {
        "listen": addr(cfg.origin),
        "storage": {"backend": "local", "root": str(o / "assets")},
        "fill_credentials_file": str(lay.secret("fill.token")),
        "catalog_credentials_file": str(lay.secret("catalog.token")),
        "catalog_db": str(o / "catalog.sqlite"),
        "ingest": {
            "work_dir": str(o / "work"),
            "ladder_file": str(lay.ladder),
            "preset": cfg.sample.preset,
            "segment_seconds": cfg.sample.segment_seconds,
        },
        "jobs": {"db": str(o / "jobs.sqlite"), "lease": INGEST_LEASE},
        "log_level": cfg.log_level,
        "access_log": True,
    }


def control_doc(cfg: FleetConfig, lay: Layout) -> dict[str, Any]:
    return {
        "listen": addr(cfg.control),
        # sqlite:/// then the path: an absolute path makes four slashes.
        "database": {"url": f"sqlite:///{lay.control / 'control.db'}"},
        "playback": {
            "signing_keys_file": str(lay.secret("signing.keys")),
            "steering_url": cfg.steering_url,
            # Steering down: players still get the first edge (it checks tokens).
            "fallback_url": cfg.edges[0].url,
        },
        "catalog_feed": {
            "url": cfg.origin_url,
            "credential_file": str(lay.secret("catalog.token")),
            "interval": "10s",
        },
        "fill": {
            "credential_file": str(lay.secret("feed.token")),
            "origin_credential_file": str(lay.secret("fill.token")),
        },
        "log_level": cfg.log_level,
    }


def steering_doc(cfg: FleetConfig, lay: Layout) -> dict[str, Any]:
    st = cfg.steering
    return {
        "listen": addr(st.listen),
        "sites": [
            {"name": s.name, "latitude": s.latitude, "longitude": s.longitude} for s in cfg.sites
        ],
        "edges": [
            {
                "id": e.id,
                "site": e.site,
                "url": e.url,
                "weight": e.weight,
                "prefixes": list(e.prefixes),
                "embedded": e.embedded,
            }
            for e in cfg.edges
        ],
        "default_site": st.default_site,
        "heartbeat_credentials_file": str(lay.secret("heartbeat.token")),
        "dead_after": st.dead_after,
        "probe_interval": st.probe_interval,
        "steering_ttl": st.steering_ttl,
        "fill": {
            "popularity_url": cfg.control_url,
            "credential_file": str(lay.secret("feed.token")),
            "state_file": str(lay.steering / "fill-state.json"),
        },
        "log_level": cfg.log_level,
    }


def edge_doc(cfg: FleetConfig, edge: FleetEdge, lay: Layout) -> dict[str, Any]:
    return {
        "node_id": edge.id,
        "site": edge.site,
        "listen": addr(edge.listen),
        "admin": {"listen": addr(edge.admin), "credential_file": str(lay.secret("admin.token"))},
        "upstreams": [{"url": cfg.origin_url, "credential_file": str(lay.secret("fill.token"))}],
        "cache": {"dirs": [{"path": str(lay.edge(edge.id) / "cache"), "size": edge.cache_size}]},
        # Artwork (posters, sprites) is public, as in conf/edge.example.yaml.
        "signing": {"key_file": str(lay.secret("signing.keys")), "public_prefixes": ["/art/"]},
        "limits": {"drain_timeout": EDGE_DRAIN},
        "steering": {
            "url": cfg.steering_url,
            "credential_file": str(lay.secret("heartbeat.token")),
        },
        "fill": {"window": cfg.fill_window},
        "log": {"level": cfg.log_level, "access_log": True},
    }


def ladder_doc(cfg: FleetConfig) -> list[dict[str, Any]]:
    """The sample's ladder in conf/ladder.example.yaml's format."""
    out = []
    for r in cfg.sample.ladder:
        rung: dict[str, Any] = {
            "name": r.name,
            "height": r.height,
            "video_kbps": r.video_kbps,
            "audio_kbps": r.audio_kbps,
        }
        if r.max_kbps is not None:
            rung["max_kbps"] = r.max_kbps
        if r.buffer_kbits is not None:
            rung["buffer_kbits"] = r.buffer_kbits
        out.append(rung)
    return out


def services(cfg: FleetConfig, lay: Layout) -> list[Service]:
    """In start order: the origin, steering, the control plane, then the edges (each edge
    reports to steering at once, and steering's fill reads the control plane)."""
    out = [
        Service(
            "origin",
            "origin",
            "origin",
            _url(cfg.origin) + "/healthz",
            origin_doc(cfg, lay),
            (("origin.listen", cfg.origin),),
        ),
        Service(
            "steering",
            "steering",
            "steering",
            _url(cfg.steering.listen) + "/healthz",
            steering_doc(cfg, lay),
            (("steering.listen", cfg.steering.listen),),
        ),
        Service(
            "control",
            "control",
            "control",
            _url(cfg.control) + "/healthz",
            control_doc(cfg, lay),
            (("control.listen", cfg.control),),
        ),
    ]
    for i, e in enumerate(cfg.edges):
        out.append(
            Service(
                e.id,
                "edge",
                "edge",
                e.url + "/healthz",
                edge_doc(cfg, e, lay),
                ((f"edges[{i}].listen", e.listen), (f"edges[{i}].admin", e.admin)),
            )
        )
    return out


# -- what the operator sees ------------------------------------------------------------------


def format_status(states: Sequence[tuple[str, str]], now: float | None = None) -> str:
    """One short line: ``13:02:05  origin ok  steering ok  control ok  e1 ok  e2 down ...``."""
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    return clock + "  " + "  ".join(f"{name} {state}" for name, state in states)


def banner(
    cfg: FleetConfig,
    lay: Layout,
    *,
    elapsed: float,
    master_url: str,
    segment: str | None,
    demo_password: str,
    config_path: str,
) -> str:
    """What to open and try, printed once the fleet is ready."""
    s = cfg.sample
    base = master_url.rsplit("/", 1)[0] + "/"
    st = cfg.steering_url
    lines = [
        "",
        f"opencdn fleet: {len(cfg.edges)} edges in {len(cfg.sites)} sites, data in {lay.root}",
        "",
        f"  web player      {cfg.control_url}/   (and the API)",
        f"  API docs        {cfg.control_url}/openapi.json",
        f"  demo account    {cfg.demo.email} / {demo_password}   (plan {cfg.demo.plan})",
        f"  administrator   {cfg.demo.admin_email}, password in {lay.secret('admin.password')}",
        "",
        "  health:",
        f"    origin    {cfg.origin_url}/healthz",
        f"    control   {cfg.control_url}/healthz",
        f"    steering  {st}/healthz   (edges and fill: {st}/fleet)",
    ]
    lines += [f"    {e.id:<9} {e.url}/healthz   ({e.site})" for e in cfg.edges]
    lines += [
        "",
        f"  sample title {s.title} ({s.duration:g} s), signed for 24 h through {cfg.edges[0].id}:",
        f"    {master_url}",
        "",
        "  try:",
        f"    curl -s '{master_url}'",
    ]
    if segment is not None:
        lines.append(
            "    curl -s -r 0-99 -o /dev/null -w '%{http_code} %{size_download}\\n' "
            f"'{base}{segment}'"
        )
    lines += [
        f"    curl -s '{st}/v1/steer?key=/v/{s.title}/&client=127.0.0.1'",
        f"    curl -s {cfg.edges[0].url}/metrics | grep ^edge_",
        f"    python -m fleet status --config {config_path}",
        "",
        f"  logs: {lay.logs}/<service>.log; Ctrl-C stops the fleet.",
        "",
        f"fleet ready in {elapsed:.1f} s",
    ]
    return "\n".join(lines)
