"""A synthetic catalog: titles laid out exactly like an ingest's output, without ffmpeg.

For load tests and demos of edges and the catalog, thousands of titles are needed in minutes.
``synth_catalog`` writes ``v/<title>/`` trees with the same files, names and packaging text as
``origin.ingest`` (the very same playlist, MPD, WebVTT and manifest functions of
``origin.package``, over ``Track`` values made up here), but every init and media segment is
deterministic pseudo-random bytes sized for its rung's bit rate. They are not playable; everything that reads playlists, byte ranges,
sizes and checksums sees a real-looking title. The poster and sprite are real (flat grey) JPEGs
of the right sizes, so a player UI can show them.

Everything is a function of the seed: two runs write identical bytes, down to manifest.json,
whose ``created`` is fixed. Files are written as they are generated; nothing is held in memory
but a 4 MiB pool of random bytes that segment payloads are cut from at pseudo-random offsets,
each segment starting with its own identity so no two are alike.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Final

from .ingest import check_title
from .ladder import DEFAULT_LADDER, Rung, select
from .package import (
    FIRST_SEGMENT,
    INIT,
    POSTER,
    SINGLE,
    SPRITE,
    Track,
    build_manifest,
    describe_files,
    segment_name,
    sprite_plan,
    write_manifest,
    write_packaging,
)

__all__ = ["avc_codec", "grey_jpeg", "synth_catalog", "synth_title"]

POOL_SIZE: Final = 4 << 20
FPS: Final = 25
VIDEO_TIMESCALE: Final = 12800  # what ffmpeg's mp4 muxer picks for 25 fps
AUDIO_TIMESCALE: Final = 48000
VIDEO_INIT_SIZE: Final = 840
AUDIO_INIT_SIZE: Final = 690
JITTER: Final = 0.05  # segment sizes vary +-5% around the bit rate, as real encodes do
CREATED: Final = datetime(2020, 1, 1, tzinfo=UTC)
SOURCE_SIZE: Final = (1920, 1080)

# H.264 levels (ITU-T H.264 Table A-1): (MaxFS macroblocks, MaxMBPS, level_idc).
_AVC_LEVELS: Final = (
    (99, 1485, 10), (396, 3000, 11), (396, 6000, 12), (396, 11880, 13), (396, 11880, 20),
    (792, 19800, 21), (1620, 20250, 22), (1620, 40500, 30), (3600, 108000, 31),
    (5120, 216000, 32), (8192, 245760, 40), (8704, 522240, 42), (22080, 589824, 50),
    (36864, 983040, 51), (36864, 2073600, 52),
)  # fmt: skip


def avc_codec(width: int, height: int, fps: float) -> str:
    """The RFC 6381 codec string libx264 would produce for this size: main profile below 720
    lines, high from 720 (as ``origin.ingest`` encodes), at the lowest level that fits."""
    frame = ((width + 15) // 16) * ((height + 15) // 16)
    level = next(
        (lv for max_fs, max_mbps, lv in _AVC_LEVELS if frame <= max_fs and frame * fps <= max_mbps),
        52,
    )
    if min(width, height) >= 720:
        return f"avc1.6400{level:02x}"
    return f"avc1.4d40{level:02x}"


def grey_jpeg(width: int, height: int) -> bytes:
    """A valid baseline JPEG of the given size, flat mid-grey, written without an encoder.

    Every 8x8 block of a flat image at level 128 has only a zero DC difference and no AC
    coefficients, so with Huffman tables of two 2-bit codes (category 0 = "00", EOB = "00") the
    entropy-coded data is all zero bits: 4 per block, padded with ones.
    """
    if not (0 < width < 65536 and 0 < height < 65536):
        raise ValueError(f"JPEG size {width}x{height} out of range")

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    quant = segment(0xFFDB, b"\x00" + b"\x01" * 64)
    frame = segment(0xFFC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    two_codes = bytes([0, 2] + [0] * 14)  # two codes of length 2
    huffman = segment(0xFFC4, b"\x00" + two_codes + b"\x00\x01") + segment(
        0xFFC4, b"\x10" + two_codes + b"\x00\x01"
    )
    scan = segment(0xFFDA, b"\x01\x01\x00\x00\x3f\x00")
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    bits = 4 * blocks
    data = bytearray(bits // 8)
    if bits % 8:
        data.append(0x0F)  # four zero bits, then padding ones
    return b"\xff\xd8" + quant + frame + huffman + scan + bytes(data) + b"\xff\xd9"


class _Payloads:
    """Deterministic pseudo-random bytes, cut from one pool; written straight to files."""

    def __init__(self, seed: int) -> None:
        self.pool = random.Random(f"opencdn-synth:{seed}").randbytes(POOL_SIZE)
        self.seed = seed

    def write(self, key: str, size: int, *outs: BinaryIO) -> None:
        ident = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=32).digest()
        head = ident[: min(size, len(ident))]
        for out in outs:
            out.write(head)
        remaining = size - len(head)
        pos = int.from_bytes(ident[:4], "big") % POOL_SIZE
        view = memoryview(self.pool)
        while remaining > 0:
            chunk = view[pos : pos + remaining]
            for out in outs:
                out.write(chunk)
            remaining -= len(chunk)
            pos = 0


def _frames(duration: float, segment_seconds: float, frame_seconds: float) -> list[int]:
    """Frames per segment: whole segments of round(segment/frame) frames, then the rest."""
    total = max(1, round(duration / frame_seconds))
    per = max(1, round(segment_seconds / frame_seconds))
    counts = [per] * (total // per)
    if total % per:
        counts.append(total % per)
    return counts


def _write_track(
    directory: Path,
    payloads: _Payloads,
    key: str,
    init_size: int,
    sizes: Sequence[int],
) -> None:
    directory.mkdir(parents=True)
    with (directory / SINGLE).open("wb") as single:
        with (directory / INIT).open("wb") as init:
            payloads.write(f"{key}/init", init_size, init, single)
        for i, size in enumerate(sizes):
            with (directory / segment_name(FIRST_SEGMENT + i)).open("wb") as seg:
                payloads.write(f"{key}/{i}", size, seg, single)


def synth_title(
    out_dir: Path,
    title: str,
    rungs: Sequence[Rung],
    *,
    duration: float,
    segment_seconds: float,
    payloads: _Payloads,
    rng: random.Random,
) -> dict[str, object]:
    """Write one synthetic title into ``out_dir`` (which must not exist); returns its manifest."""
    out_dir.mkdir(parents=True)
    frame_ticks = VIDEO_TIMESCALE // FPS
    counts = _frames(duration, segment_seconds, 1 / FPS)
    durations = tuple(c * frame_ticks for c in counts)
    starts = tuple(sum(durations[:i]) for i in range(len(durations)))
    seconds = [d / VIDEO_TIMESCALE for d in durations]

    def sizes(kbps: int) -> tuple[int, ...]:
        jitter = [1 + rng.uniform(-JITTER, JITTER) for _ in seconds]
        return tuple(
            max(64, round(kbps * 125 * s * j)) for s, j in zip(seconds, jitter, strict=True)
        )

    audios: list[Track] = []
    for kbps in sorted({r.audio_kbps for r in rungs}):
        name = f"audio_{kbps}k"
        a_durations = tuple(round(s * AUDIO_TIMESCALE) for s in seconds)
        track = Track(
            name=name,
            kind="audio",
            codecs="mp4a.40.2",
            timescale=AUDIO_TIMESCALE,
            init_size=AUDIO_INIT_SIZE,
            starts=tuple(sum(a_durations[:i]) for i in range(len(a_durations))),
            durations=a_durations,
            sizes=sizes(kbps),
            channels=2,
            sample_rate=AUDIO_TIMESCALE,
        )
        _write_track(out_dir / name, payloads, f"{title}/{name}", track.init_size, track.sizes)
        audios.append(track)
    videos: list[Track] = []
    for r in rungs:
        track = Track(
            name=r.name,
            kind="video",
            codecs=avc_codec(r.width, r.height, FPS),
            timescale=VIDEO_TIMESCALE,
            init_size=VIDEO_INIT_SIZE,
            starts=starts,
            durations=durations,
            sizes=sizes(r.video_kbps),
            width=r.width,
            height=r.height,
            frame_rate=Fraction(FPS),
            audio=f"audio_{r.audio_kbps}k",
        )
        _write_track(out_dir / r.name, payloads, f"{title}/{r.name}", track.init_size, track.sizes)
        videos.append(track)
    total = sum(seconds)
    top = rungs[-1]
    plan = sprite_plan(total, top.width, top.height)
    write_packaging(out_dir, videos, audios, total, plan)
    (out_dir / POSTER).write_bytes(grey_jpeg(top.width, top.height))
    (out_dir / SPRITE).write_bytes(
        grey_jpeg(plan.columns * plan.thumb_width, plan.rows * plan.thumb_height)
    )
    files = describe_files(out_dir)
    manifest = build_manifest(title, total, videos, audios, files, CREATED, segment_seconds)
    manifest["synthetic"] = True
    write_manifest(out_dir, manifest)
    return manifest


def synth_catalog(
    out_root: Path,
    *,
    titles: int,
    renditions: int,
    duration: float,
    segment_seconds: float = 4.0,
    seed: int = 0,
    ladder: Sequence[Rung] = DEFAULT_LADDER,
) -> list[str]:
    """Write ``titles`` synthetic titles under ``out_root/v/`` and return their ids.

    Each title has the ``renditions`` lowest rungs the ladder gives a 1920x1080 source (all of
    them if there are fewer), the audio renditions those rungs name, and lasts ``duration``
    seconds (whole 25 fps frames). Ids are ``synth{seed}-{n:05d}``; an existing title directory
    of the same id is replaced.
    """
    if titles < 0 or renditions < 1 or duration <= 0 or segment_seconds <= 0:
        raise ValueError(
            "titles must be >= 0, and renditions, duration and segment_seconds positive"
        )
    rungs = select(ladder, *SOURCE_SIZE)[:renditions]
    payloads = _Payloads(seed)
    rng = random.Random(f"opencdn-synth-sizes:{seed}")
    ids: list[str] = []
    for n in range(titles):
        title = check_title(f"synth{seed}-{n:05d}")
        out_dir = out_root / "v" / title
        if out_dir.exists():
            shutil.rmtree(out_dir)
        synth_title(
            out_dir,
            title,
            rungs,
            duration=duration,
            segment_seconds=segment_seconds,
            payloads=payloads,
            rng=rng,
        )
        ids.append(title)
    return ids
