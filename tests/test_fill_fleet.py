"""Nightly fill through the whole path, every service real, on loopback.

A real origin publishes three titles; the control plane reads them (and their files) from the
origin's feed, and counts plays that go through a real steering service; steering reads the
control plane's popularity feed and plans one manifest per edge by its routing ring; three
edges in two sites fill from their manifests, peers before the origin; a player then finds
the popular title on the edge steering sends it to, served from the SSD.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.config import FillConfig, SteeringConfig, UpstreamConfig
from edge.fillplan import FillWindow
from origin.app import ORIGIN
from origin.app import create_app as create_origin
from origin.catalog import CatalogFeed
from origin.config import load_config as load_origin_config
from origin.synth import synth_catalog
from steering.app import STEERING
from steering.app import create_app as create_steering
from steering.config import load_config as load_steering_config

from .conftest import ADMIN_TOKEN, TEST_KEYS, RunningEdge, edge_config, free_port, start_edge
from .control_support import RunningControl, User

CATALOG = "catalog-token-for-fleet-test-0123"
ORIGIN_FILL = "origin-fill-token-for-fleet-0123"
FEED = "popularity-feed-token-for-fleet-01"
HEARTBEAT = "heartbeat-token-for-fleet-test-01"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def secret(path: Path, token: str) -> str:
    path.write_text(f"# a credential\n{token}\n")
    return str(path)


async def until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[tuple[str, CatalogFeed, Path]]:
    d = tmp_path / "origin"
    d.mkdir()
    secret(d / "fill.tokens", ORIGIN_FILL)
    secret(d / "catalog.tokens", CATALOG)
    (d / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {d / 'assets'}}}\n"
        f"fill_credentials_file: {d / 'fill.tokens'}\n"
        f"catalog_credentials_file: {d / 'catalog.tokens'}\n"
        f"catalog_db: {d / 'catalog.sqlite'}\n"
        "access_log: false\n"
    )
    runner = web.AppRunner(
        create_origin(load_origin_config(d / "origin.yaml")), handle_signals=False
    )
    await runner.setup()
    o = runner.app[ORIGIN]
    assert o.server is not None and isinstance(o.feed, CatalogFeed)
    yield f"http://127.0.0.1:{o.server.port}", o.feed, d / "assets"
    await runner.cleanup()


async def watch(rc: RunningControl, user: User, title_id: str, seconds: float) -> None:
    """A play through the API (steered by the real steering service), watched to ``seconds``."""
    r = await rc.api.post(
        "/v1/playback", json={"profile_id": user.profile_id, "title_id": title_id},
        token=user.token,
    )  # fmt: skip
    assert r.status == 201, r
    rc.clock.advance(seconds)
    play = r.body["play_id"]
    r = await rc.api.post(
        f"/v1/playback/{play}/events",
        json={"kind": "progress", "position": seconds, "client_at": rc.clock()},
        token=user.token,
    )
    assert r.status == 200, r
    r = await rc.api.delete(f"/v1/playback/{play}", token=user.token)
    assert r.status == 204, r


def window_from_now(minutes: int) -> FillWindow:
    """A one-hour UTC window starting ``minutes`` from now (so it is not open during the test)."""
    m = int(time.time() // 60) % 1440
    return FillWindow((m + minutes) % 1440, (m + minutes + 60) % 1440)


def fill_counter(edge: RunningEdge, source: str) -> float:
    return edge.counter("edge_fill_bytes_total", source=source)


async def fill_now(client: aiohttp.ClientSession, edge: RunningEdge) -> dict[str, Any]:
    assert edge.edge.fill is not None
    edge.edge.fill.finished.clear()
    async with client.post(edge.admin + "/admin/fill", headers=ADMIN) as r:
        assert r.status == 202, await r.text()
    await asyncio.wait_for(edge.edge.fill.finished.wait(), 30)
    async with client.get(edge.admin + "/admin/fill") as r:
        return dict(await r.json())


async def test_a_fleet_fills_from_its_manifests_peers_first(
    start_control: Any, origin: tuple[str, CatalogFeed, Path], tmp_path: Path
) -> None:
    origin_url, catalog, media = origin
    keys = synth_catalog(media, titles=3, renditions=2, duration=8.0, seed=9)
    for key in keys:
        catalog.announce(key, json.loads((media / "v" / key / "manifest.json").read_text()))

    # Ports first: steering names the edges' URLs, the control plane steering's.
    steering_port = free_port()
    ports = {name: free_port() for name in ("e1", "e2", "e3")}
    (tmp_path / "edge.keys").write_text(TEST_KEYS)
    rc: RunningControl = await start_control(
        catalog_feed={
            "url": origin_url,
            "credential_file": secret(tmp_path / "catalog.token", CATALOG),
            "interval": 3600,
        },
        playback={
            "signing_keys_file": str(tmp_path / "edge.keys"),
            "steering_url": f"http://127.0.0.1:{steering_port}",
            "lease_ttl": "1h",
            "token_ttl": "7d",
        },
        fill={
            "credential_file": secret(tmp_path / "feed.token", FEED),
            "origin_credential_file": secret(tmp_path / "origin-fill.token", ORIGIN_FILL),
            "boost_views": 1.0,
            "cache_ttl": 0,
        },
    )
    admin = await rc.admin()
    r = await rc.api.post("/v1/admin/catalog/sync", token=admin.token)
    assert r.status == 200, r
    await until(
        lambda: rc.counter("control_media_files_fetches", "ok") >= 3, "the titles' file lists"
    )
    ids = {
        row["media_key"]: row["id"]
        for row in await rc.control.db.fetchall("SELECT id, media_key FROM titles")
    }
    popular = keys[0]

    secret(tmp_path / "hb.tokens", HEARTBEAT)
    edges_yaml = ", ".join(
        f"{{id: {n}, site: {'lyon' if n == 'e3' else 'paris'}, url: 'http://127.0.0.1:{p}'}}"
        for n, p in ports.items()
    )
    (tmp_path / "steering.yaml").write_text(
        f"listen: 127.0.0.1:{steering_port}\n"
        "sites: [{name: paris, latitude: 48.85, longitude: 2.35},"
        " {name: lyon, latitude: 45.76, longitude: 4.83}]\n"
        f"edges: [{edges_yaml}]\n"
        "default_site: paris\n"
        f"heartbeat_credentials_file: {tmp_path / 'hb.tokens'}\n"
        "dead_after: 2s\nprobe_interval: 0.2s\n"
        f"fill: {{popularity_url: '{rc.url}', credential_file: '{tmp_path / 'feed.token'}',"
        " max_copies: 2, share: 0.8}\n"
    )
    steering = web.AppRunner(
        create_steering(load_steering_config(tmp_path / "steering.yaml")), handle_signals=False
    )
    await steering.setup()
    await web.TCPSite(steering, "127.0.0.1", steering_port).start()
    steering_url = f"http://127.0.0.1:{steering_port}"
    fleet: dict[str, RunningEdge] = {}
    try:
        for name, port in ports.items():
            d = tmp_path / name
            d.mkdir()
            base = edge_config(d, [origin_url], signed=True)
            fleet[name] = await start_edge(
                dataclasses.replace(
                    base,
                    node_id=name,
                    site="lyon" if name == "e3" else "paris",
                    listen=dataclasses.replace(base.listen, port=port),
                    upstreams=(
                        UpstreamConfig(
                            url=origin_url, credential_file=Path(secret(d / "o", ORIGIN_FILL))
                        ),
                    ),
                    steering=SteeringConfig(steering_url, Path(tmp_path / "hb.tokens"), 0.05),
                    # Outside its window: only an operator's "fill now" starts it here.
                    fill=FillConfig(window=window_from_now(120), timezone="UTC"),
                )
            )
        s = steering.app[STEERING]
        await until(
            lambda: all(h.last_heartbeat is not None for h in s.fleet.snapshot()), "heartbeats"
        )

        # Viewers in Paris (steering's default site for loopback clients) watch one title.
        user = await rc.subscriber()
        for _ in range(4):
            await watch(rc, user, ids[popular], 8.0)

        async with aiohttp.ClientSession() as client:
            auth = {"Authorization": f"Bearer {HEARTBEAT}"}

            async def refreshed() -> dict[str, Any]:
                async with client.post(steering_url + "/fill/refresh", headers=auth) as r:
                    assert r.status == 200, await r.text()
                    return dict(await r.json())

            # Capacities come with heartbeats; refresh until every edge has its manifest.
            manifests: dict[str, Any] = {}
            deadline = asyncio.get_running_loop().time() + 15
            while len(manifests) < 3:
                await refreshed()
                for name in ports:
                    async with client.get(
                        f"{steering_url}/fill/manifest/{name}", headers=auth
                    ) as r:
                        if r.status == 200:
                            manifests[name] = await r.json()
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"manifests: only {sorted(manifests)}")
                await asyncio.sleep(0.05)

            paris = {n: {o["path"]: o for o in manifests[n]["objects"]} for n in ("e1", "e2")}
            lyon = {o["path"]: o for o in manifests["e3"]["objects"]}
            every = set(paris["e1"]) | set(paris["e2"])
            # Every published title is placed in each site (the boost); the watched one on both
            # Paris edges (copies by popularity), the others on one, by the routing ring.
            assert {p.split("/")[2] for p in every} == set(keys)
            assert {p.split("/")[2] for p in lyon} == set(keys)
            shared = set(paris["e1"]) & set(paris["e2"])
            assert shared and {p.split("/")[2] for p in shared} == {popular}
            for key in keys:
                async with client.get(
                    steering_url + "/v1/steer", params={"key": key, "client": "127.0.0.1"}
                ) as r:
                    first = (await r.json())["edges"][0]["edge"]
                for n in ("e1", "e2"):
                    for path, o in paris[n].items():
                        if path.split("/")[2] == key:
                            assert o["holders"][0] == first, (key, o, first)

            # The Paris edges fill one after the other (the second finds its peer filled), the
            # Lyon edge alone.
            st1 = await fill_now(client, fleet["e1"])
            st2 = await fill_now(client, fleet["e2"])
            st3 = await fill_now(client, fleet["e3"])
            for st in (st1, st2, st3):
                assert st["state"] == "done" and st["objects_left"] == 0, st
            size = {p: o["size"] for n in paris for p, o in paris[n].items()}
            first_of = {p: o["holders"][0] for n in paris for p, o in paris[n].items()}
            # e1 went first: what it holds came from the origin (its peer had nothing yet).
            assert fill_counter(fleet["e1"], "origin") == sum(size[p] for p in paris["e1"])
            assert fill_counter(fleet["e1"], "peer") == 0
            # e2: the shared objects from its peer e1, only its own from the origin.
            assert fill_counter(fleet["e2"], "peer") == sum(size[p] for p in shared)
            assert fill_counter(fleet["e2"], "origin") == sum(
                size[p] for p in set(paris["e2"]) - shared
            )
            assert fleet["e1"].counter("edge_only_if_cached_total", result="hit") >= len(shared)
            # One upstream request per slice of what e1 holds: its peer's reads added none.
            slice_size = fleet["e1"].config.cache.slice_size
            assert fleet["e1"].counter("edge_upstream_fetches_total") == sum(
                max(1, -(-size[p] // slice_size)) for p in paris["e1"]
            )
            assert fill_counter(fleet["e3"], "origin") == sum(o["size"] for o in lyon.values())
            assert fill_counter(fleet["e3"], "peer") == 0  # alone in its site
            # Progress reached steering with the heartbeats, and shows in /fleet.
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                async with client.get(steering_url + "/fleet") as r:
                    rows = {row["edge"]: row for row in (await r.json())["edges"]}
                if all(
                    (rows[n]["fill"] or {}).get("objects_done") == len(manifests[n]["objects"])
                    and rows[n]["fill_manifest"]["version"] == manifests[n]["version"]
                    for n in ports
                ):
                    break
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"fill progress not in /fleet: {rows}")
                await asyncio.sleep(0.05)

            # A Paris viewer of the popular title is sent to its first holder, and its segments
            # are on that edge's SSD already: a hit, no upstream fetch.
            path = next(p for p in sorted(every) if p.endswith(".m4s") and popular in p)
            edge = fleet[first_of[path]]
            before = edge.counter("edge_upstream_fetches_total")
            async with client.get(edge.signed(path)) as r:
                assert r.status == 200 and r.headers["X-Cache"] == "HIT"
                assert len(await r.read()) == size[path]
            assert edge.counter("edge_upstream_fetches_total") == before
            for n in ("e1", "e2"):
                pinned = fleet[n].counter("edge_fill_pinned_bytes")
                assert pinned >= sum(size[p] for p in paris[n])
    finally:
        for e in fleet.values():
            await e.stop()
        await steering.cleanup()
