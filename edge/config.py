"""Typed, frozen configuration of an edge node.

The YAML file is read once at start-up into frozen dataclasses and validated completely, so a
bad setting stops the edge before it serves anything instead of surfacing hours later. Every
problem is a ``ConfigError`` whose message starts with where it came from - the file and the
dotted key (``conf/edge.yaml: cache.dirs[0].size: ...``), or the command-line flag
(``--cache-size: ...``) - because the operator reading it is usually on a console with only the
message to go on.

Rules, documented for operators in ``conf/edge.example.yaml``:

* An empty file (or no file at all) means every default; only ``upstreams`` and either
  ``signing.key_file`` or ``signing.public_prefixes`` must be set.
* Unknown keys are errors, with the closest known key suggested: a typo silently ignored is a
  setting silently at its default.
* Types are strict. YAML 1.1 turns ``yes``/``off`` into booleans and ``12:30`` into 750; such
  values are reported with the type YAML produced so the fix (quoting) is obvious.
* A key set to ``null`` is the same as leaving it out, except ``admin.listen`` where ``null``
  (or ``off``) disables the admin listener.
* Sizes, durations and rates use ``edge.units`` (``"500GiB"``, ``"10s"``, ``"10Gbit/s"``).
* Relative paths are resolved against the current working directory when the configuration is
  loaded, and stored absolute, so a later ``chdir`` cannot change what they name.
* Command-line flags (``add_config_arguments``) override the file key by key and go through the
  same validation; an edge can run from flags alone with no file.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml  # type: ignore[import-untyped,unused-ignore]

from edge.fillplan import FillWindow, parse_window
from edge.units import (
    UnitError,
    describe_value,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)

__all__ = [
    "AdminConfig",
    "CacheConfig",
    "CacheDir",
    "ConfigError",
    "EdgeConfig",
    "FillConfig",
    "FillParent",
    "LimitsConfig",
    "Listen",
    "LogConfig",
    "SigningConfig",
    "SteeringConfig",
    "UpstreamConfig",
    "add_config_arguments",
    "config_from_args",
    "load_config",
    "parse_listen",
    "read_credential_file",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

DEFAULT_CACHE_DIR: Final = "var/cache/edge"
DEFAULT_CACHE_DIR_SIZE: Final = 1 * GiB
MIN_SLICE_SIZE: Final = 64 * KiB
MAX_SLICE_SIZE: Final = 256 * MiB
MIN_ADMIN_TOKEN_CHARS: Final = 16
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NO_FILE: Final = "<no config file>"


class ConfigError(ValueError):
    """An invalid configuration. ``str()`` names the file (or flag) and the key at fault."""

    def __init__(self, message: str, *, source: str = "", key: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.source = source
        self.key = key
        self.detail = detail or message


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class Listen:
    """A socket address to listen on. ``host == ""`` means all interfaces, IPv4 and IPv6
    (asyncio's convention for ``create_server``); ``port == 0`` picks a free port (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


DEFAULT_LISTEN: Final = Listen("0.0.0.0", 8080)
DEFAULT_ADMIN_LISTEN: Final = Listen("127.0.0.1", 9091)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # Admin API (/healthz, /metrics, /admin/*); None disables it.
    listen: Listen | None = DEFAULT_ADMIN_LISTEN
    # File holding the admin bearer token (see read_credential_file); when None the admin POST
    # endpoints refuse every request, so an unconfigured edge cannot be purged by anyone.
    credential_file: Path | None = None


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    # http://host[:port][/prefix], https://... or file:///abs/dir (a local directory as origin);
    # normalised: lower-case scheme, no trailing "/".
    url: str
    # File holding the fill credential, sent as "Authorization: Bearer <token>".
    credential_file: Path | None = None
    connect_timeout: float = 2.0  # seconds
    read_timeout: float = 10.0  # seconds of inactivity per read
    # Seconds one slice transfer may take in all: an upstream trickling bytes slowly enough
    # to dodge read_timeout must not hold a fill (and every player waiting on it) forever.
    fill_timeout: float = 120.0


def _default_cache_dirs() -> tuple[CacheDir, ...]:
    # Absolute at construction so EdgeConfig() and load_config() agree on the default.
    return (CacheDir(Path(os.path.abspath(DEFAULT_CACHE_DIR)), DEFAULT_CACHE_DIR_SIZE),)


@dataclass(frozen=True, slots=True)
class CacheDir:
    path: Path  # absolute; one per disk
    size: int  # bytes this directory may hold, >= slice_size


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # Distinct, non-nested directories, normally one per disk.
    dirs: tuple[CacheDir, ...] = field(default_factory=_default_cache_dirs)
    slice_size: int = 2 * MiB  # bytes; objects are filled and stored in slices of this size
    max_open_files: int = 4096  # cached open file descriptors
    # Bytes kept free on each cache dir's filesystem; fills stop below it, so a shared disk
    # is never filled to 100% by the cache.
    reserve: int = 0


@dataclass(frozen=True, slots=True)
class SigningConfig:
    # Signing keys, lines "KEYID SECRET" (format owned by edge/tokens.py); must be readable.
    key_file: Path | None = None
    # Paths starting with one of these need no token ("/" serves everything openly).
    public_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_connections: int = 10000  # concurrent client connections; beyond: 503 + Retry-After
    max_egress: int | None = None  # bytes/s; beyond: 503 + Retry-After; None = unlimited
    retry_after: int = 2  # seconds, sent in Retry-After
    header_timeout: float = 10.0  # whole request head must arrive within this (slowloris)
    idle_timeout: float = 60.0  # keep-alive idle
    send_timeout: float = 60.0  # a client accepting no bytes for this long is dropped
    max_header_bytes: int = 16384  # larger request head: 431
    max_ranges: int = 16  # more ranges: Range ignored, 200 with the whole body
    drain_timeout: float = 30.0  # graceful stop waits this long for in-flight requests


@dataclass(frozen=True, slots=True)
class SteeringConfig:
    # The steering service's base URL; heartbeats go to <url>/heartbeat. None: no heartbeats.
    url: str | None = None
    # File holding the heartbeat credential, sent as "Authorization: Bearer <token>".
    credential_file: Path | None = None
    interval: float = 1.0  # seconds between heartbeats


@dataclass(frozen=True, slots=True)
class FillParent:
    # A parent (mid-tier) cache asked after the site's peers and before the origin; it pulls
    # through. http(s)://host[:port][/prefix].
    url: str
    # File holding a bearer credential for it. None: no Authorization header.
    credential_file: Path | None = None


DEFAULT_FILL_WINDOW: Final = FillWindow(2 * 60, 14 * 60)


@dataclass(frozen=True, slots=True)
class FillConfig:
    # Nightly proactive fill from the manifest steering computes for this edge. It runs only
    # with steering.url set (the manifest comes from there).
    enabled: bool = True
    # Local time "HH:MM-HH:MM" (may wrap midnight). 02:00-14:00: after the evening peak has
    # died down and ending before the afternoon ramp-up, as Open Connect fills off-peak.
    window: FillWindow = DEFAULT_FILL_WINDOW
    # IANA time zone of the window; None: the machine's local time zone.
    timezone: str | None = None
    rate: int | None = None  # bytes/s for all fill downloads together; None: unlimited
    burst: int = 4 * MiB  # bytes the rate limiter lets through at once
    concurrency: int = 2  # objects downloaded at once (low: players come first)
    parents: tuple[FillParent, ...] = ()  # asked in order after peers, before the origin
    manifest_retry: float = 60.0  # seconds between manifest attempts after a failure


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"  # one of LOG_LEVELS
    access_log: bool = True


def _default_node_id() -> str:
    # Host names may hold characters a node id may not (metrics labels, log fields); map them
    # rather than fail an edge started with no config on an oddly named host.
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "edge"


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    node_id: str = field(default_factory=_default_node_id)  # [A-Za-z0-9._-]{1,64}
    site: str = "default"  # same charset
    listen: Listen = DEFAULT_LISTEN  # data plane
    admin: AdminConfig = AdminConfig()
    upstreams: tuple[UpstreamConfig, ...] = ()  # tried in order; load_config requires one
    upstream_retries: int = 1  # extra attempts per upstream on connect errors / 5xx
    cache: CacheConfig = field(default_factory=CacheConfig)
    signing: SigningConfig = SigningConfig()
    limits: LimitsConfig = LimitsConfig()
    steering: SteeringConfig = SteeringConfig()
    log: LogConfig = LogConfig()
    fill: FillConfig = FillConfig()


# Which dataclass describes the mapping at each dotted key, for unknown-key checks and for
# suggesting a key that belongs in another section.
_SECTIONS: Final[dict[str, type]] = {
    "": EdgeConfig,
    "admin": AdminConfig,
    "upstreams[]": UpstreamConfig,
    "cache": CacheConfig,
    "cache.dirs[]": CacheDir,
    "signing": SigningConfig,
    "limits": LimitsConfig,
    "steering": SteeringConfig,
    "log": LogConfig,
    "fill": FillConfig,
    "fill.parents[]": FillParent,
}

# Override keys set by the flags of add_config_arguments, and the flag named in their errors.
# "[*]" applies the value to every item of the list.
_FLAG_FOR_KEY: Final[dict[str, str]] = {
    "node_id": "--node-id",
    "site": "--site",
    "listen": "--listen",
    "admin.listen": "--admin-listen",
    "upstreams": "--upstream",
    "upstreams[*].credential_file": "--upstream-credential-file",
    "cache.dirs": "--cache-dir",
    "cache.dirs[*].size": "--cache-size",
    "cache.slice_size": "--slice-size",
    "signing.key_file": "--signing-key-file",
    "signing.public_prefixes": "--public-prefix",
}

# List overrides given as plain strings (as repeatable flags produce) become these mappings.
_LIST_ITEM_KEY: Final[dict[str, str]] = {"upstreams": "url", "cache.dirs": "path"}


def _raw_list_default(key: str) -> list[Any]:
    # "[*]" overrides must reach the dirs an edge would use when the file names none,
    # e.g. --cache-size alone resizes the default cache dir.
    if key == "cache.dirs":
        return [{"path": DEFAULT_CACHE_DIR, "size": DEFAULT_CACHE_DIR_SIZE}]
    return []


# --------------------------------------------------------------------------- error context

_T = TypeVar("_T")
_Converter = Callable[[str, object], _T]

_LAST_SEGMENT_RE: Final = re.compile(r"(?:\.[^.\[]+|\[[^\]]*\])$")


class _Context:
    """Knows where each raw value came from, so errors can name the file or the flag."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.provenance: dict[str, str] = {}  # concrete dotted key -> override key

    def override_for(self, key: str) -> str | None:
        """The override key that set ``key`` or one of its parents, if any."""
        while True:
            if key in self.provenance:
                return self.provenance[key]
            parent = _LAST_SEGMENT_RE.sub("", key)
            if parent == key or not parent:
                return None
            key = parent

    def error(self, key: str, detail: str) -> ConfigError:
        override = self.override_for(key)
        if override is not None:
            flag = _FLAG_FOR_KEY.get(override)
            source = flag if flag is not None else f"override {override}"
            message = f"{flag}: {detail}" if flag is not None else f"override {key}: {detail}"
        else:
            source = self.source
            message = f"{source}: {key}: {detail}" if key else f"{source}: {detail}"
        return ConfigError(message, source=source, key=key, detail=detail)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _pattern(key: str) -> str:
    """``cache.dirs[3].size`` -> ``cache.dirs[].size``, the form used in ``_SECTIONS``."""
    return re.sub(r"\[[^\]]*\]", "[]", key)


def _unknown_key_detail(section: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f'unknown key; did you mean "{close[0]}"?'
    # A right name in the wrong section (slice_size at the top level) is a common slip.
    elsewhere = [
        _join(prefix.replace("[]", "[N]"), name)
        for prefix, cls in _SECTIONS.items()
        if prefix != section and name in {f.name for f in fields(cls)}
    ]
    if elsewhere:
        return f'unknown key here; did you mean "{elsewhere[0]}"?'
    return f"unknown key; known keys here: {', '.join(known)}"


class _Section:
    """One mapping of the raw tree, checked against the dataclass that it becomes."""

    def __init__(self, ctx: _Context, key: str, raw: object, cls: type) -> None:
        self.ctx = ctx
        self.key = key
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            where = "" if key else " at the top level"
            raise ctx.error(key, f"expected a mapping of settings{where}, got {_shown(raw)}")
        known = [f.name for f in fields(cls)]
        for name in raw:
            if not isinstance(name, str):
                raise ctx.error(key, f"keys must be strings, got {_shown(name)}")
            if name not in known:
                raise ctx.error(_join(key, name), _unknown_key_detail(_pattern(key), name, known))
        self.raw: dict[str, object] = raw

    def get(self, name: str, convert: _Converter[_T], default: _T) -> _T:
        value = self.raw.get(name)
        if value is None:
            return default
        return convert(_join(self.key, name), value)

    def require(self, name: str, convert: _Converter[_T], missing: str) -> _T:
        value = self.raw.get(name)
        if value is None:
            raise self.ctx.error(self.key, missing)
        return convert(_join(self.key, name), value)

    def section(self, name: str, cls: type) -> _Section:
        return _Section(self.ctx, _join(self.key, name), self.raw.get(name), cls)

    def items(self, name: str) -> list[tuple[str, object]] | None:
        """(dotted key, value) of each item of a list, or None when unset."""
        value = self.raw.get(name)
        if value is None:
            return None
        key = _join(self.key, name)
        if not isinstance(value, list):
            raise self.ctx.error(key, f"expected a list, got {_shown(value)}")
        return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _shown(value: object) -> str:
    text = describe_value(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{text} (a number)"
    return text


# --------------------------------------------------------------------------- converters


def _string(ctx: _Context, key: str, value: object, what: str) -> str:
    if not isinstance(value, str):
        hint = "; quote it in YAML" if isinstance(value, int | float | bool) else ""
        raise ctx.error(key, f"expected {what}, got {_shown(value)}{hint}")
    return value


def _integer(ctx: _Context, key: str, value: object, low: int, high: int) -> int:
    what = f"an integer from {low} to {high}"
    # Flags arrive as strings; a quoted number in the file is a type error like any other.
    if (
        isinstance(value, str)
        and ctx.override_for(key) is not None
        and value.strip().isascii()
        and value.strip().isdigit()
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(key, f"expected {what}, got {_shown(value)}")
    if not low <= value <= high:
        raise ctx.error(key, f"expected {what}, got {value}")
    return value


def _boolean(ctx: _Context, key: str, value: object) -> bool:
    if isinstance(value, str) and ctx.override_for(key) is not None:
        lowered = value.strip().lower()
        if lowered in {"true", "yes", "on", "1"}:
            return True
        if lowered in {"false", "no", "off", "0"}:
            return False
    if not isinstance(value, bool):
        raise ctx.error(key, f"expected true or false, got {_shown(value)}")
    return value


def _name(ctx: _Context, key: str, value: object) -> str:
    what = "a name of 1-64 characters from A-Z a-z 0-9 . _ -"
    text = _string(ctx, key, value, what)
    if not _NAME_RE.fullmatch(text):
        raise ctx.error(key, f"expected {what}, got {_shown(text)}")
    return text


def _size(
    ctx: _Context,
    key: str,
    value: object,
    low: int = 0,
    high: int | None = None,
    low_name: str = "",
) -> int:
    try:
        size = parse_size(value)  # type: ignore[arg-type]  # parse_size rejects other types
    except UnitError as exc:
        raise ctx.error(key, exc.detail) from None
    if size < low or (high is not None and size > high):
        if high is not None:
            bounds = f"from {format_size(low)} to {format_size(high)}"
        elif low_name:
            bounds = f"at least {low_name} ({format_size(low)})"
        else:
            bounds = f"at least {format_size(low)}"
        raise ctx.error(key, f"must be {bounds}, got {_shown(value)} ({format_size(size)})")
    return size


def _duration(ctx: _Context, key: str, value: object, allow_zero: bool = False) -> float:
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]  # rejects other types
    except UnitError as exc:
        raise ctx.error(key, exc.detail) from None
    if seconds == 0 and not allow_zero:
        raise ctx.error(key, f"must be greater than 0, got {_shown(value)}")
    return seconds


def _rate(ctx: _Context, key: str, value: object) -> int:
    try:
        rate = parse_rate(value)  # type: ignore[arg-type]  # parse_rate rejects other types
    except UnitError as exc:
        raise ctx.error(key, exc.detail) from None
    if rate < 1:
        raise ctx.error(
            key, f"must be at least 1 byte/s (use null for no limit), got {_shown(value)}"
        )
    return rate


def _path(ctx: _Context, key: str, value: object) -> Path:
    text = _string(ctx, key, value, "a path")
    if not text or "\0" in text:
        raise ctx.error(key, f"expected a path, got {_shown(text)}")
    return Path(os.path.abspath(text))


def _readable_file(ctx: _Context, key: str, value: object, what: str) -> Path:
    path = _path(ctx, key, value)
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ctx.error(key, f'cannot read {what} "{path}": {exc.strerror or exc}') from None
    return path


def _credential_file(ctx: _Context, key: str, value: object, min_chars: int = 1) -> Path:
    path = _readable_file(ctx, key, value, "credential file")
    try:
        token = read_credential_file(path)
    except (OSError, ValueError) as exc:
        raise ctx.error(key, str(exc)) from None
    if len(token) < min_chars:
        raise ctx.error(
            key,
            f'the token in "{path}" has {len(token)} characters; use at least {min_chars} '
            "(e.g. from `openssl rand -hex 32`)",
        )
    return path


def read_credential_file(path: Path) -> str:
    """The token in a credential file: its first line that is neither blank nor a # comment.

    Raises ``ValueError`` when there is none or it could not be sent in an HTTP header.
    """
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            token = line.strip()
            if token and not token.startswith("#"):
                if any(c.isspace() or not c.isprintable() for c in token):
                    # It goes into "Authorization: Bearer <token>" verbatim.
                    raise ValueError(f'the token in "{path}" contains spaces or control characters')
                return token
    raise ValueError(f'"{path}" holds no token (only blank lines and # comments)')


def parse_listen(text: str) -> Listen:
    """Parse ``host:port``, ``[v6addr]:port`` or ``:port``; raises ``ValueError`` with a reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError('an IPv6 address in brackets must be followed by ":port"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not an IPv6 address') from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("missing :port")
        if ":" in host:
            raise ValueError('put an IPv6 address in brackets, like "[::1]:8080"')
        if host and not _valid_host(host):
            raise ValueError(f'"{host}" is not an IP address or host name')
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'"{port}" is not a port number (0-65535)')
    return Listen(host, int(port))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        return len(host) <= 253 and all(
            re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label, re.ASCII)
            for label in labels
        )
    return True


