"""Fill manifests in steering: the pure planner by tables, then the service over real HTTP
with a stand-in control plane serving the popularity feed."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from aiohttp import web

from steering.app import STEERING, create_app
from steering.config import load_config
from steering.fill import (
    FeedError,
    FeedObject,
    FillEdge,
    copies,
    copy_thresholds,
    manifest_version,
    parse_feed,
    parse_progress,
    plan_site,
)
from steering.ring import Member, Ring

# -- the planner ----------------------------------------------------------------------------


def obj(key: str, name: str, size: int, score: float) -> FeedObject:
    path = f"/v/{key}/{name}"
    return FeedObject(key, path, size, xxhash.xxh64_hexdigest(path.encode()), score)


def catalog(titles: int = 40, files: int = 4, seed: int = 1) -> list[FeedObject]:
    """Zipf-like scores over titles; a title's files share its score (one rendition)."""
    rnd = random.Random(seed)
    out = []
    for t in range(titles):
        score = 1000.0 / (t + 1)
        for f in range(files):
            out.append(obj(f"t{t}", f"720p/seg{f:05d}.m4s", rnd.randint(500, 1500), score))
    return out


EDGES = [FillEdge("e1", 1.0, 10**9), FillEdge("e2", 1.0, 10**9), FillEdge("e3", 2.0, 10**9)]


def plan(edges=EDGES, objects=None, previous=None, *, share=0.8, max_copies=1, stickiness=1.2):
    return plan_site(
        edges,
        catalog() if objects is None else objects,
        previous or {},
        share=share,
        max_copies=max_copies,
        stickiness=stickiness,
    )


def holders_by_path(p) -> dict[str, tuple[str, ...]]:
    return {o.obj.path: o.holders for m in p.manifests.values() for o in m.objects}


def as_previous(p) -> dict[str, dict[str, int]]:
    return {e: {o.obj.path: o.obj.size for o in m.objects} for e, m in p.manifests.items()}


@pytest.mark.parametrize("max_copies", [1, 2, 3])
def test_placement_is_the_ring_order_players_are_routed_with(max_copies):
    p = plan(max_copies=max_copies)
    ring = Ring(Member(e.id, e.weight) for e in EDGES)
    objects = catalog()
    thresholds = copy_thresholds([o.score for o in objects], max_copies - 1)
    got = holders_by_path(p)
    assert len(got) == len(objects) and p.left_out == 0
    for o in objects:
        # Room everywhere: the holders are exactly the key's first choices, in rank order.
        assert got[o.path] == tuple(ring.rank(o.key)[: copies(o.score, thresholds)]), o
    # All files of a title on the same edges (placement by key, not by path).
    by_key: dict[str, set[tuple[str, ...]]] = {}
    for o in objects:
        by_key.setdefault(o.key, set()).add(got[o.path])
    assert all(len(v) == 1 for v in by_key.values())


@pytest.mark.parametrize(
    ("scores", "extra", "expected"),
    [
        # 100 objects 1..100, median 50.5: T1 = max(score at top 10 = 91, 2*50.5) = 101.
        (list(range(1, 101)), 1, [101.0]),
        # Steeper: T1 = max(91, 2*5.5 = 11) = 91; T2 = max(100, 4*5.5 = 22) = 100.
        ([1.0] * 90 + [float(s) for s in range(91, 101)], 2, [91.0, 100.0]),
        ([5.0], 2, [10.0, 20.0]),  # one object: nothing above twice its own median
        ([], 2, []),
        ([3.0, 1.0], 0, []),
    ],
)
def test_copy_thresholds(scores, extra, expected):
    assert copy_thresholds(scores, extra) == expected


@pytest.mark.parametrize(
    ("score", "thresholds", "n"),
    [(1.0, [], 1), (90.0, [91.0, 100.0], 1), (91.0, [91.0, 100.0], 2), (500.0, [91.0, 100.0], 3)],
)
def test_copies(score, thresholds, n):
    assert copies(score, thresholds) == n


def test_copy_counts_follow_popularity_and_are_capped_by_max_copies_and_site_size():
    # One title of 100 files per score level: a flat feed gets single copies.
    flat = [obj("t", f"f{i}", 100, 7.0) for i in range(50)]
    assert {len(h) for h in holders_by_path(plan(objects=flat, max_copies=3)).values()} == {1}
    hot = [obj(f"k{i}", "f", 100, 1.0 if i >= 10 else 1000.0 - i) for i in range(100)]
    got = holders_by_path(plan(objects=hot, max_copies=3))
    # Top 10% (10 objects, far above twice the median): 2 copies; top 1%: 3.
    assert len(got["/v/k0/f"]) == 3
    assert [len(got[f"/v/k{i}/f"]) for i in range(1, 10)] == [2] * 9
    assert {len(got[f"/v/k{i}/f"]) for i in range(10, 100)} == {1}
    assert len(holders_by_path(plan(objects=hot, max_copies=2))["/v/k0/f"]) == 2
    two = [FillEdge("a", 1.0, 10**9), FillEdge("b", 1.0, 10**9)]
    assert len(holders_by_path(plan(two, objects=hot, max_copies=16))["/v/k0/f"]) == 2


