"""Edge-only load: signed segment requests with a chosen hit/miss mix. ``--host`` is an edge's
data plane (``http://127.0.0.11:8080`` in the local fleet).

Objects: the ``--paths`` file (``/v/<title>/<file> [size]`` lines), or the files of each
``--titles`` title as its ``manifest.json`` lists them (read through the edge itself, with
sizes), keeping those matching ``--match`` (segments by default). Every URL carries a token
made with the edge's signing keys (``--signing-keys``, the edge's key file; ``python -m edge
keygen`` makes keys) by the product's edge/tokens.py.

Hits and misses: ``--hit-ratio`` of the requests go to a hot set of ``--hot-objects`` objects
(warmed once at start, outside the stats, then asked over and over: hits); the others walk the
cold set (every other object) once each, in a shuffled order: misses. When the cold set runs
out a warning says so, and the walk starts again: those requests are then hits unless the
cache evicted them in between, so the measured ratio climbs above the one asked. In a
distributed run each worker walks its own share of the cold set. ``--range-bytes N`` makes
``--range-share`` of the requests ask a random N-byte range instead of the whole object.

Checks: the status (200, or 206 with the asked Content-Range for a range), the body's length
(Content-Length, and the object's size when known). Every answer's X-Cache (HIT/MISS) is
counted, and the measured hit ratio is printed at the end next to the asked one (summed over
the workers in a distributed run).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import http.client  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from locust import FastHttpUser, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from loadtests.locustfiles.run import (  # noqa: E402
    abort_start,
    add_option,
    fail_usage,
    is_master,
    is_reporting_node,
    run_seed,
    worker_share,
)
from loadtests.locustfiles.signing import Signer  # noqa: E402
from loadtests.locustfiles.workload import (  # noqa: E402
    ColdWalk,
    check_content_range,
    parse_paths,
    parse_seconds_range,
    random_range,
    shard,
)

log = logging.getLogger("opencdn.loadtest.edge")
_TITLE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_option(parser, "--signing-keys", default="", help="the edge's signing key file "
               "('KEYID SECRET' lines; the first signs)")  # fmt: skip
    add_option(parser, "--titles", default="", help="comma-separated titles (origin keys) whose "
               "manifest.json lists the objects")  # fmt: skip
    add_option(parser, "--paths", default="", help="a file of '/v/<title>/<file> [size]' lines "
               "(instead of --titles)")  # fmt: skip
    add_option(parser, "--match", default=r"\.m4s$", help="regular expression the object "
               "paths must match (the default keeps media segments)")  # fmt: skip
    add_option(parser, "--hit-ratio", type=float, default=0.9, help="share of requests for "
               "the hot set (hits); the rest walk the cold set (misses)")  # fmt: skip
    add_option(parser, "--hot-objects", type=int, default=10, help="objects in the hot set")
    add_option(parser, "--range-bytes", type=int, default=0, help="ask N-byte ranges at "
               "random offsets (0: whole objects)")  # fmt: skip
    add_option(parser, "--range-share", type=float, default=1.0, help="share of the requests "
               "that ask a range when --range-bytes is set")  # fmt: skip
    add_option(parser, "--token-ttl", type=int, default=3600, help="seconds a signed URL is "
               "valid (re-signed at half of it)")  # fmt: skip
    add_option(parser, "--wait", default="0", help="seconds a user waits between requests, "
               "'S' or 'LOW-HIGH' (0: back to back)")  # fmt: skip


@dataclass(frozen=True)
class Config:
    keys_file: str
    titles: tuple[str, ...]
    paths_file: str
    match: re.Pattern[str]
    hit_ratio: float
    hot_objects: int
    range_bytes: int
    range_share: float
    token_ttl: int
    wait: tuple[float, float]


def config_from(o: Any) -> Config:
    titles = tuple(t.strip() for t in str(o.titles or "").split(",") if t.strip())
    try:
        match = re.compile(str(o.match))
    except re.error as exc:
        raise ValueError(f"--match: {exc}") from None
    c = Config(
        keys_file=str(o.signing_keys or ""),
        titles=titles,
        paths_file=str(o.paths or ""),
        match=match,
        hit_ratio=float(o.hit_ratio),
        hot_objects=int(o.hot_objects),
        range_bytes=int(o.range_bytes),
        range_share=float(o.range_share),
        token_ttl=int(o.token_ttl),
        wait=parse_seconds_range(str(o.wait), "--wait"),
    )
    checks = [
        (bool(c.keys_file), "--signing-keys (the edge's key file) is required"),
        (bool(c.titles) != bool(c.paths_file), "give either --titles or --paths"),
        (all(_TITLE_RE.fullmatch(t) for t in c.titles), "--titles: not an origin key"),
        (0 <= c.hit_ratio <= 1, "--hit-ratio must be between 0 and 1"),
        (c.hot_objects >= 1, "--hot-objects must be >= 1"),
        (c.range_bytes >= 0, "--range-bytes must be >= 0"),
        (0 <= c.range_share <= 1, "--range-share must be between 0 and 1"),
        (60 <= c.token_ttl <= 7 * 86400, "--token-ttl must be 60 s to 7 days"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return c


class State:
    config: Config
    signer: Signer
    hot: list[tuple[str, int | None]]
    cold: ColdWalk
    seed = 0
    error: str | None = "the test has not started"
    counts: Counter[str] = Counter()  # "hot HIT", "cold MISS", ...: unreported to the master
    totals: Counter[str] = Counter()  # the run's, on the reporting node
    exhausted_noted = False
    started = 0.0
    users = itertools.count()


STATE = State()


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    if is_reporting_node(environment) and environment.parsed_options is not None:
        try:
            c = config_from(environment.parsed_options)
            if not is_master(environment):
                # A standalone process reads its files now, so a missing one is refused
                # before anything runs; a master may not hold them (its workers do).
                Signer.from_file(c.keys_file, c.token_ttl)
                if c.paths_file:
                    parse_paths(_read_text(c.paths_file, "--paths"), c.paths_file)
        except ValueError as exc:
            fail_usage(str(exc))


def _read_text(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{option} {path}: {exc.strerror or exc}") from None


def _get(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def objects_of(c: Config, host: str, signer: Signer) -> list[tuple[str, int | None]]:
    """The object list: the paths file, or every title's manifest.json through the edge."""
    if c.paths_file:
        found = parse_paths(_read_text(c.paths_file, "--paths"), c.paths_file)
    else:
        found = []
        for title in c.titles:
            path = f"/v/{title}/manifest.json"
            try:
                doc = json.loads(_get(host.rstrip("/") + signer.path(path)))
                files = doc["files"]
                found += [(f"/v/{title}/{f['path']}", int(f["size"])) for f in files]
            except urllib.error.HTTPError as exc:
                raise ValueError(f"{path} through {host}: HTTP {exc.code}") from None
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
                # HTTPException: a cut answer (IncompleteRead) or a broken head, not OSErrors
                raise ValueError(f"{path} through {host}: {exc}") from None
    kept = sorted({p: s for p, s in found if c.match.search(p)}.items())
    if not kept:
        raise ValueError(f"no object path matches --match {c.match.pattern!r}")
    return kept


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    try:
        if environment.parsed_options is None or not environment.host:
            raise ValueError("--host (the edge's URL) is required")
        c = config_from(environment.parsed_options)
        if is_master(environment):
            # The workers fetch; the master adds up their stats and X-Cache counts.
            STATE.config, STATE.error = c, None
            STATE.counts.clear()
            STATE.totals.clear()
            return
        signer = Signer.from_file(c.keys_file, c.token_ttl)
        objects = objects_of(c, environment.host, signer)
    except ValueError as exc:
        STATE.error = str(exc)
        abort_start(environment, STATE.error)
        return
    seed = run_seed(environment)
    # The same hot set on every worker and in every run with the same --seed (0 included),
    # so workers share it; the cold set is sharded, so no object is walked twice.
    hot_rng = random.Random(f"hot:{environment.parsed_options.seed}")
    hot = hot_rng.sample(objects, min(c.hot_objects, len(objects)))
    hot_paths = {p for p, _ in hot}
    index, count = worker_share(environment)
    cold = shard([o for o in objects if o[0] not in hot_paths], index, count)
    if not cold and c.hit_ratio < 1:
        log.warning(
            "event=no_cold_set objects=%d hot=%d: every request is for the hot set",
            len(objects),
            len(hot),
        )
    for path, _ in hot:  # warm the hot set, so its requests are hits from the start
        try:
            _get(environment.host.rstrip("/") + signer.path(path))
        except (OSError, http.client.HTTPException) as exc:
            # A cut body (IncompleteRead) is no OSError: it broke the start, and the run then
            # "made no request at all". The run's own requests judge the object.
            log.warning("event=warm_failed path=%s error=%r", path, exc)
    STATE.config, STATE.signer, STATE.hot, STATE.seed = c, signer, hot, seed
    STATE.cold = ColdWalk(cold, random.Random(f"{seed}:cold:{index}"))
    STATE.counts.clear()
    STATE.totals.clear()
    STATE.exhausted_noted = False
    STATE.started = time.monotonic()
    STATE.users = itertools.count()
    STATE.error = None
    log.info(
        "event=edge_load_ready objects=%d hot=%d cold=%d hit_ratio=%g range_bytes=%d seed=%d",
        len(objects),
        len(hot),
        len(cold),
        c.hit_ratio,
        c.range_bytes,
        seed,
    )


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["opencdn_xcache"] = dict(STATE.counts)
    STATE.counts.clear()


