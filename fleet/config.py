"""The local fleet's description (conf/fleet.yaml): typed, frozen, validated at start-up.

One file describes the whole demo fleet (origin, control plane, steering, the sites and edges,
the sample title and the demo account), and the tests load that very file, so the demo and the
tests cannot drift apart. Every error names the file and the dotted key, like the services' own
configuration (edges and sites are named by position: ``edges[2].listen``).

``--set KEY=VALUE`` overrides (``apply_overrides``) edit the parsed document before it is
checked, so an override is validated exactly like the file: list items are addressed by their
id or name (``edges.e1.listen``, ``sites.paris.latitude``) or by position (``edges.0.listen``),
and the value is read as YAML (``--set sample.duration=6``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

from control.auth import normalize_email
from edge.config import Listen, parse_listen
from edge.fillplan import parse_window
from edge.units import UnitError, parse_size
from edge.yamlconfig import KeyChecker, read_yaml
from origin.ingest import check_title
from origin.ladder import Rung, parse_ladder
from steering.config import SiteConfig

__all__ = [
    "ConfigError",
    "DemoConfig",
    "FleetConfig",
    "FleetEdge",
    "SampleConfig",
    "SiteConfig",
    "SteeringSettings",
    "apply_overrides",
    "load_config",
]

# Starts with a letter or digit: no ".", "..", or a name taken for an option.
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# Names the fleet gives its own files and processes (conf/<name>.yaml, logs/<name>.log, the
# services in fleet.json): an edge of one of these names would overwrite or share them.
RESERVED_IDS: Final = (
    "origin", "control", "steering", "ladder", "ingest", "create-admin", "sample-source",
)  # fmt: skip
# The control plane's built-in plans (control/config.py DEFAULT_PLANS): the fleet's control
# plane runs with them, so the demo account can only subscribe to one of these.
PLANS: Final = ("basic", "standard", "premium")
PRESETS: Final = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
MIN_CACHE: Final = 64 * 1024 * 1024  # a few slices of every rendition, at least


class ConfigError(ValueError):
    """An invalid fleet description; the message names the source and the key."""


@dataclass(frozen=True, slots=True)
class FleetEdge:
    id: str
    site: str
    listen: Listen  # the data plane players use (its /healthz is what steering probes)
    admin: Listen  # the edge's admin API
    cache_size: int  # bytes of cache under the data directory
    weight: float = 1.0  # capacity weight within its site (steering's rendezvous hashing)
    prefixes: tuple[str, ...] = ()  # client CIDRs this edge serves (steering's locality)
    embedded: bool = False  # an ISP-embedded edge: preferred for its prefixes

    @property
    def url(self) -> str:
        return _url(self.listen)


@dataclass(frozen=True, slots=True)
class SteeringSettings:
    listen: Listen
    default_site: str | None = None
    dead_after: float = 3.0
    probe_interval: float = 1.0
    steering_ttl: int = 10


@dataclass(frozen=True, slots=True)
class SampleConfig:
    """The title ingested on first start, made from ffmpeg's test sources (nothing downloaded)."""

    title: str  # the origin's key: /v/<title>/
    duration: float  # seconds
    width: int
    height: int
    fps: int
    preset: str  # x264 preset of the ladder's encodes
    segment_seconds: float
    ladder: tuple[Rung, ...]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    email: str  # the demo viewer's account
    plan: str  # its (paid) subscription
    admin_email: str  # the control plane's administrator (catalog sync, invoices)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    source: str  # the file it came from, for messages
    data_dir: Path  # absolute
    origin: Listen
    control: Listen
    steering: SteeringSettings
    sites: tuple[SiteConfig, ...]
    edges: tuple[FleetEdge, ...]
    fill_window: str
    sample: SampleConfig
    demo: DemoConfig
    log_level: str = "info"
    start_timeout: float = 60.0
    stop_timeout: float = 10.0
    status_interval: float = 5.0

    @property
    def origin_url(self) -> str:
        return _url(self.origin)

    @property
    def control_url(self) -> str:
        return _url(self.control)

    @property
    def steering_url(self) -> str:
        return _url(self.steering.listen)


def _url(listen: Listen) -> str:
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return f"http://{host}:{listen.port}"


# -- overrides -------------------------------------------------------------------------------