@pytest.mark.parametrize(("share", "capacity"), [(0.8, 20_000), (0.5, 7_000), (1.0, 64_000)])
def test_capacity_is_respected_per_edge(share, capacity):
    edges = [FillEdge("a", 1.0, capacity), FillEdge("b", 1.0, capacity), FillEdge("c", 3.0, None)]
    p = plan(edges, share=share, max_copies=2)
    limit = math.floor(share * capacity)
    assert set(p.manifests) == {"a", "b"}  # unknown capacity: no manifest
    for m in p.manifests.values():
        assert m.capacity == limit
        assert m.bytes == sum(o.obj.size for o in m.objects) <= limit
        assert [(-o.obj.score, o.obj.path) for o in m.objects] == sorted(
            (-o.obj.score, o.obj.path) for o in m.objects
        )
    total = sum(o.size for o in catalog())
    assert p.left_out > 0 and sum(m.bytes for m in p.manifests.values()) < total


def test_a_full_edge_spills_to_the_next_in_rank_order():
    objects = catalog()
    ring = Ring(Member(e.id, e.weight) for e in EDGES)
    small = [FillEdge("e1", 1.0, 3000), EDGES[1], EDGES[2]]
    got = holders_by_path(plan(small, share=1.0))
    spilled = [o for o in objects if ring.rank(o.key)[0] == "e1" and got[o.path] != ("e1",)]
    assert spilled, "e1 should have run out of room"
    for o in spilled:
        assert got[o.path] == (ring.rank(o.key)[1],)
    # The most popular of e1's objects stayed on e1: it filled in priority order.
    on_e1 = [o for o in objects if ring.rank(o.key)[0] == "e1"]
    assert got[on_e1[0].path] == ("e1",)
    # Unknown capacity spills too, and its objects are not lost.
    unknown = [FillEdge("e1", 1.0, None), EDGES[1], EDGES[2]]
    got = holders_by_path(plan(unknown))
    assert all("e1" not in h for h in got.values()) and len(got) == len(objects)


def test_stickiness_small_score_changes_cause_no_churn_large_ones_do():
    edges = [FillEdge("a", 1.0, 2400)]  # room for two 1000-byte objects (share 1.0)
    day1 = [obj("x", "f", 1000, 10.0), obj("y", "f", 1000, 9.0), obj("z", "f", 1000, 8.0)]
    p1 = plan(edges, day1, share=1.0)
    assert {o.obj.path for o in p1.manifests["a"].objects} == {"/v/x/f", "/v/y/f"}
    # z now beats y, but by less than the stickiness (1.2): yesterday's manifest stays.
    day2 = [day1[0], obj("y", "f", 1000, 9.0), obj("z", "f", 1000, 10.5)]
    p2 = plan(edges, day2, as_previous(p1), share=1.0)
    assert p2.manifests["a"].version == p1.manifests["a"].version
    assert p2.churn["a"].bytes == 0
    # By more than the factor: z comes in, y goes, and the churn says so.
    day3 = [day1[0], obj("y", "f", 1000, 9.0), obj("z", "f", 1000, 11.0)]
    p3 = plan(edges, day3, as_previous(p1), share=1.0)
    assert {o.obj.path for o in p3.manifests["a"].objects} == {"/v/x/f", "/v/z/f"}
    c = p3.churn["a"]
    assert (c.added_objects, c.added_bytes, c.removed_objects, c.removed_bytes) == (
        1,
        1000,
        1,
        1000,
    )
    # Without stickiness even the small change churns.
    p4 = plan(edges, day2, as_previous(p1), share=1.0, stickiness=1.0)
    assert p4.churn["a"].bytes == 2000


def test_removing_an_edge_moves_only_that_edges_objects():
    four = [*EDGES, FillEdge("e4", 1.0, 10**9)]
    before = holders_by_path(plan(four))
    after = holders_by_path(plan(EDGES))
    moved = {p for p in before if before[p] != after[p]}
    assert moved == {p for p, h in before.items() if h == ("e4",)} and moved


def test_output_is_deterministic_whatever_the_input_order():
    objects = catalog()
    p1 = plan(objects=objects, max_copies=3)
    shuffled = objects[:]
    random.Random(7).shuffle(shuffled)
    p2 = plan(list(reversed(EDGES)), objects=shuffled, max_copies=3)
    assert {e: m.version for e, m in p1.manifests.items()} == {
        e: m.version for e, m in p2.manifests.items()
    }
    assert p1 == p2


def test_manifest_version_is_xxh64_of_the_sorted_lines():
    items = [("/v/b/x", "00000000000000aa"), ("/v/a/y", "00000000000000bb")]
    expected = xxhash.xxh64(b"/v/a/y 00000000000000bb\n/v/b/x 00000000000000aa\n").hexdigest()
    assert manifest_version(items) == manifest_version(reversed(items)) == expected
    assert len(expected) == 16
    assert manifest_version([]) == xxhash.xxh64(b"").hexdigest()


def test_plan_refuses_bad_arguments_and_duplicates():
    for kw in ({"share": 0.0}, {"max_copies": 0}, {"stickiness": 0.5}):
        with pytest.raises(ValueError):
            plan(**kw)
    o = obj("t", "f", 1, 1.0)
    with pytest.raises(ValueError, match="duplicate"):
        plan(objects=[o, o])
    assert plan([], objects=[o]).left_out == 1


GOOD = {"key": "t1", "path": "/v/t1/720p/seg1.m4s", "size": 10, "xxh64": "0" * 16, "score": 1}