def _listen(ctx: _Context, key: str, value: object) -> Listen:
    what = 'an address like "0.0.0.0:8080", "[::1]:8080" or ":8080"'
    text = _string(ctx, key, value, what)
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise ctx.error(key, f"expected {what}, got {_shown(text)} ({exc})") from None


def _optional_listen(ctx: _Context, key: str, value: object) -> Listen | None:
    # YAML 1.1 reads an unquoted `off` as false, so accept both spellings of "disabled".
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    return _listen(ctx, key, value)


def _url(ctx: _Context, key: str, value: object) -> str:
    what = "an http://, https:// or file:/// URL"
    text = _string(ctx, key, value, what)

    def bad(reason: str) -> ConfigError:
        return ctx.error(key, f"expected {what}, got {_shown(text)} ({reason})")

    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise bad("empty or contains spaces or control characters")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https", "file"}:
        raise bad(f'unsupported scheme "{parts.scheme}"' if parts.scheme else "no scheme")
    if "?" in text or "#" in text:
        # The edge appends request paths to the upstream URL; a query would end up mid-URL.
        raise bad("no query or fragment allowed")
    path = parts.path.rstrip("/")
    if scheme == "file":
        if parts.netloc not in {"", "localhost"}:
            raise bad("a file URL needs an absolute path: file:///abs/dir")
        if not path:
            raise bad("refusing to serve the whole filesystem; name a directory")
        if ".." in path.split("/"):
            raise bad('".." is not allowed in the path')
        return f"file://{path}"
    if not parts.hostname:
        raise bad("no host")
    if "@" in parts.netloc:
        raise bad("put credentials in credential_file, not in the URL")
    try:
        parts.port  # noqa: B018  # raises ValueError on a malformed port
    except ValueError:
        raise bad("bad port") from None
    return f"{scheme}://{parts.netloc}{path}"


