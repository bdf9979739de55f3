"""Typed, frozen configuration of the steering service, validated at start-up.

The fleet comes from config (so a freshly started steering service answers at
once) and is refined by heartbeats. Every error names the file and the dotted
key, like the edge's and the origin's.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edge.config import Listen, parse_listen
from edge.units import UnitError, parse_size
from edge.yamlconfig import KeyChecker, read_yaml

# fill.feed_limit's maximum: what a site's feed costs steering in memory (see there).
from .fill import MAX_FEED_OBJECTS

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


class ConfigError(ValueError):
    """An invalid steering configuration; the message names the source and the key."""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    id: str
    site: str
    url: str  # the edge's base URL players use, e.g. http://edge1.isp.example:8080
    weight: float = 1.0  # capacity weight within its site
    prefixes: tuple[str, ...] = ()  # client prefixes this edge serves (an embedded edge: its ISP's)
    embedded: bool = False  # an ISP-embedded edge: preferred for its prefixes
    fill_capacity: int | None = None  # bytes of cache for fill planning; None: from heartbeats


DEFAULT_FILL_SHARE = 0.9  # see FillConfig.share


@dataclass(frozen=True, slots=True)
class FillConfig:
    """Proactive nightly fill: manifests planned from the control plane's popularity feed."""

    popularity_url: str | None = None  # the control plane's base URL; None disables fill
    credential_file: Path | None = None  # bearer token sent to the feed
    refresh: float = 3600.0  # seconds between two reads of each site's feed
    # Part of each edge's capacity a manifest may fill. 0.9: loadtests/bench_fill.py closes more
    # of the LRU->Belady gap at every cache size with 0.9 than with 0.8 (1.0 more still, but
    # leaves no room for what the prediction missed: a title that goes viral in the afternoon).
    share: float = DEFAULT_FILL_SHARE
    max_copies: int = 3  # copies of the most popular objects within a site
    stickiness: float = 1.2  # how much an object already held is favoured over a newcomer
    state_file: Path | None = None  # last feeds' digests and manifests, across restarts
    feed_limit: int = 100_000  # objects asked of each site's feed (its ``limit``)


@dataclass(frozen=True, slots=True)
class SteeringConfig:
    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", 8100))
    sites: tuple[SiteConfig, ...] = ()
    edges: tuple[EdgeConfig, ...] = ()
    origin_url: str | None = None  # last resort in every answer; null leaves it out
    coverage_zone_file: Path | None = None  # Apache Traffic Control CZF JSON
    default_site: str | None = None  # when nothing else locates a client
    heartbeat_credentials_file: Path | None = None  # tokens edges send with heartbeats
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    dead_after: float = 3.0  # seconds without a good signal before an edge leaves answers
    recover_after: int = 3  # consecutive good signals before a dead edge returns
    probe_interval: float = 1.0  # seconds between active /healthz probes of each edge
    bounded_load: float = 1.25  # c: no edge takes more than c times its fair share
    answer_size: int = 3  # edges per site in a ranked answer
    steering_ttl: int = 10  # seconds players keep a content steering manifest
    fill: FillConfig = field(default_factory=FillConfig)
    log_level: str = "info"