def apply_overrides(raw: object, overrides: Sequence[str]) -> object:
    """The document with each ``KEY=VALUE`` applied (a deep copy; ``raw`` is left alone).

    ``ValueError`` naming the override when its key cannot be followed (an unknown id, a
    scalar where a mapping is needed); what the value means is checked later with the file.
    """
    doc: Any = yaml.safe_load(yaml.safe_dump(raw if raw is not None else {}))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            raise ValueError(f"--set {key}: the value is not valid YAML") from None
        parts = key.split(".")
        node: Any = doc
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                index = _item_index(node, part)
                if index is None:
                    raise ValueError(f"--set {key}: no item {part!r} in {'.'.join(parts[:i])}")
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:  # absent or null: a section of defaults
                        node[part] = {}
                    node = node[part]
            else:
                raise ValueError(f"--set {key}: {where} is not a mapping or a list")
    return doc


def _item_index(items: list[Any], part: str) -> int | None:
    for i, item in enumerate(items):
        if isinstance(item, dict) and part in (item.get("id"), item.get("name")):
            return i
    if part.isdigit() and int(part) < len(items):
        return int(part)
    return None


# -- checking --------------------------------------------------------------------------------


class _R(KeyChecker):
    def ident(self, v: object, key: str) -> str:
        if not isinstance(v, str) or not _ID.match(v):
            raise self.fail(
                key,
                "expected an id of [A-Za-z0-9._-], 1-64 characters, starting with a letter "
                f"or digit, got {v!r}",
            )
        return v

    def whole(self, v: object, key: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected a whole number from {lo} to {hi}, got {v!r}")
        return v

    def listen(self, v: object, key: str) -> Listen:
        """An IP address and a port: the fleet connects to it and prints it, so no wildcard
        address and no port 0."""
        if not isinstance(v, str):
            raise self.fail(key, f'expected an address like "127.0.0.1:8000", got {v!r}')
        try:
            listen = parse_listen(v)
            ipaddress.ip_address(listen.host)
        except ValueError as exc:
            raise self.fail(key, f"expected an IP address and a port, got {v!r} ({exc})") from None
        if ipaddress.ip_address(listen.host).is_unspecified or not 1 <= listen.port <= 65535:
            raise self.fail(key, f"expected a specific address and a port 1-65535, got {v!r}")
        return listen

    def boolean(self, v: object, key: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v


TOP: Final = (
    "data_dir", "origin", "control", "steering", "sites", "edges", "fill_window", "sample",
    "demo", "log_level", "start_timeout", "stop_timeout", "status_interval",
)  # fmt: skip
EDGE_KEYS: Final = (
    "id", "site", "listen", "admin", "cache_size", "weight", "prefixes", "embedded",
)  # fmt: skip
SAMPLE_KEYS: Final = (
    "title", "duration", "size", "fps", "preset", "segment_seconds", "ladder",
)  # fmt: skip
DEFAULT_LADDER: Final = (
    {"name": "240p", "height": 240, "video_kbps": 400, "audio_kbps": 96},
    {"name": "480p", "height": 480, "video_kbps": 1200, "audio_kbps": 96},
    {"name": "720p", "height": 720, "video_kbps": 2400, "audio_kbps": 96},
)


def load_config(
    path: Path, overrides: Sequence[str] = (), data_dir: str | None = None
) -> FleetConfig:
    """Read, override and check the fleet description. ``ConfigError`` names file and key.

    ``data_dir`` (``--data``) replaces the file's as it is: a path, never read as YAML."""
    source, raw = read_yaml(path, ConfigError)
    try:
        raw = apply_overrides(raw, overrides)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if data_dir is not None and isinstance(raw, dict):
        raw["data_dir"] = data_dir
    return parse_config(raw, source)


def parse_config(raw: object, source: str) -> FleetConfig:
    """The checked fleet from a parsed document (relative paths against the current
    directory, like every service's configuration)."""
    r = _R(source, ConfigError)
    top = r.mapping(raw, "", TOP)

    data_dir = top.get("data_dir", "var/fleet")
    if not isinstance(data_dir, str) or not data_dir:
        raise r.fail("data_dir", f"expected a directory path, got {data_dir!r}")

    origin = r.mapping(top.get("origin"), "origin", ("listen",))
    control = r.mapping(top.get("control"), "control", ("listen",))

    sites = []
    for i, s in enumerate(_list(r, top.get("sites"), "sites")):
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
    if not sites:
        raise r.fail("sites", "expected at least one site")
    if len(set(names)) != len(names):
        raise r.fail("sites", "site names must be unique")

    edges = []
    for i, e in enumerate(_list(r, top.get("edges"), "edges")):
        edges.append(_edge(r, e, f"edges[{i}]", names))
    if not edges:
        raise r.fail("edges", "expected at least one edge")
    ids = [e.id for e in edges]
    if len(set(ids)) != len(ids):
        raise r.fail("edges", "edge ids must be unique")
    for i, e in enumerate(edges):
        if e.id in RESERVED_IDS:
            raise r.fail(
                f"edges[{i}].id",
                f"the id {e.id!r} is reserved (the fleet's own files and processes are named "
                f"{', '.join(RESERVED_IDS)})",
            )

    st = r.mapping(
        top.get("steering"),
        "steering",
        ("listen", "default_site", "dead_after", "probe_interval", "steering_ttl"),
    )
    default_site = st.get("default_site", names[0])
    if default_site not in names:
        raise r.fail("steering.default_site", f"unknown site {default_site!r}")
    steering = SteeringSettings(
        listen=r.listen(st.get("listen", "127.0.0.1:8100"), "steering.listen"),
        default_site=default_site,
        dead_after=r.duration(st.get("dead_after", 3.0), "steering.dead_after", 0.5, 600),
        probe_interval=r.duration(
            st.get("probe_interval", 1.0), "steering.probe_interval", 0.1, 60
        ),
        steering_ttl=r.whole(st.get("steering_ttl", 10), "steering.steering_ttl", 1, 3600),
    )

    window = top.get("fill_window", "02:00-14:00")
    try:
        window = str(parse_window(window))
    except ValueError as exc:
        raise r.fail("fill_window", str(exc)) from None

    level = top.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise r.fail("log_level", f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")

    cfg = FleetConfig(
        source=source,
        data_dir=Path(os.path.abspath(data_dir)),
        origin=r.listen(origin.get("listen", "127.0.0.1:8000"), "origin.listen"),
        control=r.listen(control.get("listen", "127.0.0.1:8090"), "control.listen"),
        steering=steering,
        sites=tuple(sites),
        edges=tuple(edges),
        fill_window=window,
        sample=_sample(r, top.get("sample")),
        demo=_demo(r, top.get("demo")),
        log_level=level,
        start_timeout=r.duration(top.get("start_timeout", 60.0), "start_timeout", 1, 3600),
        stop_timeout=r.duration(top.get("stop_timeout", 10.0), "stop_timeout", 0.5, 600),
        status_interval=r.duration(top.get("status_interval", 5.0), "status_interval", 0.2, 3600),
    )
    _check_addresses(r, cfg)
    return cfg


def _list(r: _R, v: object, key: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise r.fail(key, f"expected a list, got {type(v).__name__}")
    return v


def _edge(r: _R, raw: object, key: str, sites: list[str]) -> FleetEdge:
    d = r.mapping(raw, key, EDGE_KEYS)
    site = r.ident(d.get("site"), f"{key}.site")
    if site not in sites:
        raise r.fail(f"{key}.site", f"unknown site {site!r} (sites: {', '.join(sites)})")
    prefixes = _list(r, d.get("prefixes"), f"{key}.prefixes")
    for j, p in enumerate(prefixes):
        try:
            ipaddress.ip_network(str(p), strict=False)
        except ValueError:
            raise r.fail(f"{key}.prefixes[{j}]", f"not a CIDR: {p!r}") from None
    size = d.get("cache_size", "1GiB")
    try:
        if isinstance(size, bool):
            raise UnitError("bool", value=size)
        cache_size = parse_size(size, key=f"{key}.cache_size")
    except (UnitError, TypeError, ValueError):
        raise r.fail(f"{key}.cache_size", f"expected a size like 1GiB, got {size!r}") from None
    if cache_size < MIN_CACHE:
        raise r.fail(f"{key}.cache_size", f"expected at least 64MiB, got {size!r}")
    listen = d.get("listen")
    if listen is None:
        raise r.fail(f"{key}.listen", "required (the edge's data-plane address)")
    admin = d.get("admin")
    if admin is None:
        raise r.fail(f"{key}.admin", "required (the edge's admin API address)")
    return FleetEdge(
        id=r.ident(d.get("id"), f"{key}.id"),
        site=site,
        listen=r.listen(listen, f"{key}.listen"),
        admin=r.listen(admin, f"{key}.admin"),
        cache_size=cache_size,
        weight=r.number(d.get("weight", 1.0), f"{key}.weight", 0.01, 1000),
        prefixes=tuple(str(p) for p in prefixes),
        embedded=r.boolean(d.get("embedded", False), f"{key}.embedded"),
    )


def _sample(r: _R, raw: object) -> SampleConfig:
    d = r.mapping(raw, "sample", SAMPLE_KEYS)
    title = d.get("title", "opencdn_demo")
    try:
        check_title(title)
    except ValueError as exc:
        raise r.fail("sample.title", str(exc)) from None
    size = d.get("size", "1280x720")
    m = re.fullmatch(r"(\d{2,4})x(\d{2,4})", size) if isinstance(size, str) else None
    if m is None or int(m[1]) % 2 or int(m[2]) % 2 or min(int(m[1]), int(m[2])) < 32:
        raise r.fail("sample.size", f'expected "WIDTHxHEIGHT", even, at least 32, got {size!r}')
    preset = d.get("preset", "veryfast")
    if preset not in PRESETS:
        raise r.fail("sample.preset", f"expected one of {', '.join(PRESETS)}, got {preset!r}")
    ladder_raw = d.get("ladder", [dict(x) for x in DEFAULT_LADDER])
    try:
        ladder = parse_ladder(ladder_raw, "ladder")
    except ValueError as exc:
        # parse_ladder says "ladder: [1].height: ..."; make it the file's dotted key.
        detail = str(exc).removeprefix("ladder")
        if detail.startswith(": ["):  # an item: sample.ladder[1].height
            detail = detail.removeprefix(": ")
        raise ConfigError(f"{r.source}: sample.ladder{detail}") from None
    return SampleConfig(
        title=title,
        duration=r.duration(d.get("duration", 24.0), "sample.duration", 2, 600),
        width=int(m[1]),
        height=int(m[2]),
        fps=r.whole(d.get("fps", 25), "sample.fps", 1, 60),
        preset=preset,
        segment_seconds=r.number(d.get("segment_seconds", 4), "sample.segment_seconds", 1, 20),
        ladder=ladder,
    )


def _demo(r: _R, raw: object) -> DemoConfig:
    d = r.mapping(raw, "demo", ("email", "plan", "admin_email"))
    emails = {}
    for name, default in (("email", "demo@opencdn.test"), ("admin_email", "admin@opencdn.test")):
        v = d.get(name, default)
        if not isinstance(v, str):
            raise r.fail(f"demo.{name}", f"expected an e-mail address, got {v!r}")
        try:
            emails[name] = normalize_email(v)  # the control plane's own rule
        except ValueError as exc:
            raise r.fail(f"demo.{name}", f"{exc}, got {v!r}") from None
    if emails["email"] == emails["admin_email"]:
        raise r.fail("demo.admin_email", "must differ from demo.email")
    plan = d.get("plan", "premium")
    if plan not in PLANS:
        raise r.fail("demo.plan", f"expected one of {', '.join(PLANS)}, got {plan!r}")
    return DemoConfig(email=emails["email"], plan=plan, admin_email=emails["admin_email"])


def _check_addresses(r: _R, cfg: FleetConfig) -> None:
    """No two services on one address: the second would fail to start, later and less
    clearly."""
    seen: dict[tuple[str, int], str] = {}
    pairs = [
        ("origin.listen", cfg.origin),
        ("control.listen", cfg.control),
        ("steering.listen", cfg.steering.listen),
    ]
    for i, e in enumerate(cfg.edges):
        pairs += [(f"edges[{i}].listen", e.listen), (f"edges[{i}].admin", e.admin)]
    for key, listen in pairs:
        addr = (str(ipaddress.ip_address(listen.host)), listen.port)
        if addr in seen:
            raise r.fail(key, f"{listen.host}:{listen.port} is already used by {seen[addr]}")
        seen[addr] = key
