"""The fill shell's state file: what ``fillfeed.FillService`` keeps across restarts.

``fill.state_file`` holds the feeds' digests, the inputs of the manifests in force, the
manifests themselves and the capacities edges reported, so a restarted steering service serves
the same manifests at once and its next plan is still sticky. It is written whole (temporary
file, fsync, rename, fsync of the directory) and read once at start. A file that cannot be
used (unreadable, not JSON, another format, a wrong shape, an object the feed's own checks
refuse) is logged and ignored: the next feed read rebuilds everything, only less sticky.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fill import Manifest, Placed, PopularityFeed, manifest_version, parse_feed

__all__ = [
    "STATE_FORMAT",
    "Served",
    "SiteState",
    "State",
    "StateError",
    "object_doc",
    "parse_state",
    "read_state",
    "state_doc",
    "write_atomically",
]

log = logging.getLogger("steering.fill")

STATE_FORMAT = 1


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
    skipped: tuple[int, str] = (0, "")  # objects the last good read skipped, and the first


@dataclass(slots=True)
class State:
    """What a state file gives back."""

    sites: dict[str, SiteState] = field(default_factory=dict)
    served: dict[str, Served] = field(default_factory=dict)
    capacities: dict[str, int] = field(default_factory=dict)


class StateError(ValueError):
    """A state file of the wrong shape; says where."""


def object_doc(p: Placed) -> dict[str, Any]:
    o = p.obj
    return {
        "key": o.key,
        "path": o.path,
        "size": o.size,
        "xxh64": o.xxh64,
        "score": o.score,
        "holders": list(p.holders),
    }


def state_doc(
    sites: dict[str, SiteState], served: dict[str, Served], capacities: dict[str, int]
) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        # Heartbeat capacities too: a restarted service must not plan its first feed read
        # as if the edges that have not reported yet had no disk (a flap of manifests).
        "capacities": dict(sorted(capacities.items())),
        "sites": {
            site: {"feed_digest": st.feed_digest, "inputs": st.inputs, "read_at": st.read_at}
            for site, st in sorted(sites.items())
        },
        "manifests": {
            edge_id: {
                "site": srv.site,
                "generated_at": srv.generated_at,
                "capacity": srv.manifest.capacity,
                "objects": [object_doc(p) for p in srv.manifest.objects],
            }
            for edge_id, srv in sorted(served.items())
        },
    }


def _mapping(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise StateError(f"{where}: expected an object, got {type(v).__name__}")
    return v


def _int(v: object, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**63:
        raise StateError(f"{where}: expected a whole number >= 0")
    return v


def _time(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise StateError(f"{where}: expected a time in seconds")
    return float(v)


def parse_state(doc: object) -> State:
    """The state of a decoded state file, or ``StateError``/``FeedError`` (both ValueErrors)
    naming the first thing of the wrong shape: every level is checked before it is used, so
    a hand-edited or foreign file cannot stop the service from starting."""
    d = _mapping(doc, "state")
    if d.get("format") != STATE_FORMAT:
        raise StateError(f"not a fill state file of format {STATE_FORMAT}")
    out = State()
    for edge_id, n in _mapping(d.get("capacities", {}), "capacities").items():
        if _int(n, f"capacities.{edge_id}") > 0:
            out.capacities[edge_id] = n
    for site, raw in _mapping(d.get("sites"), "sites").items():
        s = _mapping(raw, f"sites.{site}")
        digest, inputs, read_at = s.get("feed_digest"), s.get("inputs"), s.get("read_at")
        if not all(v is None or isinstance(v, str) for v in (digest, inputs)):
            raise StateError(f"sites.{site}: digests must be strings")
        out.sites[site] = SiteState(
            feed_digest=digest,
            inputs=inputs,
            read_at=None if read_at is None else _time(read_at, f"sites.{site}.read_at"),
        )
    for edge_id, raw in _mapping(d.get("manifests"), "manifests").items():
        where = f"manifests.{edge_id}"
        m = _mapping(raw, where)
        site_name = m.get("site")
        if not isinstance(site_name, str):
            raise StateError(f"{where}.site: expected a site name")
        raw_objects = m.get("objects")
        if not isinstance(raw_objects, list):
            raise StateError(f"{where}.objects: expected a list")
        holders = []
        for i, o in enumerate(raw_objects):
            h = _mapping(o, f"{where}.objects[{i}]").get("holders")
            if not isinstance(h, list) or not all(isinstance(e, str) for e in h):
                raise StateError(f"{where}.objects[{i}].holders: expected a list of edge ids")
            holders.append(tuple(h))
        # The objects pass the feed's own checks, strictly (steering wrote this file: one bad
        # object means it is not to be trusted), so a hand-edited file cannot smuggle a path.
        feed = parse_feed(
            {
                "region": site_name,
                "objects": [{k: v for k, v in o.items() if k != "holders"} for o in raw_objects],
            },
            site_name,
            strict=True,
        )
        placed = [Placed(o, h) for o, h in zip(feed.objects, holders, strict=True)]
        capacity = _int(m.get("capacity"), f"{where}.capacity")
        generated_at = _time(m.get("generated_at"), f"{where}.generated_at")
        out.served[edge_id] = Served(site_name, _manifest(edge_id, capacity, placed), generated_at)
    return out


def _manifest(edge_id: str, capacity: int, placed: list[Placed]) -> Manifest:
    return Manifest(
        edge=edge_id,
        capacity=capacity,
        objects=tuple(placed),
        bytes=sum(p.obj.size for p in placed),
        version=manifest_version((p.obj.path, p.obj.xxh64) for p in placed),
    )


def read_state(path: Path) -> State | None:
    """The state kept in ``path``; None (logged) when it cannot be used."""
    try:
        doc = json.loads(path.read_bytes(), parse_constant=_no_constant)
        return parse_state(doc)
    except (OSError, ValueError, RecursionError) as exc:  # FeedError, StateError, JSON
        log.error("event=fill_state_unreadable path=%s error=%r", path, str(exc)[:300])
        return None


def write_atomically(path: Path, data: bytes) -> None:
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
