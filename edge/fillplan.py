"""The nightly fill's pure core: window maths, the manifest, work order, rate and progress.

No I/O, no event loop and no clock of its own (every function that needs the time takes it),
so each rule is tested with a table of cases; ``edge.fill`` is the I/O shell around it.

Fill window
-----------
``"HH:MM-HH:MM"`` in local wall-clock time of the edge's time zone, start inclusive, end
exclusive; it may wrap midnight (``"22:00-06:00"``); equal ends are an error (an always-on
fill would compete with peak traffic; a zero-length one never runs). Every edge of a site has
the same window, so they start together and peers have each other's first-choice objects early.

Daylight saving time: "inside" is decided by the wall clock. A start (or end) that falls in a
*skipped* hour (spring forward) happens when the clock jumps past it: 02:30 on a day that goes
from 02:00 to 03:00 starts the window at 03:00. In a *repeated* hour (fall back) both
occurrences count: a window ending at 01:30 closes at the first 01:30, reads as inside again
when the clock goes back to 01:00, and closes again at the second 01:30 (with nothing left to
fill, the runner then only re-reads the manifest). The runner always asks ``next_end`` of the
instant it is at, so it never overruns into the day.

Manifest
--------
The steering service's ``GET /fill/manifest/<edge>`` document (see ``parse_manifest``),
validated completely before anything is fetched or pinned: a malformed manifest is rejected and
the edge keeps the one it has. One object whose path (or key) this edge cannot fill, or one
peer whose URL it cannot use, is left out with a counted reason (``FillManifest.skipped``)
instead: one bad file name must not cost the whole night. An object path must pass the rules
of the token a peer is asked with (``edge.tokens``: no ``..`` anywhere, no ``%``, ``\\``,
NUL, empty or ``.`` segment, at most 1024 bytes of UTF-8), so ``movie..final.mp4`` is skipped
here rather than failing when its token is signed.

Capacity
--------
``within_capacity``: the objects this edge fills and pins, most popular first, while they fit
both the manifest's ``capacity`` (object bytes, steering's budget for this edge) and the
store's (bytes on disk, slice headers included); the rest are left out (``over_capacity``),
so pinned data can never crowd out the reactive cache.

Work order
----------
Objects this edge is the first holder of come first (players are sent here first), by score;
then objects held first by a peer, which that peer will have fetched from upstream by then, so
they are asked from it first. Complete objects are skipped.

Rate
----
``TokenBucket``: bytes/s with a burst, on an injected clock. ``take(n)`` books ``n`` bytes and
returns how long to wait; the bucket may go into debt so the caller sleeps after a chunk it has
already read. Over a fill of ``B`` bytes the time taken is at least ``(B - burst) / rate``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "MAX_OBJECTS",
    "SKIP_BAD_PATH",
    "SKIP_BAD_PEER",
    "SKIP_OVER_CAPACITY",
    "FillManifest",
    "FillObject",
    "FillProgress",
    "FillWindow",
    "ManifestError",
    "Peer",
    "Skipped",
    "TokenBucket",
    "WorkItem",
    "disk_bytes",
    "left_paths",
    "parse_manifest",
    "parse_window",
    "plan_work",
    "progress",
    "slice_count",
    "within_capacity",
]

MAX_OBJECTS: Final = 1_000_000  # objects in one manifest; beyond it the manifest is rejected
_HHMM: Final = re.compile(r"([0-9]{2}):([0-9]{2})")
_HEX16: Final = re.compile(r"[0-9a-f]{16}")
_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_DAY: Final = 86400
_MAX_PATH_BYTES: Final = 1024  # edge.tokens.MAX_PREFIX_BYTES: a peer's token signs the path
# Reasons an object (or a peer) of a manifest is left out; the runner counts them.
SKIP_BAD_PATH: Final = "bad_path"
SKIP_BAD_PEER: Final = "bad_peer"
SKIP_OVER_CAPACITY: Final = "over_capacity"
# Bytes of a slice file's header besides the path (edge.store.encode_header), rounded up.
_HEADER_BYTES: Final = 256


# --------------------------------------------------------------------------- window


@dataclass(frozen=True, slots=True)
class FillWindow:
    """A daily local-time window; ``start``/``end`` are minutes after midnight."""

    start: int
    end: int

    def __str__(self) -> str:
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )

    @property
    def wraps(self) -> bool:
        return self.end < self.start

    def inside(self, now: float, tz: tzinfo) -> bool:
        """Whether the local wall clock at ``now`` (epoch seconds) is within the window."""
        local = datetime.fromtimestamp(now, tz)
        s = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        lo, hi = self.start * 60, self.end * 60
        return lo <= s < hi if lo < hi else s >= lo or s < hi

    def next_start(self, now: float, tz: tzinfo) -> float:
        """The first instant after ``now`` at which the window opens."""
        return _next_wall(now, self.start, tz)

    def next_end(self, now: float, tz: tzinfo) -> float:
        """The first instant after ``now`` at which the window closes."""
        return _next_wall(now, self.end, tz)


def parse_window(text: object) -> FillWindow:
    """``"02:00-14:00"`` -> FillWindow; ValueError with the reason otherwise."""
    if not isinstance(text, str):
        raise ValueError(f'expected "HH:MM-HH:MM", got {type(text).__name__}')
    a, sep, b = text.strip().partition("-")
    if not sep:
        raise ValueError(f'expected "HH:MM-HH:MM" (local time), got "{text}"')
    minutes = []
    for part in (a.strip(), b.strip()):
        m = _HHMM.fullmatch(part)
        if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise ValueError(f'"{part}" is not a time of day HH:MM (00:00 to 23:59)')
        minutes.append(int(m.group(1)) * 60 + int(m.group(2)))
    if minutes[0] == minutes[1]:
        raise ValueError(f'start and end are equal in "{text}"; the window would be empty')
    return FillWindow(minutes[0], minutes[1])


def _wall_instants(day: date, minute: int, tz: tzinfo) -> list[float]:
    """The instants the local clock shows ``day`` at ``minute``: one, two in a repeated hour.

    In a skipped hour that time never shows: the instant the clock jumps past it instead.
    """
    naive = datetime(day.year, day.month, day.day, minute // 60, minute % 60)
    t0 = naive.replace(tzinfo=tz, fold=0).timestamp()
    t1 = naive.replace(tzinfo=tz, fold=1).timestamp()
    lo, hi = min(t0, t1), max(t0, t1)
    if datetime.fromtimestamp(lo, tz).replace(tzinfo=None) == naive:
        return [lo] if lo == hi else [lo, hi]
    # A gap: lo shows a time before ``naive``, hi one after. Transitions fall on whole
    # seconds, so bisect on seconds for the first instant showing ``naive`` or later.
    a, b = int(lo), int(hi)
    while b - a > 1:
        mid = (a + b) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= naive:
            b = mid
        else:
            a = mid
    return [float(b)]


def _next_wall(now: float, minute: int, tz: tzinfo) -> float:
    today = datetime.fromtimestamp(now, tz).date()
    for offset in range(-1, 3):
        for t in _wall_instants(today + timedelta(days=offset), minute, tz):
            if t > now:
                return t
    raise AssertionError("unreachable: a wall time recurs within two days")  # pragma: no cover


# --------------------------------------------------------------------------- manifest


class ManifestError(ValueError):
    """A manifest that breaks the contract; the message names the field."""


@dataclass(frozen=True, slots=True)
class Peer:
    edge: str
    url: str  # http(s)://host[:port][/prefix], no trailing "/"


@dataclass(frozen=True, slots=True)
class Skipped:
    """An object or peer of the manifest left out; ``what`` is its path (or peer name)."""

    what: str
    reason: str  # SKIP_BAD_PATH, SKIP_BAD_PEER
    detail: str


@dataclass(frozen=True, slots=True)
class FillObject:
    key: str
    path: str  # /v/<key>/<file>
    size: int
    xxh64: str  # 16 lower-case hex digits
    score: float
    holders: tuple[str, ...]  # edges of the site assigned this object, ring rank order


@dataclass(frozen=True, slots=True)
class FillManifest:
    edge: str
    site: str
    version: str
    generated_at: float
    capacity: int
    bytes: int
    peers: tuple[Peer, ...]
    objects: tuple[FillObject, ...]
    skipped: tuple[Skipped, ...] = ()  # left out of ``objects`` / ``peers``, with the reason

    def by_path(self) -> dict[str, FillObject]:
        return {o.path: o for o in self.objects}


def _field(doc: Mapping[str, object], name: str, where: str = "") -> object:
    if name not in doc:
        raise ManifestError(f"{where}{name}: missing")
    return doc[name]


def _str(value: object, where: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where}: expected a string, got {type(value).__name__}")
    if pattern is not None and not pattern.fullmatch(value):
        raise ManifestError(f"{where}: invalid value {value[:80]!r}")
    return value


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{where}: expected an integer >= 0, got {value!r:.40}")
    return value


def _num(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ManifestError(f"{where}: expected a finite number, got {value!r:.40}")
    return float(value)


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _object_path(path: str, key: str, where: str) -> str:
    # The path is requested from peers and upstreams and names cache entries: only clean,
    # normalised paths under the object's own title directory. A peer is asked with a token
    # signed for exactly this path, so whatever edge.tokens refuses as a prefix is refused
    # here too (a ".." anywhere, not only as a segment: "movie..final.mp4").
    if not path.startswith(f"/v/{key}/") or path.endswith("/"):
        raise ManifestError(f"{where}: {path[:80]!r} is not a file under /v/{key}/")
    segments = path.split("/")[1:]
    if any(s in ("", ".", "..") for s in segments):
        raise ManifestError(f"{where}: {path[:80]!r} has an empty, '.' or '..' segment")
    if ".." in path:
        raise ManifestError(f"{where}: {path[:80]!r} contains '..' (a token cannot scope it)")
    if any(c in path for c in "\\%?#\0") or any(c.isspace() or not c.isprintable() for c in path):
        raise ManifestError(f"{where}: {path[:80]!r} has a forbidden character")
    try:
        n = len(path.encode())
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: {path[:80]!r} is not encodable as UTF-8") from None
    if n > _MAX_PATH_BYTES:
        raise ManifestError(f"{where}: longer than {_MAX_PATH_BYTES} bytes of UTF-8")
    return path


_PEER_PATH: Final = re.compile(r"(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+)*")


def _peer_url(value: object, where: str) -> str:
    # http(s)://host[:port][/prefix]: steering accepts edge URLs with a path prefix (an edge
    # behind a proxy); the fill requests <url><path>. No query, fragment or userinfo: the
    # object path is appended to it.
    url = _str(value, where)
    bad = ManifestError(
        f"{where}: expected http(s)://host[:port][/prefix] without query, fragment or "
        f"user, got {url[:80]!r}"
    )
    try:
        u = urlsplit(url)
        port = u.port  # ValueError when not a number in 0-65535
    except ValueError:
        raise bad from None
    if (
        u.scheme not in ("http", "https")
        or not u.hostname
        or not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", u.netloc)
        or port == 0
        or "?" in url
        or "#" in url
    ):
        raise bad
    prefix = u.path.rstrip("/")
    if not _PEER_PATH.fullmatch(prefix) or any(s in (".", "..") for s in prefix.split("/")):
        raise bad
    return f"{u.scheme}://{u.netloc}{prefix}"


def parse_manifest(doc: object, *, max_objects: int = MAX_OBJECTS) -> FillManifest:
    """Validate steering's fill manifest (the JSON already decoded) into frozen dataclasses."""
    if not isinstance(doc, dict):
        raise ManifestError(f"expected a JSON object, got {type(doc).__name__}")
    edge = _str(_field(doc, "edge"), "edge", _NAME)
    site = _str(_field(doc, "site"), "site", _NAME)
    version = _str(_field(doc, "version"), "version", _HEX16)
    generated_at = _num(_field(doc, "generated_at"), "generated_at")
    capacity = _int(_field(doc, "capacity"), "capacity")
    total = _int(_field(doc, "bytes"), "bytes")
    peers: list[Peer] = []
    skipped: list[Skipped] = []
    seen_peers = {edge}
    for i, raw in enumerate(_list(doc.get("peers", []), "peers")):
        where = f"peers[{i}]"
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: expected an object")
        name = _str(_field(raw, "edge", where + "."), where + ".edge", _NAME)
        if name in seen_peers:
            raise ManifestError(f"{where}.edge: {name!r} listed twice (or is this edge)")
        seen_peers.add(name)
        try:
            url = _peer_url(_field(raw, "url", where + "."), where + ".url")
        except ManifestError as exc:
            # Only this peer is unusable: its objects come from the others or upstream.
            skipped.append(Skipped(name, SKIP_BAD_PEER, str(exc)))
            continue
        peers.append(Peer(name, url))
    raw_objects = _list(_field(doc, "objects"), "objects")
    if len(raw_objects) > max_objects:
        raise ManifestError(f"objects: {len(raw_objects)} objects, more than {max_objects}")
    objects: list[FillObject] = []
    paths: set[str] = set()
    for i, raw in enumerate(raw_objects):
        where = f"objects[{i}]"
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: expected an object")
        path = _str(_field(raw, "path", where + "."), where + ".path")
        try:
            key = _str(_field(raw, "key", where + "."), where + ".key", _KEY)
            _object_path(path, key, where)
        except ManifestError as exc:
            # A file this edge cannot fill (or ask a peer for): leave it out, fill the rest.
            skipped.append(Skipped(path[:1024], SKIP_BAD_PATH, str(exc)))
            continue
        if path in paths:
            raise ManifestError(f"{where}.path: duplicate {path[:80]!r}")
        paths.add(path)
        holders = tuple(
            _str(h, f"{where}.holders[{j}]", _NAME)
            for j, h in enumerate(_list(raw.get("holders", []), where + ".holders"))
        )
        if len(set(holders)) != len(holders):
            raise ManifestError(f"{where}.holders: an edge listed twice")
        objects.append(
            FillObject(
                key=key,
                path=path,
                size=_int(_field(raw, "size", where + "."), where + ".size"),
                xxh64=_str(_field(raw, "xxh64", where + "."), where + ".xxh64", _HEX16),
                score=_num(_field(raw, "score", where + "."), where + ".score"),
                holders=holders,
            )
        )
    return FillManifest(
        edge,
        site,
        version,
        generated_at,
        capacity,
        total,
        tuple(peers),
        tuple(objects),
        tuple(skipped),
    )


