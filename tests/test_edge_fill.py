"""The nightly fill: real edges on loopback fill from steering's manifests.

Steering is a small stand-in serving the contract's manifest JSON (counting requests); the
origin is a directory (file://) or a loopback HTTP origin; peers are real edges of the site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xxhash
from aiohttp import web

from edge import metrics as edge_metrics
from edge.config import FillConfig, SteeringConfig
from edge.fill import STATE_FILE
from edge.fillplan import FillObject, FillWindow, WorkItem, parse_manifest
from edge.store import slice_key, write_atomic

from .conftest import (
    ADMIN_TOKEN,
    ROOT,
    RunningEdge,
    blob,
    edge_config,
    free_port,
    put,
    start_edge,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KB = 1000


# -- stand-ins ----------------------------------------------------------------------------


class Steering:
    """Serves /fill/manifest/<edge> from ``manifests`` (503 when absent) and takes heartbeats.

    ``off``: answer 404, as a steering service without fill does.
    """

    token = "steering-heartbeat-token-0123"

    def __init__(self) -> None:
        self.manifests: dict[str, dict[str, Any]] = {}
        self.off = False
        self.requests: list[str] = []
        self.heartbeats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def manifest(self, request: web.Request) -> web.Response:
        edge = request.match_info["edge"]
        self.requests.append(edge)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401)
        if self.off:
            return web.Response(status=404, text="fill is disabled (no fill.popularity_url)\n")
        doc = self.manifests.get(edge)
        if doc is None:
            return web.Response(status=503, headers={"Retry-After": "5"})
        return web.json_response(doc)

    async def heartbeat(self, request: web.Request) -> web.Response:
        await self.heartbeats.put(await request.json())
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/fill/manifest/{edge}", self.manifest)
        app.router.add_post("/heartbeat", self.heartbeat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def steering() -> AsyncIterator[Steering]:
    s = Steering()
    await s.start()
    yield s
    await s.stop()


class HoldingOrigin:
    """An HTTP origin with Range support whose answers for ``hold`` paths wait for ``release``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.hold: set[str] = set()
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def fetches(self, path: str) -> int:
        return self.requests.count(path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append(path)
        data = self.files.get(path)
        if data is None:
            return web.Response(status=404)
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        assert m is not None
        start, end = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
        if path in self.hold:
            self.held.set()
            await self.release.wait()
        return web.Response(
            status=206,
            body=data[start : end + 1],
            headers={
                "ETag": '"v1"',
                "Content-Range": f"bytes {start}-{end}/{len(data)}",
                "Content-Type": "video/iso.segment",
            },
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


class Peer504:
    """A stand-in peer that holds nothing: records each path asked and answers 504."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(status=504)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- helpers ----------------------------------------------------------------------------------


def xxh(data: bytes) -> str:
    return xxhash.xxh64_hexdigest(data)


def manifest(
    edge: str,
    objects: list[tuple[str, bytes, tuple[str, ...], float]],
    peers: list[RunningEdge] | None = None,
    *,
    wrong: set[str] | None = None,
) -> dict[str, Any]:
    """The contract's manifest JSON for ``edge``: (path, data, holders, score) objects."""
    objs = [
        {
            "key": path.split("/")[2],
            "path": path,
            "size": len(data),
            "xxh64": "0123456789abcdef" if path in (wrong or set()) else xxh(data),
            "score": score,
            "holders": list(holders),
        }
        for path, data, holders, score in objects
    ]
    objs.sort(key=lambda o: (-o["score"], o["path"]))
    basis = "".join(f"{o['path']}\0{o['xxh64']}\n" for o in sorted(objs, key=lambda o: o["path"]))
    return {
        "edge": edge,
        "site": "paris",
        "version": xxhash.xxh64_hexdigest(basis.encode()),
        "generated_at": time.time(),
        "capacity": 10**9,
        "bytes": sum(o["size"] for o in objs),
        "peers": [{"edge": p.config.node_id, "url": p.url} for p in peers or []],
        "objects": objs,
    }


def window_around(inside: bool) -> FillWindow:
    """A UTC window that contains now (or starts two hours from now)."""
    m = int(time.time() // 60) % 1440
    if inside:
        return FillWindow((m - 60) % 1440, (m + 60) % 1440)
    return FillWindow((m + 120) % 1440, (m + 180) % 1440)


def fill_config(
    tmp_path: Path,
    name: str,
    upstreams: list[str],
    steering: Steering,
    *,
    inside: bool = False,
    signed: bool = False,
    cache_size: int = 256 * 1024 * 1024,
    **fill: Any,
) -> Any:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    base = edge_config(d, upstreams, signed=signed, cache_size=cache_size)
    token = d / "steering.token"
    token.write_text(steering.token + "\n")
    return dataclasses.replace(
        base,
        node_id=name,
        site="paris",
        steering=SteeringConfig(url=steering.url, credential_file=token, interval=60.0),
        fill=FillConfig(window=window_around(inside), timezone="UTC", **fill),
    )


async def fill_now(client: aiohttp.ClientSession, edge: RunningEdge) -> dict[str, Any]:
    """POST /admin/fill and wait for that run to end; returns the status."""
    assert edge.edge.fill is not None
    async with client.post(edge.admin + "/admin/fill", headers=AUTH) as r:
        assert r.status == 202, await r.text()
        body = await r.json()
        assert body["state"] == "filling"
    await asyncio.wait_for(edge.edge.fill.finished.wait(), 30)
    async with client.get(edge.admin + "/admin/fill") as r:
        assert r.status == 200
        return dict(await r.json())


# -- only-if-cached ---------------------------------------------------------------------------


async def test_only_if_cached_answers_from_cache_or_504_without_upstream(
    edges, origin, tmp_path, client
):
    data = origin.files["/v/t/a.m4s"] = blob(600 * KB, seed=1)  # three 256 KiB slices
    edge = await edges(edge_config(tmp_path, [origin.url]))
    oic = {"Cache-Control": "max-age=0, Only-If-Cached"}  # directive names: any case
    async with client.get(edge.url + "/v/t/a.m4s", headers=oic) as r:
        assert r.status == 504
    assert origin.fetches() == 0
    assert edge.counter("edge_only_if_cached_total", result="miss") == 1
    # Only the first slice cached: a whole-object request still needs the others.
    await edge.get(client, "/v/t/a.m4s", headers={"Range": "bytes=0-99"})
    assert origin.fetches() == 1
    async with client.get(edge.url + "/v/t/a.m4s", headers=oic) as r:
        assert r.status == 504
    async with client.get(edge.url + "/v/t/a.m4s", headers={**oic, "Range": "bytes=10-19"}) as r:
        assert (r.status, await r.read()) == (206, data[10:20])
    assert origin.fetches() == 1
    await edge.get(client, "/v/t/a.m4s")
    async with client.get(edge.url + "/v/t/a.m4s", headers=oic) as r:
        assert (r.status, r.headers["X-Cache"], await r.read()) == (200, "HIT", data)
    assert edge.counter("edge_only_if_cached_total", result="miss") == 2
    assert edge.counter("edge_only_if_cached_total", result="hit") == 2
    assert origin.fetches() == 3


async def test_only_if_cached_still_checks_the_token(edges, origin_dir, tmp_path, client):
    put(origin_dir, "/v/t/a.m4s", blob(1000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"], signed=True))
    async with client.get(
        edge.url + "/v/t/a.m4s", headers={"Cache-Control": "only-if-cached"}
    ) as r:
        assert r.status == 403
    async with client.get(
        edge.signed("/v/t/a.m4s"), headers={"Cache-Control": "only-if-cached"}
    ) as r:
        assert r.status == 504
    assert edge.counter("edge_only_if_cached_total", result="miss") == 1


# -- fleet --------------------------------------------------------------------------------------


async def test_two_edges_of_a_site_peer_fill_before_origin(
    edges, origin_dir, tmp_path, client, steering
):
    shared = put(origin_dir, "/v/a/1080p/seg1.m4s", blob(600 * KB, seed=2))
    only1 = put(origin_dir, "/v/b/1080p/seg1.m4s", blob(300 * KB, seed=3))
    only2 = put(origin_dir, "/v/c/720p/seg1.m4s", blob(200 * KB, seed=4))
    origin = [f"file://{origin_dir}"]
    e1 = await edges(fill_config(tmp_path, "e1", origin, steering, signed=True))
    e2 = await edges(fill_config(tmp_path, "e2", origin, steering, signed=True))
    steering.manifests["e1"] = manifest(
        "e1",
        [
            ("/v/a/1080p/seg1.m4s", shared, ("e1", "e2"), 9.0),
            ("/v/b/1080p/seg1.m4s", only1, ("e1",), 3.0),
        ],
        [e2],
    )
    steering.manifests["e2"] = manifest(
        "e2",
        [
            ("/v/a/1080p/seg1.m4s", shared, ("e1", "e2"), 9.0),
            ("/v/c/720p/seg1.m4s", only2, ("e2",), 1.0),
        ],
        [e1],
    )
    # e1 is the first holder of everything it has: its peer has nothing yet (504), so origin.
    st1 = await fill_now(client, e1)
    assert st1["state"] == "done" and st1["objects_left"] == 0, st1
    assert e1.counter("edge_fill_bytes_total", source="origin") == len(shared) + len(only1)
    assert e1.counter("edge_fill_bytes_total", source="peer") == 0
    assert e1.counter("edge_fill_objects_total", source="peer", result="not_cached") == 2
    assert e2.counter("edge_only_if_cached_total", result="miss") == 2
    assert e2.counter("edge_upstream_fetches_total") == 0  # a peer never fetches upstream

    # e2 gets the shared object from e1 (signed, only-if-cached), the rest from the origin.
    st2 = await fill_now(client, e2)
    assert st2["state"] == "done" and st2["objects_left"] == 0, st2
    assert e2.counter("edge_fill_bytes_total", source="peer") == len(shared)
    assert e2.counter("edge_fill_bytes_total", source="origin") == len(only2)
    assert e2.counter("edge_fill_objects_total", source="peer", result="ok") == 1
    assert e1.counter("edge_only_if_cached_total", result="hit") == 3  # one per slice
    assert e1.counter("edge_token_rejections_total", reason="missing") == 0
    assert st2["bytes_by_source"] == {"peer": len(shared), "parent": 0, "origin": len(only2)}
    for edge, path, data in (
        (e1, "/v/b/1080p/seg1.m4s", only1),
        (e2, "/v/a/1080p/seg1.m4s", shared),
    ):
        async with client.get(edge.signed(path)) as r:
            assert (r.headers["X-Cache"], await r.read()) == ("HIT", data)
    assert e2.counter("edge_fill_pinned_bytes") > len(shared) + len(only2)
    assert e2.counter("edge_fill_manifest_objects") == 2
    assert e2.counter("edge_fill_pending_objects") == 0
    assert e2.counter("edge_fill_running") == 0
    # GET /admin/stats after a fill (its per-object counters were tuple-keyed: a 500).
    async with client.get(e2.admin + "/admin/stats") as r:
        assert r.status == 200, await r.text()
        fill = (await r.json())["fill"]
    assert fill["objects"]["peer:ok"] == 1 and fill["bytes"]["peer"] == len(shared)


async def test_parent_is_asked_after_peers_and_before_origin(
    edges, origin, tmp_path, client, steering
):
    data = origin.files["/v/p/x.m4s"] = blob(300 * KB, seed=5)
    parent = await edges(edge_config(tmp_path, [origin.url]))  # a mid-tier edge, pulls through
    from edge.config import FillParent

    cfg = fill_config(tmp_path, "e1", [origin.url + "/unused"], steering)
    cfg = dataclasses.replace(
        cfg, fill=dataclasses.replace(cfg.fill, parents=(FillParent(parent.url),))
    )
    e1 = await edges(cfg)
    steering.manifests["e1"] = manifest("e1", [("/v/p/x.m4s", data, ("e1",), 1.0)])
    st = await fill_now(client, e1)
    assert st["state"] == "done", st
    assert e1.counter("edge_fill_bytes_total", source="parent") == len(data)
    assert e1.counter("edge_fill_bytes_total", source="origin") == 0
    assert parent.counter("edge_cache_objects") == 2


async def test_checksum_mismatch_is_rejected_purged_and_counted(
    edges, origin_dir, tmp_path, client, steering
):
    good = put(origin_dir, "/v/g/a.m4s", blob(100 * KB, seed=6))
    bad = put(origin_dir, "/v/h/a.m4s", blob(400 * KB, seed=7))
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
    steering.manifests["e1"] = manifest(
        "e1",
        [("/v/g/a.m4s", good, ("e1",), 2.0), ("/v/h/a.m4s", bad, ("e1",), 1.0)],
        wrong={"/v/h/a.m4s"},
    )
    st = await fill_now(client, e1)
    assert st["state"] == "error" and st["objects_left"] == 1, st
    assert "1 objects could not be filled" in st["last_error"]
    assert e1.counter("edge_fill_verify_failures_total") == 1
    assert e1.counter("edge_fill_objects_total", source="origin", result="checksum") == 1
    assert e1.counter("edge_fill_objects_total", source="origin", result="ok") == 1
    store = e1.edge.store
    assert store is not None
    assert not store.has_slice("/v/h/a.m4s", 0)  # purged
    assert store.has_slice("/v/g/a.m4s", 0)
    assert e1.counter("edge_fill_pending_bytes") == len(bad)


async def test_an_interrupted_fill_resumes_without_downloading_again(tmp_path, client, steering):
    origin = HoldingOrigin()
    await origin.start()
    paths = [f"/v/r/{i}.m4s" for i in range(4)]
    datas = [blob(300 * KB, seed=10 + i) for i in range(4)]
    for p, d in zip(paths, datas, strict=True):
        origin.files[p] = d
    origin.hold = {paths[2]}
    steering.manifests["e1"] = manifest(
        "e1", [(p, d, ("e1",), 10.0 - i) for i, (p, d) in enumerate(zip(paths, datas, strict=True))]
    )
    cfg = fill_config(tmp_path, "e1", [origin.url], steering, concurrency=1)
    edge = await start_edge(cfg)
    try:
        async with client.post(edge.admin + "/admin/fill", headers=AUTH) as r:
            assert r.status == 202
        await asyncio.wait_for(origin.held.wait(), 10)
        async with client.post(edge.admin + "/admin/fill", headers=AUTH) as r:
            assert r.status == 409  # one runs
        async with client.get(edge.admin + "/admin/fill") as r:
            st = await r.json()
        assert (st["running"], st["objects_done"]) == (True, 2), st
        assert edge.counter("edge_fill_running") == 1
    finally:
        await edge.stop()  # mid-object: the runner is cancelled
    assert (tmp_path / "e1" / "cache0" / STATE_FILE).exists()
    origin.hold = set()
    before = {p: origin.fetches(p) for p in paths}
    assert before[paths[0]] == before[paths[1]] == 2  # two slices each

    edge = await start_edge(cfg)
    try:
        fill = edge.edge.fill
        assert fill is not None
        async with asyncio.timeout(10):
            while fill.manifest is None:  # the state file is read as the runner starts
                await asyncio.sleep(0.01)
        assert fill.status()["objects_done"] == 2
        st = await fill_now(client, edge)
        assert st["state"] == "done", st
        assert [origin.fetches(p) - before[p] for p in paths[:2]] == [0, 0]
        assert edge.counter("edge_fill_objects_total", source="origin", result="ok") == 2
        assert edge.counter("edge_fill_bytes_total", source="origin") <= len(datas[2]) + len(
            datas[3]
        )
        assert edge.counter("edge_fill_bytes_total", source="origin") >= len(datas[3])
    finally:
        await edge.stop()
        await origin.stop()


async def test_the_rate_limit_holds(edges, origin_dir, tmp_path, client, steering):
    rate, burst = 400_000, 64 * 1024
    objects = [
        (
            f"/v/s/{i}.m4s",
            put(origin_dir, f"/v/s/{i}.m4s", blob(150 * KB, seed=30 + i)),
            ("e1",),
            1.0,
        )
        for i in range(4)
    ]
    total = sum(len(d) for _, d, _, _ in objects)
    e1 = await edges(
        fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering, rate=rate, burst=burst)
    )
    steering.manifests["e1"] = manifest("e1", objects)
    t0 = time.monotonic()
    st = await fill_now(client, e1)
    elapsed = time.monotonic() - t0
    assert st["state"] == "done"
    assert e1.counter("edge_fill_bytes_total", source="origin") == total
    assert elapsed >= (total - burst) / rate, elapsed


async def test_pins_survive_eviction_and_are_released_with_the_manifest(
    edges, origin, tmp_path, client, steering
):
    pinned = origin.files["/v/k/keep.m4s"] = blob(100 * KB, seed=40)
    for i in range(8):
        origin.files[f"/v/o/{i}.m4s"] = blob(100 * KB, seed=50 + i)
    e1 = await edges(fill_config(tmp_path, "e1", [origin.url], steering, cache_size=450_000))
    steering.manifests["e1"] = manifest("e1", [("/v/k/keep.m4s", pinned, ("e1",), 1.0)])
    assert (await fill_now(client, e1))["state"] == "done"
    for i in range(8):
        await e1.get(client, f"/v/o/{i}.m4s")
    assert e1.counter("edge_evictions_total") > 0
    status, headers, body = await e1.get(client, "/v/k/keep.m4s")
    assert (status, headers["X-Cache"], body) == (200, "HIT", pinned)
    assert e1.counter("edge_fill_pinned_bytes") > len(pinned)

    # Tomorrow's manifest drops it: ordinary LRU content again, evicted under pressure.
    other = origin.files["/v/k/new.m4s"] = blob(10 * KB, seed=60)
    steering.manifests["e1"] = manifest("e1", [("/v/k/new.m4s", other, ("e1",), 1.0)])
    assert (await fill_now(client, e1))["state"] == "done"
    assert e1.counter("edge_fill_pinned_bytes") < 20 * KB
    for i in range(8):
        await e1.get(client, f"/v/o/{i}.m4s")
    _, headers, _ = await e1.get(client, "/v/k/keep.m4s")
    assert headers["X-Cache"] == "MISS"


# -- window, heartbeat, metrics, CLI --------------------------------------------------------


async def test_outside_the_window_the_fill_waits_and_now_runs_it(
    edges, origin_dir, tmp_path, client, steering
):
    data = put(origin_dir, "/v/w/a.m4s", blob(1000, seed=70))
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
    steering.manifests["e1"] = manifest("e1", [("/v/w/a.m4s", data, ("e1",), 1.0)])
    fill = e1.edge.fill
    assert fill is not None
    async with asyncio.timeout(5):
        while fill.state != "waiting":
            await asyncio.sleep(0.01)
    st = fill.status()
    assert st["next_start"] > time.time() + 3600
    assert steering.requests == []
    st = await fill_now(client, e1)
    assert st["state"] == "done" and steering.requests == ["e1"]


async def test_inside_the_window_the_fill_starts_by_itself_and_reports_in_heartbeats(
    edges, origin_dir, tmp_path, client, steering
):
    data = put(origin_dir, "/v/w/a.m4s", blob(1000, seed=71))
    steering.manifests["e1"] = manifest("e1", [("/v/w/a.m4s", data, ("e1",), 1.0)])
    cfg = fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering, inside=True)
    cfg = dataclasses.replace(cfg, steering=dataclasses.replace(cfg.steering, interval=0.05))
    e1 = await edges(cfg)
    fill = e1.edge.fill
    assert fill is not None
    await asyncio.wait_for(fill.finished.wait(), 10)
    assert fill.state == "done" and steering.requests == ["e1"]
    async with asyncio.timeout(5):
        while True:
            doc = await steering.heartbeats.get()
            if doc["fill"]["state"] == "done":
                break
    assert doc["fill"] == {
        "state": "done",
        "manifest": steering.manifests["e1"]["version"],
        "objects_total": 1,
        "objects_done": 1,
        "bytes_total": len(data),
        "bytes_done": len(data),
        "window": str(cfg.fill.window),
    }


async def test_manifest_unavailable_keeps_the_current_one(
    edges, origin_dir, tmp_path, client, steering
):
    data = put(origin_dir, "/v/u/a.m4s", blob(1000, seed=72))
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
    st = await fill_now(client, e1)  # steering has nothing yet: 503
    assert st["state"] == "error" and st["manifest"] is None
    assert "503" in st["last_error"]
    steering.manifests["e1"] = manifest("e1", [("/v/u/a.m4s", data, ("e1",), 1.0)])
    version = steering.manifests["e1"]["version"]
    assert (await fill_now(client, e1))["manifest"] == version
    del steering.manifests["e1"]
    st = await fill_now(client, e1)
    assert st["manifest"] == version and st["objects_done"] == 1


async def test_admin_fill_needs_the_credential_and_an_enabled_fill(
    edges, origin_dir, tmp_path, client, steering
):
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
    async with client.post(e1.admin + "/admin/fill") as r:
        assert r.status == 401
    plain = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    async with client.post(plain.admin + "/admin/fill", headers=AUTH) as r:
        assert r.status == 409
        assert "disabled" in await r.text()
    async with client.get(plain.admin + "/admin/fill") as r:
        assert (await r.json())["enabled"] is False


def documented_fill_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    doc = edge_metrics.__doc__
    assert doc is not None
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in doc.splitlines():
        m = re.match(
            r"((?:only_if_cached|fill_(?!resumes))\S*(?: / \S+)?)\s+(counter|gauge)\s", line
        )
        if m:
            for part in m.group(1).split(" / "):
                name, _, labels = part.partition("{")
                out["edge_" + name] = (
                    m.group(2),
                    tuple(filter(None, labels.rstrip("}").split(","))),
                )
    return out


async def test_fill_metrics_are_documented_and_exported(
    edges, origin_dir, tmp_path, client, steering
):
    from prometheus_client.parser import text_string_to_metric_families

    table = documented_fill_metrics()
    assert len(table) == 10, table
    assert table["edge_fill_objects_total"] == ("counter", ("source", "result"))
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
    async with client.get(e1.admin + "/metrics") as r:
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    for name, (kind, _) in table.items():
        family = families.get(name.removesuffix("_total") if kind == "counter" else name)
        assert family is not None and family.type == kind, name


async def test_cli_fill_status_and_now(edges, origin_dir, tmp_path, steering):
    data = put(origin_dir, "/v/c/a.m4s", blob(5000, seed=80))
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
    steering.manifests["e1"] = manifest("e1", [("/v/c/a.m4s", data, ("e1",), 1.0)])
    port = e1.admin.rsplit(":", 1)[1]
    conf = tmp_path / "cli.yaml"
    conf.write_text(
        f"upstreams:\n  - url: file://{origin_dir}\nsigning:\n  public_prefixes: [/]\n"
        f'admin:\n  listen: "127.0.0.1:{port}"\n'
        f"  credential_file: {tmp_path / 'e1' / 'admin-token'}\n"
    )

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge",
            "fill",
            *args,
            "--config",
            str(conf),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("--status")
    assert code == 0, err
    assert "fill waiting" in out or "fill idle" in out
    assert json.loads(out.split("\n", 1)[1])["objects_left"] == 0
    code, out, err = await cli("--now")
    assert code == 0, err
    assert "fill done" in out and "1/1 objects" in out and "0 objects" in out
    code, out, err = await cli("--status")
    assert code == 0 and "fill done" in out

    # Its reader gone (`fill --status | head -0`): exit as a shell tool does, no blame on the
    # edge's admin API and no traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "fill", "--status", "--config", str(conf),
            cwd=ROOT, stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err_b = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 128 + signal.SIGPIPE, err_b
    assert err_b == b"", err_b


async def test_a_player_never_waits_behind_the_fill_rate_limit(
    edges, origin_dir, tmp_path, client, steering
):
    rate, burst = 60_000, 64 * 1024
    data = put(origin_dir, "/v/q/a.m4s", blob(600 * KB, seed=90))  # 9 s at the fill's rate
    e1 = await edges(
        fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering, rate=rate, burst=burst)
    )
    steering.manifests["e1"] = manifest("e1", [("/v/q/a.m4s", data, ("e1",), 1.0)])
    fill = e1.edge.fill
    assert fill is not None
    async with client.post(e1.admin + "/admin/fill", headers=AUTH) as r:
        assert r.status == 202
    async with asyncio.timeout(10):
        while e1.counter("edge_fill_bytes_total", source="origin") == 0:
            await asyncio.sleep(0.01)
    # The fill is now held by its rate limiter inside the first slice; a player joins it.
    t0 = time.monotonic()
    async with client.get(e1.url + "/v/q/a.m4s") as r:
        assert await r.read() == data
    assert time.monotonic() - t0 < (len(data) - burst) / rate / 3
    await asyncio.wait_for(fill.finished.wait(), 20)
    assert fill.state == "done"


# -- review findings: one bad object, peers, manifests, pins, the loop -------------------------


def fill_objects(edge: RunningEdge, source: str, result: str) -> float:
    return edge.counter("edge_fill_objects_total", source=source, result=result)


async def test_a_file_name_with_two_dots_is_left_out_not_the_night(
    edges, origin_dir, tmp_path, client, steering
):
    # "movie..final.mp4" is a fine file name, but no peer token can be signed for it: it used
    # to crash the whole fill, every night (the order is the same each night).
    dots = put(origin_dir, "/v/m/movie..final.mp4", blob(1000, seed=100))
    good = put(origin_dir, "/v/m/movie.mp4", blob(2000, seed=101))
    origin = [f"file://{origin_dir}"]
    e1 = await edges(fill_config(tmp_path, "e1", origin, steering, signed=True))
    e2 = await edges(fill_config(tmp_path, "e2", origin, steering, signed=True))
    steering.manifests["e2"] = manifest(
        "e2",
        [
            ("/v/m/movie..final.mp4", dots, ("e2",), 9.0),
            ("/v/m/movie.mp4", good, ("e2",), 1.0),
        ],
        [e1],
    )
    st = await fill_now(client, e2)
    assert st["state"] == "done" and (st["objects_total"], st["objects_done"]) == (1, 1), st
    assert st["objects_skipped"] == {"bad_path": 1, "over_capacity": 0}
    assert fill_objects(e2, "manifest", "bad_path") == 1
    assert fill_objects(e2, "peer", "not_cached") == 1  # the good one: peer asked, signed
    assert fill_objects(e2, "origin", "ok") == 1


async def test_whatever_a_source_throws_is_counted_and_the_next_source_tried(
    edges, origin_dir, tmp_path, client, steering, monkeypatch, caplog
):
    data = put(origin_dir, "/v/x/a.m4s", blob(3000, seed=102))
    origin = [f"file://{origin_dir}"]
    e1 = await edges(fill_config(tmp_path, "e1", origin, steering, signed=True))
    e2 = await edges(fill_config(tmp_path, "e2", origin, steering, signed=True))
    steering.manifests["e1"] = manifest("e1", [("/v/x/a.m4s", data, ("e2", "e1"), 1.0)], [e2])
    fill = e1.edge.fill
    assert fill is not None
    real = fill.puller.prefetch
    calls = 0

    async def buggy_once(path: str, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug somewhere below")
        return await real(path, **kw)

    monkeypatch.setattr(fill.puller, "prefetch", buggy_once)
    with caplog.at_level(logging.ERROR, logger="edge.fill"):
        st = await fill_now(client, e1)
    assert st["state"] == "done", st
    assert fill_objects(e1, "peer", "error") == 1
    assert fill_objects(e1, "origin", "ok") == 1
    crashed = [r for r in caplog.records if "event=fill_source_crashed" in r.getMessage()]
    assert len(crashed) == 1 and crashed[0].exc_info is not None  # with the traceback

    # A path no token can be signed for (the manifest rule leaves those out; defence in
    # depth): the peers are not asked, the parents and the origin are.
    item = WorkItem(FillObject("x", "/v/x/a..b.m4s", 10, "0" * 16, 1.0, ("e2",)), ("e2",))
    assert [kind for kind, _, _ in fill._sources(item)] == ["origin"]
    assert fill_objects(e1, "peer", "token_failed") == 1


async def test_a_peer_url_with_a_path_prefix_is_accepted_and_used(
    edges, origin_dir, tmp_path, client, steering
):
    peer = Peer504()
    await peer.start()
    try:
        data = put(origin_dir, "/v/y/a.m4s", blob(1000, seed=103))
        e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
        doc = manifest("e1", [("/v/y/a.m4s", data, ("e2", "e1"), 1.0)])
        doc["peers"] = [{"edge": "e2", "url": peer.url + "/cdn/"}]
        steering.manifests["e1"] = doc
        st = await fill_now(client, e1)
        assert st["state"] == "done" and st["manifest"] == doc["version"], st
        assert peer.paths == ["/cdn/v/y/a.m4s"]
        assert fill_objects(e1, "peer", "not_cached") == 1
    finally:
        await peer.stop()


async def test_a_manifest_with_the_same_version_still_brings_new_peers(
    edges, origin_dir, tmp_path, client, steering
):
    data = put(origin_dir, "/v/z/a.m4s", blob(1000, seed=104))
    origin = [f"file://{origin_dir}"]
    e1 = await edges(fill_config(tmp_path, "e1", origin, steering))
    e2 = await edges(fill_config(tmp_path, "e2", origin, steering))
    objects = [("/v/z/a.m4s", data, ("e1",), 1.0)]
    steering.manifests["e1"] = manifest("e1", objects)
    assert (await fill_now(client, e1))["state"] == "done"
    # Steering's version hashes paths and checksums: a new peer keeps it.
    doc = steering.manifests["e1"] = manifest("e1", objects, [e2])
    await fill_now(client, e1)
    fill = e1.edge.fill
    assert fill is not None and fill.manifest is not None
    assert [p.edge for p in fill.manifest.peers] == list(fill._peers) == ["e2"]
    saved = json.loads((tmp_path / "e1" / "cache0" / STATE_FILE).read_text())
    assert saved["manifest"]["peers"] == doc["peers"]


async def test_an_unreadable_steering_credential_is_retried_like_an_outage(
    edges, origin_dir, tmp_path, client, steering
):
    data = put(origin_dir, "/v/u/a.m4s", blob(1000, seed=105))
    cfg = fill_config(
        tmp_path, "e1", [f"file://{origin_dir}"], steering, inside=True, manifest_retry=0.05
    )
    e1 = await edges(cfg)
    fill = e1.edge.fill
    assert fill is not None
    async with asyncio.timeout(5):
        while len(steering.requests) < 2:  # 503s: retried
            await asyncio.sleep(0.01)
    token = tmp_path / "e1" / "steering.token"
    token.write_text("# being rotated\n")  # no token in it: ValueError
    async with asyncio.timeout(5):
        while "steering credential" not in (fill.last_error or ""):
            await asyncio.sleep(0.01)
    token.unlink()  # gone: OSError
    asked = len(steering.requests)
    await asyncio.sleep(0.3)
    assert fill.running and not fill.finished.is_set()  # still trying, not crashed
    assert len(steering.requests) == asked
    token.write_text(steering.token + "\n")
    steering.manifests["e1"] = manifest("e1", [("/v/u/a.m4s", data, ("e1",), 1.0)])
    await asyncio.wait_for(fill.finished.wait(), 10)
    assert fill.state == "done", fill.status()


@pytest.mark.parametrize("how", ["state_lost", "node_id_changed"])
async def test_pins_are_reconciled_when_there_is_no_previous_manifest(
    tmp_path, client, steering, origin, how
):
    keep = origin.files["/v/k/keep.m4s"] = blob(100 * KB, seed=110)
    new = origin.files["/v/k/new.m4s"] = blob(10 * KB, seed=111)
    cfg = fill_config(tmp_path, "e1", [origin.url], steering)
    steering.manifests["e1"] = manifest("e1", [("/v/k/keep.m4s", keep, ("e1",), 1.0)])
    edge = await start_edge(cfg)
    try:
        assert (await fill_now(client, edge))["state"] == "done"
    finally:
        await edge.stop()
    if how == "state_lost":
        (tmp_path / "e1" / "cache0" / STATE_FILE).unlink()
    else:
        cfg = dataclasses.replace(cfg, node_id="e1b")
    me = cfg.node_id
    steering.manifests[me] = manifest(me, [("/v/k/new.m4s", new, (me,), 1.0)])
    edge = await start_edge(cfg)
    try:
        fill, store = edge.edge.fill, edge.edge.store
        assert fill is not None and store is not None
        await asyncio.sleep(0.1)  # the runner has read (or ignored) the state file
        assert fill.manifest is None  # another edge's manifest is not filled from
        assert edge.counter("edge_fill_pinned_bytes") > len(keep)  # pins.keys survived
        assert (await fill_now(client, edge))["state"] == "done"
        assert len(new) < edge.counter("edge_fill_pinned_bytes") < 20 * KB
        assert store.has_slice("/v/k/keep.m4s", 0)  # still cached: ordinary LRU content
        assert not store.disks[0].index.is_pinned(slice_key("/v/k/keep.m4s", 0))
    finally:
        await edge.stop()


@pytest.mark.parametrize("how", ["fill_disabled", "no_steering"])
async def test_without_fill_every_pin_is_released_at_start(tmp_path, client, steering, origin, how):
    data = origin.files["/v/k/a.m4s"] = blob(100 * KB, seed=112)
    cfg = fill_config(tmp_path, "e1", [origin.url], steering)
    steering.manifests["e1"] = manifest("e1", [("/v/k/a.m4s", data, ("e1",), 1.0)])
    edge = await start_edge(cfg)
    try:
        assert (await fill_now(client, edge))["state"] == "done"
        assert edge.counter("edge_cache_pinned_bytes") > len(data)
    finally:
        await edge.stop()
    if how == "fill_disabled":
        off = dataclasses.replace(cfg, fill=dataclasses.replace(cfg.fill, enabled=False))
    else:
        off = dataclasses.replace(cfg, steering=SteeringConfig())
    for _ in range(2):  # and the release is on disk (pinned.keys)
        edge = await start_edge(off)
        try:
            assert edge.edge.fill is None and edge.edge.store is not None
            assert edge.counter("edge_cache_pinned_bytes") == 0
            assert edge.edge.store.has_slice("/v/k/a.m4s", 0)
        finally:
            await edge.stop()


@pytest.mark.parametrize("limit", ["manifest", "store"])
async def test_pins_never_go_beyond_the_capacity(
    edges, origin_dir, tmp_path, client, steering, limit
):
    a = put(origin_dir, "/v/c/a.m4s", blob(100 * KB, seed=113))
    b = put(origin_dir, "/v/c/b.m4s", blob(100 * KB, seed=114))
    c = put(origin_dir, "/v/c/c.m4s", blob(30 * KB, seed=115))
    cache = 10**9 if limit == "manifest" else 150 * KB
    e1 = await edges(
        fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering, cache_size=cache)
    )
    doc = manifest(
        "e1",
        [
            ("/v/c/a.m4s", a, ("e1",), 3.0),
            ("/v/c/b.m4s", b, ("e1",), 2.0),  # past the capacity once a is in
            ("/v/c/c.m4s", c, ("e1",), 1.0),  # still fits
        ],
    )
    if limit == "manifest":
        doc["capacity"] = 150 * KB
    steering.manifests["e1"] = doc
    st = await fill_now(client, e1)
    assert st["state"] == "done" and (st["objects_total"], st["objects_done"]) == (2, 2), st
    assert st["objects_skipped"] == {"bad_path": 0, "over_capacity": 1}
    assert fill_objects(e1, "manifest", "over_capacity") == 1
    store = e1.edge.store
    assert store is not None and not store.has_slice("/v/c/b.m4s", 0)
    assert len(a) + len(c) < e1.counter("edge_fill_pinned_bytes") < 150 * KB


async def test_a_dead_peer_is_given_up_after_three_failures(
    edges, origin_dir, tmp_path, client, steering
):
    objects = [
        (
            f"/v/d/{i}.m4s",
            put(origin_dir, f"/v/d/{i}.m4s", blob(1000, seed=120 + i)),
            ("e2",),
            9.0 - i,
        )
        for i in range(6)
    ]
    e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering, concurrency=1))
    doc = manifest("e1", objects)
    doc["peers"] = [{"edge": "e2", "url": f"http://127.0.0.1:{free_port()}"}]  # nobody there
    steering.manifests["e1"] = doc
    st = await fill_now(client, e1)
    assert fill_objects(e1, "peer", "error") == 3  # then no more timeouts to wait for
    assert fill_objects(e1, "peer", "peer_down") == 3
    assert st["state"] == "done" and st["peers_skipped"] == ["e2"], st
    assert fill_objects(e1, "origin", "ok") == 6
    # The next run asks it again (it may be back).
    await fill_now(client, e1)
    assert e1.edge.fill is not None and e1.edge.fill.status()["peers_skipped"] == []


