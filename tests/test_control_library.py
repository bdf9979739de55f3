"""Personal state over HTTP: resume sync across devices, history, My List, ratings, isolation
between accounts and input validation (both backends)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import pytest

from tests.control_support import RunningControl, User

DAY = 86400.0


@dataclass(frozen=True)
class T:
    """A title to seed: a movie, or a series with ``episodes`` (ids, in viewing order)."""

    id: str
    maturity: int = 0
    genres: tuple[str, ...] = ("drama",)
    episodes: tuple[str, ...] = ()
    age_days: float = 100.0  # released this long before the test clock
    duration: float = 6000.0

    @property
    def kind(self) -> str:
        return "series" if self.episodes else "movie"

    @property
    def name(self) -> str:
        return self.id.replace("-", " ").title()


CATALOG = (
    T("movie-a", genres=("drama",)),
    T("movie-b", genres=("drama", "comedy")),
    T("movie-c", genres=("comedy",), age_days=5),
    T("series-s", genres=("drama",), episodes=("s-e1", "s-e2", "s-e3")),
    T("mature-m", maturity=16, genres=("thriller",)),
)


async def seed(
    rc: RunningControl, titles: tuple[T, ...] = CATALOG, admin: User | None = None
) -> dict[str, str]:
    """Titles through the catalog's admin API, each released ``age_days`` before the clock
    (which is turned back while it is made); the server-made episode ids by seed name."""
    admin = admin or await rc.admin()
    start = rc.clock.now
    episodes: dict[str, str] = {}
    try:
        for t in sorted(titles, key=lambda t: -t.age_days):
            rc.clock.now = start - t.age_days * DAY
            body: dict[str, Any] = {
                "id": t.id,
                "kind": t.kind,
                "name": t.name,
                "year": 2020,
                "maturity": t.maturity,
                "genres": list(t.genres),
            }
            if not t.episodes:
                body.update(duration=t.duration, media_key=f"key-{t.id}")
            r = await rc.api.post("/v1/admin/titles", json=body, token=admin.token)
            assert r.status == 201, r
            for i, e in enumerate(t.episodes):
                ep = {"season": 1 + i // 2, "number": 1 + i % 2, "name": f"Episode {i + 1}"}
                ep.update(duration=1000.0, media_key=f"key-{e}")
                r = await rc.api.post(
                    f"/v1/admin/titles/{t.id}/episodes", json=ep, token=admin.token
                )
                assert r.status == 201, r
                episodes[e] = r.body["id"]
    finally:
        rc.clock.now = start
    return episodes


async def kids_profile(rc: RunningControl, user: User, name: str = "Kid") -> str:
    r = await rc.api.post("/v1/profiles", json={"name": name, "kids": True}, token=user.token)
    assert r.status == 201, r
    return str(r.body["id"])


async def put_resume(
    rc: RunningControl, user: User, title: str, position: float, client_at: float, **kw: Any
) -> Any:
    pid = kw.pop("profile", user.profile_id)
    token = kw.pop("token", user.token)
    body = {"position": position, "client_at": client_at, **kw}
    return await rc.api.put(f"/v1/profiles/{pid}/resume/{title}", json=body, token=token)


async def started(start_control: Any) -> tuple[RunningControl, User, dict[str, str]]:
    rc = await start_control()
    episodes = await seed(rc)
    return rc, await rc.signup(), episodes


def ids(page: dict[str, Any]) -> list[str]:
    return [item["title"]["id"] for item in page["items"]]


# -- resume --------------------------------------------------------------------------------


async def test_resume_syncs_across_devices_latest_client_time_wins(start_control: Any) -> None:
    rc, phone, _ = await started(start_control)
    r = await rc.api.post("/v1/sessions", json={"email": phone.email, "password": phone.password})
    assert r.status == 201, r
    tv = User(phone.email, phone.password, r.body["token"], phone.account_id, phone.profile_id)
    t0 = rc.clock.now

    r = await put_resume(rc, phone, "movie-a", 100, t0 - 10, duration=6000)
    assert r.status == 200, r
    assert r.body["applied"] is True
    assert r.body["position"] == 100 and r.body["episode_id"] is None

    # The TV saw an older position, but its write arrives later: ignored, current state back.
    r = await put_resume(rc, tv, "movie-a", 50, t0 - 20, duration=6000)
    assert r.status == 200, r
    assert r.body["applied"] is False
    assert r.body["position"] == 100 and r.body["client_at"] == t0 - 10

    # A newer write wins even if it rewinds.
    r = await put_resume(rc, tv, "movie-a", 30, t0 - 5, duration=6000)
    assert r.body["applied"] is True and r.body["position"] == 30

    # Equal client_at: the larger position wins whatever the arrival order.
    r = await put_resume(rc, phone, "movie-a", 20, t0 - 5, duration=6000)
    assert r.body["applied"] is False and r.body["position"] == 30
    r = await put_resume(rc, phone, "movie-a", 40, t0 - 5, duration=6000)
    assert r.body["applied"] is True and r.body["position"] == 40

    r = await rc.api.get(f"/v1/profiles/{phone.profile_id}/resume/movie-a", token=phone.token)
    assert r.status == 200, r
    assert r.body["kind"] == "movie"
    assert r.body["next"] == {"episode_id": None, "position": 40}
    assert [p["position"] for p in r.body["positions"]] == [40]
    assert await rc.control.library.resume_position(phone.profile_id, "movie-a", None) == 40

    # A client clock far ahead would pin the position forever: refused.
    r = await put_resume(rc, tv, "movie-a", 10, t0 + 301)
    assert r.status == 400, r
    assert "client_at" in r.body["error"]["details"]["fields"]
    r = await put_resume(rc, tv, "movie-a", 10, t0 + 299)
    assert r.status == 200 and r.body["applied"] is True

    # Finished at 95 % of the duration: resumes from the start.
    r = await put_resume(rc, phone, "movie-a", 5800, t0 + 299.5, duration=6000)
    assert r.body["finished"] is True
    r = await rc.api.get(f"/v1/profiles/{phone.profile_id}/resume/movie-a", token=phone.token)
    assert r.body["next"] == {"episode_id": None, "position": 0}
    # A position past the duration is clamped to it.
    r = await put_resume(rc, phone, "movie-a", 7000, t0 + 299.6, duration=6000)
    assert r.body["position"] == 6000 and r.body["finished"] is True


async def test_concurrent_writes_keep_the_latest_client_time(start_control: Any) -> None:
    rc, u, _ = await started(start_control)
    t0 = rc.clock.now - 1000
    stamps = list(range(40))
    random.Random(7).shuffle(stamps)
    await asyncio.gather(
        *(put_resume(rc, u, "movie-a", 10 * s + 1, t0 + s, duration=6000) for s in stamps)
    )
    r = await rc.api.get(f"/v1/profiles/{u.profile_id}/resume/movie-a", token=u.token)
    assert r.body["positions"][0]["position"] == 391
    assert r.body["positions"][0]["client_at"] == t0 + 39

    # The store API playback uses: an explicit finished flag, and no duration.
    library = rc.control.library
    assert await library.record_position(u.profile_id, "movie-b", None, 5, None, t0, True)
    assert await library.resume_position(u.profile_id, "movie-b", None) == 0
    assert await library.record_position(u.profile_id, "movie-b", "", 7, None, t0 + 1)
    assert await library.resume_position(u.profile_id, "movie-b", None) == 7
    assert not await library.record_position(u.profile_id, "movie-b", None, 9, None, t0)
    assert await library.resume_position(u.profile_id, "nope", None) == 0


async def test_resume_next_episode_of_a_series(start_control: Any) -> None:
    rc, u, eps = await started(start_control)
    url = f"/v1/profiles/{u.profile_id}/resume/series-s"
    t0 = rc.clock.now - 1000

    r = await rc.api.get(url, token=u.token)
    assert r.status == 200, r
    assert r.body == {
        "title_id": "series-s",
        "kind": "series",
        "positions": [],
        "next": {"episode_id": eps["s-e1"], "position": 0},
    }

    await put_resume(rc, u, "series-s", 300, t0, episode_id=eps["s-e1"], duration=1000)
    r = await rc.api.get(url, token=u.token)
    assert r.body["next"] == {"episode_id": eps["s-e1"], "position": 300}

    # e2 partly watched on another occasion, then e1 finished: next is e2 at its position.
    await put_resume(rc, u, "series-s", 120, t0 + 1, episode_id=eps["s-e2"], duration=1000)
    await put_resume(rc, u, "series-s", 990, t0 + 2, episode_id=eps["s-e1"], duration=1000)
    r = await rc.api.get(url, token=u.token)
    assert r.body["next"] == {"episode_id": eps["s-e2"], "position": 120}
    assert [p["episode_id"] for p in r.body["positions"]] == [eps["s-e1"], eps["s-e2"]]

    # e2 finished: e3 (next season) from 0; e3 finished: the series is done.
    await put_resume(rc, u, "series-s", 1000, t0 + 3, episode_id=eps["s-e2"], duration=1000)
    r = await rc.api.get(url, token=u.token)
    assert r.body["next"] == {"episode_id": eps["s-e3"], "position": 0}
    await put_resume(rc, u, "series-s", 1000, t0 + 4, episode_id=eps["s-e3"], duration=1000)
    r = await rc.api.get(url, token=u.token)
    assert r.body["next"] is None

    # A series needs one of its episodes; a movie has none.
    r = await put_resume(rc, u, "series-s", 1, t0)
    assert r.status == 400 and "episode_id" in r.body["error"]["details"]["fields"], r
    r = await put_resume(rc, u, "series-s", 1, t0, episode_id="nope")
    assert r.status == 404, r
    r = await put_resume(rc, u, "movie-a", 1, t0, episode_id=eps["s-e1"])
    assert r.status == 404, r


async def test_resume_of_a_title_the_profile_may_not_see_is_404(start_control: Any) -> None:
    rc, u, _ = await started(start_control)
    kid = await kids_profile(rc, u)
    t0 = rc.clock.now
    for title in ("mature-m", "no-such-title"):
        r = await put_resume(rc, u, title, 1, t0, profile=kid)
        assert r.status == 404, (title, r)
        r = await rc.api.get(f"/v1/profiles/{kid}/resume/{title}", token=u.token)
        assert r.status == 404, (title, r)
    r = await put_resume(rc, u, "mature-m", 1, t0)  # the adult profile may
    assert r.status == 200, r


# -- history -------------------------------------------------------------------------------


async def test_history_most_recent_first_paginated_and_deletable(start_control: Any) -> None:
    rc, u, eps = await started(start_control)
    t0 = rc.clock.now - 100
    await put_resume(rc, u, "movie-a", 10, t0 + 1)
    await put_resume(rc, u, "series-s", 20, t0 + 2, episode_id=eps["s-e1"], duration=1000)
    await put_resume(rc, u, "movie-b", 30, t0 + 3, duration=6000)
    await put_resume(rc, u, "mature-m", 40, t0 + 4)
    await put_resume(rc, u, "series-s", 50, t0 + 5, episode_id=eps["s-e2"], duration=1000)
    url = f"/v1/profiles/{u.profile_id}/history"

    r = await rc.api.get(url, token=u.token)
    assert r.status == 200, r
    assert ids(r.body) == ["series-s", "mature-m", "movie-b", "movie-a"]
    assert r.body["total"] == 4
    first = r.body["items"][0]
    assert first["episode_id"] == eps["s-e2"] and first["position"] == 50
    assert first["duration"] == 1000 and first["finished"] is False
    assert first["title"]["name"] == "Series S" and first["client_at"] == t0 + 5
    assert r.body["items"][3]["duration"] is None

    r = await rc.api.get(url, params={"offset": 1, "limit": 2}, token=u.token)
    assert ids(r.body) == ["mature-m", "movie-b"]
    assert (r.body["total"], r.body["offset"], r.body["limit"]) == (4, 1, 2)
    r = await rc.api.get(url, params={"offset": 10}, token=u.token)
    assert r.body["items"] == [] and r.body["total"] == 4

    # A lowered maturity limit hides the mature title (its position is kept).
    r = await rc.api.patch(
        f"/v1/profiles/{u.profile_id}", json={"maturity_limit": 12}, token=u.token
    )
    assert r.status == 200, r
    r = await rc.api.get(url, token=u.token)
    assert ids(r.body) == ["series-s", "movie-b", "movie-a"]

    # So does unpublishing a title.
    admin = await rc.admin()
    r = await rc.api.put("/v1/admin/titles/movie-a", json={"published": False}, token=admin.token)
    assert r.status == 200, r
    r = await rc.api.get(url, token=u.token)
    assert ids(r.body) == ["series-s", "movie-b"]
    r = await rc.api.put("/v1/admin/titles/movie-a", json={"published": True}, token=admin.token)
    assert r.status == 200, r

    for _ in range(2):  # idempotent
        r = await rc.api.delete(f"{url}/series-s", token=u.token)
        assert r.status == 204, r
    r = await rc.api.get(url, token=u.token)
    assert ids(r.body) == ["movie-b", "movie-a"]
    r = await rc.api.get(f"/v1/profiles/{u.profile_id}/resume/series-s", token=u.token)
    assert r.body["positions"] == [] and r.body["next"]["episode_id"] == eps["s-e1"]


# -- My List -------------------------------------------------------------------------------


async def test_my_list_is_idempotent_ordered_and_capped(
    start_control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, u, _ = await started(start_control)
    url = f"/v1/profiles/{u.profile_id}/list"
    for title in ("movie-a", "movie-b", "movie-a"):
        r = await rc.api.put(f"{url}/{title}", token=u.token)
        assert r.status == 204, r
        assert r.body == ""
        rc.clock.advance(1)
    r = await rc.api.get(url, token=u.token)
    assert r.status == 200, r
    # Re-adding keeps the original place.
    assert ids(r.body) == ["movie-b", "movie-a"] and r.body["total"] == 2
    assert r.body["items"][1]["added_at"] == rc.clock.now - 3
    r = await rc.api.get(url, params={"limit": 1, "offset": 1}, token=u.token)
    assert ids(r.body) == ["movie-a"]

    for title in ("no-such-title", "x" * 64):
        r = await rc.api.put(f"{url}/{title}", token=u.token)
        assert r.status == 404, (title, r)
    kid = await kids_profile(rc, u)
    r = await rc.api.put(f"/v1/profiles/{kid}/list/mature-m", token=u.token)
    assert r.status == 404, r

    for _ in range(2):
        r = await rc.api.delete(f"{url}/movie-b", token=u.token)
        assert r.status == 204, r
    r = await rc.api.get(url, token=u.token)
    assert ids(r.body) == ["movie-a"]

    # The cap; a title gone from the catalog does not count against it.
    from control import library

    monkeypatch.setattr(library, "MAX_LIST", 2)
    await rc.control.db.execute(
        "INSERT INTO my_list (profile_id, title_id, added_at) VALUES (?, 'gone', 1)",
        (u.profile_id,),
    )
    r = await rc.api.put(f"{url}/movie-c", token=u.token)
    assert r.status == 204, r
    r = await rc.api.put(f"{url}/series-s", token=u.token)
    assert r.status == 409, r
    assert r.body["error"]["code"] == "list_full"
    r = await rc.api.put(f"{url}/movie-c", token=u.token)  # already listed: still fine
    assert r.status == 204, r


# -- ratings -------------------------------------------------------------------------------


async def test_ratings(start_control: Any) -> None:
    rc, u, _ = await started(start_control)
    url = f"/v1/profiles/{u.profile_id}/ratings"
    for title, rating in (("movie-a", 1), ("movie-b", -1), ("movie-a", -1), ("movie-c", 1)):
        r = await rc.api.put(f"{url}/{title}", json={"rating": rating}, token=u.token)
        assert r.status == 204, r
        rc.clock.advance(1)
    r = await rc.api.get(url, token=u.token)
    assert r.status == 200, r
    assert [(i["title"]["id"], i["rating"]) for i in r.body["items"]] == [
        ("movie-c", 1),
        ("movie-a", -1),
        ("movie-b", -1),
    ]
    assert await rc.control.library.thumbs_down(u.profile_id) == {"movie-a", "movie-b"}
    for _ in range(2):
        r = await rc.api.delete(f"{url}/movie-a", token=u.token)
        assert r.status == 204, r
    r = await rc.api.get(url, params={"limit": 1}, token=u.token)
    assert ids(r.body) == ["movie-c"] and r.body["total"] == 2
    r = await rc.api.put(f"{url}/no-such-title", json={"rating": 1}, token=u.token)
    assert r.status == 404, r


# -- isolation and validation --------------------------------------------------------------


ROUTES = (
    ("GET", "/history", None),
    ("DELETE", "/history/movie-a", None),
    ("GET", "/resume/movie-a", None),
    ("PUT", "/resume/movie-a", {"position": 1, "client_at": 1}),
    ("GET", "/list", None),
    ("PUT", "/list/movie-a", None),
    ("DELETE", "/list/movie-a", None),
    ("GET", "/ratings", None),
    ("PUT", "/ratings/movie-a", {"rating": 1}),
    ("DELETE", "/ratings/movie-a", None),
    ("GET", "/home", None),
)


async def test_another_accounts_profile_is_404_everywhere(start_control: Any) -> None:
    rc, owner, _ = await started(start_control)
    other = await rc.signup()
    await put_resume(rc, owner, "movie-a", 10, rc.clock.now)
    for method, tail, body in ROUTES:
        url = f"/v1/profiles/{owner.profile_id}{tail}"
        r = await rc.api.call(method, url, json=body, token=other.token)
        assert r.status == 404, (method, tail, r)
        assert r.body["error"]["code"] == "not_found"
        r = await rc.api.call(method, url, json=body)
        assert r.status == 401, (method, tail, r)
        r = await rc.api.call(method, f"/v1/profiles/nope{tail}", json=body, token=owner.token)
        assert r.status == 404, (method, tail, r)
    # Nothing of the owner's changed.
    r = await rc.api.get(f"/v1/profiles/{owner.profile_id}/history", token=owner.token)
    assert ids(r.body) == ["movie-a"]


BAD_RESUME = [
    ({"position": -1, "client_at": 1}, "position"),
    ({"position": "NaN", "client_at": 1}, "position"),
    ({"position": "10", "client_at": 1}, "position"),
    ({"position": 1e300, "client_at": 1}, "position"),
    ({"position": 7 * DAY + 1, "client_at": 1}, "position"),
    ({"position": True, "client_at": 1}, "position"),
    ({"client_at": 1}, "position"),
    ({"position": 1}, "client_at"),
    ({"position": 1, "client_at": -5}, "client_at"),
    ({"position": 1, "client_at": "now"}, "client_at"),
    ({"position": 1, "client_at": 1, "duration": 0}, "duration"),
    ({"position": 1, "client_at": 1, "duration": -3}, "duration"),
    ({"position": 1, "client_at": 1, "episode_id": "a b"}, "episode_id"),
    ({"position": 1, "client_at": 1, "episode_id": "e" * 65}, "episode_id"),
    ({"position": 1, "client_at": 1, "episode_id": 7}, "episode_id"),
    ({"position": 1, "client_at": 1, "finished": True}, "finished"),
    ({"position": 1, "client_at": 1, "profile_id": "x"}, "profile_id"),
]
BAD_RATING = [
    ({"rating": 0}, "rating"),
    ({"rating": 2}, "rating"),
    ({"rating": -2}, "rating"),
    ({"rating": "1"}, "rating"),
    ({"rating": 0.5}, "rating"),
    ({"rating": None}, "rating"),
    ({}, "rating"),
    ({"rating": 1, "stars": 5}, "stars"),
]


async def test_bad_input_is_a_400_naming_the_field(start_control: Any) -> None:
    rc, u, _ = await started(start_control)
    base = f"/v1/profiles/{u.profile_id}"
    for body, field in BAD_RESUME:
        r = await rc.api.put(f"{base}/resume/movie-a", json=body, token=u.token)
        assert r.status == 400, (body, r)
        assert field in r.body["error"]["details"]["fields"], (body, r)
    for body, field in BAD_RATING:
        r = await rc.api.put(f"{base}/ratings/movie-a", json=body, token=u.token)
        assert r.status == 400, (body, r)
        assert field in r.body["error"]["details"]["fields"], (body, r)
    # Not JSON, not an object, wrong content type.
    for data, ctype, status in (
        (b"{", "application/json", 400),
        (b"[1]", "application/json", 400),
        (b'{"position": NaN, "client_at": 1}', "application/json", 400),
        (b"position=1", "application/x-www-form-urlencoded", 415),
    ):
        r = await rc.api.put(
            f"{base}/resume/movie-a", data=data, headers={"Content-Type": ctype}, token=u.token
        )
        assert r.status == status, (data, r)
    # Pagination and stray query parameters.
    for q in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}, {"sort": "asc"}):
        r = await rc.api.get(f"{base}/history", params=q, token=u.token)
        assert r.status == 400, (q, r)
    # Malformed title ids cannot exist: 404 on every route that takes one.
    for title in ("a b", "a'; DROP TABLE titles; --", "é", "x" * 65, "x" * 2000):
        for method, tail, body in ROUTES:
            if "movie-a" not in tail:
                continue
            url = base + tail.replace("movie-a", title)
            r = await rc.api.call(method, url, json=body, token=u.token)
            assert r.status == 404, (method, url[:80], r)
    # A 10k-character id: refused by the HTTP parser or by us, never a 500.
    r = await rc.api.put(f"{base}/list/{'x' * 10_000}", token=u.token)
    assert r.status in (400, 404, 414), r
    # Nothing was stored by any of it.
    r = await rc.api.get(f"{base}/history", token=u.token)
    assert r.body["total"] == 0
    r = await rc.api.get(f"{base}/ratings", token=u.token)
    assert r.body["total"] == 0


async def test_deleting_history_without_a_play_under_way_leaves_nothing_behind(
    start_control: Any,
) -> None:
    """With no play of the title under way nothing is remembered of a deletion, and resume
    writes (PUT, device clocks) are never held back by one: a later sync writes it again."""
    rc, u, _ = await started(start_control)
    url = f"/v1/profiles/{u.profile_id}/history"
    t0 = rc.clock.now
    assert (await put_resume(rc, u, "movie-a", 10, t0 - 60)).body["applied"] is True
    assert (await rc.api.delete(f"{url}/movie-a", token=u.token)).status == 204
    assert ids((await rc.api.get(url, token=u.token)).body) == []
    count = await rc.control.db.fetchone("SELECT COUNT(*) AS n FROM history_deletions")
    assert count["n"] == 0
    late = await put_resume(rc, u, "movie-a", 20, t0 - 30)
    assert late.body["applied"] is True and late.body["position"] == 20, late
    assert ids((await rc.api.get(url, token=u.token)).body) == ["movie-a"]
