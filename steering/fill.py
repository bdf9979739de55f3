"""Fill planning: from a site's popularity feed to one fill manifest per edge. Pure.

Every night the edges download what will be popular tomorrow (Open Connect's "fill"). The
control plane ranks files by popularity per region (the feed); this module decides which edge
of a site holds which files. No I/O, no clock, no event loop: ``fillfeed.py`` reads the feed,
keeps the manifests and serves them.

The rules, and why:

* **Placement is routing.** Objects are placed by the same weighted rendezvous ``Ring`` that
  steers players (``Ring(Member(id, weight))`` ranked by the object's *media key*), so a title's
  files sit on the edges its players are sent to, in the same order. The ring is built over the
  site's *configured* edges, not the healthy ones: a dead edge keeps its disk, and planning over
  health would reshuffle every manifest on every blip.
* **Copies by popularity.** An object gets ``1 + k`` copies where ``k`` counts the thresholds
  ``T_1, T_2, ...`` its score reaches (``copies``), capped by ``max_copies`` and the site's size.
  ``T_k`` is the larger of the score at the top ``0.1**k`` of the feed (top 10 %: a second copy,
  top 1 %: a third...) and ``2**k`` times the median score. The quantile bounds the extra bytes
  (about 11 % more objects at most); the median factor keeps a flat feed, where nothing is hot,
  from being copied everywhere. Extra copies go to the key's next edges in rank order, which are
  exactly where bounded loads spill a hot title's players, so the spill is a hit, not a miss.
* **Capacity.** Each edge may fill ``share`` of its capacity; the rest stays free for reactive
  LRU fills. Objects are taken in descending priority (score, times ``stickiness`` when the site
  held the object yesterday) and each copy goes to the next edge in the key's rank order that
  still has room: a full edge passes the copy on (spill, as bounded loads do for players). An
  object that fits nowhere is left out. An edge of unknown capacity gets nothing (it stays in
  the ring, so its objects spill to the next edges as if it were full).
* **Stable from day to day.** The ring makes placement stable by construction (an edge that
  leaves moves only its own objects). ``stickiness`` keeps an object held yesterday ahead of a
  newcomer unless the newcomer's score beats it by that factor, so small score changes cause no
  churn. ``SitePlan.churn`` reports what each edge must download and may drop.
* **Version.** A manifest's version is the xxh64 (seed 0, 16 hex digits) of its lines
  ``"<path> <xxh64>\\n"`` sorted by path: equal content, equal version, in every process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import xxhash

from .ring import Member, Ring

__all__ = [
    "PROGRESS_STATES",
    "Churn",
    "FeedError",
    "FeedObject",
    "FillEdge",
    "FillProgress",
    "Manifest",
    "Placed",
    "PopularityFeed",
    "SitePlan",
    "copies",
    "copy_thresholds",
    "manifest_version",
    "parse_feed",
    "parse_progress",
    "plan_site",
]

HOT_DIVISOR = 10  # the k-th extra copy: objects in the top 1 / HOT_DIVISOR**k of the feed
MEDIAN_FACTOR = 2.0  # ... and at least MEDIAN_FACTOR**k times the median score
# The most objects a feed may hold (and fill.feed_limit's maximum). Memory: a parsed object
# keeps ~340 bytes (FeedObject, its strings, its float), so 100k objects (the default limit,
# ~28 two-hour titles at 4 s segments) are ~34 MB per site, 1M are ~340 MB per site; while
# a feed is parsed the JSON body (~140 bytes an object) and its decoded dicts (~450 bytes an
# object) come on top, one site at a time. Beyond 1M a site's steering memory, and the
# seconds its plan takes in the event loop, stop being reasonable.
MAX_FEED_OBJECTS = 1_000_000
MAX_SIZE = 2**50  # 1 PiB: a file size beyond it is a corrupt feed, not a film
# Bad objects skipped before a feed is refused whole: a few odd files are skipped, but a feed
# in which more than this share (and more than MIN_SKIPPED_REFUSED objects) breaks the contract
# is a version skew or a broken control plane, and must not replace a good feed (it would
# empty the manifests).
MAX_SKIPPED_SHARE = 0.1
MIN_SKIPPED_REFUSED = 10

# The control plane's media keys (control/manifest.py) and the origin's file names. The file
# rule is the control plane's too (control/catalog.py safe_relative_path): a segment does not
# start with '.', is at most 255 characters, and no name holds '..' (the edge's tokens refuse
# it anywhere in a path).
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,254}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
PROGRESS_STATES = frozenset({"idle", "waiting", "filling", "done", "error"})


class FeedError(ValueError):
    """A popularity feed or heartbeat fill report that breaks the contract; says where."""


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedObject:
    """One file of the popularity feed."""

    key: str  # the title's media key: the placement key
    path: str  # /v/<key>/<file>
    size: int  # bytes
    xxh64: str  # 16 hex digits of the whole file
    score: float  # > 0: bytes streamed / size, decayed


@dataclass(frozen=True, slots=True)
class PopularityFeed:
    region: str
    fallback: bool  # the region had no plays: these are the all-regions scores
    computed_at: float | None
    half_life_days: float
    objects: tuple[FeedObject, ...]
    digest: str  # xxh64 of the objects' canonical lines: equal digests, equal feeds
    skipped: int = 0  # objects that broke the contract, left out
    skip_detail: str = ""  # the first of them: where and what


@dataclass(frozen=True, slots=True)
class FillEdge:
    """One configured edge of a site, as the planner sees it."""

    id: str
    weight: float
    capacity: int | None  # bytes of cache; None until a heartbeat or the config says


def _fail(where: str, msg: str) -> FeedError:
    return FeedError(f"{where}: {msg}")


def _show(v: object, n: int = 80) -> str:
    """``repr(v)`` cut to ``n`` characters: errors quote what they got, never megabytes of it."""
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def _number(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


def _valid_path(path: str, key: str) -> bool:
    prefix = f"/v/{key}/"
    if not path.startswith(prefix) or len(path) > 1024 or ".." in path:
        return False
    return all(_SEGMENT.match(s) for s in path[len(prefix) :].split("/"))


def _feed_object(o: object, where: str) -> FeedObject:
    """One object of the feed, or ``FeedError`` naming what is wrong with it."""
    if not isinstance(o, dict):
        raise _fail(where, "expected an object")
    key, path, size, xx, score = (o.get(k) for k in ("key", "path", "size", "xxh64", "score"))
    if not isinstance(key, str) or not _KEY.match(key):
        raise _fail(f"{where}.key", f"not a media key: {_show(key, 140)}")
    if not isinstance(path, str) or not _valid_path(path, key):
        raise _fail(f"{where}.path", f"expected a file under /v/{key}/, got {_show(path, 300)}")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise _fail(f"{where}.size", f"expected a byte count >= 0, got {_show(size)}")
    if not isinstance(xx, str) or not _HEX16.match(xx):
        raise _fail(f"{where}.xxh64", f"expected 16 lowercase hex digits, got {_show(xx)}")
    if not _number(score) or score <= 0:  # type: ignore[operator]
        raise _fail(f"{where}.score", f"expected a number > 0, got {_show(score)}")
    return FeedObject(key, path, size, xx, float(score))  # type: ignore[arg-type]


def parse_feed(
    doc: object, region: str, *, limit: int = MAX_FEED_OBJECTS, strict: bool = False
) -> PopularityFeed:
    """Validate the control plane's ``/v1/fill/popularity`` answer for ``region``.

    A feed broken as a whole (not an object, another region, wrong top-level types, more than
    ``limit`` objects) raises ``FeedError`` naming the first thing wrong: a refused feed never
    replaces a good one. An object that breaks the contract (a file name steering or the edge
    would refuse, a wrong type, a path listed twice) is skipped and counted in ``skipped``,
    so one odd file cannot freeze every manifest of the site on its last feed; unless more
    than ``MAX_SKIPPED_SHARE`` of them are bad, which is refused whole. ``strict`` (the
    state file, which steering itself wrote) refuses the first bad object instead."""
    if not isinstance(doc, dict):
        raise _fail("feed", "expected a JSON object")
    if doc.get("region") != region:
        raise _fail("region", f"expected {region!r}, got {_show(doc.get('region'))}")
    fallback = doc.get("fallback", False)
    if not isinstance(fallback, bool):
        raise _fail("fallback", f"expected true or false, got {fallback!r}")
    computed_at = doc.get("computed_at")
    if computed_at is not None and not _number(computed_at):
        raise _fail("computed_at", f"expected a number or null, got {computed_at!r}")
    half_life = doc.get("half_life_days", 1.0)
    if not _number(half_life) or half_life <= 0:
        raise _fail("half_life_days", f"expected a positive number, got {half_life!r}")
    raw = doc.get("objects")
    if not isinstance(raw, list):
        raise _fail("objects", "expected a list")
    if len(raw) > limit:
        raise _fail("objects", f"{len(raw)} objects, more than the {limit} asked for")
    objects: list[FeedObject] = []
    seen: set[str] = set()
    skipped, skip_detail = 0, ""
    digest = xxhash.xxh64()
    for i, o in enumerate(raw):
        try:
            obj = _feed_object(o, f"objects[{i}]")
            if obj.path in seen:
                raise _fail(f"objects[{i}].path", f"duplicate path {obj.path!r}")
        except FeedError as exc:
            if strict:
                raise
            skipped += 1
            skip_detail = skip_detail or str(exc)
            continue
        seen.add(obj.path)
        objects.append(obj)
        digest.update(f"{obj.key} {obj.path} {obj.size} {obj.xxh64} {obj.score!r}\n".encode())
    if skipped and (
        not objects or (skipped > MIN_SKIPPED_REFUSED and skipped > MAX_SKIPPED_SHARE * len(raw))
    ):
        raise _fail(
            "objects",
            f"{skipped} of {len(raw)} objects break the contract (first: {skip_detail})",
        )
    return PopularityFeed(
        region=region,
        fallback=fallback,
        computed_at=None if computed_at is None else float(computed_at),
        half_life_days=float(half_life),
        objects=tuple(objects),
        digest=digest.hexdigest(),
        skipped=skipped,
        skip_detail=skip_detail,
    )


@dataclass(frozen=True, slots=True)
class FillProgress:
    """The optional ``fill`` object of an edge's heartbeat."""

    state: str
    manifest: str | None
    objects_total: int
    objects_done: int
    bytes_total: int
    bytes_done: int
    window: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "manifest": self.manifest,
            "objects_total": self.objects_total,
            "objects_done": self.objects_done,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "window": self.window,
        }