def _log_level(ctx: _Context, key: str, value: object) -> str:
    text = _string(ctx, key, value, f"one of {', '.join(LOG_LEVELS)}").lower()
    if text not in LOG_LEVELS:
        raise ctx.error(key, f"expected one of {', '.join(LOG_LEVELS)}, got {_shown(value)}")
    return text


def _public_prefix(ctx: _Context, key: str, value: object) -> str:
    text = _string(ctx, key, value, 'a path prefix starting with "/"')
    if not text.startswith("/") or any(c.isspace() or not c.isprintable() for c in text):
        raise ctx.error(key, f'expected a path prefix starting with "/", got {_shown(text)}')
    return text


# --------------------------------------------------------------------------- building


def _build(ctx: _Context, raw: object) -> EdgeConfig:
    top = _Section(ctx, "", raw, EdgeConfig)
    return EdgeConfig(
        node_id=top.get("node_id", lambda k, v: _name(ctx, k, v), _default_node_id()),
        site=top.get("site", lambda k, v: _name(ctx, k, v), "default"),
        listen=top.get("listen", lambda k, v: _listen(ctx, k, v), DEFAULT_LISTEN),
        admin=_build_admin(top.section("admin", AdminConfig)),
        upstreams=_build_upstreams(top),
        upstream_retries=top.get("upstream_retries", lambda k, v: _integer(ctx, k, v, 0, 10), 1),
        cache=_build_cache(top.section("cache", CacheConfig)),
        signing=_build_signing(top.section("signing", SigningConfig)),
        limits=_build_limits(top.section("limits", LimitsConfig)),
        steering=_build_steering(top.section("steering", SteeringConfig)),
        log=_build_log(top.section("log", LogConfig)),
        fill=_build_fill(top.section("fill", FillConfig)),
    )


