"""Merging the metrics of several worker processes (control/metrics.py), no event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.metrics import COUNTERS, Metrics, read_snapshots


def test_merged_sums_counters_and_histograms_and_takes_the_largest_gauge(tmp_path: Path) -> None:
    a, b = Metrics(), Metrics()
    a.inc("control_signins", "ok", n=3)
    b.inc("control_signins", "ok", n=2)
    b.inc("control_signins", "bad_credentials")
    a.observe("/v1/search", 0.002)
    b.observe("/v1/search", 0.2)
    a.set_gauge("control_catalog_titles", 10)
    b.set_gauge("control_catalog_titles", 12)
    b.write_snapshot(tmp_path / "worker-1.json")
    a.write_snapshot(tmp_path / "worker-0.json")
    (tmp_path / "worker-2.json").write_text("{not json")  # a torn file is skipped
    others = read_snapshots(tmp_path, skip="worker-0.json")
    assert len(others) == 1
    m = Metrics.merged([a.snapshot(), *others])
    assert m.value("control_signins", "ok") == 5
    assert m.value("control_signins", "bad_credentials") == 1
    h = m.latency["/v1/search"]
    assert sum(h.counts) == 2 and h.sum == pytest.approx(0.202)
    assert m.gauges["control_catalog_titles"] == 12


def test_unknown_series_from_another_version_are_ignored() -> None:
    m = Metrics.merged([{"counters": {"control_nope": [[["x"], 1]]}, "gauges": {"g": 1}}])
    assert all(not any(series.values()) for series in m.counters.values())
    assert set(m.counters) == set(COUNTERS)


def test_labels_are_checked() -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        m.inc("control_signins")  # needs its outcome label
    with pytest.raises(KeyError):
        m.inc("control_undeclared", "x")
