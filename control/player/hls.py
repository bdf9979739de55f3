"""HLS playlists for the reference player (RFC 8216): parsing, checking, resolving URIs.

Pure: text in, frozen dataclasses out, no I/O. Everything in a playlist comes from outside
(an edge, or a control plane the player only half trusts), so every line is checked and a
playlist that cannot be played is a `PlaylistError` naming the line and the rule, never a
crash or an unbounded allocation (sizes, counts and numbers are capped).

What is read
------------
Multivariant playlists (RFC 8216, 4.3.4): ``EXT-X-STREAM-INF`` (BANDWIDTH required,
AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE, AUDIO, PATHWAY-ID), each followed by its
URI line; ``EXT-X-MEDIA`` (TYPE, GROUP-ID and NAME required, URI, DEFAULT, AUTOSELECT,
CHANNELS); ``EXT-X-CONTENT-STEERING`` (SERVER-URI, PATHWAY-ID; draft-pantos-hls-rfc8216bis
4.4.6.6). A variant naming an AUDIO group that no EXT-X-MEDIA defines is an error (4.3.4.2).

Media playlists (4.3.3): ``EXT-X-TARGETDURATION`` (required), ``EXTINF``,
``EXT-X-BYTERANGE`` (``n[@o]``; without ``o`` the range follows the previous segment's range
of the same resource, 4.3.2.2), ``EXT-X-MAP`` (URI, BYTERANGE as a quoted ``n[@o]``, offset 0
when absent), ``EXT-X-MEDIA-SEQUENCE``, ``EXT-X-PLAYLIST-TYPE``, ``EXT-X-ENDLIST`` (required:
this player plays video on demand, not live), ``EXT-X-KEY`` (only METHOD=NONE: encrypted
media is refused). Unknown tags are ignored, as 6.3.1 requires of clients.

URIs are resolved against the playlist's own URL (RFC 3986 section 5, as 4.1 says). The
edges carry their signed-URL token in the PATH (``/_t/TOKEN/v/title/...``, edge/tokens.py)
precisely so that relative resolution keeps it: ``240p/index.m3u8`` against
``http://e/_t/TOK/v/t/master.m3u8`` is ``http://e/_t/TOK/v/t/240p/index.m3u8``. Only http and
https URIs are accepted (a ``file:`` or ``data:`` URI in a playlist from the network is
refused).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit

__all__ = [
    "MAX_PLAYLIST_BYTES",
    "ByteRange",
    "ContentSteering",
    "InitSection",
    "MediaPlaylist",
    "Multivariant",
    "PlaylistError",
    "Rendition",
    "Segment",
    "Variant",
    "parse_attributes",
    "parse_media_playlist",
    "parse_multivariant",
    "resolve",
]

MAX_PLAYLIST_BYTES: Final = 4 << 20  # a 24 h title of 2 s segments is ~2 MB of playlist
MAX_LINE: Final = 8192
MAX_SEGMENTS: Final = 200_000
MAX_VARIANTS: Final = 256
MAX_MEDIA: Final = 256
MAX_SEGMENT_SECONDS: Final = 3600.0
MAX_INT: Final = 2**63 - 1  # RFC 8216 4.2: decimal-integer is 0 to 2^64-1; we stay signed

_NAME_RE: Final = re.compile(r"[A-Z0-9-]+")
_INT_RE: Final = re.compile(r"[0-9]{1,19}")
_FLOAT_RE: Final = re.compile(r"-?[0-9]{1,15}(\.[0-9]{0,15})?")
_RESOLUTION_RE: Final = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_BYTERANGE_RE: Final = re.compile(r"([0-9]{1,19})(?:@([0-9]{1,19}))?")


class PlaylistError(ValueError):
    """A playlist this player refuses; the message names the line and the rule."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    length: int
    offset: int

    @property
    def header(self) -> str:
        """The Range header value (RFC 9110 section 14.1.2: last byte inclusive)."""
        return f"bytes={self.offset}-{self.offset + self.length - 1}"


