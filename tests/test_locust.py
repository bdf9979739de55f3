"""The locust load tests (loadtests/locustfiles/): their pure parts by tables, and a smoke-sized
headless run of each locustfile against a real local fleet.

Locust monkey-patches the process with gevent when imported, so it never is here: the pure
modules (thresholds.py, workload.py) import neither locust nor gevent, and every run is a
``locust`` subprocess. One fleet serves the whole module; the runs start together when the
fleet is ready and each test waits for its own run's exit, so the module costs one fleet
start plus its longest run. Failures: any failed request fails a run (``--exit-code-on-error
1``), and each run's CSV must show every request name it should, with no failure.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import os
import random
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from loadtests.locustfiles import thresholds as th
from loadtests.locustfiles import workload as wl

from .conftest import ROOT
from .fleet_process import started_fleet

LOCUST = Path(sys.executable).with_name("locust")
LOCUSTFILES = ROOT / "loadtests" / "locustfiles"


# -- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {}),
        ("GET segment=800", {"GET segment": 800.0}),
        (
            "GET segment=800, POST /v1/playback=300 ,",
            {"GET segment": 800.0, "POST /v1/playback": 300.0},
        ),
        ("GET  /v1/titles/{id}=1.5", {"GET /v1/titles/{id}": 1.5}),
        ("POST /v1/sessions=off", {"POST /v1/sessions": None}),
        ("PLAY startup=0", {"PLAY startup": 0.0}),
    ],
)
def test_p95_spec(spec: str, expected: dict[str, float | None]) -> None:
    assert th.parse_p95(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("GET segment", "expected NAME=MILLISECONDS"),
        ("=800", "expected NAME=MILLISECONDS"),
        ("GET segment=fast", "'fast' is not milliseconds or 'off'"),
        ("GET segment=-1", "must be a number of milliseconds >= 0"),
        ("GET segment=nan", "must be a number of milliseconds >= 0"),
        ("GET segment=1,GET segment=2", "'GET segment' is given twice"),
    ],
)
def test_p95_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        th.parse_p95(spec)


def row(name: str, requests: int = 100, failures: int = 0, p95: float = 10, method: str = "GET"):
    return th.Row(method, name, requests, failures, p95)


@pytest.mark.parametrize(
    ("rows", "t", "expected"),
    [
        ([row("GET segment")], th.Thresholds(), []),
        ([], th.Thresholds(), ["the run made no request at all"]),
        ([row("GET segment", requests=0)], th.Thresholds(), ["the run made no request at all"]),
        # 1 of 100 is 1.00%: at the limit, not above it.
        ([row("a", failures=1)], th.Thresholds(max_error_rate=1), []),
        # Rate-limited sign-ins are waits, not work: neither requests nor errors.
        (
            [row("POST /v1/sessions (429 rate limited)", requests=3, method="POST")],
            th.Thresholds(),
            ["the run made no request at all (3 sign-in attempts were rate limited)"],
        ),
        (
            [row("a", failures=1), row("POST /v1/sessions (429 rate limited)", requests=900)],
            th.Thresholds(max_error_rate=0.5),
            ["error rate 1.00% (1 of 100 requests) is above --max-error-rate 0.5%"],
        ),
        (
            [row("a", failures=2), row("b", requests=100)],
            th.Thresholds(max_error_rate=0.5),
            ["error rate 1.00% (2 of 200 requests) is above --max-error-rate 0.5%"],
        ),
        (
            [row("GET segment", p95=2100)],
            th.Thresholds(),
            ["p95 of 'GET segment' (GET) is 2100 ms, above 2000 ms (--p95-default; 100 requests)"],
        ),
        ([row("GET segment", p95=2100)], th.Thresholds(p95_default_ms=None), []),
        (
            [row("GET segment", p95=900), row("GET playlist", p95=900)],
            th.Thresholds(p95_ms={"GET segment": 800}),
            [
                "p95 of 'GET segment' (GET) is 900 ms, above 800 ms (--p95 GET segment; 100 requests)"
            ],
        ),
        # "METHOD name" matches an entry named by its path alone.
        (
            [row("/v1/search", p95=50)],
            th.Thresholds(p95_ms={"GET /v1/search": 0}),
            ["p95 of '/v1/search' (GET) is 50 ms, above 0 ms (--p95 GET /v1/search; 100 requests)"],
        ),
        (
            [row("POST /v1/sessions", p95=5000)],
            th.Thresholds(p95_ms={"POST /v1/sessions": None}),
            [],
        ),
        (
            [row("GET segment")],
            th.Thresholds(p95_ms={"GET segmnt": 100}),
            ["p95 of 'GET segmnt': no request of that name was made (a typo?)"],
        ),
        (
            [row("GET b", p95=3000, failures=50), row("GET a", p95=2500)],
            th.Thresholds(),
            [
                "error rate 25.00% (50 of 200 requests) is above --max-error-rate 1%",
                "p95 of 'GET a' (GET) is 2500 ms, above 2000 ms (--p95-default; 100 requests)",
                "p95 of 'GET b' (GET) is 3000 ms, above 2000 ms (--p95-default; 100 requests)",
            ],
        ),
    ],
)
def test_thresholds(rows: list[th.Row], t: th.Thresholds, expected: list[str]) -> None:
    assert th.evaluate(rows, t) == expected


# -- the workload's arithmetic ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "alpha"), [(1, 0.8), (5, 0.0), (100, 0.8), (1000, 1.0)])
def test_zipf_probabilities(n: int, alpha: float) -> None:
    z = wl.Zipf(n, alpha)
    p = [z.probability(r) for r in range(n)]
    assert sum(p) == pytest.approx(1.0)
    harmonic = sum(1 / (r + 1) ** alpha for r in range(n))
    assert p[0] == pytest.approx(1 / harmonic)
    assert all(a >= b for a, b in itertools.pairwise(p))  # popularity falls with rank
    if alpha == 0:
        assert p == pytest.approx([1 / n] * n)


def test_zipf_draws_follow_the_law() -> None:
    z = wl.Zipf(50, 1.0)
    rng = random.Random(7)
    draws = [z.pick(rng) for _ in range(40_000)]
    assert min(draws) >= 0 and max(draws) < 50
    for rank in (0, 1, 9):
        share = draws.count(rank) / len(draws)
        assert share == pytest.approx(z.probability(rank), abs=0.01), rank


@pytest.mark.parametrize(("n", "alpha"), [(0, 1.0), (3, -0.5), (3, float("inf"))])
def test_zipf_refuses(n: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        wl.Zipf(n, alpha)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("steer=5,search=2", {"steer": 5.0, "search": 2.0}),
        (" steer = 1 , fleet=0 ", {"steer": 1.0, "fleet": 0.0}),
    ],
)
def test_mix(spec: str, expected: dict[str, float]) -> None:
    assert wl.parse_mix(spec, ("steer", "search", "fleet")) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("steer", "expected NAME=WEIGHT"),
        ("stear=1", "unknown operation 'stear'"),
        ("steer=x", "'x' is not a number"),
        ("steer=-1", "a weight must be a number >= 0"),
        ("steer=1,steer=2", "'steer' is given twice"),
        ("steer=0", "no operation has a weight above 0"),
        ("", "no operation has a weight above 0"),
    ],
)
def test_mix_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wl.parse_mix(spec, ("steer", "search"))


def test_weighted_choice_follows_the_weights() -> None:
    w = wl.Weighted({"a": 3.0, "b": 1.0, "never": 0.0})
    rng = random.Random(3)
    picks = [w.pick(rng) for _ in range(20_000)]
    assert "never" not in picks
    assert picks.count("a") / len(picks) == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", (0.0, 0.0)), ("2", (2.0, 2.0)), ("1-5", (1.0, 5.0)), (" 0.5-0.5 ", (0.5, 0.5))],
)
def test_seconds_range(text: str, expected: tuple[float, float]) -> None:
    assert wl.parse_seconds_range(text, "--think-time") == expected


@pytest.mark.parametrize("text", ["", "a", "5-1", "-1", "1-x", "inf"])
def test_seconds_range_errors(text: str) -> None:
    with pytest.raises(ValueError, match="--think-time"):
        wl.parse_seconds_range(text, "--think-time")


def test_accounts_file() -> None:
    text = "email,password\n# the test accounts\na@x.test, pw-1,with,commas\n\nB@x.test,pw2\n"
    assert wl.parse_accounts(text, "acc.csv") == [
        ("a@x.test", "pw-1,with,commas"),
        ("B@x.test", "pw2"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a@x.test\n", "acc.csv:1: expected 'email,password'"),
        ("a@x.test,pw\nnobody,pw\n", "acc.csv:2: 'nobody' is not an e-mail address"),
        ("a@x.test,pw\nA@X.test,other\n", "acc.csv:2: 'A@X.test' is listed twice"),
        ("# nothing\n", "acc.csv: no accounts in it"),
        ("a@x.test,\n", "acc.csv:1: expected"),
    ],
)
def test_accounts_file_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        wl.parse_accounts(text, "acc.csv")
    assert str(exc.value).startswith(message)
    assert "pw" not in str(exc.value).replace("password", "")  # passwords are never quoted


def test_paths_file() -> None:
    text = "/v/t1/240p/seg00001.m4s 1234\n# comment\n/v/t_2/audio/init.mp4\n"
    assert wl.parse_paths(text, "p.txt") == [
        ("/v/t1/240p/seg00001.m4s", 1234),
        ("/v/t_2/audio/init.mp4", None),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/x/t1/a.m4s\n", "p.txt:1: expected '/v/<title>/<file> [size]'"),
        ("/v/t1/a.m4s ten\n", "p.txt:1: size 'ten' is not a number of bytes"),
        ("/v/t1/a.m4s 1 2\n", "p.txt:1: expected"),
        ("/v/t1/../x/a.m4s\n", "p.txt:1: expected"),
        ("/v/t1/a.m4s?x=1\n", "p.txt:1: expected"),
        ("", "p.txt: no paths in it"),
    ],
)
def test_paths_file_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        wl.parse_paths(text, "p.txt")
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize(
    ("n", "count"), [(10, 1), (10, 3), (2, 4), (0, 2)]
)  # every item in exactly one share
def test_shards_partition(n: int, count: int) -> None:
    items = list(range(n))
    shares = [wl.shard(items, i, count) for i in range(count)]
    assert sorted(x for s in shares for x in s) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize(("index", "count"), [(1, 1), (-1, 2), (0, 0)])
def test_shard_refuses(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        wl.shard([1, 2], index, count)


@pytest.mark.parametrize(
    ("streams", "count", "shares"),
    [(4, 1, [4]), (4, 2, [2, 2]), (4, 3, [2, 1, 1]), (4, 4, [1, 1, 1, 1]), (2, 3, [1, 1, 0])],
)
def test_streams_share_keeps_the_plan_s_limit(streams: int, count: int, shares: list[int]) -> None:
    assert [wl.streams_share(streams, i, count) for i in range(count)] == shares


@pytest.mark.parametrize(
    ("kbps", "expected"),
    [(3000, 2), (2500, 2), (1300, 1), (900, 0), (920, 0), (921, 1), (100, 0), (10_000, 2)],
)
def test_closest_variant(kbps: float, expected: int) -> None:
    # The local fleet's ladder (518, 1322 and 2525 kbit/s). 920 is as far from 518 as from
    # 1322: a tie goes to the lower one.
    assert wl.closest_variant([518_000, 1_322_000, 2_525_000], kbps) == expected


@pytest.mark.parametrize(
    ("level", "buffer", "segment", "speed", "wait"),
    [
        (0.0, 30, 4, 1, 0.0),  # empty buffer: at once
        (26.0, 30, 4, 1, 0.0),  # exactly room for one more segment
        (30.0, 30, 4, 1, 4.0),  # full: one segment's playout time
        (30.0, 30, 4, 4, 1.0),  # at 4x a segment drains in a quarter of its duration
        (2.0, 2, 4, 1, 2.0),  # a buffer below one segment: wait until it is empty
        (10.0, 30, 2, 0.5, 0.0),
    ],
)
def test_pacing(level: float, buffer: float, segment: float, speed: float, wait: float) -> None:
    assert wl.fetch_wait(level, buffer, segment, speed) == pytest.approx(wait)


def test_pacing_consumes_the_bitrate() -> None:
    """Once the buffer is full, a viewer fetching as fetch_wait says gets one segment per
    segment duration / speed: it downloads what it plays, at the variant's bitrate x speed."""
    speed, segment, buffer = 2.0, 4.0, 12.0
    now, level, fetches = 0.0, 0.0, []
    for _ in range(20):
        wait = wl.fetch_wait(level, buffer, segment, speed)
        now += wait
        level = max(0.0, level - wait * speed) + segment  # instant downloads
        fetches.append(now)
    gaps = [b - a for a, b in itertools.pairwise(fetches[5:])]
    assert gaps == pytest.approx([segment / speed] * len(gaps))


