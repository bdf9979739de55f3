"""Home rows over HTTP: the popularity fallback, the batch's stored rows, live Continue Watching,
serving-time filters (maturity, thumbs-down) and the batch trigger (both backends)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from control.home import HomeStore
from tests.control_support import RunningControl, User
from tests.test_control_library import T, kids_profile, put_resume, seed

CATALOG = (
    T("alpha", genres=("drama",), age_days=300),
    T("beta", genres=("drama",), age_days=200),
    T("gamma", genres=("comedy",), age_days=100),
    T("delta", genres=("comedy",), age_days=50),
    T("edgy", maturity=16, genres=("drama",), age_days=40),
    T("fresh", genres=("comedy",), age_days=2),
)


NO_LIMITS = {"enabled": False}  # several sign-ups from one address


async def home(rc: RunningControl, user: User, profile: str | None = None) -> dict[str, Any]:
    r = await rc.api.get(f"/v1/profiles/{profile or user.profile_id}/home", token=user.token)
    assert r.status == 200, r
    assert set(r.body) == {"rows", "computed_at", "source"}
    for row in r.body["rows"]:
        assert row["titles"], row
    body: dict[str, Any] = r.body
    return body


def rows_of(doc: dict[str, Any]) -> dict[str, list[str]]:
    return {row["name"]: [t["id"] for t in row["titles"]] for row in doc["rows"]}


def every_title(doc: dict[str, Any]) -> list[str]:
    return [t["id"] for row in doc["rows"] for t in row["titles"]]


async def watch(rc: RunningControl, user: User, title: str, ago: float, **kw: Any) -> None:
    """A finished watch ``ago`` seconds before the clock (``position`` for an unfinished one)."""
    position = kw.pop("position", 6000)
    r = await put_resume(rc, user, title, position, rc.clock.now - ago, duration=6000, **kw)
    assert r.status == 200 and r.body["applied"], r


async def recompute(rc: RunningControl, admin: User) -> dict[str, Any]:
    r = await rc.api.post("/v1/admin/recompute", token=admin.token)
    assert r.status == 200, r
    body: dict[str, Any] = r.body
    return body


async def test_new_profile_gets_the_popularity_fallback(start_control: Any) -> None:
    rc = await start_control(rate_limits=NO_LIMITS)
    await seed(rc, CATALOG)
    u = await rc.signup()
    kid = await kids_profile(rc, u)

    doc = await home(rc, u)
    assert doc["source"] == "fallback" and doc["computed_at"] is None
    # Nothing played yet: the newest titles first; New Releases only has what is left.
    rows = rows_of(doc)
    assert rows["popular"] == ["fresh", "edgy", "delta", "gamma", "beta", "alpha"]
    assert "new_releases" not in rows
    kid_doc = await home(rc, u, kid)
    assert "edgy" not in every_title(kid_doc)
    assert rows_of(kid_doc)["popular"] == ["fresh", "delta", "gamma", "beta", "alpha"]
    assert kid_doc["rows"][0]["titles"][0] == {
        **kid_doc["rows"][0]["titles"][0],
        "id": "fresh",
        "name": "Fresh",
        "kind": "movie",
    }

    # Somebody plays the oldest title: the cached fallback keeps its order for a minute.
    other = await rc.signup()
    await watch(rc, other, "alpha", 60)
    assert rows_of(await home(rc, u))["popular"][0] == "fresh"
    rc.clock.advance(61)
    popular = rows_of(await home(rc, u))["popular"]
    assert popular[0] == "alpha"
    # The player's own Continue Watching is live even on the fallback.
    await watch(rc, u, "gamma", 5, position=100)
    doc = await home(rc, u)
    assert doc["rows"][0]["name"] == "continue_watching" and doc["source"] == "fallback"
    assert rows_of(doc)["continue_watching"] == ["gamma"]
    assert "gamma" not in rows_of(doc)["popular"]


async def test_batch_rows_cowatch_maturity_and_live_continue_watching(
    start_control: Any,
) -> None:
    rc = await start_control(rate_limits=NO_LIMITS)
    admin = await rc.admin()
    await seed(rc, CATALOG, admin)
    # Three profiles who watched alpha also watched beta and the 16+ edgy.
    for _ in range(3):
        w = await rc.signup()
        for i, title in enumerate(("alpha", "beta", "edgy")):
            await watch(rc, w, title, 3600 - i)
    viewer = await rc.signup()
    await watch(rc, viewer, "alpha", 600)
    kid = await kids_profile(rc, viewer)
    await watch(rc, viewer, "alpha", 600, profile=kid)

    r = await rc.api.post("/v1/admin/recompute", token=viewer.token)
    assert r.status == 403, r
    r = await rc.api.post("/v1/admin/recompute")
    assert r.status == 401, r
    done = await recompute(rc, admin)
    assert done["profiles"] == 5 and done["seconds"] >= 0
    assert rc.counter("control_recompute_runs", "ok") == 1
    assert rc.counter("control_recompute_profiles") == 5
    gauge = rc.control.metrics.gauges["control_recompute_last_success_seconds"]
    assert gauge == rc.clock.now
    pop = await rc.control.db.fetchall("SELECT title_id, score FROM popularity ORDER BY title_id")
    assert [p["title_id"] for p in pop] == ["alpha", "beta", "edgy"]

    doc = await home(rc, viewer)
    assert doc["source"] == "batch" and doc["computed_at"] == rc.clock.now
    rows = rows_of(doc)
    assert rows["because_you_watched"] == ["beta", "edgy"]
    label = next(r["label"] for r in doc["rows"] if r["name"] == "because_you_watched")
    assert label == "Because you watched Alpha"
    assert "continue_watching" not in rows
    assert "alpha" not in every_title(doc)  # watched: only Continue Watching may show it

    kid_doc = await home(rc, viewer, kid)
    assert kid_doc["source"] == "batch"
    assert rows_of(kid_doc)["because_you_watched"] == ["beta"]
    assert "edgy" not in every_title(kid_doc)

    # Continue Watching is live: a position stored after the batch shows at once, first.
    await watch(rc, viewer, "gamma", 1, position=300)
    doc = await home(rc, viewer)
    assert doc["rows"][0]["name"] == "continue_watching"
    assert rows_of(doc)["continue_watching"] == ["gamma"]
    assert every_title(doc).count("gamma") == 1
    await watch(rc, viewer, "gamma", 0, position=6000)
    assert "continue_watching" not in rows_of(await home(rc, viewer))

    # Thumbs-down removes a title from every row at once.
    r = await rc.api.put(
        f"/v1/profiles/{viewer.profile_id}/ratings/beta", json={"rating": -1}, token=viewer.token
    )
    assert r.status == 204, r
    doc = await home(rc, viewer)
    assert "beta" not in every_title(doc)
    assert rows_of(doc)["because_you_watched"] == ["edgy"]

    # A lowered maturity limit filters the stored rows too; a row left empty is dropped.
    r = await rc.api.patch(
        f"/v1/profiles/{viewer.profile_id}", json={"maturity_limit": 12}, token=viewer.token
    )
    assert r.status == 200, r
    doc = await home(rc, viewer)
    assert "edgy" not in every_title(doc)
    assert "because_you_watched" not in rows_of(doc)

    # The store API the CLI and other areas use.
    profile = await rc.control.accounts.get_profile(viewer.account_id, kid)
    assert await rc.control.home.rows(profile) == kid_doc["rows"]

    # A profile created after the batch, and one whose history is gone, get the fallback.
    r = await rc.api.post("/v1/profiles", json={"name": "New"}, token=viewer.token)
    fresh = await home(rc, viewer, r.body["id"])
    assert fresh["source"] == "fallback" and fresh["computed_at"] is None
    assert rows_of(fresh)["popular"][0] == "alpha"  # the most played, from the batch's scores
    assert set(rows_of(fresh)["popular"][1:3]) == {"beta", "edgy"}
    r = await rc.api.delete(f"/v1/profiles/{kid}/history/alpha", token=viewer.token)
    assert r.status == 204, r
    rc.clock.advance(10)
    assert (await recompute(rc, admin))["profiles"] == 4
    assert (await home(rc, viewer, kid))["source"] == "fallback"


async def test_thumbs_up_counts_as_a_finished_watch(start_control: Any) -> None:
    rc = await start_control(rate_limits=NO_LIMITS)
    admin = await rc.admin()
    await seed(rc, CATALOG, admin)
    for _ in range(2):
        w = await rc.signup()
        for title in ("gamma", "delta"):
            r = await rc.api.put(
                f"/v1/profiles/{w.profile_id}/ratings/{title}", json={"rating": 1}, token=w.token
            )
            assert r.status == 204, r
    viewer = await rc.signup()
    await watch(rc, viewer, "gamma", 60)
    rc.clock.advance(1)
    assert (await recompute(rc, admin))["profiles"] == 3
    assert rows_of(await home(rc, viewer))["because_you_watched"] == ["delta"]


async def test_a_failed_batch_is_counted_and_keeps_serving(
    start_control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc = await start_control(rate_limits=NO_LIMITS)
    admin = await rc.admin()
    await seed(rc, CATALOG, admin)
    u = await rc.signup()
    await watch(rc, u, "alpha", 60)

    def broken() -> Any:
        raise RuntimeError("catalog exploded")

    monkeypatch.setattr(rc.control.catalog, "recommend_titles", broken)
    r = await rc.api.post("/v1/admin/recompute", token=admin.token)
    assert r.status == 500, r
    assert rc.counter("control_recompute_runs", "error") == 1
    assert rc.control.metrics.gauges["control_recompute_last_success_seconds"] == 0
    monkeypatch.undo()
    doc = await home(rc, u)
    assert doc["source"] == "fallback"
    assert (await recompute(rc, admin))["profiles"] == 1
    assert (await home(rc, u))["source"] == "batch"


class _Spawner:
    def __init__(self, interval: float) -> None:
        self.config = SimpleNamespace(recommend=SimpleNamespace(interval=interval))
        self.spawned: list[str] = []

    def spawn(self, coro: Any, name: str) -> None:
        self.spawned.append(name)
        coro.close()


def test_the_schedule_runs_only_with_an_interval() -> None:
    for interval, expected in ((0.0, []), (3600.0, ["recompute"])):
        c = _Spawner(interval)
        HomeStore(c).start()
        assert c.spawned == expected


async def test_the_schedule_survives_a_failed_run() -> None:
    store = HomeStore(_Spawner(0.001))
    calls = 0

    async def run() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database away")
        raise asyncio.CancelledError  # ends the loop, as cancellation at shutdown does

    store.recompute = run  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(store._schedule(0.001), 10)
    assert calls == 2


async def test_another_instance_takes_the_batchs_popularity(start_control: Any) -> None:
    """Workers and instances share one database: the batch runs in one of them, the others
    pick its popularity (search tie-break, browse order) up on their refresh."""
    rc1 = await start_control(rate_limits=NO_LIMITS)
    await seed(rc1, CATALOG)
    rc2 = await start_control(rate_limits=NO_LIMITS, clock=rc1.clock)
    viewer = await rc1.signup()
    await watch(rc1, viewer, "gamma", 60)
    admin = await rc1.admin()
    await recompute(rc1, admin)
    other = rc2.control.catalog
    assert await other.refresh_popularity() is True
    assert await other.refresh_popularity() is False  # nothing new since
    mine = rc1.control.catalog
    assert other.popularity_version == mine.popularity_version == 1
    ranked = [t for t, s in sorted(other._popularity.items(), key=lambda kv: -kv[1]) if s > 0]
    assert ranked and ranked[0] == "gamma"
    assert other._popularity == mine._popularity
    # The batch's time is known everywhere, not only where it ran.
    gauge = "control_recompute_last_success_seconds"
    assert rc2.control.metrics.gauges[gauge] == rc1.control.metrics.gauges[gauge] == rc1.clock.now


async def test_a_watch_from_a_clock_slightly_ahead_counts_in_the_next_batch(
    start_control: Any,
) -> None:
    rc = await start_control(rate_limits=NO_LIMITS)
    await seed(rc, CATALOG)
    viewer = await rc.signup()
    await watch(rc, viewer, "gamma", -120)  # the device's clock is two minutes ahead
    body = await recompute(rc, await rc.admin())
    assert body["profiles"] == 1
