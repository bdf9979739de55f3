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
``Track`` values in ``origin.package``, shared with ``origin.synth``; ``origin.mp4`` reads the
encoded segments back. Their public names are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

from . import ffmpeg
from .ladder import DEFAULT_LADDER, Rung, select
from .mp4 import IngestError, Mp4Error, parse_init, parse_segment
from .package import (
    FIRST_SEGMENT,
    INIT,
    POSTER,
    SINGLE,
    SPRITE,
    SpritePlan,
    Track,
    _aligned,
    build_manifest,
    content_type,
    dash_mpd,
    describe_files,
    master_playlist,
    media_playlist,
    peak_bandwidth,
    segment_name,
    sprite_plan,
    sprite_vtt,
    target_duration,
    write_manifest,
    write_packaging,
)

# The names of origin.mp4 and origin.package below are re-exported: they were defined here once.
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
FFMPEG_PLAYLIST: Final = ".ffmpeg.m3u8"  # what ffmpeg's HLS muxer insists on writing; removed
AUDIO_CHANNELS: Final = 2
AUDIO_RATE: Final = 48000


def check_title(title: str) -> str:
    """``title`` if it is a safe id (a path component under /v/ and a storage key), else
    ``ValueError`` naming the rule."""
    if not isinstance(title, str) or not TITLE_RE.fullmatch(title):
        raise ValueError(f"invalid title {title!r}: {TITLE_RULE}")
    return title


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
