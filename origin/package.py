"""Packaging: the text that describes a title's renditions, made by pure functions over
``Track`` values (shared by ``origin.ingest`` and ``origin.synth``).

HLS media and multivariant playlists (segment files or byte ranges of ``single.mp4``), the
DASH MPD, the sprite's WebVTT thumbnail track and ``manifest.json``; plus the few functions
that write them next to the media and describe the files of a packaged title.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import xxhash

__all__ = [
    "SpritePlan",
    "Track",
    "build_manifest",
    "content_type",
    "dash_mpd",
    "describe_files",
    "master_playlist",
    "media_playlist",
    "peak_bandwidth",
    "segment_name",
    "sprite_plan",
    "sprite_vtt",
    "target_duration",
    "write_manifest",
    "write_packaging",
]

FIRST_SEGMENT: Final = 1  # seg00001.m4s; DASH startNumber
HLS_VERSION: Final = 7
INIT: Final = "init.mp4"
SINGLE: Final = "single.mp4"
POSTER: Final = "poster.jpg"
SPRITE: Final = "sprite.jpg"
SPRITE_VTT: Final = "sprite.vtt"
MANIFEST: Final = "manifest.json"
THUMB_WIDTH: Final = 160
SPRITE_COLUMNS: Final = 10
MAX_THUMBS: Final = 1000  # 100 rows of 90 px: within what browsers decode comfortably
CONTENT_TYPES: Final = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
    ".json": "application/json",
}


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
