"""Ingest: a studio source video turned into an ABR ladder packaged for HLS and DASH.

``ingest_title`` validates the title id and the source before anything is written, then

1. encodes every selected rung (``origin.ladder.select``) with libx264 straight into CMAF
   fragments (ffmpeg's HLS muxer with fMP4 segments: ``{rung}/init.mp4`` + ``seg00001.m4s``...),
   and the audio once per distinct audio bitrate of the ladder (``audio_128k/...``), in parallel
   up to ``parallel`` ffmpeg processes, each retried ``retries`` times;
2. reads the timing and codec of every segment back from its ``moof``/``moov`` boxes, and writes
   the playlists and the MPD itself, so both describe exactly the bytes on disk;
3. concatenates each rendition into ``{rung}/single.mp4`` (the init segment then every media
   segment, byte for byte), so the byte-range variant addresses the very same segments;
4. writes ``poster.jpg``, ``sprite.jpg`` + ``sprite.vtt`` and, last, ``manifest.json``.

Layout of ``work_dir/<title>/`` (every URI inside is relative, so the files can live under
``/v/<title>/`` on any host and a token in the path, ``/_t/TOKEN/v/<title>/``, survives)::

    master.m3u8            HLS multivariant playlist: one variant per rung + audio groups
    master_single.m3u8     the same over the byte-range playlists
    manifest.mpd           DASH (isoff-live profile, SegmentTemplate + SegmentTimeline)
    {rung}/index.m3u8      media playlist over init.mp4 + seg00001.m4s ...
    {rung}/single.m3u8     media playlist over byte ranges of single.mp4
    audio_{kbps}k/...      the same for each audio rendition
    poster.jpg  sprite.jpg  sprite.vtt  manifest.json

Audio is a separate rendition (an ``EXT-X-MEDIA`` audio group in HLS, its own AdaptationSet in
DASH), not muxed into the video segments: CMAF tracks carry one media type, DASH players (dash.js,
Shaka) do not play multiplexed representations, and a ladder of five video rungs then stores its
audio once per bitrate instead of five times. Each rung names the audio bitrate it plays with.

The packaging text (playlists, MPD, sprite WebVTT, manifest) is made by pure functions over
``Track`` values, shared with ``origin.synth``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import shutil
import struct
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import xxhash

from . import ffmpeg
from .ladder import DEFAULT_LADDER, Rung, select

__all__ = [
    "IngestError",
    "IngestResult",
    "Mp4Error",
    "SpritePlan",
    "Track",
    "build_manifest",
    "check_title",
    "content_type",
    "dash_mpd",
    "describe_files",
    "ingest_title",
    "master_playlist",
    "media_playlist",
    "package_track",
    "parse_init",
    "parse_segment",
    "peak_bandwidth",
    "segment_name",
    "sprite_plan",
    "sprite_vtt",
    "target_duration",
    "write_manifest",
    "write_packaging",
]

log = logging.getLogger("origin.ingest")

TITLE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TITLE_RULE: Final = (
    "a title id must match [a-z0-9][a-z0-9_-]{0,63}: lower-case letters, digits, '_' and '-',"
    " starting with a letter or digit, at most 64 characters"
)
X264_PRESETS: Final = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
]
FIRST_SEGMENT: Final = 1  # seg00001.m4s; DASH startNumber
HLS_VERSION: Final = 7
INIT: Final = "init.mp4"
SINGLE: Final = "single.mp4"
FFMPEG_PLAYLIST: Final = ".ffmpeg.m3u8"  # what ffmpeg's HLS muxer insists on writing; removed
POSTER: Final = "poster.jpg"
SPRITE: Final = "sprite.jpg"
SPRITE_VTT: Final = "sprite.vtt"
MANIFEST: Final = "manifest.json"
THUMB_WIDTH: Final = 160
SPRITE_COLUMNS: Final = 10
MAX_THUMBS: Final = 1000  # 100 rows of 90 px: within what browsers decode comfortably
AUDIO_CHANNELS: Final = 2
AUDIO_RATE: Final = 48000
CONTENT_TYPES: Final = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
    ".json": "application/json",
}


class IngestError(RuntimeError):
    """The encodes ran but their output cannot be packaged (a bug or a broken encoder)."""


class Mp4Error(IngestError):
    """An init or media segment is not the fragmented MP4 the packager expects."""


def check_title(title: str) -> str:
    """``title`` if it is a safe id (a path component under /v/ and a storage key), else
    ``ValueError`` naming the rule."""
    if not isinstance(title, str) or not TITLE_RE.fullmatch(title):
        raise ValueError(f"invalid title {title!r}: {TITLE_RULE}")
    return title


# == fragmented MP4: just enough of ISO/IEC 14496-12 to read timing and codecs ==============


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Mp4Error(f"{end - pos} stray bytes at offset {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise Mp4Error(f"truncated large box at offset {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # "extends to the end of the file"
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} at offset {pos}: size {size} overruns its parent")
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, *path: bytes) -> tuple[int, int]:
    """(payload start, end) of the first box along ``path`` below ``data[start:end]``."""
    for kind in path:
        for k, s, e in _boxes(data, start, end):
            if k == kind:
                start, end = s, e
                break
        else:
            raise Mp4Error(f"no {kind.decode('latin-1')} box")
    return start, end


@dataclass(frozen=True)
class InitInfo:
    kind: str  # "video" | "audio"
    timescale: int
    codecs: str  # RFC 6381, as HLS CODECS and DASH @codecs want it
    default_duration: int  # trex default_sample_duration
    width: int = 0
    height: int = 0
    channels: int = 0
    sample_rate: int = 0


def parse_init(data: bytes) -> InitInfo:
    """Timescale, codec string and picture or channel layout of a one-track init segment."""
    ms, me = _child(data, 0, len(data), b"moov")
    ts, te = _child(data, ms, me, b"trak")
    ds, de = _child(data, ts, te, b"mdia")
    hs, _ = _child(data, ds, de, b"mdhd")
    version = data[hs]
    (timescale,) = struct.unpack_from(">I", data, hs + (20 if version == 1 else 12))
    hd, _ = _child(data, ds, de, b"hdlr")
    handler = data[hd + 8 : hd + 12]
    ss, se = _child(data, ds, de, b"minf", b"stbl", b"stsd")
    entries = list(_boxes(data, ss + 8, se))
    if not entries:
        raise Mp4Error("empty stsd")
    fmt, es, ee = entries[0]
    default_duration = 0
    with_mvex = [b for b in _boxes(data, ms, me) if b[0] == b"mvex"]
    if with_mvex:
        for k, s, _e in _boxes(data, with_mvex[0][1], with_mvex[0][2]):
            if k == b"trex":
                (default_duration,) = struct.unpack_from(">I", data, s + 12)
    if handler == b"vide" and fmt in (b"avc1", b"avc3"):
        width, height = struct.unpack_from(">HH", data, es + 24)
        cs, _ = _child(data, es + 78, ee, b"avcC")
        profile, compat, level = data[cs + 1], data[cs + 2], data[cs + 3]
        codecs = f"{fmt.decode()}.{profile:02x}{compat:02x}{level:02x}"
        return InitInfo("video", timescale, codecs, default_duration, width=width, height=height)
    if handler == b"soun" and fmt == b"mp4a":
        channels = struct.unpack_from(">H", data, es + 16)[0]
        sample_rate = struct.unpack_from(">I", data, es + 24)[0] >> 16
        xs, xe = _child(data, es + 28, ee, b"esds")
        codecs = "mp4a." + _esds_codec(data[xs + 4 : xe])
        return InitInfo(
            "audio", timescale, codecs, default_duration, channels=channels, sample_rate=sample_rate
        )
    raise Mp4Error(f"unsupported track: handler {handler!r}, sample entry {fmt!r}")


def _esds_codec(d: bytes) -> str:
    """ "40.2" for AAC-LC: objectTypeIndication and audioObjectType (RFC 6381, 3.3)."""

    def descriptor(pos: int) -> tuple[int, int, int]:  # tag, payload start, payload end
        tag, size, pos = d[pos], 0, pos + 1
        for _ in range(4):
            b = d[pos]
            pos += 1
            size = (size << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        return tag, pos, pos + size

    tag, pos, _ = descriptor(0)
    if tag != 0x03:
        raise Mp4Error("esds without ES_Descriptor")
    flags = d[pos + 2]
    pos += 3
    if flags & 0x80:
        pos += 2
    if flags & 0x40:
        pos += 1 + d[pos]
    if flags & 0x20:
        pos += 2
    tag, pos, end = descriptor(pos)
    if tag != 0x04:
        raise Mp4Error("esds without DecoderConfigDescriptor")
    oti = d[pos]
    if pos + 13 >= end:
        return f"{oti:02x}"
    tag, pos, _ = descriptor(pos + 13)
    aot = d[pos] >> 3 if tag == 0x05 else 0
    if aot == 31:
        aot = 32 + (((d[pos] & 0x07) << 3) | (d[pos + 1] >> 5))
    return f"{oti:02x}.{aot}" if aot else f"{oti:02x}"


@dataclass(frozen=True)
class SegmentTiming:
    start: int  # baseMediaDecodeTime of its first fragment, in the track's timescale
    duration: int  # sum of its sample durations
    sample_duration: int  # the most common sample duration (the frame duration for video)


def parse_segment(data: bytes, default_duration: int = 0) -> SegmentTiming:
    """Timing of one CMAF media segment (``styp``/``sidx``/``moof``+``mdat``...).

    Refuses fragments whose data offsets are absolute (``tfhd`` base-data-offset): such a
    segment would break once concatenated into ``single.mp4``. Also refuses a segment that does
    not start with a sync sample, which ``EXT-X-INDEPENDENT-SEGMENTS`` and DASH ``startWithSAP``
    promise.
    """
    start: int | None = None
    total = 0
    counts: Counter[int] = Counter()
    first_sync: bool | None = None
    for kind, ms, me in _boxes(data):
        if kind != b"moof":
            continue
        for tk, ts, te in _boxes(data, ms, me):
            if tk != b"traf":
                continue
            default_dur, default_flags = default_duration, 0
            for bk, bs, _be in _boxes(data, ts, te):
                if bk == b"tfhd":
                    flags = int.from_bytes(data[bs + 1 : bs + 4], "big")
                    if flags & 0x000001:
                        raise Mp4Error("tfhd base-data-offset: segment not relocatable")
                    pos = bs + 8 + (4 if flags & 0x000002 else 0)
                    if flags & 0x000008:
                        (default_dur,) = struct.unpack_from(">I", data, pos)
                        pos += 4
                    if flags & 0x000010:
                        pos += 4
                    if flags & 0x000020:
                        (default_flags,) = struct.unpack_from(">I", data, pos)
                elif bk == b"tfdt":
                    if data[bs] == 1:
                        (t,) = struct.unpack_from(">Q", data, bs + 4)
                    else:
                        (t,) = struct.unpack_from(">I", data, bs + 4)
                    if start is None:
                        start = t
                elif bk == b"trun":
                    flags = int.from_bytes(data[bs + 1 : bs + 4], "big")
                    (count,) = struct.unpack_from(">I", data, bs + 4)
                    pos = bs + 8 + (4 if flags & 0x001 else 0)
                    first_flags: int | None = None
                    if flags & 0x004:
                        (first_flags,) = struct.unpack_from(">I", data, pos)
                        pos += 4
                    for i in range(count):
                        dur = default_dur
                        sample_flags = default_flags
                        if flags & 0x100:
                            (dur,) = struct.unpack_from(">I", data, pos)
                            pos += 4
                        if flags & 0x200:
                            pos += 4
                        if flags & 0x400:
                            (sample_flags,) = struct.unpack_from(">I", data, pos)
                            pos += 4
                        if flags & 0x800:
                            pos += 4
                        if i == 0 and first_flags is not None:
                            sample_flags = first_flags
                        if first_sync is None:
                            first_sync = not sample_flags & 0x00010000  # is_non_sync_sample
                        total += dur
                        counts[dur] += 1
    if start is None or not counts:
        raise Mp4Error("no movie fragment with samples")
    if not first_sync:
        raise Mp4Error("segment does not start with a sync sample")
    return SegmentTiming(start, total, counts.most_common(1)[0][0])


# == packaging: pure text from Track values =================================================


@dataclass(frozen=True)
class Track:
    """One packaged rendition: a directory with init.mp4, numbered segments and single.mp4."""

    name: str  # its directory, and DASH Representation id
    kind: str  # "video" | "audio"
    codecs: str
    timescale: int
    init_size: int
    starts: tuple[int, ...]  # per segment, in timescale units
    durations: tuple[int, ...]
    sizes: tuple[int, ...]  # bytes
    width: int = 0
    height: int = 0
    frame_rate: Fraction = Fraction(0)
    channels: int = 0
    sample_rate: int = 0
    audio: str = ""  # for video: the audio track it plays with ("" if none)

    @property
    def seconds(self) -> list[float]:
        return [d / self.timescale for d in self.durations]

    @property
    def duration(self) -> float:
        return sum(self.durations) / self.timescale

    @property
    def target_duration(self) -> int:
        return target_duration(self.seconds)

    @property
    def peak_bandwidth(self) -> int:
        return peak_bandwidth(self.sizes, self.seconds, self.target_duration)

    @property
    def average_bandwidth(self) -> int:
        return math.ceil(8 * sum(self.sizes) / self.duration) if self.duration > 0 else 0


def segment_name(number: int) -> str:
    return f"seg{number:05d}.m4s"


def target_duration(seconds: Sequence[float]) -> int:
    """RFC 8216, 4.3.3.1: every EXTINF, rounded to the nearest integer, must be <= this.

    Rounded half up (2.5 -> 3), never down: a target one too small is a spec violation that
    Apple's validator and some players reject, one too large only delays live-edge logic, which a
    VOD playlist does not have.
    """
    return max(1, *(math.floor(s + 0.5) for s in seconds)) if seconds else 1


def peak_bandwidth(sizes: Sequence[int], seconds: Sequence[float], target: int) -> int:
    """Peak segment bit rate as RFC 8216, 4.3.4.2 defines it for BANDWIDTH.

    The largest bit rate of any run of contiguous segments lasting between 0.5 and 1.5 times the
    target duration (a lone short last segment, mostly container overhead, does not count on its
    own). If no run qualifies (a clip shorter than half a target), the largest single segment.
    """
    best = 0.0
    lo, hi = 0.5 * target, 1.5 * target
    for i in range(len(sizes)):
        size, dur = 0, 0.0
        for j in range(i, len(sizes)):
            size += sizes[j]
            dur += seconds[j]
            if dur > hi:
                break
            if dur >= lo:
                best = max(best, 8 * size / dur)
    if best == 0:
        rates = [8 * b / s for b, s in zip(sizes, seconds, strict=True) if s > 0]
        best = max(rates, default=0.0)
    return math.ceil(best)


def _extinf(seconds: float) -> str:
    return f"#EXTINF:{seconds:.6f},"


def media_playlist(track: Track, *, single: bool = False) -> str:
    """A VOD media playlist over the segment files, or over byte ranges of ``single.mp4``.

    Version 7: EXT-X-MAP without I-frames-only needs 6 (RFC 8216, 4.3.2.5) and fMP4 segments are
    what Apple's tools label 7; byte ranges need 4. EXT-X-INDEPENDENT-SEGMENTS holds because every
    segment starts with an IDR frame of a closed GOP (checked by ``parse_segment``).
    """
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{track.target_duration}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if single:
        # The init segment is the first bytes of single.mp4 (RFC 8216, 4.3.2.5: BYTERANGE in
        # EXT-X-MAP is "n@o" as a quoted string); each media segment follows without a gap.
        lines.append(f'#EXT-X-MAP:URI="{SINGLE}",BYTERANGE="{track.init_size}@0"')
        offset = track.init_size
        for seconds, size in zip(track.seconds, track.sizes, strict=True):
            # The offset is always written, so no range depends on the one before it.
            lines += [_extinf(seconds), f"#EXT-X-BYTERANGE:{size}@{offset}", SINGLE]
            offset += size
    else:
        lines.append(f'#EXT-X-MAP:URI="{INIT}"')
        for i, seconds in enumerate(track.seconds):
            lines += [_extinf(seconds), segment_name(FIRST_SEGMENT + i)]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def variant_bandwidth(video: Track, audios: Sequence[Track]) -> tuple[int, int]:
    """(BANDWIDTH, AVERAGE-BANDWIDTH) of a variant: its video plus the audio it plays with.

    RFC 8216, 4.3.4.2: BANDWIDTH is the largest sum of peak segment bit rates of any playable
    combination of renditions, so the audio group's peak is added to the video's.
    """
    audio = [a for a in audios if a.name == video.audio]
    peak = video.peak_bandwidth + max((a.peak_bandwidth for a in audio), default=0)
    avg = video.average_bandwidth + max((a.average_bandwidth for a in audio), default=0)
    return peak, avg


def variant_codecs(video: Track, audios: Sequence[Track]) -> str:
    audio = [a.codecs for a in audios if a.name == video.audio]
    return ",".join([video.codecs, *audio[:1]])


def master_playlist(
    videos: Sequence[Track], audios: Sequence[Track], *, single: bool = False
) -> str:
    """The multivariant playlist: one EXT-X-STREAM-INF per video track, lowest bandwidth first
    (players pick their own start; Safari starts at the first listed, so at the lowest), and one
    audio group per audio track, named after it, each holding that one rendition."""
    playlist = "single.m3u8" if single else "index.m3u8"
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS", ""]
    for a in audios:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{a.name}",NAME="audio",DEFAULT=YES,'
            f'AUTOSELECT=YES,CHANNELS="{a.channels}",URI="{a.name}/{playlist}"'
        )
    if audios:
        lines.append("")
    for v in sorted(videos, key=lambda t: variant_bandwidth(t, audios)):
        bandwidth, average = variant_bandwidth(v, audios)
        attrs = [
            f"BANDWIDTH={bandwidth}",
            f"AVERAGE-BANDWIDTH={average}",
            f'CODECS="{variant_codecs(v, audios)}"',
            f"RESOLUTION={v.width}x{v.height}",
            f"FRAME-RATE={float(v.frame_rate):.3f}",
        ]
        if v.audio and any(a.name == v.audio for a in audios):
            attrs.append(f'AUDIO="{v.audio}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), f"{v.name}/{playlist}"]
    return "\n".join(lines) + "\n"


def _iso_duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def _timeline(track: Track) -> ET.Element:
    """A SegmentTimeline: runs of equal durations as one S@r, S@t only where time jumps."""
    timeline = ET.Element("SegmentTimeline")
    expected: int | None = None
    run: ET.Element | None = None
    for start, dur in zip(track.starts, track.durations, strict=True):
        if run is not None and start == expected and int(run.get("d", "0")) == dur:
            run.set("r", str(int(run.get("r", "0")) + 1))
        else:
            run = ET.SubElement(timeline, "S")
            if start != expected:
                run.set("t", str(start))
            run.set("d", str(dur))
        expected = start + dur
    return timeline


def _aligned(tracks: Sequence[Track]) -> bool:
    """Whether the tracks' segments start and end at the same times (to a millisecond)."""

    def bounds(t: Track) -> list[int]:
        return [round(1000 * s / t.timescale) for s in t.starts] + [round(1000 * t.duration)]

    return len({tuple(bounds(t)) for t in tracks}) <= 1


def dash_mpd(videos: Sequence[Track], audios: Sequence[Track], duration: float) -> str:
    """A static MPD over the same segment files as the HLS playlists (isoff-live profile).

    Each Representation carries its own SegmentTemplate and SegmentTimeline built from the
    segments' tfdt and sample durations, so the MPD states exactly what the files contain.
    """
    longest = max((s for t in (*videos, *audios) for s in t.seconds), default=1.0)
    mpd = ET.Element(
        "MPD",
        {
            "xmlns": "urn:mpeg:dash:schema:mpd:2011",
            "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
            "type": "static",
            "mediaPresentationDuration": _iso_duration(duration),
            # A player that buffers this much before starting never stalls at @bandwidth,
            # which is each track's peak segment bit rate: so the longest segment.
            "minBufferTime": _iso_duration(math.ceil(longest * 1000) / 1000),
        },
    )
    period = ET.SubElement(mpd, "Period", {"id": "0", "start": "PT0S"})
    for set_id, (kind, tracks) in enumerate((("video", videos), ("audio", audios))):
        if not tracks:
            continue
        attrs = {
            "id": str(set_id),
            "contentType": kind,
            "mimeType": f"{kind}/mp4",
            "segmentAlignment": "true" if _aligned(tracks) else "false",
            "startWithSAP": "1",
        }
        if kind == "video":
            attrs["maxWidth"] = str(max(t.width for t in tracks))
            attrs["maxHeight"] = str(max(t.height for t in tracks))
        else:
            attrs["lang"] = "und"
        adaptation = ET.SubElement(period, "AdaptationSet", attrs)
        for t in sorted(tracks, key=lambda t: t.peak_bandwidth):
            rep = ET.SubElement(
                adaptation,
                "Representation",
                {"id": t.name, "bandwidth": str(t.peak_bandwidth), "codecs": t.codecs},
            )
            if kind == "video":
                rep.set("width", str(t.width))
                rep.set("height", str(t.height))
                rep.set("frameRate", str(t.frame_rate))
                rep.set("sar", "1:1")
            else:
                rep.set("audioSamplingRate", str(t.sample_rate))
                ET.SubElement(
                    rep,
                    "AudioChannelConfiguration",
                    {
                        "schemeIdUri": "urn:mpeg:dash:23003:3:audio_channel_configuration:2011",
                        "value": str(t.channels),
                    },
                )
            template = ET.SubElement(
                rep,
                "SegmentTemplate",
                {
                    "timescale": str(t.timescale),
                    "initialization": f"{t.name}/{INIT}",
                    "media": f"{t.name}/seg$Number%05d$.m4s",
                    "startNumber": str(FIRST_SEGMENT),
                },
            )
            template.append(_timeline(t))
    ET.indent(mpd)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(mpd, "unicode") + "\n"


