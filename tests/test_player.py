"""The reference player (control/player) through the whole path, every service real, on loopback.

A real origin publishes a synthetic title (origin/synth.py) through its catalog feed to a real
control plane (SQLite; the player does not care about the database); a real steering service
ranks three real edges in two sites (e1, e2 in Paris, steering's default site for loopback
clients; e3 in Lyon, serving the prefix 127.0.0.12/32). The player signs in, starts playback
and plays at a high speed with real segment downloads. The control plane runs on the wall
clock: the edges check the tokens it signs against theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from control.player import __main__ as player_main
from control.player.abr import AbrConfig
from control.player.session import Player, PlayerError, PlayerOptions, parse_edges
from origin.synth import synth_catalog

from .conftest import PYTHON, ROOT, TEST_KEYS, RunningEdge
from .control_support import PASSWORD, Api, control_settings, start_control_app
from .fleet_support import LoopbackFleet, secret, start_origin

CATALOG = "catalog-token-for-player-test-0123"
ORIGIN_FILL = "origin-fill-token-for-player-0123"
HEARTBEAT = "heartbeat-token-for-player-test-01"
LOCAL_CLIENT = "127.0.0.12"  # inside e3's served prefix
TITLE_SECONDS = 40.0  # ten 4 s segments
SPEED = 10.0

pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    control_url: str
    control: Any  # control.app.Control
    api: Api
    edges: dict[str, RunningEdge]
    title_id: str
    media_key: str
    admin_token: str

    async def subscriber(self, plan: str) -> tuple[str, str]:
        """A new account with a paid ``plan``: (email, profile id)."""
        email = f"viewer-{time.monotonic_ns()}@example.com"
        r = await self.api.post("/v1/accounts", json={"email": email, "password": PASSWORD})
        assert r.status == 201, r
        token, profile = r.body["token"], r.body["profile"]["id"]
        r = await self.api.post("/v1/subscription", json={"plan_id": plan}, token=token)
        assert r.status == 201, r
        await self.control.billing.mark_paid(r.body["invoice"]["id"], reference="test")
        return email, profile

    def options(self, email: str, **kw: Any) -> PlayerOptions:
        defaults: dict[str, Any] = {
            "control": self.control_url,
            "email": email,
            "password": PASSWORD,
            "title": self.title_id,
            "speed": SPEED,
            # A small buffer, so the player paces itself and is mid-play when a test acts.
            "abr": AbrConfig(reservoir=4.0, cushion=8.0, max_buffer=16.0),
        }
        return PlayerOptions(**{**defaults, **kw})


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    from control.app import CONTROL
    from control.config import load_config as load_control_config

    # The origin, with one synthetic title of four renditions (240p to 720p).
    origin = await start_origin(tmp_path / "origin", fill_token=ORIGIN_FILL, catalog_token=CATALOG)
    media = origin.media
    (key,) = synth_catalog(media, titles=1, renditions=4, duration=TITLE_SECONDS, seed=7)
    origin.feed.announce(key, json.loads((media / "v" / key / "manifest.json").read_text()))
    origin_url = origin.url

    lf = LoopbackFleet.plan(tmp_path, HEARTBEAT)
    steering_port = lf.steering_port
    (tmp_path / "edge.keys").write_text(TEST_KEYS)
    doc = control_settings(
        f"sqlite:///{tmp_path}/control.db",
        tmp_path,
        catalog_feed={
            "url": origin_url,
            "credential_file": secret(tmp_path / "catalog.token", CATALOG),
            "interval": 3600,
        },
        playback={
            "signing_keys_file": str(tmp_path / "edge.keys"),
            "steering_url": f"http://127.0.0.1:{steering_port}",
            "lease_ttl": "30s",  # heartbeats every 10 s of playout
            "token_ttl": "1h",
            "bind_client_ip": True,  # so --source-address must reach the edges too
        },
        rate_limits={"enabled": False},
        log_level="warning",
    )
    (tmp_path / "control.yaml").write_text(yaml.safe_dump(doc))
    runner, control_url = await start_control_app(
        load_control_config(tmp_path / "control.yaml"),
        time.time,  # type: ignore[arg-type]
    )
    control = runner.app[CONTROL]
    session = aiohttp.ClientSession()
    api = Api(session, control_url)

    # e3 (Lyon) serves the player's source address: locality sends that client there.
    await lf.start_steering(edge_extra={"e3": f"prefixes: ['{LOCAL_CLIENT}/32']"})
    edges = lf.edges
    try:
        await lf.start_edges(origin, ORIGIN_FILL)
        admin = await control.accounts.create_account("ops@example.com", PASSWORD, role="admin")
        assert admin is not None
        r = await api.post("/v1/sessions", json={"email": "ops@example.com", "password": PASSWORD})
        assert r.status == 201, r
        admin_token = r.body["token"]
        r = await api.post("/v1/admin/catalog/sync", token=admin_token)
        assert r.status == 200, r
        row: dict[str, Any] | None = None

        async def published() -> dict[str, Any] | None:
            return await control.db.fetchone(  # type: ignore[no-any-return]
                "SELECT id FROM titles WHERE media_key = ? AND published", (key,)
            )

        deadline = asyncio.get_running_loop().time() + 15
        while (row := await published()) is None:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail("the title never arrived from the origin's feed")
            await asyncio.sleep(0.02)
        yield Fleet(control_url, control, api, edges, str(row["id"]), key, admin_token)
    finally:
        await lf.stop()
        await session.close()
        await runner.cleanup()
        await origin.runner.cleanup()


def served(edge: RunningEdge) -> float:
    """Body bytes the edge sent (its own count, not the player's)."""
    return sum(edge.counter("edge_response_bytes_total", cache=c) for c in ("hit", "miss"))


async def test_plays_through_the_first_edge_with_zero_rebuffers(fleet: Fleet) -> None:
    email, profile = await fleet.subscriber("standard")  # the whole ladder: hls_edge
    summary = await Player(fleet.options(email)).run()

    assert summary.completed, summary
    assert summary.rebuffers == 0 and summary.rebuffer_s == 0, summary
    assert summary.failovers == 0 and not summary.failures, summary
    assert summary.edges[:2] == ["e1", "e2"] or summary.edges[:2] == ["e2", "e1"], summary
    first = summary.edges[0]
    others = [e for e in summary.bytes_by_edge if e != first]
    assert summary.bytes_by_edge[first] > 0 and all(
        summary.bytes_by_edge[e] == 0 for e in others
    ), summary
    assert summary.played_s == pytest.approx(TITLE_SECONDS, abs=0.01)
    # BBA starts at the bottom and climbs as the buffer grows (every segment arrives far
    # faster than it plays on loopback).
    assert summary.switches >= 1 and "720p" in summary.renditions, summary
    assert summary.startup_s is not None and summary.startup_s < 5, summary
    # Heartbeats every 10 s of WALL time (lease 30 s / 3; the lease runs on the wall clock):
    # at most one in this ~4 s play, not one per 10 s of media (3 at speed 10).
    assert summary.heartbeats <= summary.wall_s // 10 + 1, summary
    # The control plane recorded the final position (the stop event).
    r = await fleet.api.post("/v1/sessions", json={"email": email, "password": PASSWORD})
    r = await fleet.api.get(
        f"/v1/profiles/{profile}/resume/{fleet.title_id}", token=r.body["token"]
    )
    assert r.status == 200, r
    play = await fleet.control.db.fetchone(
        "SELECT stopped_at, position FROM plays WHERE id = ?", (summary.play_id,)
    )
    assert play is not None and play["stopped_at"] is not None
    assert float(play["position"]) == pytest.approx(TITLE_SECONDS, abs=0.5)


async def test_failover_to_the_next_edge_mid_play_without_a_stall(fleet: Fleet) -> None:
    # A capped plan (basic: 480p of a 720p ladder) plays through the control plane's
    # per-session playlist, whose URIs are on the first edge.
    email, _ = await fleet.subscriber("basic")
    stopping: list[asyncio.Task[None]] = []
    killed: list[str] = []

    def on_segment(n: int, edge_id: str) -> None:
        # After the fifth segment (mid-play, with the buffer full and paced), the serving
        # edge goes away; the stop runs beside the player, as a crash would.
        if n == 5 and not killed:
            killed.append(edge_id)
            stopping.append(asyncio.ensure_future(fleet.edges[edge_id].stop()))

    summary = await Player(fleet.options(email), on_segment=on_segment).run()
    await asyncio.gather(*stopping)

    assert killed == [summary.edges[0]], (killed, summary)
    assert summary.completed, summary
    assert summary.failovers >= 1 and summary.failures.get(killed[0], 0) >= 1, summary
    second = summary.edges[1]
    assert summary.bytes_by_edge[killed[0]] > 0 and summary.bytes_by_edge[second] > 0, summary
    # The buffer (16 s of media) outlives a refused connection by far: no stall.
    assert summary.rebuffers == 0, summary
    assert "720p" not in summary.renditions and "480p" in summary.renditions, summary


def run_cli(*args: str, stdin: str = "", timeout: float = 45) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "control.player", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


async def test_cli_from_a_source_address_is_sent_to_its_edge(fleet: Fleet) -> None:
    email, _ = await fleet.subscriber("standard")
    before = {n: served(e) for n, e in fleet.edges.items()}
    proc = await asyncio.to_thread(
        run_cli,
        "--control", fleet.control_url, "--email", email, "--search", fleet.media_key[:6],
        "--speed", "20", "--duration", "12", "--source-address", LOCAL_CLIENT, "--json",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    # Steering saw the client at 127.0.0.12 (inside e3's prefix): e3 first, in Lyon, though
    # loopback clients otherwise go to Paris; every byte came from e3.
    assert summary["edges"][0] == "e3", summary
    assert summary["bytes_by_edge"]["e3"] > 0, summary
    assert all(v == 0 for k, v in summary["bytes_by_edge"].items() if k != "e3"), summary
    assert summary["rebuffers"] == 0 and summary["completed"], summary
    assert summary["played_s"] == pytest.approx(12.0, abs=0.01)
    assert served(fleet.edges["e3"]) - before["e3"] >= summary["bytes_by_edge"]["e3"]
    assert served(fleet.edges["e1"]) == before["e1"] and served(fleet.edges["e2"]) == before["e2"]
    # The password never reaches the logs.
    assert PASSWORD not in proc.stderr and "event=playback_started" in proc.stderr
    assert "/_t/" not in proc.stderr.replace("/_t/-", "")


async def test_cli_refusals_are_clear_errors(fleet: Fleet) -> None:
    email, _ = await fleet.subscriber("standard")
    base = ["--control", fleet.control_url, "--email", email]
    cases: list[tuple[list[str], str, int, str]] = [
        ([*base, "--title", fleet.title_id], "wrong password\n", 1, "sign-in refused"),
        ([*base, "--title", "no-such-title"], PASSWORD + "\n", 1, "playback refused"),
        ([*base, "--search", "zzzzqqqxx"], PASSWORD + "\n", 1, "no title matches"),
        ([*base, "--title", "x", "--speed", "0"], PASSWORD + "\n", 2, "--speed"),
        ([*base, "--title", "a/b"], PASSWORD + "\n", 2, "--title"),
        ([*base, "--title", "x", "--source-address", "nowhere"], PASSWORD + "\n", 2, "IP"),
        ([*base], PASSWORD + "\n", 2, "--title"),
        (
            ["--control", "http://127.0.0.1:9", "--email", email, "--title", "x"],
            PASSWORD + "\n",
            1,
            "unreachable",
        ),
    ]
    results = await asyncio.gather(
        *(asyncio.to_thread(run_cli, *args, stdin=stdin) for args, stdin, _, _ in cases)
    )
    for (args, _, code, text), proc in zip(cases, results, strict=True):
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        assert text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)


async def test_every_edge_down_fails_the_play_with_a_clear_error(fleet: Fleet) -> None:
    email, _ = await fleet.subscriber("standard")
    stopped: list[str] = []

    async def on_segment(n: int, edge_id: str) -> None:
        if n == 2:  # the whole fleet goes away mid-play
            for name, edge in fleet.edges.items():
                await edge.stop()
                stopped.append(name)

    player = Player(fleet.options(email, min_timeout=0.5, rounds=2), on_segment=on_segment)
    with pytest.raises(PlayerError, match="every edge failed 2 times in a row"):
        await player.run()
    fleet.edges.clear()  # stopped already
    assert sorted(stopped) == ["e1", "e2", "e3"]
    s = player.summary
    assert sum(s.failures.values()) == 2 * len(s.edges) and not s.completed, s
    # The control plane was told: the play is stopped, with the position reached.
    play = await fleet.control.db.fetchone(
        "SELECT stopped_at FROM plays WHERE id = ?", (s.play_id,)
    )
    assert play is not None and play["stopped_at"] is not None


# -- hostile or broken answers, from stand-in services ------------------------------------


@dataclass
class StandIn:
    """A stand-in control plane and two stand-in edges whose answers a test bends."""

    url: str
    edges: list[str]
    master: str = ""
    # edge -> ok|500|truncate|badlength|badstatus|gzip|ignore-range|slow
    modes: dict[int, str] = dataclasses.field(default_factory=dict)
    hits: dict[int, int] = dataclasses.field(default_factory=dict)
    events: list[str] = dataclasses.field(default_factory=list)
    progress_at: list[float] = dataclasses.field(default_factory=list)  # monotonic times
    playlists: dict[str, str] = dataclasses.field(default_factory=dict)  # "low/index.m3u8"
    requested: list[str] = dataclasses.field(default_factory=list)  # media file names
    accept_encoding: list[str] = dataclasses.field(default_factory=list)
    slow_answered_at: float | None = None  # when the slow s2.m4s was answered
    refuse_heartbeats: bool = False  # progress events answered 409 lease_expired


MEDIA = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns1.m4s\n#EXTINF:2,\ns2.m4s\n#EXT-X-ENDLIST\n"
SEGMENT = bytes(range(256)) * 64
HALF = len(SEGMENT) // 2
MEDIA_RANGES = (  # the same two segments as byte ranges of one file
    "#EXTM3U\n#EXT-X-VERSION:4\n#EXT-X-TARGETDURATION:2\n"
    f"#EXTINF:2,\n#EXT-X-BYTERANGE:{HALF}@0\nall.mp4\n"
    f"#EXTINF:2,\n#EXT-X-BYTERANGE:{HALF}@{HALF}\nall.mp4\n#EXT-X-ENDLIST\n"
)
SLOW_S = 2.5


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    st = StandIn("", [])

    def edge_app(k: int) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            st.hits[k] = st.hits.get(k, 0) + 1
            parts = request.path.rsplit("/", 2)
            name = parts[-1]
            if name == "master.m3u8":
                return web.Response(text=st.master)
            if "/".join(parts[-2:]) in st.playlists:
                return web.Response(text=st.playlists["/".join(parts[-2:])])
            if name == "index.m3u8":
                return web.Response(text=MEDIA)
            st.requested.append(name)
            st.accept_encoding.append(request.headers.get("Accept-Encoding", ""))
            mode = st.modes.get(k, "ok")
            if mode == "500":
                return web.Response(status=500)
            if mode in ("badlength", "badstatus"):
                assert request.transport is not None
                request.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"
                    if mode == "badlength"
                    else b"HTTP/1.1 abc\r\n\r\n"
                )
                request.transport.close()
                return web.Response()
            if mode == "gzip":  # compressed whatever the client accepts
                gz = web.Response(body=SEGMENT)
                gz.enable_compression(web.ContentCoding.gzip)
                return gz
            if mode == "slow" and name == "s2.m4s":
                await asyncio.sleep(SLOW_S)
                st.slow_answered_at = time.monotonic()
            ranged = request.headers.get("Range", "")
            if ranged.startswith("bytes=") and mode != "ignore-range":
                first, last = (int(x) for x in ranged[6:].split("-"))
                return web.Response(
                    status=206,
                    body=SEGMENT[first : last + 1],
                    headers={"Content-Range": f"bytes {first}-{last}/{len(SEGMENT)}"},
                )
            resp = web.StreamResponse(headers={"Content-Length": str(len(SEGMENT))})
            await resp.prepare(request)
            if mode == "truncate":
                await resp.write(SEGMENT[:1000])
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(SEGMENT)
            return resp

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        return app

    st.edges = [await serve(edge_app(0)), await serve(edge_app(1))]

    async def signin(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("password") != PASSWORD:
            return web.json_response(
                {"error": {"code": "invalid_credentials", "message": "no", "details": {}}},
                status=401,
            )
        return web.json_response({"token": "session-token"}, status=201)

    async def profiles(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": "p1"}], "total": 1})

    async def playback(request: web.Request) -> web.Response:
        prefix = "/_t/TOKEN/v/t1/"
        return web.json_response(
            {
                "play_id": "play1",
                "heartbeat_interval": 1.0,
                "resume_position": 0,
                "edges": [{"id": f"s{k}", "url": u} for k, u in enumerate(st.edges)],
                "manifests": {"hls_edge": st.edges[0] + prefix + "master.m3u8", "hls": ""},
            },
            status=201,
        )

    async def events(request: web.Request) -> web.Response:
        kind = (await request.json())["kind"]
        st.events.append(kind)
        if kind == "progress":
            st.progress_at.append(time.monotonic())
            if st.refuse_heartbeats:
                return web.json_response(
                    {"error": {"code": "lease_expired", "message": "gone", "details": {}}},
                    status=409,
                )
        return web.json_response({"stopped": False})

    control = web.Application()
    control.router.add_post("/v1/sessions", signin)
    control.router.add_get("/v1/profiles", profiles)
    control.router.add_post("/v1/playback", playback)
    control.router.add_post("/v1/playback/{id}/events", events)
    st.url = await serve(control)
    st.master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100000\nlow/index.m3u8\n"
    try:
        yield st
    finally:
        for r in runners:
            await r.cleanup()


def stand_in_options(st: StandIn, **kw: Any) -> PlayerOptions:
    return PlayerOptions(
        control=st.url, email="a@example.com", password=PASSWORD, title="t1", speed=50.0, **kw
    )


# badlength/badstatus: a malformed answer (aiohttp's ClientResponseError) fails over too.
@pytest.mark.parametrize("mode", ["500", "truncate", "badlength", "badstatus"])
async def test_a_5xx_or_a_truncated_body_fails_over(stand_in: StandIn, mode: str) -> None:
    stand_in.modes[0] = mode
    summary = await Player(stand_in_options(stand_in)).run()
    assert summary.completed and summary.rebuffers == 0, summary
    assert summary.failovers == 1 and summary.failures == {"s0": 1}, summary
    # Both segments from the second edge (the player stays where it failed over to).
    assert summary.bytes_by_edge["s1"] == 2 * len(SEGMENT), summary
    assert stand_in.events[-1] == "stop"


@pytest.mark.parametrize(
    ("master", "message"),
    [
        ("<html>502 Bad Gateway</html>", "must start with #EXTM3U"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nfile:///etc/passwd\n", "not an http"),
        ('#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO="x"\nlow/index.m3u8\n', "AUDIO group"),
    ],
)
async def test_a_hostile_playlist_is_a_clear_error(
    stand_in: StandIn, master: str, message: str
) -> None:
    stand_in.master = master
    with pytest.raises(PlayerError, match=f"unplayable playlist .*{message}"):
        await Player(stand_in_options(stand_in)).run()
    # The control plane heard about it: an error event, then the stop.
    assert stand_in.events == ["error", "stop"]


async def test_cli_exit_code_for_a_hostile_playlist(stand_in: StandIn) -> None:
    stand_in.master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n"
    proc = await asyncio.to_thread(
        run_cli, "--control", stand_in.url, "--email", "a@example.com", "--title", "t1",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "unplayable playlist" in proc.stderr and "without a URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "TOKEN" not in proc.stderr  # URLs are logged without their token


async def test_a_200_to_a_range_request_fails_over(stand_in: StandIn) -> None:
    # The first edge ignores Range (the whole file, 200): the next edge answers the 206.
    stand_in.playlists["low/index.m3u8"] = MEDIA_RANGES
    stand_in.modes[0] = "ignore-range"
    summary = await Player(stand_in_options(stand_in)).run()
    assert summary.completed and summary.failovers == 1, summary
    assert summary.failures == {"s0": 1}, summary
    assert summary.bytes_by_edge["s1"] == len(SEGMENT), summary  # two halves


async def test_a_compressed_answer_is_not_truncated(stand_in: StandIn) -> None:
    # Content-Length counts the gzip bytes, aiohttp hands out the decoded body: not a
    # truncation. And the player asks for identity in the first place.
    stand_in.modes = {0: "gzip", 1: "gzip"}
    summary = await Player(stand_in_options(stand_in)).run()
    assert summary.completed and summary.failovers == 0 and not summary.failures, summary
    playlists = len(stand_in.master) + len(MEDIA)
    assert summary.bytes_by_edge["s0"] == playlists + 2 * len(SEGMENT), summary
    assert stand_in.accept_encoding == ["identity", "identity"]


async def test_heartbeats_run_on_the_wall_clock_through_a_stall(stand_in: StandIn) -> None:
    # The second segment takes 2.5 s (the play stalls: 4 s of media at speed 50): the lease
    # is wall time, so heartbeats (every 1 s here) go on during the stall, and are not sent
    # per media second (one every 20 ms at speed 50).
    stand_in.modes[0] = "slow"
    summary = await Player(stand_in_options(stand_in, min_timeout=10.0)).run()
    assert summary.completed and summary.rebuffers == 1 and not summary.failures, summary
    assert stand_in.slow_answered_at is not None
    during = [t for t in stand_in.progress_at if t < stand_in.slow_answered_at]
    assert len(during) >= 2, (stand_in.progress_at, stand_in.slow_answered_at)
    gaps = [b - a for a, b in itertools.pairwise(stand_in.progress_at)]
    assert all(g > 0.8 for g in gaps), gaps
    assert summary.heartbeats == len(stand_in.progress_at)
    assert stand_in.events[-1] == "stop"


async def test_a_refused_heartbeat_ends_the_play_during_a_stall(stand_in: StandIn) -> None:
    # The lease ended (409): the play stops at the next heartbeat, not after the download.
    stand_in.modes[0] = "slow"
    stand_in.refuse_heartbeats = True
    t0 = time.monotonic()
    with pytest.raises(PlayerError, match="ended by the control plane"):
        await Player(stand_in_options(stand_in, min_timeout=10.0)).run()
    assert time.monotonic() - t0 < SLOW_S, "the play waited for the slow download"
    assert stand_in.events[-2:] == ["error", "stop"]


async def test_a_variant_shorter_than_the_first_is_skipped(
    stand_in: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # The top variant's playlist ends after one segment, the first's after two. Past 2 s BBA
    # asks for the top; its last segment would not advance the buffer (fetched again and
    # again): the player takes the nearest variant that has media there.
    stand_in.master = (
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100000\nlow/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=200000\nhigh/index.m3u8\n"
    )
    stand_in.playlists["high/index.m3u8"] = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nh1.m4s\n#EXT-X-ENDLIST\n"
    )
    options = stand_in_options(stand_in, abr=AbrConfig(reservoir=0.0, cushion=0.1, max_buffer=8))
    caplog.set_level(logging.INFO, logger="control.player")
    summary = await asyncio.wait_for(Player(options).run(), 10)
    assert summary.completed and summary.played_s == pytest.approx(4.0), summary
    assert "event=variant_skipped variant=200k" in caplog.text
    assert stand_in.requested == ["s1.m4s", "s2.m4s"], stand_in.requested


@pytest.mark.parametrize(
    "url", ["http://[::1/x", "http://h:abc/x", "http://h:99999999/x", "http://h:-1/x"]
)
def test_malformed_edge_urls_are_refused(url: str) -> None:
    # A PlayerError (a clear message), not urlsplit's ValueError or aiohttp's InvalidURL.
    with pytest.raises(PlayerError, match="not a valid URL"):
        parse_edges({"edges": [{"id": "e1", "url": url}]})


async def test_an_invalid_url_is_an_error_without_its_token() -> None:
    player = Player(
        PlayerOptions(control="http://127.0.0.1:9", email="a@b", password="p", title="t")
    )
    async with aiohttp.ClientSession() as http:
        player.http = http
        with pytest.raises(PlayerError) as info:
            await player._get("http://h:abc/_t/SECRET-TOKEN/v/x.m4s", None, 1.0, 1000)
    assert "InvalidUrlClientError" in str(info.value) and "SECRET" not in str(info.value)


def test_an_unforeseen_exception_exits_1_with_only_its_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(player: Player) -> None:
        raise RuntimeError("http://e/_t/SECRET-TOKEN/x.m4s")

    monkeypatch.setattr(player_main, "_run", boom)
    code = player_main.main(
        ["--control", "http://127.0.0.1:9", "--email", "a@b", "--password", "p", "--title", "t"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError" in err, err
    assert "SECRET" not in err and "Traceback" not in err, err
