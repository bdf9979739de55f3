"""The steering service over real HTTP, with scripted edges on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from aiohttp import web

from steering.app import STEERING, create_app
from steering.config import load_config
from steering.manifests import parse_hls_steering

HB_TOKEN = "heartbeat-token-0123456789"


class ScriptedEdge:
    """A stand-in edge: /healthz answers 200 while ``healthy``; can be stopped and restarted."""

    def __init__(self) -> None:
        self.healthy = True
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"state": "ok"}, status=200 if self.healthy else 503)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Any, dict[str, ScriptedEdge], str]]:
    edges = {name: ScriptedEdge() for name in ("par1", "par2", "par3", "isp1", "fra1")}
    for e in edges.values():
        await e.start()
    (tmp_path / "hb.tokens").write_text(HB_TOKEN + "\n")
    sites = {
        "par1": "paris",
        "par2": "paris",
        "par3": "paris",
        "isp1": "paris",
        "fra1": "frankfurt",
    }
    lines = [
        "listen: 127.0.0.1:0",
        "sites: [{name: paris, latitude: 48.85, longitude: 2.35},"
        " {name: frankfurt, latitude: 50.11, longitude: 8.68}]",
        "edges:",
    ]
    for name, e in edges.items():
        extra = (
            ", embedded: true, prefixes: ['203.0.113.0/24', '2001:db8:a::/48']"
            if name == "isp1"
            else ""
        )
        lines.append(
            f"  - {{id: {name}, site: {sites[name]}, url: 'http://127.0.0.1:{e.port}'{extra}}}"
        )
    lines += [
        "origin_url: 'http://127.0.0.1:9'",
        "default_site: paris",
        f"heartbeat_credentials_file: {tmp_path / 'hb.tokens'}",
        "dead_after: 1s",
        "recover_after: 3",
        "probe_interval: 0.1s",
        "answer_size: 3",
    ]
    (tmp_path / "steering.yaml").write_text("\n".join(lines) + "\n")
    runner = web.AppRunner(
        create_app(load_config(tmp_path / "steering.yaml")), handle_signals=False
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield runner.app[STEERING], edges, url
    await runner.cleanup()
    for e in edges.values():
        await e.stop()


async def steer(client, url: str, key: str, ip: str = "198.51.100.7") -> dict[str, Any]:
    async with client.get(url + "/v1/steer", params={"key": key, "client": ip}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_ranked_answer_local_site_then_next_site_then_origin(fleet, client):
    _, _, url = fleet
    doc = await steer(client, url, "/v/title1/")
    sites = [e["site"] for e in doc["edges"]]
    assert (
        sites[:3] == ["paris"] * 3
        and sites[3] == "frankfurt"
        and doc["edges"][-1]["edge"] == "origin"
    )
    assert all(e["reason"] for e in doc["edges"])
    again = await steer(client, url, "/v/title1/")
    assert [e["edge"] for e in again["edges"]] == [e["edge"] for e in doc["edges"]]  # sticky


@pytest.mark.parametrize("ip", ["203.0.113.9", "2001:db8:a::42"])
async def test_embedded_edge_first_for_its_prefixes(fleet, client, ip):
    _, _, url = fleet
    doc = await steer(client, url, "/v/title2/", ip)
    assert doc["edges"][0]["edge"] == "isp1"
    assert "prefix" in doc["edges"][0]["reason"]


async def test_dead_edge_leaves_answers_within_the_deadline_and_returns_with_hysteresis(
    fleet, client
):
    s, edges, url = fleet
    key = ""
    for i in range(200):
        key = f"/v/t{i}/"
        if (await steer(client, url, key))["edges"][0]["edge"] == "par2":
            break
    t0 = time.monotonic()
    await edges["par2"].stop()
    async with asyncio.timeout(5):
        while any(e["edge"] == "par2" for e in (await steer(client, url, key))["edges"]):
            await asyncio.sleep(0.05)
    assert time.monotonic() - t0 < 1.0 + 0.5 + 0.5  # dead_after + a probe + a tick
    await edges["par2"].start()
    # Back only after recover_after (3) good probes at 0.1 s: never at once.
    first_back = None
    async with asyncio.timeout(5):
        while True:
            doc = await steer(client, url, key)
            if any(e["edge"] == "par2" for e in doc["edges"]):
                first_back = time.monotonic()
                break
            await asyncio.sleep(0.02)
    h = next(h for h in s.fleet.snapshot() if h.edge_id == "par2")
    assert h.transitions >= 2 and first_back is not None


async def test_heartbeats_authenticated_and_draining_edges_get_no_players(fleet, client):
    _, _, url = fleet
    hb = {"edge_id": "par1", "state": "ok", "load": 0.1, "sent_at": time.time()}
    async with client.post(url + "/heartbeat", json=hb) as r:
        assert r.status == 401
    auth = {"Authorization": f"Bearer {HB_TOKEN}"}
    async with client.post(url + "/heartbeat", json={**hb, "edge_id": "nope"}, headers=auth) as r:
        assert r.status == 403
    async with client.post(url + "/heartbeat", data=b"{not json", headers=auth) as r:
        assert r.status == 400
    async with client.post(url + "/heartbeat", json={**hb, "draining": True}, headers=auth) as r:
        assert r.status == 200
    for i in range(30):
        doc = await steer(client, url, f"/v/x{i}/")
        assert all(e["edge"] != "par1" for e in doc["edges"])
    async with client.get(url + "/fleet") as r:
        state = {e["edge"]: e["state"] for e in (await r.json())["edges"]}
    assert state["par1"] == "draining"


async def test_bounded_loads_spill_a_hot_title(fleet, client):
    _, _, url = fleet
    firsts: dict[str, int] = {}
    for _ in range(300):
        doc = await steer(client, url, "/v/hot/")
        firsts[doc["edges"][0]["edge"]] = firsts.get(doc["edges"][0]["edge"], 0) + 1
    paris = [firsts.get(e, 0) for e in ("par1", "par2", "par3", "isp1")]
    assert max(paris) <= 1.25 * 300 / 4 + 1, firsts


async def test_hls_content_steering_manifest_follows_health(fleet, client):
    _, edges, url = fleet
    async with client.get(
        url + "/v1/steering/hls", params={"key": "/v/t9/", "client": "198.51.100.7"}
    ) as r:
        assert r.status == 200
        doc = await r.json()
    m = parse_hls_steering(doc)
    assert m.priority[-1] == "origin" and len(m.priority) == 5
    assert m.reload_uri and "key=" in m.reload_uri
    await edges[m.priority[0]].stop()
    dead = m.priority[0]
    async with asyncio.timeout(5):
        while True:
            async with client.get(urljoin(url + "/v1/steering/hls", m.reload_uri)) as r:
                m2 = parse_hls_steering(await r.json())
            if dead not in m2.priority:
                break
            await asyncio.sleep(0.05)
    async with client.get(
        url + "/v1/steering/dash", params={"key": "/v/t9/", "client": "198.51.100.7"}
    ) as r:
        assert "SERVICE-LOCATION-PRIORITY" in await r.json()


async def test_bad_client_address_and_key(fleet, client):
    _, _, url = fleet
    async with client.get(url + "/v1/steer", params={"key": "/v/t/", "client": "300.1.2.3"}) as r:
        assert r.status == 400
    async with client.get(url + "/v1/steer", params={"client": "1.2.3.4"}) as r:
        assert r.status == 400


async def test_metrics_and_healthz(fleet, client):
    _, _, url = fleet
    await steer(client, url, "/v/t/")
    async with client.get(url + "/metrics") as r:
        text = await r.text()
    for name in ("steering_decisions_total", "steering_decision_seconds", "steering_edges"):
        assert name in text
    async with client.get(url + "/healthz") as r:
        assert r.status == 200


async def test_reload_applies_a_good_config_and_keeps_the_last_good_state(fleet, client, tmp_path):
    import dataclasses

    from steering.config import EdgeConfig

    s, _, url = fleet
    extra = ScriptedEdge()
    await extra.start()
    try:
        good = dataclasses.replace(
            s.config,
            edges=(
                *s.config.edges,
                EdgeConfig("fra2", "frankfurt", f"http://127.0.0.1:{extra.port}"),
            ),
        )
        broken_czf = tmp_path / "broken.json"
        broken_czf.write_text('{"coverageZones": {"z": {"network": ["not-a-cidr"]}}}')
        bad = dataclasses.replace(good, coverage_zone_file=broken_czf)
        with pytest.raises(ValueError):
            s.reload(bad)
        assert "fra2" not in s.edges and s.config.coverage_zone_file is None  # unchanged
        s.reload(good)
        found = False
        for i in range(100):
            doc = await steer(client, url, f"/v/r{i}/")
            if any(e["edge"] == "fra2" for e in doc["edges"]):
                found = True
                break
        assert found
    finally:
        await extra.stop()


@pytest.mark.parametrize(
    "body",
    [
        b'{"edge_id": "par1", "load": NaN}',
        b'{"edge_id": "par1", "load": -1}',
        b'{"edge_id": "par1", "state": "bogus"}',
        b'{"edge_id": "par1", "disk_used": 1e400}',
        b'["par1"]',
    ],
)
async def test_malformed_heartbeats_are_400_not_500(fleet, client, body):
    _, _, url = fleet
    auth = {"Authorization": f"Bearer {HB_TOKEN}", "Content-Type": "application/json"}
    async with client.post(url + "/heartbeat", data=body, headers=auth) as r:
        assert r.status == 400, await r.text()


@pytest.mark.parametrize("base", ["bad id!", "par1"])
async def test_bad_base_pathway_is_400(fleet, client, base):
    _, _, url = fleet
    params = {"key": "/v/t/", "client": "198.51.100.7", "base": base}
    async with client.get(url + "/v1/steering/hls", params=params) as r:
        assert r.status == 400


async def test_reload_uri_is_relative_and_keeps_base(fleet, client):
    _, _, url = fleet
    params = {"key": "/v/t/", "client": "198.51.100.7", "base": "cdn-a"}
    async with client.get(url + "/v1/steering/hls", params=params) as r:
        doc = await r.json()
    assert doc["RELOAD-URI"].startswith("/v1/steering/hls?") and "base=cdn-a" in doc["RELOAD-URI"]
    assert all(c["BASE-ID"] == "cdn-a" for c in doc["PATHWAY-CLONES"])


async def test_every_forwarded_for_line_counts_behind_a_trusted_proxy(tmp_path, client) -> None:
    """Proxies may append X-Forwarded-For as separate header lines; together they are one
    list (RFC 9110 section 5.3), walked from the right past trusted proxies."""
    (tmp_path / "s.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        "sites: [{name: paris, latitude: 48.85, longitude: 2.35}]\n"
        "origin_url: 'http://127.0.0.1:9'\n"
        "trusted_proxies: ['127.0.0.0/8']\n"
    )
    runner = web.AppRunner(create_app(load_config(tmp_path / "s.yaml")), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/steer?key=/v/t/"
        headers = [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.9")]
        async with client.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["client"] == "203.0.113.9"
    finally:
        await runner.cleanup()
