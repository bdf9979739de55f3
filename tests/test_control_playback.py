"""Playback authorization and playback events over real HTTP, on SQLite and PostgreSQL, with a
real steering service (and, end to end, a real edge enforcing the tokens)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web

from edge.tokens import TokenRejected, load_keys, signed_path, split_token, verify
from origin.catalog import summary
from origin.synth import synth_catalog
from steering.app import create_app as create_steering
from steering.config import EdgeConfig, SiteConfig, SteeringConfig
from steering.manifests import parse_hls_steering
from tests.conftest import TEST_KEYS, edge_config, free_port
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
    media: bool = True,
) -> str:
    """A published title, as the catalog feed would have stored it (``media=False``: one an
    administrator made, with no media attached yet)."""
    now = rc.clock()
    media_key = None if kind == "series" or not media else (key or title_id.replace("-", "_"))
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
    """A plan allowing the title's whole ladder (premium: 2160p) gets the title-wide token on
    every edge's prefix and the origin's own manifests through the first edge."""
    steer_url = await steering(n=3, origin_url="http://origin.test:8081")
    rc = await start_control(playback=playback_config(keys_file, steering_url=steer_url))
    await add_title(rc, key="night_train")
    user = await rc.subscriber("premium")
    r = await start(rc, user, device="living room")
    assert r.status == 201, r
    body = r.body
    now = rc.clock()

    # The ranked edges are steering's, in its order, for this title and this client; its last
    # resort, the origin (which refuses players), is not handed out.
    async with http.get(
        steer_url + "/v1/steer", params={"key": "night_train", "client": "127.0.0.1"}
    ) as s:
        ranked = [e["edge"] for e in (await s.json())["edges"]]
    assert ranked[-1] == "origin" and len(ranked) == 4
    assert [e["id"] for e in body["edges"]] == ranked[:-1]
    assert "origin.test" not in json.dumps(body)

    # One token for /v/night_train/, expiring token_ttl from now, on every edge's prefix.
    keys = load_keys(keys_file)
    assert body["expires_at"] == int(now + TOKEN_TTL)
    assert body["capped"] is False
    tokens = set()
    for e in body["edges"]:
        u = urlsplit(e["url_prefix"])
        assert e["url"] == f"{u.scheme}://{u.netloc}"
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
    hls = urlsplit(body["manifests"]["hls"])
    assert f"{hls.scheme}://{hls.netloc}{hls.path}" == (
        f"{rc.url}/v1/playback/{body['play_id']}/master.m3u8"
    )
    (playlist_token,) = parse_qs(hls.query)["token"]
    verify(keys, playlist_token, hls.path, now, None)
    assert body["manifests"]["hls_edge"] == first + "master.m3u8"
    assert body["manifests"]["dash"] == first + "manifest.mpd"
    assert body["max_height"] == 2160
    assert [x["name"] for x in body["renditions"]] == ["240p", "480p", "720p", "2160p"]
    assert body["lease_expires_at"] == now + LEASE and body["heartbeat_interval"] == LEASE / 3
    assert body["resume_position"] == 0 and body["episode_id"] is None
    assert r.headers["Cache-Control"] == "no-store"

    # The content steering URL answers a valid HLS steering manifest cloning the playlist's
    # pathway onto every ranked edge, in rank order.
    hls_steering = body["steering"]["hls"]
    q = parse_qs(urlsplit(hls_steering).query)
    assert q == {"key": ["night_train"], "client": ["127.0.0.1"], "base": ["cdn"]}
    async with http.get(hls_steering) as s:
        assert s.status == 200, await s.text()
        m = parse_hls_steering(await s.json())
    assert list(m.priority)[: len(body["edges"])] == [e["id"] for e in body["edges"]]
    # A clone's HOST is the edge's host name only: players replace the host name and keep the
    # playlist's port (hls.js sets URL.hostname), so a fleet's edges share scheme and port.
    hosts = {e["id"]: urlsplit(e["url"]).hostname for e in body["edges"]}
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
    steering, variants, _ = _playlist_media(text)
    return steering, variants


def _playlist_media(
    text: str,
) -> tuple[dict[str, str], list[tuple[dict[str, str], str]], list[dict[str, str]]]:
    """(EXT-X-CONTENT-STEERING attributes, [(STREAM-INF attributes, URI)], [EXT-X-MEDIA])."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    steering: dict[str, str] = {}
    variants = []
    media = []
    pending = None
    for n, ln in enumerate(lines, 1):
        if ln.startswith("#EXT-X-CONTENT-STEERING:"):
            steering = parse_attributes(ln.partition(":")[2], Path("m"), n)
        elif ln.startswith("#EXT-X-MEDIA:"):
            media.append(parse_attributes(ln.partition(":")[2], Path("m"), n))
        elif ln.startswith("#EXT-X-STREAM-INF:"):
            pending = parse_attributes(ln.partition(":")[2], Path("m"), n)
        elif ln and not ln.startswith("#"):
            assert pending is not None
            variants.append((pending, ln))
            pending = None
    return steering, variants, media


def _token_dir(uri: str) -> tuple[str, str]:
    """(token, directory under /v/<key>/) of a playlist URI."""
    token, path = split_token(urlsplit(uri).path)
    assert token is not None, uri
    parts = path.split("/")
    assert parts[:2] == ["", "v"] and len(parts) == 5, path
    return token, f"/v/{parts[2]}/{parts[3]}/"