def _build_admin(sec: _Section) -> AdminConfig:
    ctx = sec.ctx
    listen: Listen | None = DEFAULT_ADMIN_LISTEN
    if "listen" in sec.raw:  # present-but-null disables, unlike other keys
        value = sec.raw["listen"]
        listen = None if value is None else _optional_listen(ctx, _join(sec.key, "listen"), value)
    return AdminConfig(
        listen=listen,
        credential_file=sec.get(
            "credential_file",
            lambda k, v: _credential_file(ctx, k, v, MIN_ADMIN_TOKEN_CHARS),
            None,
        ),
    )


def _build_upstreams(top: _Section) -> tuple[UpstreamConfig, ...]:
    ctx = top.ctx
    items = top.items("upstreams") or []
    if not items:
        raise ctx.error(
            "upstreams",
            "at least one upstream is required "
            '(add "- url: https://origin.example" under upstreams, or pass --upstream URL)',
        )
    upstreams = []
    for key, item in items:
        if isinstance(item, str):
            raise ctx.error(key, f'expected a mapping, got {_shown(item)}; write "- url: {item}"')
        sec = _Section(ctx, key, item, UpstreamConfig)
        upstreams.append(
            UpstreamConfig(
                url=sec.require("url", lambda k, v: _url(ctx, k, v), 'missing required key "url"'),
                credential_file=sec.get(
                    "credential_file", lambda k, v: _credential_file(ctx, k, v), None
                ),
                connect_timeout=sec.get("connect_timeout", lambda k, v: _duration(ctx, k, v), 2.0),
                read_timeout=sec.get("read_timeout", lambda k, v: _duration(ctx, k, v), 10.0),
                fill_timeout=sec.get("fill_timeout", lambda k, v: _duration(ctx, k, v), 120.0),
            )
        )
    return tuple(upstreams)


