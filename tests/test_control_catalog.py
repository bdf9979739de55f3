"""The catalog over real HTTP on both backends: admin CRUD and validation, series and
episodes, what a kids profile can and cannot see, search, pagination, two instances on one
database, and the in-memory load of a 10k-title catalogue."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from control.catalog import Media, NotPlayable, prettify, safe_relative_path, slugify
from control.errors import BadRequest, NotFound

from .control_support import RunningControl, User


async def create(rc: RunningControl, admin: User, **body: Any) -> dict[str, Any]:
    r = await rc.api.post("/v1/admin/titles", json=body, token=admin.token)
    assert r.status == 201, r
    return r.body  # type: ignore[no-any-return]


async def kids_profile(rc: RunningControl, user: User) -> str:
    r = await rc.api.post(
        "/v1/profiles",
        json={"name": "Kids", "maturity_limit": 7, "kids": True},
        token=user.token,
    )
    assert r.status == 201, r
    assert r.body["maturity_limit"] == 7
    return str(r.body["id"])


async def get(rc: RunningControl, user: User, path: str, pid: str, **params: Any) -> Any:
    r = await rc.api.get(path, token=user.token, params={"profile_id": pid, **params})
    assert r.status == 200, r
    return r.body


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


# -- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("Stranger Things", "stranger-things"),
        ("Amélie", "amelie"),
        ("  --Hello__World--  ", "hello-world"),
        ("Robert'); DROP TABLE titles;--", "robert-drop-table-titles"),
        ("東京物語", ""),
        ("x" * 80, "x" * 64),
    ],
)
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_prettify_and_safe_paths() -> None:
    assert prettify("the_big-heist") == "The Big Heist"
    assert prettify("t9") == "T9"
    assert safe_relative_path("poster.jpg") == "poster.jpg"
    assert safe_relative_path("art/poster.jpg") == "art/poster.jpg"
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "", "x y", "javascript:x", None, 3):
        assert safe_relative_path(bad) is None, bad


@pytest.mark.parametrize(
    "path",
    [
        ".hidden.m4s",  # a segment starting with '.'
        "720p/.init.mp4",
        "./a",
        "a/.",
        "movie..final.mp4",  # '..' inside a name: the edge's tokens refuse it
        "720p/seg..1.m4s",
        "a" * 256,  # a segment over 255 characters
        "720p/" + "b" * 256,
        "a/",
        "x" * 501,  # the whole over 500
    ],
)
def test_safe_relative_path_is_the_fleets_file_name_rule(path: str) -> None:
    # The same rule as steering's feed check (steering/fill.py): a file stored here that
    # steering refused could never be placed, and used to cost the whole feed.
    from steering.fill import parse_feed

    assert safe_relative_path(path) is None, path
    doc = {"region": "r", "objects": [{"key": "k", "path": f"/v/k/{path}", "size": 1,
                                       "xxh64": "0" * 16, "score": 1.0}]}  # fmt: skip
    with pytest.raises(ValueError):
        parse_feed(doc, "r", strict=True)


@pytest.mark.parametrize(
    "path", ["a" * 255, "720p/" + "b" * 255, "x.y~z-w_v.m4s", "_init.mp4", "~t/-x/a.b.c"]
)
def test_safe_relative_path_accepts_what_steering_accepts(path: str) -> None:
    from steering.fill import parse_feed

    assert safe_relative_path(path) == path
    doc = {"region": "r", "objects": [{"key": "k", "path": f"/v/k/{path}", "size": 1,
                                       "xxh64": "0" * 16, "score": 1.0}]}  # fmt: skip
    assert len(parse_feed(doc, "r", strict=True).objects) == 1


# -- admin CRUD ----------------------------------------------------------------------------


async def test_admin_crud_and_counters(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    body = {
        "kind": "movie",
        "name": "The Night Train",
        "synopsis": "A train, at night.",
        "year": 1999,
        "maturity": 12,
        "genres": ["Thriller", "Drama"],
        "cast": ["Ann Example", "Bo Example"],
        "artwork": {"poster": "poster.jpg", "backdrop": "https://img.example.com/b.jpg"},
        "duration": 5400,
        "media_key": "night_train",
    }
    t = await create(rc, admin, **body)
    assert t["id"] == "the-night-train"  # derived from the name
    assert t["source"] == "admin" and t["published"] is True
    assert t["released_at"] == rc.clock.now == t["updated_at"]
    assert t["episodes"] == [] and t["renditions"] == []
    for k, v in body.items():
        assert t[k] == v, k
    assert rc.counter("control_catalog_changes", "admin", "create") == 1
    version = rc.control.metrics.gauges["control_catalog_version"]
    assert rc.control.metrics.gauges["control_catalog_titles"] == 1

    # The same name again gets a free id.
    t2 = await create(rc, admin, kind="movie", name="The Night Train")
    assert t2["id"] == "the-night-train-2"

    rc.clock.advance(60)
    r = await rc.api.put(
        f"/v1/admin/titles/{t['id']}",
        json={"name": "The Night Train (Director's Cut)", "year": None, "published": False},
        token=admin.token,
    )
    assert r.status == 200, r
    assert r.body["name"] == "The Night Train (Director's Cut)"
    assert r.body["year"] is None and r.body["published"] is False
    assert r.body["synopsis"] == body["synopsis"]  # left out: kept
    assert r.body["updated_at"] == rc.clock.now and r.body["released_at"] == t["released_at"]
    assert rc.control.metrics.gauges["control_catalog_version"] == version + 2
    assert rc.control.metrics.gauges["control_catalog_titles"] == 1  # unpublished: not indexed

    r = await rc.api.get(f"/v1/admin/titles/{t['id']}", token=admin.token)
    assert r.status == 200 and r.body["published"] is False
    r = await rc.api.get("/v1/admin/titles", token=admin.token, params={"published": "false"})
    assert ids(r.body) == [t["id"]] and r.body["total"] == 1
    r = await rc.api.get("/v1/admin/titles", token=admin.token)
    assert sorted(ids(r.body)) == sorted([t["id"], t2["id"]]) and r.body["total"] == 2

    r = await rc.api.delete(f"/v1/admin/titles/{t['id']}", token=admin.token)
    assert r.status == 204 and r.body == ""
    r = await rc.api.get(f"/v1/admin/titles/{t['id']}", token=admin.token)
    assert r.status == 404 and r.body["error"]["code"] == "not_found"
    assert rc.counter("control_catalog_changes", "admin", "update") == 1
    assert rc.counter("control_catalog_changes", "admin", "delete") == 1


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"id": "Bad Slug"}, "id"),
    ({"id": "-leading"}, "id"),
    ({"id": "x" * 65}, "id"),
    ({"id": "under_score"}, "id"),
    ({"kind": "episode"}, "kind"),
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "tab\tinside"}, "name"),
    ({"name": 42}, "name"),
    ({"year": 1869}, "year"),
    ({"year": 2101}, "year"),
    ({"year": "1999"}, "year"),
    ({"maturity": 19}, "maturity"),
    ({"maturity": -1}, "maturity"),
    ({"maturity": True}, "maturity"),
    ({"genres": "drama"}, "genres"),
    ({"genres": [1]}, "genres"),
    ({"genres": ["x"] * 21}, "genres"),
    ({"cast": "Ann"}, "cast"),
    ({"synopsis": "s" * 10_000}, "synopsis"),
    ({"artwork": ["poster.jpg"]}, "artwork"),
    ({"artwork": {"poster": "../../etc/passwd"}}, "artwork"),
    ({"artwork": {"poster": "javascript:alert(1)"}}, "artwork"),
    ({"artwork": {"Poster!": "p.jpg"}}, "artwork"),
    ({"duration": -1}, "duration"),
    ({"duration": "long"}, "duration"),
    ({"media_key": "Bad/Key"}, "media_key"),
    ({"published": "yes"}, "published"),
    ({"published": None}, "published"),
    ({"rating": 5}, "rating"),
]


async def test_admin_validation_names_the_field(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    for extra, field in BAD_BODIES:
        body = {"kind": "movie", "name": "Valid", **extra}
        r = await rc.api.post("/v1/admin/titles", json=body, token=admin.token)
        assert r.status == 400, (extra, r)
        assert field in r.body["error"]["details"]["fields"], (extra, r)
    # Required fields, and movie-only fields on a series.
    r = await rc.api.post("/v1/admin/titles", json={"name": "No kind"}, token=admin.token)
    assert r.status == 400 and "kind" in r.body["error"]["details"]["fields"]
    r = await rc.api.post(
        "/v1/admin/titles",
        json={"kind": "series", "name": "S", "media_key": "s_key"},
        token=admin.token,
    )
    assert r.status == 400 and "media_key" in r.body["error"]["details"]["fields"], r
    # Not JSON, not an object, wrong content type.
    for data, ctype, status in (
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"kind=movie", "application/x-www-form-urlencoded", 415),
    ):
        r = await rc.api.post(
            "/v1/admin/titles", data=data, headers={"Content-Type": ctype}, token=admin.token
        )
        assert r.status == status, r
    # An update validates the same way and cannot change the kind.
    t = await create(rc, admin, kind="movie", name="Valid")
    for body, field in (
        ({"maturity": 19}, "maturity"),
        ({"name": None}, "name"),
        ({"kind": "series"}, "kind"),
        ({"id": "other"}, "id"),
    ):
        r = await rc.api.put(f"/v1/admin/titles/{t['id']}", json=body, token=admin.token)
        assert r.status == 400 and field in r.body["error"]["details"]["fields"], (body, r)
    r = await rc.api.get("/v1/admin/titles", token=admin.token)
    assert r.body["total"] == 1  # nothing invalid was stored


async def test_text_is_stored_verbatim(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    evil = "Robert'); DROP TABLE titles;-- 100% ? \\ \" `"
    uni = "Amélie — 東京 🎬"
    t1 = await create(rc, admin, kind="movie", name=evil, synopsis=evil, cast=[evil])
    t2 = await create(rc, admin, kind="movie", name=uni, genres=["Comédie"])
    t3 = await create(rc, admin, kind="movie", name="東京物語")
    assert t1["id"] == "robert-drop-table-titles-100"
    assert t2["id"] == "amelie"
    assert t3["id"] == "title"  # nothing sluggable in the name
    r = await rc.api.get(f"/v1/admin/titles/{t1['id']}", token=admin.token)
    assert (r.body["name"], r.body["synopsis"], r.body["cast"]) == (evil, evil, [evil])
    page = await get(rc, user, "/v1/search", user.profile_id, q="amelie comedie")
    assert ids(page) == ["amelie"] and page["items"][0]["name"] == uni
    page = await get(rc, user, "/v1/search", user.profile_id, q="DROP TABLE")
    assert ids(page) == [t1["id"]]
    page = await get(rc, user, "/v1/titles", user.profile_id)
    assert page["total"] == 3


async def test_admin_routes_need_an_admin(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    t = await create(rc, admin, kind="series", name="Show")
    r = await rc.api.post(
        f"/v1/admin/titles/{t['id']}/episodes",
        json={"season": 1, "number": 1, "name": "Pilot"},
        token=admin.token,
    )
    ep = r.body["id"]
    calls = [
        ("GET", "/v1/admin/titles", None),
        ("POST", "/v1/admin/titles", {"kind": "movie", "name": "X"}),
        ("GET", f"/v1/admin/titles/{t['id']}", None),
        ("PUT", f"/v1/admin/titles/{t['id']}", {"name": "Y"}),
        ("DELETE", f"/v1/admin/titles/{t['id']}", None),
        ("POST", f"/v1/admin/titles/{t['id']}/episodes", {"season": 1, "number": 2, "name": "E"}),
        ("PUT", f"/v1/admin/titles/{t['id']}/episodes/{ep}", {"name": "E"}),
        ("DELETE", f"/v1/admin/titles/{t['id']}/episodes/{ep}", None),
        ("POST", "/v1/admin/catalog/sync", None),
    ]
    for method, path, body in calls:
        r = await rc.api.call(method, path, json=body, token=user.token)
        assert r.status == 403, (method, path, r)
        r = await rc.api.call(method, path, json=body)
        assert r.status == 401, (method, path, r)
    r = await rc.api.get(f"/v1/admin/titles/{t['id']}", token=admin.token)
    assert r.body["name"] == "Show" and len(r.body["episodes"]) == 1  # nothing changed
    for path in ("/v1/titles", "/v1/search", "/v1/autocomplete", "/v1/genres", "/v1/titles/show"):
        r = await rc.api.get(path, params={"profile_id": user.profile_id})
        assert r.status == 401, (path, r)


async def test_not_found_and_conflicts(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    movie = await create(rc, admin, kind="movie", name="Movie", media_key="movie_key")
    show = await create(rc, admin, kind="series", name="Show")
    other = await create(rc, admin, kind="series", name="Other")
    r = await rc.api.post(
        f"/v1/admin/titles/{show['id']}/episodes",
        json={"season": 1, "number": 1, "name": "Pilot", "media_key": "show_s1e1"},
        token=admin.token,
    )
    assert r.status == 201, r
    ep = r.body["id"]
    a = admin.token
    for method, path, body in (
        ("GET", "/v1/admin/titles/nope", None),
        ("GET", "/v1/admin/titles/bad%20id", None),
        ("GET", "/v1/admin/titles/" + "x" * 65, None),
        ("PUT", "/v1/admin/titles/nope", {"name": "N"}),
        ("DELETE", "/v1/admin/titles/nope", None),
        ("POST", "/v1/admin/titles/nope/episodes", {"season": 1, "number": 1, "name": "E"}),
        ("PUT", f"/v1/admin/titles/{show['id']}/episodes/nope", {"name": "E"}),
        ("PUT", f"/v1/admin/titles/{other['id']}/episodes/{ep}", {"name": "E"}),
        ("DELETE", f"/v1/admin/titles/{other['id']}/episodes/{ep}", None),
    ):
        r = await rc.api.call(method, path, json=body, token=a)
        assert r.status == 404, (method, path, r)
        assert r.body["error"]["code"] == "not_found"
    for method, path, body in (
        ("POST", "/v1/admin/titles", {"id": movie["id"], "kind": "movie", "name": "Dup"}),
        ("POST", "/v1/admin/titles", {"kind": "movie", "name": "D", "media_key": "movie_key"}),
        ("POST", "/v1/admin/titles", {"kind": "movie", "name": "D", "media_key": "show_s1e1"}),
        (
            "POST",
            f"/v1/admin/titles/{show['id']}/episodes",
            {"season": 1, "number": 1, "name": "Again"},
        ),
        (
            "POST",
            f"/v1/admin/titles/{other['id']}/episodes",
            {"season": 1, "number": 1, "name": "E", "media_key": "movie_key"},
        ),
        (
            "POST",
            f"/v1/admin/titles/{movie['id']}/episodes",
            {"season": 1, "number": 1, "name": "E"},
        ),
    ):
        r = await rc.api.call(method, path, json=body, token=a)
        assert r.status == 409, (method, path, r)
    r = await rc.api.get("/v1/admin/titles", token=a)
    assert r.body["total"] == 3


# -- series --------------------------------------------------------------------------------


async def test_series_with_seasons_and_episodes(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    show = await create(
        rc, admin, kind="series", name="Stranger Things", maturity=16, genres=["Sci-Fi"]
    )
    base = f"/v1/admin/titles/{show['id']}/episodes"
    eps = {}
    for season, number, key in ((2, 1, "st_s2e1"), (1, 2, None), (1, 1, "st_s1e1")):
        r = await rc.api.post(
            base,
            json={"season": season, "number": number, "name": f"S{season}E{number}",
                  "duration": 3000, "media_key": key},
            token=admin.token,
        )  # fmt: skip
        assert r.status == 201, r
        assert r.body["title_id"] == show["id"] and r.body["published"] is True
        eps[(season, number)] = r.body["id"]
    d = await get(rc, user, f"/v1/titles/{show['id']}", user.profile_id)
    assert [s["season"] for s in d["seasons"]] == [1, 2]
    # Not playable until the origin publishes the media (renditions come from its feed).
    assert [(e["number"], e["playable"]) for e in d["seasons"][0]["episodes"]] == [
        (1, False),
        (2, False),
    ]
    assert d["playable"] is False and d["kind"] == "series"

    # Move S1E2 to S2E2; moving it onto S2E1 is a conflict.
    r = await rc.api.put(
        f"{base}/{eps[(1, 2)]}", json={"season": 2, "number": 1}, token=admin.token
    )
    assert r.status == 409, r
    r = await rc.api.put(
        f"{base}/{eps[(1, 2)]}", json={"season": 2, "number": 2, "name": "Moved"}, token=admin.token
    )
    assert r.status == 200 and (r.body["season"], r.body["number"]) == (2, 2), r
    r = await rc.api.delete(f"{base}/{eps[(2, 1)]}", token=admin.token)
    assert r.status == 204
    d = await get(rc, user, f"/v1/titles/{show['id']}", user.profile_id)
    assert [[e["name"] for e in s["episodes"]] for s in d["seasons"]] == [["S1E1"], ["Moved"]]

    catalog = rc.control.catalog
    with pytest.raises(BadRequest):
        await catalog.media(show["id"], None)
    with pytest.raises(NotFound):
        await catalog.media(show["id"], "nope")
    with pytest.raises(NotPlayable):
        await catalog.media(show["id"], eps[(1, 2)])
    m = await catalog.media(show["id"], eps[(1, 1)])
    assert m == Media(
        show["id"], eps[(1, 1)], "st_s1e1", "Stranger Things S1E1: S1E1", 16, 3000.0, []
    )

    # Deleting the series deletes its episodes.
    r = await rc.api.delete(f"/v1/admin/titles/{show['id']}", token=admin.token)
    assert r.status == 204
    row = await rc.control.db.fetchone("SELECT COUNT(*) AS n FROM episodes")
    assert row["n"] == 0


async def test_media_of_movies(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    a = await create(rc, admin, kind="movie", name="A", media_key="a_key", duration=60, maturity=7)
    b = await create(rc, admin, kind="movie", name="B")
    c = await create(rc, admin, kind="movie", name="C", media_key="c_key", published=False)
    catalog = rc.control.catalog
    assert await catalog.media(a["id"], None) == Media("a", "", "a_key", "A", 7, 60.0, [])
    with pytest.raises(NotPlayable) as exc:
        await catalog.media(b["id"], None)
    assert exc.value.code == "not_playable" and exc.value.status == 409
    for tid, ep in ((c["id"], None), ("nope", None), (a["id"], "some-episode")):
        with pytest.raises(NotFound):
            await catalog.media(tid, ep)


# -- what viewers see ----------------------------------------------------------------------


async def test_kids_profile_never_sees_a_mature_title(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    stranger = await create(
        rc, admin, kind="series", name="Stranger Things", maturity=16, year=2016,
        genres=["Horror", "Sci-Fi"], synopsis="Kids in Hawkins face a monster.",
    )  # fmt: skip
    pets = await create(
        rc, admin, kind="movie", name="Strange Pets", maturity=0, genres=["Family", "Sci-Fi"]
    )
    await create(rc, admin, kind="movie", name="Things We Hid", maturity=18, genres=["Horror"])
    kid = await kids_profile(rc, user)
    adult = user.profile_id

    # Adults: everything, typo-tolerant.
    page = await get(rc, user, "/v1/search", adult, q="strnger thngs")
    assert ids(page)[0] == stranger["id"], page
    assert page["items"][0]["matched"] == ["stranger", "things"]
    assert (await get(rc, user, "/v1/titles", adult))["total"] == 3
    assert (await get(rc, user, f"/v1/titles/{stranger['id']}", adult))["maturity"] == 16

    # Kids: never the 16+ or 18+ title, by any route.
    browse = await get(rc, user, "/v1/titles", kid)
    assert ids(browse) == [pets["id"]] and browse["total"] == 1
    for genre in ("horror", "Sci-Fi"):
        page = await get(rc, user, "/v1/titles", kid, genre=genre)
        assert stranger["id"] not in ids(page)
    r = await rc.api.get(
        f"/v1/titles/{stranger['id']}", token=user.token, params={"profile_id": kid}
    )
    assert r.status == 404 and r.body["error"]["code"] == "not_found"
    for q in ("stranger things", "strnger thngs", "stranger", "strange", "str", "hawkins",
              "monster", "things", "thi", "horror", "sci fi", ""):  # fmt: skip
        page = await get(rc, user, "/v1/search", kid, q=q)
        assert stranger["id"] not in ids(page), q
        assert page["total"] == len(ids(page)) <= 1, (q, page)
    for q in ("s", "st", "str", "stranger", "stranger ", "thi", "things"):
        sug = await get(rc, user, "/v1/autocomplete", kid, q=q)
        assert (
            "Stranger Things" not in sug["suggestions"]
            and "Things We Hid" not in sug["suggestions"]
        ), q
    sug = await get(rc, user, "/v1/autocomplete", adult, q="str")
    assert sug["suggestions"] == ["Strange Pets", "Stranger Things"]
    sug = await get(rc, user, "/v1/autocomplete", kid, q="str")
    assert sug == {"query": "str", "suggestions": ["Strange Pets"]}
    genres = await get(rc, user, "/v1/genres", kid)
    assert genres["items"] == [{"genre": "Family", "count": 1}, {"genre": "Sci-Fi", "count": 1}]
    genres = await get(rc, user, "/v1/genres", adult)
    assert genres["items"][:2] == [{"genre": "Horror", "count": 2}, {"genre": "Sci-Fi", "count": 2}]
    assert genres["total"] == 3
    assert await rc.control.catalog.summaries([stranger["id"], pets["id"], "nope"], 7) == {
        pets["id"]: {
            "id": pets["id"], "name": "Strange Pets", "kind": "movie", "year": None,
            "maturity": 0, "genres": ["Family", "Sci-Fi"], "artwork": {},
        }
    }  # fmt: skip
    assert rc.counter("control_search_requests", "search") >= 13
    assert rc.counter("control_search_requests", "autocomplete") >= 9


async def test_viewer_parameters(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    stranger = await rc.signup()
    for path in ("/v1/titles", "/v1/search", "/v1/autocomplete", "/v1/genres", "/v1/titles/x"):
        r = await rc.api.get(path, token=user.token)
        assert r.status == 400 and "profile_id" in r.body["error"]["details"]["fields"], r
        # Another account's profile is not found, never forbidden.
        r = await rc.api.get(path, token=user.token, params={"profile_id": stranger.profile_id})
        assert r.status == 404, (path, r)
        r = await rc.api.get(path, token=user.token, params={"profile_id": "bad id!"})
        assert r.status == 400, (path, r)
    pid = user.profile_id
    for params, field in (
        ({"q": "x" * 201}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"kind": "film"}, "kind"),
        ({"year": "nineteen"}, "year"),
        ({"year": "3000"}, "year"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"sort": "name"}, "sort"),
    ):
        r = await rc.api.get("/v1/search", token=user.token, params={"profile_id": pid, **params})
        assert r.status == 400 and field in r.body["error"]["details"]["fields"], (params, r)
    r = await rc.api.get(
        "/v1/autocomplete", token=user.token, params={"profile_id": pid, "limit": "21"}
    )
    assert r.status == 400


async def test_pagination_is_consistent(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    made = []
    for i in range(23):
        t = await create(
            rc, admin, kind="movie" if i % 3 else "series", name=f"Ocean Tale {i:02d}",
            genres=["Drama"] if i % 2 else ["Drama", "Sea"], year=2000 + i % 4,
        )  # fmt: skip
        made.append(t["id"])
    # Popularity with ties: browse orders by popularity, then name.
    rc.control.catalog.set_popularity({tid: float(i % 4) for i, tid in enumerate(made)})

    async def all_pages(path: str, limit: int, **params: Any) -> tuple[list[str], int]:
        out: list[str] = []
        offset, total = 0, None
        while True:
            page = await get(rc, user, path, user.profile_id, offset=offset, limit=limit, **params)
            assert total is None or page["total"] == total
            total = page["total"]
            out += ids(page)
            offset += limit
            if offset >= total:
                return out, total

    full = await get(rc, user, "/v1/titles", user.profile_id, limit=100)
    assert full["total"] == 23
    pops = [made.index(t) % 4 for t in ids(full)]
    assert pops == sorted(pops, reverse=True)
    for path, params in (
        ("/v1/titles", {}),
        ("/v1/titles", {"genre": "sea"}),
        ("/v1/titles", {"kind": "movie", "year": 2001}),
        ("/v1/search", {"q": "ocean"}),
        ("/v1/search", {"q": "ocean tale", "genre": "drama"}),
        ("/v1/search", {}),
    ):
        one = await get(rc, user, path, user.profile_id, limit=100, **params)
        for limit in (1, 4, 7):
            got, total = await all_pages(path, limit, **params)
            assert got == ids(one) and total == one["total"], (path, params, limit)
            assert len(set(got)) == len(got)
    r = await rc.api.get("/v1/admin/titles", token=admin.token, params={"limit": 100})
    everything = ids(r.body)
    got = []
    for offset in range(0, 23, 5):
        r = await rc.api.get(
            "/v1/admin/titles", token=admin.token, params={"offset": offset, "limit": 5}
        )
        got += ids(r.body)
    assert got == everything and sorted(got) == sorted(made)


async def test_popularity_summaries_and_recommend_titles(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    a = await create(
        rc, admin, kind="movie", name="Alpha", genres=["Drama"], maturity=12, synopsis="A film."
    )
    b = await create(rc, admin, kind="movie", name="Beta", synopsis="A film.")
    catalog = rc.control.catalog
    assert ids(await get(rc, user, "/v1/titles", user.profile_id)) == ["alpha", "beta"]
    catalog.set_popularity({b["id"]: 5.0, "unknown": 1.0})
    assert ids(await get(rc, user, "/v1/titles", user.profile_id)) == ["beta", "alpha"]
    page = await get(rc, user, "/v1/search", user.profile_id, q="film")
    assert ids(page) == ["beta", "alpha"]  # equal relevance: popularity decides
    titles = catalog.recommend_titles()
    assert set(titles) == {a["id"], b["id"]}
    assert titles[a["id"]].genres == ("Drama",) and titles[a["id"]].maturity == 12
    assert titles[a["id"]].released == rc.clock.now


# -- several instances on one database -----------------------------------------------------


async def test_two_instances_share_the_catalog(start_control: Any) -> None:
    rc1 = await start_control()
    rc2 = await start_control()
    admin = await rc1.admin()
    user = await rc1.signup()
    t = await create(rc1, admin, kind="movie", name="Kingdom Of Glass")
    page = await get(rc2, user, "/v1/search", user.profile_id, q="kingdom glass")
    assert ids(page) in ([], [t["id"]])  # rc2's refresh loop may have run already
    await rc2.control.catalog.refresh()
    assert rc2.control.catalog.version == rc1.control.catalog.version
    page = await get(rc2, user, "/v1/search", user.profile_id, q="kingdm glas")
    assert ids(page) == [t["id"]]
    r = await rc2.api.get(
        f"/v1/titles/{t['id']}", token=user.token, params={"profile_id": user.profile_id}
    )
    assert r.status == 200

    # A write on rc2 while it is behind: it re-synchronises and sees both changes at once.
    r = await rc1.api.put(
        f"/v1/admin/titles/{t['id']}", json={"name": "Kingdom Of Stone"}, token=admin.token
    )
    assert r.status == 200
    t2 = await create(rc2, admin, kind="movie", name="River Song")
    page = await get(rc2, user, "/v1/search", user.profile_id, q="kingdom")
    assert [i["name"] for i in page["items"]] == ["Kingdom Of Stone"]
    await rc1.control.catalog.refresh()
    for rc in (rc1, rc2):
        assert rc.control.catalog.version == rc1.control.catalog.version
        assert ids(await get(rc, user, "/v1/titles", user.profile_id)) == [t["id"], t2["id"]]

    # Deleting and unpublishing propagate too.
    r = await rc1.api.delete(f"/v1/admin/titles/{t['id']}", token=admin.token)
    r = await rc1.api.put(
        f"/v1/admin/titles/{t2['id']}", json={"published": False}, token=admin.token
    )
    await rc2.control.catalog.refresh()
    assert (await get(rc2, user, "/v1/titles", user.profile_id))["total"] == 0
    assert rc2.control.metrics.gauges["control_catalog_titles"] == 0
    assert not await rc2.control.catalog.refresh()  # nothing new


# -- performance ---------------------------------------------------------------------------


async def test_load_of_10k_titles_is_fast(tmp_path: Path) -> None:
    """Measured on SQLite: reading and indexing 10k titles with ~30-word synopses."""
    import random

    from control.app import Control, open_database
    from control.catalog import CatalogStore
    from control.config import parse_config

    config = parse_config({"database": {"url": f"sqlite:///{tmp_path}/big.db"}})
    control = Control(config)
    control.db = await open_database(config, 0.0)
    try:
        rng = random.Random(7)
        words = [
            "".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(3))
            for _ in range(3000)
        ]
        rows = [
            (
                f"t{i:05d}",
                "movie" if i % 3 else "series",
                " ".join(rng.choices(words, k=rng.randint(1, 4))).title(),
                " ".join(rng.choices(words, k=30)),
                rng.randint(1950, 2024),
                rng.choice([0, 7, 12, 16, 18]),
                json.dumps(rng.sample(["drama", "comedy", "action", "horror", "family"], 2)),
                json.dumps([f"{rng.choice(words)} {rng.choice(words)}" for _ in range(5)]),
                float(i),
            )
            for i in range(10_000)
        ]
        await control.db.executemany(
            "INSERT INTO titles(id, kind, name, synopsis, year, maturity, genres, cast_members, "
            "released_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            rows,
        )
        store = CatalogStore(control)
        t0 = time.perf_counter()
        await store.load()
        load_s = time.perf_counter() - t0
        assert len(store.index) == 10_000
        t0 = time.perf_counter()
        items, _ = store.search(f"{words[0]} {words[1][:3]}", 12, limit=20)
        search_s = time.perf_counter() - t0
        assert items
        t0 = time.perf_counter()
        assert await store._sync_locked() == 0  # a refresh with nothing changed
        resync_s = time.perf_counter() - t0
        print(
            f"load 10k: {load_s:.2f} s, search: {search_s * 1000:.1f} ms, resync: {resync_s * 1000:.0f} ms"
        )
        assert load_s < 10.0 and search_s < 0.5 and resync_s < 2.0
    finally:
        await control.db.close()


async def test_search_answers_are_cached_until_the_catalog_or_popularity_changes(
    start_control: Any,
) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    await create(rc, admin, kind="movie", name="Alpha", synopsis="A film.")
    await create(rc, admin, kind="movie", name="Beta", synopsis="A film.")

    async def search() -> list[str]:
        return ids(await get(rc, user, "/v1/search", user.profile_id, q="Film"))

    first = await search()
    assert await search() == first  # "Film" and "film" are the same question
    assert await get(rc, user, "/v1/search", user.profile_id, q="film ") is not None
    assert rc.counter("control_search_cache", "miss") == 1
    assert rc.counter("control_search_cache", "hit") == 2
    # A catalog change is seen at once...
    r = await rc.api.put("/v1/admin/titles/alpha", json={"synopsis": "A play."}, token=admin.token)
    assert r.status == 200, r
    assert await search() == ["beta"]
    # ...and so is new popularity (equal relevance: popularity decides).
    await create(rc, admin, kind="movie", name="Gamma", synopsis="A film.")
    assert await search() == ["beta", "gamma"]
    rc.control.catalog.set_popularity({"gamma": 3.0})
    assert await search() == ["gamma", "beta"]
    assert rc.counter("control_search_cache", "miss") == 4
