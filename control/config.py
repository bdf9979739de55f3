"""Typed, frozen configuration of the control plane, validated at start-up.

Every error names the file and the dotted key, like the edge's, the origin's and steering's
(``conf/control.yaml: playback.token_ttl: ...``). Unknown keys are errors with the closest
known key suggested. A key set to null is the same as leaving it out. Durations take
``edge.units`` spellings ("30d", "90s", a plain number of seconds), sizes "64KiB". Relative
paths (files, a sqlite database) resolve against the directory the service starts in and
are stored absolute. No file at all means every default: the embedded demo.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from control.auth import KdfParams
from edge.config import Listen, parse_listen, read_credential_file
from edge.tokens import SigningKeys, load_keys
from edge.units import UnitError, describe_value, format_size, parse_duration, parse_size
from edge.yamlconfig import KeyChecker, read_yaml

KiB: Final = 1024
MiB: Final = 1024 * KiB
MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DEFAULT_DATABASE_URL: Final = "sqlite:///./var/control/control.db"
MIN_FEED_TOKEN_CHARS: Final = 16  # the origin accepts no shorter catalog token

_PLAN_ID: Final = re.compile(r"[a-z0-9_-]{1,32}\Z")
_CURRENCY: Final = re.compile(r"[A-Z]{3}\Z")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class ConfigError(ValueError):
    """An invalid control plane configuration; the message names the source and the key."""


def _sqlite_url(url: str) -> str:
    # sqlite:///relative/path or sqlite:////absolute/path (the SQLAlchemy spelling); made
    # absolute so a later chdir cannot move the database.
    path = url.removeprefix("sqlite:///")
    return url if path == ":memory:" else "sqlite:///" + os.path.abspath(path)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    # sqlite:///<path> (absolute once loaded) or postgresql://user:pw@host:port/db[?...]
    url: str = field(default_factory=lambda: _sqlite_url(DEFAULT_DATABASE_URL))
    pool_min: int = 1  # connections kept open (PostgreSQL)
    pool_max: int = 10  # most connections open at once (PostgreSQL), >= pool_min

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a sqlite URL (``:memory:`` as is); None for PostgreSQL."""
        return Path(self.url.removeprefix("sqlite:///")) if self.is_sqlite else None

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***``, for logs."""
        u = urlsplit(self.url)
        if u.password is None:
            return self.url
        return self.url.replace(f":{u.password}@", ":***@", 1)

    def __repr__(self) -> str:  # never print a password
        return f"DatabaseConfig(url={self.redacted_url!r}, pool_min={self.pool_min}, pool_max={self.pool_max})"


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    ttl: float = 30 * DAY  # seconds a session token stays valid after sign-in
    max_per_account: int = 20  # live sessions per account; signing in beyond ends the oldest


@dataclass(frozen=True, slots=True)
class RateConfig:
    rate: float  # requests per second the token bucket refills, > 0
    burst: int  # requests allowed at once (bucket size), >= 1


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    enabled: bool = True  # false turns every limit off (load tests)
    signin_per_address: RateConfig = field(default_factory=lambda: RateConfig(1.0, 10))
    signin_per_account: RateConfig = field(default_factory=lambda: RateConfig(0.2, 5))
    signup_per_address: RateConfig = field(default_factory=lambda: RateConfig(0.05, 3))
    # Sign-ups per normalised e-mail, from anywhere (bounds probing one address for an account).
    signup_per_account: RateConfig = field(default_factory=lambda: RateConfig(0.01, 3))


@dataclass(frozen=True, slots=True)
class PlanConfig:
    id: str  # [a-z0-9_-]{1,32}, unique; stored with each subscription
    name: str  # shown to customers
    max_streams: int  # concurrent playback leases per account, 1-16
    max_height: int  # tallest rendition allowed, in pixels (144-4320)
    price_cents: int  # price per period in the currency's minor unit, >= 0
    currency: str = "USD"  # ISO 4217 code
    period_days: int = 30  # billing period, 1-366 days


DEFAULT_PLANS: Final = (
    PlanConfig("basic", "Basic", 1, 480, 799),
    PlanConfig("standard", "Standard", 2, 1080, 1299),
    PlanConfig("premium", "Premium", 4, 2160, 1799),
)


@dataclass(frozen=True, slots=True)
class ProfilesConfig:
    max_per_account: int = 5  # viewer profiles per account, 1-20


@dataclass(frozen=True, slots=True)
class PlaybackConfig:
    # The edge token key file ("KEYID SECRET" lines, edge/tokens.py); None: playback refuses.
    signing_keys_file: Path | None = None
    signing_keys: SigningKeys | None = None  # loaded from signing_keys_file at load time
    token_ttl: float = 6 * HOUR  # seconds a playback URL token stays valid
    lease_ttl: float = 120.0  # seconds a stream lease lives without a heartbeat
    bind_client_ip: bool = False  # tokens valid only from the requesting client's address
    steering_url: str | None = None  # steering base URL this service calls; None: no steering
    steering_public_url: str | None = None  # steering as players reach it; default steering_url
    steering_timeout: float = 1.0  # seconds to wait for steering before falling back
    # A player-facing, token-checking base URL (an edge, or a load-balanced name for the
    # edges) used when steering is unreachable or not configured. Not the origin: it refuses
    # players (it wants the edges' fill credential).
    fallback_url: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogFeedConfig:
    url: str | None = None  # the origin's base URL (GET {url}/catalog/feed); None: disabled
    credential_file: Path | None = None  # file holding the bearer token the origin accepts
    interval: float = 30.0  # seconds between polls of the feed


@dataclass(frozen=True, slots=True)
class RecommendConfig:
    interval: float = HOUR  # seconds between recomputations of home rows; 0: never scheduled
    row_size: int = 10  # titles per row
    half_life_days: float = 3.0  # days for a play's weight in "trending" to halve
    min_support: int = 2  # profiles that must co-watch two titles before they are "similar"


@dataclass(frozen=True, slots=True)
class FillConfig:
    # The bearer token steering presents to GET /v1/fill/popularity (first line of the file
    # that is not blank or a # comment; re-read on every request). None: the route is off (404).
    credential_file: Path | None = None
    # A token the origin accepts for GET /v/<key>/manifest.json (its fill credential), to
    # learn each title's files; None: catalog_feed.credential_file is sent.
    origin_credential_file: Path | None = None
    half_life_days: float = 1.0  # days for a play's weight in the popularity of files to halve
    window_days: float = 7.0  # days of plays counted (by their last update); older are ignored
    boost_views: float = 50.0  # plays credited to a new release on its publication day
    boost_days: float = 3.0  # days the editorial boost fades over; 0: no boost
    single_file_share: float = 0.0  # share of a rendition's plays its single.mp4 gets, 0..1
    cache_ttl: float = 300.0  # seconds a computed feed is served before it is recomputed
    limit: int = 20000  # objects answered when the request gives no limit


@dataclass(frozen=True, slots=True)
class ControlConfig:
    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", 8090))
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    public_url: str | None = None  # where players reach this service, e.g. https://api.example
    cors_origins: tuple[str, ...] = ()  # "scheme://host[:port]" allowed by CORS, or "*"
    # Reverse proxies whose X-Forwarded-For is believed (control/clients.py); () = none.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    max_body: int = 64 * KiB  # bytes; a larger request body is refused with 413
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    kdf: KdfParams = field(default_factory=KdfParams)  # scrypt cost of password hashes
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    plans: tuple[PlanConfig, ...] = DEFAULT_PLANS  # at least one
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    catalog_feed: CatalogFeedConfig = field(default_factory=CatalogFeedConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    fill: FillConfig = field(default_factory=FillConfig)
    log_level: str = "info"  # one of LOG_LEVELS
    workers: int = 1  # serving processes sharing the port (SO_REUSEPORT), 1..64
    # Where `npm ci` put the web player's hls.js and dash.js; None = the node_modules next to
    # the control package (a git checkout installed with `pip install -e`).
    node_modules: Path | None = None


def _span(seconds: float) -> str:
    for unit, n in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g}{unit}"
    return f"{seconds:g}s"


def _get(d: Mapping[str, Any], name: str, default: Any) -> Any:
    v = d.get(name)
    return default if v is None else v


class _R(KeyChecker):
    def integer(self, v: object, key: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer from {lo} to {hi}, got {describe_value(v)}")
        return v

    def number(self, v: object, key: str, lo: float, hi: float, *, above: bool = False) -> float:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or not (lo < v if above else lo <= v)
            or v > hi
        ):
            span = f"above {lo:g} up to {hi:g}" if above else f"from {lo:g} to {hi:g}"
            raise self.fail(key, f"expected a number {span}, got {describe_value(v)}")
        return float(v)

    def boolean(self, v: object, key: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {describe_value(v)}")
        return v

    def duration(self, v: object, key: str, lo: float, hi: float, *, zero: bool = False) -> float:
        try:
            n = parse_duration(v)  # type: ignore[arg-type]
        except UnitError as exc:
            raise self.fail(key, exc.detail) from None
        if not (lo <= n <= hi or (zero and n == 0)):
            off = "0 (off) or " if zero else ""
            raise self.fail(key, f"expected {off}{_span(lo)} to {_span(hi)}, got {_span(n)}")
        return n

    def size(self, v: object, key: str, lo: int, hi: int) -> int:
        try:
            n = parse_size(v)  # type: ignore[arg-type]
        except UnitError as exc:
            raise self.fail(key, exc.detail) from None
        if not lo <= n <= hi:
            span = f"{format_size(lo)} to {format_size(hi)}"
            raise self.fail(key, f"expected {span}, got {format_size(n)}")
        return n

    def string(self, v: object, key: str, max_chars: int = 200) -> str:
        if not isinstance(v, str) or not v.strip() or len(v) > max_chars:
            raise self.fail(
                key, f"expected text of 1-{max_chars} characters, got {describe_value(v)}"
            )
        return v

    def url(self, v: object, key: str) -> str | None:
        if v is None:
            return None
        bad = f"expected an http(s) URL like http://host:port, got {describe_value(v)}"
        if not isinstance(v, str) or any(c.isspace() or not c.isprintable() for c in v):
            raise self.fail(key, bad)
        u = urlsplit(v)
        try:
            u.port  # noqa: B018  # raises ValueError on a malformed port
        except ValueError:
            raise self.fail(key, f"{bad} (bad port)") from None
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise self.fail(key, bad)
        if "?" in v or "#" in v or "@" in u.netloc:
            raise self.fail(key, f"{bad} (no query, fragment or credentials allowed)")
        return f"{scheme}://{u.netloc}{u.path}".rstrip("/")

    def origin(self, v: object, key: str) -> str:
        if v == "*":
            return "*"
        bad = f'expected "*" or an origin like "https://www.example.com", got {describe_value(v)}'
        if not isinstance(v, str) or any(c.isspace() or not c.isprintable() for c in v):
            raise self.fail(key, bad)
        u = urlsplit(v)
        try:
            port = u.port
        except ValueError:
            raise self.fail(key, f"{bad} (bad port)") from None
        scheme, host = u.scheme.lower(), (u.hostname or "")
        if scheme not in _DEFAULT_PORTS or not host or "@" in u.netloc:
            raise self.fail(key, bad)
        if u.path or "?" in v or "#" in v:
            raise self.fail(key, f"{bad} (an origin has no path, not even a trailing /)")
        # As browsers send it in Origin: lower case, the default port left out.
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}" + (
            f":{port}" if port not in (None, _DEFAULT_PORTS[scheme]) else ""
        )

    def cidr(self, v: object, key: str) -> IPv4Network | IPv6Network:
        # strict: "10.0.0.1/8" is almost always a typo for another prefix, so it is refused
        # rather than silently widened (as steering/locality.py does). A bare address is /32
        # (/128).
        bad = f'expected a CIDR like "10.0.0.0/8" or an address, got {describe_value(v)}'
        if not isinstance(v, str):
            raise self.fail(key, bad)
        try:
            return ipaddress.ip_network(v.strip(), strict=True)
        except ValueError as exc:
            raise self.fail(key, f"{bad} ({exc})") from None

    def file(self, v: object, key: str) -> Path | None:
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"expected a file path, got {describe_value(v)}")
        if not os.access(v, os.R_OK) or os.path.isdir(v):
            raise self.fail(key, f"{v!r} does not exist or is not a readable file")
        return Path(os.path.abspath(v))

    def directory(self, v: object, key: str) -> Path | None:
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"expected a directory path, got {describe_value(v)}")
        if not os.path.isdir(v) or not os.access(v, os.R_OK | os.X_OK):
            raise self.fail(key, f"{v!r} does not exist or is not a readable directory")
        return Path(os.path.abspath(v))

    def database_url(self, v: object, key: str) -> str:
        # Errors never quote a postgresql URL: it may hold a password.
        if not isinstance(v, str) or not v.startswith(
            ("sqlite:///", "postgresql://", "postgres://")
        ):
            what = describe_value(v)
            if isinstance(v, str) and "@" in v:
                what = f"a {v.partition(':')[0]!r} URL"
            raise self.fail(
                key,
                f"expected sqlite:///<path> or postgresql://user@host/db, got {what} "
                "(a relative sqlite path has three slashes, an absolute one four)",
            )
        if v.startswith("sqlite:"):
            path = v.removeprefix("sqlite:///")
            if not path or "?" in path or "#" in path or path.endswith("/"):
                raise self.fail(key, f"expected sqlite:///<path to a file>, got {v!r}")
            if path == ":memory:":
                # Every worker and the CLI open their own connections: they must share a file.
                raise self.fail(key, "an in-memory SQLite database cannot be shared; give a file")
            return _sqlite_url(v)
        u = urlsplit(v)
        try:
            u.port  # noqa: B018
        except ValueError:
            raise self.fail(key, "the PostgreSQL URL has a bad port") from None
        if any(c.isspace() for c in v) or "#" in v or not u.path.strip("/"):
            raise self.fail(key, "expected postgresql://user[:password]@host[:port]/database")
        return v


TOP: Final = (
    "listen", "database", "public_url", "cors_origins", "trusted_proxies", "max_body",
    "sessions", "kdf", "rate_limits", "plans", "profiles", "playback", "catalog_feed",
    "recommend", "fill", "log_level", "workers", "node_modules",
)  # fmt: skip
FILL_KEYS: Final = (
    "credential_file", "origin_credential_file", "half_life_days", "window_days", "boost_views",
    "boost_days", "single_file_share", "cache_ttl", "limit",
)  # fmt: skip
# Files a feed answer may list: steering asks for fill.feed_limit (default 100k); with 4 s
# segments a 2 h title has ~3,600 scored files, so 1M is ~280 titles a region (~140 MB of JSON).
MAX_FILL_LIMIT: Final = 1_000_000
PLAN_KEYS: Final = (
    "id", "name", "max_streams", "max_height", "price_cents", "currency", "period_days",
)  # fmt: skip
BUCKETS: Final = (
    "signin_per_address", "signin_per_account", "signup_per_address", "signup_per_account",
)  # fmt: skip
PLAYBACK_KEYS: Final = (
    "signing_keys_file", "token_ttl", "lease_ttl", "bind_client_ip", "steering_url",
    "steering_public_url", "steering_timeout", "fallback_url",
)  # fmt: skip


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> ControlConfig:
    """Read and validate ``path``; None means every default. ``overrides`` (e.g. from flags)
    replace keys of the file, dotted for sections: ``{"database.url": "sqlite:///x.db"}``."""
    source, raw = read_yaml(path, ConfigError)
    return parse_config(raw, source, overrides)


def parse_config(
    raw: object, source: str = "<config>", overrides: Mapping[str, object] | None = None
) -> ControlConfig:
    """Validate an already parsed document; errors name ``source``."""
    r = _R(source, ConfigError)
    top = dict(r.mapping(raw, "", TOP))
    for k, v in (overrides or {}).items():
        sec, dot, name = k.partition(".")
        if dot:
            current = top.get(sec)
            top[sec] = {**(current if isinstance(current, dict) else {}), name: v}
        else:
            top[k] = v
    r.mapping(top, "", TOP)

    try:
        listen = parse_listen(r.string(_get(top, "listen", "127.0.0.1:8090"), "listen"))
    except ValueError as exc:
        raise r.fail("listen", str(exc)) from None

    d = r.mapping(top.get("database"), "database", ("url", "pool_min", "pool_max"))
    database = DatabaseConfig(
        url=r.database_url(_get(d, "url", DEFAULT_DATABASE_URL), "database.url"),
        pool_min=r.integer(_get(d, "pool_min", 1), "database.pool_min", 0, 100),
        pool_max=r.integer(_get(d, "pool_max", 10), "database.pool_max", 1, 1000),
    )
    if database.pool_min > database.pool_max:
        raise r.fail("database.pool_min", f"must not exceed pool_max ({database.pool_max})")

    origins = _get(top, "cors_origins", [])
    if not isinstance(origins, list):
        raise r.fail("cors_origins", f"expected a list of origins, got {describe_value(origins)}")
    cors = tuple(dict.fromkeys(r.origin(o, f"cors_origins[{i}]") for i, o in enumerate(origins)))

    proxies = _get(top, "trusted_proxies", [])
    if not isinstance(proxies, list):
        raise r.fail("trusted_proxies", f"expected a list of CIDRs, got {describe_value(proxies)}")
    trusted_proxies = tuple(
        dict.fromkeys(r.cidr(p, f"trusted_proxies[{i}]") for i, p in enumerate(proxies))
    )

    s = r.mapping(top.get("sessions"), "sessions", ("ttl", "max_per_account"))
    sessions = SessionsConfig(
        ttl=r.duration(_get(s, "ttl", 30 * DAY), "sessions.ttl", MINUTE, 365 * DAY),
        max_per_account=r.integer(
            _get(s, "max_per_account", 20), "sessions.max_per_account", 1, 1000
        ),
    )

    kd = r.mapping(top.get("kdf"), "kdf", ("n", "r", "p"))
    n = r.integer(_get(kd, "n", 2**14), "kdf.n", 2, 2**20)
    if n & (n - 1):
        raise r.fail("kdf.n", f"expected a power of two (16384 = 2**14), got {n}")
    kdf_r = r.integer(_get(kd, "r", 8), "kdf.r", 1, 32)
    kdf_p = r.integer(_get(kd, "p", 1), "kdf.p", 1, 16)
    try:
        kdf = KdfParams(n=n, r=kdf_r, p=kdf_p)
    except ValueError:  # each is in range, so 128 * r * n is over the memory cap
        need = format_size(128 * kdf_r * n)
        msg = f"n={n}, r={kdf_r} need 128*r*n = {need} per hash (at most 256 MiB); lower n or r"
        raise r.fail("kdf", msg) from None

    rl = r.mapping(top.get("rate_limits"), "rate_limits", ("enabled", *BUCKETS))
    defaults = RateLimitsConfig()
    buckets = {}
    for name in BUCKETS:
        key, default = f"rate_limits.{name}", getattr(defaults, name)
        b = r.mapping(rl.get(name), key, ("rate", "burst"))
        buckets[name] = RateConfig(
            rate=r.number(_get(b, "rate", default.rate), f"{key}.rate", 0, 1000, above=True),
            burst=r.integer(_get(b, "burst", default.burst), f"{key}.burst", 1, 1_000_000),
        )
    rate_limits = RateLimitsConfig(
        enabled=r.boolean(_get(rl, "enabled", True), "rate_limits.enabled"), **buckets
    )

    plans: tuple[PlanConfig, ...] = DEFAULT_PLANS
    if top.get("plans") is not None:
        if not isinstance(top["plans"], list) or not top["plans"]:
            got = "an empty list" if top["plans"] == [] else describe_value(top["plans"])
            raise r.fail("plans", f"expected a list of at least one plan, got {got}")
        plans = tuple(_plan(r, p, f"plans[{i}]") for i, p in enumerate(top["plans"]))
        ids = [p.id for p in plans]
        for i, pid in enumerate(ids):
            if pid in ids[:i]:
                raise r.fail(f"plans[{i}].id", f"duplicate plan id {pid!r}")

    pr = r.mapping(top.get("profiles"), "profiles", ("max_per_account",))
    profiles = ProfilesConfig(
        r.integer(_get(pr, "max_per_account", 5), "profiles.max_per_account", 1, 20)
    )

    pb = r.mapping(top.get("playback"), "playback", PLAYBACK_KEYS)
    keys_file = r.file(pb.get("signing_keys_file"), "playback.signing_keys_file")
    signing_keys = None
    if keys_file is not None:
        try:
            signing_keys = load_keys(keys_file)
        except ValueError as exc:
            raise r.fail("playback.signing_keys_file", str(exc)) from None
    steering_url = r.url(pb.get("steering_url"), "playback.steering_url")
    playback = PlaybackConfig(
        signing_keys_file=keys_file,
        signing_keys=signing_keys,
        token_ttl=r.duration(
            _get(pb, "token_ttl", 6 * HOUR), "playback.token_ttl", MINUTE, 7 * DAY
        ),
        lease_ttl=r.duration(_get(pb, "lease_ttl", 120), "playback.lease_ttl", 10, HOUR),
        bind_client_ip=r.boolean(_get(pb, "bind_client_ip", False), "playback.bind_client_ip"),
        steering_url=steering_url,
        steering_public_url=r.url(pb.get("steering_public_url"), "playback.steering_public_url")
        or steering_url,
        steering_timeout=r.duration(
            _get(pb, "steering_timeout", 1.0), "playback.steering_timeout", 0.05, 30
        ),
        fallback_url=r.url(pb.get("fallback_url"), "playback.fallback_url"),
    )

    cf = r.mapping(top.get("catalog_feed"), "catalog_feed", ("url", "credential_file", "interval"))
    feed_url = r.url(cf.get("url"), "catalog_feed.url")
    credential = r.file(cf.get("credential_file"), "catalog_feed.credential_file")
    if credential is not None:
        try:
            token = read_credential_file(credential)
        except (OSError, ValueError) as exc:
            raise r.fail("catalog_feed.credential_file", str(exc)) from None
        if len(token) < MIN_FEED_TOKEN_CHARS:
            raise r.fail(
                "catalog_feed.credential_file",
                f"the token in {str(credential)!r} has {len(token)} characters; the origin "
                f"accepts only tokens of at least {MIN_FEED_TOKEN_CHARS}",
            )
    elif feed_url is not None:
        raise r.fail(
            "catalog_feed.credential_file",
            "required when catalog_feed.url is set (the origin's feed needs a token)",
        )
    catalog_feed = CatalogFeedConfig(
        url=feed_url,
        credential_file=credential,
        interval=r.duration(_get(cf, "interval", 30), "catalog_feed.interval", 1, DAY),
    )

    rc = r.mapping(
        top.get("recommend"), "recommend", ("interval", "row_size", "half_life_days", "min_support")
    )
    recommend = RecommendConfig(
        interval=r.duration(
            _get(rc, "interval", HOUR), "recommend.interval", MINUTE, 30 * DAY, zero=True
        ),
        row_size=r.integer(_get(rc, "row_size", 10), "recommend.row_size", 1, 50),
        half_life_days=r.number(
            _get(rc, "half_life_days", 3.0), "recommend.half_life_days", 0.1, 365
        ),
        min_support=r.integer(_get(rc, "min_support", 2), "recommend.min_support", 1, 1000),
    )

    fill = _fill(r, top.get("fill"))

    level = _get(top, "log_level", "info")
    if level not in LOG_LEVELS:
        raise r.fail(
            "log_level", f"expected debug, info, warning or error, got {describe_value(level)}"
        )
    return ControlConfig(
        listen=listen,
        database=database,
        public_url=r.url(top.get("public_url"), "public_url"),
        cors_origins=cors,
        trusted_proxies=trusted_proxies,
        max_body=r.size(_get(top, "max_body", 64 * KiB), "max_body", KiB, 16 * MiB),
        sessions=sessions,
        kdf=kdf,
        rate_limits=rate_limits,
        plans=plans,
        profiles=profiles,
        playback=playback,
        catalog_feed=catalog_feed,
        recommend=recommend,
        fill=fill,
        log_level=level,
        workers=r.integer(_get(top, "workers", 1), "workers", 1, 64),
        node_modules=r.directory(top.get("node_modules"), "node_modules"),
    )


def _token_file(r: _R, raw: object, key: str) -> Path | None:
    """A credential file holding a token of at least MIN_FEED_TOKEN_CHARS characters."""
    path = r.file(raw, key)
    if path is None:
        return None
    try:
        token = read_credential_file(path)
    except (OSError, ValueError) as exc:
        raise r.fail(key, str(exc)) from None
    if len(token) < MIN_FEED_TOKEN_CHARS:
        raise r.fail(
            key,
            f"the token in {str(path)!r} has {len(token)} characters; use at least "
            f"{MIN_FEED_TOKEN_CHARS} (python -m edge keygen makes good secrets)",
        )
    return path


def _fill(r: _R, raw: object) -> FillConfig:
    f = r.mapping(raw, "fill", FILL_KEYS)
    d = FillConfig()
    return FillConfig(
        credential_file=_token_file(r, f.get("credential_file"), "fill.credential_file"),
        origin_credential_file=_token_file(
            r, f.get("origin_credential_file"), "fill.origin_credential_file"
        ),
        half_life_days=r.number(
            _get(f, "half_life_days", d.half_life_days), "fill.half_life_days", 0.01, 365
        ),
        window_days=r.number(_get(f, "window_days", d.window_days), "fill.window_days", 0.01, 365),
        boost_views=r.number(_get(f, "boost_views", d.boost_views), "fill.boost_views", 0, 1e9),
        boost_days=r.number(_get(f, "boost_days", d.boost_days), "fill.boost_days", 0, 365),
        single_file_share=r.number(
            _get(f, "single_file_share", d.single_file_share), "fill.single_file_share", 0, 1
        ),
        cache_ttl=r.duration(
            _get(f, "cache_ttl", d.cache_ttl), "fill.cache_ttl", 1, DAY, zero=True
        ),
        limit=r.integer(_get(f, "limit", d.limit), "fill.limit", 1, MAX_FILL_LIMIT),
    )


def _plan(r: _R, raw: object, key: str) -> PlanConfig:
    d = r.mapping(raw, key, PLAN_KEYS)
    if raw is None:
        raise r.fail(key, "expected a plan mapping, got null")
    for name in PLAN_KEYS[:5]:
        if d.get(name) is None:
            raise r.fail(f"{key}.{name}", "required")
    pid = d["id"]
    if not isinstance(pid, str) or not _PLAN_ID.match(pid):
        raise r.fail(
            f"{key}.id", f"expected an id of [a-z0-9_-], 1-32 characters, got {describe_value(pid)}"
        )
    currency = _get(d, "currency", "USD")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise r.fail(
            f"{key}.currency", f"expected an ISO 4217 code like USD, got {describe_value(currency)}"
        )
    return PlanConfig(
        id=pid,
        name=r.string(d["name"], f"{key}.name", 64),
        max_streams=r.integer(d["max_streams"], f"{key}.max_streams", 1, 16),
        max_height=r.integer(d["max_height"], f"{key}.max_height", 144, 4320),
        price_cents=r.integer(d["price_cents"], f"{key}.price_cents", 0, 10**9),
        currency=currency,
        period_days=r.integer(_get(d, "period_days", 30), f"{key}.period_days", 1, 366),
    )


__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_PLANS",
    "LOG_LEVELS",
    "CatalogFeedConfig",
    "ConfigError",
    "ControlConfig",
    "DatabaseConfig",
    "FillConfig",
    "PlanConfig",
    "PlaybackConfig",
    "ProfilesConfig",
    "RateConfig",
    "RateLimitsConfig",
    "RecommendConfig",
    "SessionsConfig",
    "load_config",
    "parse_config",
]
