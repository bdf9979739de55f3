"""A fleet of real services in the test process, on loopback: a real origin, a steering
service over three edges in two sites (e1 and e2 in Paris, steering's default site for
loopback clients; e3 in Lyon), and the edges themselves. Shared by the tests that need the
whole path (tests/test_fill_fleet.py, tests/test_player.py); the control plane is started by
each test, as each configures it differently.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edge.config import SteeringConfig, UpstreamConfig
from origin.app import ORIGIN
from origin.app import create_app as create_origin
from origin.catalog import CatalogFeed
from origin.config import load_config as load_origin_config
from steering.app import STEERING
from steering.app import create_app as create_steering
from steering.config import load_config as load_steering_config

from .conftest import RunningEdge, edge_config, free_port, start_edge

SITES = {"e1": "paris", "e2": "paris", "e3": "lyon"}


def secret(path: Path, token: str) -> str:
    """Write a credential file (a comment line, then the token); its path as a string."""
    path.write_text(f"# a credential\n{token}\n")
    return str(path)


async def until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for a background effect, polling with a deadline (no fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Origin:
    runner: web.AppRunner
    url: str
    feed: CatalogFeed
    media: Path  # its storage: v/<key>/...


async def start_origin(d: Path, *, fill_token: str, catalog_token: str) -> Origin:
    """A real origin on an ephemeral port, storing under ``d``/assets."""
    d.mkdir(exist_ok=True)
    (d / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {d / 'assets'}}}\n"
        f"fill_credentials_file: {secret(d / 'fill.tokens', fill_token)}\n"
        f"catalog_credentials_file: {secret(d / 'catalog.tokens', catalog_token)}\n"
        f"catalog_db: {d / 'catalog.sqlite'}\n"
        "access_log: false\n"
    )
    runner = web.AppRunner(
        create_origin(load_origin_config(d / "origin.yaml")), handle_signals=False
    )
    await runner.setup()
    o = runner.app[ORIGIN]
    assert o.server is not None and isinstance(o.feed, CatalogFeed)
    return Origin(runner, f"http://127.0.0.1:{o.server.port}", o.feed, d / "assets")


@dataclass
class LoopbackFleet:
    """Steering and the three edges; ``ports`` are fixed before anything starts, because
    steering names the edges' URLs and a control plane names steering's."""

    tmp: Path
    steering_port: int
    ports: dict[str, int]
    heartbeat_file: Path
    steering: web.AppRunner | None = None
    edges: dict[str, RunningEdge] = dataclasses.field(default_factory=dict)

    @classmethod
    def plan(cls, tmp: Path, heartbeat_token: str) -> LoopbackFleet:
        hb = Path(secret(tmp / "hb.tokens", heartbeat_token))
        return cls(tmp, free_port(), {name: free_port() for name in SITES}, hb)

    @property
    def steering_url(self) -> str:
        return f"http://127.0.0.1:{self.steering_port}"

    async def start_steering(
        self, *, edge_extra: dict[str, str] | None = None, extra: str = ""
    ) -> Any:
        """Steering over the three edges; ``edge_extra`` adds YAML to an edge's entry (e.g.
        its served prefixes), ``extra`` adds top-level YAML (e.g. a fill section)."""
        edge_extra = edge_extra or {}
        edges_yaml = ", ".join(
            f"{{id: {n}, site: {SITES[n]}, url: 'http://127.0.0.1:{p}'"
            + (f", {edge_extra[n]}" if n in edge_extra else "")
            + "}"
            for n, p in self.ports.items()
        )
        (self.tmp / "steering.yaml").write_text(
            f"listen: 127.0.0.1:{self.steering_port}\n"
            "sites: [{name: paris, latitude: 48.85, longitude: 2.35},"
            " {name: lyon, latitude: 45.76, longitude: 4.83}]\n"
            f"edges: [{edges_yaml}]\n"
            "default_site: paris\n"
            f"heartbeat_credentials_file: {self.heartbeat_file}\n"
            "dead_after: 2s\nprobe_interval: 0.2s\n" + extra
        )
        self.steering = web.AppRunner(
            create_steering(load_steering_config(self.tmp / "steering.yaml")),
            handle_signals=False,
        )
        await self.steering.setup()
        await web.TCPSite(self.steering, "127.0.0.1", self.steering_port).start()
        return self.steering.app[STEERING]

    async def start_edges(self, origin: Origin, origin_token: str, **replace: Any) -> None:
        """The three edges, signed (the tests' keys), pulling from ``origin`` with its fill
        credential and reporting to steering every 50 ms; ``replace`` sets more config fields
        (e.g. ``fill``). Returns once steering has heard every edge."""
        for name, port in self.ports.items():
            d = self.tmp / name
            d.mkdir()
            base = edge_config(d, [origin.url], signed=True)
            self.edges[name] = await start_edge(
                dataclasses.replace(
                    base,
                    node_id=name,
                    site=SITES[name],
                    listen=dataclasses.replace(base.listen, port=port),
                    upstreams=(
                        UpstreamConfig(
                            url=origin.url, credential_file=Path(secret(d / "o", origin_token))
                        ),
                    ),
                    steering=SteeringConfig(self.steering_url, self.heartbeat_file, 0.05),
                    **replace,
                )
            )
        assert self.steering is not None
        s = self.steering.app[STEERING]
        await until(
            lambda: all(h.last_heartbeat is not None for h in s.fleet.snapshot()), "heartbeats"
        )

    async def stop(self, also: Iterable[web.AppRunner] = ()) -> None:
        for edge in self.edges.values():
            await edge.stop()
        if self.steering is not None:
            await self.steering.cleanup()
        for runner in also:
            await runner.cleanup()