@pytest.mark.parametrize(
    ("asked", "cap", "every"), [(40.0, 0.0, 40.0), (40.0, 1.0, 1.0), (10.0, 60.0, 10.0)]
)
def test_heartbeat_interval(asked: float, cap: float, every: float) -> None:
    assert wl.heartbeat_every(asked, cap) == every


@pytest.mark.parametrize(
    ("size", "n", "expected"),
    [(None, 100, (0, 99)), (50, 100, (0, 49)), (100, 100, (0, 99)), (1, 1, (0, 0))],
)
def test_range_fixed(size: int | None, n: int, expected: tuple[int, int]) -> None:
    assert wl.random_range(size, n, random.Random(1)) == expected


def test_range_random_inside_the_object() -> None:
    rng = random.Random(5)
    for _ in range(1000):
        start, end = wl.random_range(1000, 64, rng)
        assert start >= 0 and end <= 999 and end - start + 1 == 64


@pytest.mark.parametrize(
    ("header", "start", "end", "size", "body", "problem"),
    [
        ("bytes 0-99/1000", 0, 99, 1000, 100, None),
        ("bytes 0-49/50", 0, 99, None, 50, None),  # a short object ends the range early
        ("bytes 10-19/*", 10, 19, None, 10, None),
        (None, 0, 99, 1000, 100, "Content-Range None is not 'bytes a-b/size'"),
        ("bytes 1-100/1000", 0, 99, 1000, 100, "Content-Range 1-100 is not the asked 0-99"),
        ("bytes 0-99/999", 0, 99, 1000, 100, "Content-Range total 999 is not the object's"),
        ("bytes 0-99/1000", 0, 99, 1000, 98, "body of 98 bytes for a range of 100"),
    ],
)
def test_content_range(
    header: str | None, start: int, end: int, size: int | None, body: int, problem: str | None
) -> None:
    found = wl.check_content_range(header, start, end, size, body)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_random_address_is_a_host_of_the_networks() -> None:
    import ipaddress

    nets = ["127.0.3.0/24", "2001:db8::/126", "198.51.100.7/32"]
    rng = random.Random(2)
    for _ in range(300):
        a = ipaddress.ip_address(wl.random_address(rng, nets))
        net = next(n for n in map(ipaddress.ip_network, nets) if a in n)
        if net.prefixlen == 24:
            assert a not in (net.network_address, net.broadcast_address)


