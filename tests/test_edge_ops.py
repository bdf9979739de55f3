"""Operating a running edge: health, drain, limits, metrics, purge, upstream credentials."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edge import metrics as edge_metrics

from .conftest import (
    ADMIN_TOKEN,
    FakeOrigin,
    RunningEdge,
    blob,
    edge_config,
    free_port,
    put,
    start_edge,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def health(client: aiohttp.ClientSession, base: str) -> tuple[int, dict]:
    async with client.get(base + "/healthz") as r:
        assert r.headers["Content-Type"].startswith("application/json")
        return r.status, json.loads(await r.read())


async def get(client: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict[str, str], bytes]:
    async with client.get(url, **kw) as r:
        return r.status, dict(r.headers), await r.read()


# -- health and drain -------------------------------------------------------------------------


async def test_healthz_on_data_and_admin_ports(edges, origin_dir: Path, tmp_path, client):
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    for base in (edge.url, edge.admin):
        status, doc = await health(client, base)
        assert status == 200
        assert doc == {"state": "ok", "node": "test-edge", "site": "default", "reasons": []}


async def test_drain_needs_the_admin_credential_and_refuses_new_requests(
    edges, origin_dir: Path, tmp_path, client
):
    data = put(origin_dir, "/v/t/a.m4s", blob(4000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": ADMIN_TOKEN},
    ):
        async with client.post(edge.admin + "/admin/drain", headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert (await health(client, edge.url))[1]["state"] == "ok"
    assert (await get(client, edge.url + "/v/t/a.m4s"))[0] == 200

    async with client.post(edge.admin + "/admin/drain", headers=AUTH) as r:
        assert r.status == 200
        assert await r.json() == {"state": "draining"}
    for base in (edge.url, edge.admin):
        status, doc = await health(client, base)
        assert (status, doc["state"]) == (503, "draining")
        assert "draining" in doc["reasons"]
    for n in (1, 2):
        status, headers, body = await get(client, edge.url + "/v/t/a.m4s")
        assert status == 503
        assert headers["Retry-After"] == "2"
        assert headers["Connection"] == "close"
        assert b"draining" in body
        assert edge.counter("edge_overload_rejections_total", reason="draining") == n

    async with client.post(edge.admin + "/admin/undrain", headers=AUTH) as r:
        assert r.status == 200
        assert await r.json() == {"state": "ok"}
    assert await health(client, edge.url) == (
        200,
        {"state": "ok", "node": "test-edge", "site": "default", "reasons": []},
    )
    status, _, body = await get(client, edge.url + "/v/t/a.m4s")
    assert (status, body) == (200, data)
    assert edge.counter("edge_overload_rejections_total", reason="draining") == 2


async def test_request_in_flight_at_drain_completes(edges, origin: FakeOrigin, tmp_path, client):
    data = origin.files["/v/t/seg.m4s"] = blob(400_000, seed=1)
    origin.files["/v/t/other.m4s"] = blob(1000, seed=2)
    origin.gate = asyncio.Event()
    edge = await edges(edge_config(tmp_path, [origin.url], slice_size=1024 * 1024))
    async with client.get(edge.url + "/v/t/seg.m4s") as r:
        assert r.status == 200
        # The origin sent half the body and is held: the request is well under way.
        first = await r.content.readexactly(200_000)
        async with client.post(edge.admin + "/admin/drain", headers=AUTH) as d:
            assert d.status == 200
        # New requests are refused meanwhile ...
        status, headers, _ = await get(client, edge.url + "/v/t/other.m4s")
        assert (status, headers["Retry-After"]) == (503, "2")
        # ... while the one in flight runs to completion.
        origin.gate.set()
        rest = await r.read()
    assert first + rest == data
    assert origin.fetches("/v/t/other.m4s") == 0
    assert edge.counter("edge_requests_total", status="200") == 1
    assert edge.counter("edge_client_aborts_total") == 0


async def test_unreachable_upstream_gives_502_and_degraded_health(edges, tmp_path, client):
    edge = await edges(edge_config(tmp_path, [f"http://127.0.0.1:{free_port()}"]))
    status, _, body = await get(client, edge.url + "/v/t/a.m4s")
    assert status == 502
    assert b"upstream" in body
    assert edge.counter("edge_upstream_failures_total", reason="connect") == 2  # one retry
    for base in (edge.url, edge.admin):
        status, doc = await health(client, base)
        assert (status, doc["state"]) == (200, "degraded")
        assert len(doc["reasons"]) == 1
        assert doc["reasons"][0].startswith("upstream_unreachable: http://127.0.0.1:")
    assert edge.counter("edge_health_state", state="degraded") == 1


# -- limits ------------------------------------------------------------------------------------


async def test_max_connections_refuses_the_next_connection_at_once(
    edges, origin_dir: Path, tmp_path, client
):
    data = put(origin_dir, "/v/t/a.m4s", blob(2000))
    edge = await edges(
        edge_config(tmp_path, [f"file://{origin_dir}"], limits={"max_connections": 2})
    )
    held = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(2)]
    try:
        await eventually(lambda: edge.counter("edge_connections_open") == 2)
        # The third connection is answered before it sends anything, and closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            answer = await asyncio.wait_for(reader.read(), 2.0)
        finally:
            writer.close()
            await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"\r\nRetry-After: 2\r\n" in answer
        assert b"\r\nConnection: close\r\n" in answer
        assert edge.counter("edge_overload_rejections_total", reason="connections") == 1
        # A response sent, though no request was read: counted with the others.
        assert edge.counter("edge_requests_total", status="503") == 1
        # Every reason is exported from 0 (None would mean no series, which rate() misses).
        sample = edge.edge.registry.get_sample_value
        assert sample("edge_overload_rejections_total", {"reason": "egress"}) == 0

        # The held connections are real and still served.
        r0, w0 = held[0]
        w0.write(b"GET /v/t/a.m4s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(r0.read(), 5.0)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.endswith(data)
        await eventually(lambda: edge.counter("edge_connections_open") == 1)
        # A freed slot is usable again.
        status, _, body = await get(client, edge.url + "/v/t/a.m4s")
        assert (status, body) == (200, data)
    finally:
        for _, w in held:
            w.close()
            await w.wait_closed()


async def test_max_egress_refuses_once_the_smoothed_rate_exceeds_it(
    edges, origin_dir: Path, tmp_path, client
):
    data = put(origin_dir, "/v/t/a.m4s", blob(20_000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"], limits={"max_egress": 1}))
    status, _, body = await get(client, edge.url + "/v/t/a.m4s")
    assert (status, body) == (200, data)  # the rate starts at 0
    deadline = time.monotonic() + 5.0
    while True:
        status, headers, body = await get(client, edge.url + "/v/t/a.m4s")
        if status != 200:
            break
        assert time.monotonic() < deadline, "egress limit never applied"
        await asyncio.sleep(0.05)
    assert status == 503
    assert headers["Retry-After"] == "2"
    assert b"egress" in body
    assert edge.counter("edge_overload_rejections_total", reason="egress") == 1
    assert edge.counter("edge_egress_bytes_per_second") > 1
    # /healthz stays reachable for the load balancer while egress is refused.
    assert (await health(client, edge.url))[0] == 200


# -- metrics ----------------------------------------------------------------------------------


def documented_metrics() -> dict[str, tuple[str, str | None]]:
    """``edge_<name>`` -> (type, label) from the table in edge/metrics.py's docstring."""
    doc = edge_metrics.__doc__
    assert doc is not None
    lines = doc.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("====")]
    assert len(rules) == 3, "expected a reStructuredText simple table"
    width = len(lines[rules[0]].split()[0])
    type_width = len(lines[rules[0]].split()[1])
    out: dict[str, tuple[str, str | None]] = {}
    for line in lines[rules[1] + 1 : rules[2]]:
        cell = line[:width].strip()
        if not cell:
            continue  # the meaning column continued
        kind = line[width:].split()[0]
        assert len(kind) <= type_width
        for part in cell.split(" / "):
            m = re.fullmatch(r"([a-z_]+)(?:\{([a-z_,]+)\})?", part.strip())
            assert m, part
            out["edge_" + m.group(1)] = (kind, m.group(2))
    return out


