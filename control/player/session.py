"""The reference player's I/O: the control plane's API, the edges, timing and failover.

One play, as a real player does it:

1. sign in (``POST /v1/sessions``), pick the profile (``--profile`` or the account's first),
   find the title (``--title``, or the first hit of ``GET /v1/search``);
2. ``POST /v1/playback``: the edges in steering's rank order and the manifests;
3. load the multivariant playlist: ``manifests.hls_edge`` (the origin's master.m3u8 on the
   first edge, for a plan allowing the whole ladder) with failover along the edges, else the
   control plane's per-session playlist ``manifests.hls`` (absolute URIs on the first edge);
4. download segments one after the other (video, then the audio that covers it), choosing
   each segment's rendition with BBA (control/player/abr.py) from the buffer level of the
   simulated playout clock (control/player/playout.py), never more than ``max_buffer``
   seconds ahead;
5. every ``heartbeat_interval`` WALL seconds (the server's answer), a ``progress`` event with
   the position and the bytes received since the last one; at the end a ``stop``. The lease
   they renew runs on the wall clock, so they are timed on it too (media seconds would let it
   expire at ``--speed`` below 1/3 and flood the control plane at high speeds), from a task
   beside the downloads, so they go on through startup, stalls and failover retries.

Failover. Every URI the playlists name on the first edge (``<edge 1 URL>/_t/TOKEN/v/...``) is
the same path on every ranked edge (tokens are in the path and signed by the same keys;
control/manifest.py), as HLS Content Steering's pathway clones make it. A request that fails
with a 5xx or 429, a refused or reset connection, a truncated body, a ranged answer that is not
the asked 206, or no answer within the per-request timeout moves the player to the next ranked
edge, where the SAME segment is fetched again; the player stays there (as a player does on a
new pathway). After every edge failed ``rounds`` times in a row the play fails. Other 4xx
answers (403: token refused, 404) are fatal: another edge would answer the same.

The per-request timeout follows the segment: ``max(min_timeout, 2 x segment duration /
speed)``; a segment that takes twice its playout time to arrive is draining the buffer, and
another edge is likely to do better.

``--source-address`` binds every outgoing connection (control plane and edges) to that local
address, so the control plane sees the player there and asks steering for edges for that
client (locality: a client inside an edge's ``prefixes`` is sent to that edge), and tokens
bound to the client address (``playback.bind_client_ip``) verify at the edges.

Logs: one ``event=... key=value`` line per event on stderr; never the password, the session
token or a URL's token (edge URLs are logged without their ``/_t/TOKEN`` segment).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from .abr import AbrConfig, Bba
from .hls import (
    MAX_PLAYLIST_BYTES,
    ByteRange,
    MediaPlaylist,
    Multivariant,
    PlaylistError,
    Rendition,
    Segment,
    Variant,
    parse_media_playlist,
    parse_multivariant,
)
from .playout import Playout

log = logging.getLogger("control.player")
_P = TypeVar("_P")

MAX_SEGMENT_BYTES = 256 << 20
MAX_JSON_BYTES = 4 << 20
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN_IN_PATH = re.compile(r"/_t/[^/]*")


class PlayerError(Exception):
    """The play cannot go on; the message says why (no secret in it)."""


class _Failover(Exception):
    """This edge failed this request; try the next one."""


@dataclass(frozen=True, slots=True)
class PlayerOptions:
    control: str
    email: str
    password: str
    title: str | None = None
    search: str | None = None
    episode: str | None = None
    profile: str | None = None
    speed: float = 1.0
    duration: float | None = None  # media seconds to play at most
    resume: bool = False  # start at the server's resume position
    source_address: str | None = None
    abr: AbrConfig = field(default_factory=AbrConfig)
    min_timeout: float = 2.0
    rounds: int = 3  # times every edge may fail in a row before the play fails
    device: str = "reference-player"

    def __post_init__(self) -> None:
        u = urlsplit(self.control)
        if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
            raise ValueError(f"--control must be an http(s) URL, not {self.control!r}")
        if (self.title is None) == (self.search is None):
            raise ValueError("give exactly one of --title and --search")
        for name in ("title", "episode", "profile"):
            value = getattr(self, name)
            if value is not None and not _ID_RE.fullmatch(value):
                raise ValueError(f"--{name} must be 1 to 64 of A-Z a-z 0-9 _ -")
        if not 0.01 <= self.speed <= 1000:
            raise ValueError("--speed must be between 0.01 and 1000")
        if self.duration is not None and not 0 < self.duration <= 7 * 86400:
            raise ValueError("--duration must be > 0 seconds (at most a week)")
        if self.source_address is not None:
            try:
                ipaddress.ip_address(self.source_address)
            except ValueError:
                raise ValueError(
                    f"--source-address must be an IP address, not {self.source_address!r}"
                ) from None
        if not 0.05 <= self.min_timeout <= 600:
            raise ValueError("--min-timeout must be between 0.05 and 600 seconds")
        if not 1 <= self.rounds <= 100:
            raise ValueError("rounds must be between 1 and 100")


@dataclass(frozen=True, slots=True)
class Edge:
    id: str
    url: str  # base URL, no trailing slash


@dataclass
class Summary:
    """The QoE summary (wall seconds for times, media seconds for positions)."""

    title_id: str = ""
    play_id: str = ""
    edges: list[str] = field(default_factory=list)  # ranked, as the control plane answered
    startup_s: float | None = None
    rebuffers: int = 0
    rebuffer_s: float = 0.0
    played_s: float = 0.0
    avg_bitrate: float = 0.0  # duration-weighted BANDWIDTH of the variants played (bit/s)
    media_bitrate: float = 0.0  # bytes received x 8 / media seconds downloaded
    switches: int = 0
    renditions: dict[str, float] = field(default_factory=dict)  # variant -> media seconds
    bytes_by_edge: dict[str, int] = field(default_factory=dict)
    failovers: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # edge -> failed requests
    heartbeats: int = 0
    wall_s: float = 0.0
    completed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "title_id": self.title_id,
            "play_id": self.play_id,
            "edges": self.edges,
            "startup_s": None if self.startup_s is None else round(self.startup_s, 4),
            "rebuffers": self.rebuffers,
            "rebuffer_s": round(self.rebuffer_s, 4),
            "played_s": round(self.played_s, 3),
            "avg_bitrate": round(self.avg_bitrate),
            "media_bitrate": round(self.media_bitrate),
            "switches": self.switches,
            "renditions": {k: round(v, 3) for k, v in self.renditions.items()},
            "bytes_by_edge": self.bytes_by_edge,
            "failovers": self.failovers,
            "failures": self.failures,
            "heartbeats": self.heartbeats,
            "wall_s": round(self.wall_s, 3),
            "completed": self.completed,
        }

    def text(self) -> str:
        startup = "-" if self.startup_s is None else f"{self.startup_s:.3f} s"
        lines = [
            f"title          {self.title_id} (play {self.play_id})",
            f"edges ranked   {', '.join(self.edges)}",
            f"startup        {startup}",
            f"rebuffers      {self.rebuffers} ({self.rebuffer_s:.3f} s)",
            f"played         {self.played_s:.1f} s of media in {self.wall_s:.1f} s",
            f"avg bitrate    {self.avg_bitrate / 1000:.0f} kbit/s"
            f" (received {self.media_bitrate / 1000:.0f} kbit/s)",
            f"switches       {self.switches}",
            "renditions     " + ", ".join(f"{k} {v:.1f} s" for k, v in self.renditions.items()),
            "bytes per edge " + ", ".join(f"{k} {v}" for k, v in self.bytes_by_edge.items()),
            f"failovers      {self.failovers}"
            + (
                " (failed requests: "
                + ", ".join(f"{k} {v}" for k, v in self.failures.items())
                + ")"
                if self.failures
                else ""
            ),
            f"heartbeats     {self.heartbeats}",
            f"completed      {'yes' if self.completed else 'no'}",
        ]
        return "\n".join(lines)


def redact(url: str) -> str:
    """A URL fit for a log line: the token segment of an edge path is cut out."""
    return _TOKEN_IN_PATH.sub("/_t/-", url.split("?", 1)[0])


def _http_url(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise PlayerError(f"the playback answer has no usable {what}")
    try:
        u = urlsplit(value)
        u.port  # noqa: B018 - parses the port: ValueError when it is not 0-65535
    except ValueError:  # also urlsplit's "Invalid IPv6 URL" ("http://[::1/x")
        raise PlayerError(f"the playback answer's {what} is not a valid URL") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise PlayerError(f"the playback answer's {what} is not an http(s) URL")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise PlayerError(f"the playback answer's {what} has control characters")
    return value


def parse_edges(answer: dict[str, Any]) -> list[Edge]:
    """The ranked edges of a playback answer, checked."""
    raw = answer.get("edges")
    if not isinstance(raw, list) or not raw:
        raise PlayerError("the playback answer names no edge")
    out: list[Edge] = []
    for e in raw[:64]:
        if not isinstance(e, dict) or not isinstance(e.get("id"), str):
            raise PlayerError("the playback answer has a malformed edge entry")
        out.append(Edge(e["id"][:64], _http_url(e.get("url"), "edge URL").rstrip("/")))
    return out


class Player:
    """One play of one title. ``on_segment(index, edge_id)`` (optional) is called after each
    video segment is in, for tests that act at a point of the play."""

    def __init__(
        self,
        options: PlayerOptions,
        *,
        on_segment: Callable[[int, str], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.o = options
        self.on_segment = on_segment
        self.clock = clock
        self.summary = Summary()
        self.http: aiohttp.ClientSession | None = None
        self.token = ""
        self.edges: list[Edge] = []
        self.current = 0  # the edge in use
        self.base = ""  # the first edge's URL: URIs are expressed under it
        self.playout: Playout | None = None
        self.heartbeat_interval = 40.0  # wall seconds
        self.start_position = 0.0  # what heartbeats report before the playout clock exists
        self.bytes_unreported = 0
        self.init_done: set[tuple[str, ByteRange | None]] = set()
        self.short_variants: set[int] = set()  # variants that ended before the play (logged)

    # -- HTTP --------------------------------------------------------------------------

    async def run(self) -> Summary:
        t0 = self.clock()
        connector = aiohttp.TCPConnector(
            local_addr=(self.o.source_address, 0) if self.o.source_address else None,
            limit=8,
        )
        async with aiohttp.ClientSession(connector=connector) as http:
            self.http = http
            try:
                await self._play()
            finally:
                self.summary.wall_s = self.clock() - t0
        return self.summary

    async def _api(
        self, method: str, path: str, *, json: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        """A control plane call: the JSON answer, or PlayerError with the server's error."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = self.o.control.rstrip("/") + path
        try:
            async with self.http.request(
                method,
                url,
                json=json,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
                allow_redirects=False,
            ) as r:
                raw = await r.content.read(MAX_JSON_BYTES + 1)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PlayerError(
                f"the control plane at {self.o.control} is unreachable ({type(exc).__name__})"
            ) from None
        if len(raw) > MAX_JSON_BYTES:
            raise PlayerError(f"{method} {path.split('?')[0]}: the answer is too large")
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        if status not in ok:
            err = body.get("error") if isinstance(body, dict) else None
            code = err.get("code") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            detail = f"{code}: {message}" if code else f"HTTP {status}"
            raise _ApiError(status, f"{method} {path.split('?')[0]}: {str(detail)[:300]}")
        if status != 204 and not isinstance(body, dict):
            raise PlayerError(f"{method} {path.split('?')[0]}: the answer is not a JSON object")
        return body

    async def _sign_in(self) -> None:
        try:
            answer = await self._api(
                "POST",
                "/v1/sessions",
                json={"email": self.o.email, "password": self.o.password, "device": self.o.device},
            )
        except _ApiError as exc:
            raise PlayerError(f"sign-in refused: {exc}") from None
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise PlayerError("the sign-in answer has no token")
        self.token = token
        log.info("event=signed_in control=%s", self.o.control)

    async def _profile(self) -> str:
        if self.o.profile is not None:
            return self.o.profile
        page = await self._api("GET", "/v1/profiles?limit=1")
        items = page.get("items")
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            raise PlayerError("the account has no profile")
        pid = items[0].get("id")
        if not isinstance(pid, str) or not _ID_RE.fullmatch(pid):
            raise PlayerError("the account's profile has a malformed id")
        return pid

    async def _title(self, profile: str) -> str:
        if self.o.title is not None:
            return self.o.title
        assert self.o.search is not None
        q = quote(self.o.search, safe="")
        page = await self._api("GET", f"/v1/search?profile_id={profile}&limit=1&q={q}")
        items = page.get("items")
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            raise PlayerError(f"no title matches {self.o.search!r}")
        tid = items[0].get("id")
        if not isinstance(tid, str) or not _ID_RE.fullmatch(tid):
            raise PlayerError("the search answer has a malformed title id")
        log.info("event=search_hit query_chars=%d title=%s", len(self.o.search), tid)
        return tid

    # -- the play ----------------------------------------------------------------------

    async def _play(self) -> None:
        t_ask = self.clock()
        await self._sign_in()
        profile = await self._profile()
        title = await self._title(profile)
        body: dict[str, Any] = {"profile_id": profile, "title_id": title, "device": self.o.device}
        if self.o.episode is not None:
            body["episode_id"] = self.o.episode
        try:
            answer = await self._api("POST", "/v1/playback", json=body)
        except _ApiError as exc:
            raise PlayerError(f"playback refused: {exc}") from None
        play_id = answer.get("play_id")
        if not isinstance(play_id, str) or not _ID_RE.fullmatch(play_id):
            raise PlayerError("the playback answer has no usable play_id")
        self.edges = parse_edges(answer)
        self.base = self.edges[0].url
        interval = answer.get("heartbeat_interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self.heartbeat_interval = max(1.0, float(interval))
        s = self.summary
        s.title_id, s.play_id = title, play_id
        s.edges = [e.id for e in self.edges]
        s.bytes_by_edge = {e.id: 0 for e in self.edges}
        log.info(
            "event=playback_started play=%s title=%s edges=%s",
            play_id,
            title,
            ",".join(s.edges),
        )
        manifests = answer.get("manifests")
        if not isinstance(manifests, dict):
            raise PlayerError("the playback answer has no manifests")
        resume = answer.get("resume_position")
        start = 0.0
        if self.o.resume and isinstance(resume, int | float) and resume > 0:
            start = float(resume)
        self.start_position = start
        try:
            await self._with_heartbeats(
                play_id, self._load_and_stream(play_id, manifests, start, t_ask)
            )
        except BaseException as exc:
            await self._stop(play_id, error=_describe(exc))
            raise
        await self._stop(play_id)

    async def _load_and_stream(
        self, play_id: str, manifests: dict[str, Any], start: float, t_ask: float
    ) -> None:
        master = await self._multivariant(manifests)
        await self._stream(play_id, master, start, t_ask)

    async def _multivariant(self, manifests: dict[str, Any]) -> Multivariant:
        edge_url = manifests.get("hls_edge")
        if edge_url is not None:
            url = _http_url(edge_url, "manifests.hls_edge")
            text = await self._text(url)
            # Parsed against the FIRST edge's URL, under which `_on_edge` maps every URI.
            return self._parse(parse_multivariant, text, url)
        url = _http_url(manifests.get("hls"), "manifests.hls")
        text = await self._control_text(url)
        return self._parse(parse_multivariant, text, url)

    @staticmethod
    def _parse(parse: Callable[[str, str], _P], text: str, url: str) -> _P:
        try:
            return parse(text, url)
        except PlaylistError as exc:
            raise PlayerError(f"unplayable playlist {redact(url)}: {exc}") from None

    async def _control_text(self, url: str) -> str:
        """The per-session playlist from the control plane (its URL carries its token)."""
        assert self.http is not None
        try:
            async with self.http.get(
                url, timeout=aiohttp.ClientTimeout(total=10), allow_redirects=False
            ) as r:
                raw = await r.content.read(MAX_PLAYLIST_BYTES + 1)
                if r.status != 200:
                    raise PlayerError(f"the session playlist answered HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PlayerError(
                f"the session playlist is unreachable ({type(exc).__name__})"
            ) from None
        return _decode(raw, url)

    async def _text(self, url: str) -> str:
        raw = await self._fetch(url, None, limit=MAX_PLAYLIST_BYTES, timeout=self.o.min_timeout * 2)
        return _decode(raw, url)

    async def _stream(self, play_id: str, master: Multivariant, start: float, t_ask: float) -> None:
        variants = _distinct_rates(master.by_bandwidth())
        bba = Bba([v.bandwidth for v in variants], self.o.abr)
        playlists: dict[str, MediaPlaylist] = {}

        async def media(uri: str) -> MediaPlaylist:
            if uri not in playlists:
                text = await self._text(uri)
                playlists[uri] = self._parse(
                    parse_media_playlist, text, uri
                )  # URIs stay under the first edge's URL: _on_edge maps them per request
            return playlists[uri]

        first = await media(variants[0].uri)
        end = first.duration
        if self.o.duration is not None:
            end = min(end, start + self.o.duration)
        start = min(start, max(0.0, end - 0.001))
        v_index = first.index_at(start)
        position = first.segments[v_index].start
        p = Playout(
            start=position,
            end=end,
            t0=t_ask,
            speed=self.o.speed,
            # (Re)start once a segment's worth is in, as players wait for one before playing.
            resume_s=min(first.segments[v_index].duration, end - position),
        )
        self.playout = p
        decision = bba.first()
        choice = decision.index
        video_end = audio_end = position
        prev_variant: Variant | None = None
        weighted = 0.0
        media_bytes = 0
        gained: float | None = None
        seg_s: float | None = None
        n = 0
        while video_end < end - 1e-6:
            now = self.clock()
            level = p.level(now)
            if n > 0:
                decision = bba.choose(
                    level, choice, startup=decision.startup, gained_s=gained, segment_s=seg_s
                )
                choice = decision.index
            choice, pl = await self._covering(variants, choice, video_end, media)
            variant = variants[choice]
            seg = pl.segments[pl.index_at(video_end)]  # ends after video_end: it advances
            # Never more than max_buffer ahead: wait for the playhead (heartbeats meanwhile).
            room = self.o.abr.max_buffer - seg.duration
            if level > room and p.playing:
                await self._wait_for_position(p.buffered - room)
            before = p.level(self.clock())
            t_start = self.clock()
            nbytes = 0
            if seg.init is not None:
                nbytes += await self._init(seg.init.uri, seg.init.byterange)
            body = await self._fetch(seg.uri, seg.byterange, timeout=self._timeout(seg.duration))
            nbytes += len(body)
            audio = master.audio_for(variant)
            if audio is not None:
                a_bytes, audio_end = await self._audio(audio, audio_end, seg.end, media)
                nbytes += a_bytes
            else:
                audio_end = seg.end
            video_end = seg.end
            now = self.clock()
            p.add(min(video_end, audio_end), now)
            media_bytes += nbytes
            # BBA-2's startup signal: the buffer this download added, in media seconds.
            gained = p.level(now) - before
            seg_s = seg.duration
            played = min(seg.end, end) - max(seg.start, position)  # media seconds it adds
            weighted += variant.bandwidth * max(0.0, played)
            name = _variant_name(variant)
            self.summary.renditions[name] = self.summary.renditions.get(name, 0.0) + max(
                0.0, played
            )
            if prev_variant is not None and variant is not prev_variant:
                self.summary.switches += 1
                log.info(
                    "event=switch from=%s to=%s buffer_s=%.2f reason=%s",
                    _variant_name(prev_variant),
                    name,
                    before,
                    decision.reason,
                )
            prev_variant = variant
            log.debug(
                "event=segment n=%d variant=%s bytes=%d seconds=%.3f edge=%s buffer_s=%.2f",
                seg.sequence,
                name,
                nbytes,
                now - t_start,
                self.edges[self.current].id,
                p.level(now),
            )
            n += 1
            if self.on_segment is not None:
                result = self.on_segment(n, self.edges[self.current].id)
                if result is not None:
                    await result
        await self._wait_for_position(end)
        p.advance(self.clock())
        s = self.summary
        s.completed = p.finished
        s.startup_s = p.startup_s
        s.rebuffers, s.rebuffer_s = p.rebuffers, p.rebuffer_s
        s.played_s = p.position - position
        downloaded = video_end - position
        s.avg_bitrate = weighted / downloaded if downloaded > 0 else 0.0
        s.media_bitrate = media_bytes * 8 / downloaded if downloaded > 0 else 0.0

    async def _covering(
        self,
        variants: list[Variant],
        choice: int,
        position: float,
        media: Callable[[str], Awaitable[MediaPlaylist]],
    ) -> tuple[int, MediaPlaylist]:
        """The variant nearest ``choice`` (the lower one first) with media at ``position``.

        The play's end comes from the first variant's playlist; another may end sooner (a
        rendition cut short), and its last segment (``index_at`` past the end) would not
        advance the buffer: fetched again and again, a hot loop. (The first variant covers
        the whole play, so the error below is a guard, not an expected outcome.)"""
        order = sorted(range(len(variants)), key=lambda i: (abs(i - choice), i > choice))
        for i in order:
            pl = await media(variants[i].uri)
            if pl.duration > position + 1e-6:
                return i, pl
            if i not in self.short_variants:
                self.short_variants.add(i)
                log.warning(
                    "event=variant_skipped variant=%s ends_s=%.3f position=%.3f",
                    _variant_name(variants[i]),
                    pl.duration,
                    position,
                )
        raise PlayerError(f"no variant has media at {position:.3f} s")

    async def _audio(
        self,
        audio: Rendition,
        audio_end: float,
        until: float,
        media: Callable[[str], Awaitable[MediaPlaylist]],
    ) -> tuple[int, float]:
        """Audio segments from ``audio_end`` until they cover ``until`` (media seconds)."""
        assert audio.uri is not None
        pl = await media(audio.uri)
        nbytes = 0
        while audio_end < min(until, pl.duration) - 1e-6:
            seg: Segment = pl.segments[pl.index_at(audio_end)]
            if seg.init is not None:
                nbytes += await self._init(seg.init.uri, seg.init.byterange)
            body = await self._fetch(seg.uri, seg.byterange, timeout=self._timeout(seg.duration))
            nbytes += len(body)
            audio_end = seg.end
        if audio_end < until and audio_end >= pl.duration - 1e-6:
            audio_end = until  # the audio track ends first: nothing more to wait for
        return nbytes, audio_end

    async def _init(self, uri: str, byterange: ByteRange | None) -> int:
        """An initialisation section, fetched once per rendition (players keep it)."""
        key = (uri, byterange)
        if key in self.init_done:
            return 0
        body = await self._fetch(uri, byterange, timeout=self._timeout(4.0))
        self.init_done.add(key)
        return len(body)

    def _timeout(self, segment_s: float) -> float:
        return max(self.o.min_timeout, 2 * segment_s / self.o.speed)

    # -- heartbeats ------------------------------------------------------------------

    async def _wait_for_position(self, target: float) -> None:
        """Until the playhead reaches ``target`` (the heartbeats go on beside)."""
        p = self.playout
        assert p is not None
        while True:
            wait = p.until_position(target, self.clock())
            if wait is None or wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _with_heartbeats(self, play_id: str, play: Coroutine[Any, Any, None]) -> None:
        """``play`` with the heartbeats in a task beside it. A heartbeat the control plane
        refuses for good (the lease ended) ends the play; the play's end ends the heartbeats
        (both tasks are over before this returns, so the stop event comes after the last)."""
        main = asyncio.ensure_future(play)
        beat = asyncio.ensure_future(self._heartbeats(play_id))
        try:
            await asyncio.wait({main, beat}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            main.cancel()  # no-op when done; when we are cancelled, both go
            beat.cancel()
            await asyncio.gather(main, beat, return_exceptions=True)
        if not main.cancelled() or beat.cancelled() or beat.exception() is None:
            main.result()  # the play's outcome: None, or its exception
            return
        exc = beat.exception()
        assert exc is not None
        raise exc

    async def _heartbeats(self, play_id: str) -> None:
        """A progress event every ``heartbeat_interval`` wall seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.heartbeat_interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._heartbeat(play_id)
            due = max(due, loop.time() - self.heartbeat_interval)  # late: no burst after

    async def _heartbeat(self, play_id: str) -> None:
        p = self.playout
        position = self.start_position
        if p is not None:
            p.advance(self.clock())
            position = p.position
        sent = self.bytes_unreported
        try:
            await self._api(
                "POST",
                f"/v1/playback/{play_id}/events",
                json={
                    "kind": "progress",
                    "position": round(position, 3),
                    "client_at": time.time(),
                    "bytes": sent,
                },
            )
        except _ApiError as exc:
            if exc.status in (401, 402, 404, 409):
                raise PlayerError(f"the play was ended by the control plane: {exc}") from None
            log.warning("event=heartbeat_failed status=%d", exc.status)
            return
        except PlayerError as exc:
            log.warning("event=heartbeat_failed error=%r", str(exc)[:200])
            return
        self.bytes_unreported -= sent
        self.summary.heartbeats += 1
        log.info("event=heartbeat play=%s position=%.1f bytes=%d", play_id, position, sent)

    async def _stop(self, play_id: str, error: str | None = None) -> None:
        """The stop event (and an error event before it when the play failed); best effort."""
        p = self.playout
        position = 0.0 if p is None else p.position
        try:
            if error is not None:
                await self._api(
                    "POST",
                    f"/v1/playback/{play_id}/events",
                    json={"kind": "error", "error": error[:200]},
                )
            await self._api(
                "POST",
                f"/v1/playback/{play_id}/events",
                json={
                    "kind": "stop",
                    "position": round(position, 3),
                    "client_at": time.time(),
                    "bytes": self.bytes_unreported,
                },
            )
            log.info("event=playback_stopped play=%s position=%.1f", play_id, position)
        except (PlayerError, _ApiError) as exc:
            log.warning("event=stop_failed play=%s error=%r", play_id, str(exc)[:200])

    # -- edges and failover ----------------------------------------------------------

    def _on_edge(self, uri: str, k: int) -> str:
        """``uri`` (under the first edge's URL) on edge ``k``: the same path (tokens are in
        the path and every edge verifies the same keys). URIs elsewhere stay as they are."""
        if k and uri.startswith(self.base + "/"):
            return self.edges[k].url + uri[len(self.base) :]
        return uri

    async def _fetch(
        self,
        uri: str,
        byterange: ByteRange | None,
        *,
        timeout: float,
        limit: int = MAX_SEGMENT_BYTES,
    ) -> bytes:
        """GET ``uri`` (a byte range of it) from the current edge, failing over along the
        ranked edges; counts the bytes per edge."""
        failed_in_a_row = 0
        while True:
            edge = self.edges[self.current]
            url = self._on_edge(uri, self.current)
            try:
                body = await self._get(url, byterange, timeout, limit)
            except _Failover as exc:
                s = self.summary
                s.failures[edge.id] = s.failures.get(edge.id, 0) + 1
                failed_in_a_row += 1
                log.warning(
                    "event=edge_failed edge=%s url=%s reason=%r",
                    edge.id,
                    redact(url),
                    str(exc)[:200],
                )
                if failed_in_a_row >= self.o.rounds * len(self.edges):
                    raise PlayerError(
                        f"every edge failed {self.o.rounds} times in a row; last: {edge.id} ({exc})"
                    ) from None
                if len(self.edges) > 1:
                    self.current = (self.current + 1) % len(self.edges)
                    s.failovers += 1
                    log.info("event=failover from=%s to=%s", edge.id, self.edges[self.current].id)
                if failed_in_a_row % len(self.edges) == 0:
                    # A whole round failed: give the fleet a moment (a restart, a reroute).
                    await asyncio.sleep(min(2.0, 0.1 * failed_in_a_row))
                continue
            self.summary.bytes_by_edge[edge.id] = self.summary.bytes_by_edge.get(edge.id, 0) + len(
                body
            )
            self.bytes_unreported += len(body)
            return body

    async def _get(
        self, url: str, byterange: ByteRange | None, timeout: float, limit: int
    ) -> bytes:
        assert self.http is not None
        # identity: the length checks below compare the body with Content-Length, which is
        # the ENCODED length while aiohttp hands out the decoded body.
        headers = {"Accept-Encoding": "identity"}
        if byterange is not None:
            headers["Range"] = byterange.header
        try:
            async with self.http.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as r:
                if r.status >= 500 or r.status in (408, 429):
                    raise _Failover(f"HTTP {r.status}")
                if byterange is not None and r.status == 200:
                    # The whole resource for a range: this edge ignores Range (a
                    # misconfigured cache); another one may not.
                    raise _Failover("HTTP 200 (the whole resource) to a range request")
                expected = 206 if byterange is not None else 200
                if r.status != expected:
                    raise PlayerError(
                        f"GET {redact(url)} answered HTTP {r.status} (expected {expected})"
                    )
                if byterange is not None:
                    want = f"bytes {byterange.offset}-{byterange.offset + byterange.length - 1}/"
                    if not r.headers.get("Content-Range", "").startswith(want):
                        raise _Failover("a 206 for another range than asked")
                length = r.content_length
                if r.headers.get("Content-Encoding", "identity").lower() != "identity":
                    # Compressed despite the identity asked: Content-Length counts the
                    # compressed bytes, so it says nothing of the decoded body's length
                    # (aiohttp raises ClientPayloadError on a truncated compressed stream).
                    length = None
                if length is not None and length > limit:
                    raise PlayerError(f"GET {redact(url)}: {length} bytes is more than {limit}")
                body = await r.content.read(limit + 1)
                while len(body) <= limit:  # read(n) answers what has arrived so far
                    more = await r.content.read(limit + 1 - len(body))
                    if not more:
                        break
                    body += more
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            # A malformed answer (a bad status line, Content-Length: abc): this edge is broken.
            aiohttp.ClientResponseError,
            OSError,
        ) as exc:
            raise _Failover(type(exc).__name__) from None
        except TimeoutError:
            raise _Failover(f"no answer within {timeout:.2f} s") from None
        except aiohttp.ClientError as exc:
            # E.g. InvalidUrlClientError: the same URL fails on every edge. Its message holds
            # the URL and so the token: only the type and the redacted URL are told.
            raise PlayerError(f"GET {redact(url)}: {type(exc).__name__}") from None
        if len(body) > limit:
            raise PlayerError(f"GET {redact(url)}: more than {limit} bytes")
        if length is not None and len(body) != length:
            raise _Failover(f"truncated body: {len(body)} of {length} bytes")
        if byterange is not None and len(body) != byterange.length:
            raise _Failover(f"truncated range: {len(body)} of {byterange.length} bytes")
        return body


class _ApiError(PlayerError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _decode(raw: bytes, url: str) -> str:
    if len(raw) > MAX_PLAYLIST_BYTES:
        raise PlayerError(f"playlist {redact(url)} is larger than {MAX_PLAYLIST_BYTES} bytes")
    try:
        return raw.decode("utf-8")  # RFC 8216 4.1: playlists are UTF-8
    except UnicodeDecodeError:
        raise PlayerError(f"playlist {redact(url)} is not UTF-8 (RFC 8216 4.1)") from None


def _distinct_rates(variants: tuple[Variant, ...]) -> list[Variant]:
    """One variant per BANDWIDTH (the first listed), lowest first: BBA needs distinct rates."""
    out: list[Variant] = []
    for v in variants:
        if not out or v.bandwidth > out[-1].bandwidth:
            out.append(v)
    return out


def _variant_name(v: Variant) -> str:
    if v.resolution is not None:
        return f"{v.resolution[1]}p"
    return f"{v.bandwidth // 1000}k"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PlayerError):
        return str(exc)
    return type(exc).__name__