async def test_session_playlist_enforces_the_plans_resolution(
    start_control: Any, steering: Any, keys_file: Path
) -> None:
    rc = await start_control(playback=playback_config(keys_file, steering_url=await steering()))
    await add_title(rc)
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 201, r
    # A capped plan gets no title-wide token at all: bare edge URLs, no whole-ladder manifests
    # (DASH: this service's per-session MPD instead of the origin's).
    assert r.body["capped"] is True
    assert all(e["url_prefix"] is None and "/_t/" not in e["url"] for e in r.body["edges"])
    assert r.body["manifests"]["hls_edge"] is None
    assert r.body["manifests"]["dash"].startswith(
        f"{rc.url}/v1/playback/{r.body['play_id']}/manifest.mpd?token="
    )
    path = f"/v1/playback/{r.body['play_id']}/master.m3u8"
    p = await rc.api.get(path, token=user.token)
    assert p.status == 200, p
    assert p.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert p.headers["Cache-Control"] == "no-store"
    steering_tag, variants = _playlist(p.body)
    first = r.body["edges"][0]["url"]
    assert [uri.split("/_t/")[0] for _, uri in variants] == [first, first]
    # Every variant has its own token, for its own directory only.
    keys, now = load_keys(keys_file), rc.clock()
    scopes = []
    for _, uri in variants:
        token, directory = _token_dir(uri)
        assert uri.endswith(directory + "index.m3u8")
        scopes.append(directory)
        verify(keys, token, directory + "seg00001.m4s", now, None)
        for other in ("/v/night_train/720p/seg00001.m4s", "/v/night_train/2160p/index.m3u8",
                      "/v/night_train/master.m3u8"):  # fmt: skip
            with pytest.raises(TokenRejected):
                verify(keys, token, other, now, None)
    assert scopes == ["/v/night_train/240p/", "/v/night_train/480p/"]
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