@dataclass(frozen=True, slots=True)
class InitSection:
    uri: str
    byterange: ByteRange | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    uri: str
    duration: float
    start: float  # seconds from the playlist's start
    sequence: int  # the media sequence number (4.3.3.2)
    byterange: ByteRange | None = None
    init: InitSection | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    target_duration: int
    segments: tuple[Segment, ...]
    playlist_type: str | None = None
    version: int = 1

    @property
    def duration(self) -> float:
        return self.segments[-1].end if self.segments else 0.0

    def index_at(self, seconds: float) -> int:
        """The index of the segment holding ``seconds`` (the last one past the end).

        A binary search over the segment ends (ascending: every duration is positive): the
        player asks once per segment, and a linear scan made a hostile 200,000-segment
        playlist quadratic."""
        i = bisect.bisect_right(self.segments, seconds + 1e-6, key=lambda s: s.end)
        return min(i, len(self.segments) - 1)


@dataclass(frozen=True, slots=True)
class Rendition:
    """An EXT-X-MEDIA entry (4.3.4.1)."""

    type: str
    group_id: str
    name: str
    uri: str | None = None
    default: bool = False
    autoselect: bool = False
    channels: str | None = None


@dataclass(frozen=True, slots=True)
class Variant:
    """An EXT-X-STREAM-INF entry and its URI (4.3.4.2)."""

    uri: str
    bandwidth: int
    average_bandwidth: int | None = None
    codecs: str | None = None
    resolution: tuple[int, int] | None = None
    frame_rate: float | None = None
    audio: str | None = None
    pathway_id: str | None = None


@dataclass(frozen=True, slots=True)
class ContentSteering:
    server_uri: str
    pathway_id: str | None = None


@dataclass(frozen=True, slots=True)
class Multivariant:
    variants: tuple[Variant, ...]  # as listed
    media: tuple[Rendition, ...]
    steering: ContentSteering | None = None
    version: int = 1

    def audio_for(self, variant: Variant) -> Rendition | None:
        """The audio rendition a variant plays with: its group's DEFAULT=YES entry with a URI,
        else the group's first with a URI (None when the audio is muxed into the video)."""
        if variant.audio is None:
            return None
        group = [m for m in self.media if m.type == "AUDIO" and m.group_id == variant.audio]
        with_uri = [m for m in group if m.uri is not None]
        return next((m for m in with_uri if m.default), with_uri[0] if with_uri else None)

    def by_bandwidth(self) -> tuple[Variant, ...]:
        """The variants, lowest BANDWIDTH first (ties by resolution, then URI)."""
        return tuple(
            sorted(
                self.variants,
                key=lambda v: (v.bandwidth, v.resolution or (0, 0), v.uri),
            )
        )


# -- attribute lists (4.2) ---------------------------------------------------------------