def parse_progress(doc: object) -> FillProgress:
    """Validate a heartbeat's ``fill`` object (types and ranges; ``FeedError`` if wrong)."""
    if not isinstance(doc, dict):
        raise _fail("fill", "expected an object")
    state = doc.get("state")
    if state not in PROGRESS_STATES:
        raise _fail("fill.state", f"expected one of {sorted(PROGRESS_STATES)}, got {state!r}")
    manifest = doc.get("manifest")
    if manifest is not None and (not isinstance(manifest, str) or not _ID.match(manifest)):
        raise _fail("fill.manifest", f"expected a manifest version or null, got {manifest!r}")
    counts: dict[str, int] = {}
    for name in ("objects_total", "objects_done", "bytes_total", "bytes_done"):
        v = doc.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**63:
            raise _fail(f"fill.{name}", f"expected an integer >= 0, got {v!r}")
        counts[name] = v
    window = doc.get("window")
    if window is not None and (not isinstance(window, str) or not 0 < len(window) <= 32):
        raise _fail("fill.window", f"expected a window like '02:00-14:00', got {window!r}")
    return FillProgress(
        state=str(state),
        manifest=manifest,
        objects_total=counts["objects_total"],
        objects_done=counts["objects_done"],
        bytes_total=counts["bytes_total"],
        bytes_done=counts["bytes_done"],
        window=window,
    )