async def test_a_peer_answering_504_is_never_given_up(
    edges, origin_dir, tmp_path, client, steering
):
    peer = Peer504()
    await peer.start()
    try:
        objects = [
            (
                f"/v/e/{i}.m4s",
                put(origin_dir, f"/v/e/{i}.m4s", blob(500, seed=130 + i)),
                ("e2",),
                1.0,
            )
            for i in range(5)
        ]
        e1 = await edges(fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering))
        doc = manifest("e1", objects)
        doc["peers"] = [{"edge": "e2", "url": peer.url}]
        steering.manifests["e1"] = doc
        st = await fill_now(client, e1)
        assert st["state"] == "done" and st["peers_skipped"] == []
        assert len(peer.paths) == 5 and fill_objects(e1, "peer", "not_cached") == 5
    finally:
        await peer.stop()


async def test_a_large_manifest_gives_the_loop_back(
    edges, origin_dir, tmp_path, steering, monkeypatch
):
    e1 = await edges(
        fill_config(tmp_path, "e1", [f"file://{origin_dir}"], steering, cache_size=10**12)
    )
    fill = e1.edge.fill
    assert fill is not None
    n, size = 3000, 1_000_000  # four 256 KiB slices each: 12000 slices to pin
    doc = manifest("e1", [])
    doc["capacity"] = 10**12
    doc["objects"] = [
        {
            "key": "big",
            "path": f"/v/big/{i:05d}.m4s",
            "size": size,
            "xxh64": "0123456789abcdef",
            "score": 1.0,
            "holders": ["e1"],
        }
        for i in range(n)
    ]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await fill._apply((parse_manifest(doc), doc))
    during = ticks - before
    task.cancel()
    assert during >= 4, during  # pins in steps, not one 12000-slice stretch
    p = fill.progress()
    assert (p["objects_total"], p["bytes_total"], p["objects_done"]) == (n, n * size, 0)

    # The state file is encoded off the loop.
    loop_thread = threading.get_ident()
    threads: list[int] = []
    dumps = json.dumps

    def spy(obj: Any, *a: Any, **kw: Any) -> str:
        threads.append(threading.get_ident())
        return dumps(obj, *a, **kw)

    monkeypatch.setattr(json, "dumps", spy)
    await fill._save(force=True)
    monkeypatch.undo()
    assert threads and loop_thread not in threads
    saved = json.loads((tmp_path / "e1" / "cache0" / STATE_FILE).read_text())
    assert saved == {"manifest": doc, "done": []}


