"""Health state of an edge: ok, degraded or draining, with reasons.

A pure function of facts and the time, so tests control the clock. Steering
and load balancers read it from /healthz: "draining" answers 503 so new players
go elsewhere; "degraded" still answers 200 (the edge serves, maybe by passing
through to the upstream) and steering ranks it lower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How long a problem keeps the edge degraded after it was last seen.
RECENT = 60.0


@dataclass(frozen=True, slots=True)
class HealthFacts:
    draining: bool = False
    failed_disks: tuple[str, ...] = ()
    last_disk_error_at: float = 0.0
    last_disk_error: str | None = None
    last_not_cached_at: float = 0.0  # a fill could not be cached (disk full of pinned data, ...)
    upstream_last_error_at: float = 0.0
    upstream_last_success_at: float = 0.0
    upstream_last_error: str | None = None
    cache_used: int = 0
    cache_capacity: int = 0


@dataclass(frozen=True, slots=True)
class Health:
    state: str  # "ok" | "degraded" | "draining"
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def http_status(self) -> int:
        return 503 if self.state == "draining" else 200


def evaluate(facts: HealthFacts, now: float) -> Health:
    reasons: list[str] = []
    if facts.failed_disks:
        reasons.append("disk_failed: " + ", ".join(facts.failed_disks))
    if facts.last_disk_error_at and now - facts.last_disk_error_at < RECENT:
        reasons.append(f"disk_errors: {facts.last_disk_error or 'I/O error'}")
    if facts.last_not_cached_at and now - facts.last_not_cached_at < RECENT:
        reasons.append("cache_full: recent fills were passed through without caching")
    if (
        facts.upstream_last_error_at
        and now - facts.upstream_last_error_at < RECENT
        and facts.upstream_last_error_at >= facts.upstream_last_success_at
    ):
        reasons.append(f"upstream_unreachable: {facts.upstream_last_error or 'error'}")
    if facts.draining:
        return Health("draining", ("draining", *reasons))
    return Health("degraded" if reasons else "ok", tuple(reasons))
