"""A small, strict HLS playlist checker for tests (RFC 8216), independent of origin's writer.

It accepts only what a VOD CMAF ladder needs and fails loudly on anything else: unknown tags,
malformed attribute lists, EXTINF longer than the target duration, byte ranges that overlap,
leave gaps or run past their file, URIs that are absolute or name missing files, and BANDWIDTH
below the peak segment bit rate the RFC defines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_TAGS = {
    "EXT-X-VERSION",
    "EXT-X-TARGETDURATION",
    "EXT-X-PLAYLIST-TYPE",
    "EXT-X-INDEPENDENT-SEGMENTS",
    "EXT-X-MEDIA-SEQUENCE",
    "EXT-X-MAP",
    "EXTINF",
    "EXT-X-BYTERANGE",
    "EXT-X-ENDLIST",
}
MASTER_TAGS = {"EXT-X-VERSION", "EXT-X-INDEPENDENT-SEGMENTS", "EXT-X-MEDIA", "EXT-X-STREAM-INF"}
ONCE = {
    "EXT-X-VERSION",
    "EXT-X-TARGETDURATION",
    "EXT-X-PLAYLIST-TYPE",
    "EXT-X-INDEPENDENT-SEGMENTS",
    "EXT-X-MEDIA-SEQUENCE",
    "EXT-X-ENDLIST",
}
_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"\r\n]*"|[^",\s]+)(,|$)')
_DECIMAL_RE = re.compile(r"\d+(\.\d+)?")


class PlaylistError(AssertionError):
    pass


@dataclass
class Segment:
    uri: str
    duration: float
    byterange: tuple[int, int] | None  # (length, offset)
    size: int  # bytes of the segment (range length or file size)


@dataclass
class MediaPlaylist:
    path: Path
    version: int
    target: int
    segments: list[Segment]
    map_uri: str
    map_range: tuple[int, int] | None

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def peak_bandwidth(self) -> float:
        """RFC 8216, 4.3.4.2: the largest bit rate of contiguous segments lasting 0.5 to 1.5
        target durations (or of any single segment, if no run qualifies)."""
        best = 0.0
        segs = self.segments
        for i in range(len(segs)):
            size, dur = 0, 0.0
            for s in segs[i:]:
                size, dur = size + s.size, dur + s.duration
                if dur > 1.5 * self.target:
                    break
                if dur >= 0.5 * self.target:
                    best = max(best, 8 * size / dur)
        if best == 0:
            best = max((8 * s.size / s.duration for s in segs if s.duration > 0), default=0.0)
        return best


@dataclass
class Variant:
    uri: str
    attrs: dict[str, str]
    playlist: MediaPlaylist


@dataclass
class MasterPlaylist:
    path: Path
    version: int
    variants: list[Variant]
    media: list[dict[str, str]] = field(default_factory=list)
    renditions: dict[str, MediaPlaylist] = field(default_factory=dict)  # by URI


def fail(path: Path, line: int, message: str) -> PlaylistError:
    return PlaylistError(f"{path}:{line}: {message}")


def parse_attributes(text: str, path: Path, line: int) -> dict[str, str]:
    """An attribute list (RFC 8216, 4.2); quoted values keep their quotes."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _ATTR_RE.match(text, pos)
        if m is None:
            raise fail(path, line, f"malformed attribute list at {text[pos:]!r}")
        if m.group(1) in out:
            raise fail(path, line, f"attribute {m.group(1)} repeated")
        out[m.group(1)] = m.group(2)
        pos = m.end()
        if m.group(3) == "," and pos == len(text):
            raise fail(path, line, "trailing comma in attribute list")
    return out


def unquote(value: str, path: Path, line: int) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise fail(path, line, f"expected a quoted-string, got {value}")
    return value[1:-1]