async def test_a_wrong_size_is_noticed_at_the_first_slice(tmp_path, client, steering):
    origin = HoldingOrigin()
    await origin.start()
    edge = None
    try:
        data = origin.files["/v/s/big.m4s"] = blob(600 * KB, seed=140)  # three slices
        doc = manifest("e1", [("/v/s/big.m4s", data, ("e1",), 1.0)])
        doc["objects"][0]["size"] = 700 * KB  # steering's catalogue says otherwise
        steering.manifests["e1"] = doc
        edge = await start_edge(fill_config(tmp_path, "e1", [origin.url], steering))
        st = await fill_now(client, edge)
        assert st["state"] == "error" and st["objects_left"] == 1, st
        assert origin.fetches("/v/s/big.m4s") == 1  # not the whole object
        assert fill_objects(edge, "origin", "checksum") == 1
        assert edge.counter("edge_fill_verify_failures_total") == 1
        assert edge.edge.store is not None and not edge.edge.store.has_slice("/v/s/big.m4s", 0)
    finally:
        if edge is not None:
            await edge.stop()
        await origin.stop()


async def test_steering_without_fill_is_asked_once_a_window(
    edges, origin_dir, tmp_path, client, steering, caplog
):
    steering.off = True
    cfg = fill_config(
        tmp_path, "e1", [f"file://{origin_dir}"], steering, inside=True, manifest_retry=0.05
    )
    with caplog.at_level(logging.WARNING, logger="edge.fill"):
        e1 = await edges(cfg)
        fill = e1.edge.fill
        assert fill is not None
        await asyncio.wait_for(fill.finished.wait(), 5)  # not retried all window long
        await asyncio.sleep(0.3)
        assert steering.requests == ["e1"]
        assert "fill is off upstream" in (fill.last_error or "")
        # An operator's fill still asks once, and says why nothing was filled (then, as
        # after any operator's fill inside the window, the window's run asks once more).
        st = await fill_now(client, e1)
        assert st["state"] == "error" and "404" in st["last_error"], st
        await asyncio.sleep(0.3)
        assert steering.requests == ["e1"] * 3
    warned = [r for r in caplog.records if "event=fill_off_upstream" in r.getMessage()]
    assert len(warned) == 1


def test_write_atomic_writes_everything_despite_short_writes(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    real_write, real_fsync = os.write, os.fsync
    synced: list[int] = []
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    data = b"x" * 1000 + b"end"
    write_atomic(target, data)
    monkeypatch.undo()
    assert target.read_bytes() == data
    assert len(synced) == 2  # the file, then its directory (the rename)


def test_write_atomic_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"good")
    real_write = os.write
    calls = 0

    def short_then_full(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        write_atomic(target, b"new contents")
    monkeypatch.undo()
    assert target.read_bytes() == b"good"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind
