"""The nightly fill's pure core: windows (with DST), manifests, work order, rate, progress."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge.fillplan import (
    SKIP_BAD_PATH,
    SKIP_BAD_PEER,
    FillObject,
    ManifestError,
    Peer,
    TokenBucket,
    disk_bytes,
    left_paths,
    parse_manifest,
    parse_window,
    plan_work,
    progress,
    slice_count,
    within_capacity,
)
from edge.tokens import SigningKeys, sign

KEYS = SigningKeys({"k1": b"0123456789abcdef0123"}, "k1")

PARIS = ZoneInfo("Europe/Paris")
NY = ZoneInfo("America/New_York")


def at(text: str, tz: Any = UTC) -> float:
    """Epoch seconds of a local wall time (first occurrence)."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------- window


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("02:00-14:00", 120, 840),
        ("22:00-06:00", 1320, 360),
        (" 00:00 - 23:59 ", 0, 1439),
        ("23:30-00:15", 1410, 15),
    ],
)
def test_window_parses(text: str, start: int, end: int) -> None:
    w = parse_window(text)
    assert (w.start, w.end) == (start, end)
    assert parse_window(str(w)) == w


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("02:00-02:00", "equal"),
        ("02:00", "HH:MM-HH:MM"),
        ("24:00-02:00", "time of day"),
        ("02:60-03:00", "time of day"),
        ("2:00-14:00", "time of day"),
        ("02:00-14:00:00", "time of day"),
        (750, "HH:MM-HH:MM"),
        (None, "HH:MM-HH:MM"),
    ],
)
def test_window_rejects(text: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_window(text)


@pytest.mark.parametrize(
    ("window", "local", "inside"),
    [
        ("02:00-14:00", "2026-03-10 01:59:59", False),
        ("02:00-14:00", "2026-03-10 02:00:00", True),
        ("02:00-14:00", "2026-03-10 13:59:59", True),
        ("02:00-14:00", "2026-03-10 14:00:00", False),
        ("22:00-06:00", "2026-03-10 23:00:00", True),
        ("22:00-06:00", "2026-03-10 03:00:00", True),
        ("22:00-06:00", "2026-03-10 06:00:00", False),
        ("22:00-06:00", "2026-03-10 12:00:00", False),
    ],
)
def test_inside_uses_local_wall_time(window: str, local: str, inside: bool) -> None:
    assert parse_window(window).inside(at(local, PARIS), PARIS) is inside


@pytest.mark.parametrize(
    ("window", "tz", "now", "start_utc", "end_utc"),
    [
        # Paris is UTC+1 in winter.
        ("02:00-14:00", PARIS, "2026-01-10 01:00", "2026-01-10 01:00:00", "2026-01-10 13:00:00"),
        ("02:00-14:00", PARIS, "2026-01-10 02:00", "2026-01-11 01:00:00", "2026-01-10 13:00:00"),
        ("02:00-14:00", PARIS, "2026-01-10 15:00", "2026-01-11 01:00:00", "2026-01-11 13:00:00"),
        ("22:00-06:00", PARIS, "2026-01-10 23:00", "2026-01-11 21:00:00", "2026-01-11 05:00:00"),
        # Spring forward in New York (2026-03-08, 02:00 -> 03:00 EDT): 02:30 never shows, the
        # window opens when the clock jumps, 03:00 EDT = 07:00 UTC.
        ("02:30-05:00", NY, "2026-03-08 00:00", "2026-03-08 07:00:00", "2026-03-08 09:00:00"),
        # Fall back (2026-11-01, 02:00 EDT -> 01:00 EST): the first 01:30 counts (EDT, UTC-4).
        ("01:30-04:00", NY, "2026-11-01 00:00", "2026-11-01 05:30:00", "2026-11-01 09:00:00"),
        # An ordinary day in New York for comparison (EST, UTC-5).
        ("02:30-05:00", NY, "2026-01-10 00:00", "2026-01-10 07:30:00", "2026-01-10 10:00:00"),
    ],
)
def test_next_start_and_end(window: str, tz: Any, now: str, start_utc: str, end_utc: str) -> None:
    w = parse_window(window)
    t = at(now, tz)
    assert utc(w.next_start(t, tz)) == start_utc
    assert utc(w.next_end(t, tz)) == end_utc
    assert w.inside(w.next_start(t, tz), tz)
    assert not w.inside(w.next_end(t, tz), tz)


def test_repeated_hour_reads_as_inside_again_until_the_second_end() -> None:
    # Window ending at 01:30 on the fall-back night: closed at the first 01:30 (EDT), open again
    # from the repeated 01:00 (EST), as documented.
    w = parse_window("22:00-01:30")
    first_end = w.next_end(at("2026-10-31 23:00", NY), NY)
    assert utc(first_end) == "2026-11-01 05:30:00"
    assert not w.inside(first_end, NY)
    assert w.inside(first_end + 30 * 60, NY)  # 01:00 EST
    assert utc(w.next_end(first_end, NY)) == "2026-11-01 06:30:00"


# --------------------------------------------------------------------------- manifest


def manifest_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "edge": "e1",
        "site": "paris",
        "version": "0123456789abcdef",
        "generated_at": 1765000000.0,
        "capacity": 1000,
        "bytes": 30,
        "peers": [{"edge": "e2", "url": "http://127.0.0.12:8080"}],
        "objects": [
            {
                "key": "t1",
                "path": "/v/t1/1080p/seg00001.m4s",
                "size": 10,
                "xxh64": "00000000000000aa",
                "score": 5.0,
                "holders": ["e1", "e2"],
            },
            {
                "key": "t2",
                "path": "/v/t2/720p/seg00001.m4s",
                "size": 20,
                "xxh64": "00000000000000bb",
                "score": 2,
                "holders": ["e2", "e1"],
            },
        ],
    }
    doc.update(over)
    return doc