async def test_a_standard_plan_is_capped_below_a_2160p_ladder(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    await add_title(rc, "uhd", key="uhd")  # 240p..2160p: standard (1080p) is capped
    await add_title(rc, "hd", key="hd", renditions=LADDER[:3])  # up to 720p: standard is not
    user = await rc.subscriber("standard")
    uhd = await start(rc, user, "uhd")
    assert uhd.status == 201, uhd
    assert uhd.body["capped"] is True and uhd.body["edges"] == [
        {"id": "fallback", "url": "http://edges.test", "url_prefix": None}
    ]
    await rc.api.delete(f"/v1/playback/{uhd.body['play_id']}", token=user.token)
    hd = await start(rc, user, "hd")
    assert hd.status == 201, hd
    prefix = hd.body["edges"][0]["url_prefix"]
    assert hd.body["capped"] is False and prefix.startswith("http://edges.test/_t/")
    assert hd.body["manifests"]["hls_edge"] == prefix + "master.m3u8"


async def test_end_to_end_through_a_real_edge(
    start_control: Any,
    steering: Any,
    edges: Any,
    keys_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """The plan's resolution holds at a real edge checking the tokens: a basic-plan player
    fetches its renditions (and their audio) through the session playlist, and no token it was
    given opens a 1080p segment; a premium player gets both."""
    upstream = tmp_path / "upstream"
    (key,) = synth_catalog(upstream, titles=1, renditions=5, duration=8.0, seed=9)
    title_dir = upstream / "v" / key
    manifest = json.loads((title_dir / "manifest.json").read_text())
    ladder = summary(key, manifest)["renditions"]  # what the origin's catalog feed carries
    assert [r["name"] for r in ladder] == ["240p", "360p", "480p", "720p", "1080p"]
    (tmp_path / "edge").mkdir()
    edge = await edges(edge_config(tmp_path / "edge", [f"file://{upstream}"], signed=True))
    steer_url = await steering({"par1": edge.url}, origin_url="http://127.0.0.1:9")
    # Wall time: the edge checks the token's expiry against its own clock.
    rc = await start_control(
        clock=FakeClock(time.time()),
        playback=playback_config(keys_file, steering_url=steer_url),
    )
    await add_title(rc, key=key, renditions=ladder, duration=8.0)
    seg1080 = f"/v/{key}/1080p/seg00001.m4s"
    assert (title_dir / "1080p" / "seg00001.m4s").exists()

    # -- basic (480p): capped
    basic = await rc.subscriber("basic")
    r = await start(rc, basic)
    assert r.status == 201, r
    assert r.body["capped"] is True and r.body["edges"] == [
        {"id": "par1", "url": edge.url, "url_prefix": None}
    ]
    # The session playlist needs no header (as a native HLS player loads it).
    async with http.get(r.body["manifests"]["hls"]) as p:
        assert p.status == 200, await p.text()
        text = await p.text()
    _, variants, media = _playlist_media(text)
    uris = [uri for _, uri in variants] + [m["URI"].strip('"') for m in media]
    assert [_token_dir(u)[1] for u in uris] == [
        f"/v/{key}/{d}/" for d in ("240p", "360p", "480p", "audio_96k", "audio_128k")
    ]
    assert all(u.startswith(edge.url + "/_t/") for u in uris)
    # Every listed rendition plays through its URI: media playlist, init and segments.
    for uri in uris:
        async with http.get(uri) as v:
            assert v.status == 200, (uri, await v.text())
            playlist = await v.text()
        names = [ln.split('"')[1] for ln in playlist.splitlines() if ln.startswith("#EXT-X-MAP")]
        names += [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")][:2]
        directory = _token_dir(uri)[1]
        for name in names:
            async with http.get(urljoin(uri, name)) as seg:
                assert seg.status == 200, (uri, name)
                assert await seg.read() == (upstream / directory.lstrip("/") / name).read_bytes()
    # DASH: the per-session MPD (no header needed either) lists the same directories, each
    # Representation under a BaseURL with its own token; each plays through the real edge.
    async with http.get(r.body["manifests"]["dash"]) as d:
        assert d.status == 200, await d.text()
        assert d.headers["Content-Type"].startswith("application/dash+xml")
        mpd = ET.fromstring(await d.text())
    ns = "{urn:mpeg:dash:schema:mpd:2011}"
    dash_dirs = []
    for rep in mpd.iter(ns + "Representation"):
        (base_url,) = [u.text or "" for u in rep.findall(ns + "BaseURL")]
        template = rep.find(ns + "SegmentTemplate")
        assert template is not None and base_url.startswith(edge.url + "/_t/")
        directory = str(rep.get("id"))
        dash_dirs.append(directory)
        first = str(template.get("media")).replace("$Number%05d$", "00001")
        for name in (str(template.get("initialization")), first):
            async with http.get(urljoin(base_url, name)) as seg:
                assert seg.status == 200, (base_url, name)
                assert await seg.read() == (title_dir / name).read_bytes()
        # Its token opens its own directory only.
        async with http.get(urljoin(base_url, "1080p/seg00001.m4s")) as denied:
            assert denied.status == 403
    assert dash_dirs == ["240p", "360p", "480p", "audio_96k", "audio_128k"]
    # No token it was given opens a 1080p segment (nor the whole-ladder manifests).
    given = {_token_dir(u)[0] for u in uris}
    given |= set(parse_qs(urlsplit(r.body["manifests"]["hls"]).query)["token"])
    given |= set(parse_qs(urlsplit(r.body["manifests"]["dash"]).query)["token"])
    assert len(given) == 7
    for token in given:
        for path in (seg1080, f"/v/{key}/master.m3u8", f"/v/{key}/manifest.mpd"):
            async with http.get(edge.url + signed_path(token, path)) as denied:
                assert denied.status == 403, (token, path)
    # Nor does a directory token's prefix reach another directory through dot segments.
    token = _token_dir(uris[0])[0]
    async with http.get(edge.url + f"/_t/{token}/v/{key}/240p/../1080p/seg00001.m4s") as t:
        assert t.status in (400, 403, 404), t.status
    mac = token[-1]
    tampered = uris[0].replace(token, token[:-1] + ("A" if mac != "A" else "B"))
    async with http.get(tampered) as t:
        assert t.status == 403

    # -- premium (2160p): the whole ladder, title-wide token too
    premium = await rc.subscriber("premium")
    r = await start(rc, premium)
    assert r.status == 201, r
    prefix = r.body["edges"][0]["url_prefix"]
    assert r.body["capped"] is False and prefix.startswith(edge.url + "/_t/")
    for path in ("1080p/seg00001.m4s", "480p/seg00001.m4s"):
        async with http.get(prefix + path) as seg:
            assert seg.status == 200, path
            assert await seg.read() == (title_dir / path).read_bytes()
    async with http.get(r.body["manifests"]["hls_edge"]) as m:
        assert m.status == 200 and (await m.read()).startswith(b"#EXTM3U")
    async with http.get(r.body["manifests"]["hls"]) as p:
        _, variants = _playlist(await p.text())
    top = variants[-1][1]
    assert _token_dir(top)[1] == f"/v/{key}/1080p/"
    async with http.get(urljoin(top, "seg00001.m4s")) as seg:
        assert seg.status == 200
    # Another title under the title-wide token: refused by the edge.
    async with http.get(prefix.replace(f"/v/{key}/", "/v/other/") + "master.m3u8") as o:
        assert o.status == 403


@pytest.fixture(scope="module")
def real_title(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(upstream root, key): a short clip ingested for real (origin.ingest, so ffmpeg can
    decode it), 240p and 720p, under ``<root>/v/<key>/``."""
    import concurrent.futures
    import subprocess

    from origin.ffmpeg import ffmpeg_exe
    from origin.ingest import ingest_title
    from origin.ladder import Rung

    work = tmp_path_factory.mktemp("real")
    clip = work / "clip.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(clip)],
        check=True, timeout=60,
    )  # fmt: skip
    (work / "v").mkdir()
    ladder = (Rung("240p", 240, 300, 64), Rung("720p", 720, 1200, 96))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # away from pytest-asyncio's loop
        pool.submit(
            asyncio.run,
            ingest_title(
                clip, "real_clip", work / "v", ladder=ladder, preset="ultrafast", segment_seconds=2
            ),
        ).result()
    return work, "real_clip"


@pytest.mark.slow
async def test_ffmpeg_plays_the_session_playlist_url_through_a_real_edge(
    start_control: Any,
    steering: Any,
    edges: Any,
    keys_file: Path,
    tmp_path: Path,
    real_title: tuple[Path, str],
) -> None:
    """A player that cannot send headers (plain ffmpeg) plays manifests.hls as given: the
    playlist token, then the per-rendition edge tokens, through a real edge; it never reaches
    the rendition the plan withholds."""
    from origin.ffmpeg import ffmpeg_exe

    upstream, key = real_title
    manifest = json.loads((upstream / "v" / key / "manifest.json").read_text())
    (tmp_path / "edge").mkdir()
    edge = await edges(edge_config(tmp_path / "edge", [f"file://{upstream}"], signed=True))
    rc = await start_control(
        clock=FakeClock(time.time()),
        playback=playback_config(keys_file, steering_url=await steering({"par1": edge.url})),
    )
    await add_title(rc, key=key, renditions=summary(key, manifest)["renditions"], duration=4.0)
    user = await rc.subscriber("basic")
    r = await start(rc, user)
    assert r.status == 201 and r.body["capped"] is True, r
    # Run as a child process: the control plane and the edge serve it from this event loop.
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "info",
        "-i", r.body["manifests"]["hls"], "-map", "0", "-f", "null", "-",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    log = err.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    # It found the allowed variant and its audio, decoded them, and saw no 720p variant.
    assert re.search(r"Video: h264.*x240", log) and "Audio: aac" in log, log[-3000:]
    assert "x720" not in log


async def test_tokens_bound_to_the_client_address(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(
        playback=playback_config(keys_file, fallback_url="http://edges.test", bind_client_ip=True)
    )
    await add_title(rc, key="night_train")
    user = await rc.subscriber("premium")
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
    p = await rc.api.get(r.body["manifests"]["hls"].removeprefix(rc.url))
    assert p.status == 200 and "EXT-X-CONTENT-STEERING" not in p.body
    # The playlist's own tokens, and the playlist token, are bound the same way.
    _, variants = _playlist(p.body)
    for _, uri in variants:
        token, directory = _token_dir(uri)
        verify(keys, token, directory + "index.m3u8", now, "127.0.0.1")
        with pytest.raises(TokenRejected) as exc:
            verify(keys, token, directory + "index.m3u8", now, "198.51.100.7")
        assert exc.value.reason == "wrong_client"
    hls = urlsplit(r.body["manifests"]["hls"])
    (playlist_token,) = parse_qs(hls.query)["token"]
    with pytest.raises(TokenRejected) as exc:
        verify(keys, playlist_token, hls.path, now, "198.51.100.7")
    assert exc.value.reason == "wrong_client"
    # Fetched from another address (127.0.0.2 is loopback too): 404, as a bad token.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as elsewhere,
        elsewhere.get(r.body["manifests"]["hls"]) as moved,
    ):
        assert moved.status == 404


async def test_the_playlist_url_works_without_headers(start_control: Any, keys_file: Path) -> None:
    """manifests.hls carries its own token (for native HLS players, which cannot send an
    Authorization header); a token that does not verify is 404, never a hint."""
    clock = FakeClock()
    rc = await start_control(
        clock=clock,
        playback=playback_config(keys_file, fallback_url="http://edges.test", token_ttl=60),
    )
    await add_title(rc)
    user = await rc.subscriber("standard")
    mine = await start(rc, user)
    theirs = await start(rc, await rc.subscriber("standard"))
    assert mine.status == theirs.status == 201
    url = mine.body["manifests"]["hls"].removeprefix(rc.url)
    path, _, query = url.partition("?")
    token = parse_qs(query)["token"][0]
    other_url = theirs.body["manifests"]["hls"].removeprefix(rc.url)
    other_path, _, other_query = other_url.partition("?")
    other_token = parse_qs(other_query)["token"][0]

    plain = await rc.api.get(url)  # no Authorization header
    assert plain.status == 200 and plain.body.startswith("#EXTM3U"), plain
    assert plain.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    bearer = await rc.api.get(path, token=user.token)
    assert bearer.status == 200 and bearer.body == plain.body

    mac = token[-1]
    tampered = token[:-1] + ("A" if mac != "A" else "B")
    for p, params in [
        (path, {"token": tampered}),
        (path, {"token": other_token}),  # another play's token on this play
        (other_path, {"token": token}),  # this play's token on another play
        (path, {"token": ""}),
        (path, {"token": "x" * 5000}),
        ("/v1/playback/unknown-play/master.m3u8", {"token": token}),
    ]:
        r = await rc.api.get(p, params=params)
        assert r.status == 404 and r.body["error"]["code"] == "not_found", (p, params, r)
    assert (await rc.api.get(path)).status == 401  # neither token nor session
    # A bad token next to a session: the session decides, as on every route.
    assert (await rc.api.get(path, params={"token": tampered}, token=user.token)).status == 200
    other = await rc.subscriber("basic")
    assert (await rc.api.get(path, params={"token": tampered}, token=other.token)).status == 404

    # Valid until the edge tokens' expiry (the lease kept alive by heartbeats), not after.
    for step in (25, 25, 9):
        clock.advance(step)
        assert (
            await event(rc, user, mine.body["play_id"], kind="progress", position=1)
        ).status == 200
    assert (await rc.api.get(url)).status == 200  # 59 s
    clock.advance(1)
    expired = await rc.api.get(url)
    assert expired.status == 404 and expired.body["error"]["code"] == "not_found", expired


# -- entitlement and maturity ------------------------------------------------------------


async def test_no_subscription_is_402_and_a_canceled_one_plays_until_period_end(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(
        playback=playback_config(keys_file, fallback_url="http://edges.test"),
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
    assert r.body["edges"] == [{"id": "fallback", "url": "http://edges.test", "url_prefix": None}]
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
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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


async def test_a_hidden_title_is_404_whatever_else_is_wrong_with_it(
    start_control: Any, keys_file: Path
) -> None:
    """Maturity (and publication) are checked before playability: a kids profile learns
    nothing from a 16+ title without media, or a 16+ series asked without an episode."""
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    await add_title(rc, "unreleased", maturity=16, media=False)
    await add_title(rc, "late-show", maturity=16, kind="series")
    await add_title(rc, "empty", maturity=16, renditions=[])
    user = await rc.subscriber("premium")
    p = await rc.api.post("/v1/profiles", json={"name": "Kid", "kids": True}, token=user.token)
    kid = User(user.email, user.password, user.token, user.account_id, p.body["id"])
    for title, extra in [
        ("unreleased", {}),
        ("late-show", {}),
        ("late-show", {"episode_id": "no-such-episode"}),
        ("empty", {}),
        ("no-such-title", {}),
    ]:
        r = await start(rc, kid, title, **extra)
        assert r.status == 404 and r.body["error"]["code"] == "not_found", (title, extra, r)
        assert r.body["error"]["message"] == "no such title", (title, extra, r)
    assert rc.counter("control_playback_starts", "maturity") == 4
    assert rc.counter("control_playback_starts", "not_found") == 1
    # The adult profile sees them, and each for what it is, counted by its outcome.
    for title, extra, status, outcome in [
        ("unreleased", {}, 409, "not_playable"),
        ("empty", {}, 409, "not_playable"),
        ("late-show", {}, 400, "bad_request"),
        ("late-show", {"episode_id": "no-such-episode"}, 404, "not_found"),
        ("no-such-title", {}, 404, "not_found"),
    ]:
        before = rc.counter("control_playback_starts", outcome)
        r = await start(rc, user, title, **extra)
        assert r.status == status, (title, extra, r)
        assert rc.counter("control_playback_starts", outcome) == before + 1, (title, outcome)
    assert rc.counter("control_playback_starts", "maturity") == 4
    # An unpublished title is 404 to everyone.
    await rc.control.db.execute("UPDATE titles SET published = 0 WHERE id = 'unreleased'")
    await rc.control.catalog.load()
    r = await start(rc, user, "unreleased")
    assert r.status == 404 and rc.counter("control_playback_starts", "not_found") == 4


async def test_series_needs_an_episode(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    assert rc.counter("control_playback_starts", "bad_request") == 1
    assert rc.counter("control_playback_starts", "not_playable") == 0
    r = await start(rc, user, "the-show", episode_id="the-show-s1e1")
    assert r.status == 201, r
    assert r.body["episode_id"] == "the-show-s1e1"
    p = await rc.api.get(r.body["manifests"]["hls"].removeprefix(rc.url))
    assert p.status == 200 and "/v/the_show_s1e1/240p/index.m3u8" in p.body, p
    e = await event(rc, user, r.body["play_id"], kind="stop", position=700.0)
    assert e.status == 200, e
    again = await start(rc, user, "the-show", episode_id="the-show-s1e1")
    assert again.status == 201 and again.body["resume_position"] == 700.0


# -- the concurrent-stream limit ---------------------------------------------------------


async def test_stream_limit_stop_and_vanished_players(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    # Idempotent: stopping a stopped session again is the same answer.
    again = await rc.api.delete(f"/v1/playback/{first.body['play_id']}", token=user.token)
    assert again.status == 204, again
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
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
async def test_steering_down_falls_back_to_the_fallback_url(
    start_control: Any, keys_file: Path, silent_server: str, failure: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}" if failure == "error" else silent_server
    rc = await start_control(
        playback=playback_config(
            keys_file,
            steering_url=down,
            fallback_url="http://edges.test:8080",
            steering_timeout=0.2,
        )
    )
    await add_title(rc)
    user = await rc.subscriber("standard")
    r = await start(rc, user)
    assert r.status == 201, r
    assert r.body["edges"] == [
        {"id": "fallback", "url": "http://edges.test:8080", "url_prefix": None}
    ]
    p = await rc.api.get(r.body["manifests"]["hls"].removeprefix(rc.url))
    _, variants = _playlist(p.body)
    assert variants and all(u.startswith("http://edges.test:8080/_t/") for _, u in variants)
    assert rc.counter("control_steering_requests", failure) == 1
    assert rc.counter("control_playback_starts", "steering_fallback") == 1
    assert rc.counter("control_playback_starts", "ok") == 0


async def test_steering_naming_only_its_origin_falls_back_to_the_fallback_url(
    start_control: Any, steering: Any, keys_file: Path, http: aiohttp.ClientSession
) -> None:
    """With no edge left, steering answers its origin alone: players must not get it (the
    origin refuses them), so the fallback URL stands in."""
    steer_url = await steering({}, origin_url="http://origin.test:8081")
    async with http.get(steer_url + "/v1/steer", params={"key": "night_train"}) as s:
        assert [e["edge"] for e in (await s.json())["edges"]] == ["origin"]
    rc = await start_control(
        playback=playback_config(
            keys_file, steering_url=steer_url, fallback_url="http://edges.test:8080"
        )
    )
    await add_title(rc)
    user = await rc.subscriber("premium")
    r = await start(rc, user)
    assert r.status == 201, r
    assert [(e["id"], e["url"]) for e in r.body["edges"]] == [
        ("fallback", "http://edges.test:8080")
    ]
    assert "origin.test" not in json.dumps(r.body)
    p = await rc.api.get(r.body["manifests"]["hls"].removeprefix(rc.url))
    assert p.status == 200 and "origin.test" not in p.body
    assert rc.counter("control_steering_requests", "error") == 1
    assert rc.counter("control_playback_starts", "steering_fallback") == 1


async def test_steering_down_without_a_fallback_url_is_503_and_frees_the_slot(
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
    [None, {"fallback_url": "http://edges.test"}, "keys-only"],
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
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    # Watched to the end (>= 95 %): the next start begins at 0.
    rc.clock.advance(5)
    done = await event(rc, user, again.body["play_id"], kind="stop", position=5900.0)
    assert done.status == 200, done
    assert (await start(rc, user)).body["resume_position"] == 0


async def test_an_unknown_duration_of_zero_does_not_clamp_positions(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    await add_title(rc, duration=0.0)
    user = await rc.subscriber("standard")
    play = (await start(rc, user)).body["play_id"]
    rc.clock.advance(20)
    e = await event(rc, user, play, kind="progress", position=15.0)
    assert e.status == 200 and e.body["position"] == 15.0, e
    assert (await play_row(rc, play))["position"] == 15.0


async def test_stopping_is_idempotent(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    await add_title(rc)
    user = await rc.subscriber("standard")
    play = (await start(rc, user)).body["play_id"]
    s = await event(rc, user, play, kind="stop", position=10.0)
    assert s.status == 200 and s.body["stopped"], s
    for _ in range(2):
        d = await rc.api.delete(f"/v1/playback/{play}", token=user.token)
        assert d.status == 204, d
    row = await play_row(rc, play)
    assert row["position"] == 10.0 and row["stopped_at"] == rc.clock()
    assert rc.counter("control_playback_events", "stop") == 1
    # A lease that ran out: DELETE is 204 too, and the lease counts as expired (once).
    vanished = (await start(rc, user)).body["play_id"]
    rc.clock.advance(LEASE + 1)
    for _ in range(2):
        assert (await rc.api.delete(f"/v1/playback/{vanished}", token=user.token)).status == 204
    row = await play_row(rc, vanished)
    assert row["stopped_at"] == row["lease_expires_at"]
    assert rc.counter("control_leases_expired") == 1
    assert rc.counter("control_playback_events", "stop") == 1
    # Events after it still say what happened.
    late = await event(rc, user, vanished, kind="progress", position=1.0)
    assert late.status == 409 and late.body["error"]["code"] == "lease_expired"
    again = await event(rc, user, play, kind="progress", position=1.0)
    assert again.status == 409 and again.body["error"]["code"] == "stopped"


async def test_a_position_past_the_duration_is_clamped(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    await add_title(rc, duration=600.0)
    user = await rc.subscriber("standard")
    play = (await start(rc, user)).body["play_id"]
    rc.clock.advance(10)
    e = await event(rc, user, play, kind="progress", position=9000.0)
    assert e.status == 200 and e.body["position"] == 600.0, e
    row = await play_row(rc, play)
    assert row["position"] == 600.0 and row["seconds_watched"] == pytest.approx(10)
    ok = await event(rc, user, play, kind="progress", position=300.0)
    assert ok.status == 200 and ok.body["position"] == 300.0
    rc.clock.advance(10)
    s = await event(rc, user, play, kind="stop", position=601.0)
    assert s.status == 200 and s.body["position"] == 600.0 and s.body["stopped"], s
    assert (await play_row(rc, play))["position"] == 600.0
    state = await rc.control.db.fetchone(
        "SELECT position FROM watch_state WHERE profile_id = ?", (user.profile_id,)
    )
    assert state is not None and state["position"] == 600.0


async def test_a_heartbeat_after_the_subscription_ended_ends_the_stream(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(
        playback=playback_config(keys_file, fallback_url="http://edges.test"),
        sessions={"ttl": "90d"},
    )
    await add_title(rc)
    user = await rc.subscriber("basic")
    assert (await rc.api.delete("/v1/subscription", token=user.token)).status == 204
    rc.clock.advance(30 * 86400 - 10)  # ten seconds before the paid period ends
    r = await start(rc, user)
    assert r.status == 201, r
    play = r.body["play_id"]
    rc.clock.advance(5)
    assert (await event(rc, user, play, kind="progress", position=5.0)).status == 200
    rc.clock.advance(10)  # the period is over; the lease is not
    e = await event(rc, user, play, kind="progress", position=15.0)
    assert e.status == 402 and e.body["error"]["code"] == "subscription_required", e
    assert e.body["error"]["details"] == {"play_id": play, "stopped": True}
    row = await play_row(rc, play)
    assert row["stopped_at"] == rc.clock() and row["position"] == 15.0
    assert (await rc.api.get("/v1/playback", token=user.token)).body["total"] == 0
    assert rc.counter("control_playback_events", "subscription_ended") == 1
    resume = await rc.api.get(
        f"/v1/profiles/{user.profile_id}/resume/night-train", token=user.token
    )
    assert resume.status == 200 and resume.body["next"]["position"] == 15.0, resume
    again = await event(rc, user, play, kind="progress", position=16.0)
    assert again.status == 409 and again.body["error"]["code"] == "stopped"
    url = r.body["manifests"]["hls"].removeprefix(rc.url)
    assert (await rc.api.get(url)).status == 409
    assert (await rc.api.delete(f"/v1/playback/{play}", token=user.token)).status == 204


async def test_an_older_client_position_does_not_win(start_control: Any, keys_file: Path) -> None:
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
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
    # A heartbeat reads its session with its play: no session is 401 whatever the body, the
    # play id or the content type; a signed-out session too; another account's play is 404.
    for path, raw in [
        (f"/v1/playback/{play}/events", b'{"kind": "progress", "position": 1, "client_at": 1}'),
        (f"/v1/playback/{play}/events", b"[]"),
        ("/v1/playback/no-such-play!/events", b"{}"),
    ]:
        r = await rc.api.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert r.status == 401, (path, raw, r)
    other = await rc.subscriber("standard")
    e = await event(rc, other, play, kind="progress", position=1.0)
    assert e.status == 404, e
    signed_out = await another_session(rc, user, "old phone")
    assert (await rc.api.delete("/v1/sessions/current", token=signed_out.token)).status == 204
    e = await event(rc, signed_out, play, kind="progress", position=1.0)
    assert e.status == 401, e
    assert (await rc.api.get("/v1/playback", params={"limit": "0"}, token=user.token)).status == 400


async def test_a_steering_answer_arriving_in_several_chunks_is_read_whole(
    start_control: Any, keys_file: Path
) -> None:
    """The answer is read to its end, not just its first chunk (which would fail to parse and
    fall back to the fallback URL although steering answered)."""

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
                keys_file, steering_url=url, fallback_url="http://edges.test:8080"
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


async def test_behind_a_trusted_proxy_tokens_bind_the_forwarded_client(
    start_control: Any, keys_file: Path
) -> None:
    rc = await start_control(
        trusted_proxies=["127.0.0.0/8"],
        playback=playback_config(keys_file, fallback_url="http://edges.test", bind_client_ip=True),
    )
    await add_title(rc, key="night_train")
    user = await rc.subscriber("premium")
    body = {"profile_id": user.profile_id, "title_id": "night-train"}
    r = await rc.api.post(
        "/v1/playback",
        json=body,
        token=user.token,
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert r.status == 201, r
    token, _ = split_token(urlsplit(r.body["edges"][0]["url_prefix"]).path)
    keys, now = load_keys(keys_file), rc.clock()
    verify(keys, token, "/v/night_train/master.m3u8", now, "203.0.113.9")
    with pytest.raises(TokenRejected) as exc:
        verify(keys, token, "/v/night_train/master.m3u8", now, "127.0.0.1")  # the proxy
    assert exc.value.reason == "wrong_client"


async def test_heartbeats_of_a_play_started_before_a_history_deletion_do_not_restore_it(
    start_control: Any, keys_file: Path
) -> None:
    """The TV keeps playing while the phone deletes the title from history: the TV's
    heartbeats (client clock after the deletion) still update the play, not the history. A
    play started afterwards records it again."""
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    await add_title(rc, duration=6000.0)
    user = await rc.subscriber("premium")
    history = f"/v1/profiles/{user.profile_id}/history"
    play = (await start(rc, user)).body["play_id"]
    rc.clock.advance(10)
    assert (await event(rc, user, play, kind="progress", position=10.0)).status == 200
    assert len((await rc.api.get(history, token=user.token)).body["items"]) == 1

    rc.clock.advance(1)
    assert (await rc.api.delete(f"{history}/night-train", token=user.token)).status == 204
    rc.clock.advance(10)
    e = await event(rc, user, play, kind="progress", position=20.0)
    assert e.status == 200, e
    assert (await play_row(rc, play))["position"] == 20.0  # the play itself goes on
    assert (await rc.api.get(history, token=user.token)).body["items"] == []
    rc.clock.advance(10)
    assert (await event(rc, user, play, kind="stop", position=30.0)).status == 200
    assert (await rc.api.get(history, token=user.token)).body["items"] == []

    rc.clock.advance(1)
    again = (await start(rc, user)).body
    assert again["resume_position"] == 0.0
    rc.clock.advance(10)
    assert (await event(rc, user, again["play_id"], kind="progress", position=5.0)).status == 200
    items = (await rc.api.get(history, token=user.token)).body["items"]
    assert [(i["title"]["id"], i["position"]) for i in items] == [("night-train", 5.0)]
    # The remembered deletion outlives no play started before it: the next deletion of the
    # profile clears it (the new play is live, so this one is remembered in its place).
    count = "SELECT COUNT(*) AS n, MAX(deleted_at) AS at FROM history_deletions"
    before = await rc.control.db.fetchone(count)
    assert before["n"] == 1
    rc.clock.advance(1)
    assert (await rc.api.delete(f"{history}/night-train", token=user.token)).status == 204
    after = await rc.control.db.fetchone(count)
    assert after["n"] == 1 and after["at"] == rc.clock.now > before["at"]
    assert (await event(rc, user, again["play_id"], kind="stop", position=6.0)).status == 200
    assert (await rc.api.delete(f"{history}/other-title", token=user.token)).status == 204
    assert (await rc.control.db.fetchone(count))["n"] == 0


# PostgreSQL only: SQLite runs one write transaction at a time, so nothing interleaves.
@pytest.mark.parametrize("control_db_url", ["postgresql"], indirect=True)
async def test_a_heartbeat_waiting_on_a_history_deletion_sees_it(
    start_control: Any, keys_file: Path
) -> None:
    """PostgreSQL, READ COMMITTED: a deletion commits while a heartbeat of the title's play
    waits for it. The heartbeat's position write must not bring the title back (a statement
    whose snapshot predates the deletion would re-insert the row it deleted)."""
    rc = await start_control(playback=playback_config(keys_file, fallback_url="http://edges.test"))
    assert rc.control.db.dialect == "postgresql"
    await add_title(rc, duration=6000.0)
    user = await rc.subscriber("premium")
    history = f"/v1/profiles/{user.profile_id}/history"
    play = (await start(rc, user)).body["play_id"]
    rc.clock.advance(10)
    assert (await event(rc, user, play, kind="progress", position=10.0)).status == 200
    rc.clock.advance(1)
    pool = rc.control.db._pool
    async with pool.connection() as deleter, pool.connection() as watcher:
        async with deleter.transaction():
            # The deletion by hand, up to its commit (LibraryStore.delete_history's statements).
            now = rc.clock()
            await deleter.execute(
                "UPDATE plays SET updated_at = updated_at WHERE account_id = %s"
                " AND profile_id = %s AND stopped_at IS NULL",
                (user.account_id, user.profile_id),
            )
            await deleter.execute(
                "DELETE FROM watch_state WHERE profile_id = %s", (user.profile_id,)
            )
            await deleter.execute(
                "INSERT INTO history_deletions (profile_id, title_id, deleted_at)"
                " VALUES (%s, %s, %s)",
                (user.profile_id, "night-train", now),
            )
            rc.clock.advance(10)
            heartbeat = asyncio.ensure_future(event(rc, user, play, kind="progress", position=20.0))
            while True:  # until the heartbeat waits on the deletion's lock
                cur = await watcher.execute(
                    "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
                row = await cur.fetchone()
                assert not heartbeat.done(), heartbeat.result()
                if row and row["n"] >= 1:
                    break
                await asyncio.sleep(0.01)
        e = await heartbeat  # the deletion committed as its transaction block ended
    assert e.status == 200, e
    assert (await play_row(rc, play))["position"] == 20.0  # the play goes on
    assert (await rc.api.get(history, token=user.token)).body["items"] == []


async def test_session_mpd_access_caching_and_failures(
    start_control: Any, keys_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The per-session MPD answers its token or the account's session (404 otherwise, like
    the playlist); the origin's MPD is read through the edge once per media key; an edge
    without one is 409 not_playable, an unreachable one 503."""
    upstream = tmp_path / "upstream"
    (key,) = synth_catalog(upstream, titles=1, renditions=5, duration=8.0, seed=9)
    mpd_text = (upstream / "v" / key / "manifest.mpd").read_bytes()
    ladder = summary(key, json.loads((upstream / "v" / key / "manifest.json").read_text()))[
        "renditions"
    ]
    served: dict[str, Any] = {"mpd": 0, "status": 200, "body": mpd_text}

    async def edge_mpd(request: web.Request) -> web.Response:
        assert request.path.startswith("/_t/") and request.path.endswith(f"/v/{key}/manifest.mpd")
        served["mpd"] += 1
        if served["status"] != 200:
            return web.Response(status=served["status"])
        return web.Response(body=served["body"], content_type="application/dash+xml")

    app = web.Application()
    app.router.add_get("/{tail:.*}", edge_mpd)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    edge_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        rc = await start_control(playback=playback_config(keys_file, fallback_url=edge_url))
        await add_title(rc, key=key, renditions=ladder, duration=8.0)
        user = await rc.subscriber("basic")
        r = await start(rc, user)
        assert r.status == 201 and r.body["capped"] is True, r
        dash = r.body["manifests"]["dash"]
        path = urlsplit(dash).path
        token = parse_qs(urlsplit(dash).query)["token"][0]

        async with http.get(dash) as d:
            assert d.status == 200, await d.text()
            assert d.headers["Cache-Control"] == "no-store"
            text = await d.text()
        assert 'height="720"' not in text and 'height="480"' in text
        # The account's bearer session works too; the MPD was read once.
        b = await rc.api.get(path, token=user.token)
        assert b.status == 200 and served["mpd"] == 1, b
        # Concurrent misses (the cache emptied) share one read.
        service = rc.control.playback
        service._mpds.clear()
        burst = await asyncio.gather(*(service._origin_mpd(key, edge_url) for _ in range(8)))
        assert burst == [mpd_text] * 8 and served["mpd"] == 2
        assert service._mpd_fetches == {}
        # The HLS playlist's token is not the MPD's, nor is another play's.
        hls_token = parse_qs(urlsplit(r.body["manifests"]["hls"]).query)["token"][0]
        for bad in (hls_token, token[:-2] + "xx"):
            async with http.get(rc.url + path, params={"token": bad}) as d:
                assert d.status == 404, bad
        async with http.get(rc.url + path) as d:
            assert d.status == 401
        other = await rc.subscriber("basic")
        assert (await rc.api.get(path, token=other.token)).status == 404

        # A title whose MPD the edge does not have, and an edge that fails: new media keys.
        for status, expected in ((404, 409), (500, 503)):
            rc.control.playback._mpds.clear()
            served["status"] = status
            d2 = await rc.api.get(path, token=user.token)
            assert d2.status == expected, d2
        served["status"] = 200
        # An error page answered with 200 is not an MPD: 409, and not kept.
        served["body"] = b"<html><body>upstream error</body></html>"
        rc.control.playback._mpds.clear()
        fetched = served["mpd"]
        for _ in range(2):
            d4 = await rc.api.get(path, token=user.token)
            assert d4.status == 409 and d4.body["error"]["code"] == "not_playable", d4
        assert served["mpd"] == fetched + 2
        served["body"] = mpd_text
        assert (await rc.api.get(path, token=user.token)).status == 200
        rc.control.playback._mpds.clear()
        await runner.cleanup()  # the edge is gone, kept-alive connections too
        d3 = await rc.api.get(path, token=user.token)
        assert d3.status == 503 and d3.body["error"]["code"] == "unavailable", d3
    finally:
        await runner.cleanup()
