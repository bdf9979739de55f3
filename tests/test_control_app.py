"""The control plane's service shell: start-up on both backends, health, metrics, errors."""

from __future__ import annotations

from typing import Any


async def test_starts_migrated_and_healthy(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.get("/healthz")
    assert r.status == 200, r
    assert r.body["status"] == "ok"
    assert r.body["database"] in ("sqlite", "postgresql")
    r = await rc.api.get("/metrics")
    assert r.status == 200
    assert "control_requests_total" in r.body


async def test_unknown_route_is_404_in_the_error_shape(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.get("/v1/nope")
    assert r.status == 404
    assert r.body["error"]["code"] == "not_found"
    assert rc.counter("control_requests", "unmatched", "GET", "404") == 1


async def test_a_second_start_on_the_same_database_migrates_nothing(start_control: Any) -> None:
    rc1 = await start_control()
    await rc1.runner.cleanup()
    rc2 = await start_control()
    r = await rc2.api.get("/healthz")
    assert r.status == 200