def resolve(base: Path, uri: str, path: Path, line: int, root: Path) -> Path:
    """A relative URI as a file below ``root`` that exists."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", uri) or uri.startswith("/"):
        raise fail(path, line, f"URI {uri!r} is not relative")
    target = (base / uri).resolve()
    if not target.is_relative_to(root.resolve()):
        raise fail(path, line, f"URI {uri!r} leaves the title directory")
    if not target.is_file():
        raise fail(path, line, f"URI {uri!r}: no such file {target}")
    return target


def _lines(path: Path) -> list[tuple[int, str]]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise PlaylistError(f"{path}: has a byte order mark")
    text = raw.decode("utf-8")
    if "\r" in text:
        raise PlaylistError(f"{path}: CR line endings")
    lines = [(i + 1, ln) for i, ln in enumerate(text.split("\n"))]
    if not lines or lines[0][1] != "#EXTM3U":
        raise PlaylistError(f"{path}: first line is not #EXTM3U")
    for n, ln in lines:
        if ln != ln.strip():
            raise fail(path, n, "leading or trailing whitespace")
    # Blank lines are ignored (4.1); comments are lines starting with "#" but not "#EXT".
    return [
        (n, ln)
        for n, ln in lines[1:]
        if ln and not (ln.startswith("#") and not ln.startswith("#EXT"))
    ]


def _tag(ln: str) -> tuple[str, str]:
    name, _, value = ln[1:].partition(":")
    return name, value


def _byterange(text: str, path: Path, n: int) -> tuple[int, int | None]:
    m = re.fullmatch(r"(\d+)(?:@(\d+))?", text)
    if m is None:
        raise fail(path, n, f"malformed byte range {text!r}")
    return int(m.group(1)), None if m.group(2) is None else int(m.group(2))


def check_media(path: Path, root: Path | None = None, *, min_version: int = 7) -> MediaPlaylist:
    """Parse and check a VOD media playlist; every file it names must exist below ``root``."""
    root = root or path.parent
    seen: set[str] = set()
    version = 1
    target: int | None = None
    segments: list[Segment] = []
    map_uri = ""
    map_range: tuple[int, int] | None = None
    pending: float | None = None
    pending_range: tuple[int, int | None] | None = None
    ended = False
    ranges: dict[Path, list[tuple[int, int]]] = {}  # (offset, length) per resource, in order
    lines = _lines(path)
    for n, ln in lines:
        if ended:
            raise fail(path, n, "content after EXT-X-ENDLIST")
        if not ln.startswith("#"):
            if pending is None:
                raise fail(path, n, f"URI {ln!r} without EXTINF")
            if not map_uri:
                raise fail(path, n, "media segment before EXT-X-MAP (fMP4 needs one)")
            file = resolve(path.parent, ln, path, n, root)
            size = file.stat().st_size
            br: tuple[int, int] | None = None
            if pending_range is not None:
                length, offset = pending_range
                if offset is None:
                    previous = segments[-1] if segments else None
                    if previous is None or previous.uri != ln or previous.byterange is None:
                        raise fail(path, n, "EXT-X-BYTERANGE without offset, no previous range")
                    offset = previous.byterange[1] + previous.byterange[0]
                br = (length, offset)
                ranges.setdefault(file, []).append((offset, length))
                size = length
            segments.append(Segment(ln, pending, br, size))
            pending, pending_range = None, None
            continue
        name, value = _tag(ln)
        if name not in MEDIA_TAGS:
            raise fail(path, n, f"unexpected tag #{name} in a media playlist")
        if name in ONCE:
            if name in seen:
                raise fail(path, n, f"#{name} appears twice")
            seen.add(name)
        if name == "EXT-X-VERSION":
            if not value.isdigit():
                raise fail(path, n, f"bad version {value!r}")
            version = int(value)
        elif name == "EXT-X-TARGETDURATION":
            if not value.isdigit():
                raise fail(path, n, f"TARGETDURATION must be a decimal-integer, got {value!r}")
            target = int(value)
        elif name == "EXT-X-PLAYLIST-TYPE":
            if value != "VOD":
                raise fail(path, n, f"PLAYLIST-TYPE {value!r}, expected VOD")
        elif name == "EXT-X-MEDIA-SEQUENCE":
            if not value.isdigit():
                raise fail(path, n, f"bad media sequence {value!r}")
        elif name in ("EXT-X-INDEPENDENT-SEGMENTS", "EXT-X-ENDLIST"):
            if value:
                raise fail(path, n, f"#{name} takes no value")
            ended = name == "EXT-X-ENDLIST"
        elif name == "EXT-X-MAP":
            if map_uri:
                raise fail(path, n, "more than one EXT-X-MAP")
            if segments:
                raise fail(path, n, "EXT-X-MAP after the first segment")
            attrs = parse_attributes(value, path, n)
            if set(attrs) - {"URI", "BYTERANGE"} or "URI" not in attrs:
                raise fail(path, n, f"EXT-X-MAP attributes {sorted(attrs)}")
            map_uri = unquote(attrs["URI"], path, n)
            file = resolve(path.parent, map_uri, path, n, root)
            if "BYTERANGE" in attrs:
                length, offset = _byterange(unquote(attrs["BYTERANGE"], path, n), path, n)
                map_range = (length, offset or 0)
                ranges.setdefault(file, []).append((map_range[1], length))
        elif name == "EXTINF":
            if pending is not None:
                raise fail(path, n, "two EXTINF tags for one segment")
            duration, comma, _title = value.partition(",")
            if not comma or not _DECIMAL_RE.fullmatch(duration):
                raise fail(path, n, f"malformed EXTINF {value!r}")
            pending = float(duration)
            if pending <= 0:
                raise fail(path, n, "EXTINF must be positive")
        elif name == "EXT-X-BYTERANGE":
            if pending is None or pending_range is not None:
                raise fail(path, n, "EXT-X-BYTERANGE must follow EXTINF, once per segment")
            pending_range = _byterange(value, path, n)
    last = lines[-1][0] if lines else 1
    if pending is not None:
        raise fail(path, last, "EXTINF without a URI")
    for required in ("EXT-X-VERSION", "EXT-X-TARGETDURATION", "EXT-X-PLAYLIST-TYPE",
                     "EXT-X-INDEPENDENT-SEGMENTS", "EXT-X-ENDLIST"):  # fmt: skip
        if required not in seen:
            raise fail(path, last, f"#{required} missing")
    assert target is not None
    if not segments:
        raise fail(path, last, "no media segments")
    if version < min_version:
        raise fail(path, 1, f"EXT-X-VERSION {version} < {min_version} (fMP4)")
    if any(s.byterange for s in segments) and version < 4:
        raise fail(path, 1, "EXT-X-BYTERANGE needs version 4")
    for i, s in enumerate(segments):
        # 4.3.3.1: each EXTINF, rounded to the nearest integer (half up), <= TARGETDURATION.
        if math.floor(s.duration + 0.5) > target:
            raise fail(path, 1, f"segment {i} ({s.uri}) lasts {s.duration} > target {target}")
    for file, spans in ranges.items():
        size = file.stat().st_size
        position = 0
        for offset, length in spans:
            if length <= 0:
                raise PlaylistError(f"{path}: empty byte range in {file.name}")
            if offset != position:
                raise PlaylistError(
                    f"{path}: {file.name}: range @{offset} does not continue at {position}"
                )
            position = offset + length
        if position != size:
            raise PlaylistError(f"{path}: {file.name}: ranges end at {position}, file has {size}")
    return MediaPlaylist(path, version, target, segments, map_uri, map_range)


def check_master(path: Path, root: Path | None = None) -> MasterPlaylist:
    """Parse and check a multivariant playlist and every media playlist it names."""
    root = root or path.parent
    version = 1
    seen: set[str] = set()
    media: list[dict[str, str]] = []
    variants: list[Variant] = []
    pending: dict[str, str] | None = None
    renditions: dict[str, MediaPlaylist] = {}
    lines = _lines(path)
    for n, ln in lines:
        if not ln.startswith("#"):
            if pending is None:
                raise fail(path, n, f"URI {ln!r} without EXT-X-STREAM-INF")
            resolve(path.parent, ln, path, n, root)
            playlist = check_media(path.parent / ln, root)
            variants.append(Variant(ln, pending, playlist))
            pending = None
            continue
        name, value = _tag(ln)
        if name not in MASTER_TAGS:
            raise fail(path, n, f"unexpected tag #{name} in a multivariant playlist")
        if name in ONCE:
            if name in seen:
                raise fail(path, n, f"#{name} appears twice")
            seen.add(name)
        if name == "EXT-X-VERSION":
            version = int(value)
        elif name == "EXT-X-MEDIA":
            attrs = parse_attributes(value, path, n)
            for key in ("TYPE", "GROUP-ID", "NAME"):
                if key not in attrs:
                    raise fail(path, n, f"EXT-X-MEDIA without {key}")
            if attrs["TYPE"] not in ("AUDIO", "VIDEO", "SUBTITLES", "CLOSED-CAPTIONS"):
                raise fail(path, n, f"EXT-X-MEDIA TYPE {attrs['TYPE']}")
            for key in ("DEFAULT", "AUTOSELECT"):
                if attrs.get(key, "NO") not in ("YES", "NO"):
                    raise fail(path, n, f"{key} must be YES or NO")
            group, media_name = (unquote(attrs[k], path, n) for k in ("GROUP-ID", "NAME"))
            if any(m["GROUP-ID"] == group and m["NAME"] == media_name for m in media):
                raise fail(path, n, f"NAME {media_name!r} repeated in group {group!r}")
            entry = {k: (unquote(v, path, n) if v.startswith('"') else v) for k, v in attrs.items()}
            if "URI" in entry:
                resolve(path.parent, entry["URI"], path, n, root)
                renditions[entry["URI"]] = check_media(path.parent / entry["URI"], root)
            media.append(entry)
        elif name == "EXT-X-STREAM-INF":
            if pending is not None:
                raise fail(path, n, "two EXT-X-STREAM-INF without a URI between them")
            attrs = parse_attributes(value, path, n)
            for key in ("BANDWIDTH", "AVERAGE-BANDWIDTH", "CODECS", "RESOLUTION", "FRAME-RATE"):
                if key not in attrs:
                    raise fail(path, n, f"EXT-X-STREAM-INF without {key}")
            for key in ("BANDWIDTH", "AVERAGE-BANDWIDTH"):
                if not attrs[key].isdigit():
                    raise fail(path, n, f"{key} must be a decimal-integer")
            if not re.fullmatch(r"\d+x\d+", attrs["RESOLUTION"]):
                raise fail(path, n, f"RESOLUTION {attrs['RESOLUTION']}")
            if not _DECIMAL_RE.fullmatch(attrs["FRAME-RATE"]):
                raise fail(path, n, f"FRAME-RATE {attrs['FRAME-RATE']}")
            codecs = unquote(attrs["CODECS"], path, n)
            if not all(re.fullmatch(r"[a-z0-9]{4}(\.[0-9A-Za-z]+)*", c) for c in codecs.split(",")):
                raise fail(path, n, f"CODECS {codecs!r}")
            pending = {
                k: (unquote(v, path, n) if v.startswith('"') else v) for k, v in attrs.items()
            }
    if pending is not None:
        raise fail(path, lines[-1][0] if lines else 1, "EXT-X-STREAM-INF without a URI")
    if not variants:
        raise PlaylistError(f"{path}: no variants")
    groups = {m["GROUP-ID"] for m in media if m["TYPE"] == "AUDIO"}
    for v in variants:
        audio = v.attrs.get("AUDIO")
        group_peak = 0.0
        if audio is not None:
            if audio not in groups:
                raise PlaylistError(f"{path}: AUDIO group {audio!r} is not defined")
            group_peak = max(
                renditions[m["URI"]].peak_bandwidth
                for m in media
                if m["GROUP-ID"] == audio and "URI" in m
            )
        bandwidth, average = int(v.attrs["BANDWIDTH"]), int(v.attrs["AVERAGE-BANDWIDTH"])
        # 4.3.4.2: BANDWIDTH is at least the sum of the peak segment bit rates of what plays.
        needed = v.playlist.peak_bandwidth + group_peak
        if bandwidth < math.floor(needed):
            raise PlaylistError(f"{path}: {v.uri}: BANDWIDTH {bandwidth} < peak {needed:.0f}")
        if average > bandwidth:
            raise PlaylistError(f"{path}: {v.uri}: AVERAGE-BANDWIDTH above BANDWIDTH")
    return MasterPlaylist(path, version, variants, media, renditions)