# -- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    obj: FeedObject
    holders: tuple[str, ...]  # every edge of the site given this object, in the key's rank order


@dataclass(frozen=True, slots=True)
class Manifest:
    edge: str
    capacity: int  # bytes the edge may fill: share x its capacity
    objects: tuple[Placed, ...]  # score descending, then path
    bytes: int
    version: str


@dataclass(frozen=True, slots=True)
class Churn:
    added_objects: int = 0
    added_bytes: int = 0
    removed_objects: int = 0
    removed_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.added_bytes + self.removed_bytes


@dataclass(frozen=True, slots=True)
class SitePlan:
    manifests: Mapping[str, Manifest]  # edges of known capacity only
    churn: Mapping[str, Churn]  # against the previous manifests, per planned edge
    left_out: int  # feed objects placed on no edge


def manifest_version(items: Iterable[tuple[str, str]]) -> str:
    """xxh64 over the sorted ``"<path> <xxh64>\\n"`` lines: 16 hex digits."""
    h = xxhash.xxh64()
    for path, xx in sorted(items):
        h.update(f"{path} {xx}\n".encode())
    return h.hexdigest()


def copy_thresholds(scores: Sequence[float], extra: int) -> list[float]:
    """``T_1..T_extra``: the score an object needs for its k-th extra copy (module docstring)."""
    if not scores or extra <= 0:
        return []
    desc = sorted(scores, reverse=True)
    n = len(desc)
    mid = n // 2
    median = desc[mid] if n % 2 else (desc[mid - 1] + desc[mid]) / 2
    out = []
    for k in range(1, extra + 1):
        # Integer arithmetic: n * 0.1**2 is 1.0000000000000002 in floats, which would
        # round the top 1 % of 100 objects up to 2 objects.
        quantile = desc[-(-n // HOT_DIVISOR**k) - 1]
        out.append(max(quantile, MEDIAN_FACTOR**k * median))
    return out


def copies(score: float, thresholds: Sequence[float]) -> int:
    """1 + the number of thresholds ``score`` reaches."""
    return 1 + sum(1 for t in thresholds if score >= t)


def plan_site(
    edges: Sequence[FillEdge],
    objects: Sequence[FeedObject],
    previous: Mapping[str, Mapping[str, int]],
    *,
    share: float,
    max_copies: int,
    stickiness: float,
) -> SitePlan:
    """Each edge's manifest for one site. ``previous``: edge -> {path: size} of the manifests
    in force (empty at first), for stickiness and churn. Deterministic: the same inputs give
    the same plan, whatever their order."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    if max_copies < 1:
        raise ValueError(f"max_copies must be >= 1, got {max_copies!r}")
    if not stickiness >= 1:
        raise ValueError(f"stickiness must be >= 1, got {stickiness!r}")
    if not edges:
        return SitePlan({}, {}, len(objects))
    ring = Ring(Member(e.id, e.weight) for e in edges)
    room: dict[str, int] = {
        e.id: math.floor(share * e.capacity) for e in edges if e.capacity is not None
    }
    limits = dict(room)
    held = {p for paths in previous.values() for p in paths}
    thresholds = copy_thresholds([o.score for o in objects], min(max_copies, len(edges)) - 1)

    def priority(o: FeedObject) -> tuple[float, str]:
        return (-(o.score * (stickiness if o.path in held else 1.0)), o.path)

    ranks: dict[str, list[str]] = {}
    given: dict[str, list[Placed]] = {e: [] for e in room}
    left_out = 0
    seen: set[str] = set()
    for o in sorted(objects, key=priority):
        if o.path in seen:
            raise ValueError(f"duplicate path {o.path!r}")
        seen.add(o.path)
        order = ranks.get(o.key)
        if order is None:
            order = ranks[o.key] = ring.rank(o.key)
        want = copies(o.score, thresholds)
        holders: list[str] = []
        for e in order:
            left = room.get(e)
            if left is None or left < o.size:
                continue  # unknown capacity or full: the copy spills to the next edge
            room[e] = left - o.size
            holders.append(e)
            if len(holders) == want:
                break
        if not holders:
            left_out += 1
            continue
        placed = Placed(o, tuple(holders))
        for e in holders:
            given[e].append(placed)

    manifests: dict[str, Manifest] = {}
    churn: dict[str, Churn] = {}
    for e, items in given.items():
        items.sort(key=lambda p: (-p.obj.score, p.obj.path))
        paths = {p.obj.path: p.obj.size for p in items}
        before = previous.get(e, {})
        added = [s for p, s in paths.items() if p not in before]
        removed = [s for p, s in before.items() if p not in paths]
        manifests[e] = Manifest(
            edge=e,
            capacity=limits[e],
            objects=tuple(items),
            bytes=sum(paths.values()),
            version=manifest_version((p.obj.path, p.obj.xxh64) for p in items),
        )
        churn[e] = Churn(len(added), sum(added), len(removed), sum(removed))
    return SitePlan(manifests, churn, left_out)