def parse_attributes(text: str) -> dict[str, str]:
    """An attribute-list (RFC 8216 4.2) as name -> value, quoted strings without their quotes.
    Names are [A-Z0-9-]; a quoted string ends at the next '"' (no escapes exist) and may hold
    commas; a repeated name is an error (4.2: "MUST NOT contain the same AttributeName more
    than once")."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        eq = text.find("=", i)
        if eq < 0:
            raise PlaylistError(f"attribute without '=' in {text[i : i + 40]!r}")
        name = text[i:eq]
        if not _NAME_RE.fullmatch(name):
            raise PlaylistError(f"bad attribute name {name[:40]!r}")
        if name in out:
            raise PlaylistError(f"attribute {name} given twice")
        j = eq + 1
        if j < n and text[j] == '"':
            close = text.find('"', j + 1)
            if close < 0:
                raise PlaylistError(f"unterminated quoted string for {name}")
            value = text[j + 1 : close]
            if "\n" in value or "\r" in value:
                raise PlaylistError(f"line break in the quoted string of {name}")
            j = close + 1
            out[name] = value
            is_quoted = True
        else:
            comma = text.find(",", j)
            end = n if comma < 0 else comma
            value = text[j:end]
            if not value or '"' in value or any(c.isspace() for c in value):
                raise PlaylistError(f"bad value for {name}: {value[:40]!r}")
            out[name] = value
            j = end
            is_quoted = False
        if j < n:
            if text[j] != ",":
                kind = "quoted string" if is_quoted else "value"
                raise PlaylistError(f"junk after the {kind} of {name}: {text[j : j + 20]!r}")
            j += 1
            if j == n:
                raise PlaylistError("attribute list ends with ','")
        i = j
    return out


def _int(value: str, what: str) -> int:
    if not _INT_RE.fullmatch(value) or int(value) > MAX_INT:
        raise PlaylistError(f"{what} is not a decimal-integer: {value[:40]!r}")
    return int(value)


def _float(value: str, what: str, *, lo: float = 0.0, hi: float = 1e9) -> float:
    if not _FLOAT_RE.fullmatch(value):
        raise PlaylistError(f"{what} is not a decimal-floating-point: {value[:40]!r}")
    f = float(value)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise PlaylistError(f"{what} {value} is out of range [{lo:g}, {hi:g}]")
    return f


def _byterange(value: str, what: str) -> tuple[int, int | None]:
    m = _BYTERANGE_RE.fullmatch(value)
    if m is None:
        raise PlaylistError(f"{what} is not n[@o]: {value[:40]!r}")
    length = int(m.group(1))
    offset = None if m.group(2) is None else int(m.group(2))
    if length <= 0 or length > MAX_INT or (offset is not None and offset > MAX_INT - length):
        raise PlaylistError(f"{what} {value} is out of range")
    return length, offset


def resolve(base: str, uri: str) -> str:
    """``uri`` resolved against the playlist URL ``base`` (RFC 3986 section 5); only http(s)
    results without whitespace or control characters are accepted."""
    if not uri or any(c.isspace() or not c.isprintable() for c in uri):
        raise PlaylistError(f"bad URI {uri[:80]!r}")
    try:
        out = urljoin(base, uri)
        u = urlsplit(out)
        # `.port` parses the port (ValueError when it is not 0-65535); urljoin/urlsplit raise
        # ValueError on a broken IPv6 literal ("http://[::1/x"). Either is the playlist's fault.
        u.port  # noqa: B018
    except ValueError:
        raise PlaylistError(f"URI {uri[:80]!r} is not a valid URL") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise PlaylistError(f"URI {uri[:80]!r} is not an http(s) URL")
    return out


def _lines(text: str) -> list[str]:
    if len(text) > MAX_PLAYLIST_BYTES:
        raise PlaylistError(f"playlist larger than {MAX_PLAYLIST_BYTES} bytes")
    if text.startswith("\ufeff"):  # 4.1: no BOM; tolerated since it cannot mean anything else
        text = text[1:]
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].rstrip() != "#EXTM3U":
        raise PlaylistError("line 1: a playlist must start with #EXTM3U (RFC 8216 4.3.1.1)")
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise PlaylistError(f"line {n}: longer than {MAX_LINE} characters")
        if "\x00" in line or "\r" in line:
            raise PlaylistError(f"line {n}: control character")
    return lines


def _tag(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name, value


_MEDIA_TAGS: Final = frozenset(
    {"#EXTINF", "#EXT-X-TARGETDURATION", "#EXT-X-BYTERANGE", "#EXT-X-MEDIA-SEQUENCE",
     "#EXT-X-ENDLIST", "#EXT-X-MAP", "#EXT-X-PLAYLIST-TYPE", "#EXT-X-KEY"}
)  # fmt: skip
_MULTIVARIANT_TAGS: Final = frozenset({"#EXT-X-STREAM-INF", "#EXT-X-MEDIA"})


def _version(value: str, n: int) -> int:
    v = _int(value, f"line {n}: EXT-X-VERSION")
    if not 1 <= v <= 12:
        raise PlaylistError(f"line {n}: EXT-X-VERSION {v} is not supported")
    return v


# -- multivariant playlists (4.3.4) ------------------------------------------------------


def parse_multivariant(text: str, url: str) -> Multivariant:
    """The multivariant playlist ``text`` fetched from ``url`` (URIs resolved against it)."""
    lines = _lines(text)
    variants: list[Variant] = []
    media: list[Rendition] = []
    steering: ContentSteering | None = None
    version = 1
    pending: tuple[int, dict[str, str]] | None = None
    for n, raw in enumerate(lines[1:], 2):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            if pending is None:
                raise PlaylistError(f"line {n}: a URI without EXT-X-STREAM-INF before it")
            variants.append(_variant(pending[0], pending[1], resolve(url, line)))
            if len(variants) > MAX_VARIANTS:
                raise PlaylistError(f"more than {MAX_VARIANTS} variants")
            pending = None
            continue
        if not line.startswith("#EXT"):
            continue  # a comment (4.1)
        if pending is not None:
            raise PlaylistError(
                f"line {pending[0]}: EXT-X-STREAM-INF must be followed by its URI (4.3.4.2)"
            )
        name, value = _tag(line)
        if name in _MEDIA_TAGS:
            raise PlaylistError(
                f"line {n}: {name[1:]} is a media playlist tag; a playlist cannot be both (4.1)"
            )
        if name == "#EXT-X-VERSION":
            version = _version(value, n)
        elif name == "#EXT-X-STREAM-INF":
            pending = (n, _attrs(value, n))
        elif name == "#EXT-X-MEDIA":
            media.append(_media(_attrs(value, n), url, n))
            if len(media) > MAX_MEDIA:
                raise PlaylistError(f"more than {MAX_MEDIA} EXT-X-MEDIA tags")
        elif name == "#EXT-X-CONTENT-STEERING":
            if steering is not None:
                raise PlaylistError(f"line {n}: EXT-X-CONTENT-STEERING given twice")
            a = _attrs(value, n)
            if "SERVER-URI" not in a:
                raise PlaylistError(f"line {n}: EXT-X-CONTENT-STEERING without SERVER-URI")
            steering = ContentSteering(resolve(url, a["SERVER-URI"]), a.get("PATHWAY-ID"))
    if pending is not None:
        raise PlaylistError(f"line {pending[0]}: EXT-X-STREAM-INF without a URI after it")
    if not variants:
        raise PlaylistError("no EXT-X-STREAM-INF: not a multivariant playlist (4.3.4.2)")
    groups = {m.group_id for m in media if m.type == "AUDIO"}
    for v in variants:
        if v.audio is not None and v.audio not in groups:
            raise PlaylistError(
                f"variant {v.uri[-60:]!r} names AUDIO group {v.audio!r}, which no EXT-X-MEDIA"
                " defines (4.3.4.2)"
            )
    return Multivariant(tuple(variants), tuple(media), steering, version)


def _attrs(value: str, n: int) -> dict[str, str]:
    try:
        return parse_attributes(value)
    except PlaylistError as exc:
        raise PlaylistError(f"line {n}: {exc}") from None


def _variant(n: int, a: dict[str, str], uri: str) -> Variant:
    if "BANDWIDTH" not in a:
        raise PlaylistError(f"line {n}: EXT-X-STREAM-INF without BANDWIDTH (4.3.4.2)")
    bandwidth = _int(a["BANDWIDTH"], f"line {n}: BANDWIDTH")
    if bandwidth <= 0:
        raise PlaylistError(f"line {n}: BANDWIDTH must be positive")
    average = None
    if "AVERAGE-BANDWIDTH" in a:
        average = _int(a["AVERAGE-BANDWIDTH"], f"line {n}: AVERAGE-BANDWIDTH")
    resolution = None
    if "RESOLUTION" in a:
        m = _RESOLUTION_RE.fullmatch(a["RESOLUTION"])
        if m is None:
            raise PlaylistError(f"line {n}: RESOLUTION is not WxH: {a['RESOLUTION'][:40]!r}")
        resolution = (int(m.group(1)), int(m.group(2)))
    frame_rate = None
    if "FRAME-RATE" in a:
        frame_rate = _float(a["FRAME-RATE"], f"line {n}: FRAME-RATE", lo=0.0, hi=1000.0)
    return Variant(
        uri=uri,
        bandwidth=bandwidth,
        average_bandwidth=average,
        codecs=a.get("CODECS"),
        resolution=resolution,
        frame_rate=frame_rate,
        audio=a.get("AUDIO"),
        pathway_id=a.get("PATHWAY-ID"),
    )


def _yes_no(a: dict[str, str], key: str, n: int) -> bool:
    value = a.get(key, "NO")
    if value not in ("YES", "NO"):
        raise PlaylistError(f"line {n}: {key} must be YES or NO, not {value[:20]!r}")
    return value == "YES"


def _media(a: dict[str, str], url: str, n: int) -> Rendition:
    for key in ("TYPE", "GROUP-ID", "NAME"):
        if key not in a:
            raise PlaylistError(f"line {n}: EXT-X-MEDIA without {key} (4.3.4.1)")
    kind = a["TYPE"]
    if kind not in ("AUDIO", "VIDEO", "SUBTITLES", "CLOSED-CAPTIONS"):
        raise PlaylistError(f"line {n}: EXT-X-MEDIA TYPE {kind[:20]!r} is not valid")
    uri = a.get("URI")
    if kind == "CLOSED-CAPTIONS" and uri is not None:
        raise PlaylistError(f"line {n}: CLOSED-CAPTIONS must not have a URI (4.3.4.1)")
    if kind == "SUBTITLES" and uri is None:
        raise PlaylistError(f"line {n}: SUBTITLES needs a URI (4.3.4.1)")
    return Rendition(
        type=kind,
        group_id=a["GROUP-ID"],
        name=a["NAME"],
        uri=None if uri is None else resolve(url, uri),
        default=_yes_no(a, "DEFAULT", n),
        autoselect=_yes_no(a, "AUTOSELECT", n),
        channels=a.get("CHANNELS"),
    )


# -- media playlists (4.3.3) -------------------------------------------------------------


def parse_media_playlist(text: str, url: str) -> MediaPlaylist:
    """The VOD media playlist ``text`` fetched from ``url`` (URIs resolved against it)."""
    lines = _lines(text)
    target: int | None = None
    sequence = 0
    playlist_type: str | None = None
    version = 1
    endlist = False
    init: InitSection | None = None
    duration: float | None = None
    byterange: tuple[int, int | None] | None = None
    # 4.3.2.2: a range without an offset follows the previous segment's range, which must
    # be of the same resource.
    last_range: tuple[str, int] | None = None  # (uri, next offset)
    segments: list[Segment] = []
    start = 0.0
    for n, raw in enumerate(lines[1:], 2):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            if duration is None:
                raise PlaylistError(f"line {n}: a segment URI without EXTINF (4.3.2.1)")
            if endlist:
                raise PlaylistError(f"line {n}: a segment after EXT-X-ENDLIST")
            uri = resolve(url, line)
            br = None
            if byterange is not None:
                length, offset = byterange
                if offset is None:
                    if last_range is None or last_range[0] != uri:
                        raise PlaylistError(
                            f"line {n}: EXT-X-BYTERANGE without an offset must follow a range of"
                            " the same resource (4.3.2.2)"
                        )
                    offset = last_range[1]
                br = ByteRange(length, offset)
                last_range = (uri, offset + length)
            else:
                last_range = None
            segments.append(Segment(uri, duration, start, sequence + len(segments), br, init))
            if len(segments) > MAX_SEGMENTS:
                raise PlaylistError(f"more than {MAX_SEGMENTS} segments")
            start += duration
            duration, byterange = None, None
            continue
        if not line.startswith("#EXT"):
            continue
        name, value = _tag(line)
        if name in _MULTIVARIANT_TAGS:
            raise PlaylistError(
                f"line {n}: {name[1:]} is a multivariant playlist tag; a playlist cannot be"
                " both (4.1)"
            )
        if name == "#EXT-X-VERSION":
            version = _version(value, n)
        elif name == "#EXT-X-TARGETDURATION":
            target = _int(value, f"line {n}: EXT-X-TARGETDURATION")
            if not 1 <= target <= MAX_SEGMENT_SECONDS:
                raise PlaylistError(f"line {n}: EXT-X-TARGETDURATION {target} is out of range")
        elif name == "#EXT-X-MEDIA-SEQUENCE":
            if segments:
                raise PlaylistError(f"line {n}: EXT-X-MEDIA-SEQUENCE after the first segment")
            sequence = _int(value, f"line {n}: EXT-X-MEDIA-SEQUENCE")
        elif name == "#EXT-X-PLAYLIST-TYPE":
            if value not in ("VOD", "EVENT"):
                raise PlaylistError(f"line {n}: EXT-X-PLAYLIST-TYPE {value[:20]!r} is not valid")
            playlist_type = value
        elif name == "#EXTINF":
            if duration is not None:
                raise PlaylistError(f"line {n}: EXTINF twice before a URI")
            seconds = value.partition(",")[0]
            duration = _float(seconds, f"line {n}: EXTINF", lo=0.0, hi=MAX_SEGMENT_SECONDS)
            if duration <= 0:
                raise PlaylistError(f"line {n}: EXTINF duration must be positive")
        elif name == "#EXT-X-BYTERANGE":
            byterange = _byterange(value, f"line {n}: EXT-X-BYTERANGE")
        elif name == "#EXT-X-MAP":
            a = _attrs(value, n)
            if "URI" not in a:
                raise PlaylistError(f"line {n}: EXT-X-MAP without URI (4.3.2.5)")
            map_range = None
            if "BYTERANGE" in a:
                # 4.3.2.5: the same n[@o] form; an absent offset means the resource's start.
                length, offset = _byterange(a["BYTERANGE"], f"line {n}: EXT-X-MAP BYTERANGE")
                map_range = ByteRange(length, offset or 0)
            init = InitSection(resolve(url, a["URI"]), map_range)
        elif name == "#EXT-X-KEY":
            a = _attrs(value, n)
            if a.get("METHOD") != "NONE":
                raise PlaylistError(f"line {n}: encrypted media (EXT-X-KEY) is not supported")
        elif name == "#EXT-X-ENDLIST":
            endlist = True
    if target is None:
        raise PlaylistError("no EXT-X-TARGETDURATION: not a media playlist (4.3.3.1)")
    if duration is not None:
        raise PlaylistError("EXTINF at the end without a segment URI")
    if not endlist:
        raise PlaylistError("no EXT-X-ENDLIST: live playlists are not supported (VOD only)")
    if not segments:
        raise PlaylistError("the media playlist has no segments")
    for s in segments:
        # 4.3.3.1: every EXTINF rounded to the nearest integer is <= the target duration.
        if math.floor(s.duration + 0.5) > target:
            raise PlaylistError(
                f"segment {s.sequence} lasts {s.duration:g} s, more than"
                f" EXT-X-TARGETDURATION {target} (4.3.3.1)"
            )
    return MediaPlaylist(target, tuple(segments), playlist_type, version)
