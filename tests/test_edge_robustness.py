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


async def test_republished_object_recovers_after_one_failed_request(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    path = "/v/t/r.mp4"
    origin.files[path] = blob(3 * slice_size, seed=70)
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=slice_size))
    await edge.get(client, path, headers={"Range": "bytes=0-0"})  # slice 0 of v1 cached
    v2 = origin.files[path] = blob(3 * slice_size, seed=71)
    origin.etags[path] = '"v2"'
    async with client.get(edge.url + path) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # the request that discovers the change is cut off
    await edge.settled()
    status, headers, body = await edge.get(client, path)
    assert status == 200, (body[:200], headers)
    assert (headers["ETag"], body == v2) == ('"v2"', True)


async def test_two_edges_never_share_a_cache_directory(origin: FakeOrigin, tmp_path):
    from edge.store import CacheInUse

    config = edge_config(tmp_path, [origin.url])
    first = await start_edge(config)
    try:
        with pytest.raises(CacheInUse, match="in use by another edge"):
            await start_edge(config)
    finally:
        await first.stop()
    second = await start_edge(config)  # released on stop
    await second.stop()


async def test_error_responses_carry_cors_headers(edges, origin: FakeOrigin, tmp_path, client):
    edge = await edges(edge_config(tmp_path, [origin.url], signed=True))
    async with client.get(edge.url + "/v/t/a.m4s", headers={"Origin": "https://p.example"}) as r:
        assert r.status == 403
        assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_status_line_of_412(edges, origin: FakeOrigin, tmp_path):
    from .conftest import raw_request

    origin.files["/v/t/a.m4s"] = blob(100)
    edge = await edges(edge_config(tmp_path, [origin.url]))
    raw = await raw_request(
        edge.port,
        b'GET /v/t/a.m4s HTTP/1.1\r\nHost: x\r\nIf-Match: "nope"\r\nConnection: close\r\n\r\n',
    )
    assert raw.startswith(b"HTTP/1.1 412 Precondition Failed\r\n")


async def test_second_token_in_path_is_not_logged(
    edges, origin: FakeOrigin, tmp_path, client, caplog
):
    import logging

    from edge.config import LogConfig

    config = dataclasses.replace(
        edge_config(tmp_path, [origin.url], signed=True), log=LogConfig("info", True)
    )
    edge = await edges(config)
    url = edge.signed("/v/t/a.m4s", "/v/t/")
    token = url.split("/_t/")[1].split("/")[0]
    with caplog.at_level(logging.INFO, logger="edge.access"):
        async with client.get(url.replace("/v/t/", f"/_t/{token}/v/t/")) as r:
            assert r.status == 403
    assert caplog.records and token not in caplog.text


async def test_x_cache_says_miss_when_the_upstream_was_needed(
    edges, origin: FakeOrigin, tmp_path, client
):
    slice_size = 64 * 1024
    origin.files["/v/t/r.mp4"] = blob(3 * slice_size, seed=72)
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=slice_size))
    await edge.get(client, "/v/t/r.mp4", headers={"Range": "bytes=0-0"})
    _, headers, _ = await edge.get(client, "/v/t/r.mp4")
    assert headers["X-Cache"] == "MISS"
    _, headers, _ = await edge.get(client, "/v/t/r.mp4")
    assert headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_admin_auth_scheme_is_case_insensitive(
    scheme, edges, origin: FakeOrigin, tmp_path, client
):
    edge = await edges(edge_config(tmp_path, [origin.url]))
    async with client.post(
        edge.admin + "/admin/undrain", headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"}
    ) as r:
        assert r.status == 200


@pytest.mark.parametrize("bad", ["/v/../x", "v/x", "/v/%2e%2e/x", "/v/t/"])
async def test_purge_rejects_paths_that_name_no_object(
    bad, edges, origin: FakeOrigin, tmp_path, client
):
    edge = await edges(edge_config(tmp_path, [origin.url]))
    async with client.post(
        edge.admin + "/admin/purge",
        params={"path": bad},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        assert r.status == 400


async def test_bare_lf_head_is_refused_at_once(edges, origin: FakeOrigin, tmp_path):
    from .conftest import raw_request

    edge = await edges(edge_config(tmp_path, [origin.url]))
    raw = await asyncio.wait_for(
        raw_request(edge.port, b"GET /v/t/a.m4s HTTP/1.1\nHost: x\n\n", read_timeout=5.0), 4.0
    )
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_silent_connection_is_closed_after_header_timeout(
    edges, origin: FakeOrigin, tmp_path
):
    edge = await edges(
        edge_config(tmp_path, [origin.url], limits={"header_timeout": 0.5, "idle_timeout": 60.0})
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed well before 60 s
    finally:
        writer.close()


async def test_trailing_slash_is_not_the_file(edges, origin_dir, tmp_path, client):
    from .conftest import put

    put(origin_dir, "/art/p.jpg", b"jpeg")
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    assert (await edge.get(client, "/art/p.jpg"))[0] == 200
    assert (await edge.get(client, "/art/p.jpg/"))[0] == 404