@events.worker_report.add_listener
def _collect(client_id: str, data: dict[str, Any], **_: Any) -> None:
    STATE.totals.update(data.get("opencdn_xcache") or {})


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    if not is_reporting_node(environment) or STATE.error is not None:
        return
    totals = STATE.totals + STATE.counts  # the workers' reports, or this process's counts
    hits = sum(v for k, v in totals.items() if k.endswith(" HIT"))
    misses = sum(v for k, v in totals.items() if k.endswith(" MISS"))
    if hits + misses == 0:
        log.warning("event=edge_summary no answer carried X-Cache")
        return
    by_set = ", ".join(
        f"{s} {totals[s + ' HIT'] + totals[s + ' MISS'] + totals[s + ' none']} "
        f"({totals[s + ' HIT']} HIT)"
        for s in ("hot", "cold")
    )
    log.info(
        "edge: measured hit ratio %.3f (X-Cache HIT %d, MISS %d) for an asked %.3f; "
        "requests by set: %s",
        hits / (hits + misses),
        hits,
        misses,
        STATE.config.hit_ratio,
        by_set,
    )


class EdgeClient(FastHttpUser):
    """Signed GETs of objects on one edge (``--host``)."""

    network_timeout = 30.0
    connection_timeout = 10.0

    rng: random.Random

    def wait_time(self) -> float:
        lo, hi = STATE.config.wait
        return self.rng.uniform(lo, hi) if hi else 0.0

    def on_start(self) -> None:
        if STATE.error is not None:
            raise StopUser()
        self.rng = random.Random(f"{STATE.seed}:{next(STATE.users)}")

    @task
    def fetch(self) -> None:
        c = STATE.config
        hot = len(STATE.cold) == 0 or self.rng.random() < c.hit_ratio
        if hot:
            path, size = self.rng.choice(STATE.hot)
        else:
            path, size = STATE.cold.next()
            if STATE.cold.exhausted and not STATE.exhausted_noted:
                STATE.exhausted_noted = True
                log.warning(
                    "event=cold_set_exhausted objects=%d seconds=%.1f: from now on the cold "
                    "requests ask objects already fetched (hits unless evicted), so the "
                    "measured hit ratio climbs above the asked one",
                    len(STATE.cold),
                    time.monotonic() - STATE.started,
                )
        kind = "hot" if hot else "cold"
        headers = {"Accept-Encoding": "identity"}  # lengths are checked against the header
        span = None
        if c.range_bytes and self.rng.random() < c.range_share and size != 0:
            span = random_range(size, c.range_bytes, self.rng)
            headers["Range"] = f"bytes={span[0]}-{span[1]}"
        name = f"GET {'range' if span else 'object'} [{kind}]"
        with self.client.get(
            STATE.signer.path(path), headers=headers, name=name, catch_response=True
        ) as r:
            problem = self.problem(r, span, size)
            if problem:
                r.failure(problem)
            else:
                r.success()
            cache = r.headers.get("X-Cache") if r.headers is not None else None
            STATE.counts[f"{kind} {cache if cache in ('HIT', 'MISS') else 'none'}"] += 1

    @staticmethod
    def problem(r: Any, span: tuple[int, int] | None, size: int | None) -> str | None:
        if r.status_code == 0:
            return str(getattr(r, "error", None) or "no response")
        body = r.content or b""
        expected = 206 if span else 200
        if r.status_code != expected:
            return f"HTTP {r.status_code} (expected {expected})"
        length = r.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) != len(body):
            return f"body of {len(body)} bytes, Content-Length {length}"
        if span is not None:
            return check_content_range(
                r.headers.get("Content-Range"), span[0], span[1], size, len(body)
            )
        if size is not None and len(body) != size:
            return f"body of {len(body)} bytes, the object has {size}"
        return None
