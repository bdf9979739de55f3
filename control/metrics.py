"""The control plane's Prometheus metrics. Counters are an API: tests and load tests read them.

Every counter is declared in `COUNTERS` with its help text and labels; `Metrics.inc` refuses an
undeclared name or wrong labels, so the exposition and this table cannot drift apart.

==========================================  ==============================================
``control_requests_total{route,method,status}``  HTTP requests by route template
``control_request_seconds{route}``               latency histogram per route template
``control_signins_total{outcome}``               ok | bad_credentials | rate_limited
``control_signups_total{outcome}``               ok | exists | rate_limited | invalid
``control_sessions_revoked_total{why}``          signout | signout_all | password_change
                                                 | session_cap
``control_rate_limited_total{limit}``            signin_per_address | signin_per_account
                                                 | signup_per_address | signup_per_account
``control_playback_starts_total{outcome}``       ok | steering_fallback | no_subscription
                                                 | not_found | maturity | bad_request
                                                 | not_playable | stream_limit | unavailable
                                                 (exclusive: a start that fell back to
                                                 fallback_url counts only steering_fallback)
``control_playback_events_total{kind}``          progress | stop | error | subscription_ended
``control_leases_expired_total``                 stream leases that ended without a stop
``control_steering_requests_total{outcome}``     ok | error | timeout
``control_catalog_changes_total{source,op}``     admin | origin x create | update | delete
``control_feed_polls_total{outcome}``            origin catalog feed polls: ok | error
``control_feed_entries_total``                   feed entries applied
``control_feed_skipped_total``                   feed entries skipped as invalid (logged)
``control_search_requests_total{kind}``          search | autocomplete
``control_search_cache_total{result}``           hit | miss (answers cached until the catalog
                                                 or the popularity changes)
``control_recompute_runs_total{outcome}``        recommendation batch runs: ok | error
``control_recompute_profiles_total``             profiles whose rows the batch stored
``control_invoices_total{event}``                created | paid | void
``control_fill_feed_requests_total{outcome}``    GET /v1/fill/popularity: ok | fallback (the
                                                 region had no plays: all-regions scores)
                                                 | unauthorized | bad_request | disabled
``control_fill_feed_computations_total{outcome}`` popularity computations (plays read, views
                                                 decayed): ok | error; at most one per
                                                 fill.cache_ttl while answers are asked for
``control_media_files_fetches_total{outcome}``   reads of an origin title's manifest.json for
                                                 its files: ok | error (network, status;
                                                 retried on the next poll) | invalid (a
                                                 document refused; retried too)
``control_media_files_dropped_total``            files of stored manifests left out: their
                                                 path breaks the fleet's file name rule
                                                 (control/catalog.py safe_relative_path)
``control_db_errors_total{kind}``                integrity | unavailable | other
==========================================  ==============================================

Gauges: ``control_catalog_titles`` (titles in the search index), ``control_catalog_version``,
``control_recompute_last_success_seconds`` (unix time of the last successful batch, wherever it
ran; 0 before the first run), ``control_fill_feed_objects`` (objects in the last popularity
feed answered), ``control_fill_feed_compute_seconds`` (how long the last popularity computation
took), ``control_media_files_wanted`` (media keys whose manifest.json is still to be read, after
the last round of reads).

A counter without labels is exposed as 0 before its first count; a labelled one has a series
for each label set counted so far.

Several workers (``workers: N``): each process counts its own requests, and every second
writes a snapshot of its series to a directory the parent made; ``/metrics``, whichever worker
answers it, sums every worker's latest snapshot (gauges: the largest), so a scrape sees the
whole service and counters never go backwards between scrapes that land on different workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from edge.metrics import Histogram

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "control_requests": ("HTTP requests by route template", ("route", "method", "status")),
    "control_signins": ("Sign-in attempts by outcome", ("outcome",)),
    "control_signups": ("Sign-up attempts by outcome", ("outcome",)),
    "control_sessions_revoked": ("Sessions revoked, by why", ("why",)),
    "control_rate_limited": ("Requests refused by a rate limit", ("limit",)),
    "control_playback_starts": ("Playback starts by outcome", ("outcome",)),
    "control_playback_events": ("Playback events by kind", ("kind",)),
    "control_leases_expired": ("Stream leases that expired without a stop", ()),
    "control_steering_requests": ("Requests to the steering service", ("outcome",)),
    "control_catalog_changes": ("Catalog changes", ("source", "op")),
    "control_feed_polls": ("Origin catalog feed polls", ("outcome",)),
    "control_feed_entries": ("Origin catalog feed entries applied", ()),
    "control_feed_skipped": ("Origin catalog feed entries skipped as invalid", ()),
    "control_search_requests": ("Search requests", ("kind",)),
    "control_search_cache": ("Search answers from the answer cache or computed", ("result",)),
    "control_recompute_runs": ("Recommendation batch runs", ("outcome",)),
    "control_recompute_profiles": ("Profiles whose home rows the batch stored", ()),
    "control_invoices": ("Invoice events", ("event",)),
    "control_fill_feed_requests": ("Fill popularity feed requests by outcome", ("outcome",)),
    "control_fill_feed_computations": ("Fill popularity computations", ("outcome",)),
    "control_media_files_fetches": ("Reads of origin manifests for title files", ("outcome",)),
    "control_media_files_dropped": ("Title files left out for a path breaking the rule", ()),
    "control_db_errors": ("Database errors", ("kind",)),
}

# Labelled counters whose every label value is known and watched by an alert.
PRESET: dict[str, tuple[str, ...]] = {"control_db_errors": ("integrity", "unavailable", "other")}

GAUGES: dict[str, str] = {
    "control_catalog_titles": "Published titles in this process's search index",
    "control_catalog_version": "Catalog version this process's index reflects",
    "control_recompute_last_success_seconds": "Unix time of the last successful batch run",
    "control_fill_feed_objects": "Objects in the last fill popularity feed answered",
    "control_fill_feed_compute_seconds": "Seconds the last fill popularity computation took",
    "control_media_files_wanted": "Media keys whose origin manifest is still to be read",
}

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[tuple[str, ...], int]] = {n: {} for n in COUNTERS}
        # Series an alert's increase() watches are exported from 0: its first count would
        # otherwise start the series and be missed (ControlDatabaseUnavailable).
        for name, values in PRESET.items():
            self.counters[name].update({(v,): 0 for v in values})
        self.latency: dict[str, Histogram] = {}
        self.gauges: dict[str, float] = dict.fromkeys(GAUGES, 0.0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def inc(self, name: str, *labels: str, n: int = 1) -> None:
        declared = COUNTERS[name][1]
        if len(labels) != len(declared):
            raise ValueError(f"{name} takes labels {declared}, got {labels}")
        series = self.counters[name]
        series[labels] = series.get(labels, 0) + n

    def value(self, name: str, *labels: str) -> int:
        """The current count (0 if never incremented): for tests and load tests."""
        return self.counters[name].get(labels, 0)

    def total(self, name: str) -> int:
        return sum(self.counters[name].values())

    def observe(self, route: str, seconds: float) -> None:
        h = self.latency.get(route)
        if h is None:
            h = self.latency[route] = Histogram(LATENCY_BUCKETS)
        h.observe(seconds)

    def set_gauge(self, name: str, value: float) -> None:
        if name not in self.gauges:
            raise KeyError(name)
        self.gauges[name] = value

    # -- several worker processes -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": {n: [[list(k), v] for k, v in s.items()] for n, s in self.counters.items()},
            "latency": {r: [h.counts, h.sum] for r, h in self.latency.items()},
            "gauges": dict(self.gauges),
        }

    def write_snapshot(self, path: Path) -> None:
        """Atomically (temporary name, rename): a reader never sees half a snapshot."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), separators=(",", ":")))
        os.replace(tmp, path)

    @classmethod
    def merged(cls, snapshots: Iterable[dict[str, Any]]) -> Metrics:
        out = cls()
        for snap in snapshots:
            for name, series in snap.get("counters", {}).items():
                if name not in out.counters:
                    continue  # a worker of another version: skip what we do not declare
                target = out.counters[name]
                for labels, n in series:
                    key = tuple(labels)
                    target[key] = target.get(key, 0) + int(n)
            for route, (counts, total) in snap.get("latency", {}).items():
                h = out.latency.get(route)
                if h is None:
                    h = out.latency[route] = Histogram(LATENCY_BUCKETS)
                if len(counts) == len(h.counts):
                    h.counts = [a + b for a, b in zip(h.counts, counts, strict=True)]
                    h.sum += total
            for name, value in snap.get("gauges", {}).items():
                if name in out.gauges:
                    out.gauges[name] = max(out.gauges[name], float(value))
        return out


def read_snapshots(directory: Path, skip: str) -> list[dict[str, Any]]:
    """Every worker's latest snapshot in ``directory`` but the file named ``skip`` (the
    caller's own, which it has live); an unreadable file is left out."""
    out = []
    for path in sorted(directory.glob("worker-*.json")):
        if path.name == skip:
            continue
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


class _Collector(Collector):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Any]:
        for name, (help_text, labels) in COUNTERS.items():
            c = CounterMetricFamily(name, help_text, labels=list(labels))
            series = self.m.counters[name]
            if not labels and not series:
                # A counter without labels is 0 until counted, not absent: rate() and
                # increase() over it work from the first scrape.
                series = {(): 0}
            for values, n in sorted(series.items()):
                c.add_metric(list(values), n)
            yield c
        h = HistogramMetricFamily(
            "control_request_seconds", "Request latency per route template", labels=["route"]
        )
        for route, hist in sorted(self.m.latency.items()):
            h.add_metric([route], hist.cumulative(), hist.sum)
        yield h
        for name, value in self.m.gauges.items():
            g = GaugeMetricFamily(name, GAUGES[name])
            g.add_metric([], value)
            yield g
