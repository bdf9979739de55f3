"""Viewers: sign in, browse the home rows, search for a title, open it, play it through the
edges at the chosen bitrate, report progress, stop. ``--host`` is the control plane.

One visit (locust task) of a viewer, as the web player and the reference player
(control/player/session.py) do it:

1. the account's session (signed in once per load process, shared by the users on the
   account: see accounts.py) and its first profile; the catalog in browse order (read once per
   process, up to ``--catalog-size`` titles);
2. ``GET /v1/profiles/{id}/home`` (the rows); a title drawn by Zipf popularity (``--zipf``)
   over the catalog's browse order, which is most popular first; ``GET /v1/autocomplete`` with
   the first letters of a word of its name and ``GET /v1/search`` with that word (a search
   answer holding every match must contain the title); ``GET /v1/titles/{id}`` (a series
   plays its first playable episode);
3. ``POST /v1/playback`` inside one of the account's stream slots (``--streams-per-account``:
   a viewer waits for a slot rather than break the plan's concurrent-stream limit, which would
   be a 409 stream_limit failure);
4. the multivariant playlist (``manifests.hls_edge`` on the first ranked edge, or the control
   plane's per-session ``manifests.hls`` for a capped plan), parsed with the product's RFC 8216
   parser (control/player/hls.py); the variant whose BANDWIDTH is closest to ``--bitrate``;
   its media playlist and its audio rendition's;
5. init and media segments (with the audio that covers them) through the ranked edges: a
   5xx, 408, 429, a connection error or a short body moves to the next edge (every failed
   attempt is a failure in the stats), other statuses end the play. Downloads are paced by a
   playout clock (control/player/playout.py) at ``--speed`` media seconds per wall second,
   never more than ``--buffer`` media seconds ahead of the playhead, so a viewer consumes the
   variant's bitrate x speed;
6. a ``progress`` event every ``heartbeat_interval`` wall seconds (as the playback answer
   asks; ``--heartbeat-interval`` caps it for short runs) and a ``stop`` event at the end
   (after an ``error`` event when the play failed). Stopping users (``--stop-timeout``) end
   their play within a second (``STOP_POLL``) and still send the stop; one that gets a stream
   slot while stopping starts no play.

Besides HTTP requests two entries come from the playout clock: ``PLAY startup`` (from asking
for playback to the first frame, in ms) and ``PLAY rebuffer`` (one per play that stalled: its
stalled time in ms), so thresholds apply to them too.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The product (control.player, edge.tokens) and this package, whatever the working directory.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import itertools  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from locust import FastHttpUser, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from locust.user.task import LOCUST_STATE_STOPPING  # noqa: E402

from control.player.hls import (  # noqa: E402
    ByteRange,
    MediaPlaylist,
    Multivariant,
    PlaylistError,
    Variant,
    parse_media_playlist,
    parse_multivariant,
)
from control.player.playout import Playout  # noqa: E402
from loadtests.locustfiles.accounts import (  # noqa: E402
    Account,
    add_account_options,
    auth,
    forget_session_on_401,
    judge_json,
    load_accounts,
    page_shape,
    preload_accounts,
    sign_in,
)
from loadtests.locustfiles.catalog import Catalog, q  # noqa: E402
from loadtests.locustfiles.run import (  # noqa: E402
    abort_start,
    add_option,
    fail_usage,
    is_master,
    is_reporting_node,
    run_seed,
)
from loadtests.locustfiles.workload import (  # noqa: E402
    check_content_range,
    closest_variant,
    fetch_wait,
    heartbeat_every,
    parse_seconds_range,
    search_word,
)

log = logging.getLogger("opencdn.loadtest.viewers")

FAILOVER_ROUNDS = 2  # times every edge may fail one request before the play gives up
# Seconds a playing viewer sleeps at most before it looks whether it is being stopped: it slept
# until its next heartbeat or the play's end (40 s by default, the title's length at worst), so
# a run hung that long after --run-time, or its plays were killed at --stop-timeout.
STOP_POLL = 1.0
EPS = 1e-6


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_account_options(parser)
    add_option(parser, "--bitrate", type=float, default=3000.0, help="kbit/s: the variant "
               "whose BANDWIDTH is closest is played")  # fmt: skip
    add_option(parser, "--speed", type=float, default=1.0, help="media seconds played per "
               "wall second (2: twice the bitrate per viewer, half the play time)")  # fmt: skip
    add_option(parser, "--buffer", type=float, default=30.0, help="media seconds a viewer "
               "buffers ahead of its playhead at most")  # fmt: skip
    add_option(parser, "--watch", type=float, default=0.0, help="media seconds watched per "
               "play (0: to the end)")  # fmt: skip
    add_option(parser, "--think-time", default="2-10", help="seconds between two visits, "
               "'S' or 'LOW-HIGH' (uniform)")  # fmt: skip
    add_option(parser, "--heartbeat-interval", type=float, default=0.0, help="seconds between "
               "progress events at most (0: as the playback answer asks)")  # fmt: skip
    add_option(parser, "--streams-per-account", type=int, default=4, help="plays at once per "
               "account and load process (the plan's max_streams: premium 4)")  # fmt: skip
    add_option(parser, "--zipf", type=float, default=0.8, help="Zipf exponent of title "
               "popularity over the catalog's browse order (0: uniform)")  # fmt: skip
    add_option(parser, "--catalog-size", type=int, default=1000, help="titles read from the "
               "catalog (GET /v1/titles pages) to draw from")  # fmt: skip


@dataclass(frozen=True)
class Config:
    bitrate_kbps: float
    speed: float
    buffer_s: float
    watch_s: float
    think: tuple[float, float]
    heartbeat_cap_s: float
    streams: int
    zipf: float
    catalog_size: int


def config_from(o: Any) -> Config:
    c = Config(
        bitrate_kbps=float(o.bitrate),
        speed=float(o.speed),
        buffer_s=float(o.buffer),
        watch_s=float(o.watch),
        think=parse_seconds_range(str(o.think_time), "--think-time"),
        heartbeat_cap_s=float(o.heartbeat_interval),
        streams=int(o.streams_per_account),
        zipf=float(o.zipf),
        catalog_size=int(o.catalog_size),
    )
    checks = [
        (c.bitrate_kbps > 0, "--bitrate must be > 0 kbit/s"),
        (0.01 <= c.speed <= 1000, "--speed must be between 0.01 and 1000"),
        (c.buffer_s > 0, "--buffer must be > 0 media seconds"),
        (c.watch_s >= 0, "--watch must be >= 0"),
        (c.heartbeat_cap_s >= 0, "--heartbeat-interval must be >= 0"),
        (1 <= c.streams <= 16, "--streams-per-account must be 1 to 16"),
        (c.zipf >= 0, "--zipf must be >= 0"),
        (c.catalog_size >= 1, "--catalog-size must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return c


class State:
    """What the users of this load process share, set when the test starts."""

    config: Config
    accounts: list[Account]
    catalog: Catalog
    seed = 0
    error: str | None = "the test has not started"
    users = itertools.count()


STATE = State()


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    if is_reporting_node(environment) and environment.parsed_options is not None:
        try:
            config = config_from(environment.parsed_options)
        except ValueError as exc:
            fail_usage(str(exc))
        preload_accounts(environment, config.streams)


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    try:
        if environment.parsed_options is None or not environment.host:
            raise ValueError("--host (the control plane's URL) is required")
        STATE.config = config_from(environment.parsed_options)
        if is_master(environment):
            return  # the workers sign in and play: the master only adds up their stats
        STATE.accounts = load_accounts(environment, environment.host, STATE.config.streams)
    except (ValueError, OSError) as exc:
        STATE.error = str(exc)
        abort_start(environment, STATE.error)
        return
    STATE.catalog = Catalog(STATE.config.catalog_size, STATE.config.zipf)
    STATE.seed = run_seed(environment)
    STATE.users = itertools.count()
    STATE.error = None
    log.info(
        "event=viewers_ready accounts=%d streams=%d seed=%d",
        len(STATE.accounts),
        # This process's streams: a worker on a shared account holds only its share of them.
        sum(a.streams for a in STATE.accounts),
        STATE.seed,
    )


# -- answers -----------------------------------------------------------------------------


def _home_shape(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        return "the home answer has no rows"
    for row in doc["rows"]:
        if not isinstance(row, dict) or not isinstance(row.get("titles"), list):
            return "a home row without titles"
        if not all(isinstance(t, dict) and isinstance(t.get("id"), str) for t in row["titles"]):
            return "a home row card without an id"
    return None


def _playback_shape(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("play_id"), str):
        return "the playback answer has no play_id"
    edges = doc.get("edges")
    if not isinstance(edges, list) or not edges:
        return "the playback answer names no edge"
    if not all(isinstance(e, dict) and isinstance(e.get("url"), str) for e in edges):
        return "a playback edge without a url"
    m = doc.get("manifests")
    if not isinstance(m, dict) or not isinstance(m.get("hls"), str):
        return "the playback answer has no manifests.hls"
    hb = doc.get("heartbeat_interval")
    if not isinstance(hb, int | float) or isinstance(hb, bool) or hb <= 0:
        return "the playback answer has no heartbeat_interval"
    return None


def _event_shape(play_id: str, stopped: bool) -> Callable[[Any], str | None]:
    def shape(doc: Any) -> str | None:
        if not isinstance(doc, dict) or doc.get("play_id") != play_id:
            return "the event answer is not this play's"
        if doc.get("stopped") is not stopped:
            return f"the event answer says stopped={doc.get('stopped')!r}"
        return None

    return shape


# -- one play ------------------------------------------------------------------------------


@dataclass
class Play:
    id: str
    edges: list[str]  # base URLs, in steering's rank order
    interval: float  # wall seconds between progress events
    next_beat: float  # monotonic time of the next one
    current: int = 0  # the edge in use
    playout: Playout | None = None
    unreported: int = 0  # bytes received since the last event
    error: str | None = None  # why the play failed (sent as an error event)
    ended: bool = False  # the control plane ended it (lease lost, subscription over)
    inits: set[tuple[str, ByteRange | None]] = field(default_factory=set)

    def on_edge(self, uri: str) -> str:
        """``uri`` (under the first edge, where the playlists put it) on the edge in use: the
        same path, as tokens are in the path and every edge verifies the same keys."""
        base = self.edges[0]
        if self.current and uri.startswith(base + "/"):
            return self.edges[self.current] + uri[len(base) :]
        return uri

    def position(self) -> float:
        if self.playout is None:
            return 0.0
        self.playout.advance(time.monotonic())
        return self.playout.position


OK, FAILOVER, FATAL = "ok", "failover", "fatal"


def judge_media(
    r: Any, byterange: ByteRange | None, parse: Callable[[bytes], Any] | None
) -> tuple[str, Any]:
    """A media or playlist answer: (OK, body or parsed playlist), (FAILOVER, None) when another
    edge may do better, (FATAL, reason) when none would."""
    status = r.status_code
    if status == 0:
        r.failure(getattr(r, "error", None) or "no response")
        return FAILOVER, None
    if status >= 500 or status in (408, 429):
        r.failure(f"HTTP {status}")
        return FAILOVER, None
    expected = 206 if byterange is not None else 200
    if status != expected:
        r.failure(f"HTTP {status} (expected {expected})")
        return FATAL, f"HTTP {status}"
    body = r.content or b""
    length = r.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != len(body):
        r.failure(f"short body: {len(body)} of {length} bytes")
        return FAILOVER, None
    if byterange is not None:
        end = byterange.offset + byterange.length - 1
        problem = check_content_range(
            r.headers.get("Content-Range"), byterange.offset, end, None, len(body)
        )
        if problem is None and len(body) != byterange.length:
            problem = f"{len(body)} bytes for a range of {byterange.length}"
        if problem:
            r.failure(problem)
            return FAILOVER, None
    value: Any = body
    if parse is not None:
        try:
            value = parse(body)
        except (PlaylistError, UnicodeDecodeError) as exc:
            r.failure(f"unplayable playlist: {exc}")
            return FATAL, "unplayable playlist"
    r.success()
    return OK, value


def _distinct_rates(variants: tuple[Variant, ...]) -> list[Variant]:
    """One variant per BANDWIDTH (the first listed), lowest first."""
    out: list[Variant] = []
    for v in variants:
        if not out or v.bandwidth > out[-1].bandwidth:
            out.append(v)
    return out


class Viewer(FastHttpUser):
    """A viewer on an account; ``--host`` is the control plane, edges come from playback."""

    network_timeout = 30.0
    connection_timeout = 10.0

    rng: random.Random
    account: Account

    def wait_time(self) -> float:
        lo, hi = STATE.config.think
        return self.rng.uniform(lo, hi)

    def on_start(self) -> None:
        if STATE.error is not None:
            raise StopUser()
        n = next(STATE.users)
        self.rng = random.Random(f"{STATE.seed}:{n}")
        # Round-robin: consecutive users land on different accounts, so every account's
        # stream slots fill evenly.
        self.account = STATE.accounts[n % len(STATE.accounts)]

    def stopping(self) -> bool:
        return self._state == LOCUST_STATE_STOPPING

    @task
    def visit(self) -> None:
        a = self.account
        if not sign_in(self, a) or not STATE.catalog.ensure(self, a):
            return
        self.home()
        title = STATE.catalog.pick(self.rng)
        self.search(title)
        details = self.details(title)
        if details is None or not details.get("playable"):
            return  # not playable (yet): viewers browse on
        episode = None
        if details.get("kind") == "series":
            episode = next(
                (
                    e["id"]
                    for s in details.get("seasons") or []
                    for e in s.get("episodes") or []
                    if e.get("playable")
                ),
                None,
            )
            if episode is None:
                return
        with a.slots:  # waits while the account's streams are all taken by other users
            if self.stopping():
                return  # the slot came free because the run is ending: no new play
            self.watch(title["id"], episode)

    # -- the control plane -----------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        name: str,
        *,
        json: Any = None,
        expect: tuple[int, ...] = (200,),
        shape: Callable[[Any], str | None] | None = None,
    ) -> tuple[int, Any]:
        with self.client.request(
            method, path, name=name, json=json, headers=auth(self.account), catch_response=True
        ) as r:
            doc = judge_json(r, expect, shape)
        forget_session_on_401(self.account, r.status_code)
        return r.status_code, doc

    def home(self) -> None:
        self.api(
            "GET",
            f"/v1/profiles/{self.account.profile_id}/home",
            "GET /v1/profiles/{id}/home",
            shape=_home_shape,
        )

    def search(self, title: dict[str, Any]) -> None:
        word = search_word(str(title["name"]), self.rng)
        pid = self.account.profile_id

        def suggestions(doc: Any) -> str | None:
            if not isinstance(doc, dict) or not isinstance(doc.get("suggestions"), list):
                return "the autocomplete answer has no suggestions list"
            return None

        self.api(
            "GET",
            f"/v1/autocomplete?profile_id={pid}&q={q(word[:3])}",
            "GET /v1/autocomplete",
            shape=suggestions,
        )

        def found(doc: Any) -> str | None:
            problem = page_shape(doc)
            if problem:
                return problem
            ids = {t.get("id") for t in doc["items"] if isinstance(t, dict)}
            # Every query word must match (control/search.py): a word of the title's own
            # name finds it, so an answer holding every match must hold the title.
            if doc["total"] <= len(doc["items"]) and title["id"] not in ids:
                return f"searching {word!r} did not find the title {title['id']!r}"
            return None

        self.api(
            "GET", f"/v1/search?profile_id={pid}&q={q(word)}&limit=20", "GET /v1/search",
            shape=found,
        )  # fmt: skip

    def details(self, title: dict[str, Any]) -> dict[str, Any] | None:
        def same(doc: Any) -> str | None:
            if not isinstance(doc, dict) or doc.get("id") != title["id"]:
                return "the details are not the asked title's"
            if not isinstance(doc.get("playable"), bool):
                return "the details have no playable flag"
            return None

        _, doc = self.api(
            "GET",
            f"/v1/titles/{q(title['id'])}?profile_id={self.account.profile_id}",
            "GET /v1/titles/{id}",
            shape=same,
        )
        return doc if isinstance(doc, dict) else None

    # -- playback ------------------------------------------------------------------------

    def watch(self, title_id: str, episode: str | None) -> None:
        body: dict[str, Any] = {
            "profile_id": self.account.profile_id,
            "title_id": title_id,
            "device": "locust",
        }
        if episode is not None:
            body["episode_id"] = episode
        t_ask = time.monotonic()
        started: list[str] = []

        def shape(doc: Any) -> str | None:
            if isinstance(doc, dict) and isinstance(doc.get("play_id"), str):
                started.append(doc["play_id"])
            return _playback_shape(doc)

        status, answer = self.api(
            "POST", "/v1/playback", "POST /v1/playback", json=body, expect=(201,), shape=shape
        )
        if answer is None:
            if started:
                # Started, but its answer is unusable (a failure already): give the stream
                # slot back now rather than at the lease's expiry.
                self.api(
                    "POST",
                    f"/v1/playback/{started[0]}/events",
                    "POST /v1/playback/{id}/events [stop]",
                    json={"kind": "stop", "position": 0, "client_at": time.time(), "bytes": 0},
                    shape=_event_shape(started[0], True),
                )
            if status == 409:
                log.warning(
                    "event=playback_refused status=409: more plays on one account than its plan "
                    "allows? (--streams-per-account, or leases of an earlier run still held)"
                )
            return
        c = STATE.config
        interval = heartbeat_every(float(answer["heartbeat_interval"]), c.heartbeat_cap_s)
        play = Play(
            id=answer["play_id"],
            edges=[str(e["url"]).rstrip("/") for e in answer["edges"]],
            interval=interval,
            next_beat=t_ask + interval,
        )
        try:
            self.stream(play, answer["manifests"], t_ask)
        finally:
            # Also when the user is being killed (GreenletExit): the stream slot is given
            # back at once instead of at the lease's expiry.
            self.stop_play(play)

    def stream(self, play: Play, manifests: dict[str, Any], t_ask: float) -> None:
        c = STATE.config
        master = self.multivariant(play, manifests)
        if master is None:
            return
        variants = _distinct_rates(master.by_bandwidth())
        if not variants:
            play.error = "the multivariant playlist has no variant"
            return
        variant = variants[closest_variant([v.bandwidth for v in variants], c.bitrate_kbps)]
        media = self.media_playlist(play, variant.uri, "GET media playlist")
        if media is None or not media.segments:
            play.error = play.error or "the media playlist has no segment"
            return
        rendition = master.audio_for(variant)
        audio = None
        if rendition is not None and rendition.uri is not None:
            audio = self.media_playlist(play, rendition.uri, "GET audio playlist")
            if audio is None:
                return
        end = media.duration if c.watch_s <= 0 else min(media.duration, c.watch_s)
        p = Playout(
            start=0.0,
            end=end,
            t0=t_ask,
            speed=c.speed,
            resume_s=min(media.segments[0].duration, end),
        )
        play.playout = p
        audio_end = 0.0
        started = False
        for seg in media.segments:
            if seg.start >= end - EPS or not self.pace(play, seg.duration):
                break
            if seg.init is not None and not self.init_section(
                play, seg.init.uri, seg.init.byterange
            ):
                return
            if self.edge_get(play, seg.uri, "GET segment", seg.byterange) is None:
                return
            if audio is not None:
                audio_end = self.audio_until(play, audio, audio_end, seg.end)
                if audio_end < 0:
                    return
            else:
                audio_end = seg.end
            p.add(min(seg.end, audio_end), time.monotonic())
            if not started and p.started_at is not None:
                started = True
                self.report("PLAY startup", (p.started_at - t_ask) * 1000)
        while not play.ended and not p.finished and not self.stopping():
            now = time.monotonic()
            wait = p.until_position(p.end, now)
            if wait is None:
                break  # stalled for good: the downloads ended before the end (stopping)
            if now >= play.next_beat:
                self.heartbeat(play)
                continue
            gevent.sleep(max(0.0, min(wait, play.next_beat - now, STOP_POLL)))
        if p.rebuffers:
            self.report("PLAY rebuffer", p.rebuffer_s * 1000)

    def pace(self, play: Play, segment_s: float) -> bool:
        """Wait until the next segment fits in the buffer, sending the progress events that
        fall due meanwhile; False when the play should end (stopping, or ended by the
        control plane)."""
        p = play.playout
        assert p is not None
        c = STATE.config
        while True:
            if self.stopping() or play.ended:
                return False
            now = time.monotonic()
            if now >= play.next_beat:
                self.heartbeat(play)
                continue
            # Not playing (starting, or stalled): fetch now, the buffer is not draining.
            wait = fetch_wait(p.level(now), c.buffer_s, segment_s, c.speed) if p.playing else 0
            if wait <= 0:
                return True
            gevent.sleep(min(wait, play.next_beat - now, STOP_POLL))

    def multivariant(self, play: Play, manifests: dict[str, Any]) -> Multivariant | None:
        edge_url = manifests.get("hls_edge")
        if isinstance(edge_url, str) and edge_url:
            value = self.edge_get(
                play, edge_url, "GET master.m3u8",
                parse=lambda b: parse_multivariant(b.decode("utf-8"), edge_url),
            )  # fmt: skip
            return value if isinstance(value, Multivariant) else None
        url = str(manifests["hls"])  # a capped plan: the control plane's per-session one
        with self.client.get(
            url, name="GET /v1/playback/{id}/master.m3u8", catch_response=True
        ) as r:
            verdict, value = judge_media(
                r, None, lambda b: parse_multivariant(b.decode("utf-8"), url)
            )
        if verdict != OK:
            play.error = "the session playlist failed"
            return None
        return value if isinstance(value, Multivariant) else None

    def media_playlist(self, play: Play, uri: str, name: str) -> MediaPlaylist | None:
        value = self.edge_get(
            play, uri, name, parse=lambda b: parse_media_playlist(b.decode("utf-8"), uri)
        )
        return value if isinstance(value, MediaPlaylist) else None

    def init_section(self, play: Play, uri: str, byterange: ByteRange | None) -> bool:
        """An initialisation section, once per play (players keep it)."""
        key = (uri, byterange)
        if key in play.inits:
            return True
        if self.edge_get(play, uri, "GET init segment", byterange) is None:
            return False
        play.inits.add(key)
        return True

    def audio_until(self, play: Play, pl: MediaPlaylist, audio_end: float, until: float) -> float:
        """Audio segments from ``audio_end`` until they cover ``until``; -1 on failure."""
        while audio_end < min(until, pl.duration) - EPS:
            seg = pl.segments[pl.index_at(audio_end)]
            if seg.init is not None and not self.init_section(
                play, seg.init.uri, seg.init.byterange
            ):
                return -1
            if self.edge_get(play, seg.uri, "GET audio segment", seg.byterange) is None:
                return -1
            audio_end = seg.end
        if audio_end >= pl.duration - EPS:
            audio_end = max(audio_end, until)  # the audio ends first: nothing to wait for
        return audio_end

    def edge_get(
        self,
        play: Play,
        uri: str,
        name: str,
        byterange: ByteRange | None = None,
        parse: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """GET through the ranked edges with failover; the body (or what ``parse`` made of
        it), or None when the play cannot go on (``play.error`` says why)."""
        headers = {"Accept-Encoding": "identity"}  # lengths are checked against the header
        if byterange is not None:
            headers["Range"] = byterange.header
        for _ in range(FAILOVER_ROUNDS * len(play.edges)):
            with self.client.get(
                play.on_edge(uri), headers=headers, name=name, catch_response=True
            ) as r:
                verdict, value = judge_media(r, byterange, parse)
            if verdict == OK:
                play.unreported += len(r.content or b"")
                return value
            if verdict == FATAL:
                play.error = f"{name}: {value}"
                return None
            play.current = (play.current + 1) % len(play.edges)
        play.error = f"{name}: every edge failed {FAILOVER_ROUNDS} times"
        return None

    def heartbeat(self, play: Play) -> None:
        now = time.monotonic()
        # Never a burst after a late one: the next is one interval from now at the earliest.
        play.next_beat = max(play.next_beat + play.interval, now + play.interval / 2)
        sent = play.unreported
        status, doc = self.api(
            "POST",
            f"/v1/playback/{play.id}/events",
            "POST /v1/playback/{id}/events [progress]",
            json={
                "kind": "progress",
                "position": round(play.position(), 3),
                "client_at": time.time(),
                "bytes": sent,
            },
            shape=_event_shape(play.id, False),
        )
        if doc is not None:
            play.unreported -= sent
        elif status in (401, 402, 404, 409):
            play.ended = True  # the lease is gone: this play cannot go on

    def stop_play(self, play: Play) -> None:
        if play.ended:
            return  # the control plane ended it already; a stop would be refused
        if play.error is not None:
            self.api(
                "POST",
                f"/v1/playback/{play.id}/events",
                "POST /v1/playback/{id}/events [error]",
                json={"kind": "error", "error": play.error[:200]},
                shape=_event_shape(play.id, False),
            )
        self.api(
            "POST",
            f"/v1/playback/{play.id}/events",
            "POST /v1/playback/{id}/events [stop]",
            json={
                "kind": "stop",
                "position": round(play.position(), 3),
                "client_at": time.time(),
                "bytes": play.unreported,
            },
            shape=_event_shape(play.id, True),
        )

    def report(self, name: str, ms: float) -> None:
        """A playout measurement as a stats entry of its own (type PLAY)."""
        self.environment.events.request.fire(
            request_type="PLAY",
            name=name,
            response_time=ms,
            response_length=0,
            exception=None,
            context={},
        )