class _R(KeyChecker):
    def ident(self, v: object, key: str) -> str:
        if not isinstance(v, str) or not _ID.match(v):
            raise self.fail(key, f"expected an id of [A-Za-z0-9._-], 1-64 characters, got {v!r}")
        return v

    def url(self, v: object, key: str) -> str:
        if not isinstance(v, str):
            raise self.fail(key, f"expected an http(s) URL, got {v!r}")
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
            raise self.fail(key, f"expected an http(s) URL without query, got {v!r}")
        if "@" in u.netloc:
            # Edges' and the origin's URLs go to players in every answer and steering manifest
            # (and to logs): a password there is a leaked one. Credentials go in credential
            # files; the value is not quoted back in the error for the same reason.
            raise self.fail(key, "expected an http(s) URL without user:password@ (userinfo)")
        return v.rstrip("/")

    def file(self, v: object, key: str) -> Path | None:
        if v is None:
            return None
        if not isinstance(v, str) or not os.access(v, os.R_OK):
            raise self.fail(key, f"{v!r} does not exist or is not readable")
        return Path(os.path.abspath(v))

    def writable(self, v: object, key: str) -> Path | None:
        """A file we create: its directory must exist and be writable now, not at 3 a.m."""
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"expected a file path or null, got {v!r}")
        p = Path(os.path.abspath(v))
        if p.is_dir() or not os.access(p.parent, os.W_OK | os.X_OK):
            raise self.fail(key, f"{v!r}: not a file in a writable directory")
        return p

    def size(self, v: object, key: str) -> int:
        try:
            n = parse_size(v, key=key)  # type: ignore[arg-type]
        except (UnitError, TypeError, ValueError):
            raise self.fail(key, f"expected a size like 500GiB, got {v!r}") from None
        if n <= 0:
            raise self.fail(key, f"expected a size > 0, got {v!r}")
        return n


FILL = (
    "popularity_url", "credential_file", "refresh", "share", "max_copies", "stickiness",
    "state_file", "feed_limit",
)  # fmt: skip


def _fill(r: _R, raw: object) -> FillConfig:
    d = r.mapping(raw, "fill", FILL)
    url = d.get("popularity_url")
    share = r.number(d.get("share", DEFAULT_FILL_SHARE), "fill.share", 0.0, 1.0)
    if share <= 0:
        raise r.fail("fill.share", "expected a number above 0, up to 1")
    max_copies = d.get("max_copies", 3)
    if isinstance(max_copies, bool) or not isinstance(max_copies, int):
        raise r.fail("fill.max_copies", f"expected a whole number from 1 to 16, got {max_copies!r}")
    feed_limit = d.get("feed_limit", 100_000)
    if isinstance(feed_limit, bool) or not isinstance(feed_limit, int):
        raise r.fail(
            "fill.feed_limit",
            f"expected a whole number from 1 to {MAX_FEED_OBJECTS}, got {feed_limit!r}",
        )
    return FillConfig(
        popularity_url=None if url is None else r.url(url, "fill.popularity_url"),
        credential_file=r.file(d.get("credential_file"), "fill.credential_file"),
        refresh=r.duration(d.get("refresh", 3600.0), "fill.refresh", 1, 7 * 86400),
        share=share,
        max_copies=int(r.number(max_copies, "fill.max_copies", 1, 16)),
        stickiness=r.number(d.get("stickiness", 1.2), "fill.stickiness", 1.0, 100.0),
        state_file=r.writable(d.get("state_file"), "fill.state_file"),
        feed_limit=int(r.number(feed_limit, "fill.feed_limit", 1, MAX_FEED_OBJECTS)),
    )