# --------------------------------------------------------------------------- work order


@dataclass(frozen=True, slots=True)
class WorkItem:
    obj: FillObject
    peers: tuple[str, ...]  # peer edges to ask, in order, before parents and the origin


def plan_work(
    manifest: FillManifest,
    me: str,
    complete: Callable[[FillObject], bool],
    objects: Iterable[FillObject] | None = None,
) -> list[WorkItem]:
    """What is left to fetch, in order; ``complete(obj)`` says an object needs nothing.

    ``objects``: the manifest's objects this edge fills (``within_capacity``); default all.
    """
    site_peers = [p.edge for p in manifest.peers]
    first: list[WorkItem] = []
    later: list[WorkItem] = []
    for obj in manifest.objects if objects is None else objects:
        if complete(obj):
            continue
        holders = [h for h in obj.holders if h != me and h in site_peers]
        others = [p for p in site_peers if p not in holders]
        item = WorkItem(obj, tuple(holders + others))
        (first if obj.holders[:1] == (me,) else later).append(item)
    for items in (first, later):
        items.sort(key=lambda w: (-w.obj.score, w.obj.path))
    return first + later


def slice_count(size: int, slice_size: int) -> int:
    """Slices an object of ``size`` bytes occupies (an empty object is one empty slice)."""
    return max(1, -(-size // slice_size))


def disk_bytes(obj: FillObject, slice_size: int) -> int:
    """About what ``obj`` takes in the store: its bytes plus a header per slice."""
    return obj.size + slice_count(obj.size, slice_size) * (_HEADER_BYTES + len(obj.path))


def within_capacity(
    objects: Sequence[FillObject], capacity: int, store_capacity: int, slice_size: int
) -> tuple[list[FillObject], list[FillObject]]:
    """``(kept, over)``: the objects to fill and pin, and those past either capacity.

    Most popular first (score, then path), each object kept while its bytes fit in what is
    left of ``capacity`` (object bytes, the manifest's) and of ``store_capacity`` (bytes on
    disk); one that does not fit is left out and smaller ones after it may still fit. Both
    lists keep the manifest's order.
    """
    left, disk_left = capacity, store_capacity
    out: set[int] = set()
    for i in sorted(range(len(objects)), key=lambda i: (-objects[i].score, objects[i].path)):
        o = objects[i]
        d = disk_bytes(o, slice_size)
        if o.size <= left and d <= disk_left:
            left -= o.size
            disk_left -= d
        else:
            out.add(i)
    if not out:
        return list(objects), []
    kept = [o for i, o in enumerate(objects) if i not in out]
    return kept, [o for i, o in enumerate(objects) if i in out]


# --------------------------------------------------------------------------- rate


class TokenBucket:
    """Bytes per second with a burst; ``rate=None`` never waits."""

    def __init__(self, rate: float | None, burst: int, clock: Callable[[], float]) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 (or None for unlimited)")
        if burst < 0:
            raise ValueError("burst must be >= 0")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, n: int) -> float:
        """Book ``n`` bytes; the seconds to wait before going on (0 when within the rate)."""
        if self.rate is None:
            return 0.0
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True, slots=True)
class FillProgress:
    objects_total: int
    objects_done: int
    bytes_total: int
    bytes_done: int

    @property
    def objects_left(self) -> int:
        return self.objects_total - self.objects_done

    @property
    def bytes_left(self) -> int:
        return self.bytes_total - self.bytes_done


def progress(objects: Iterable[FillObject], done: Collection[str]) -> FillProgress:
    """Totals over the manifest's objects; ``done`` holds the paths complete on this edge."""
    ot = od = bt = bd = 0
    for o in objects:
        ot += 1
        bt += o.size
        if o.path in done:
            od += 1
            bd += o.size
    return FillProgress(ot, od, bt, bd)


def left_paths(old: Sequence[FillObject], new: Sequence[FillObject]) -> list[FillObject]:
    """Objects of the old manifest that the new one no longer lists (to unpin)."""
    keep = {o.path for o in new}
    return [o for o in old if o.path not in keep]