def test_cold_walk_asks_each_object_once_per_pass() -> None:
    walk = wl.ColdWalk(list("abcde"), random.Random(4))
    first = [walk.next() for _ in range(5)]
    assert sorted(first) == list("abcde") and walk.exhausted and walk.passes == 1
    assert sorted(walk.next() for _ in range(5)) == list("abcde") and walk.passes == 2
    with pytest.raises(IndexError):
        wl.ColdWalk([], random.Random(0)).next()


@pytest.mark.parametrize(
    ("name", "choices"),
    [("Opencdn Demo", {"Opencdn", "Demo"}), ("A Big Night Out", {"Night", "Big"}), ("!", {"!"})],
)
def test_search_word(name: str, choices: set[str]) -> None:
    rng = random.Random(0)
    assert {wl.search_word(name, rng) for _ in range(50)} == choices


# -- smoke runs against a real fleet ---------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str  # stdout and stderr
    stats: dict[str, dict[str, str]]  # the CSV's rows by name (with "Aggregated")
    html: Path


async def locust(tmp: Path, name: str, locustfile: str, *args: str, timeout: float = 90) -> Run:
    """One headless locust run as a subprocess, its CSV and HTML reports under ``tmp``."""
    prefix = tmp / name
    # No LOCUST_* from the caller's environment, and no PYTHONPATH: the locustfiles must find
    # the product on their own, as they do from any directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_") and k != "PYTHONPATH"}
    proc = await asyncio.create_subprocess_exec(
        str(LOCUST), "-f", str(LOCUSTFILES / locustfile), "--headless", "--only-summary",
        "--csv", str(prefix), "--html", f"{prefix}.html", *args,
        cwd=tmp, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stats: dict[str, dict[str, str]] = {}
    csv_file = Path(f"{prefix}_stats.csv")
    if csv_file.exists():
        with open(csv_file, newline="") as f:
            stats = {r["Name"]: r for r in csv.DictReader(f)}
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(errors="replace"), stats, Path(f"{prefix}.html"))


