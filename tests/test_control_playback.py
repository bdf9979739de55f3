"""Playback authorization and playback events over real HTTP, on SQLite and PostgreSQL, with a
real steering service (and, end to end, a real edge enforcing the tokens)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from edge.tokens import TokenRejected, load_keys, split_token, verify
from steering.app import create_app as create_steering
from steering.config import EdgeConfig, SiteConfig, SteeringConfig
from steering.manifests import parse_hls_steering
from tests.conftest import TEST_KEYS, blob, edge_config, free_port, put
from tests.control_support import PASSWORD, FakeClock, RunningControl, User
from tests.m3u8check import parse_attributes

LEASE = 30.0
TOKEN_TTL = 3600.0

LADDER: list[dict[str, Any]] = [
    {"name": "240p", "width": 426, "height": 240, "bandwidth": 400_000,
     "codecs": "avc1.4d4015,mp4a.40.2", "frame_rate": 30.0},
    {"name": "480p", "width": 854, "height": 480, "bandwidth": 1_200_000,
     "codecs": "avc1.4d401e,mp4a.40.2", "frame_rate": 30.0},
    {"name": "720p", "width": 1280, "height": 720, "bandwidth": 2_800_000,
     "codecs": "avc1.64001f,mp4a.40.2", "frame_rate": 30.0},
    {"name": "2160p", "width": 3840, "height": 2160, "bandwidth": 16_000_000,
     "codecs": "hvc1.2.4.L150.B0,mp4a.40.2", "frame_rate": 30.0},
]  # fmt: skip


# -- fixtures -----------------------------------------------------------------------------


class StandInEdge:
    """Answers /healthz, so the steering service keeps it in its answers."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    @staticmethod
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"state": "ok"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def steering() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``url = await steering({edge_id: edge_url}, origin_url=None)``: a steering service;
    ``await steering(n=3)`` makes n stand-in edges."""
    runners: list[web.AppRunner] = []

    async def start(
        edges: dict[str, str] | None = None, *, n: int = 3, origin_url: str | None = None
    ) -> str:
        if edges is None:
            edges = {}
            for i in range(n):
                e = StandInEdge()
                await e.start()
                assert e.runner is not None
                runners.append(e.runner)
                edges[f"par{i + 1}"] = e.url
        config = SteeringConfig(
            sites=(SiteConfig("paris", 48.85, 2.35),),
            edges=tuple(EdgeConfig(i, "paris", u) for i, u in edges.items()),
            origin_url=origin_url,
            default_site="paris",
            probe_interval=0.2,
            dead_after=30.0,
        )
        runner = web.AppRunner(create_steering(config), handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for r in reversed(runners):
        await r.cleanup()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "edge.keys"
    path.write_text(TEST_KEYS)
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def playback_config(keys_file: Path, **changes: Any) -> dict[str, Any]:
    return {
        "signing_keys_file": str(keys_file),
        "token_ttl": TOKEN_TTL,
        "lease_ttl": LEASE,
        **changes,
    }


async def add_title(
    rc: RunningControl,
    title_id: str = "night-train",
    *,
    maturity: int = 12,
    key: str | None = None,
    renditions: list[dict[str, Any]] | None = None,
    duration: float = 6000.0,
    kind: str = "movie",
) -> str:
    """A published title, as the catalog feed would have stored it."""
    now = rc.clock()
    media_key = None if kind == "series" else (key or title_id.replace("-", "_"))
    await rc.control.db.execute(
        "INSERT INTO titles (id, kind, name, maturity, duration, media_key, renditions,"
        " published, source, released_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 'admin', ?, ?)",
        (
            title_id,
            kind,
            title_id.replace("-", " ").title(),
            maturity,
            duration if kind == "movie" else None,
            media_key,
            json.dumps(LADDER if renditions is None else renditions),
            now,
            now,
        ),
    )
    await rc.control.catalog.load()
    return title_id


async def start(rc: RunningControl, user: User, title_id: str = "night-train", **extra: Any) -> Any:
    body = {"profile_id": user.profile_id, "title_id": title_id, **extra}
    return await rc.api.post("/v1/playback", json=body, token=user.token)


async def another_session(rc: RunningControl, user: User, device: str) -> User:
    r = await rc.api.post(
        "/v1/sessions", json={"email": user.email, "password": PASSWORD, "device": device}
    )
    assert r.status == 201, r
    return User(user.email, user.password, r.body["token"], user.account_id, user.profile_id)


async def event(rc: RunningControl, user: User, play_id: str, **body: Any) -> Any:
    body.setdefault("client_at", rc.clock())
    return await rc.api.post(f"/v1/playback/{play_id}/events", json=body, token=user.token)


async def play_row(rc: RunningControl, play_id: str) -> dict[str, Any]:
    row = await rc.control.db.fetchone("SELECT * FROM plays WHERE id = ?", (play_id,))
    assert row is not None
    return dict(row)


# -- starting: steering, tokens, manifests -----------------------------------------------


async def test_start_answers_steerings_ranked_edges_with_signed_prefixes(
    start_control: Any, steering: Any, keys_file: Path, http: aiohttp.ClientSession
) -> None:
    steer_url = await steering(n=3)
    rc = await start_control(playback=playback_config(keys_file, steering_url=steer_url))
    await add_title(rc, key="night_train")
    user = await rc.subscriber("standard")
    r = await start(rc, user, device="living room")
    assert r.status == 201, r
    body = r.body
    now = rc.clock()

    # The ranked edges are steering's, in its order, for this title and this client.
    async with http.get(
        steer_url + "/v1/steer", params={"key": "night_train", "client": "127.0.0.1"}
    ) as s:
        ranked = [e["edge"] for e in (await s.json())["edges"]]
    assert [e["id"] for e in body["edges"]] == ranked and len(ranked) == 3

    # One token for /v/night_train/, expiring token_ttl from now, on every edge's prefix.
    keys = load_keys(keys_file)
    assert body["expires_at"] == int(now + TOKEN_TTL)
    tokens = set()
    for e in body["edges"]:
        u = urlsplit(e["url_prefix"])
        token, path = split_token(u.path)
        assert path == "/v/night_train/" and token is not None
        tokens.add(token)
        assert token.split(".")[1] == str(int(now + TOKEN_TTL))
        verify(keys, token, "/v/night_train/720p/index.m3u8", now, None)
        verify(keys, token, "/v/night_train/master.m3u8", now + TOKEN_TTL - 1, None)
        for path, at, reason in [
            ("/v/other_title/master.m3u8", now, "out_of_scope"),
            ("/v/night_train2/master.m3u8", now, "out_of_scope"),
            ("/v/night_train/master.m3u8", now + TOKEN_TTL, "expired"),
        ]:
            with pytest.raises(TokenRejected) as exc:
                verify(keys, token, path, at, None)
            assert exc.value.reason == reason
    assert len(tokens) == 1

    first = body["edges"][0]["url_prefix"]
    assert body["manifests"] == {
        "hls": f"{rc.url}/v1/playback/{body['play_id']}/master.m3u8",
        "hls_edge": first + "master.m3u8",
        "dash": first + "manifest.mpd",
    }
    assert body["max_height"] == 1080
    assert [x["name"] for x in body["renditions"]] == ["240p", "480p", "720p"]
    assert body["lease_expires_at"] == now + LEASE and body["heartbeat_interval"] == LEASE / 3
    assert body["resume_position"] == 0 and body["episode_id"] is None
    assert r.headers["Cache-Control"] == "no-store"

    # The content steering URL answers a valid HLS steering manifest cloning the playlist's
    # pathway onto every ranked edge, in rank order.
    hls = body["steering"]["hls"]
    q = parse_qs(urlsplit(hls).query)
    assert q == {"key": ["night_train"], "client": ["127.0.0.1"], "base": ["cdn"]}
    async with http.get(hls) as s:
        assert s.status == 200, await s.text()
        m = parse_hls_steering(await s.json())
    assert list(m.priority) == ranked
    hosts = {e["id"]: urlsplit(e["url_prefix"]).netloc for e in body["edges"]}
    assert {c.id: (c.base_id, c.host) for c in m.clones} == {
        i: ("cdn", h) for i, h in hosts.items()
    }
    async with http.get(body["steering"]["dash"]) as s:
        assert s.status == 200 and "SERVICE-LOCATION-PRIORITY" in await s.json()

    assert rc.counter("control_playback_starts", "ok") == 1
    assert rc.counter("control_steering_requests", "ok") == 1
    live = await rc.api.get("/v1/playback", token=user.token)
    assert live.status == 200 and live.body["total"] == 1
    item = live.body["items"][0]
    assert item["play_id"] == body["play_id"] and item["device"] == "living room"
    assert item["title_name"] == "Night Train" and item["profile_id"] == user.profile_id


def _playlist(text: str) -> tuple[dict[str, str], list[tuple[dict[str, str], str]]]:
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    steering: dict[str, str] = {}
    variants = []
    pending = None
    for n, ln in enumerate(lines, 1):
        if ln.startswith("#EXT-X-CONTENT-STEERING:"):
            steering = parse_attributes(ln.partition(":")[2], Path("m"), n)
        elif ln.startswith("#EXT-X-STREAM-INF:"):
            pending = parse_attributes(ln.partition(":")[2], Path("m"), n)
        elif ln and not ln.startswith("#"):
            assert pending is not None
            variants.append((pending, ln))
            pending = None
    return steering, variants


async def test_session_playlist_enforces_the_plans_resolution(
    start_control: Any, steering: Any, keys_file: Path
) -> None:
    rc = await start_control(playback=playback_config(keys_file, steering_url=await steering()))
    await add_title(rc)
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 201, r
    path = f"/v1/playback/{r.body['play_id']}/master.m3u8"
    p = await rc.api.get(path, token=user.token)
    assert p.status == 200, p
    assert p.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert p.headers["Cache-Control"] == "no-store"
    steering_tag, variants = _playlist(p.body)
    first = r.body["edges"][0]["url_prefix"]
    assert [uri for _, uri in variants] == [first + "240p/index.m3u8", first + "480p/index.m3u8"]
    assert all(a["PATHWAY-ID"] == '"cdn"' for a, _ in variants)
    assert steering_tag == {
        "SERVER-URI": f'"{r.body["steering"]["hls"]}"',
        "PATHWAY-ID": '"cdn"',
    }
    assert [x["height"] for x in r.body["renditions"]] == [240, 480]

    other = await rc.subscriber("basic")
    assert (await rc.api.get(path, token=other.token)).status == 404
    assert (await rc.api.get(path)).status == 401
    assert (await rc.api.get("/v1/playback/nope!/master.m3u8", token=user.token)).status == 404
    # Once stopped, the session's playlist is gone too.
    assert (
        await rc.api.delete(f"/v1/playback/{r.body['play_id']}", token=user.token)
    ).status == 204
    gone = await rc.api.get(path, token=user.token)
    assert gone.status == 409 and gone.body["error"]["code"] == "stopped"


async def test_end_to_end_through_a_real_edge(
    start_control: Any,
    steering: Any,
    edges: Any,
    keys_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    upstream = tmp_path / "upstream"
    segment = blob(4000, seed=9)
    put(upstream, "/v/night_train/master.m3u8", b"#EXTM3U\n#EXT-X-VERSION:7\n")
    put(upstream, "/v/night_train/240p/index.m3u8", b"#EXTM3U\n#EXT-X-ENDLIST\n")
    put(upstream, "/v/night_train/240p/seg00001.m4s", segment)
    put(upstream, "/v/other/master.m3u8", b"#EXTM3U\n")
    (tmp_path / "edge").mkdir()
    edge = await edges(edge_config(tmp_path / "edge", [f"file://{upstream}"], signed=True))
    steer_url = await steering({"par1": edge.url})
    # Wall time: the edge checks the token's expiry against its own clock.
    rc = await start_control(
        clock=FakeClock(time.time()),
        playback=playback_config(keys_file, steering_url=steer_url),
    )
    await add_title(rc, key="night_train")
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 201, r
    prefix = r.body["edges"][0]["url_prefix"]
    assert prefix.startswith(edge.url + "/_t/")

    async with http.get(r.body["manifests"]["hls_edge"]) as m:
        assert m.status == 200 and (await m.read()).startswith(b"#EXTM3U")
    async with http.get(prefix + "240p/seg00001.m4s") as s:
        assert s.status == 200 and await s.read() == segment
    # The session playlist's variant URI is fetchable as is.
    p = await rc.api.get(f"/v1/playback/{r.body['play_id']}/master.m3u8", token=user.token)
    _, variants = _playlist(p.body)
    async with http.get(variants[0][1]) as v:
        assert v.status == 200
    # Another title under the same token, and a tampered token: refused by the edge.
    other = prefix.replace("/v/night_train/", "/v/other/") + "master.m3u8"
    async with http.get(other) as o:
        assert o.status == 403
    token, _ = split_token(urlsplit(prefix).path)
    assert token is not None
    mac = token[-1]
    tampered = prefix.replace(token, token[:-1] + ("A" if mac != "A" else "B"))
    async with http.get(tampered + "master.m3u8") as t:
        assert t.status == 403


async def test_tokens_bound_to_the_client_address(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(
        playback=playback_config(keys_file, origin_url="http://origin.test", bind_client_ip=True)
    )
    await add_title(rc, key="night_train")
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 201, r
    token, _ = split_token(urlsplit(r.body["edges"][0]["url_prefix"]).path)
    keys, now = load_keys(keys_file), rc.clock()
    verify(keys, token, "/v/night_train/master.m3u8", now, "127.0.0.1")
    verify(keys, token, "/v/night_train/master.m3u8", now, "::ffff:127.0.0.1")
    with pytest.raises(TokenRejected) as exc:
        verify(keys, token, "/v/night_train/master.m3u8", now, "198.51.100.7")
    assert exc.value.reason == "wrong_client"
    assert r.body["steering"] is None  # no steering configured: no content steering either
    p = await rc.api.get(r.body["manifests"]["hls"].removeprefix(rc.url), token=user.token)
    assert p.status == 200 and "EXT-X-CONTENT-STEERING" not in p.body
    assert r.body["edges"][0]["url_prefix"] + "240p/index.m3u8" in p.body


# -- entitlement and maturity ------------------------------------------------------------


async def test_no_subscription_is_402_and_a_canceled_one_plays_until_period_end(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(
        playback=playback_config(keys_file, origin_url="http://origin.test"),
        sessions={"ttl": "90d"},
    )
    await add_title(rc)
    nobody = await rc.signup()
    r = await start(rc, nobody)
    assert r.status == 402 and r.body["error"]["code"] == "subscription_required", r
    assert rc.counter("control_playback_starts", "no_subscription") == 1

    user = await rc.subscriber("basic")
    assert (await rc.api.delete("/v1/subscription", token=user.token)).status == 204
    r = await start(rc, user)
    assert r.status == 201, r
    assert r.body["edges"] == [
        {"id": "origin", "url_prefix": r.body["edges"][0]["url_prefix"]}
    ] and r.body["edges"][0]["url_prefix"].startswith("http://origin.test/_t/")
    await rc.api.delete(f"/v1/playback/{r.body['play_id']}", token=user.token)
    rc.clock.advance(29 * 86400)
    assert (await start(rc, user)).status == 201
    rc.clock.advance(2 * 86400)  # past the 30-day period
    r = await start(rc, user)
    assert r.status == 402, r
    assert rc.counter("control_playback_starts", "no_subscription") == 2


async def test_kids_profile_does_not_find_a_16_plus_title(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc, "grown-ups", maturity=16)
    await add_title(rc, "cartoons", maturity=0)
    user = await rc.subscriber("premium")
    p = await rc.api.post("/v1/profiles", json={"name": "Kid", "kids": True}, token=user.token)
    assert p.status == 201, p
    kid = User(user.email, user.password, user.token, user.account_id, p.body["id"])
    r = await start(rc, kid, "grown-ups")
    assert r.status == 404 and r.body["error"]["code"] == "not_found", r
    assert rc.counter("control_playback_starts", "maturity") == 1
    assert (await start(rc, kid, "cartoons")).status == 201
    assert (await start(rc, user, "grown-ups")).status == 201
    # An unknown title and another account's profile are 404 as well.
    assert (await start(rc, user, "no-such-title")).status == 404
    other = await rc.subscriber("basic")
    stranger = User(other.email, other.password, other.token, other.account_id, kid.profile_id)
    assert (await start(rc, stranger, "cartoons")).status == 404


async def test_series_needs_an_episode(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc, "the-show", kind="series")
    now = rc.clock()
    await rc.control.db.execute(
        "INSERT INTO episodes (id, title_id, season, number, name, duration, media_key,"
        " renditions, updated_at) VALUES ('the-show-s1e1', 'the-show', 1, 1, 'Pilot', 1500,"
        " 'the_show_s1e1', ?, ?)",
        (json.dumps(LADDER), now),
    )
    user = await rc.subscriber("standard")
    r = await start(rc, user, "the-show")
    assert r.status == 400 and "episode_id" in r.body["error"]["details"]["fields"], r
    r = await start(rc, user, "the-show", episode_id="the-show-s1e1")
    assert r.status == 201, r
    assert r.body["episode_id"] == "the-show-s1e1"
    assert "/v/the_show_s1e1/" in r.body["edges"][0]["url_prefix"]
    e = await event(rc, user, r.body["play_id"], kind="stop", position=700.0)
    assert e.status == 200, e
    again = await start(rc, user, "the-show", episode_id="the-show-s1e1")
    assert again.status == 201 and again.body["resume_position"] == 700.0


# -- the concurrent-stream limit ---------------------------------------------------------


async def test_stream_limit_stop_and_vanished_players(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc)
    user = await rc.subscriber("basic")  # 1 stream
    tv = await another_session(rc, user, "tv")
    first = await start(rc, user, device="phone")
    assert first.status == 201, first
    r = await start(rc, tv, device="tv")
    assert r.status == 409 and r.body["error"]["code"] == "stream_limit", r
    assert r.body["error"]["details"] == {"max_streams": 1, "active": 1}
    live = await rc.api.get("/v1/playback", token=tv.token)
    assert [i["device"] for i in live.body["items"]] == ["phone"]

    # Stopped: the slot is free.
    assert (
        await rc.api.delete(f"/v1/playback/{first.body['play_id']}", token=user.token)
    ).status == 204
    again = await rc.api.delete(f"/v1/playback/{first.body['play_id']}", token=user.token)
    assert again.status == 409 and again.body["error"]["code"] == "stopped"
    second = await start(rc, tv, device="tv")
    assert second.status == 201, second

    # The tv player vanishes (no heartbeat): after lease_ttl its slot is free again.
    rc.clock.advance(LEASE - 1)
    assert (await start(rc, user)).status == 409
    rc.clock.advance(2)
    assert (await rc.api.get("/v1/playback", token=user.token)).body["total"] == 0
    third = await start(rc, user, device="phone")
    assert third.status == 201, third
    assert rc.counter("control_leases_expired") == 1
    row = await play_row(rc, second.body["play_id"])
    assert row["stopped_at"] == row["lease_expires_at"]
    # The vanished player coming back is told to start again.
    late = await event(rc, tv, second.body["play_id"], kind="progress", position=10.0)
    assert late.status == 409 and late.body["error"]["code"] == "lease_expired", late
    assert rc.counter("control_playback_starts", "stream_limit") == 2
    assert rc.counter("control_leases_expired") == 1


async def test_progress_renews_the_lease(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc)
    user = await rc.subscriber("basic")
    tv = await another_session(rc, user, "tv")
    r = await start(rc, user)
    play = r.body["play_id"]
    for _ in range(4):  # well past one lease in total, renewed every 20 s
        rc.clock.advance(20)
        e = await event(rc, user, play, kind="progress", position=rc.clock() % 1000)
        assert e.status == 200, e
        assert e.body["lease_expires_at"] == rc.clock() + LEASE and not e.body["stopped"]
        assert (await start(rc, tv)).status == 409
    assert rc.counter("control_playback_events", "progress") == 4
    # Heartbeats stop: the lease runs out; progress after that is refused and counted once.
    rc.clock.advance(LEASE)
    late = await event(rc, user, play, kind="progress", position=5.0)
    assert late.status == 409 and late.body["error"]["code"] == "lease_expired"
    assert rc.counter("control_leases_expired") == 1
    assert (await start(rc, tv)).status == 201
    assert rc.counter("control_leases_expired") == 1


async def test_concurrent_starts_never_exceed_the_plan(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc)
    user = await rc.subscriber("standard")  # 2 streams
    results = await asyncio.gather(*(start(rc, user, device=f"d{i}") for i in range(5)))
    assert sorted(r.status for r in results) == [201, 201, 409, 409, 409], results
    assert (await rc.api.get("/v1/playback", token=user.token)).body["total"] == 2


# -- steering failures -------------------------------------------------------------------


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("failure", ["error", "timeout"])
async def test_steering_down_falls_back_to_the_origin(
    start_control: Any, keys_file: Path, silent_server: str, failure: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}" if failure == "error" else silent_server
    rc = await start_control(
        playback=playback_config(
            keys_file, steering_url=down, origin_url="http://origin.test:8080", steering_timeout=0.2
        )
    )
    await add_title(rc)
    user = await rc.subscriber("standard")
    r = await start(rc, user)
    assert r.status == 201, r
    assert [e["id"] for e in r.body["edges"]] == ["origin"]
    assert r.body["edges"][0]["url_prefix"].startswith("http://origin.test:8080/_t/")
    assert r.body["manifests"]["hls_edge"].startswith("http://origin.test:8080/_t/")
    assert rc.counter("control_steering_requests", failure) == 1
    assert rc.counter("control_playback_starts", "steering_fallback") == 1
    assert rc.counter("control_playback_starts", "ok") == 0


async def test_steering_down_without_an_origin_is_503_and_frees_the_slot(
    start_control: Any, keys_file: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    rc = await start_control(playback=playback_config(keys_file, steering_url=down))
    await add_title(rc)
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 503 and r.body["error"]["code"] == "unavailable", r
    assert (await rc.api.get("/v1/playback", token=user.token)).body["total"] == 0


@pytest.mark.parametrize(
    "playback",
    [None, {"origin_url": "http://origin.test"}, "keys-only"],
    ids=["none", "no-keys", "no-edges"],
)
async def test_playback_not_configured_is_503(
    start_control: Any, keys_file: Path, playback: Any
) -> None:
    if playback == "keys-only":
        playback = playback_config(keys_file)
    rc = await start_control(**({"playback": playback} if playback else {}))
    await add_title(rc)
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 503, r


# -- events ------------------------------------------------------------------------------


async def test_events_update_the_play_resume_and_history(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc, duration=6000.0)
    user = await rc.subscriber("standard")
    r = await start(rc, user)
    play = r.body["play_id"]

    rc.clock.advance(20)
    e = await event(rc, user, play, kind="progress", position=15.0, bytes=5000)
    assert e.status == 200, e
    rc.clock.advance(10)
    # A jump of 3000 s in 10 s of wall time counts 10 s watched, not 2985.
    assert (await event(rc, user, play, kind="progress", position=3015.0, bytes=7000)).status == 200
    rc.clock.advance(5)
    err = await event(rc, user, play, kind="error", error="decode error: frame 12")
    assert err.status == 200, err
    rc.clock.advance(5)
    s = await event(rc, user, play, kind="stop", position=3020.0, bytes=1000)
    assert s.status == 200 and s.body["stopped"], s

    row = await play_row(rc, play)
    assert row["position"] == 3020.0 and row["bytes"] == 13000
    assert row["seconds_watched"] == pytest.approx(15 + 10 + 5)
    assert row["errors"] == 1 and row["last_error"] == "decode error: frame 12"
    assert row["stopped_at"] == rc.clock()
    for kind in ("progress", "stop"):
        again = await event(rc, user, play, kind=kind, position=1.0)
        assert again.status == 409 and again.body["error"]["code"] == "stopped", again
    assert rc.counter("control_playback_events", "progress") == 2
    assert rc.counter("control_playback_events", "error") == 1
    assert rc.counter("control_playback_events", "stop") == 1

    resume = await rc.api.get(
        f"/v1/profiles/{user.profile_id}/resume/night-train", token=user.token
    )
    assert resume.status == 200, resume
    assert resume.body["next"]["position"] == 3020.0
    history = await rc.api.get(f"/v1/profiles/{user.profile_id}/history", token=user.token)
    assert history.status == 200, history
    assert [(h["title"]["id"], h["position"]) for h in history.body["items"]] == [
        ("night-train", 3020.0)
    ]
    again = await start(rc, user)
    assert again.body["resume_position"] == 3020.0


async def test_an_older_client_position_does_not_win(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc)
    user = await rc.subscriber("standard")
    play = (await start(rc, user)).body["play_id"]
    t = rc.clock()
    await event(rc, user, play, kind="progress", position=500.0, client_at=t)
    await event(rc, user, play, kind="progress", position=100.0, client_at=t - 60)
    row = await rc.control.db.fetchone(
        "SELECT position FROM watch_state WHERE profile_id = ?", (user.profile_id,)
    )
    assert row is not None and row["position"] == 500.0
    ahead = await event(rc, user, play, kind="progress", position=1.0, client_at=t + 3600)
    assert ahead.status == 400 and "client_at" in ahead.body["error"]["details"]["fields"]


async def test_another_accounts_play_is_404(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc)
    owner = await rc.subscriber("standard")
    other = await rc.subscriber("standard")
    play = (await start(rc, owner)).body["play_id"]
    for method, path, body in [
        (
            "POST",
            f"/v1/playback/{play}/events",
            {"kind": "progress", "position": 1, "client_at": rc.clock()},
        ),
        ("DELETE", f"/v1/playback/{play}", None),
        ("GET", f"/v1/playback/{play}/master.m3u8", None),
        (
            "POST",
            "/v1/playback/unknown-play/events",
            {"kind": "stop", "position": 1, "client_at": rc.clock()},
        ),
        ("DELETE", "/v1/playback/unknown-play", None),
        ("DELETE", "/v1/playback/" + "x" * 65, None),
    ]:
        r = await rc.api.call(method, path, json=body, token=other.token)
        assert r.status == 404 and r.body["error"]["code"] == "not_found", (method, path, r)
    assert (await rc.api.get("/v1/playback", token=other.token)).body["total"] == 0
    # Still the owner's, untouched.
    assert (await play_row(rc, play))["stopped_at"] is None


# -- input validation --------------------------------------------------------------------


START_CASES = [
    ({"title_id": "night-train"}, "profile_id"),
    ({"profile_id": "P"}, "title_id"),
    ({"profile_id": "P", "title_id": 7}, "title_id"),
    ({"profile_id": "P", "title_id": "a' OR '1'='1"}, "title_id"),
    ({"profile_id": "P", "title_id": "x" * 65}, "title_id"),
    ({"profile_id": "P", "title_id": "night-train", "episode_id": ["e"]}, "episode_id"),
    ({"profile_id": "P", "title_id": "night-train", "device": "d" * 101}, "device"),
    ({"profile_id": "P", "title_id": "night-train", "device": "tv\u0000"}, "device"),
    ({"profile_id": "P", "title_id": "night-train", "extra": 1}, "extra"),
]


EVENT_CASES = [
    ({"kind": "pause", "position": 1}, "kind"),
    ({"position": 1}, "kind"),
    ({"kind": "progress"}, "position"),
    ({"kind": "progress", "position": -1}, "position"),
    ({"kind": "progress", "position": "10"}, "position"),
    ({"kind": "progress", "position": True}, "position"),
    ({"kind": "progress", "position": 1e12}, "position"),
    ({"kind": "progress", "position": 1, "bytes": -5}, "bytes"),
    ({"kind": "progress", "position": 1, "bytes": 1.5}, "bytes"),
    ({"kind": "progress", "position": 1, "client_at": "now"}, "client_at"),
    ({"kind": "stop", "position": 1, "client_at": 5}, "client_at"),
    ({"kind": "error", "error": "e" * 201}, "error"),
    ({"kind": "progress", "position": 1, "lease": 9}, "lease"),
]


async def test_bad_input_is_400(start_control: Any, keys_file: Path) -> None:
    """One control plane for the whole tables (a control plane per case on both backends
    would be slow); every case names the field."""
    rc = await start_control(playback=playback_config(keys_file, origin_url="http://origin.test"))
    await add_title(rc)
    user = await rc.subscriber("standard")
    for body, field in START_CASES:
        body = {k: (user.profile_id if v == "P" else v) for k, v in body.items()}
        r = await rc.api.post("/v1/playback", json=body, token=user.token)
        assert r.status == 400 and field in r.body["error"]["details"]["fields"], (body, r)
    assert (await rc.api.get("/v1/playback", token=user.token)).body["total"] == 0
    play = (await start(rc, user)).body["play_id"]
    for body, field in EVENT_CASES:
        body = dict(body)
        body.setdefault("client_at", rc.clock())
        r = await rc.api.post(f"/v1/playback/{play}/events", json=body, token=user.token)
        assert r.status == 400 and field in r.body["error"]["details"]["fields"], (body, r)
    for raw, ctype, status in [
        (b"{", "application/json", 400),
        (b"[]", "application/json", 400),
        (b"kind=stop", "application/x-www-form-urlencoded", 415),
    ]:
        r = await rc.api.post(
            f"/v1/playback/{play}/events",
            data=raw,
            headers={"Content-Type": ctype},
            token=user.token,
        )
        assert r.status == status, (raw, r)
    # Nothing above touched the play.
    row = await play_row(rc, play)
    assert row["position"] == 0 and row["stopped_at"] is None and row["errors"] == 0
    assert (await rc.api.post("/v1/playback", json={})).status == 401
    assert (await rc.api.get("/v1/playback")).status == 401
    assert (await rc.api.get("/v1/playback", params={"limit": "0"}, token=user.token)).status == 400


async def test_a_steering_answer_arriving_in_several_chunks_is_read_whole(
    start_control: Any, keys_file: Path
) -> None:
    """The answer is read to its end, not just its first chunk (which would fail to parse and
    fall back to the origin although steering answered)."""

    async def steer(request: web.Request) -> web.StreamResponse:
        body = json.dumps(
            {"edges": [{"edge": f"par{i}", "url": f"http://e{i}.test:8080"} for i in range(40)]}
        ).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(0, len(body), 200):
            await response.write(body[i : i + 200])
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/steer", steer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        rc = await start_control(
            playback=playback_config(
                keys_file, steering_url=url, origin_url="http://origin.test:8080"
            )
        )
        await add_title(rc)
        user = await rc.subscriber("standard")
        r = await start(rc, user)
        assert r.status == 201, r
        assert [e["id"] for e in r.body["edges"]] == [f"par{i}" for i in range(40)]
        assert rc.counter("control_playback_starts", "steering_fallback") == 0
    finally:
        await runner.cleanup()