def test_manifest_parses() -> None:
    m = parse_manifest(manifest_doc())
    assert (m.edge, m.site, m.version, m.capacity, m.bytes) == (
        "e1",
        "paris",
        "0123456789abcdef",
        1000,
        30,
    )
    assert m.peers[0].url == "http://127.0.0.12:8080"
    assert m.objects[1] == FillObject(
        "t2", "/v/t2/720p/seg00001.m4s", 20, "00000000000000bb", 2.0, ("e2", "e1")
    )


def broken(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(manifest_doc())
    target: Any = doc
    for p in path[:-1]:
        target = target[p]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (["version"], "0123", "version"),
        (["version"], "0123456789ABCDEF", "version"),
        (["edge"], KeyError, "edge: missing"),
        (["edge"], "bad name!", "edge"),
        (["capacity"], -1, "capacity"),
        (["capacity"], True, "capacity"),
        (["generated_at"], "now", "generated_at"),
        (["objects"], {}, "objects: expected a list"),
        (["objects", 0, "size"], -5, r"objects\[0\].size"),
        (["objects", 0, "size"], 1.5, r"objects\[0\].size"),
        (["objects", 0, "xxh64"], "xyz", r"objects\[0\].xxh64"),
        (["objects", 0, "path"], 7, r"objects\[0\].path: expected a string"),
        (["objects", 0, "holders"], ["e1", "e1"], "twice"),
        (["objects", 0, "score"], float("nan"), "score"),
        (["objects", 0], "x", "expected an object"),
        (["peers", 0, "edge"], "e1", "twice"),
    ],
)
def test_manifest_rejects(path: list[Any], value: Any, fragment: str) -> None:
    with pytest.raises(ManifestError, match=fragment):
        parse_manifest(broken(path, value))


LONG = "/v/t1/" + "é" * 510  # 1026 bytes of UTF-8, 516 characters


@pytest.mark.parametrize(
    ("key", "path", "fragment"),
    [
        # One bad file name costs that file only, not the night (it used to reject the whole
        # manifest, or pass here and then fail the night when the peer token was signed).
        ("t1", "/v/t1/movie..final.mp4", "contains '..'"),
        ("t1", "/v/t1/a../b.mp4", "contains '..'"),
        ("t1", "/v/t1/../t2/x", r"'\.\.'"),
        ("t1", "/v/t2/x.m4s", "not a file under /v/t1/"),
        ("t1", "/etc/passwd", "not a file under"),
        ("t1", "/v/t1/a%2e.m4s", "forbidden"),
        ("t1", "/v/t1/a\\b.m4s", "forbidden"),
        ("t1", "/v/t1/a\x00b.m4s", "forbidden"),
        ("t1", "/v/t1//a.m4s", "empty"),
        ("t1", "/v/t1/./a.m4s", "'.'"),
        ("t1", "/v/t1/", "not a file"),
        ("t1", "/v/t1/\ud800.m4s", "forbidden"),
        ("t1", LONG, "1024 bytes"),
        ("a..b", "/v/a..b/x.m4s", "contains '..'"),
        ("t 1", "/v/t 1/x.m4s", r"objects\[0\].key"),
    ],
)
def test_manifest_skips_an_object_it_cannot_fill(key: str, path: str, fragment: str) -> None:
    doc = broken(["objects", 0, "path"], path)
    doc["objects"][0]["key"] = key
    m = parse_manifest(doc)
    assert [o.path for o in m.objects] == ["/v/t2/720p/seg00001.m4s"]
    assert [(sk.what, sk.reason) for sk in m.skipped] == [(path, SKIP_BAD_PATH)]
    assert re.search(fragment, m.skipped[0].detail), m.skipped[0].detail


