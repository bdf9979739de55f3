"""The origin's catalog feed read by the control plane, against a real origin (and a fake one
for malformed answers), on both database backends."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from control.catalog import Media, NotPlayable
from control.feed import FeedEntry, _Stale
from edge.tokens import load_keys, split_token, verify
from origin.app import ORIGIN, create_app
from origin.catalog import CatalogFeed
from origin.config import load_config
from origin.synth import synth_catalog

from .conftest import TEST_KEYS
from .control_support import RunningControl, User
from .m3u8check import parse_attributes

CATALOG = "catalog-token-for-tests-0123456"
WRONG = "not-the-catalog-token-987654321"

MANIFEST = {
    "duration": 5400.0,
    "renditions": [
        {"name": "360p", "width": 640, "height": 360, "bandwidth": 900_000,
         "codecs": "avc1.4d401e,mp4a.40.2", "frame_rate": 25},
    ],
    "job": 1,
}  # fmt: skip
RENDITION = {
    "name": "360p",
    "width": 640,
    "height": 360,
    "bandwidth": 900_000,
    "codecs": "avc1.4d401e,mp4a.40.2",
    "frame_rate": 25,
}


class Origin:
    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner
        origin = runner.app[ORIGIN]
        assert origin.server is not None and isinstance(origin.feed, CatalogFeed)
        self.url = f"http://127.0.0.1:{origin.server.port}"
        self.feed: CatalogFeed = origin.feed


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    (tmp_path / "fill.tokens").write_text("fill-token-for-tests-0123456789\n")
    (tmp_path / "catalog.tokens").write_text(f"# control planes\n{CATALOG}\n")
    (tmp_path / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {tmp_path / 'assets'}}}\n"
        f"fill_credentials_file: {tmp_path / 'fill.tokens'}\n"
        f"catalog_credentials_file: {tmp_path / 'catalog.tokens'}\n"
        f"catalog_db: {tmp_path / 'catalog.sqlite'}\n"
        "access_log: false\n"
    )
    runner = web.AppRunner(create_app(load_config(tmp_path / "origin.yaml")), handle_signals=False)
    await runner.setup()
    yield Origin(runner)
    await runner.cleanup()


def credential(tmp_path: Path, token: str = CATALOG) -> Path:
    path = tmp_path / "feed.token"
    path.write_text(f"# the origin's catalog credential\n{token}\n")
    return path


def feed_settings(url: str, cred: Path) -> dict[str, Any]:
    return {"url": url, "credential_file": str(cred), "interval": 3600}


async def until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for a background task's effect (polling with a deadline, no fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def polls(rc: RunningControl) -> int:
    return rc.counter("control_feed_polls", "ok") + rc.counter("control_feed_polls", "error")


async def started(start_control: Any, url: str, cred: Path) -> RunningControl:
    """A control plane reading the feed, once its first (start-up) poll is over."""
    rc: RunningControl = await start_control(catalog_feed=feed_settings(url, cred))
    await until(lambda: polls(rc) >= 1, "the start-up poll")
    return rc


async def sync(rc: RunningControl, admin: User, status: int = 200) -> Any:
    r = await rc.api.post("/v1/admin/catalog/sync", token=admin.token)
    assert r.status == status, r
    return r.body


async def search(rc: RunningControl, user: User, q: str, pid: str | None = None) -> list[str]:
    r = await rc.api.get(
        "/v1/search", token=user.token, params={"profile_id": pid or user.profile_id, "q": q}
    )
    assert r.status == 200, r
    return [i["id"] for i in r.body["items"]]


async def admin_title(rc: RunningControl, admin: User, title_id: str) -> Any:
    r = await rc.api.get(f"/v1/admin/titles/{title_id}", token=admin.token)
    assert r.status == 200, r
    return r.body


async def test_a_published_title_enters_the_catalog_and_leaves_it(
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    rc = await started(start_control, origin.url, credential(tmp_path))
    admin, user = await rc.admin(), await rc.signup()
    r = await rc.api.post(
        "/v1/profiles", json={"name": "Kids", "maturity_limit": 7}, token=user.token
    )
    kid = r.body["id"]

    seq = origin.feed.announce("night_train", MANIFEST)
    assert await sync(rc, admin) == {"applied": 1, "seq": seq}
    t = await admin_title(rc, admin, "night-train")
    assert (t["name"], t["media_key"], t["source"], t["kind"]) == (
        "Night Train",
        "night_train",
        "origin",
        "movie",
    )
    assert t["published"] is True and t["released_at"] == rc.clock.now
    assert t["duration"] == 5400.0 and t["renditions"] == [RENDITION]
    assert t["artwork"] == {"poster": "poster.jpg", "sprite": "sprite.jpg"}
    assert t["maturity"] == 18  # unrated: hidden from children until an admin rates it
    assert await search(rc, user, "night train") == ["night-train"]
    assert await search(rc, user, "nigth trian") == ["night-train"]
    assert await search(rc, user, "night train", kid) == []
    r = await rc.api.get(
        "/v1/titles/night-train", token=user.token, params={"profile_id": user.profile_id}
    )
    assert r.body["playable"] is True and r.body["seasons"] == []
    media = await rc.control.catalog.media("night-train", None)
    assert media == Media("night-train", "", "night_train", "Night Train", 18, 5400.0, [RENDITION])
    assert rc.counter("control_feed_entries") == 1
    assert rc.counter("control_catalog_changes", "origin", "create") == 1

    # An administrator describes it; a re-publication refreshes only the media fields.
    r = await rc.api.put(
        "/v1/admin/titles/night-train",
        json={"name": "The Night Train", "maturity": 7, "genres": ["Drama"], "year": 2001,
              "synopsis": "Overnight.", "artwork": {"poster": "https://img.example.com/p.jpg"}},
        token=admin.token,
    )  # fmt: skip
    assert r.status == 200, r
    rc.clock.advance(3600)
    longer = {
        **MANIFEST,
        "duration": 5500.0,
        "renditions": [RENDITION, {**RENDITION, "name": "720p"}],
    }
    seq = origin.feed.announce("night_train", longer)
    assert await sync(rc, admin) == {"applied": 1, "seq": seq}
    t2 = await admin_title(rc, admin, "night-train")
    for k in ("name", "maturity", "genres", "year", "synopsis", "released_at", "source"):
        assert t2[k] == (r.body[k] if k != "source" else "origin"), k
    assert t2["duration"] == 5500.0 and len(t2["renditions"]) == 2
    assert t2["artwork"] == {"poster": "https://img.example.com/p.jpg", "sprite": "sprite.jpg"}
    assert await search(rc, user, "night train", kid) == ["night-train"]  # now rated 7

    # Withdrawn: gone from every viewer route; re-published: back.
    seq = origin.feed.withdraw("night_train")
    assert await sync(rc, admin) == {"applied": 1, "seq": seq}
    assert await search(rc, user, "night train") == []
    r = await rc.api.get(
        "/v1/titles/night-train", token=user.token, params={"profile_id": user.profile_id}
    )
    assert r.status == 404
    assert (await admin_title(rc, admin, "night-train"))["published"] is False
    assert rc.counter("control_catalog_changes", "origin", "delete") == 1
    origin.feed.announce("night_train", longer)
    await sync(rc, admin)
    assert await search(rc, user, "night train") == ["night-train"]
    assert rc.counter("control_feed_entries") == 4
    assert rc.counter("control_catalog_changes", "origin", "update") == 2
    assert rc.counter("control_feed_polls", "error") == 0


async def test_feed_fills_episodes_and_keeps_ids_apart(
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    rc = await started(start_control, origin.url, credential(tmp_path))
    admin = await rc.admin()
    r = await rc.api.post(
        "/v1/admin/titles", json={"kind": "series", "name": "Show"}, token=admin.token
    )
    r = await rc.api.post(
        "/v1/admin/titles/show/episodes",
        json={"season": 1, "number": 1, "name": "Pilot", "media_key": "show_s1e1"},
        token=admin.token,
    )
    ep = r.body["id"]
    r = await rc.api.post(
        "/v1/admin/titles", json={"kind": "movie", "name": "My Film"}, token=admin.token
    )
    assert r.body["id"] == "my-film"

    origin.feed.announce("show_s1e1", MANIFEST)
    origin.feed.announce("my_film", MANIFEST)  # its slug is an admin's title without media
    assert (await sync(rc, admin))["applied"] == 2
    show = await admin_title(rc, admin, "show")
    (episode,) = show["episodes"]
    assert episode["duration"] == 5400.0 and episode["renditions"] == [RENDITION]
    assert episode["published"] is True
    m = await rc.control.catalog.media("show", ep)
    assert (m.media_key, m.renditions) == ("show_s1e1", [RENDITION])
    details = await rc.control.catalog.details("show", 18)
    assert details["seasons"][0]["episodes"][0]["playable"] is True
    r = await rc.api.get("/v1/admin/titles", token=admin.token, params={"source": "origin"})
    (made,) = r.body["items"]
    assert made["id"].startswith("my-film-") and made["media_key"] == "my_film"
    assert (await admin_title(rc, admin, "my-film"))["media_key"] is None  # untouched

    origin.feed.withdraw("show_s1e1")
    await sync(rc, admin)
    show = await admin_title(rc, admin, "show")
    assert show["episodes"][0]["published"] is False
    assert show["episodes"][0]["media_key"] == "show_s1e1"  # kept: a re-publication finds it
    with pytest.raises(NotPlayable):
        await rc.control.catalog.media("show", ep)
    origin.feed.announce("show_s1e1", MANIFEST)
    await sync(rc, admin)
    assert (await rc.control.catalog.media("show", ep)).media_key == "show_s1e1"
    assert rc.counter("control_catalog_changes", "origin", "create") == 1


async def test_a_restart_resumes_from_the_stored_sequence(
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    cred = credential(tmp_path)
    rc1 = await started(start_control, origin.url, cred)
    admin = await rc1.admin()
    origin.feed.announce("first", MANIFEST)
    origin.feed.announce("second", MANIFEST)
    assert await sync(rc1, admin) == {"applied": 2, "seq": 2}
    await rc1.runner.cleanup()

    rc2 = await started(start_control, origin.url, cred)
    assert rc2.counter("control_feed_polls", "ok") == 1
    assert await sync(rc2, admin) == {"applied": 0, "seq": 2}
    assert rc2.counter("control_feed_entries") == 0  # nothing applied twice
    origin.feed.announce("third", MANIFEST)
    assert await sync(rc2, admin) == {"applied": 1, "seq": 3}
    assert rc2.counter("control_feed_entries") == 1
    assert await rc2.control.feed.stored_seq() == 3
    r = await rc2.api.get("/v1/admin/titles", token=admin.token)
    assert sorted(i["id"] for i in r.body["items"]) == ["first", "second", "third"]


async def test_two_instances_apply_each_entry_once(
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    cred = credential(tmp_path)
    rc1 = await started(start_control, origin.url, cred)
    rc2 = await started(start_control, origin.url, cred)
    admin, user = await rc1.admin(), await rc1.signup()
    origin.feed.announce("shared", MANIFEST)
    r1, r2 = await asyncio.gather(sync(rc1, admin), sync(rc2, admin))
    assert r1["seq"] == r2["seq"] == 1
    assert r1["applied"] + r2["applied"] == 1
    assert rc1.counter("control_feed_entries") + rc2.counter("control_feed_entries") == 1
    await rc1.control.catalog.refresh()
    await rc2.control.catalog.refresh()
    for rc in (rc1, rc2):
        assert await search(rc, user, "shared") == ["shared"]
    # A page read before another instance stored it is not applied (and nothing is bumped).
    version = await rc1.control.catalog.db_version()
    with pytest.raises(_Stale):
        await rc2.control.feed._apply_page(0, [FeedEntry(1, "shared", False)], [], 1)
    assert await rc1.control.catalog.db_version() == version
    assert await search(rc1, user, "shared") == ["shared"]


async def test_a_wrong_credential_is_an_error_and_the_poller_goes_on(
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    cred = credential(tmp_path, WRONG)
    rc = await started(start_control, origin.url, cred)
    admin = await rc.admin()
    assert rc.counter("control_feed_polls", "error") == 1  # the start-up poll: 401
    origin.feed.announce("late", MANIFEST)
    body = await sync(rc, admin, 503)
    assert body["error"]["code"] == "unavailable" and "401" in body["error"]["message"]
    assert WRONG not in body["error"]["message"]
    assert rc.counter("control_feed_polls", "error") == 2
    assert all(not t.done() for t in rc.control.tasks)  # the poller is alive

    # The credential is rotated on disk: the next poll of the loop itself succeeds.
    credential(tmp_path, CATALOG)
    rc.control.feed.wake()
    await until(lambda: rc.counter("control_feed_polls", "ok") >= 1, "a successful poll")
    assert rc.counter("control_feed_entries") == 1
    assert (await admin_title(rc, admin, "late"))["source"] == "origin"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_and_malformed_origins(start_control: Any, tmp_path: Path) -> None:
    answers: list[tuple[int, Any]] = []
    seen: list[tuple[str | None, str | None]] = []

    async def feed(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), request.query.get("since")))
        status, body = answers.pop(0) if answers else (200, {"titles": [], "next": 0})
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="application/json")
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/catalog/feed", feed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        cred = credential(tmp_path)
        # Nothing listens: refused, counted, the service runs on.
        down = await started(start_control, f"http://127.0.0.1:{closed_port()}", cred)
        admin = await down.admin()
        body = await sync(down, admin, 503)
        assert "cannot reach the origin" in body["error"]["message"]
        assert down.counter("control_feed_polls", "error") == 2

        rc = await started(start_control, url, cred)
        assert seen[-1] == (f"Bearer {CATALOG}", "0")
        for status, bad in (
            (200, "{not json"),
            (200, {"titles": "nope", "next": 1}),
            (200, {"titles": [], "next": -1}),
            (200, ["a", "list"]),
            (500, {"error": "boom"}),
        ):
            answers.append((status, bad))
            await sync(rc, admin, 503)
        assert rc.counter("control_feed_polls", "error") == 5
        assert await rc.control.feed.stored_seq() == 0

        # Bad entries are skipped; the good one between them is applied.
        good = {"seq": 3, "title": "good_one", "published": True, "duration": 10, "renditions": []}
        answers.append(
            (
                200,
                {
                    "titles": [
                        {"seq": 1, "title": "Bad Key!", "published": True},
                        {"seq": 2, "title": "no_flag"},
                        good,
                        {"seq": 4, "title": "bad_rendition", "published": True,
                         "renditions": [{"name": 5}]},
                        {"seq": 99, "title": "out_of_range", "published": True},
                        "not an object",
                    ],
                    "next": 5,
                },
            )
        )  # fmt: skip
        answers.append((200, {"titles": [], "next": 5}))
        assert await sync(rc, admin) == {"applied": 1, "seq": 5}
        assert seen[-1] == (f"Bearer {CATALOG}", "5")
        assert rc.counter("control_feed_skipped") == 5
        assert rc.counter("control_feed_entries") == 1
        assert (await admin_title(rc, admin, "good-one"))["duration"] == 10.0
        assert await rc.control.feed.stored_seq() == 5
    finally:
        await runner.cleanup()


async def test_sync_without_a_feed_is_a_conflict(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    body = await sync(rc, admin, 409)
    assert body["error"]["code"] == "feed_disabled"
    assert rc.counter("control_feed_polls", "error") == 0


def test_entries_with_numbers_too_large_for_a_float_are_skipped_not_fatal() -> None:
    """A huge JSON integer (duration, frame_rate) is a malformed entry, skipped like any other;
    it raised OverflowError before, which failed the whole page on every poll (stuck feed)."""
    from control.feed import parse_page

    huge = 10**400
    page = {
        "titles": [
            {"seq": 1, "title": "long_one", "published": True, "duration": huge},
            {"seq": 2, "title": "fast_one", "published": True,
             "renditions": [{"name": "720p", "frame_rate": huge}]},
            {"seq": 3, "title": "good_one", "published": True, "duration": 10},
        ],
        "next": 3,
    }  # fmt: skip
    entries, skipped, last = parse_page(page, 0)
    assert [e.key for e in entries] == ["good_one"] and last == 3
    assert [seq for seq, _ in skipped] == [1, 2]


def test_renditions_keep_their_audio_track() -> None:
    """The origin's summary names each rendition's audio track and its channels; both are kept
    (the per-session playlist writes the audio groups from them), and checked."""
    from control.feed import parse_page

    audio = {**RENDITION, "audio": "audio_128k", "audio_channels": 2}
    page = {
        "titles": [
            {"seq": 1, "title": "with_audio", "published": True, "renditions": [audio]},
            {"seq": 2, "title": "no_audio", "published": True,
             "renditions": [{**RENDITION, "audio": None, "audio_channels": None}]},
            {"seq": 3, "title": "bad_audio", "published": True,
             "renditions": [{**RENDITION, "audio": 5}]},
            {"seq": 4, "title": "bad_channels", "published": True,
             "renditions": [{**audio, "audio_channels": True}]},
            {"seq": 5, "title": "unknown_channels", "published": True,
             "renditions": [{**audio, "audio_channels": None}]},
        ],
        "next": 5,
    }  # fmt: skip
    entries, skipped, _ = parse_page(page, 0)
    assert [seq for seq, _ in skipped] == [3, 4]
    by_key = {e.key: e.renditions for e in entries}
    assert by_key["with_audio"] == (audio,)
    assert by_key["no_audio"] == (RENDITION,)
    assert by_key["unknown_channels"] == ({**audio, "audio_channels": None},)


async def test_a_published_titles_audio_reaches_the_session_playlist(
    start_control: Any, origin: Origin, tmp_path: Path
) -> None:
    """End to end: a title packaged by origin.package (origin.synth writes one exactly as an
    ingest does), announced on the real origin's feed, read into the catalog, played: the
    per-session playlist has the origin's audio groups, each URI with its own token."""
    (key,) = synth_catalog(tmp_path / "media", titles=1, renditions=3, duration=8.0, seed=4)
    manifest = json.loads((tmp_path / "media" / "v" / key / "manifest.json").read_text())
    assert [a["name"] for a in manifest["audio"]] == ["audio_96k", "audio_128k"]
    origin.feed.announce(key, manifest)
    keys_file = tmp_path / "edge.keys"
    keys_file.write_text(TEST_KEYS)
    rc: RunningControl = await start_control(
        catalog_feed=feed_settings(origin.url, credential(tmp_path)),
        playback={"signing_keys_file": str(keys_file), "fallback_url": "http://edges.test"},
    )
    admin = await rc.admin()
    await sync(rc, admin)
    title = await admin_title(rc, admin, key)  # the key is already a valid slug
    assert [(r["name"], r["audio"], r["audio_channels"]) for r in title["renditions"]] == [
        ("240p", "audio_96k", 2),
        ("360p", "audio_96k", 2),
        ("480p", "audio_128k", 2),
    ]
    r = await rc.api.put(f"/v1/admin/titles/{key}", json={"maturity": 0}, token=admin.token)
    assert r.status == 200, r
    user = await rc.subscriber("basic")
    r = await rc.api.post(
        "/v1/playback", json={"profile_id": user.profile_id, "title_id": key}, token=user.token
    )
    assert r.status == 201, r
    p = await rc.api.get(r.body["manifests"]["hls"].removeprefix(rc.url))
    assert p.status == 200, p
    lines = p.body.splitlines()
    media = [
        parse_attributes(ln.partition(":")[2], Path("m"), n)
        for n, ln in enumerate(lines, 1)
        if ln.startswith("#EXT-X-MEDIA:")
    ]
    variants = [
        parse_attributes(ln.partition(":")[2], Path("m"), n)
        for n, ln in enumerate(lines, 1)
        if ln.startswith("#EXT-X-STREAM-INF:")
    ]
    assert [(m["TYPE"], m["GROUP-ID"], m["CHANNELS"]) for m in media] == [
        ("AUDIO", '"audio_96k"', '"2"'),
        ("AUDIO", '"audio_128k"', '"2"'),
    ]
    assert [v["AUDIO"] for v in variants] == ['"audio_96k"', '"audio_96k"', '"audio_128k"']
    # The origin's own master.m3u8 has the same audio lines, but for the URIs.
    origin_master = (tmp_path / "media" / "v" / key / "master.m3u8").read_text()
    origin_media = [ln for ln in origin_master.splitlines() if ln.startswith("#EXT-X-MEDIA:")]
    ours = [ln for ln in lines if ln.startswith("#EXT-X-MEDIA:")]
    assert [ln.split(",URI=")[0] for ln in ours] == [ln.split(",URI=")[0] for ln in origin_media]
    keys = load_keys(keys_file)
    for m in media:
        uri = m["URI"].strip('"')
        group = m["GROUP-ID"].strip('"')
        u = urlsplit(uri)
        assert f"{u.scheme}://{u.netloc}" == "http://edges.test"
        token, path = split_token(u.path)
        assert path == f"/v/{key}/{group}/index.m3u8"
        verify(keys, token, f"/v/{key}/{group}/seg00001.m4s", rc.clock(), None)
    assert parse_qs(urlsplit(r.body["manifests"]["hls"]).query)["token"]
