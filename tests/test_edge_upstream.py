"""Misbehaving upstreams: never cached, counted, and never a wrong body to the client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import xxhash

from .conftest import FakeOrigin, blob, edge_config, free_port


async def _read_all_or_error(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes | None]:
    """Status and body; body None when the edge aborted the connection mid-body."""
    async with session.get(url) as r:
        try:
            return r.status, await r.read()
        except aiohttp.ClientPayloadError:
            return r.status, None


@pytest.mark.parametrize("mode", ["bad_range", "truncate", "ignore_range_big"])
async def test_wrong_answers_are_not_cached_and_abort_the_client(
    mode, edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    data = origin.files["/v/t/seg.m4s"] = blob(3 * slice_size, seed=5)
    origin.mode = "ignore_range" if mode == "ignore_range_big" else mode
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=slice_size))
    # Ask for the end of the second slice: an upstream that answers something else must not
    # poison it, and a truncated transfer cannot deliver these bytes.
    url = edge.url + "/v/t/seg.m4s"
    last = 2 * slice_size - 1
    async with client.get(url, headers={"Range": f"bytes={last - 9}-{last}"}) as r:
        if r.status == 206:
            # Head sent before the failure: the body must be cut, never wrong.
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        else:
            assert r.status == 502
    await edge.settled()
    assert edge.counter("edge_cache_objects") == 0
    assert (
        edge.counter("edge_upstream_failures_total", reason="mismatch")
        + edge.counter("edge_upstream_failures_total", reason="truncated")
        + edge.counter("edge_upstream_failures_total", reason="body")
        >= 1
    )
    # Once the upstream behaves, the right bytes are served and cached.
    origin.mode = "ok"
    async with client.get(url) as r:
        assert r.status == 200
        assert await r.read() == data


async def test_checksum_mismatch_is_never_cached(edges, origin: FakeOrigin, tmp_path, client):
    data = origin.files["/v/t/a.m4s"] = blob(50_000, seed=6)
    origin.checksum["/v/t/a.m4s"] = "0123456789abcdef"  # wrong
    edge = await edges(edge_config(tmp_path, [origin.url]))
    status, body = await _read_all_or_error(client, edge.url + "/v/t/a.m4s")
    assert status == 200 and body is None  # aborted: the client can tell it is incomplete
    await edge.settled()
    assert edge.counter("edge_checksum_failures_total") == 1
    assert edge.counter("edge_cache_objects") == 0
    origin.checksum["/v/t/a.m4s"] = xxhash.xxh64_hexdigest(data)
    status, body = await _read_all_or_error(client, edge.url + "/v/t/a.m4s")
    assert (status, body) == (200, data)
    await edge.settled()
    assert edge.counter("edge_cache_objects") == 1


async def test_failover_to_the_next_upstream(edges, origin: FakeOrigin, tmp_path, client):
    dead = f"http://127.0.0.1:{free_port()}"
    data = origin.files["/v/t/a.m4s"] = blob(10_000, seed=7)
    edge = await edges(edge_config(tmp_path, [dead, origin.url]))
    async with client.get(edge.url + "/v/t/a.m4s") as r:
        assert r.status == 200
        assert await r.read() == data
    assert edge.counter("edge_upstream_failures_total", reason="connect") == 2  # try + 1 retry
    assert edge.counter("edge_upstream_fetches_total") == 3


async def test_retry_after_a_5xx(edges, origin: FakeOrigin, tmp_path, client):
    data = origin.files["/v/t/a.m4s"] = blob(10_000, seed=8)
    origin.fail_first = 1
    edge = await edges(edge_config(tmp_path, [origin.url]))
    async with client.get(edge.url + "/v/t/a.m4s") as r:
        assert r.status == 200
        assert await r.read() == data
    assert origin.fetches() == 2
    assert edge.counter("edge_upstream_failures_total", reason="status_503") == 1


async def test_all_upstreams_down_is_502_and_degraded(edges, tmp_path, client):
    edge = await edges(edge_config(tmp_path, [f"http://127.0.0.1:{free_port()}"]))
    async with client.get(edge.url + "/v/t/a.m4s") as r:
        assert r.status == 502
    async with client.get(edge.url + "/healthz") as r:
        doc = await r.json()
    assert doc["state"] == "degraded"
    assert any(reason.startswith("upstream_unreachable") for reason in doc["reasons"])


async def test_object_changed_between_slices_is_not_mixed(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    old = origin.files["/v/t/r.mp4"] = blob(2 * slice_size, seed=9)
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=slice_size))
    async with client.get(edge.url + "/v/t/r.mp4", headers={"Range": "bytes=0-9"}) as r:
        assert await r.read() == old[:10]
    await edge.settled()
    # The origin publishes a new version; slice 1 would come from it.
    origin.files["/v/t/r.mp4"] = blob(2 * slice_size, seed=10)
    origin.etags["/v/t/r.mp4"] = '"v2"'
    status, body = await _read_all_or_error(client, edge.url + "/v/t/r.mp4")
    assert status == 200 and body is None  # never half old, half new
    await edge.settled()
    assert edge.counter("edge_cache_objects") <= 1


async def test_client_that_goes_away_does_not_stop_the_fill(edges, origin: FakeOrigin, tmp_path):
    data = origin.files["/v/t/a.m4s"] = blob(300_000, seed=11)
    origin.gate = asyncio.Event()
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=1024 * 1024))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /v/t/a.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    writer.close()
    origin.gate.set()
    await edge.settled()
    assert edge.counter("edge_cache_objects") == 1
    async with aiohttp.ClientSession() as s, s.get(edge.url + "/v/t/a.m4s") as r:
        assert r.headers["X-Cache"] == "HIT"
        assert await r.read() == data
    assert origin.fetches() == 1


async def test_full_disk_passes_through_and_reports_degraded(
    edges, origin: FakeOrigin, tmp_path, client
):
    for i in range(3):
        origin.files[f"/v/t/s{i}.m4s"] = blob(100_000, seed=30 + i)
    edge = await edges(edge_config(tmp_path, [origin.url], cache_size=150_000))
    store = edge.edge.store
    assert store is not None
    status, body = await _read_all_or_error(client, edge.url + "/v/t/s0.m4s")
    await edge.settled()
    assert store.set_pinned("/v/t/s0.m4s", 0, True)  # the only room is pinned now
    for i in (1, 2):
        status, body = await _read_all_or_error(client, edge.url + f"/v/t/s{i}.m4s")
        assert (status, body) == (200, origin.files[f"/v/t/s{i}.m4s"])
    await edge.settled()
    assert edge.counter("edge_fills_not_cached_total") == 2
    async with client.get(edge.url + "/healthz") as r:
        doc = await r.json()
    assert doc["state"] == "degraded"
    assert any(reason.startswith("cache_full") for reason in doc["reasons"])


async def test_write_error_mid_fill_keeps_serving(
    edges, origin: FakeOrigin, tmp_path, client, monkeypatch
):
    data = origin.files["/v/t/a.m4s"] = blob(400_000, seed=12)
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=1024 * 1024))
    from edge import store as store_mod

    calls = {"n": 0}
    real_write = store_mod.SliceWriter.write

    def failing_write(self, chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")  # the disk dies mid-slice
        return real_write(self, chunk)

    monkeypatch.setattr(store_mod.SliceWriter, "write", failing_write)
    status, body = await _read_all_or_error(client, edge.url + "/v/t/a.m4s")
    assert (status, body) == (200, data)
    await edge.settled()
    assert edge.counter("edge_disk_errors_total") == 1
    assert edge.counter("edge_cache_objects") == 0
    assert not list((tmp_path / "cache0").rglob("*.tmp"))


async def test_filesystem_reserve_stops_caching(edges, origin: FakeOrigin, tmp_path, client):
    import dataclasses

    data = origin.files["/v/t/a.m4s"] = blob(1000)
    config = edge_config(tmp_path, [origin.url])
    # Ask to keep more free than any test machine has: every fill passes through.
    config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, reserve=1 << 60))
    edge = await edges(config)
    status, body = await _read_all_or_error(client, edge.url + "/v/t/a.m4s")
    assert (status, body) == (200, data)
    await edge.settled()
    assert edge.counter("edge_fills_not_cached_total") == 1
    assert edge.counter("edge_cache_objects") == 0