def _build_cache(sec: _Section) -> CacheConfig:
    ctx = sec.ctx
    slice_size = sec.get(
        "slice_size", lambda k, v: _size(ctx, k, v, MIN_SLICE_SIZE, MAX_SLICE_SIZE), 2 * MiB
    )
    items = sec.items("dirs")
    if items is None:
        dirs = _default_cache_dirs()
    elif not items:
        raise ctx.error(_join(sec.key, "dirs"), "at least one cache dir is required")
    else:
        built: list[CacheDir] = []
        for key, item in items:
            dir_sec = _Section(ctx, key, item, CacheDir)
            path = dir_sec.require(
                "path", lambda k, v: _path(ctx, k, v), 'missing required key "path"'
            )
            size = dir_sec.require(
                "size",
                lambda k, v: _size(ctx, k, v, slice_size, low_name="cache.slice_size"),
                f'no size for cache dir "{path}" (set "size" or pass --cache-size)',
            )
            _check_distinct(ctx, key, path, built)
            built.append(CacheDir(path, size))
        dirs = tuple(built)
    return CacheConfig(
        dirs=dirs,
        slice_size=slice_size,
        max_open_files=sec.get(
            "max_open_files", lambda k, v: _integer(ctx, k, v, 16, 1_000_000), 4096
        ),
        reserve=sec.get("reserve", lambda k, v: _size(ctx, k, v), 0),
    )