@pytest.mark.parametrize(
    "name",
    [
        "movie..final.mp4",
        "movie.final.mp4",
        "a.b.c",
        "..",
        "...",
        ".hidden",
        "x.",
        "~a",
        "é" * 400,
        "é" * 600,
        "a%b",
        "a//b",
        "a/./b",
        "a\\b",
        "a b",
        "a?b",
        "a#b",
        "\ud800",
        "x" * 1010,
        "x" * 1030,
    ],
)
def test_every_path_a_manifest_keeps_can_be_signed_for_a_peer(name: str) -> None:
    # The manifest path rule must refuse at least what the peer token refuses.
    doc = broken(["objects", 0, "path"], f"/v/t1/{name}")
    kept = [o.path for o in parse_manifest(doc).objects]
    signable = True
    try:
        sign(KEYS, f"/v/t1/{name}", 10**9)
    except ValueError:
        signable = False
    if f"/v/t1/{name}" in kept:
        assert signable, name


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.12:8080", "http://127.0.0.12:8080"),
        ("http://edge2:8080/cdn", "http://edge2:8080/cdn"),  # steering accepts a path prefix
        ("http://edge2:8080/cdn/", "http://edge2:8080/cdn"),
        ("https://edge2.example/a/b-c_d.e~f", "https://edge2.example/a/b-c_d.e~f"),
        ("https://[2001:db8::1]:8443/cdn", "https://[2001:db8::1]:8443/cdn"),
        ("http://edge2/", "http://edge2"),
    ],
)
def test_peer_url_may_have_a_path_prefix(url: str, expected: str) -> None:
    m = parse_manifest(broken(["peers", 0, "url"], url))
    assert m.peers == (Peer("e2", expected),) and m.skipped == ()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "http://user:secret@edge2:8080",
        "http://edge2:8080/cdn?x=1",
        "http://edge2:8080/cdn#x",
        "http://edge2:99999",
        "http://edge2/../x",
        "http://edge2/a b",
        "http:///cdn",
        "edge2:8080",
        KeyError,  # no url at all
    ],
)
def test_a_peer_url_it_cannot_use_leaves_out_that_peer_only(url: Any) -> None:
    m = parse_manifest(broken(["peers", 0, "url"], url))
    assert m.peers == ()
    assert [(sk.what, sk.reason) for sk in m.skipped] == [("e2", SKIP_BAD_PEER)]
    assert len(m.objects) == 2
    # Its objects are still planned, from parents and the origin.
    assert [w.peers for w in plan_work(m, "e1", lambda o: False)] == [(), ()]


def test_manifest_rejects_duplicates_and_too_many_objects() -> None:
    doc = manifest_doc()
    doc["objects"].append(dict(doc["objects"][0]))
    with pytest.raises(ManifestError, match="duplicate"):
        parse_manifest(doc)
    with pytest.raises(ManifestError, match="more than 1"):
        parse_manifest(manifest_doc(), max_objects=1)
    with pytest.raises(ManifestError, match="JSON object"):
        parse_manifest([])


# --------------------------------------------------------------------------- work order


def obj(path: str, score: float, holders: tuple[str, ...], size: int = 10) -> dict[str, Any]:
    key = path.split("/")[2]
    return {
        "key": key,
        "path": path,
        "size": size,
        "xxh64": "0" * 16,
        "score": score,
        "holders": list(holders),
    }


def test_work_order_first_holder_first_then_peers_first_holders() -> None:
    m = parse_manifest(
        manifest_doc(
            peers=[
                {"edge": "e2", "url": "http://127.0.0.2:1"},
                {"edge": "e3", "url": "http://127.0.0.3:1"},
            ],
            objects=[
                obj("/v/a/x", 1.0, ("e1",)),
                obj("/v/b/x", 9.0, ("e2", "e1")),
                obj("/v/c/x", 5.0, ("e1", "e3")),
                obj("/v/d/x", 5.0, ("e1",)),
                obj("/v/e/x", 7.0, ("e3", "e2", "e1")),
                obj("/v/f/x", 8.0, ("e1",)),
            ],
        )
    )
    done = {"/v/f/x"}
    work = plan_work(m, "e1", lambda o: o.path in done)
    assert [(w.obj.path, w.peers) for w in work] == [
        ("/v/c/x", ("e3", "e2")),  # 5.0, path order breaks the tie with d
        ("/v/d/x", ("e2", "e3")),
        ("/v/a/x", ("e2", "e3")),
        ("/v/b/x", ("e2", "e3")),  # a peer is first holder: ask it first
        ("/v/e/x", ("e3", "e2")),
    ]
    assert plan_work(m, "e1", lambda o: True) == []


