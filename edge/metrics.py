"""Prometheus metrics of the edge.

The hot path bumps plain integers (a prometheus-client ``Counter.inc`` takes a
lock and a label lookup); a custom collector turns them into metric families
at scrape time. Tests and load tests read the same numbers, from ``EdgeStats``
in-process or from /metrics over HTTP.

Every metric (all prefixed ``edge_``):

==========================================  =======  ==============================================
name                                        type     meaning
==========================================  =======  ==============================================
requests_total{status}                      counter  responses sent, by HTTP status (incl. the
                                                     503s sent at accept: max_connections, stop)
response_bytes_total{cache}                 counter  body bytes sent to clients, cache=hit|miss
cache_lookups_total{result}                 counter  slice lookups, result=hit|miss
ttfb_seconds{cache}                         histo    request parsed -> response head sent
upstream_fetches_total                      counter  upstream requests made (attempts, incl. retries)
upstream_failures_total{reason}             counter  failed attempts: connect, status_<code>
                                                     (5xx, 401, 403, 408, 429), body, truncated,
                                                     mismatch, io
upstream_bytes_total                        counter  body bytes received from upstreams
fills_started_total                         counter  slice fills started (one per coalesced miss)
coalesced_waiters_total                     counter  requests that joined a fill already running
fill_resumes_total                          counter  fills resumed after a broken upstream transfer
checksum_failures_total                     counter  fills rejected by the checksum header
fills_not_cached_total                      counter  fills passed through without caching
inflight_fills                              gauge    fills running now
evictions_total / evicted_bytes_total       counter  LRU evictions and their bytes
cache_bytes_used / cache_bytes_capacity     gauge    bytes on disk (incl. headers) and configured
cache_objects                               gauge    cached slices
cache_pinned_bytes                          gauge    bytes protected from eviction (proactive fill)
disk_errors_total                           counter  I/O errors on cache disks
disks_failed                                gauge    cache disks taken out of service
token_rejections_total{reason}              counter  403s by reason: missing, malformed,
                                                     unknown_key, bad_signature, expired,
                                                     out_of_scope, wrong_client
overload_rejections_total{reason}           counter  503s: connections, egress, draining
bad_requests_total{reason}                  counter  requests refused before routing
client_aborts_total                         counter  responses cut short (client gone or upstream
                                                     failure after the head was sent)
connections_open                            gauge    client connections now
connections_total                           counter  client connections accepted
egress_bytes_per_second                     gauge    smoothed egress rate
health_state{state}                         gauge    1 for the current state: ok|degraded|draining
only_if_cached_total{result}                counter  Cache-Control: only-if-cached requests (peer
                                                     fill): hit = served from cache, miss = 504
fill_bytes_total{source}                    counter  bytes the nightly fill downloaded, by source:
                                                     peer|parent|origin
fill_objects_total{source,result}           counter  fill attempts per object and source: ok,
                                                     present (no download), not_cached (peer
                                                     504), not_found, error (failed or crashed),
                                                     checksum (xxh64 or size differs from the
                                                     manifest's), not_stored; source=peer also
                                                     token_failed (no token for the path: peers
                                                     not asked) and peer_down (a peer given up
                                                     for the run after 3 connection failures or
                                                     timeouts in a row, not asked);
                                                     source=manifest: objects of a fetched
                                                     manifest left out, bad_path (a path the
                                                     edge refuses) or over_capacity (past the
                                                     manifest's or the store's capacity: not
                                                     filled, not pinned)
fill_verify_failures_total                  counter  filled objects whose xxh64 or size did not
                                                     match the manifest (purged, next source
                                                     tried)
fill_pending_objects / fill_pending_bytes   gauge    manifest objects and bytes not yet filled
fill_manifest_objects                       gauge    objects of the current manifest this edge
                                                     fills (those left out are not counted)
fill_manifest_bytes                         gauge    their bytes
fill_pinned_bytes                           gauge    bytes pinned by the fill (= cache_pinned_bytes)
fill_running                                gauge    1 while a fill runs, else 0
==========================================  =======  ==============================================
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

TTFB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A lock-free histogram for the event loop thread."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = TTFB_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.sum += v

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append((repr(b), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class EdgeStats:
    """Counters bumped by the request handler."""

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.bytes_hit = 0
        self.bytes_miss = 0
        self.lookups_hit = 0
        self.lookups_miss = 0
        self.token_rejections: dict[str, int] = {}
        # Every reason exported from 0 (alerts take rate() of each).
        self.overload: dict[str, int] = dict.fromkeys(("connections", "egress", "draining"), 0)
        self.client_aborts = 0
        # Cache-Control: only-if-cached requests (peer fill), answered from cache or 504.
        self.only_if_cached = {"hit": 0, "miss": 0}
        self.ttfb = {"hit": Histogram(), "miss": Histogram()}

    def count_status(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(kind: type, name: str, doc: str, label: str, items: dict[Any, int]) -> Metric:
    m: Any = kind(name, doc, labels=[label])  # a *MetricFamily; Metric lacks add_metric
    for k, v in sorted(items.items(), key=lambda kv: str(kv[0])):
        m.add_metric([str(k)], v)
    out: Metric = m
    return out


class EdgeCollector(Collector):
    """Reads the live objects at scrape time; ``app`` is the edge's aiohttp application."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        st: EdgeStats = s["stats"]
        yield _labelled(
            CounterMetricFamily,
            "edge_requests",
            "Responses sent by status",
            "status",
            s["requests"],
        )
        yield _labelled(
            CounterMetricFamily,
            "edge_response_bytes",
            "Body bytes sent to clients, split by cache hit/miss",
            "cache",
            {"hit": st.bytes_hit, "miss": st.bytes_miss},
        )
        yield _labelled(
            CounterMetricFamily,
            "edge_cache_lookups",
            "Slice lookups by result",
            "result",
            {"hit": st.lookups_hit, "miss": st.lookups_miss},
        )
        h = HistogramMetricFamily(
            "edge_ttfb_seconds", "Request parsed to response head sent", labels=["cache"]
        )
        for label, hist in st.ttfb.items():
            h.add_metric([label], hist.cumulative(), hist.sum)
        yield h
        for name, doc, key in (
            ("edge_upstream_fetches", "Upstream requests made, retries included", "fetches"),
            ("edge_upstream_bytes", "Body bytes received from upstreams", "upstream_bytes"),
            ("edge_fills_started", "Slice fills started", "fills_started"),
            ("edge_coalesced_waiters", "Requests that joined a running fill", "coalesced"),
            ("edge_fill_resumes", "Fills resumed after a broken transfer", "resumes"),
            ("edge_checksum_failures", "Fills rejected by checksum", "checksum_failures"),
            ("edge_fills_not_cached", "Fills passed through without caching", "not_cached"),
            ("edge_evictions", "LRU evictions", "evictions"),
            ("edge_evicted_bytes", "Bytes evicted", "evicted_bytes"),
            ("edge_disk_errors", "I/O errors on cache disks", "disk_errors"),
            ("edge_client_aborts", "Responses cut short", "client_aborts"),
            ("edge_connections", "Client connections accepted", "connections_total"),
        ):
            yield _counter(name, doc, s[key])
        yield _labelled(
            CounterMetricFamily,
            "edge_upstream_failures",
            "Failed upstream attempts by reason",
            "reason",
            s["upstream_failures"],
        )
        yield _labelled(
            CounterMetricFamily,
            "edge_token_rejections",
            "Requests refused for their token, by reason",
            "reason",
            st.token_rejections,
        )
        yield _labelled(
            CounterMetricFamily,
            "edge_overload_rejections",
            "503s for overload or drain, by reason",
            "reason",
            s["overload"],
        )
        yield _labelled(
            CounterMetricFamily,
            "edge_bad_requests",
            "Requests refused before routing, by reason",
            "reason",
            s["bad_requests"],
        )
        for name, doc, key in (
            ("edge_inflight_fills", "Fills running now", "inflight"),
            ("edge_cache_bytes_used", "Bytes cached on disk", "used"),
            ("edge_cache_bytes_capacity", "Configured cache bytes", "capacity"),
            ("edge_cache_objects", "Cached slices", "objects"),
            ("edge_cache_pinned_bytes", "Bytes protected from eviction", "pinned"),
            ("edge_disks_failed", "Cache disks out of service", "disks_failed"),
            ("edge_connections_open", "Client connections now", "connections_open"),
            ("edge_egress_bytes_per_second", "Smoothed egress rate", "egress"),
        ):
            yield GaugeMetricFamily(name, doc, value=s[key])
        yield _labelled(
            CounterMetricFamily,
            "edge_only_if_cached",
            "only-if-cached requests: hit served, miss answered 504",
            "result",
            st.only_if_cached,
        )
        yield from _fill_metrics(s.get("fill"), s["pinned"])
        g = GaugeMetricFamily("edge_health_state", "1 for the current state", labels=["state"])
        for state in ("ok", "degraded", "draining"):
            g.add_metric([state], 1.0 if s["health"] == state else 0.0)
        yield g