def _check_distinct(ctx: _Context, key: str, path: Path, earlier: Sequence[CacheDir]) -> None:
    # Two dirs sharing files would each evict the other's data and double-count space.
    for i, other in enumerate(earlier):
        where = f'cache.dirs[{i}].path "{other.path}"'
        if path == other.path:
            raise ctx.error(f"{key}.path", f'"{path}" is the same directory as {where}')
        if path.is_relative_to(other.path):
            raise ctx.error(f"{key}.path", f'"{path}" is inside {where}; cache dirs must not nest')
        if other.path.is_relative_to(path):
            raise ctx.error(f"{key}.path", f'"{path}" contains {where}; cache dirs must not nest')


def _build_signing(sec: _Section) -> SigningConfig:
    ctx = sec.ctx
    key_file = sec.get("key_file", lambda k, v: _readable_file(ctx, k, v, "signing key file"), None)
    prefixes = tuple(
        _public_prefix(ctx, key, item) for key, item in sec.items("public_prefixes") or []
    )
    if key_file is None and not prefixes:
        raise ctx.error(
            _join(sec.key, "key_file"),
            "required unless public_prefixes covers what you serve "
            '(put "/" in public_prefixes to serve everything openly; '
            "flags: --signing-key-file, --public-prefix)",
        )
    return SigningConfig(key_file=key_file, public_prefixes=prefixes)


def _build_limits(sec: _Section) -> LimitsConfig:
    ctx = sec.ctx
    d = LimitsConfig()

    def duration(name: str, default: float, allow_zero: bool = False) -> float:
        return sec.get(name, lambda k, v: _duration(ctx, k, v, allow_zero), default)

    return LimitsConfig(
        max_connections=sec.get(
            "max_connections", lambda k, v: _integer(ctx, k, v, 1, 10_000_000), d.max_connections
        ),
        max_egress=sec.get("max_egress", lambda k, v: _rate(ctx, k, v), d.max_egress),
        retry_after=sec.get(
            "retry_after", lambda k, v: _integer(ctx, k, v, 1, 3600), d.retry_after
        ),
        header_timeout=duration("header_timeout", d.header_timeout),
        idle_timeout=duration("idle_timeout", d.idle_timeout),
        send_timeout=duration("send_timeout", d.send_timeout),
        max_header_bytes=sec.get(
            "max_header_bytes", lambda k, v: _size(ctx, k, v, 1 * KiB, 1 * MiB), d.max_header_bytes
        ),
        max_ranges=sec.get("max_ranges", lambda k, v: _integer(ctx, k, v, 1, 1000), d.max_ranges),
        drain_timeout=duration("drain_timeout", d.drain_timeout, allow_zero=True),
    )


def _build_steering(sec: _Section) -> SteeringConfig:
    ctx = sec.ctx

    def _http_url(k: str, v: object) -> str:
        url = _url(ctx, k, v)
        if not url.startswith(("http://", "https://")):
            raise ctx.error(k, f"expected an http:// or https:// URL, got {url!r}")
        return url

    return SteeringConfig(
        url=sec.get("url", _http_url, None),
        credential_file=sec.get("credential_file", lambda k, v: _credential_file(ctx, k, v), None),
        interval=sec.get("interval", lambda k, v: _duration(ctx, k, v), 1.0),
    )


