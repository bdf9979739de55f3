"""Regression tests for hazards found in review: big hits, mixed versions, pipelining floods,
missing validators, trickling upstreams, purges racing fills, odd cache directories."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
import pytest

from .conftest import ADMIN_TOKEN, FakeOrigin, blob, edge_config, start_edge


async def test_hit_spanning_more_slices_than_open_files_is_byte_identical(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    data = origin.files["/v/t/r.mp4"] = blob(40 * slice_size + 5, seed=60)
    config = edge_config(tmp_path, [origin.url], slice_size=slice_size)
    config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, max_open_files=16))
    edge = await edges(config)
    assert (await edge.get(client, "/v/t/r.mp4"))[2] == data  # miss: fills 41 slices
    for _ in range(2):
        status, headers, body = await edge.get(client, "/v/t/r.mp4")
        assert (status, headers["X-Cache"], body == data) == (200, "HIT", True)
    # Many ranges over many slices, as one multipart response.
    ranges = ",".join(f"{i * slice_size - 3}-{i * slice_size + 2}" for i in range(1, 40, 3))
    async with client.get(edge.url + "/v/t/r.mp4", headers={"Range": f"bytes={ranges}"}) as r:
        assert r.status == 206
        body = await r.read()
    for i in range(1, 40, 3):
        assert data[i * slice_size - 3 : i * slice_size + 3] in body
    assert origin.fetches() == 41


async def test_coalesced_fill_of_another_version_is_never_mixed_in(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    path = "/v/t/r.mp4"
    v1 = origin.files[path] = blob(4 * slice_size, seed=61)
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=slice_size))
    rng = {"Range": f"bytes={2 * slice_size}-{2 * slice_size + 9}"}
    async with client.get(edge.url + path, headers=rng) as r:
        assert await r.read() == v1[2 * slice_size : 2 * slice_size + 10]
    await edge.settled()
    # The origin publishes v2; a player seeking into slice 3 starts a fill of v2 (held).
    v2 = origin.files[path] = blob(4 * slice_size, seed=62)
    origin.etags[path] = '"v2"'
    origin.gate = asyncio.Event()
    origin.arrived.clear()
    seek = asyncio.create_task(
        client.get(edge.url + path, headers={"Range": f"bytes={3 * slice_size}-"})
    )
    await origin.arrived.wait()
    # Another player asks for slices 2-3: slice 2 is cached v1, slice 3 would come from v2.
    async with client.get(
        edge.url + path, headers={"Range": f"bytes={2 * slice_size}-{4 * slice_size - 1}"}
    ) as r:
        assert r.headers["ETag"] == '"v1"'
        origin.gate.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # cut off, never v1 followed by v2
    resp = await seek
    assert await resp.read() == v2[3 * slice_size :]
    resp.release()


async def test_pipelined_requests_from_a_client_that_never_reads_are_bounded(
    edges, origin: FakeOrigin, tmp_path
):
    edge = await edges(edge_config(tmp_path, [origin.url]))
    _reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    request = b"OPTIONS /v/x HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(request * 200_000)  # ~7 MB of requests, answers never read
    with pytest.raises(TimeoutError):
        # The edge stops reading once its answers back up: our writes back up too.
        await asyncio.wait_for(writer.drain(), 3.0)
    server = edge.edge.server
    assert server is not None
    queued = sum(c.transport.get_write_buffer_size() for c in server.conns if c.transport)
    assert queued < 1024 * 1024, queued
    writer.transport.abort()


async def test_no_validators_from_upstream_means_no_date_conditionals(
    edges, origin: FakeOrigin, tmp_path, client
):
    data = origin.files["/v/t/a.m4s"] = blob(1000, seed=63)
    origin.mode = "no_validators"
    edge = await edges(edge_config(tmp_path, [origin.url]))
    for _ in range(2):  # miss, then hit
        async with client.get(
            edge.url + "/v/t/a.m4s",
            headers={"If-Modified-Since": "Sun, 06 Nov 2094 08:49:37 GMT"},
        ) as r:
            assert r.status == 200
            assert "Last-Modified" not in r.headers
            assert r.headers["ETag"].startswith('"')
            assert await r.read() == data
        await edge.settled()
    async with client.get(
        edge.url + "/v/t/a.m4s",
        headers={"Range": "bytes=0-9", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"},
    ) as r:
        assert r.status == 200  # a date cannot validate an undated representation


async def test_trickling_upstream_is_abandoned_after_fill_timeout(
    edges, origin: FakeOrigin, tmp_path, client
):
    origin.files["/v/t/a.m4s"] = blob(200_000, seed=64)
    origin.mode = "trickle"
    config = edge_config(tmp_path, [origin.url])
    config = dataclasses.replace(
        config,
        upstreams=(dataclasses.replace(config.upstreams[0], fill_timeout=0.3),),
    )
    edge = await edges(config)
    async with client.get(edge.url + "/v/t/a.m4s") as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    await edge.settled()
    assert edge.counter("edge_upstream_failures_total", reason="slow") >= 1
    assert edge.counter("edge_cache_objects") == 0


async def test_purge_during_a_fill_keeps_the_old_version_out_of_the_cache(
    edges, origin: FakeOrigin, tmp_path, client
):
    data = origin.files["/v/t/a.m4s"] = blob(100_000, seed=65)
    origin.gate = asyncio.Event()
    edge = await edges(edge_config(tmp_path, [origin.url]))
    request = asyncio.create_task(client.get(edge.url + "/v/t/a.m4s"))
    await origin.arrived.wait()
    async with client.post(
        edge.admin + "/admin/purge",
        params={"path": "/v/t/a.m4s"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        assert r.status == 200
    origin.gate.set()
    resp = await request
    assert await resp.read() == data  # the player that asked first is still served
    resp.release()
    await edge.settled()
    assert edge.counter("edge_cache_objects") == 0


async def test_rebuild_leaves_foreign_entries_alone(origin: FakeOrigin, tmp_path: Path, client):
    data = origin.files["/v/t/a.m4s"] = blob(1000, seed=66)
    config = edge_config(tmp_path, [origin.url])
    edge = await start_edge(config)
    async with client.get(edge.url + "/v/t/a.m4s") as r:
        assert await r.read() == data
    await edge.settled()
    await edge.stop()
    root = config.cache.dirs[0].path
    (root / "lost+found").mkdir()
    (root / "lost+found" / "#1234").write_bytes(b"fsck")
    (root / "README").write_text("operator notes")
    stray = next(root.glob("??/??")) / "0123456789abcdef.1a2b.tmp"
    stray.write_bytes(b"partial")
    edge = await start_edge(config)
    try:
        assert edge.counter("edge_cache_objects") == 1
        assert (root / "lost+found" / "#1234").exists()
        assert (root / "README").exists()
        assert not stray.exists()  # a crash leftover inside our fan-out is removed
        async with client.get(edge.url + "/v/t/a.m4s") as r:
            assert r.headers["X-Cache"] == "HIT"
    finally:
        await edge.stop()
