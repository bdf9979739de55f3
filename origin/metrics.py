"""Prometheus metrics of the origin (all prefixed ``origin_``).

=====================================  =======  ===============================================
name                                   type     meaning
=====================================  =======  ===============================================
requests_total{status}                 counter  responses sent, by HTTP status
response_bytes_total                   counter  body bytes sent
storage_errors_total{op}               counter  storage failures: stat, read
storage_latency_seconds                histo    time of a metadata lookup in storage
auth_failures_total{credential}        counter  401s: fill (edges), catalog (control plane)
connections_open                       gauge    client connections now
published_titles                       gauge    titles announced in the catalog feed
=====================================  =======  ===============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class OriginCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        st = s["stats"]
        c = CounterMetricFamily("origin_requests", "Responses sent by status", labels=["status"])
        for k, v in sorted(st.requests.items()):
            c.add_metric([str(k)], v)
        yield c
        yield CounterMetricFamily("origin_response_bytes", "Body bytes sent", value=st.bytes_served)
        c = CounterMetricFamily("origin_storage_errors", "Storage failures", labels=["op"])
        for k, v in sorted(st.storage_errors.items()):
            c.add_metric([k], v)
        yield c
        h = HistogramMetricFamily("origin_storage_latency_seconds", "Storage metadata lookups")
        h.add_metric([], st.storage_latency.cumulative(), st.storage_latency.sum)
        yield h
        c = CounterMetricFamily("origin_auth_failures", "401s by credential", labels=["credential"])
        for k, v in sorted(st.auth_failures.items()):
            c.add_metric([k], v)
        yield c
        yield GaugeMetricFamily("origin_connections_open", "Client connections", value=s["conns"])
        yield GaugeMetricFamily("origin_published_titles", "Titles in the feed", value=s["titles"])