async def worker(tmp: Path, locustfile: str, port: int, timeout: float = 90) -> tuple[int, str]:
    """A ``locust --worker`` of a distributed run: its exit status and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_") and k != "PYTHONPATH"}
    proc = await asyncio.create_subprocess_exec(
        str(LOCUST), "-f", str(LOCUSTFILES / locustfile), "--worker",
        "--master-host", "127.0.0.1", "--master-port", str(port),
        cwd=tmp, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def distributed(tmp: Path, name: str, locustfile: str, *args: str) -> tuple[Run, list]:
    """A master (``--expect-workers 2``, on a free port) and its two workers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = asyncio.ensure_future(
        locust(
            tmp, name, locustfile, "--master", "--expect-workers", "2",
            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), *args,
        )
    )  # fmt: skip
    workers = [asyncio.ensure_future(worker(tmp, locustfile, port)) for _ in range(2)]
    try:
        return await master, await asyncio.gather(*workers)
    finally:
        for t in (master, *workers):
            t.cancel()
        await asyncio.gather(master, *workers, return_exceptions=True)


def assert_clean(run: Run, expected: set[str], allowed: set[str] = frozenset()) -> None:
    """Exit 0, every expected name with requests and no failure, no unexpected name (names
    are route templates: a name per URL would be a bug), both reports written."""
    assert run.code == 0, run.out[-6000:]
    names = set(run.stats) - {"Aggregated"}
    assert expected <= names, (expected - names, run.out[-3000:])
    assert names <= expected | allowed, names - expected - allowed
    for name in names:
        r = run.stats[name]
        assert int(r["Request Count"]) > 0, name
        assert int(r["Failure Count"]) == 0, (name, run.out[-3000:])
    assert int(run.stats["Aggregated"]["Failure Count"]) == 0
    assert "thresholds passed" in run.out, run.out[-3000:]
    html = run.html.read_text()
    assert "<html" in html.lower() and "Locust" in html


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """One fleet (the small sample: one 4 s title, 2 s segments, one rendition and its
    audio), then every run of this module at once; each test awaits its own."""
    tmp = tmp_path_factory.mktemp("locust")
    async with started_fleet(tmp) as (_, state):
        demo = ["--email", state["demo_email"], "--password-file", state["demo_password_file"]]
        control, steering = state["control_url"], state["steering_url"]
        edge = state["services"]["e2"]["health_url"].removesuffix("/healthz")
        title = state["sample_title"]
        keys = ["--signing-keys", state["signing_keys_file"]]
        secrets = Path(state["demo_password_file"]).parent
        # Any failed request fails a smoke run; the p95 limit is loose, as CI machines are
        # slow and busy (the thresholds themselves are tested by the two runs below).
        smoke = ["--exit-code-on-error", "1", "--stop-timeout", "10", "--seed", "1"]
        smoke += ["--p95-default", "10000"]
        paths = tmp / "paths.txt"
        paths.write_text(f"/v/{title}/180p/seg00001.m4s\n/v/{title}/180p/nope.m4s\n")
        ops = ["steer", "steering_hls", "steering_dash", "fleet", "steering_healthz", "home"]
        ops += ["browse", "title", "search", "autocomplete", "genres", "control_healthz"]
        every_op = ",".join(f"{op}=1" for op in ops)
        jobs = {
            "viewers": locust(
                tmp, "viewers", "viewers.py", "-u", "2", "-r", "2", "--run-time", "6s",
                "-H", control, *demo, *smoke, "--speed", "4", "--heartbeat-interval", "0.3",
                "--think-time", "0-0.2",
            ),
            "edge": locust(
                tmp, "edge", "segments.py", "-u", "2", "-r", "2", "--run-time", "4s",
                "-H", edge, *keys, *smoke, "--titles", title, "--hot-objects", "1",
                "--hit-ratio", "0.7", "--range-bytes", "4096", "--range-share", "0.5",
                "--wait", "0.01-0.03",
            ),
            "apis": locust(
                tmp, "apis", "apis.py", "-u", "2", "-r", "2", "--run-time", "4s",
                "-H", control, "--steering", steering, *demo, *smoke, "--mix", every_op,
                "--clients", "127.0.1.0/24,127.0.3.0/24,203.0.113.0/24",
                "--think-time", "0.01-0.03",
            ),
            # Impossible thresholds: exit 1 from the thresholds alone (locust's own exit code
            # on errors is 0 here). A viewer at a tenth of real time (the 4 s title plays for
            # 40 s), so its play is under way, all downloaded, when the run time ends: it
            # must stop at once, not at its play's end or the --stop-timeout.
            "p95": locust(
                tmp, "p95", "viewers.py", "-u", "1", "-r", "1", "--run-time", "3s",
                "-H", control, *demo, "--speed", "0.1", "--think-time", "0",
                "--stop-timeout", "30", "--exit-code-on-error", "0",
                "--p95", "POST /v1/sessions=0,GET /nowhere=100",
            ),
            # Distributed: a master and two workers, each worker on an account of its own
            # (--signup 1, paid by the administrator). Plays at speed 1 (4 s) are under way
            # when the run time ends: their stop events come during --stop-timeout, after the
            # master told the workers to quit, and must still be in the master's stats.
            "distributed": distributed(
                tmp, "distributed", "viewers.py", "-u", "2", "-r", "2", "--run-time", "5s",
                "-H", control, "--signup", "1", "--admin-email", "admin@opencdn.test",
                "--admin-password-file", str(secrets / "admin.password"), *smoke,
                "--think-time", "0-0.2",
            ),
            "errors": locust(
                tmp, "errors", "segments.py", "-u", "1", "-r", "1", "--run-time", "2s",
                "-H", edge, *keys, "--paths", str(paths), "--hot-objects", "2",
                "--hit-ratio", "1", "--wait", "0.02", "--exit-code-on-error", "0",
            ),
        }  # fmt: skip
        tasks = {name: asyncio.ensure_future(job) for name, job in jobs.items()}
        try:
            yield tasks
        finally:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)