def feed(*objects: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "region": "paris",
        "fallback": False,
        "computed_at": 1.0,
        "objects": list(objects),
        **top,
    }


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "feed"),
        (feed(region="berlin"), "region"),
        (feed(fallback="no"), "fallback"),
        (feed(computed_at="yesterday"), "computed_at"),
        (feed(half_life_days=0), "half_life_days"),
        (feed(objects={"a": 1}), "objects"),
        (feed(GOOD, {**GOOD, "path": "/v/t1/b"}, {**GOOD, "path": "/v/t1/c"}), "objects"),
    ],
)
def test_parse_feed_refuses_a_feed_broken_as_a_whole(doc, where):
    with pytest.raises(FeedError) as info:
        parse_feed(doc, "paris", limit=2)
    assert str(info.value).startswith(where + ":"), str(info.value)


BAD_OBJECTS = [
    ("x", "objects[1]"),
    ({**GOOD, "key": "../etc"}, "objects[1].key"),
    ({**GOOD, "path": "/v/t2/a.m4s"}, "objects[1].path"),
    ({**GOOD, "path": "/v/t1/../t2/a.m4s"}, "objects[1].path"),
    ({**GOOD, "path": "/v/t1/"}, "objects[1].path"),
    ({**GOOD, "path": "/v/t1//a"}, "objects[1].path"),
    # The fleet's one file name rule (control/catalog.py safe_relative_path): no name
    # starting with '.', none over 255 characters, no '..' anywhere.
    ({**GOOD, "path": "/v/t1/.hidden.m4s"}, "objects[1].path"),
    ({**GOOD, "path": "/v/t1/720p/movie..final.mp4"}, "objects[1].path"),
    ({**GOOD, "path": "/v/t1/" + "a" * 256}, "objects[1].path"),
    ({**GOOD, "size": -1}, "objects[1].size"),
    ({**GOOD, "size": "10"}, "objects[1].size"),
    ({**GOOD, "size": True}, "objects[1].size"),
    ({**GOOD, "xxh64": "XYZ"}, "objects[1].xxh64"),
    ({**GOOD, "score": 0}, "objects[1].score"),
    ({**GOOD, "score": float("nan")}, "objects[1].score"),
    (GOOD, "objects[1].path"),  # listed twice
]


@pytest.mark.parametrize(("bad", "where"), BAD_OBJECTS)
def test_parse_feed_skips_an_object_that_breaks_the_contract(bad, where):
    # One odd object must not freeze the site's manifests on its last feed: it is left out,
    # counted and named; the rest of the feed is used.
    f = parse_feed(feed(GOOD, bad), "paris")
    assert [o.path for o in f.objects] == [GOOD["path"]]
    assert f.skipped == 1 and f.skip_detail.startswith(where + ":"), f.skip_detail
    assert f.digest == parse_feed(feed(GOOD), "paris").digest
    # Strictly (the state file): the first bad object refuses the whole.
    with pytest.raises(FeedError) as info:
        parse_feed(feed(GOOD, bad), "paris", strict=True)
    assert str(info.value).startswith(where + ":"), str(info.value)


def test_file_names_at_the_limits_of_the_rule_are_accepted():
    names = ["a" * 255, "x.y~z-w_v.m4s", "_init.mp4", "~tmp", "-x", "a.b.c"]
    f = parse_feed(feed(*({**GOOD, "path": f"/v/t1/720p/{n}"} for n in names)), "paris")
    assert f.skipped == 0 and len(f.objects) == len(names)


def test_a_feed_mostly_broken_is_refused_whole():
    good = [{**GOOD, "path": f"/v/t1/seg{i}.m4s"} for i in range(100)]
    bad = {**GOOD, "size": "big"}
    assert parse_feed(feed(*good[:90], *[bad] * 10), "paris").skipped == 10
    with pytest.raises(FeedError, match="11 of 100 objects break the contract"):
        parse_feed(feed(*good[:89], *[bad] * 11), "paris")  # > 10 and > 10 %
    assert parse_feed(feed(*good[:1], *[bad] * 9), "paris").skipped == 9  # few: skipped
    with pytest.raises(FeedError, match=r"^objects: 1 of 1 objects"):
        parse_feed(feed(bad), "paris")  # nothing usable left: not an empty feed


def test_parse_feed_accepts_the_contract_and_digests_content():
    a = parse_feed(feed(GOOD, {**GOOD, "path": "/v/t1/master.m3u8", "score": 2.5}), "paris")
    assert [o.path for o in a.objects] == ["/v/t1/720p/seg1.m4s", "/v/t1/master.m3u8"]
    assert a.computed_at == 1.0 and not a.fallback and a.half_life_days == 1.0
    b = parse_feed(feed(GOOD, {**GOOD, "path": "/v/t1/master.m3u8", "score": 2.5}), "paris")
    c = parse_feed(feed(GOOD, {**GOOD, "path": "/v/t1/master.m3u8", "score": 2.6}), "paris")
    assert a.digest == b.digest != c.digest
    assert parse_feed(feed(computed_at=None), "paris").objects == ()


PROGRESS = {
    "state": "filling",
    "manifest": "0123456789abcdef",
    "objects_total": 10,
    "objects_done": 3,
    "bytes_total": 1000,
    "bytes_done": 300,
    "window": "02:00-14:00",
}


