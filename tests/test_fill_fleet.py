"""Nightly fill through the whole path, every service real, on loopback.

A real origin publishes three titles; the control plane reads them (and their files) from the
origin's feed, and counts plays that go through a real steering service; steering reads the
control plane's popularity feed and plans one manifest per edge by its routing ring; three
edges in two sites fill from their manifests, peers before the origin; a player then finds
the popular title on the edge steering sends it to, served from the SSD.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config import FillConfig
from edge.fillplan import FillWindow
from origin.synth import synth_catalog

from .conftest import ADMIN_TOKEN, TEST_KEYS, RunningEdge
from .control_support import RunningControl, User
from .fleet_support import LoopbackFleet, Origin, secret, start_origin, until

CATALOG = "catalog-token-for-fleet-test-0123"
ORIGIN_FILL = "origin-fill-token-for-fleet-0123"
FEED = "popularity-feed-token-for-fleet-01"
HEARTBEAT = "heartbeat-token-for-fleet-test-01"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    o = await start_origin(tmp_path / "origin", fill_token=ORIGIN_FILL, catalog_token=CATALOG)
    yield o
    await o.runner.cleanup()


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
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    keys = synth_catalog(origin.media, titles=3, renditions=2, duration=8.0, seed=9)
    for key in keys:
        manifest = (origin.media / "v" / key / "manifest.json").read_text()
        origin.feed.announce(key, json.loads(manifest))

    # Ports first: steering names the edges' URLs, the control plane steering's.
    lf = LoopbackFleet.plan(tmp_path, HEARTBEAT)
    ports = lf.ports
    steering_port = lf.steering_port
    (tmp_path / "edge.keys").write_text(TEST_KEYS)
    rc: RunningControl = await start_control(
        catalog_feed={
            "url": origin.url,
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

    await lf.start_steering(
        extra=f"fill: {{popularity_url: '{rc.url}', credential_file: '{tmp_path / 'feed.token'}',"
        " max_copies: 2, share: 0.8}\n"
    )
    steering_url = lf.steering_url
    fleet = lf.edges
    try:
        # Outside their window: only an operator's "fill now" starts a fill here.
        await lf.start_edges(
            origin, ORIGIN_FILL, fill=FillConfig(window=window_from_now(120), timezone="UTC")
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
        await lf.stop()