def family_name(name: str, kind: str) -> str:
    # The exposition format names a counter family without its "_total" suffix.
    return name.removesuffix("_total") if kind == "counter" else name


def test_metrics_table_is_parsed():
    table = documented_metrics()
    assert table["edge_requests_total"] == ("counter", "status")
    assert table["edge_evicted_bytes_total"] == ("counter", None)
    assert table["edge_cache_bytes_capacity"] == ("gauge", None)
    assert table["edge_ttfb_seconds"] == ("histo", "cache")
    assert len(table) == 39


async def scrape(client: aiohttp.ClientSession, base: str) -> dict:
    async with client.get(base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = (await r.read()).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


async def test_every_documented_metric_is_exported(edges, origin_dir: Path, tmp_path, client):
    data = put(origin_dir, "/v/t/a.m4s", blob(10_000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    assert (await edge.get(client, "/v/t/a.m4s"))[1]["X-Cache"] == "MISS"
    assert (await edge.get(client, "/v/t/a.m4s"))[1]["X-Cache"] == "HIT"

    # One miss and one hit of a 10 kB single-slice object, as the table describes them
    # (scraped from the admin port first: a scrape of the data port is a request too).
    f = await scrape(client, edge.admin)
    n = len(data)
    assert sample(f, "edge_requests_total", status="200") == 2
    assert sample(f, "edge_cache_lookups_total", result="miss") == 1
    assert sample(f, "edge_cache_lookups_total", result="hit") == 1
    assert sample(f, "edge_response_bytes_total", cache="miss") == n
    assert sample(f, "edge_response_bytes_total", cache="hit") == n
    assert sample(f, "edge_upstream_fetches_total") == 1
    assert sample(f, "edge_upstream_bytes_total") == n
    assert sample(f, "edge_fills_started_total") == 1
    assert sample(f, "edge_coalesced_waiters_total") == 0
    assert sample(f, "edge_inflight_fills") == 0
    assert sample(f, "edge_cache_objects") == 1
    assert n < sample(f, "edge_cache_bytes_used") < n + 1024  # body plus a small header
    assert sample(f, "edge_cache_bytes_capacity") == edge.config.cache.dirs[0].size
    assert sample(f, "edge_ttfb_seconds_count", cache="miss") == 1
    assert sample(f, "edge_ttfb_seconds_count", cache="hit") == 1
    assert sample(f, "edge_ttfb_seconds_bucket", cache="hit", le="+Inf") == 1
    assert sample(f, "edge_connections_total") >= 1
    assert sample(f, "edge_health_state", state="ok") == 1
    assert sample(f, "edge_health_state", state="draining") == 0

    table = documented_metrics()
    types = {"counter": "counter", "gauge": "gauge", "histo": "histogram"}
    for base in (edge.admin, edge.url):
        families = await scrape(client, base)
        for name, (kind, label) in table.items():
            family = families.get(family_name(name, kind))
            assert family is not None, f"{name} documented but not in /metrics on {base}"
            assert family.type == types[kind], name
            for s in family.samples:
                assert label is None or all(x in s.labels for x in label.split(",")), (name, s)
        undocumented = {f for f in families if f.startswith("edge_")} - {
            family_name(name, kind) for name, (kind, _) in table.items()
        }
        assert not undocumented, undocumented


# -- purge ------------------------------------------------------------------------------------


async def test_purge_removes_every_slice_of_the_object(edges, origin_dir: Path, tmp_path, client):
    # 600 kB in 256 KiB slices: three slice files.
    data = put(origin_dir, "/v/t/a.m4s", blob(600_000))
    other = put(origin_dir, "/v/t/b.m4s", blob(1000, seed=1))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    await edge.get(client, "/v/t/a.m4s")
    await edge.get(client, "/v/t/b.m4s")
    assert (await edge.get(client, "/v/t/a.m4s"))[1]["X-Cache"] == "HIT"
    assert edge.counter("edge_cache_objects") == 4

    purge = edge.admin + "/admin/purge"
    async with client.post(purge, params={"path": "/v/t/a.m4s"}) as r:
        assert r.status == 401
    for bad in ({"path": "v/t/a.m4s"}, {"path": ""}, {}):
        async with client.post(purge, params=bad, headers=AUTH) as r:
            assert r.status == 400, bad
    assert edge.counter("edge_cache_objects") == 4

    async with client.post(purge, params={"path": "/v/t/a.m4s"}, headers=AUTH) as r:
        assert r.status == 200
        assert await r.json() == {"path": "/v/t/a.m4s", "slices_removed": 3}
    assert edge.counter("edge_cache_objects") == 1
    status, headers, body = await edge.get(client, "/v/t/a.m4s")
    assert (status, headers["X-Cache"], body) == (200, "MISS", data)
    status, headers, body = await edge.get(client, "/v/t/b.m4s")
    assert (status, headers["X-Cache"], body) == (200, "HIT", other)


async def test_purge_removes_slices_cached_without_the_first(
    edges, origin_dir: Path, tmp_path, client
):
    slice_size = 256 * 1024
    data = put(origin_dir, "/v/t/a.mp4", blob(3 * slice_size, seed=3))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"], slice_size=slice_size))
    rng = {"Range": f"bytes={2 * slice_size}-{2 * slice_size + 99}"}
    await edge.get(client, "/v/t/a.mp4", headers=rng)  # a seek: only slice 2 is filled
    assert edge.counter("edge_cache_objects") == 1
    async with client.post(
        edge.admin + "/admin/purge", params={"path": "/v/t/a.mp4"}, headers=AUTH
    ) as r:
        assert r.status == 200
        assert (await r.json())["slices_removed"] == 1
    status, headers, body = await edge.get(client, "/v/t/a.mp4", headers=rng)
    assert (status, body) == (206, data[2 * slice_size : 2 * slice_size + 100])
    assert headers["X-Cache"] == "MISS"


# -- upstream credential ----------------------------------------------------------------------


async def test_upstream_credential_is_sent_on_fills(edges, origin: FakeOrigin, tmp_path, client):
    data = origin.files["/v/t/a.m4s"] = blob(3000)
    origin.require_auth = "fill-secret"
    cred = tmp_path / "fill.token"
    cred.write_text("# fill credential\nfill-secret\n")

    (tmp_path / "with").mkdir()
    config = edge_config(tmp_path / "with", [origin.url])
    config = dataclasses.replace(
        config,
        upstreams=tuple(dataclasses.replace(u, credential_file=cred) for u in config.upstreams),
    )
    with_cred = await edges(config)
    (tmp_path / "without").mkdir()
    without: RunningEdge = await edges(edge_config(tmp_path / "without", [origin.url]))

    status, _, body = await without.get(client, "/v/t/a.m4s")
    assert status == 502
    assert origin.fetches() == 2  # refused, retried once, refused again
    assert without.counter("edge_upstream_failures_total", reason="status_401") == 2
    assert without.counter("edge_cache_objects") == 0

    status, _, body = await with_cred.get(client, "/v/t/a.m4s")
    assert (status, body) == (200, data)
    assert origin.fetches() == 3
    assert with_cred.counter("edge_upstream_failures_total", reason="status_401") == 0


# -- stopping ---------------------------------------------------------------------------------


class HoldingExecutor(ThreadPoolExecutor):
    """The loop's default executor, holding back every ``os.pread`` until ``release``."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.held: list[tuple[Future, Callable[[], object]]] = []
        self.holding = asyncio.Event()

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        if fn is os.pread:
            fut: Future = Future()
            self.held.append((fut, functools.partial(fn, *args, **kwargs)))
            self.holding.set()
            return fut
        return super().submit(fn, *args, **kwargs)

    def release(self) -> None:
        for fut, call in self.held:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(call())
                except OSError as exc:  # the descriptor was closed under it: expected
                    fut.set_exception(exc)


def open_fds_on(path: str) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == path
    return n


async def test_stopping_during_a_fill_closes_the_origin_file(origin_dir: Path, tmp_path, client):
    put(origin_dir, "/v/t/a.m4s", blob(5000))
    origin_file = str(origin_dir / "v/t/a.m4s")
    executor = HoldingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    edge = await start_edge(
        edge_config(tmp_path, [f"file://{origin_dir}"], limits={"drain_timeout": 0.1})
    )
    request = asyncio.create_task(client.get(edge.url + "/v/t/a.m4s"))
    try:
        # The fill has opened the origin file and is stuck reading it when the edge stops.
        await asyncio.wait_for(executor.holding.wait(), 5.0)
        assert open_fds_on(origin_file) == 1
    finally:
        await edge.stop()
        left_open = open_fds_on(origin_file)
        executor.release()
        with contextlib.suppress(aiohttp.ClientError):
            (await request).release()
    assert left_open == 0