@pytest.mark.parametrize(
    "doc",
    [
        "filling",
        {**PROGRESS, "state": "sleeping"},
        {**PROGRESS, "manifest": 12},
        {**PROGRESS, "bytes_done": -1},
        {**PROGRESS, "objects_total": 1.5},
        {**PROGRESS, "bytes_total": False},
        {**PROGRESS, "window": 7},
    ],
)
def test_parse_progress_refuses_wrong_types(doc):
    with pytest.raises(FeedError):
        parse_progress(doc)


def test_parse_progress_accepts_the_contract():
    p = parse_progress(PROGRESS)
    assert p.to_json() == PROGRESS
    assert parse_progress({"state": "idle", "manifest": None}).bytes_done == 0


# -- the service over HTTP --------------------------------------------------------------------

HB_TOKEN = "heartbeat-token-0123456789"
FEED_TOKEN = "feed-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {HB_TOKEN}"}
GiB = 1024**3


def feed_objects(region: str, titles: int = 12, files: int = 5) -> list[dict[str, Any]]:
    out = []
    for t in range(titles):
        key = f"{region}-t{t}"
        for f in range(files):
            path = f"/v/{key}/1080p/seg{f:05d}.m4s"
            out.append(
                {
                    "key": key,
                    "path": path,
                    "size": 1000 + 37 * t + f,
                    "xxh64": xxhash.xxh64_hexdigest(path.encode()),
                    "score": round(100.0 / (t + 1), 3),
                }
            )
    out.sort(key=lambda o: (-o["score"], o["path"]))
    return out


