"""The edge's cache over real HTTP: fills, coalescing, slices, restart, eviction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from .conftest import FakeOrigin, blob, edge_config, put, start_edge


async def test_miss_then_hit_from_directory_origin(edges, origin_dir: Path, tmp_path: Path, client):
    data = put(origin_dir, "/v/t1/720p/seg1.m4s", blob(300_000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    async with client.get(edge.url + "/v/t1/720p/seg1.m4s") as r:
        assert r.status == 200
        assert r.headers["X-Cache"] == "MISS"
        assert await r.read() == data
    await edge.settled()
    async with client.get(edge.url + "/v/t1/720p/seg1.m4s") as r:
        assert r.status == 200
        assert r.headers["X-Cache"] == "HIT"
        assert r.headers["Content-Type"] == "video/iso.segment"
        assert await r.read() == data
    # 300 KB in 256 KiB slices: two fills, then two slice hits.
    assert edge.counter("edge_fills_started_total") == 2
    assert edge.counter("edge_cache_lookups_total", result="hit") == 2
    assert edge.counter("edge_response_bytes_total", cache="hit") == len(data)
    assert edge.counter("edge_response_bytes_total", cache="miss") == len(data)


async def test_fifty_concurrent_misses_make_one_upstream_fetch(
    edges, origin: FakeOrigin, tmp_path, client
):
    data = origin.files["/v/t/seg.m4s"] = blob(200_000, seed=1)
    origin.gate = asyncio.Event()  # hold the body half-way so every client joins the same fill
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=1024 * 1024))

    async def get() -> bytes:
        async with client.get(edge.url + "/v/t/seg.m4s") as r:
            assert r.status == 200
            return await r.read()

    tasks = [asyncio.create_task(get()) for _ in range(50)]
    await origin.arrived.wait()
    # Wait until all 50 requests are attached to the fill (a counter, not a sleep).
    while edge.counter("edge_coalesced_waiters_total") < 49:
        await asyncio.sleep(0.01)
    origin.gate.set()
    bodies = await asyncio.gather(*tasks)
    assert all(b == data for b in bodies)
    assert origin.fetches("/v/t/seg.m4s") == 1
    assert edge.counter("edge_upstream_fetches_total") == 1
    assert edge.counter("edge_coalesced_waiters_total") == 49


async def test_first_byte_does_not_wait_for_the_whole_slice(
    edges, origin: FakeOrigin, tmp_path, client
):
    data = origin.files["/v/t/big.m4s"] = blob(400_000, seed=2)
    origin.gate = asyncio.Event()
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=1024 * 1024))
    async with client.get(edge.url + "/v/t/big.m4s") as r:
        assert r.status == 200
        # The origin has sent only the first half; the edge streams it already.
        first = await r.content.readexactly(200_000)
        assert first == data[:200_000]
        origin.gate.set()
        rest = await r.read()
    assert first + rest == data


async def test_range_into_large_object_fetches_only_needed_slices(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 256 * 1024
    data = origin.files["/v/t/rendition.mp4"] = blob(10 * slice_size + 123, seed=3)
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=slice_size))
    start = 7 * slice_size + 1000
    async with client.get(
        edge.url + "/v/t/rendition.mp4", headers={"Range": f"bytes={start}-{start + 65535}"}
    ) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes {start}-{start + 65535}/{len(data)}"
        assert await r.read() == data[start : start + 65536]
    await edge.settled()
    assert [rng for _, rng in origin.requests] == [f"bytes={7 * slice_size}-{8 * slice_size - 1}"]
    # A range spanning a slice boundary reuses the cached slice and fills the next one.
    start = 8 * slice_size - 10
    async with client.get(
        edge.url + "/v/t/rendition.mp4", headers={"Range": f"bytes={start}-{start + 99}"}
    ) as r:
        assert await r.read() == data[start : start + 100]
    await edge.settled()
    assert origin.fetches() == 2
    # The whole object, assembled from slices, is byte-identical.
    async with client.get(edge.url + "/v/t/rendition.mp4") as r:
        assert r.headers["Content-Length"] == str(len(data))
        assert await r.read() == data
    assert origin.fetches() == 11


async def test_restart_keeps_the_cache(origin: FakeOrigin, tmp_path, client):
    data = origin.files["/v/t/seg.m4s"] = blob(100_000, seed=4)
    config = edge_config(tmp_path, [origin.url])
    edge = await start_edge(config)
    async with client.get(edge.url + "/v/t/seg.m4s") as r:
        assert await r.read() == data
    await edge.settled()
    await edge.stop()
    assert origin.fetches() == 1

    edge = await start_edge(config)
    try:
        assert edge.counter("edge_cache_objects") == 1
        async with client.get(edge.url + "/v/t/seg.m4s") as r:
            assert r.headers["X-Cache"] == "HIT"
            assert await r.read() == data
        assert origin.fetches() == 1
    finally:
        await edge.stop()


async def test_eviction_is_by_bytes_and_least_recently_used_first(
    edges, origin: FakeOrigin, tmp_path, client
):
    size = 100_000
    for i in range(6):
        origin.files[f"/v/t/s{i}.m4s"] = blob(size, seed=10 + i)
    # Room for four objects (each ~100 KB plus a small header), not five.
    edge = await edges(edge_config(tmp_path, [origin.url], cache_size=450_000))
    for i in range(4):
        await edge.get(client, f"/v/t/s{i}.m4s")
    async with client.get(edge.url + "/v/t/s0.m4s") as r:  # s0 becomes most recent
        assert r.headers["X-Cache"] == "HIT"
    await edge.get(client, "/v/t/s4.m4s")  # evicts s1, the LRU
    assert edge.counter("edge_evictions_total") == 1
    assert edge.counter("edge_cache_bytes_used") <= 450_000
    for i, expect in ((0, "HIT"), (2, "HIT"), (3, "HIT"), (4, "HIT"), (1, "MISS")):
        _, headers, _ = await edge.get(client, f"/v/t/s{i}.m4s")
        assert headers["X-Cache"] == expect, i


async def test_pinned_objects_survive_eviction_pressure(
    edges, origin: FakeOrigin, tmp_path, client
):
    for i in range(8):
        origin.files[f"/v/t/s{i}.m4s"] = blob(100_000, seed=20 + i)
    edge = await edges(edge_config(tmp_path, [origin.url], cache_size=450_000))
    await edge.get(client, "/v/t/s0.m4s")
    store = edge.edge.store
    assert store is not None
    assert store.set_pinned("/v/t/s0.m4s", 0, True)
    for i in range(1, 8):
        await edge.get(client, f"/v/t/s{i}.m4s")
    async with client.get(edge.url + "/v/t/s0.m4s") as r:
        assert r.headers["X-Cache"] == "HIT"
    assert edge.counter("edge_cache_pinned_bytes") > 100_000
    # Released pins become ordinary LRU content again.
    assert store.set_pinned("/v/t/s0.m4s", 0, False)
    for i in range(1, 8):
        await edge.get(client, f"/v/t/s{i}.m4s")
    async with client.get(edge.url + "/v/t/s0.m4s") as r:
        assert r.headers["X-Cache"] == "MISS"


async def test_objects_spread_over_several_cache_dirs(edges, origin: FakeOrigin, tmp_path, client):
    for i in range(40):
        origin.files[f"/v/t/s{i}.m4s"] = blob(1000, seed=i)
    edge = await edges(edge_config(tmp_path, [origin.url], cache_dirs=2))
    for i in range(40):
        await edge.get(client, f"/v/t/s{i}.m4s")
    store = edge.edge.store
    assert store is not None
    counts = [len(d.index) for d in store.disks]
    assert sum(counts) == 40 and min(counts) > 5, counts


async def test_not_found_is_404_and_not_cached(edges, origin: FakeOrigin, tmp_path, client):
    edge = await edges(edge_config(tmp_path, [origin.url]))
    for _ in range(2):
        async with client.get(edge.url + "/v/t/none.m4s") as r:
            assert r.status == 404
    assert origin.fetches() == 2
    assert edge.counter("edge_cache_objects") == 0


async def test_zero_length_object(edges, origin_dir: Path, tmp_path, client):
    put(origin_dir, "/v/t/empty.vtt", b"")
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    for _ in range(2):
        status, headers, body = await edge.get(client, "/v/t/empty.vtt")
        assert (status, headers["Content-Length"], body) == (200, "0", b"")


async def test_keep_alive_connection_serves_many_requests(edges, origin_dir: Path, tmp_path):
    data = put(origin_dir, "/v/t/a.m4s", blob(5000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(20):
            async with s.get(edge.url + "/v/t/a.m4s") as r:
                assert await r.read() == data
    assert edge.counter("edge_connections_total") == 1


async def test_proactive_prefetch_caches_and_pins_every_slice(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    data = origin.files["/v/t/r.mp4"] = blob(5 * slice_size + 7, seed=40)
    for i in range(6):
        origin.files[f"/v/t/o{i}.m4s"] = blob(100_000, seed=50 + i)
    edge = await edges(
        edge_config(tmp_path, [origin.url], slice_size=slice_size, cache_size=600_000)
    )
    puller = edge.edge.puller
    assert puller is not None
    meta, fetched = await puller.prefetch("/v/t/r.mp4", pinned=True)
    assert (meta.size, fetched) == (len(data), 6)
    assert origin.fetches() == 6
    # Again: nothing to fetch.
    assert (await puller.prefetch("/v/t/r.mp4", pinned=True))[1] == 0
    # Pinned slices survive a stream of reactive fills that overflows the cache.
    for i in range(6):
        await edge.get(client, f"/v/t/o{i}.m4s")
    assert edge.counter("edge_evictions_total") > 0
    status, headers, body = await edge.get(client, "/v/t/r.mp4")
    assert (status, headers["X-Cache"], body) == (200, "HIT", data)
    assert origin.fetches("/v/t/r.mp4") == 6