@dataclass(frozen=True)
class SpritePlan:
    interval: float  # seconds between thumbnails
    count: int
    columns: int
    rows: int
    thumb_width: int
    thumb_height: int


def sprite_plan(duration: float, width: int, height: int) -> SpritePlan:
    """One thumbnail every ``interval`` seconds: every 10 s for titles over 100 s; for shorter
    clips a tenth of their length rounded up to whole seconds (so even a trailer gets several);
    more than 10 s only when a very long title would exceed MAX_THUMBS."""
    interval = float(min(10, max(1, math.ceil(duration / 10))))
    interval = max(interval, math.ceil(duration / MAX_THUMBS))
    count = max(1, math.ceil(duration / interval))
    columns = min(SPRITE_COLUMNS, count)
    rows = math.ceil(count / columns)
    thumb_height = max(2, round(THUMB_WIDTH * height / width / 2) * 2)
    return SpritePlan(interval, count, columns, rows, THUMB_WIDTH, thumb_height)


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def sprite_vtt(plan: SpritePlan, duration: float, image: str = SPRITE) -> str:
    """WebVTT thumbnail track: each cue names its tile of ``image`` by a media fragment
    (``#xywh=x,y,w,h``), relative to the VTT's own URL."""
    lines = ["WEBVTT", ""]
    for i in range(plan.count):
        start = i * plan.interval
        end = min((i + 1) * plan.interval, duration)
        if end <= start:
            break
        x = (i % plan.columns) * plan.thumb_width
        y = (i // plan.columns) * plan.thumb_height
        lines += [
            f"{_vtt_time(start)} --> {_vtt_time(end)}",
            f"{image}#xywh={x},{y},{plan.thumb_width},{plan.thumb_height}",
            "",
        ]
    return "\n".join(lines)


def rendition_entry(video: Track, audios: Sequence[Track]) -> dict[str, Any]:
    bandwidth, average = variant_bandwidth(video, audios)
    return {
        "name": video.name,
        "width": video.width,
        "height": video.height,
        "bandwidth": bandwidth,
        "avg_bandwidth": average,
        "video_bandwidth": video.peak_bandwidth,
        "codecs": variant_codecs(video, audios),
        "frame_rate": round(float(video.frame_rate), 3),
        "audio": video.audio or None,
        "segments": len(video.sizes),
        "playlist": f"{video.name}/index.m3u8",
        "single_file": f"{video.name}/{SINGLE}",
        "single_playlist": f"{video.name}/single.m3u8",
    }


def audio_entry(audio: Track) -> dict[str, Any]:
    return {
        "name": audio.name,
        "bandwidth": audio.peak_bandwidth,
        "avg_bandwidth": audio.average_bandwidth,
        "codecs": audio.codecs,
        "channels": audio.channels,
        "sample_rate": audio.sample_rate,
        "segments": len(audio.sizes),
        "playlist": f"{audio.name}/index.m3u8",
        "single_file": f"{audio.name}/{SINGLE}",
        "single_playlist": f"{audio.name}/single.m3u8",
    }


def build_manifest(
    title: str,
    duration: float,
    videos: Sequence[Track],
    audios: Sequence[Track],
    files: Sequence[dict[str, Any]],
    created: datetime,
    segment_seconds: float,
) -> dict[str, Any]:
    """The manifest.json document: what the catalog shows and what publishing verifies."""
    order = sorted(videos, key=lambda t: variant_bandwidth(t, audios))
    return {
        "title": title,
        "duration": round(duration, 3),
        "segment_seconds": segment_seconds,
        "hls": "master.m3u8",
        "hls_single_file": "master_single.m3u8",
        "dash": "manifest.mpd",
        "renditions": [rendition_entry(v, audios) for v in order],
        "audio": [audio_entry(a) for a in audios],
        "files": list(files),
        "poster": POSTER,
        "sprite": SPRITE,
        "sprite_vtt": SPRITE_VTT,
        "created": created.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def content_type(path: str) -> str:
    return CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


# == writing ================================================================================


def write_packaging(
    out_dir: Path,
    videos: Sequence[Track],
    audios: Sequence[Track],
    duration: float,
    plan: SpritePlan,
) -> None:
    """Write every playlist, the MPD and the sprite WebVTT for tracks already on disk."""
    for t in (*videos, *audios):
        (out_dir / t.name / "index.m3u8").write_text(media_playlist(t))
        (out_dir / t.name / "single.m3u8").write_text(media_playlist(t, single=True))
    (out_dir / "master.m3u8").write_text(master_playlist(videos, audios))
    (out_dir / "master_single.m3u8").write_text(master_playlist(videos, audios, single=True))
    (out_dir / "manifest.mpd").write_text(dash_mpd(videos, audios, duration))
    (out_dir / SPRITE_VTT).write_text(sprite_vtt(plan, duration))


def describe_files(
    out_dir: Path, *, exclude: tuple[str, ...] = (MANIFEST,)
) -> list[dict[str, Any]]:
    """{path, size, xxh64, content_type} of every file below ``out_dir``, sorted by path."""
    out: list[dict[str, Any]] = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(out_dir).as_posix()
        if rel in exclude:
            continue
        h = xxhash.xxh64()
        size = 0
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        out.append(
            {"path": rel, "size": size, "xxh64": h.hexdigest(), "content_type": content_type(rel)}
        )
    return out


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json; returns its own file entry (it cannot list itself)."""
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    (out_dir / MANIFEST).write_bytes(data)
    return {
        "path": MANIFEST,
        "size": len(data),
        "xxh64": xxhash.xxh64(data).hexdigest(),
        "content_type": content_type(MANIFEST),
    }


def package_track(directory: Path, *, audio: str = "") -> Track:
    """Read back an encoded rendition, check it, and write its ``single.mp4``."""
    init = (directory / INIT).read_bytes()
    info = parse_init(init)
    files = sorted(directory.glob("seg*.m4s"))
    expected = [segment_name(FIRST_SEGMENT + i) for i in range(len(files))]
    if not files or [p.name for p in files] != expected:
        raise IngestError(f"{directory.name}: segments missing or not numbered from 1")
    starts, durations, sizes = [], [], []
    frame_durations: Counter[int] = Counter()
    with (directory / SINGLE).open("wb") as single:
        single.write(init)
        for path in files:
            data = path.read_bytes()
            try:
                timing = parse_segment(data, info.default_duration)
            except Mp4Error as e:
                raise Mp4Error(f"{directory.name}/{path.name}: {e}") from None
            starts.append(timing.start)
            durations.append(timing.duration)
            sizes.append(len(data))
            frame_durations[timing.sample_duration] += 1
            single.write(data)
    (directory / FFMPEG_PLAYLIST).unlink(missing_ok=True)
    frame = frame_durations.most_common(1)[0][0]
    return Track(
        name=directory.name,
        kind=info.kind,
        codecs=info.codecs,
        timescale=info.timescale,
        init_size=len(init),
        starts=tuple(starts),
        durations=tuple(durations),
        sizes=tuple(sizes),
        width=info.width,
        height=info.height,
        frame_rate=Fraction(info.timescale, frame)
        if info.kind == "video" and frame
        else Fraction(0),
        channels=info.channels,
        sample_rate=info.sample_rate,
        audio=audio,
    )


# == encoding ===============================================================================


def _num(x: float) -> str:
    return f"{x:g}"


def _hls_output(segment_seconds: float) -> list[str]:
    # fMP4 through the HLS muxer: it cuts at the first keyframe at or after each multiple of
    # hls_time (absolute, so segment boundaries do not drift) and writes CMAF-style segments with
    # default-base-is-moof, which stay valid when concatenated into single.mp4.
    return [
        "-f", "hls",
        "-hls_time", _num(segment_seconds),
        "-hls_segment_type", "fmp4",
        "-hls_fmp4_init_filename", INIT,
        "-hls_segment_filename", "seg%05d.m4s",
        "-start_number", str(FIRST_SEGMENT),
        "-hls_playlist_type", "vod",
        "-hls_list_size", "0",
        FFMPEG_PLAYLIST,
    ]  # fmt: skip


def video_args(
    src: str, probe: ffmpeg.Probe, rung: Rung, *, segment_seconds: float, preset: str
) -> list[str]:
    """ffmpeg arguments encoding one rung into ``cwd``.

    Keyframes are aligned across renditions so players can switch at any segment boundary:
    a keyframe is forced at every multiple of the segment duration (by time, so all rungs agree
    whatever their frame timing), scene-cut keyframes are off, and the GOP length is pinned to
    the segment length; +cgop keeps GOPs closed so each segment decodes on its own.
    """
    gop = max(1, round(segment_seconds * probe.fps))
    # Scale to the exact square-pixel size (the source's SAR is folded into width x height by
    # the ladder), then declare square pixels; 8-bit 4:2:0 is what every H.264 decoder plays.
    filters = [
        *_deinterlace(probe),
        f"scale={rung.width}:{rung.height}:flags=bicubic",
        "setsar=1",
        "format=yuv420p",
    ]
    profile = "high" if min(rung.width, rung.height) >= 720 else "main"
    return [
        "-i", src,
        "-map", f"0:{probe.video_index}",
        "-an", "-sn", "-dn",
        "-map_metadata", "-1", "-map_chapters", "-1",
        "-vf", ",".join(filters),
        "-c:v", "libx264",
        "-preset", preset,
        "-profile:v", profile,
        "-b:v", f"{rung.video_kbps}k",
        "-maxrate", f"{rung.maxrate_kbps}k",
        "-bufsize", f"{rung.bufsize_kbits}k",
        "-g", str(gop),
        "-keyint_min", str(gop),
        "-sc_threshold", "0",
        "-flags", "+cgop",
        "-force_key_frames", f"expr:gte(t,n_forced*{_num(segment_seconds)})",
        *_hls_output(segment_seconds),
    ]  # fmt: skip


def audio_args(src: str, probe: ffmpeg.Probe, kbps: int, *, segment_seconds: float) -> list[str]:
    """AAC-LC stereo at 48 kHz: what every HLS and DASH client decodes.

    AAC frames (21.3 ms) do not divide segment durations, so audio segments end on the first
    frame boundary after each multiple of ``segment_seconds``, and the encoder's priming frame
    makes the track one frame longer than the source: a title lasting an exact multiple of the
    segment duration gets a last audio segment of a few milliseconds. That is valid (RFC 8216
    sets no minimum) and what other packagers do; trimming the audio to avoid it would cut sound.
    """
    return [
        "-i", src,
        "-map", f"0:{probe.audio_index}",
        "-vn", "-sn", "-dn",
        "-map_metadata", "-1", "-map_chapters", "-1",
        "-c:a", "aac",
        "-b:a", f"{kbps}k",
        "-ac", str(AUDIO_CHANNELS),
        "-ar", str(AUDIO_RATE),
        *_hls_output(segment_seconds),
    ]  # fmt: skip


def _deinterlace(probe: ffmpeg.Probe) -> list[str]:
    # Progressive output at the frame rate; ffmpeg applies a phone's rotation before this.
    return ["bwdif=mode=send_frame"] if probe.interlaced else []


def _picture(probe: ffmpeg.Probe, width: int, height: int) -> str:
    # JPEG is full range: converting here keeps blacks black (and the mjpeg encoder refuses
    # limited-range input from sources that say they are limited range).
    scale = f"scale={width}:{height}:flags=bicubic:out_range=full,setsar=1"
    return ",".join([*_deinterlace(probe), scale])


def poster_args(src: str, probe: ffmpeg.Probe, top: Rung) -> list[str]:
    """A frame at 10% of the title (past opening logos), at the top rung's size."""
    # Before -i, -ss seeks through the container's index; after it, ffmpeg decodes up to the
    # point instead, which is slower but the only way into a source without an index.
    seek = ["-ss", f"{probe.duration * 0.10:.3f}"]
    return [
        *(seek if probe.seekable else []),
        "-i", src,
        *([] if probe.seekable else seek),
        "-map", f"0:{probe.video_index}",
        "-frames:v", "1",
        "-vf", _picture(probe, top.width, top.height),
        "-q:v", "3",
        "-update", "1",
        POSTER,
    ]  # fmt: skip


def sprite_args(src: str, probe: ffmpeg.Probe, plan: SpritePlan) -> list[str]:
    tiles = (
        f"fps=1/{_num(plan.interval)},{_picture(probe, plan.thumb_width, plan.thumb_height)},"
        f"tile={plan.columns}x{plan.rows}"
    )
    return [
        "-i", src,
        "-map", f"0:{probe.video_index}",
        "-vf", tiles,
        "-frames:v", "1",
        "-q:v", "5",
        "-update", "1",
        SPRITE,
    ]  # fmt: skip


@dataclass(frozen=True)
class _Job:
    name: str
    args: list[str]
    cwd: Path
    duration: float
    fresh_dir: bool  # a rendition directory, emptied before each attempt


async def _run_jobs(
    jobs: Sequence[_Job],
    *,
    parallel: int,
    retries: int,
    on_progress: Callable[[str, float, float], None] | None,
) -> None:
    """Run the jobs, ``parallel`` at a time, each up to ``1 + retries`` times.

    The first job to fail for good cancels the others (killing their ffmpeg) and its error is
    raised; so is cancellation of the caller.
    """
    gate = asyncio.Semaphore(parallel)

    async def attempt_all(job: _Job) -> None:
        async with gate:
            for attempt in range(retries + 1):
                if job.fresh_dir:
                    # A failed attempt may leave segments behind; they must not be packaged.
                    shutil.rmtree(job.cwd, ignore_errors=True)
                    job.cwd.mkdir(parents=True)

                def report(fraction: float, speed: float, name: str = job.name) -> None:
                    if on_progress is not None:
                        on_progress(name, fraction, speed)

                try:
                    await ffmpeg.run(
                        job.args, duration=job.duration, on_progress=report, cwd=job.cwd
                    )
                    return
                except ffmpeg.FFmpegError as e:
                    if attempt == retries:
                        raise ffmpeg.FFmpegError(
                            f"{job.name}: failed {attempt + 1} time(s), last: {e.args[0].splitlines()[0]}",
                            e.returncode,
                            e.stderr,
                        ) from e
                    log.warning(
                        "event=encode_retry job=%s attempt=%d error=%r",
                        job.name,
                        attempt + 1,
                        str(e),
                    )

    tasks = [asyncio.create_task(attempt_all(j), name=f"ingest-{j.name}") for j in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t in done and (error := t.exception()) is not None:
                raise error
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class IngestResult:
    """What an ingest produced under ``out_dir`` (= work_dir/<title>).

    ``renditions`` are the manifest's video entries, lowest first; ``files`` lists every file
    written, manifest.json last (the manifest's own ``files`` cannot include itself).
    """

    title: str
    duration: float
    renditions: list[dict[str, Any]]
    files: list[dict[str, Any]]
    out_dir: Path
    audio: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


async def ingest_title(
    src: Path,
    title: str,
    work_dir: Path,
    *,
    ladder: Sequence[Rung] = DEFAULT_LADDER,
    preset: str = "veryfast",
    segment_seconds: float = 4.0,
    parallel: int | None = None,
    retries: int = 1,
    on_progress: Callable[[str, float, float], None] | None = None,
) -> IngestResult:
    """Encode and package ``src`` as ``title`` under ``work_dir/<title>/``.

    Raises ``ValueError`` for a bad title or option, ``ffmpeg.SourceError`` for a source that is
    not a video (both before anything is written), ``FileExistsError`` if the output directory
    exists, ``ffmpeg.FFmpegError`` when an encode fails for good and ``IngestError`` if the
    output cannot be packaged. On failure the partial output stays for the caller to delete.
    """
    check_title(title)
    if preset not in X264_PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {', '.join(X264_PRESETS)}")
    if not 1 <= segment_seconds <= 60:
        raise ValueError(f"segment_seconds {segment_seconds}: must be between 1 and 60")
    workers = parallel if parallel is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"parallel {parallel}: must be at least 1")
    if retries < 0:
        raise ValueError(f"retries {retries}: must be at least 0")
    probe = await ffmpeg.probe(src)
    rungs = select(ladder, probe.width, probe.height)
    out_dir = work_dir / title
    out_dir.mkdir(parents=True)  # FileExistsError: never mix two encodes' files
    started = datetime.now(UTC)
    source = ffmpeg.input_url(src)
    audio_rates = sorted({r.audio_kbps for r in rungs}) if probe.has_audio else []
    plan = sprite_plan(probe.duration, rungs[-1].width, rungs[-1].height)
    log.info(
        "event=ingest_start title=%s source=%s size=%dx%d duration=%.3f rungs=%s audio=%s",
        title, src, probe.width, probe.height, probe.duration,
        ",".join(r.name for r in rungs), ",".join(f"{k}k" for k in audio_rates) or "none",
    )  # fmt: skip

    # Longest first, so the slowest encode is never the one left waiting for a slot.
    jobs = [
        _Job(
            r.name,
            video_args(source, probe, r, segment_seconds=segment_seconds, preset=preset),
            out_dir / r.name,
            probe.duration,
            fresh_dir=True,
        )
        for r in reversed(rungs)
    ]
    jobs.append(_Job("sprite", sprite_args(source, probe, plan), out_dir, probe.duration, False))
    jobs += [
        _Job(
            _audio_name(k),
            audio_args(source, probe, k, segment_seconds=segment_seconds),
            out_dir / _audio_name(k),
            probe.duration,
            fresh_dir=True,
        )
        for k in audio_rates
    ]
    jobs.append(_Job("poster", poster_args(source, probe, rungs[-1]), out_dir, 0.0, False))
    await _run_jobs(jobs, parallel=workers, retries=retries, on_progress=on_progress)

    def package() -> IngestResult:
        videos = [
            package_track(out_dir / r.name, audio=_audio_name(r.audio_kbps) if audio_rates else "")
            for r in rungs
        ]
        audios = [package_track(out_dir / _audio_name(k)) for k in audio_rates]
        if not _aligned(videos):
            raise IngestError(
                "keyframes not aligned across renditions: segment boundaries differ ("
                + ", ".join(f"{v.name}: {len(v.sizes)} segments" for v in videos)
                + ")"
            )
        duration = max(v.duration for v in videos)
        write_packaging(out_dir, videos, audios, duration, plan)
        files = describe_files(out_dir)
        manifest = build_manifest(title, duration, videos, audios, files, started, segment_seconds)
        own = write_manifest(out_dir, manifest)
        return IngestResult(
            title=title,
            duration=manifest["duration"],
            renditions=manifest["renditions"],
            files=[*files, own],
            out_dir=out_dir,
            audio=manifest["audio"],
            manifest=manifest,
        )

    result = await asyncio.to_thread(package)
    log.info(
        "event=ingest_done title=%s duration=%.3f renditions=%d files=%d bytes=%d seconds=%.1f",
        title, result.duration, len(result.renditions), len(result.files),
        sum(f["size"] for f in result.files), (datetime.now(UTC) - started).total_seconds(),
    )  # fmt: skip
    return result


def _audio_name(kbps: int) -> str:
    return f"audio_{kbps}k"