TOP = (
    "listen", "sites", "edges", "origin_url", "coverage_zone_file", "default_site",
    "heartbeat_credentials_file", "trusted_proxies", "dead_after", "recover_after",
    "probe_interval", "bounded_load", "answer_size", "steering_ttl", "fill", "log_level",
)  # fmt: skip


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> SteeringConfig:
    source, raw = read_yaml(path, ConfigError)
    r = _R(source, ConfigError)
    top = {**r.mapping(raw, "", TOP), **(overrides or {})}
    try:
        listen = parse_listen(str(top.get("listen", "127.0.0.1:8100")))
    except ValueError as exc:
        raise r.fail("listen", str(exc)) from None

    sites = []
    for i, s in enumerate(top.get("sites") or []):
        key = f"sites[{i}]"
        d = r.mapping(s, key, ("name", "latitude", "longitude"))
        sites.append(
            SiteConfig(
                name=r.ident(d.get("name"), f"{key}.name"),
                latitude=r.number(d.get("latitude"), f"{key}.latitude", -90, 90),
                longitude=r.number(d.get("longitude"), f"{key}.longitude", -180, 180),
            )
        )
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise r.fail("sites", "site names must be unique")

    edges = []
    for i, e in enumerate(top.get("edges") or []):
        key = f"edges[{i}]"
        d = r.mapping(
            e, key, ("id", "site", "url", "weight", "prefixes", "embedded", "fill_capacity")
        )
        site = r.ident(d.get("site"), f"{key}.site")
        if site not in names:
            raise r.fail(
                f"{key}.site", f"unknown site {site!r} (sites: {', '.join(names) or 'none'})"
            )
        prefixes = d.get("prefixes") or []
        if not isinstance(prefixes, list):
            raise r.fail(f"{key}.prefixes", "expected a list of CIDRs")
        for j, p in enumerate(prefixes):
            try:
                ipaddress.ip_network(str(p), strict=False)
            except ValueError:
                raise r.fail(f"{key}.prefixes[{j}]", f"not a CIDR: {p!r}") from None
        embedded = d.get("embedded", False)
        if not isinstance(embedded, bool):
            raise r.fail(f"{key}.embedded", f"expected true or false, got {embedded!r}")
        fill_capacity = d.get("fill_capacity")
        edges.append(
            EdgeConfig(
                id=r.ident(d.get("id"), f"{key}.id"),
                site=site,
                url=r.url(d.get("url"), f"{key}.url"),
                weight=r.number(d.get("weight", 1.0), f"{key}.weight", 0.01, 1000),
                prefixes=tuple(str(p) for p in prefixes),
                embedded=embedded,
                fill_capacity=None
                if fill_capacity is None
                else r.size(fill_capacity, f"{key}.fill_capacity"),
            )
        )
    ids = [e.id for e in edges]
    if len(set(ids)) != len(ids):
        raise r.fail("edges", "edge ids must be unique")
    if "origin" in ids:
        raise r.fail("edges", 'the id "origin" is reserved for the origin in answers')

    proxies = top.get("trusted_proxies") or []
    if not isinstance(proxies, list):
        raise r.fail("trusted_proxies", "expected a list of CIDRs")
    for j, p in enumerate(proxies):
        try:
            ipaddress.ip_network(str(p), strict=False)
        except ValueError:
            raise r.fail(f"trusted_proxies[{j}]", f"not a CIDR: {p!r}") from None
    default_site = top.get("default_site")
    if default_site is not None and default_site not in names:
        raise r.fail("default_site", f"unknown site {default_site!r}")
    level = top.get("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise r.fail("log_level", f"expected debug, info, warning or error, got {level!r}")
    origin = top.get("origin_url")
    return SteeringConfig(
        listen=listen,
        sites=tuple(sites),
        edges=tuple(edges),
        origin_url=r.url(origin, "origin_url") if origin is not None else None,
        coverage_zone_file=r.file(top.get("coverage_zone_file"), "coverage_zone_file"),
        default_site=default_site,
        heartbeat_credentials_file=r.file(
            top.get("heartbeat_credentials_file"), "heartbeat_credentials_file"
        ),
        trusted_proxies=tuple(str(p) for p in proxies),
        dead_after=r.duration(top.get("dead_after", 3.0), "dead_after", 0.5, 600),
        recover_after=int(r.number(top.get("recover_after", 3), "recover_after", 1, 100)),
        probe_interval=r.duration(top.get("probe_interval", 1.0), "probe_interval", 0.1, 60),
        bounded_load=r.number(top.get("bounded_load", 1.25), "bounded_load", 1.0, 10.0),
        answer_size=int(r.number(top.get("answer_size", 3), "answer_size", 1, 32)),
        steering_ttl=int(r.number(top.get("steering_ttl", 10), "steering_ttl", 1, 3600)),
        fill=_fill(r, top.get("fill")),
        log_level=level,
    )