def _build_fill(sec: _Section) -> FillConfig:
    ctx = sec.ctx
    d = FillConfig()

    def window(k: str, v: object) -> FillWindow:
        try:
            return parse_window(v)
        except ValueError as exc:
            hint = "; quote it in YAML" if isinstance(v, int | float) else ""
            raise ctx.error(k, f"{exc}{hint}") from None

    def timezone(k: str, v: object) -> str:
        text = _string(ctx, k, v, 'an IANA time zone name like "Europe/Paris"')
        try:
            if not text or text.startswith(("/", ".")) or ".." in text:
                raise ValueError(text)
            ZoneInfo(text)
        except (ValueError, ZoneInfoNotFoundError, OSError):
            raise ctx.error(
                k, f'unknown time zone "{text}" (IANA names like "Europe/Paris")'
            ) from None
        return text

    parents: list[FillParent] = []
    for key, item in sec.items("parents") or []:
        if isinstance(item, str):
            raise ctx.error(key, f'expected a mapping, got {_shown(item)}; write "- url: {item}"')
        psec = _Section(ctx, key, item, FillParent)

        def http_url(k: str, v: object) -> str:
            url = _url(ctx, k, v)
            if not url.startswith(("http://", "https://")):
                raise ctx.error(k, f"expected an http:// or https:// URL, got {url!r}")
            return url

        parents.append(
            FillParent(
                url=psec.require("url", http_url, 'missing required key "url"'),
                credential_file=psec.get(
                    "credential_file", lambda k, v: _credential_file(ctx, k, v), None
                ),
            )
        )
    return FillConfig(
        enabled=sec.get("enabled", lambda k, v: _boolean(ctx, k, v), d.enabled),
        window=sec.get("window", window, d.window),
        timezone=sec.get("timezone", timezone, d.timezone),
        rate=sec.get("rate", lambda k, v: _rate(ctx, k, v), d.rate),
        burst=sec.get("burst", lambda k, v: _size(ctx, k, v, 64 * KiB), d.burst),
        concurrency=sec.get("concurrency", lambda k, v: _integer(ctx, k, v, 1, 64), d.concurrency),
        parents=tuple(parents),
        manifest_retry=sec.get(
            "manifest_retry", lambda k, v: _duration(ctx, k, v), d.manifest_retry
        ),
    )


def _build_log(sec: _Section) -> LogConfig:
    ctx = sec.ctx
    return LogConfig(
        level=sec.get("level", lambda k, v: _log_level(ctx, k, v), "info"),
        access_log=sec.get("access_log", lambda k, v: _boolean(ctx, k, v), True),
    )


# --------------------------------------------------------------------------- YAML


def _no_duplicate_keys(loader: Any, node: Any, deep: bool = False) -> Any:
    # PyYAML keeps the last of two equal keys; the first one is then silently ignored, which
    # is the same trap as an unknown key.
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f'duplicate key "{key_node.value}" (first at line {seen[ident] + 1})',
                    key_node.start_mark,
                )
            seen[ident] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    pass


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def _read_yaml(path: Path) -> object:
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read config file: {exc.strerror or exc}", source=source
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})", source=source) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            # The context points at where an unclosed construct began, often the real mistake.
            started = exc.context_mark
            at = f" at line {started.line + 1}" if started is not None else ""
            problem = f"{problem} ({exc.context}{at})"
        raise ConfigError(
            f"{source}: {where}invalid YAML: {problem}", source=source, detail=problem
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}", source=source) from None


# --------------------------------------------------------------------------- overrides

_KEY_TOKEN_RE: Final = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_]*)|\[(\*|\d+)\]")


def _split_override_key(key: str) -> list[str | int | None]:
    """``cache.dirs[*].size`` -> ``["cache", "dirs", None, "size"]`` (None = every item)."""
    segments: list[str | int | None] = []
    pos = 0
    while pos < len(key):
        match = _KEY_TOKEN_RE.match(key, pos)
        if match is None or (pos == 0 and match.group(0).startswith(".")):
            raise ConfigError(
                f"override {key}: not a dotted key like cache.slice_size or cache.dirs[*].size",
                source=f"override {key}",
                key=key,
            )
        name, index = match.groups()
        if name is not None:
            segments.append(name)
        else:
            segments.append(None if index == "*" else int(index))
        pos = match.end()
    if not segments or not isinstance(segments[0], str):
        raise ConfigError(f"override {key!r}: empty key", source="override", key=key)
    return segments


def _apply_override(
    ctx: _Context,
    container: Any,
    segments: Sequence[str | int | None],
    value: object,
    concrete: str,
    override: str,
) -> None:
    head, rest = segments[0], segments[1:]
    if isinstance(head, str):
        key = _join(concrete, head)
        if not rest:
            container[head] = value
            for stale in [k for k in ctx.provenance if k.startswith((key + ".", key + "["))]:
                del ctx.provenance[stale]
            ctx.provenance[key] = override
            return
        child = container.get(head)
        if child is None:
            child = {} if isinstance(rest[0], str) else _raw_list_default(key)
            container[head] = child
        if isinstance(rest[0], str) and not isinstance(child, dict):
            raise ctx.error(key, f"expected a mapping, got {_shown(child)}")
        if not isinstance(rest[0], str) and not isinstance(child, list):
            raise ctx.error(key, f"expected a list, got {_shown(child)}")
        _apply_override(ctx, child, rest, value, key, override)
        return
    if head is None:
        indices: Sequence[int] = range(len(container))
    elif head < len(container):
        indices = [head]
    else:
        raise ConfigError(
            f"override {override}: {concrete} has no item [{head}]",
            source=f"override {override}",
            key=concrete,
        )
    for i in indices:
        key = f"{concrete}[{i}]"
        if not rest:
            container[i] = value
            ctx.provenance[key] = override
            continue
        if not isinstance(container[i], dict):
            raise ctx.error(key, f"expected a mapping, got {_shown(container[i])}")
        _apply_override(ctx, container[i], rest, value, key, override)


