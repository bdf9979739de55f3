"""The edge reports itself to steering with authenticated heartbeats."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from edge.config import SteeringConfig

from .conftest import edge_config


async def test_heartbeats_reach_steering_with_credential_and_state(edges, origin_dir, tmp_path):
    got: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    async def heartbeat(request: web.Request) -> web.Response:
        await got.put((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    (tmp_path / "hb.token").write_text("heartbeat-token-0123456789\n")
    config = dataclasses.replace(
        edge_config(tmp_path, [f"file://{origin_dir}"]),
        steering=SteeringConfig(url=url, credential_file=tmp_path / "hb.token", interval=0.05),
    )
    try:
        edge = await edges(config)
        auth, doc = await asyncio.wait_for(got.get(), 5.0)
        assert auth == "Bearer heartbeat-token-0123456789"
        assert doc["edge_id"] == "test-edge" and doc["state"] == "ok"
        assert doc["disk_capacity"] == config.cache.dirs[0].size
        for key in ("load", "egress_bps", "disk_used", "cached_bytes", "draining", "sent_at"):
            assert key in doc
        edge.edge.set_draining(True)
        async with asyncio.timeout(5.0):
            while True:
                _, doc = await got.get()
                if doc["state"] == "draining":
                    break
        assert doc["draining"] is True
        assert edge.edge.heartbeats_sent >= 1  # counted once the answer is read
    finally:
        await runner.cleanup()
