"""Home recommendation rows: tables on handmade data, plus property checks on random data."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.recommend import (
    DAY_S,
    Row,
    Title,
    Watch,
    cowatch_similarity,
    home_rows,
    popular_rows,
    recompute,
    trending_scores,
)

NOW = 1_700_000_000.0


def T(id_: str, *genres: str, days_old: float = 100.0, maturity: int = 0) -> Title:
    return Title(id_, genres, NOW - days_old * DAY_S, maturity)


def W(profile: str, title: str, hours_ago: float, finished: bool = True) -> Watch:
    return Watch(profile, title, NOW - hours_ago * 3600, 1.0 if finished else 0.4, finished)


def by_name(rows: list[Row]) -> dict[str, Row]:
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), names
    return {r.name: r for r in rows}


CATALOGUE = {
    t.id: t
    for t in [
        T("c1", "comedy"),
        T("c2", "comedy"),
        T("c3", "comedy"),
        T("c4", "comedy"),
        T("d1", "drama"),
        T("d2", "drama"),
        T("h1", "horror", maturity=18),
        T("n1", "drama", days_old=3),
        T("n2", "comedy", days_old=10),
        T("old_new", "drama", days_old=31),
    ]
}


# --- trending ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ages_days", "half_life", "expected"),
    [
        ([0.0], 3.0, 1.0),
        ([3.0], 3.0, 0.5),
        ([6.0], 3.0, 0.25),
        ([1.0], 1.0, 0.5),
        ([0.0, 3.0, 6.0], 3.0, 1.75),
    ],
)
def test_trending_decay_halves_at_half_life(
    ages_days: list[float], half_life: float, expected: float
) -> None:
    watches = [Watch("p", "x", NOW - a * DAY_S, 1.0, True) for a in ages_days]
    scores = trending_scores(watches, NOW, half_life_days=half_life)
    assert scores["x"] == pytest.approx(expected)


def test_trending_ignores_future_plays_and_rejects_bad_half_life() -> None:
    watches = [Watch("p", "x", NOW + 10, 1.0, True), Watch("p", "y", NOW, 1.0, True)]
    assert trending_scores(watches, NOW) == {"y": pytest.approx(1.0)}
    with pytest.raises(ValueError):
        trending_scores([], NOW, half_life_days=0)


# --- co-watch similarity --------------------------------------------------------------------


def test_similarity_cosine_values_and_symmetry() -> None:
    # a: p1 p2 p3; b: p1 p2; c: p3 only with a, once.
    watches = [
        W("p1", "a", 5),
        W("p1", "b", 4),
        W("p2", "a", 5),
        W("p2", "b", 4),
        W("p3", "a", 5),
        W("p3", "c", 4),
    ]
    sim = cowatch_similarity(watches, min_support=2)
    assert sim["a"] == [("b", pytest.approx(2 / math.sqrt(3 * 2)))]
    assert sim["b"] == [("a", pytest.approx(2 / math.sqrt(3 * 2)))]
    # a-c was co-watched by a single profile: below min_support, so no edge either way.
    assert "c" not in sim
    assert dict(cowatch_similarity(watches, min_support=1)["c"]) == {
        "a": pytest.approx(1 / math.sqrt(3))
    }


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 7)),
        max_size=80,
    ),
    st.integers(1, 3),
)
def test_similarity_symmetric_on_random_data(pairs: list[tuple[int, int]], support: int) -> None:
    watches = [W(f"p{p}", f"t{t}", float(i)) for i, (p, t) in enumerate(pairs)]
    sim = cowatch_similarity(watches, min_support=support, top_k=100)
    profiles_of: dict[str, set[str]] = {}
    for w in watches:
        profiles_of.setdefault(w.title, set()).add(w.profile)
    for a, neigh in sim.items():
        for b, score in neigh:
            assert a != b
            assert dict(sim[b])[a] == pytest.approx(score)
            assert len(profiles_of[a] & profiles_of[b]) >= support
            assert 0 < score <= 1 + 1e-9
        scores = [s for _, s in neigh]
        assert scores == sorted(scores, reverse=True)


def test_similarity_top_k_and_popularity_normalisation() -> None:
    # "hit" is watched by everyone; "niche" and "pair" always go together in a small audience.
    watches = [W(f"p{i}", "hit", 10) for i in range(20)]
    watches += [W(f"p{i}", t, 5) for i in range(3) for t in ("niche", "pair")]
    sim = cowatch_similarity(watches, top_k=1)
    assert sim["niche"] == [("pair", pytest.approx(1.0))]
    assert len(sim["hit"]) == 1


# --- home rows ------------------------------------------------------------------------------


def test_continue_watching_most_recent_first_and_only_unfinished() -> None:
    history = [
        W("p", "c1", 30, finished=False),
        W("p", "d1", 2, finished=False),
        W("p", "c2", 10, finished=True),
        W("p", "d2", 20, finished=False),
        # Rewatched and finished later: no longer "continue".
        W("p", "c3", 40, finished=False),
        W("p", "c3", 1, finished=True),
    ]
    rows = home_rows("p", history, CATALOGUE, similar={}, trending={}, now=NOW)
    assert rows[0] == Row("continue_watching", "Continue Watching", ("d1", "d2", "c1"))


def test_because_you_watched_uses_cowatch() -> None:
    similar = {"c1": [("d2", 0.9), ("c2", 0.5), ("c1x", 0.4)], "d1": [("c4", 0.8)]}
    history = [W("p", "d1", 50), W("p", "c1", 1)]
    rows = by_name(
        home_rows("p", history, CATALOGUE, similar=similar, trending={"c3": 5.0}, now=NOW)
    )
    byw = rows["because_you_watched"]
    assert byw.label == "Because you watched c1"
    # Co-watch order, unknown titles (c1x) dropped, d1 not repeated because it is watched.
    assert byw.titles == ("d2", "c2")


def test_because_you_watched_skips_anchor_above_maturity() -> None:
    similar = {"h1": [("c2", 0.9)], "c1": [("c3", 0.5)]}
    history = [W("p", "c1", 5), W("p", "h1", 1)]
    rows = by_name(
        home_rows("p", history, CATALOGUE, similar=similar, trending={}, now=NOW, max_maturity=12)
    )
    assert rows["because_you_watched"].label == "Because you watched c1"


def test_top_in_genre_and_trending_and_new_releases() -> None:
    trending = {"c4": 9.0, "d2": 8.0, "c2": 3.0, "c1": 50.0, "h1": 99.0, "n1": 1.0}
    history = [W("p", "c1", 3), W("p", "c3", 2), W("p", "d1", 1)]
    rows = by_name(
        home_rows("p", history, CATALOGUE, similar={}, trending=trending, now=NOW, max_maturity=12)
    )
    # Comedy is watched most; ranked by trending, unplayed titles (n2) last; c1 c3 watched.
    assert rows["top_in_genre"] == Row("top_in_genre", "Top in comedy", ("c4", "c2", "n2"))
    # h1 is above the maturity limit, c1 watched, c4 and c2 already shown above.
    assert rows["trending"] == Row("trending", "Trending Now", ("d2", "n1"))
    # Both new releases are already shown above, so the row would only repeat them.
    assert "new_releases" not in rows
    assert [
        r.name
        for r in home_rows(
            "p", history, CATALOGUE, similar={}, trending=trending, now=NOW, max_maturity=12
        )
    ] == ["top_in_genre", "trending"]


def test_new_releases_window_newest_first() -> None:
    history = [W("p", "d1", 1)]
    rows = by_name(home_rows("p", history, CATALOGUE, similar={}, trending={}, now=NOW))
    # Top in drama takes d2, n1 (unplayed, by id), then new releases: n2 only (old_new is 31d).
    assert rows["top_in_genre"].titles == ("d2", "n1", "old_new")
    assert rows["new_releases"] == Row("new_releases", "New Releases", ("n2",))


def test_new_profile_gets_popularity_fallback() -> None:
    trending = {"c2": 5.0, "h1": 9.0, "d1": 2.0}
    for history in ([], [W("other", "c1", 1)]):
        rows = home_rows(
            "p",
            history,
            CATALOGUE,
            similar={},
            trending=trending,
            now=NOW,
            max_maturity=12,
            row_size=4,
        )
        assert rows == popular_rows(CATALOGUE, trending, now=NOW, max_maturity=12, row_size=4)
    names = by_name(rows)
    # Played titles by score (h1 is too mature), then unplayed ones newest first.
    assert names["popular"].titles == ("c2", "d1", "n1", "n2")
    assert "new_releases" not in names  # both already in the popular row


def test_popular_rows_before_any_play() -> None:
    rows = by_name(popular_rows(CATALOGUE, {}, now=NOW, max_maturity=18, row_size=3))
    assert rows["popular"].titles == ("n1", "n2", "old_new")
    assert "new_releases" not in rows


def test_row_size_zero_gives_no_rows() -> None:
    assert (
        home_rows("p", [W("p", "c1", 1)], CATALOGUE, similar={}, trending={}, now=NOW, row_size=0)
        == []
    )
    with pytest.raises(ValueError):
        home_rows("p", [], CATALOGUE, similar={}, trending={}, now=NOW, row_size=-1)


# --- properties over random data ------------------------------------------------------------

RANDOM_TITLES = {
    f"t{i}": Title(f"t{i}", (f"g{i % 3}",), NOW - (i * 4) * DAY_S, (0, 7, 13, 16, 18)[i % 5])
    for i in range(20)
}

watch_st = st.builds(
    Watch,
    profile=st.sampled_from(["a", "b", "c", "d"]),
    title=st.sampled_from([*RANDOM_TITLES, "gone"]),
    at=st.floats(NOW - 20 * DAY_S, NOW + DAY_S),
    progress=st.floats(0, 1),
    finished=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(watch_st, max_size=60),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from([0, 7, 13, 16, 18])),
    st.integers(1, 6),
)
def test_recompute_properties(
    watches: list[Watch], maturity: dict[str, int], row_size: int
) -> None:
    profiles = ["a", "b", "c", "d", "new"]
    out = recompute(
        watches,
        RANDOM_TITLES,
        now=NOW,
        profiles=profiles,
        max_maturity=maturity,
        row_size=row_size,
        min_support=1,
    )
    assert set(out) == set(profiles)
    for profile, rows in out.items():
        limit = maturity.get(profile, 0)  # missing rating fails closed to all-ages
        started = {w.title for w in watches if w.profile == profile and w.at <= NOW}
        seen: list[str] = []
        for row in rows:
            assert 0 < len(row.titles) <= row_size
            for t in row.titles:
                # Maturity never leaks, and withdrawn titles are never shown.
                assert t in RANDOM_TITLES
                assert RANDOM_TITLES[t].maturity <= limit
                # Only Continue Watching may show a title the profile already started.
                assert (t in started) == (row.name == "continue_watching")
            seen.extend(row.titles)
            if row.name == "because_you_watched":
                anchor = row.label.removeprefix("Because you watched ")
                assert RANDOM_TITLES[anchor].maturity <= limit
        assert len(seen) == len(set(seen)), "a title repeated across rows"
        if not started:
            assert {r.name for r in rows} <= {"popular", "new_releases"}
    # Pure: the same inputs give the same rows.
    assert out == recompute(
        watches,
        RANDOM_TITLES,
        now=NOW,
        profiles=profiles,
        max_maturity=maturity,
        row_size=row_size,
        min_support=1,
    )


def test_because_you_watched_anchor_is_most_typical_recent_title() -> None:
    # The latest finish (c1) is a one-off; d1 and d2 both point at n1, so d2's row wins.
    similar = {
        "c1": [("c2", 0.3)],
        "d1": [("n1", 0.9)],
        "d2": [("n1", 0.9), ("c4", 0.2)],
    }
    history = [W("p", "d1", 30), W("p", "d2", 20), W("p", "c1", 1)]
    rows = by_name(home_rows("p", history, CATALOGUE, similar=similar, trending={}, now=NOW))
    assert rows["because_you_watched"] == Row(
        "because_you_watched", "Because you watched d2", ("n1", "c4")
    )