class FakeControl:
    """The control plane's /v1/fill/popularity: contract JSON per region, bearer checked,
    requests counted; ``body`` overrides the answer (malformed feeds), ``status`` too."""

    def __init__(self) -> None:
        self.docs = {
            r: {
                "region": r,
                "fallback": False,
                "computed_at": 1765000000.0,
                "half_life_days": 1.0,
                "objects": feed_objects(r),
            }
            for r in ("paris", "frankfurt")
        }
        self.body: bytes | None = None
        self.status = 200
        self.requests = 0
        self.unauthorized = 0
        self.limits: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def popularity(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.limits.append(request.query.get("limit"))
        if request.headers.get("Authorization") != f"Bearer {FEED_TOKEN}":
            self.unauthorized += 1
            return web.json_response({"error": {"code": "unauthorized"}}, status=401)
        if self.status != 200:
            return web.json_response({"error": {"code": "boom"}}, status=self.status)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response(self.docs[request.query["region"]])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/fill/popularity", self.popularity)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class Service:
    def __init__(self, tmp: Path, control: FakeControl) -> None:
        self.tmp = tmp
        self.control = control
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.sent_at = time.time()
        self.fill_extra = ""  # more lines of the fill section

    def write_config(self) -> Path:
        (self.tmp / "hb.tokens").write_text(HB_TOKEN + "\n")
        (self.tmp / "feed.token").write_text("# the control plane's fill credential\n" + FEED_TOKEN)
        # Edge URLs on the discard port: probes fail, which must not matter to fill.
        (self.tmp / "steering.yaml").write_text(
            "listen: 127.0.0.1:0\n"
            "sites: [{name: paris, latitude: 48.85, longitude: 2.35},"
            " {name: frankfurt, latitude: 50.11, longitude: 8.68}]\n"
            "edges:\n"
            "  - {id: par1, site: paris, url: 'http://127.0.0.11:9'}\n"
            "  - {id: par2, site: paris, url: 'http://127.0.0.12:9'}\n"
            "  - {id: par3, site: paris, url: 'http://127.0.0.13:9', weight: 2,"
            " fill_capacity: 40000}\n"
            "  - {id: fra1, site: frankfurt, url: 'http://127.0.0.21:9'}\n"
            f"heartbeat_credentials_file: {self.tmp / 'hb.tokens'}\n"
            "fill:\n"
            f"  popularity_url: 'http://127.0.0.1:{self.control.port}'\n"
            f"  credential_file: {self.tmp / 'feed.token'}\n"
            f"  state_file: {self.tmp / 'fill-state.json'}\n"
            "  share: 0.8\n"
            "  max_copies: 2\n" + self.fill_extra
        )
        return self.tmp / "steering.yaml"

    async def start(self) -> None:
        app = create_app(load_config(self.write_config()))
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        # The background task reads every feed at start: wait for that first read, so the
        # counts a test asserts are its own.
        async with asyncio.timeout(10):
            while {site for site, _ in self.steering.fill.reads} != {"paris", "frankfurt"}:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def steering(self) -> Any:
        assert self.runner is not None
        return self.runner.app[STEERING]

    def sample(self, name: str, **labels: str) -> float:
        v = self.steering.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v

    async def heartbeat(self, client, edge: str, capacity: int, **extra: Any) -> int:
        self.sent_at += 0.001  # strictly newer than the last one, as a real edge's clock
        hb = {"edge_id": edge, "state": "ok", "load": 0.1, "sent_at": self.sent_at}
        async with client.post(
            self.url + "/heartbeat", json={**hb, "disk_capacity": capacity, **extra}, headers=AUTH
        ) as r:
            return r.status

    async def refresh(self, client) -> dict[str, Any]:
        async with client.post(self.url + "/fill/refresh", headers=AUTH) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def manifest(self, client, edge: str, **kw: Any) -> tuple[int, Any]:
        async with client.get(
            self.url + f"/fill/manifest/{edge}", headers=kw.pop("headers", AUTH), **kw
        ) as r:
            doc = await r.json() if r.status == 200 else await r.text()
            return r.status, (doc, r.headers)


@pytest.fixture
async def control() -> AsyncIterator[FakeControl]:
    c = FakeControl()
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def service(tmp_path, control) -> AsyncIterator[Service]:
    s = Service(tmp_path, control)
    await s.start()
    yield s
    await s.stop()


async def filled(service: Service, client) -> None:
    """Heartbeats with capacities, then one refresh: every edge has a manifest."""
    for edge in ("par1", "par2"):
        assert await service.heartbeat(client, edge, 30_000) == 200
    assert await service.heartbeat(client, "fra1", 20_000) == 200
    doc = await service.refresh(client)
    assert {s: d["result"] for s, d in doc["sites"].items()} == {"paris": "ok", "frankfurt": "ok"}


async def test_auth_unknown_edge_and_503_before_any_feed(service, client):
    status, (_, headers) = await service.manifest(client, "par1", headers={})
    assert status == 401
    status, _ = await service.manifest(client, "par1", headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, _ = await service.manifest(client, "nope")
    assert status == 404
    # The feed was read at start, but par1 has sent no heartbeat: its capacity is unknown.
    status, (text, headers) = await service.manifest(client, "par1")
    assert status == 503 and int(headers["Retry-After"]) > 0, text
    async with client.post(service.url + "/fill/refresh") as r:
        assert r.status == 401


async def test_503_with_retry_after_when_no_feed_has_been_read(tmp_path, client, control):
    control.status = 500
    s = Service(tmp_path, control)
    await s.start()
    try:
        # par3 has a configured fill_capacity: only the missing feed stops its manifest.
        status, (text, headers) = await s.manifest(client, "par3")
        assert status == 503 and "feed" in text and int(headers["Retry-After"]) > 0
        doc = await s.refresh(client)
        assert doc["sites"]["paris"]["result"] == "http_error"
        assert (await s.manifest(client, "par3"))[0] == 503
    finally:
        await s.stop()


async def test_manifests_follow_the_contract(service, client, control):
    await filled(service, client)
    assert control.requests >= 2 and control.unauthorized == 0
    ring = Ring(Member(e, w) for e, w in (("par1", 1.0), ("par2", 1.0), ("par3", 2.0)))
    docs = {}
    for edge, capacity in (("par1", 30_000), ("par2", 30_000), ("par3", 40_000)):
        status, (doc, headers) = await service.manifest(client, edge)
        assert status == 200, doc
        assert headers["Content-Type"].startswith("application/json")
        assert headers["ETag"] == f'"{doc["version"]}"'
        docs[edge] = doc
        assert (doc["edge"], doc["site"]) == (edge, "paris")
        assert doc["capacity"] == math.floor(0.8 * capacity)
        assert doc["bytes"] == sum(o["size"] for o in doc["objects"]) <= doc["capacity"]
        assert doc["objects"], "capacity for some objects"
        assert doc["version"] == manifest_version((o["path"], o["xxh64"]) for o in doc["objects"])
        assert {p["edge"] for p in doc["peers"]} == {"par1", "par2", "par3"} - {edge}
        assert all(p["url"].startswith("http://127.0.0.1") for p in doc["peers"])
        order = [(-o["score"], o["path"]) for o in doc["objects"]]
        assert order == sorted(order)
        for o in doc["objects"]:
            assert set(o) == {"key", "path", "size", "xxh64", "score", "holders"}
            assert edge in o["holders"]
            rank = ring.rank(o["key"])
            assert o["holders"] == sorted(o["holders"], key=rank.index)
    # The hottest title (2 copies: max_copies) sits on its two first-ranked edges.
    top = next(o for o in control.docs["paris"]["objects"])
    holders = next(
        o["holders"] for d in docs.values() for o in d["objects"] if o["path"] == top["path"]
    )
    assert holders == ring.rank(top["key"])[:2]
    # Every object's holders agree across the manifests that list it.
    listed: dict[str, set[str]] = {}
    for edge, d in docs.items():
        for o in d["objects"]:
            listed.setdefault(o["path"], set()).add(edge)
            assert set(o["holders"]) == listed[o["path"]] | set(o["holders"])
    for d in docs.values():
        for o in d["objects"]:
            assert set(o["holders"]) == listed[o["path"]]
    # Identical refreshes: identical versions; If-None-Match gives 304.
    await service.refresh(client)
    for edge, doc in docs.items():
        status, (again, _) = await service.manifest(client, edge)
        assert again["version"] == doc["version"] and again["generated_at"] == doc["generated_at"]
        etag = f'"{doc["version"]}"'
        status, _ = await service.manifest(client, edge, headers={**AUTH, "If-None-Match": etag})
        assert status == 304
    # One read at start, one per refresh.
    assert service.sample("steering_fill_feed_reads_total", site="paris", result="ok") == 3
    assert service.sample("steering_fill_manifests_served_total") == 9  # 3 + 3 + 3 x 304
    assert service.sample("steering_fill_manifest_bytes", edge="par1") == docs["par1"]["bytes"]
    assert service.sample("steering_fill_manifest_objects", edge="par3") == len(
        docs["par3"]["objects"]
    )
    registry = service.steering.registry
    assert registry.get_sample_value("steering_fill_churn_bytes", {"edge": "par1"}) is not None


async def test_a_heartbeat_with_capacity_rebuilds_the_site(service, client):
    await service.refresh(client)
    assert (await service.manifest(client, "par3"))[0] == 200  # configured capacity
    assert (await service.manifest(client, "par1"))[0] == 503
    assert await service.heartbeat(client, "par1", 30_000) == 200
    async with asyncio.timeout(5):  # rebuilt by the background task, not the handler
        while (await service.manifest(client, "par1"))[0] != 200:
            await asyncio.sleep(0.02)


async def test_a_feed_outage_keeps_the_last_manifests_and_logs_once(
    service, client, control, caplog
):
    await filled(service, client)
    _, (before, _) = await service.manifest(client, "par1")
    await control.stop()
    with caplog.at_level(logging.WARNING, logger="steering.fill"):
        for _ in range(3):
            doc = await service.refresh(client)
            assert doc["sites"]["paris"]["result"] == "unreachable"
    failures = [r for r in caplog.records if "event=fill_feed_failed" in r.getMessage()]
    assert len(failures) == 2, failures  # once per site, not once per read
    status, (after, _) = await service.manifest(client, "par1")
    assert status == 200 and after == before
    assert service.sample("steering_fill_feed_reads_total", site="paris", result="unreachable") == 3
    await control.start()  # same port
    with caplog.at_level(logging.INFO, logger="steering.fill"):
        assert (await service.refresh(client))["sites"]["paris"]["result"] == "ok"
    assert any("event=fill_feed_recovered site=paris" in r.getMessage() for r in caplog.records)


def _malformed() -> list[tuple[str, bytes]]:
    good = feed_objects("paris")
    wrong = [{**o, "score": "high"} for o in good]

    def doc(objects: Any) -> bytes:
        return json.dumps({"region": "paris", "fallback": False, "objects": objects}).encode()

    return [
        ("bad json", b'{"region": "paris", "objects": [}'),
        ("wrong types", doc({"a": 1})),
        ("every score of a wrong type", doc(wrong)),
        ("NaN", b'{"region": "paris", "objects": [], "computed_at": NaN}'),
    ]


@pytest.mark.parametrize(("what", "body"), _malformed(), ids=[m[0] for m in _malformed()])
async def test_a_malformed_feed_is_refused_and_the_good_one_kept(
    service, client, control, caplog, what, body
):
    await filled(service, client)
    _, (before, _) = await service.manifest(client, "par2")
    control.body = body
    with caplog.at_level(logging.WARNING, logger="steering.fill"):
        doc = await service.refresh(client)
    assert doc["sites"]["paris"]["result"] == "malformed", what
    assert any(
        "event=fill_feed_failed site=paris result=malformed" in r.getMessage()
        for r in caplog.records
    )
    assert (await service.manifest(client, "par2"))[1][0] == before
    assert service.sample("steering_fill_feed_reads_total", site="paris", result="malformed") == 1


async def test_a_changed_feed_rebuilds_with_churn(service, client, control):
    await filled(service, client)
    _, (before, _) = await service.manifest(client, "par1")
    objects = control.docs["paris"]["objects"]
    for o in objects:  # turn the popularity upside down: the tail is now the head
        o["score"] = round(1000.0 / o["score"], 3)
    objects.sort(key=lambda o: (-o["score"], o["path"]))
    await service.refresh(client)
    _, (after, _) = await service.manifest(client, "par1")
    assert after["version"] != before["version"]
    old = {o["path"]: o["size"] for o in before["objects"]}
    new = {o["path"]: o["size"] for o in after["objects"]}
    churn = sum(v for p, v in new.items() if p not in old) + sum(
        v for p, v in old.items() if p not in new
    )
    assert churn > 0
    assert service.sample("steering_fill_churn_bytes", edge="par1") == churn


async def test_heartbeat_fill_progress_shows_in_fleet_and_metrics(service, client):
    progress = {**PROGRESS, "bytes_total": 5000, "bytes_done": 1234}
    assert await service.heartbeat(client, "par1", 30_000, fill=progress) == 200
    async with client.get(service.url + "/fleet") as r:
        edges = {e["edge"]: e for e in (await r.json())["edges"]}
    assert edges["par1"]["fill"] == progress and edges["par2"]["fill"] is None
    assert service.sample("steering_edge_fill_bytes_done", edge="par1") == 1234
    assert service.sample("steering_edge_fill_bytes_total", edge="par1") == 5000
    await service.refresh(client)
    async with client.get(service.url + "/fleet") as r:
        edges = {e["edge"]: e for e in (await r.json())["edges"]}
    _, (doc, _) = await service.manifest(client, "par1")
    assert edges["par1"]["fill_manifest"]["version"] == doc["version"]
    async with client.get(service.url + "/metrics") as r:
        text = await r.text()
    for name in (
        "steering_fill_feed_reads_total",
        "steering_fill_manifests_served_total",
        "steering_fill_manifest_objects",
        "steering_fill_manifest_bytes",
        "steering_fill_churn_bytes",
        'steering_edge_fill_bytes_done{edge="par1"} 1234.0',
        'steering_edge_fill_bytes_total{edge="par1"} 5000.0',
    ):
        assert name in text


@pytest.mark.parametrize(
    "fill",
    [{**PROGRESS, "state": "bogus"}, {**PROGRESS, "bytes_done": -1}, "filling", [1]],
)
async def test_an_invalid_fill_object_is_logged_once_and_the_heartbeat_accepted(
    service, client, fill, caplog
):
    # Version skew between an edge and steering: the fill report is only a report, so the
    # edge must not look dead (and leave routing) over it.
    assert await service.heartbeat(client, "par1", 30_000, fill=PROGRESS) == 200
    assert service.steering.fill.progress["par1"].bytes_done == 300
    with caplog.at_level(logging.INFO, logger="steering"):
        for _ in range(3):
            assert await service.heartbeat(client, "par1", 30_000, fill=fill) == 200
        invalid = [r for r in caplog.records if "event=heartbeat_fill_invalid" in r.getMessage()]
        assert len(invalid) == 1 and "edge=par1" in invalid[0].getMessage(), invalid
        assert "par1" not in service.steering.fill.progress  # unknown, not the old report
        assert service.steering.fleet.usable("par1")
        assert service.steering.fill.capacity("par1") == 30_000  # the rest of it is used
        assert await service.heartbeat(client, "par1", 30_000, fill=PROGRESS) == 200
        assert await service.heartbeat(client, "par1", 30_000, fill=fill) == 200
    assert service.steering.fill.progress.get("par1") is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=heartbeat_fill_valid edge=par1" in m for m in messages) == 1
    assert sum("event=heartbeat_fill_invalid" in m for m in messages) == 2  # per transition


async def test_a_restart_serves_the_persisted_manifests_at_once(tmp_path, client, control):
    s = Service(tmp_path, control)
    await s.start()
    try:
        await filled(s, client)
        _, (before, _) = await s.manifest(client, "par1")
    finally:
        await s.stop()
    await control.stop()  # no feed after the restart
    s2 = Service(tmp_path, control)
    await s2.start()
    try:
        status, (after, _) = await s2.manifest(client, "par1")
        assert status == 200 and after == before
        assert s2.steering.fill.capacity("par1") == 30_000  # kept until its next heartbeat
    finally:
        await s2.stop()
    # With the feed back, the first read after a restart changes nothing: same inputs (the
    # persisted capacities included), same manifests, not even a new generated_at.
    await control.start()
    s3 = Service(tmp_path, control)
    await s3.start()
    try:
        status, (after, _) = await s3.manifest(client, "par1")
        assert status == 200 and after == before
        assert s3.sample("steering_fill_feed_reads_total", site="paris", result="ok") == 1
    finally:
        await s3.stop()
    await control.stop()
    # A corrupt state file is logged and ignored: nothing to serve, no crash.
    (tmp_path / "fill-state.json").write_text("{not json")
    s4 = Service(tmp_path, control)
    await s4.start()
    try:
        assert (await s4.manifest(client, "par1"))[0] == 503
    finally:
        await s4.stop()


async def test_fill_routes_are_404_when_fill_is_disabled(tmp_path, client):
    (tmp_path / "hb.tokens").write_text(HB_TOKEN + "\n")
    (tmp_path / "s.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        "sites: [{name: paris, latitude: 48.85, longitude: 2.35}]\n"
        "edges: [{id: par1, site: paris, url: 'http://127.0.0.11:9'}]\n"
        f"heartbeat_credentials_file: {tmp_path / 'hb.tokens'}\n"
    )
    runner = web.AppRunner(create_app(load_config(tmp_path / "s.yaml")), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with client.get(url + "/fill/manifest/par1", headers=AUTH) as r:
            assert r.status == 404
        async with client.post(url + "/fill/refresh", headers=AUTH) as r:
            assert r.status == 404
    finally:
        await runner.cleanup()


async def test_a_feed_with_a_few_bad_objects_is_used_without_them(service, client, control, caplog):
    objects = control.docs["paris"]["objects"]
    hidden = {**objects[0], "path": f"/v/{objects[0]['key']}/1080p/.seg.m4s"}
    dotdot = {**objects[1], "path": f"/v/{objects[1]['key']}/1080p/movie..final.mp4"}
    objects[2:2] = [hidden, dotdot]  # among the hottest: they would be placed first
    with caplog.at_level(logging.INFO, logger="steering.fill"):
        await filled(service, client)
        doc = await service.refresh(client)
    assert doc["sites"]["paris"] == {
        "result": "ok",
        "detail": None,
        "objects": len(objects) - 2,
        "skipped": 2,
        "rebuilt": False,
    }
    listed = set()
    for edge in ("par1", "par2", "par3"):
        status, (m, _) = await service.manifest(client, edge)
        assert status == 200
        listed |= {o["path"] for o in m["objects"]}
    assert listed and hidden["path"] not in listed and dotdot["path"] not in listed
    # Two reads with the two bad objects (filled, refresh; the first read at start had none):
    # counted at each one, logged once.
    assert service.sample("steering_fill_feed_skipped_objects_total", site="paris") == 4
    assert service.sample("steering_fill_feed_reads_total", site="paris", result="ok") == 3
    skipped = [r for r in caplog.records if "event=fill_feed_objects_skipped" in r.getMessage()]
    assert len(skipped) == 1, skipped
    assert "site=paris skipped=2" in skipped[0].getMessage()
    assert ".seg.m4s" in skipped[0].getMessage()  # names the first one


async def test_the_feed_limit_is_sent_and_an_answer_beyond_it_refused(tmp_path, client, control):
    s = Service(tmp_path, control)
    await s.start()
    try:
        # The default: the control plane's own default limit (20000) is far too small.
        assert control.limits and set(control.limits) == {"100000"}
    finally:
        await s.stop()
    control.limits.clear()
    s = Service(tmp_path, control)
    s.fill_extra = "  feed_limit: 59\n"  # paris has 60 objects, frankfurt 50
    del control.docs["frankfurt"]["objects"][50:]
    await s.start()
    try:
        assert set(control.limits) == {"59"}
        doc = await s.refresh(client)
        assert doc["sites"]["paris"]["result"] == "malformed"
        assert "more than the 59 asked for" in doc["sites"]["paris"]["detail"]
        assert doc["sites"]["frankfurt"]["result"] == "ok"
    finally:
        await s.stop()


async def test_a_credential_file_that_is_not_utf8_is_a_credential_error(
    service, client, control, caplog
):
    (service.tmp / "feed.token").write_bytes(b"\xff\xfe secret \xc3\n")
    with caplog.at_level(logging.WARNING, logger="steering.fill"):
        doc = await service.refresh(client)  # was a 500 (UnicodeDecodeError)
    assert {d["result"] for d in doc["sites"].values()} == {"credential"}
    assert "not UTF-8" in doc["sites"]["paris"]["detail"]
    assert "secret" not in doc["sites"]["paris"]["detail"]
    assert service.sample("steering_fill_feed_reads_total", site="paris", result="credential") == 1
    assert any(
        "event=fill_feed_failed site=paris result=credential" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    "state",
    [
        {"format": 1, "capacities": [1, 2], "sites": {}, "manifests": {}},
        {"format": 1, "capacities": {}, "sites": ["paris"], "manifests": {}},
        {"format": 1, "capacities": {}, "sites": {}, "manifests": []},
        {"format": 1, "capacities": {}, "sites": {"paris": "x"}, "manifests": {}},
        {"format": 1, "capacities": {}, "sites": {}, "manifests": {"par1": {"site": "paris"}}},
        {"format": 1, "capacities": {"par1": "big"}, "sites": {}, "manifests": {}},
        {"format": 1, "capacities": {}, "sites": {}},
        [1],
    ],
)
async def test_a_state_file_of_the_wrong_shape_is_logged_and_ignored(
    tmp_path, client, control, caplog, state
):
    await control.stop()  # no feed: only the state file could give a manifest
    (tmp_path / "fill-state.json").write_text(json.dumps(state))
    s = Service(tmp_path, control)
    with caplog.at_level(logging.ERROR, logger="steering.fill"):
        await s.start()  # was an AttributeError out of create_app
    try:
        assert (await s.manifest(client, "par3"))[0] == 503
        assert any("event=fill_state_unreadable" in r.getMessage() for r in caplog.records)
    finally:
        await s.stop()


async def test_a_state_file_with_an_infinite_capacity_is_ignored(tmp_path, client, control):
    await control.stop()
    (tmp_path / "fill-state.json").write_text(
        '{"format": 1, "capacities": {"par1": 1e999}, "sites": {}, "manifests": {}}'
    )
    s = Service(tmp_path, control)
    await s.start()  # was an OverflowError (int(inf)) out of create_app
    try:
        assert s.steering.fill.capacity("par1") is None
    finally:
        await s.stop()


async def test_a_feed_of_many_chunks_is_read_whole_and_one_over_the_cap_refused(
    service, client, control
):
    # ~5 MB of JSON: many reads of the socket (one read answered only the first ~128 KiB,
    # and every real feed was "malformed").
    control.docs["paris"]["objects"] = feed_objects("paris", titles=200, files=200)
    doc = await service.refresh(client)
    assert doc["sites"]["paris"]["result"] == "ok", doc
    assert doc["sites"]["paris"]["objects"] == 40_000
    # The cap follows fill.feed_limit (1 MiB + 640 bytes an object): valid JSON padded
    # beyond it is refused before it is parsed.
    cap = 1024 * 1024 + 100_000 * 640
    control.body = json.dumps(control.docs["paris"]).encode() + b" " * cap
    doc = await service.refresh(client)
    assert doc["sites"]["paris"]["result"] == "malformed"
    assert doc["sites"]["paris"]["detail"] == f"more than {cap} bytes"


async def test_a_heartbeat_credential_file_that_is_not_utf8_keeps_the_last_tokens(
    service, client, caplog
):
    assert await service.heartbeat(client, "par1", 30_000) == 200
    hb = service.tmp / "hb.tokens"
    hb.write_bytes(b"\xff" + HB_TOKEN.encode() + b"\n")
    os.utime(hb, ns=(time.time_ns(), time.time_ns() + 10**9))  # surely a new mtime
    with caplog.at_level(logging.ERROR, logger="steering"):
        for _ in range(2):
            assert await service.heartbeat(client, "par1", 30_000) == 200  # was a 500
    unreadable = [r for r in caplog.records if "heartbeat_credentials_unreadable" in r.message]
    assert len(unreadable) == 1 and "not UTF-8" in unreadable[0].getMessage()