# What every viewers.py run asks (request names are route templates), and the progress
# heartbeat, which short plays may not reach.
VIEWER_NAMES = frozenset(
    {
        "POST /v1/sessions",
        "GET /v1/profiles",
        "GET /v1/titles",
        "GET /v1/profiles/{id}/home",
        "GET /v1/autocomplete",
        "GET /v1/search",
        "GET /v1/titles/{id}",
        "POST /v1/playback",
        "GET master.m3u8",
        "GET media playlist",
        "GET audio playlist",
        "GET init segment",
        "GET segment",
        "GET audio segment",
        "POST /v1/playback/{id}/events [stop]",
        "PLAY startup",
    }
)
PROGRESS = "POST /v1/playback/{id}/events [progress]"


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_viewers_smoke(runs: dict[str, Any]) -> None:
    run: Run = await runs["viewers"]
    assert_clean(run, VIEWER_NAMES | {PROGRESS}, allowed={"PLAY rebuffer"})
    s = run.stats
    count = {name: int(r["Request Count"]) for name, r in s.items()}
    # Every play started was stopped (--stop-timeout lets the users end their plays), each
    # fetched the title's two video segments, but for the plays the run's end cut short (at
    # most one per user: they end at the next segment).
    plays = count["POST /v1/playback"]
    assert count["POST /v1/playback/{id}/events [stop]"] == plays
    assert 2 * (plays - 2) <= count["GET segment"] <= 2 * plays
    # One sign-in for the process: the two users share the demo account's session.
    assert count["POST /v1/sessions"] == 1


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_edge_smoke(runs: dict[str, Any]) -> None:
    run: Run = await runs["edge"]
    assert_clean(
        run, {"GET object [hot]", "GET object [cold]", "GET range [hot]", "GET range [cold]"}
    )
    assert "edge: measured hit ratio" in run.out
    # --hit-ratio 0.7: the share of requests for the hot set (a few hundred requests: 0.7 is
    # many standard deviations inside these bounds).
    count = {name: int(r["Request Count"]) for name, r in run.stats.items()}
    hot = count["GET object [hot]"] + count["GET range [hot]"]
    assert 0.55 <= hot / count["Aggregated"] <= 0.85, count
    # The sample's cold set (its other segments) is small: the walk runs out and says so.
    assert "event=cold_set_exhausted" in run.out


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_distributed_viewers_report_what_workers_did_while_stopping(
    runs: dict[str, Any],
) -> None:
    run, workers = await runs["distributed"]
    assert [code for code, _ in workers] == [0, 0], workers[0][1][-3000:] + workers[1][1][-3000:]
    assert_clean(run, VIEWER_NAMES, allowed={"PLAY rebuffer", PROGRESS})
    count = {name: int(r["Request Count"]) for name, r in run.stats.items()}
    # Each worker signed up its own account and signed in once.
    assert count["POST /v1/sessions"] == 2
    # The plays the run's end cut short sent their stop during --stop-timeout, after locust's
    # master would have stopped listening (0.5 s after its quit): still counted.
    assert count["POST /v1/playback/{id}/events [stop]"] == count["POST /v1/playback"], count


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_apis_smoke(runs: dict[str, Any]) -> None:
    run: Run = await runs["apis"]
    assert_clean(
        run,
        {
            "GET /v1/steer",
            "GET /v1/steering/hls",
            "GET /v1/steering/dash",
            "GET /fleet",
            "GET /healthz (steering)",
            "GET /v1/profiles/{id}/home",
            "GET /v1/titles",
            "GET /v1/titles/{id}",
            "GET /v1/search",
            "GET /v1/autocomplete",
            "GET /v1/genres",
            "GET /healthz (control)",
            "POST /v1/sessions",
            "GET /v1/profiles",
        },
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_an_impossible_p95_fails_the_run_and_is_named(runs: dict[str, Any]) -> None:
    run: Run = await runs["p95"]
    assert run.code == 1, run.out[-3000:]
    # Sign-in hashes with scrypt (16 MiB): its p95 is never 0 ms.
    assert "threshold failed: p95 of 'POST /v1/sessions' (POST) is " in run.out, run.out[-3000:]
    assert "threshold failed: p95 of 'GET /nowhere': no request of that name" in run.out
    assert int(run.stats["Aggregated"]["Failure Count"]) == 0  # the thresholds alone failed it


def log_time(out: str, text: str) -> datetime:
    """The time of locust's first log line holding ``text``."""
    line = next(x for x in out.splitlines() if text in x)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_playing_viewer_stops_when_the_run_time_ends(runs: dict[str, Any]) -> None:
    run: Run = await runs["p95"]
    count = {name: int(r["Request Count"]) for name, r in run.stats.items()}
    assert count["POST /v1/playback"] == 1, run.out[-3000:]
    assert count["POST /v1/playback/{id}/events [stop]"] == 1
    # It slept until its next heartbeat or its play's end (37 s here), then was killed at the
    # --stop-timeout (30 s): the run hung that long after its run time.
    ended = log_time(run.out, "--run-time limit reached")
    quit = log_time(run.out, "Shutting down (exit code")
    assert (quit - ended).total_seconds() < 10, run.out[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_an_error_rate_above_the_limit_fails_the_run(runs: dict[str, Any]) -> None:
    run: Run = await runs["errors"]
    assert run.code == 1, run.out[-3000:]
    failed = int(run.stats["Aggregated"]["Failure Count"])
    total = int(run.stats["Aggregated"]["Request Count"])
    assert 0 < failed < total  # the missing object fails, the present one does not
    assert "threshold failed: error rate " in run.out
    assert "is above --max-error-rate 1%" in run.out


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_cut_body_is_a_failure_and_does_not_stop_the_start(tmp_path: Path) -> None:
    """An edge that cuts answers short (it aborts the connection once the head is sent when an
    upstream fails): every such answer is a failed request, and the warm-up of the hot set,
    which meets the same cut, only warns (it raised http.client.IncompleteRead, no OSError, out
    of the test_start listener: the run then "made no request at all")."""
    body = b"x" * 1000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                cut = b"/cut.m4s" in head.split(b"\r\n", 1)[0]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Cache: HIT\r\n\r\n")
                writer.write(body[:500] if cut else body)
                await writer.drain()
                if cut:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "keys").write_text("k1 hex:" + "ab" * 32 + "\n")
    (tmp_path / "paths.txt").write_text("/v/t1/a/whole.m4s 1000\n/v/t1/a/cut.m4s 1000\n")
    try:
        run = await locust(
            tmp_path, "cut", "segments.py", "-u", "1", "-r", "1", "--run-time", "2s",
            "-H", f"http://127.0.0.1:{port}", "--signing-keys", str(tmp_path / "keys"),
            "--paths", str(tmp_path / "paths.txt"), "--hot-objects", "2", "--hit-ratio", "1",
            "--wait", "0.02", "--exit-code-on-error", "0",
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    assert "event=warm_failed path=/v/t1/a/cut.m4s" in run.out, run.out[-3000:]
    assert run.code == 1, run.out[-3000:]
    hot = run.stats["GET object [hot]"]
    assert 0 < int(hot["Failure Count"]) < int(hot["Request Count"]), run.out[-3000:]
    assert "threshold failed: error rate " in run.out
    failures = (tmp_path / "cut_failures.csv").read_text()
    assert "body of 500 bytes" in failures, failures


def test_a_bad_threshold_option_is_refused_before_anything_runs(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["LOCUST_P95"] = "GET segment=fast"  # the variable, as the README documents
    nowhere = "http://127.0.0.1:9"  # never reached: locust stops at the option
    args = ["-f", str(LOCUSTFILES / "apis.py"), "--headless", "-H", nowhere, "--steering", nowhere]
    out = subprocess.run(
        [str(LOCUST), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "locust: error: --p95 'GET segment=fast': 'fast' is not milliseconds or 'off'" in (
        out.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--signing-keys", "missing.keys", "--titles", "t1"], "missing.keys: cannot read key"),
        (["--signing-keys", "k", "--paths", "missing.txt"], "--paths missing.txt: No such file"),
        (["--signing-keys", "k", "--paths", "empty.txt"], "empty.txt: no paths in it"),
    ],
)
def test_segments_refuses_unreadable_files_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """As the README says: exit status 2 and ``locust: error: ...`` before any user starts
    (the files were read at test start: users started, each logged a StopUser traceback)."""
    import subprocess

    (tmp_path / "k").write_text("k1 hex:" + "ab" * 32 + "\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    nowhere = "http://127.0.0.1:9"  # never reached: locust stops at the option
    out = subprocess.run(
        [str(LOCUST), "-f", str(LOCUSTFILES / "segments.py"), "--headless", "-u", "2",
         "-t", "5s", "-H", nowhere, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "locust: error: " in out.stderr and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


async def test_a_play_whose_answer_is_unusable_gives_its_stream_slot_back(tmp_path: Path) -> None:
    """A control plane that starts plays (201, a play_id) but answers without edges: each such
    answer is a failed request, and the viewer sends that play's stop at once, so the
    account's stream slots are not held until the leases expire (4 plays would then lock the
    account out)."""
    from aiohttp import web

    title = {"id": "t1", "name": "Sintel"}
    page = {"items": [title], "total": 1}
    started: list[str] = []
    stopped: list[str] = []

    async def sessions(request: web.Request) -> web.Response:
        return web.json_response({"token": "tok"}, status=201)

    async def profiles(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": "p1"}], "total": 1})

    async def titles(request: web.Request) -> web.Response:
        return web.json_response(page)

    async def home(request: web.Request) -> web.Response:
        return web.json_response({"rows": [{"titles": [title]}]})

    async def autocomplete(request: web.Request) -> web.Response:
        return web.json_response({"suggestions": []})

    async def details(request: web.Request) -> web.Response:
        return web.json_response({**title, "kind": "movie", "playable": True})

    async def playback(request: web.Request) -> web.Response:
        play_id = f"play{len(started)}"
        started.append(play_id)
        return web.json_response({"play_id": play_id, "edges": []}, status=201)

    async def events(request: web.Request) -> web.Response:
        play_id = request.match_info["play_id"]
        if (await request.json()).get("kind") == "stop":
            stopped.append(play_id)
        return web.json_response({"play_id": play_id, "stopped": True})

    app = web.Application()
    app.router.add_post("/v1/sessions", sessions)
    app.router.add_get("/v1/profiles", profiles)
    app.router.add_get("/v1/titles", titles)
    app.router.add_get("/v1/profiles/{pid}/home", home)
    app.router.add_get("/v1/autocomplete", autocomplete)
    app.router.add_get("/v1/search", titles)
    app.router.add_get("/v1/titles/{tid}", details)
    app.router.add_post("/v1/playback", playback)
    app.router.add_post("/v1/playback/{play_id}/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    (tmp_path / "pw").write_text("password-of-the-stub\n")
    try:
        run = await locust(
            tmp_path, "unusable", "viewers.py", "-u", "2", "-r", "2", "--run-time", "3s",
            "-H", f"http://127.0.0.1:{port}", "--email", "a@example.test",
            "--password-file", str(tmp_path / "pw"), "--streams-per-account", "1",
            "--think-time", "0.05", "--exit-code-on-error", "0",
        )  # fmt: skip
    finally:
        await runner.cleanup()
    plays = run.stats["POST /v1/playback"]
    assert len(started) >= 3, run.out[-3000:]
    assert int(plays["Failure Count"]) == int(plays["Request Count"]) == len(started)
    assert sorted(stopped) == sorted(started)
    assert run.code == 1  # the failures break the error-rate threshold
