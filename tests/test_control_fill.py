"""The popularity feed of proactive fill (control/fill.py, GET /v1/fill/popularity) and the
files of each title read from the origin (control/feed.py), on SQLite and PostgreSQL.

Plays are started through the real API, steered by a stand-in steering service that names the
site of its edges, and watched with progress events under an injected clock, so the scores
are checked against the formula by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control import db as dbmod
from control.config import ConfigError, parse_config
from control.feed import MAX_MEDIA_FILES, parse_media_files
from control.fill import (
    FillTitle,
    Play,
    PlayTally,
    TopFiles,
    boosts,
    merge_boost,
    ranked_titles,
    renditions_of,
)
from control.popularity import DAY, SURVIVAL_BINS, MediaFile, Rendition
from control.schema import MIGRATIONS
from origin.app import ORIGIN, create_app
from origin.catalog import CatalogFeed
from origin.config import load_config as load_origin_config
from origin.synth import synth_catalog

from .conftest import TEST_KEYS
from .control_support import RunningControl, User

FEED_TOKEN = "fill-feed-token-for-tests-0123456789"
ORIGIN_FILL = "origin-fill-token-for-tests-012345"
CATALOG = "catalog-token-for-tests-0123456"
HEX = "0123456789abcdef"

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
# A title's files (path, size): the playlists and audio every player reads, one segment per
# rendition, the single-file variant.
FILES = [
    ("master.m3u8", 10),
    ("master_single.m3u8", 11),
    ("audio_128k/seg00001.m4s", 20),
    ("240p/seg00001.m4s", 25),
    ("480p/seg00001.m4s", 30),
    ("720p/seg00001.m4s", 35),
    ("2160p/seg00001.m4s", 40),
    ("2160p/single.mp4", 45),
]
DURATION = 6000.0


# -- fixtures -----------------------------------------------------------------------------


class FakeSteering:
    """A steering stand-in: every answer ranks one edge of ``site`` (then steering's origin,
    which the control plane leaves out)."""

    def __init__(self) -> None:
        self.site = "paris"
        self.url = ""

    async def steer(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "key": request.query.get("key"),
                "site": self.site,
                "edges": [
                    {"edge": f"{self.site}-1", "site": self.site,
                     "url": f"http://{self.site}.edges.test", "reason": "ring"},
                    {"edge": "origin", "site": None, "url": "http://origin.test",
                     "reason": "last resort"},
                ],
            }
        )  # fmt: skip


@pytest.fixture
async def steering() -> AsyncIterator[FakeSteering]:
    fake = FakeSteering()
    app = web.Application()
    app.router.add_get("/v1/steer", fake.steer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


def token_file(tmp_path: Path, name: str, token: str) -> str:
    path = tmp_path / name
    path.write_text(f"# a credential\n{token}\n")
    return str(path)


def fill_settings(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {
        "credential_file": token_file(tmp_path, "fill-feed.token", FEED_TOKEN),
        "half_life_days": 1.0,
        "window_days": 3,
        "boost_views": 0.0,
        "cache_ttl": 0,
        **changes,
    }


async def started(
    start_control: Any, tmp_path: Path, steering: FakeSteering, **fill: Any
) -> RunningControl:
    keys = tmp_path / "edge.keys"
    keys.write_text(TEST_KEYS)
    rc: RunningControl = await start_control(
        playback={
            "signing_keys_file": str(keys),
            "steering_url": steering.url,
            "lease_ttl": "1h",
            "token_ttl": "7d",
        },
        fill=fill_settings(tmp_path, **fill),
    )
    return rc


async def add_title(
    rc: RunningControl,
    title_id: str,
    *,
    released_at: float | None = None,
    files: list[tuple[str, int]] | None = FILES,
    published: bool = True,
) -> str:
    """A published movie with LADDER and (unless None) its files, as the catalog feed and the
    manifest reader would have stored them; its media key is the id with '_' for '-'."""
    key = title_id.replace("-", "_")
    at = rc.clock() if released_at is None else released_at
    await rc.control.db.execute(
        "INSERT INTO titles (id, kind, name, maturity, duration, media_key, renditions,"
        " published, source, released_at, updated_at)"
        " VALUES (?, 'movie', ?, 0, ?, ?, ?, ?, 'origin', ?, ?)",
        (title_id, title_id, DURATION, key, json.dumps(LADDER), int(published), at, at),
    )
    if files:
        await rc.control.db.executemany(
            "INSERT INTO media_files (media_key, path, size, xxh64) VALUES (?, ?, ?, ?)",
            [(key, p, size, HEX) for p, size in files],
        )
    await rc.control.catalog.load()
    return key


async def watch(rc: RunningControl, user: User, title_id: str, seconds: float) -> str:
    """Start a play through the API and watch ``seconds`` of it (heartbeats every 10 min of
    the test clock), then stop: the play's last update is the clock's time at the end."""
    r = await rc.api.post(
        "/v1/playback", json={"profile_id": user.profile_id, "title_id": title_id},
        token=user.token,
    )  # fmt: skip
    assert r.status == 201, r
    play_id = str(r.body["play_id"])
    position = 0.0
    while position < seconds:
        step = min(600.0, seconds - position)
        rc.clock.advance(step)
        position += step
        r = await rc.api.post(
            f"/v1/playback/{play_id}/events",
            json={"kind": "progress", "position": position, "client_at": rc.clock()},
            token=user.token,
        )
        assert r.status == 200, r
    r = await rc.api.delete(f"/v1/playback/{play_id}", token=user.token)
    assert r.status == 204, r
    return play_id


async def feed(rc: RunningControl, region: str, status: int = 200, **params: Any) -> Any:
    r = await rc.api.get(
        "/v1/fill/popularity", params={"region": region, **params}, token=FEED_TOKEN
    )
    assert r.status == status, r
    return r.body


def scores(body: Any) -> list[tuple[str, float]]:
    return [(o["path"], o["score"]) for o in body["objects"]]


# -- the route ----------------------------------------------------------------------------


async def test_the_route_is_absent_without_a_credential_file(start_control: Any) -> None:
    rc: RunningControl = await start_control()
    r = await rc.api.get("/v1/fill/popularity", params={"region": "paris"}, token=FEED_TOKEN)
    assert r.status == 404 and r.body["error"]["code"] == "not_found", r
    assert rc.counter("control_fill_feed_requests", "disabled") == 1


async def test_credential_and_query_are_checked(
    start_control: Any, tmp_path: Path, steering: FakeSteering
) -> None:
    rc = await started(start_control, tmp_path, steering)
    for token in (None, "wrong-token-0123456789", FEED_TOKEN + "x", ""):
        r = await rc.api.get("/v1/fill/popularity", params={"region": "paris"}, token=token)
        assert r.status == 401, (token, r)
        assert r.body["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # A user's session is not the fill credential.
    user = await rc.signup()
    r = await rc.api.get("/v1/fill/popularity", params={"region": "paris"}, token=user.token)
    assert r.status == 401, r
    # Bad queries: 400 naming the field (only once the credential is right).
    bad: list[tuple[dict[str, str], str]] = [
        ({}, "region"),
        ({"region": ""}, "region"),
        ({"region": "par is"}, "region"),
        ({"region": "paris/../x"}, "region"),
        ({"region": "p" * 65}, "region"),
        ({"region": "paris", "limit": "0"}, "limit"),
        ({"region": "paris", "limit": "1000001"}, "limit"),
        ({"region": "paris", "limit": "ten"}, "limit"),
        ({"region": "paris", "colour": "red"}, "colour"),
    ]
    for params, field in bad:
        r = await rc.api.get("/v1/fill/popularity", params=params, token=FEED_TOKEN)
        assert r.status == 400, (params, r)
        assert field in r.body["error"]["details"]["fields"], (params, r)
    r = await rc.api.get("/v1/fill/popularity", params={"region": "paris"}, token=FEED_TOKEN)
    assert r.status == 200, r
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.body == {
        "region": "paris",
        "fallback": True,  # no plays anywhere yet
        "computed_at": rc.clock(),
        "half_life_days": 1.0,
        "objects": [],
    }
    assert rc.counter("control_fill_feed_requests", "unauthorized") == 5
    assert rc.counter("control_fill_feed_requests", "bad_request") == len(bad)
    assert rc.counter("control_fill_feed_requests", "fallback") == 1
    # The token file is re-read: a rotated token works at once, the old one no longer.
    Path(rc.config.fill.credential_file).write_text("rotated-token-0123456789abc\n")
    r = await rc.api.get("/v1/fill/popularity", params={"region": "paris"}, token=FEED_TOKEN)
    assert r.status == 401, r
    r = await rc.api.get(
        "/v1/fill/popularity", params={"region": "paris"}, token="rotated-token-0123456789abc"
    )
    assert r.status == 200, r


# -- the scores ---------------------------------------------------------------------------


async def test_scores_follow_the_formula(
    start_control: Any, tmp_path: Path, steering: FakeSteering
) -> None:
    """Hand-computed: a play counts once, decayed by half per half-life (1 day), a play older
    than window_days (3) ignored, a capped plan's play counts for the tallest rendition it
    allows only, playlists and audio get every play, the single-file variant none. One segment
    per rendition: it starts at 0, where every play is (S(0) = 1)."""
    rc = await started(start_control, tmp_path, steering)
    key = await add_title(rc, "night-train")
    standard, premium, basic = (
        await rc.subscriber("standard"),
        await rc.subscriber("premium"),
        await rc.subscriber("basic"),
    )
    t0 = rc.clock()
    await watch(rc, standard, "night-train", 1200)  # 720p; over 3 days old when computed
    rc.clock.advance(4 * DAY)
    await watch(rc, premium, "night-train", 3000)  # 2160p: one play (of half the film)
    b_at = rc.clock()
    await watch(rc, basic, "night-train", 6000)  # 480p: one play
    c_at = rc.clock()
    rc.clock.advance(DAY)
    now = rc.clock()
    assert now - (t0 + 1200) > 3 * DAY  # the first play is outside the window
    rows = await rc.control.db.fetchall("SELECT region, max_height FROM plays ORDER BY started_at")
    assert [(r["region"], r["max_height"]) for r in rows] == [
        ("paris", 1080),
        ("paris", 2160),
        ("paris", 480),
    ]

    vb = 1.0 * 0.5 ** ((now - b_at) / DAY)
    vc = 1.0 * 0.5 ** ((now - c_at) / DAY)
    assert vc == pytest.approx(0.5)
    body = await feed(rc, "paris")
    assert body["fallback"] is False and body["computed_at"] == now
    assert scores(body) == [
        (f"/v/{key}/audio_128k/seg00001.m4s", pytest.approx(vb + vc)),  # a tie: by path
        (f"/v/{key}/master.m3u8", pytest.approx(vb + vc)),
        (f"/v/{key}/480p/seg00001.m4s", pytest.approx(vc)),
        (f"/v/{key}/2160p/seg00001.m4s", pytest.approx(vb)),
    ]  # 240p and 720p: no play in the window; single.mp4, master_single.m3u8: 0 by default
    first = body["objects"][0]
    assert first == {
        "key": key,
        "path": f"/v/{key}/audio_128k/seg00001.m4s",
        "size": 20,
        "xxh64": HEX,
        "score": pytest.approx(vb + vc),
    }
    # limit: the best ones, the same order.
    assert scores(await feed(rc, "paris", limit="2")) == scores(body)[:2]
    assert rc.counter("control_fill_feed_requests", "ok") == 2
    assert rc.control.metrics.gauges["control_fill_feed_objects"] == 2
    # One half-life later every score is halved.
    rc.clock.advance(DAY)
    later = await feed(rc, "paris")
    assert [s for _, s in scores(later)] == pytest.approx([s / 2 for _, s in scores(body)])


# Ten segments a rendition (600 s each of the 6000 s title), for the survival curve.
SEGMENTED = [("master.m3u8", 10), ("audio_128k/seg00001.m4s", 20), ("480p/init.mp4", 5)] + [
    (f"{r}/seg{k:05d}.m4s", 30) for r in ("480p", "2160p") for k in range(1, 11)
]


async def test_segments_score_by_the_survival_of_viewing(
    start_control: Any, tmp_path: Path, steering: FakeSteering
) -> None:
    """Hand-computed: a premium play of one title to the end and a basic (capped: 480p) play
    of another to 10%. The curve, from both: every play reaches 0.1 (the 10% play ends where
    segment 2 starts), only the first (weight w1 of w1 + w2) goes further. A segment scores its
    rendition's plays times S at its start; playlists and init their plays; the capped play
    gives the 2160p rendition nothing; a limit keeps the best by score then path."""
    rc = await started(start_control, tmp_path, steering)
    full = await add_title(rc, "to-the-end", files=SEGMENTED)
    tenth = await add_title(rc, "a-tenth", files=SEGMENTED)
    premium, basic = await rc.subscriber("premium"), await rc.subscriber("basic")
    await watch(rc, premium, "to-the-end", 6000)
    at1 = rc.clock()
    await watch(rc, basic, "a-tenth", 600)
    at2 = rc.clock()
    rc.clock.advance(DAY / 2)
    now = rc.clock()
    w1, w2 = 0.5 ** ((now - at1) / DAY), 0.5 ** ((now - at2) / DAY)
    later = w1 / (w1 + w2)  # S past 10%
    got = {o["path"]: o["score"] for o in (await feed(rc, "paris"))["objects"]}
    expected: dict[str, float] = {}
    for key, w, rendition in ((full, w1, "2160p"), (tenth, w2, "480p")):
        expected |= {f"/v/{key}/master.m3u8": w, f"/v/{key}/audio_128k/seg00001.m4s": w}
        if rendition == "480p":
            expected[f"/v/{key}/480p/init.mp4"] = w
        for k in range(1, 11):
            expected[f"/v/{key}/{rendition}/seg{k:05d}.m4s"] = w * (1.0 if k <= 2 else later)
    assert got == pytest.approx(expected)
    assert later == pytest.approx(0.5, abs=0.01)  # the two plays' weights nearly equal
    # A capped plan of 5: w2 > w1 (the later play), so the tenth's five files with score w2
    # (by path: 480p/init, 480p/seg1, 480p/seg2, audio, master), none of the other's.
    top = await feed(rc, "paris", limit="5")
    assert w2 > w1
    assert [o["path"] for o in top["objects"]] == [
        f"/v/{tenth}/480p/init.mp4",
        f"/v/{tenth}/480p/seg00001.m4s",
        f"/v/{tenth}/480p/seg00002.m4s",
        f"/v/{tenth}/audio_128k/seg00001.m4s",
        f"/v/{tenth}/master.m3u8",
    ]


async def test_regions_are_separate_and_an_unknown_one_falls_back(
    start_control: Any, tmp_path: Path, steering: FakeSteering
) -> None:
    rc = await started(start_control, tmp_path, steering)
    a = await add_title(rc, "alpha")
    b = await add_title(rc, "bravo", files=[("master.m3u8", 10)])
    user = await rc.subscriber("premium")
    steering.site = "paris"
    await watch(rc, user, "alpha", 3000)
    steering.site = "lyon"
    await watch(rc, user, "bravo", 6000)
    await watch(rc, user, "bravo", 600)
    paris, lyon, berlin = await feed(rc, "paris"), await feed(rc, "lyon"), await feed(rc, "berlin")
    assert {o["key"] for o in paris["objects"]} == {a}
    assert {o["key"] for o in lyon["objects"]} == {b}
    assert (paris["fallback"], lyon["fallback"], berlin["fallback"]) == (False, False, True)
    # The fallback is every region's plays together.
    assert berlin["region"] == "berlin"
    assert sorted(scores(berlin)) == sorted(scores(paris) + scores(lyon))
    assert rc.counter("control_fill_feed_requests", "fallback") == 1
    # Region names are case-sensitive site names: "Paris" is not "paris".
    assert (await feed(rc, "Paris"))["fallback"] is True


async def test_a_new_release_is_boosted_before_anyone_watches_it(
    start_control: Any, tmp_path: Path, steering: FakeSteering
) -> None:
    rc = await started(start_control, tmp_path, steering, boost_views=30.0, boost_days=3)
    now = rc.clock()
    new = await add_title(rc, "new-one", released_at=now - DAY)  # 2/3 of the boost left
    soon = await add_title(rc, "soon", released_at=now + 2 * DAY)  # scheduled: all of it
    await add_title(rc, "old-one", released_at=now - 10 * DAY)  # boost over
    await add_title(rc, "no-files", files=None)  # made without origin media: never listed
    await add_title(rc, "hidden", published=False)
    body = await feed(rc, "paris")
    assert body["fallback"] is True
    got = {(o["key"], o["path"].split("/", 3)[3]): o["score"] for o in body["objects"]}
    # The boost has no plan: the tallest rendition, plus what every player reads.
    assert got == {
        (soon, "audio_128k/seg00001.m4s"): pytest.approx(30.0),
        (soon, "master.m3u8"): pytest.approx(30.0),
        (soon, "2160p/seg00001.m4s"): pytest.approx(30.0),
        (new, "audio_128k/seg00001.m4s"): pytest.approx(20.0),
        (new, "master.m3u8"): pytest.approx(20.0),
        (new, "2160p/seg00001.m4s"): pytest.approx(20.0),
    }
    # A region with plays gets the boost too, on top of its plays.
    user = await rc.subscriber("basic")
    await watch(rc, user, "old-one", 6000)
    paris = await feed(rc, "paris")
    assert paris["fallback"] is False
    assert {o["key"] for o in paris["objects"]} == {new, soon, "old_one"}


async def test_the_computation_is_cached_for_cache_ttl(
    start_control: Any, tmp_path: Path, steering: FakeSteering
) -> None:
    rc = await started(start_control, tmp_path, steering, cache_ttl="5m")
    await add_title(rc, "alpha")
    user = await rc.subscriber("premium")
    first = await asyncio.gather(*(feed(rc, site) for site in ("paris", "lyon", "nice")))
    assert all(b["objects"] == [] for b in first)
    assert rc.counter("control_fill_feed_computations", "ok") == 1  # one for every site
    await watch(rc, user, "alpha", 60)  # one minute of the clock later: still cached
    assert (await feed(rc, "paris"))["objects"] == []
    assert rc.counter("control_fill_feed_computations", "ok") == 1
    rc.clock.advance(300)
    body = await feed(rc, "paris")
    assert body["objects"] and body["fallback"] is False
    assert rc.counter("control_fill_feed_computations", "ok") == 2


async def test_a_play_on_the_fallback_url_counts_in_no_region(
    start_control: Any, tmp_path: Path
) -> None:
    keys = tmp_path / "edge.keys"
    keys.write_text(TEST_KEYS)
    rc: RunningControl = await start_control(
        playback={
            "signing_keys_file": str(keys),
            "fallback_url": "http://edges.test",
            "lease_ttl": "1h",
        },
        fill=fill_settings(tmp_path),
    )
    key = await add_title(rc, "alpha")
    user = await rc.subscriber("premium")
    await watch(rc, user, "alpha", 600)
    row = await rc.control.db.fetchone("SELECT region, max_height FROM plays")
    assert row is not None and (row["region"], row["max_height"]) == ("", 2160)
    body = await feed(rc, "paris")
    assert body["fallback"] is True and {o["key"] for o in body["objects"]} == {key}


# -- the files of each title, from the origin ---------------------------------------------


class Origin:
    def __init__(self, runner: web.AppRunner, root: Path) -> None:
        origin = runner.app[ORIGIN]
        assert origin.server is not None and isinstance(origin.feed, CatalogFeed)
        self.url = f"http://127.0.0.1:{origin.server.port}"
        self.feed: CatalogFeed = origin.feed
        self.root = root  # its storage: v/<key>/...


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    (tmp_path / "fill.tokens").write_text(f"{ORIGIN_FILL}\n")
    (tmp_path / "catalog.tokens").write_text(f"{CATALOG}\n")
    (tmp_path / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {tmp_path / 'assets'}}}\n"
        f"fill_credentials_file: {tmp_path / 'fill.tokens'}\n"
        f"catalog_credentials_file: {tmp_path / 'catalog.tokens'}\n"
        f"catalog_db: {tmp_path / 'catalog.sqlite'}\n"
        "access_log: false\n"
    )
    config = load_origin_config(tmp_path / "origin.yaml")
    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()
    yield Origin(runner, tmp_path / "assets")
    await runner.cleanup()


async def until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def stored_files(rc: RunningControl, key: str) -> list[tuple[str, int, str]]:
    rows = await rc.control.db.fetchall(
        "SELECT path, size, xxh64 FROM media_files WHERE media_key = ? ORDER BY path", (key,)
    )
    return [(r["path"], int(r["size"]), r["xxh64"]) for r in rows]


def fetches(rc: RunningControl, outcome: str) -> int:
    return rc.counter("control_media_files_fetches", outcome)


async def test_files_are_read_from_the_origins_manifest(
    start_control: Any, origin: Origin, tmp_path: Path, steering: FakeSteering
) -> None:
    """A title published on the real origin's feed: its manifest.json's files are stored, and
    the feed then answers them; a withdrawal removes them."""
    (key,) = synth_catalog(origin.root, titles=1, renditions=2, duration=8.0, seed=6)
    manifest = json.loads((origin.root / "v" / key / "manifest.json").read_text())
    rc: RunningControl = await start_control(
        catalog_feed={
            "url": origin.url,
            "credential_file": token_file(tmp_path, "catalog.token", CATALOG),
            "interval": 3600,
        },
        fill=fill_settings(
            tmp_path,
            origin_credential_file=token_file(tmp_path, "origin-fill.token", ORIGIN_FILL),
            boost_views=10.0,
        ),
    )
    admin = await rc.admin()
    origin.feed.announce(key, manifest)
    r = await rc.api.post("/v1/admin/catalog/sync", token=admin.token)
    assert r.status == 200, r
    await until(lambda: fetches(rc, "ok") >= 1, "the manifest read")
    expected = sorted((f["path"], f["size"], f["xxh64"]) for f in manifest["files"])
    assert len(expected) > 10
    assert await stored_files(rc, key) == expected
    assert rc.control.metrics.gauges["control_media_files_wanted"] == 0
    # Published now: the boost places it, with the files' real sizes and checksums.
    body = await feed(rc, "paris")
    listed = {o["path"]: (o["size"], o["xxh64"]) for o in body["objects"]}
    by_path = {f"/v/{key}/{p}": (s, x) for p, s, x in expected}
    assert listed and all(by_path[p] == v for p, v in listed.items())
    assert f"/v/{key}/master.m3u8" in listed
    # Withdrawn: the files go at once (fill must stop placing what players cannot get).
    origin.feed.withdraw(key)
    r = await rc.api.post("/v1/admin/catalog/sync", token=admin.token)
    assert r.status == 200, r
    assert await stored_files(rc, key) == []
    # Re-published: read again, replacing the rows.
    origin.feed.announce(key, manifest)
    r = await rc.api.post("/v1/admin/catalog/sync", token=admin.token)
    assert r.status == 200, r
    await until(lambda: fetches(rc, "ok") >= 2, "the second manifest read")
    assert await stored_files(rc, key) == expected


class BadOrigin:
    """An origin stand-in: a feed page announcing one title, and a manifest answer set by the
    test."""

    def __init__(self) -> None:
        self.manifest: Any = {}
        self.status = 200
        self.reads = 0
        self.url = ""

    async def page(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        titles = (
            [{"seq": 1, "title": "bad_title", "published": True, "at": 1.0, "duration": 60.0,
              "renditions": LADDER}]
            if since < 1
            else []
        )  # fmt: skip
        return web.json_response({"titles": titles, "next": max(since, 1)})

    async def manifest_json(self, request: web.Request) -> web.Response:
        self.reads += 1
        if self.status != 200:
            return web.json_response({"error": "no"}, status=self.status)
        return web.json_response(self.manifest)


@pytest.fixture
async def bad_origin() -> AsyncIterator[BadOrigin]:
    fake = BadOrigin()
    app = web.Application()
    app.router.add_get("/catalog/feed", fake.page)
    app.router.add_get("/v/bad_title/manifest.json", fake.manifest_json)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


async def test_a_bad_manifest_is_refused_and_retried_next_round(
    start_control: Any, bad_origin: BadOrigin, tmp_path: Path
) -> None:
    bad_origin.manifest = {"title": "bad_title", "files": [{"path": "240p/a.m4s", "size": -1,
                                                            "xxh64": HEX}]}  # fmt: skip
    rc: RunningControl = await start_control(
        catalog_feed={
            "url": bad_origin.url,
            "credential_file": token_file(tmp_path, "catalog.token", CATALOG),
            "interval": 3600,
        },
        fill=fill_settings(tmp_path),
    )
    feed = rc.control.feed
    await until(
        lambda: fetches(rc, "invalid") >= 1 and not feed.files_busy, "the first manifest reads"
    )
    row = await rc.control.db.fetchone("SELECT * FROM media_files_wanted")
    assert row is not None and row["media_key"] == "bad_title"
    assert row["attempts"] == fetches(rc, "invalid")  # one a round (the start may make two)
    assert "size is not a number of bytes" in row["last_error"]
    assert await stored_files(rc, "bad_title") == []
    # The title itself entered the catalog all the same: the files never hold it up.
    t = await rc.control.db.fetchone("SELECT published FROM titles WHERE media_key = 'bad_title'")
    assert t is not None and t["published"] == 1
    # A server error is retried within the round, then left for the next one.
    bad_origin.status = 503
    reads = bad_origin.reads
    assert await feed.sync_files() == (0, 1)
    assert bad_origin.reads - reads == 3
    assert fetches(rc, "error") == 1
    # A 404 is not retried within the round.
    bad_origin.status = 404
    reads = bad_origin.reads
    assert await feed.sync_files() == (0, 1)
    assert bad_origin.reads - reads == 1
    # Fixed at the origin: the next round stores the files.
    bad_origin.status = 200
    bad_origin.manifest = {"title": "bad_title", "files": [{"path": "240p/a.m4s", "size": 5,
                                                            "xxh64": HEX.upper()}]}  # fmt: skip
    assert await feed.sync_files() == (1, 0)
    assert await stored_files(rc, "bad_title") == [("240p/a.m4s", 5, HEX)]
    assert await rc.control.db.fetchone("SELECT * FROM media_files_wanted") is None


def _file(**changes: Any) -> dict[str, Any]:
    return {"path": "480p/seg00001.m4s", "size": 100, "xxh64": HEX, **changes}


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ([], "not a JSON object"),
        ({"title": "k"}, "no files list"),
        ({"files": {}}, "no files list"),
        ({"title": "other", "files": []}, "of title 'other'"),
        ({"files": ["x"]}, r"files\[0\] is not an object"),
        ({"files": [_file(), _file()]}, "listed twice"),
        ({"files": [_file(size=-1)]}, "size"),
        ({"files": [_file(size=1.5)]}, "size"),
        ({"files": [_file(size=True)]}, "size"),
        ({"files": [_file(size="100")]}, "size"),
        ({"files": [_file(size=2**60)]}, "size"),
        ({"files": [_file(xxh64="0123")]}, "xxh64"),
        ({"files": [_file(xxh64="0123456789abcdeg")]}, "xxh64"),
        ({"files": [_file(xxh64=None)]}, "xxh64"),
        ({"files": [_file(path=f"f{i}") for i in range(MAX_MEDIA_FILES + 1)]}, "more than"),
    ],
)
def test_parse_media_files_refuses(doc: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_media_files(doc, "k")


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../k2/x.m4s", "480p/../../x", "480p//x", "480p/./x", "", "a b", 7,
     "480p/.init.mp4", "movie..final.mp4", "x" * 256],
)  # fmt: skip
def test_parse_media_files_drops_a_file_the_fleet_cannot_name(path: Any) -> None:
    """One file whose name breaks the fleet's rule (steering and the edges refuse it too) is
    left out, with why; the title keeps its other files."""
    dropped: list[str] = []
    doc = {"files": [_file(), _file(path=path)]}
    assert parse_media_files(doc, "k", dropped) == [MediaFile("480p/seg00001.m4s", 100, HEX)]
    assert len(dropped) == 1 and "files[1].path" in dropped[0]


def test_parse_media_files_accepts() -> None:
    doc = {
        "title": "k",
        "files": [_file(), _file(path="master.m3u8", size=0, xxh64=HEX.upper())],
        "renditions": [],
    }
    assert parse_media_files(doc, "k") == [
        MediaFile("480p/seg00001.m4s", 100, HEX),
        MediaFile("master.m3u8", 0, HEX),
    ]
    assert parse_media_files({"files": []}, "k") == []  # no title named: not checked


# -- the migration ------------------------------------------------------------------------


async def test_migration_7_applies_on_both_backends(control_db_url: str) -> None:
    database = await dbmod.connect(control_db_url)
    try:
        assert await dbmod.migrate(database, MIGRATIONS[:6], now=1.0) == [1, 2, 3, 4, 5, 6]
        await database.execute(
            "INSERT INTO accounts (id, email, password_hash, created_at) VALUES ('a', 'e', 'h', 1)"
        )
        await database.execute(
            "INSERT INTO plays (id, account_id, profile_id, title_id, media_key, started_at,"
            " updated_at, lease_expires_at) VALUES ('old', 'a', 'p', 't', 'k', 1, 1, 2)"
        )
        assert await dbmod.migrate(database, MIGRATIONS, now=2.0) == [7]
        assert await dbmod.schema_version(database) == 7
        row = await database.fetchone("SELECT region, max_height FROM plays WHERE id = 'old'")
        assert row == {"region": "", "max_height": None}  # plays from before: no region, no cap
        await database.execute(
            "INSERT INTO media_files (media_key, path, size, xxh64) VALUES ('k', 'a', ?, ?)",
            (2**40, HEX),
        )
        with pytest.raises(dbmod.IntegrityError):
            await database.execute(
                "INSERT INTO media_files (media_key, path, size, xxh64) VALUES ('k', 'a', 1, ?)",
                (HEX,),
            )
        row = await database.fetchone("SELECT size FROM media_files")
        assert row is not None and int(row["size"]) == 2**40
    finally:
        await database.close()


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        ({"half_life_days": 0}, "fill.half_life_days: expected a number from 0.01"),
        ({"window_days": -1}, "fill.window_days"),
        ({"boost_views": "lots"}, "fill.boost_views"),
        ({"boost_days": 400}, "fill.boost_days"),
        ({"single_file_share": 1.5}, "fill.single_file_share"),
        ({"cache_ttl": "2d"}, "fill.cache_ttl"),
        ({"limit": 0}, "fill.limit"),
        ({"limit": 1_000_001}, "fill.limit"),
        ({"credential_file": "/nonexistent/token"}, "fill.credential_file"),
        ({"origin_credential_file": "/nonexistent/x"}, "fill.origin_credential_file"),
        ({"cache_tl": 5}, 'fill.cache_tl: unknown key; did you mean "cache_ttl"'),
        ("yes", "fill"),
    ],
)
def test_fill_config_errors_name_the_file_and_key(fill: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"fill": fill}, "conf/control.yaml")
    assert str(exc.value).startswith("conf/control.yaml: ")
    assert message in str(exc.value)


def test_fill_config_defaults_and_a_short_token(tmp_path: Path) -> None:
    cfg = parse_config({}).fill
    assert (cfg.credential_file, cfg.half_life_days, cfg.window_days, cfg.boost_views) == (
        None, 1.0, 7.0, 50.0,
    )  # fmt: skip
    assert (cfg.boost_days, cfg.single_file_share, cfg.cache_ttl, cfg.limit) == (
        3.0, 0.0, 300.0, 20000,
    )  # fmt: skip
    short = tmp_path / "short.token"
    short.write_text("tooshort\n")
    with pytest.raises(ConfigError, match=r"fill\.credential_file: the token .* has 8 characters"):
        parse_config({"fill": {"credential_file": str(short)}}, "c.yaml")
    ok = parse_config({"fill": {"credential_file": token_file(tmp_path, "t", FEED_TOKEN)}})
    assert ok.fill.credential_file == tmp_path / "t"


# -- the pure parts -----------------------------------------------------------------------

NOW = 1_790_000_000.0
RENDITIONS = renditions_of(LADDER)


def test_renditions_of_the_catalogs_json() -> None:
    assert RENDITIONS[0] == Rendition("240p", 240, 400_000)
    assert renditions_of([{"name": "a"}, {"height": 5}, "x", {"name": "b", "height": True}]) == (
        Rendition("a", 0, 0),
        Rendition("b", 0, 0),
    )
    assert renditions_of(None) == ()


@pytest.mark.parametrize(
    ("play", "title", "counted", "plays", "reached"),
    [
        # (play, the title's duration, counted, decayed plays, fraction reached)
        (Play("paris", "k", 480, 3000.0, NOW, 3000.0), DURATION, True, 1.0, 0.5),
        (Play("paris", "k", 480, 3000.0, NOW - DAY, 3000.0), DURATION, True, 0.5, 0.5),
        # Watched twice: still one play; the position is the end.
        (Play("paris", "k", 480, 12000.0, NOW, 6000.0), DURATION, True, 1.0, 1.0),
        # Resumed at 4000 s, 600 s watched: reached 4600 s.
        (Play("paris", "k", 480, 600.0, NOW, 4600.0), DURATION, True, 1.0, 4600 / DURATION),
        # Seeked back to the start after 1200 s: reached at least what it watched.
        (Play("paris", "k", 480, 1200.0, NOW, 0.0), DURATION, True, 1.0, 0.2),
        (Play("paris", "k", 480, 6000.0, NOW - 3 * DAY, 6000.0), DURATION, True, 0.125, 1.0),
        (Play("paris", "k", 480, 6000.0, NOW - 3 * DAY - 1), DURATION, False, 0.0, 0.0),
        (Play("paris", "k", 480, 0.0, NOW), DURATION, False, 0.0, 0.0),
        (Play("paris", "k", 480, 60.0, NOW), None, False, 0.0, 0.0),  # duration unknown
        (Play("paris", "k", 480, 60.0, NOW), 0.0, False, 0.0, 0.0),
        (Play("paris", "gone", 480, 60.0, NOW), -1.0, False, 0.0, 0.0),  # no such title
    ],
)
def test_play_tally(
    play: Play, title: float | None, counted: bool, plays: float, reached: float
) -> None:
    tally = PlayTally(NOW, half_life_days=1.0, window_days=3.0)
    t = None if title == -1.0 else FillTitle("k", title, RENDITIONS, NOW)
    assert tally.add(play, t) is counted
    s = tally.survival()
    if counted:
        assert tally.total == {"k": {480: pytest.approx(plays)}}
        assert tally.by_region == {"paris": {"k": {480: pytest.approx(plays)}}}
        # One play: everyone reaches up to its fraction, nobody past it.
        assert s(0.0) == 1.0 and s(reached - 0.01) == 1.0
        assert s(min(1.0, reached + 0.01)) == (1.0 if reached == 1.0 else 0.0)
    else:
        assert tally.total == {} and tally.by_region == {}
        assert s.points == (1.0, 1.0)  # no data: 1 everywhere


def test_play_tally_survival_weighs_plays_by_their_decay() -> None:
    """Three plays: one fresh to the end, one a day old to 10%, one fresh to 30%."""
    tally = PlayTally(NOW, half_life_days=1.0, window_days=3.0)
    t = FillTitle("k", 1000.0, RENDITIONS, NOW)
    for play in (
        Play("paris", "k", None, 1000.0, NOW, 1000.0),
        Play("paris", "k", None, 100.0, NOW - DAY, 100.0),
        Play("lyon", "k", None, 300.0, NOW, 300.0),
    ):
        assert tally.add(play, t)
    s = tally.survival()
    assert len(s.points) == SURVIVAL_BINS + 1
    total = 2.5
    for x, share in [(0.0, 1.0), (0.05, 1.0), (0.1, 1.0), (0.2, 2 / total), (0.3, 2 / total),
                     (0.5, 1 / total), (0.999, 1 / total), (1.0, 1 / total)]:  # fmt: skip
        assert s(x) == pytest.approx(share), x
    assert s.mean() == pytest.approx((0.5 * 0.1 + 1 * 0.3 + 1 * 1.0) / total, abs=1e-3)


def test_play_tally_groups_by_region_and_cap() -> None:
    tally = PlayTally(NOW, half_life_days=1.0, window_days=3.0)
    t = FillTitle("k", 100.0, RENDITIONS, NOW)
    for play in (
        Play("paris", "k", 480, 50.0, NOW),
        Play("paris", "k", 480, 100.0, NOW),
        Play("paris", "k", None, 100.0, NOW),
        Play("lyon", "k", 480, 100.0, NOW),
        Play("", "k", 2160, 100.0, NOW),  # the fallback URL: all regions only
    ):
        assert tally.add(play, t)
    # Two plays of 480 in Paris, however long each: 2.
    assert tally.by_region == {"paris": {"k": {480: 2.0, None: 1.0}}, "lyon": {"k": {480: 1.0}}}
    assert tally.total == {"k": {480: 3.0, None: 1.0, 2160: 1.0}}
    assert tally.plays == 5


def test_boosts_merge_under_no_cap() -> None:
    titles = [
        FillTitle("new", 1.0, (), NOW),
        FillTitle("old", 1.0, (), NOW - 5 * DAY),
        FillTitle("soon", 1.0, (), NOW + DAY),
        FillTitle("unknown", 1.0, (), None),
    ]
    b = boosts(titles, NOW, 30.0, 3.0)
    assert b == {"new": 30.0, "soon": 30.0}
    views = {"new": {480: 1.0}, "x": {None: 2.0}}
    merged = merge_boost(views, b)
    assert merged == {"new": {480: 1.0, None: 30.0}, "x": {None: 2.0}, "soon": {None: 30.0}}
    assert views == {"new": {480: 1.0}, "x": {None: 2.0}}  # not changed


def test_ranked_titles() -> None:
    views: dict[str, dict[int | None, float]] = {
        "a": {480: 1.0, None: 1.0},
        "b": {480: 3.0},
        "c": {480: 2.0},
        "d": {480: 0.0},
        "e": {480: -1.0, 720: 2.0},
    }
    assert ranked_titles(views) == [(3.0, "b"), (2.0, "a"), (2.0, "c"), (2.0, "e")]


def _mf(path: str) -> MediaFile:
    return MediaFile(path, 1, HEX)


def test_top_files_keeps_the_best_by_score_then_path() -> None:
    top = TopFiles(3)
    assert not top.full_above(0.0)
    top.add("a", [(_mf("z"), 5.0), (_mf("y"), 0.0), (_mf("x"), 1.0)])
    assert not top.full_above(0.5)  # two objects for a limit of 3
    top.add("b", [(_mf("m"), 5.0), (_mf("n"), 2.0), (_mf("o"), 0.5)])
    assert top.full_above(1.5) and not top.full_above(2.0)  # a tie may still win on path
    assert [(o["path"], o["score"]) for o in top.objects()] == [
        ("/v/a/z", 5.0),
        ("/v/b/m", 5.0),
        ("/v/b/n", 2.0),
    ]
    top.add("0", [(_mf("a"), 2.0)])  # the same score, an earlier path: it wins the tie
    assert [o["path"] for o in top.objects()] == ["/v/a/z", "/v/b/m", "/v/0/a"]
