"""A real edge reporting to a real steering service over loopback."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from aiohttp import web

from edge.config import SteeringConfig as EdgeSteering
from steering.app import STEERING, create_app
from steering.config import load_config

from .conftest import edge_config, free_port, start_edge


async def test_edge_heartbeats_drive_steering_answers(tmp_path: Path, origin_dir, client):
    port = free_port()
    (tmp_path / "hb.tokens").write_text("heartbeat-token-0123456789\n")
    (tmp_path / "steering.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        "sites: [{name: paris, latitude: 48.85, longitude: 2.35}]\n"
        f"edges: [{{id: test-edge, site: paris, url: 'http://127.0.0.1:{port}'}}]\n"
        f"heartbeat_credentials_file: {tmp_path / 'hb.tokens'}\n"
        "dead_after: 1s\nprobe_interval: 0.2s\n"
    )
    runner = web.AppRunner(
        create_app(load_config(tmp_path / "steering.yaml")), handle_signals=False
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    steering_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    s = runner.app[STEERING]
    config = edge_config(tmp_path, [f"file://{origin_dir}"])
    config = dataclasses.replace(
        config,
        listen=dataclasses.replace(config.listen, port=port),
        steering=EdgeSteering(steering_url, tmp_path / "hb.tokens", 0.05),
    )
    edge = await start_edge(config)
    try:
        async with asyncio.timeout(5):
            while True:
                (h,) = s.fleet.snapshot()
                if h.last_heartbeat is not None and h.state.name == "UP":
                    break
                await asyncio.sleep(0.02)
        async with client.get(
            steering_url + "/v1/steer", params={"key": "/v/t/", "client": "10.0.0.1"}
        ) as r:
            assert (await r.json())["edges"][0]["edge"] == "test-edge"
        edge.edge.set_draining(True)  # the next heartbeat says so
        async with asyncio.timeout(5):
            while True:
                async with client.get(
                    steering_url + "/v1/steer", params={"key": "/v/t/", "client": "10.0.0.1"}
                ) as r:
                    if not (await r.json())["edges"]:
                        break
                await asyncio.sleep(0.02)
        # The prober keeps asking a draining edge's /healthz, which answers 503 {"state":
        # "draining"}: that is a live edge, never a failed probe that would make it DOWN.
        probes = 0
        (h,) = s.fleet.snapshot()
        last = h.last_probe
        async with asyncio.timeout(10):
            while probes < 5:
                await asyncio.sleep(0.05)
                (h,) = s.fleet.snapshot()
                if h.last_probe != last:
                    probes, last = probes + 1, h.last_probe
                    assert h.state.name == "DRAINING", h
        async with client.get(steering_url + "/fleet") as r:
            (row,) = (await r.json())["edges"]
        assert row["state"] == "draining" and row["last_heartbeat_age"] is not None
    finally:
        await edge.stop()
        await runner.cleanup()