@pytest.mark.parametrize(
    ("size", "slice_size", "count"), [(0, 4, 1), (1, 4, 1), (4, 4, 1), (5, 4, 2), (9, 4, 3)]
)
def test_slice_count(size: int, slice_size: int, count: int) -> None:
    assert slice_count(size, slice_size) == count


# --------------------------------------------------------------------------- rate


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("rate", "burst", "steps", "waits"),
    [
        # (advance clock by, take n) -> wait
        (100.0, 50, [(0, 50), (0, 50)], [0.0, 0.5]),
        (100.0, 50, [(0, 100)], [0.5]),
        (100.0, 50, [(0, 100), (0.5, 0), (0, 50)], [0.5, 0.0, 0.5]),
        (100.0, 50, [(10, 50), (0, 10)], [0.0, 0.1]),  # never more than the burst saved up
        (None, 0, [(0, 10**9)], [0.0]),
        (10.0, 0, [(0, 1), (0.1, 1)], [0.1, 0.1]),
    ],
)
def test_token_bucket(
    rate: float | None, burst: int, steps: list[tuple[float, int]], waits: list[float]
) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock)
    got = []
    for advance, n in steps:
        clock.t += advance
        got.append(round(bucket.take(n), 6))
    assert got == waits


def test_token_bucket_bound_over_a_long_run() -> None:
    # A caller that sleeps what it is told takes at least (bytes - burst) / rate.
    clock = Clock()
    bucket = TokenBucket(1000.0, 300, clock)
    start = clock.t
    for _ in range(50):
        clock.t += bucket.take(64)
    assert clock.t - start >= (50 * 64 - 300) / 1000.0 - 1e-9
    assert clock.t - start <= (50 * 64 - 300) / 1000.0 + 1e-6


def test_token_bucket_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 10, Clock())
    with pytest.raises(ValueError):
        TokenBucket(10, -1, Clock())


# --------------------------------------------------------------------------- progress


def test_within_capacity_keeps_the_most_popular_that_fit() -> None:
    def o(path: str, size: int, score: float) -> FillObject:
        return FillObject(path.split("/")[2], path, size, "0" * 16, score, ("e1",))

    objects = [
        o("/v/a/x", 40, 1.0),
        o("/v/b/x", 50, 9.0),
        o("/v/c/x", 30, 5.0),
        o("/v/d/x", 5, 0.5),
    ]
    # Manifest capacity 85 bytes: b (50) and c (30) fit; a (40) does not; d (5) still does.
    kept, over = within_capacity(objects, 85, 10**9, 1000)
    assert [x.path for x in kept] == ["/v/b/x", "/v/c/x", "/v/d/x"]
    assert [x.path for x in over] == ["/v/a/x"]
    # The store's capacity counts slice headers: 50 + 256 + 6 bytes for b alone.
    kept, over = within_capacity(objects, 10**9, 400, 1000)
    assert [x.path for x in kept] == ["/v/b/x"]
    assert disk_bytes(objects[1], 1000) == 312
    assert within_capacity(objects, 10**9, 10**9, 1000) == (objects, [])
    assert within_capacity(objects, 0, 10**9, 1000) == ([], objects)
    m = parse_manifest(manifest_doc())
    kept, _ = within_capacity(m.objects, 20, 10**9, 1000)  # t1 (10 bytes, score 5) fits
    assert [w.obj.path for w in plan_work(m, "e1", lambda x: False, kept)] == [
        "/v/t1/1080p/seg00001.m4s"
    ]


def test_progress_and_left_objects() -> None:
    m = parse_manifest(manifest_doc())
    p = progress(m.objects, {"/v/t2/720p/seg00001.m4s", "/v/elsewhere/x"})
    assert (p.objects_total, p.objects_done, p.bytes_total, p.bytes_done) == (2, 1, 30, 20)
    assert (p.objects_left, p.bytes_left) == (1, 10)
    new = parse_manifest(manifest_doc(objects=[obj("/v/t1/1080p/seg00001.m4s", 1, ("e1",))]))
    assert [o.path for o in left_paths(m.objects, new.objects)] == ["/v/t2/720p/seg00001.m4s"]
