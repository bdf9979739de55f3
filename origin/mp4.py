"""Just enough of ISO/IEC 14496-12 (ISO BMFF, fragmented MP4) to read timing and codecs.

``parse_init`` reads a one-track CMAF init segment (timescale, RFC 6381 codec string, picture
or channel layout); ``parse_segment`` reads a media segment's ``moof`` boxes (start time,
duration, frame duration) and checks it can be concatenated into a byte-range single file.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["IngestError", "InitInfo", "Mp4Error", "SegmentTiming", "parse_init", "parse_segment"]


# IngestError is defined here, the lowest module that raises it, so that Mp4Error can be one;
# origin.ingest re-exports it.
class IngestError(RuntimeError):
    """The encodes ran but their output cannot be packaged (a bug or a broken encoder)."""


class Mp4Error(IngestError):
    """An init or media segment is not the fragmented MP4 the packager expects."""


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