def _fill_metrics(fill: dict[str, Any] | None, pinned: int) -> Iterator[Metric]:
    """The nightly fill's families; zeros when fill is disabled (the families always exist)."""
    fill = fill or {}
    yield _labelled(
        CounterMetricFamily,
        "edge_fill_bytes",
        "Bytes downloaded by the nightly fill, by source",
        "source",
        fill.get("bytes") or {"peer": 0, "parent": 0, "origin": 0},
    )
    objects = CounterMetricFamily(
        "edge_fill_objects",
        "Fill attempts per object and source, by result",
        labels=["source", "result"],
    )
    for (source, result), n in sorted((fill.get("objects") or {}).items()):
        objects.add_metric([source, result], n)
    yield objects
    yield _counter(
        "edge_fill_verify_failures",
        "Filled objects rejected by the manifest checksum or size",
        fill.get("verify_failures", 0),
    )
    for name, doc, key in (
        ("edge_fill_pending_objects", "Manifest objects not yet filled", "pending_objects"),
        ("edge_fill_pending_bytes", "Manifest bytes not yet filled", "pending_bytes"),
        ("edge_fill_manifest_objects", "Objects in the current manifest", "manifest_objects"),
        ("edge_fill_manifest_bytes", "Bytes in the current manifest", "manifest_bytes"),
        ("edge_fill_running", "1 while a fill runs", "running"),
    ):
        yield GaugeMetricFamily(name, doc, value=fill.get(key, 0))
    yield GaugeMetricFamily("edge_fill_pinned_bytes", "Bytes pinned by the fill", value=pinned)