def _normalise_override(key: str, value: object) -> object:
    if isinstance(value, tuple):
        value = list(value)
    item_key = _LIST_ITEM_KEY.get(key)
    if item_key is not None:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = [{item_key: v} if isinstance(v, str) else v for v in value]
    elif key == "signing.public_prefixes" and isinstance(value, str):
        value = [value]
    return value


# --------------------------------------------------------------------------- public API


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> EdgeConfig:
    """Load and validate the edge configuration.

    ``path`` is the YAML file, or None for defaults only. ``overrides`` maps dotted keys
    (``"cache.slice_size"``, ``"upstreams"``, ``"cache.dirs[*].size"`` for every item) to raw
    values as a command line gives them; they replace the file's values before validation, and
    errors in them name the flag (see ``add_config_arguments``) instead of the file.
    """
    if path is None:
        ctx = _Context(_NO_FILE)
        raw: object = {}
    else:
        path = Path(path)
        ctx = _Context(str(path))
        raw = _read_yaml(path)
        if raw is None:  # empty file, or only comments
            raw = {}
    if overrides:
        if not isinstance(raw, dict):
            raise ctx.error(
                "", f"expected a mapping of settings at the top level, got {_shown(raw)}"
            )
        # Whole lists first, so "[*]" overrides apply to the list the flags chose.
        ordered = sorted(overrides.items(), key=lambda kv: ("[" in kv[0], kv[0].count(".")))
        for key, value in ordered:
            _apply_override(
                ctx, raw, _split_override_key(key), _normalise_override(key, value), "", key
            )
    return _build(ctx, raw)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config and the flags that override single settings (see ``config_from_args``)."""
    group = parser.add_argument_group(
        "configuration",
        "Settings come from --config FILE (all defaults without one); these flags override it.",
    )
    add = group.add_argument
    add("--config", metavar="FILE", type=Path, help="YAML configuration file")
    add("-a", "--listen", metavar="HOST:PORT", help="data-plane address (default 0.0.0.0:8080)")
    add(
        "--admin-listen",
        metavar="HOST:PORT|off",
        help="admin API address (default 127.0.0.1:9091); off disables it",
    )
    add(
        "-b",
        "--upstream",
        metavar="URL",
        action="append",
        help="upstream http(s):// or file:/// URL, tried in order; repeatable; "
        "replaces the file's upstreams",
    )
    add(
        "--upstream-credential-file",
        metavar="FILE",
        help="fill credential for every upstream given with --upstream (or in the file)",
    )
    add(
        "-s",
        "--cache-dir",
        metavar="PATH",
        action="append",
        help="cache directory, one per disk; repeatable; replaces the file's cache dirs",
    )
    add(
        "--cache-size",
        metavar="SIZE",
        help="size of each cache dir, e.g. 500GiB (the --cache-dir ones, else every one)",
    )
    add("--slice-size", metavar="SIZE", help="cache slice size (default 2MiB)")
    add("--signing-key-file", metavar="FILE", help="URL signing keys")
    add(
        "--public-prefix",
        metavar="PREFIX",
        action="append",
        help="path prefix served without a token; repeatable; replaces the file's",
    )
    add("--node-id", metavar="ID", help="this edge's id (default: host name)")
    add("--site", metavar="NAME", help="site this edge belongs to (default: default)")


# argparse dest -> override key; the order is irrelevant (load_config sorts).
_DEST_TO_KEY: Final[dict[str, str]] = {
    "node_id": "node_id",
    "site": "site",
    "listen": "listen",
    "admin_listen": "admin.listen",
    "upstream": "upstreams",
    "upstream_credential_file": "upstreams[*].credential_file",
    "cache_dir": "cache.dirs",
    "cache_size": "cache.dirs[*].size",
    "slice_size": "cache.slice_size",
    "signing_key_file": "signing.key_file",
    "public_prefix": "signing.public_prefixes",
}


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    """The configuration for parsed arguments: ``--config`` (if any) overridden by the flags."""
    overrides = {
        key: value
        for dest, key in _DEST_TO_KEY.items()
        if (value := getattr(args, dest, None)) is not None
    }
    config_path = getattr(args, "config", None)
    return load_config(Path(config_path) if config_path is not None else None, overrides)
