"""Ingest: a real (tiny) source through the bundled ffmpeg into an HLS + DASH ladder.

One 6 s 640x360 clip with a tone is ingested once per session (240p/360p/480p ladder, 2 s
segments); the tests then check the output the way players and the publisher will read it. The
pure parts (probe parsing, playlist arithmetic) have table tests of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import xxhash

from origin import ffmpeg, ingest
from origin.ffmpeg import FFmpegError, SourceError, ffmpeg_exe, parse_probe
from origin.ingest import IngestResult, ingest_title, peak_bandwidth, sprite_plan, target_duration
from origin.ladder import Rung
from tests.m3u8check import check_master, check_media

LADDER = (Rung("240p", 240, 400, 96), Rung("360p", 360, 800, 128), Rung("480p", 480, 1400, 128))
SEGMENT = 2.0
DURATION = 6.0
VIDEO = ("240p", "360p")
AUDIO = ("audio_96k", "audio_128k")


def make_media(path: Path, *args: str) -> Path:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args, str(path)],
        check=True,
        timeout=60,
    )
    return path


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion in a thread of its own, away from pytest-asyncio's loops."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    make_media(
        d / "clip.mp4",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440",
        "-t", str(DURATION), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
    )  # fmt: skip
    make_media(d / "tone.m4a", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "2")
    make_media(d / "still.png", "-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1")
    # A raw H.264 stream: no container, so no stated duration and no timestamps.
    make_media(
        d / "portrait.h264",
        "-f", "lavfi", "-i", "testsrc2=size=360x640:rate=25",
        "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-f", "h264",
    )  # fmt: skip
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("these are not the frames you are looking for\n" * 20)
    return d


@dataclass
class Ingested:
    result: IngestResult
    out: Path
    seconds: float
    events: list[tuple[str, float, float]]


@pytest.fixture(scope="session")
def ingested(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    work = tmp_path_factory.mktemp("work")
    events: list[tuple[str, float, float]] = []
    t0 = time.perf_counter()
    result = run_async(
        ingest_title(
            media / "clip.mp4",
            "clip1",
            work,
            ladder=LADDER,
            segment_seconds=SEGMENT,
            on_progress=lambda *e: events.append(e),
        )
    )
    seconds = time.perf_counter() - t0
    print(f"\ningest of the 6 s test clip: {seconds:.2f} s")
    return Ingested(result, work / "clip1", seconds, events)


def ffmpeg_decode(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), *extra,
         "-map", "0", "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def picture_size(path: Path) -> tuple[int, int]:
    err = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    m = re.search(r"Video: \w+.*?, (\d+)x(\d+)", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


# -- the ingested clip ------------------------------------------------------------------------


def test_ladder_is_capped_at_the_source(ingested: Ingested) -> None:
    r = ingested.result
    assert [(x["name"], x["width"], x["height"]) for x in r.renditions] == [
        ("240p", 426, 240),
        ("360p", 640, 360),
    ]
    assert not (ingested.out / "480p").exists()
    assert [a["name"] for a in r.audio] == list(AUDIO)
    assert r.title == "clip1" and r.out_dir == ingested.out
    assert r.duration == pytest.approx(DURATION, abs=0.05)
    assert ingested.seconds < 30


def test_layout(ingested: Ingested) -> None:
    out = ingested.out
    top = {"master.m3u8", "master_single.m3u8", "manifest.mpd", "manifest.json", "poster.jpg",
           "sprite.jpg", "sprite.vtt", *VIDEO, *AUDIO}  # fmt: skip
    assert {p.name for p in out.iterdir()} == top
    for name in (*VIDEO, *AUDIO):
        files = sorted(p.name for p in (out / name).iterdir())
        segments = [f for f in files if f.endswith(".m4s")]
        assert segments == [f"seg{n:05d}.m4s" for n in range(1, len(segments) + 1)]
        assert set(files) - set(segments) == {"index.m3u8", "init.mp4", "single.m3u8", "single.mp4"}


def test_manifest_matches_the_files(ingested: Ingested) -> None:
    out = ingested.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["title"] == "clip1"
    assert manifest["duration"] == pytest.approx(DURATION, abs=0.05)
    assert manifest["renditions"] == ingested.result.renditions
    assert (manifest["poster"], manifest["sprite"]) == ("poster.jpg", "sprite.jpg")
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"manifest.json"}
    for path, f in listed.items():
        data = (out / path).read_bytes()
        assert f["size"] == len(data), path
        assert f["xxh64"] == xxhash.xxh64(data).hexdigest(), path
    types = {Path(p).suffix: f["content_type"] for p, f in listed.items()}
    assert types == {
        ".m3u8": "application/vnd.apple.mpegurl",
        ".mpd": "application/dash+xml",
        ".m4s": "video/iso.segment",
        ".mp4": "video/mp4",
        ".jpg": "image/jpeg",
        ".vtt": "text/vtt",
    }
    # The result lists manifest.json too, last, so an uploader can store it last.
    last = ingested.result.files[-1]
    data = (out / "manifest.json").read_bytes()
    assert last == {"path": "manifest.json", "size": len(data),
                    "xxh64": xxhash.xxh64(data).hexdigest(), "content_type": "application/json"}  # fmt: skip
    for r in manifest["renditions"]:
        for key in ("playlist", "single_file", "single_playlist"):
            assert r[key] in listed
        assert r["bandwidth"] >= r["avg_bandwidth"] > 0
        assert r["frame_rate"] == 25.0


@pytest.mark.parametrize("master", ["master.m3u8", "master_single.m3u8"])
def test_hls_playlists_are_valid(ingested: Ingested, master: str) -> None:
    out = ingested.out
    m = check_master(out / master)
    assert m.version >= 7
    suffix = "single.m3u8" if "single" in master else "index.m3u8"
    assert [v.uri for v in m.variants] == [f"{n}/{suffix}" for n in VIDEO]
    assert [x["URI"] for x in m.media] == [f"{n}/{suffix}" for n in AUDIO]
    for v, audio in zip(m.variants, AUDIO, strict=True):
        assert v.attrs["AUDIO"] == audio
        assert v.attrs["FRAME-RATE"] == "25.000"
        assert re.fullmatch(r"avc1\.4d40[0-9a-f]{2},mp4a\.40\.2", v.attrs["CODECS"])
        assert v.playlist.duration == pytest.approx(DURATION, abs=0.01)
        assert [s.duration for s in v.playlist.segments] == [SEGMENT] * 3
        assert v.playlist.target == 2
    for playlist in m.renditions.values():
        assert playlist.duration == pytest.approx(DURATION, abs=0.05)
    # Keyframes aligned: the same segment boundaries in every video rendition.
    assert len({tuple(s.duration for s in v.playlist.segments) for v in m.variants}) == 1


@pytest.mark.parametrize("name", VIDEO + AUDIO)
def test_byte_range_variant_is_the_same_segments(ingested: Ingested, name: str) -> None:
    d = ingested.out / name
    files = check_media(d / "index.m3u8", ingested.out)
    single = check_media(d / "single.m3u8", ingested.out)
    blob = (d / "single.mp4").read_bytes()
    assert single.map_range is not None
    length, offset = single.map_range
    assert blob[offset : offset + length] == (d / "init.mp4").read_bytes()
    assert len(single.segments) == len(files.segments)
    for a, b in zip(files.segments, single.segments, strict=True):
        assert a.duration == b.duration
        assert b.byterange is not None
        length, offset = b.byterange
        assert blob[offset : offset + length] == (d / a.uri).read_bytes()


@pytest.mark.parametrize(
    "playlist",
    [f"{n}/{p}" for n in VIDEO + AUDIO for p in ("index.m3u8", "single.m3u8")]
    + ["manifest.mpd", "master.m3u8", "master_single.m3u8"],
)
def test_everything_decodes(ingested: Ingested, playlist: str) -> None:
    proc = ffmpeg_decode(ingested.out / playlist)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_keyframes_at_every_segment_boundary(ingested: Ingested) -> None:
    for name in VIDEO:
        proc = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(ingested.out / name / "index.m3u8"),
             "-vf", "showinfo", "-f", "null", "-"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        keys = [float(t) for t in re.findall(r"pts_time:([\d.]+) .*iskey:1", proc.stderr)]
        assert keys == [0.0, 2.0, 4.0], name


def test_mpd(ingested: Ingested) -> None:
    out = ingested.out
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.parse(out / "manifest.mpd").getroot()
    assert root.tag == "{urn:mpeg:dash:schema:mpd:2011}MPD"
    assert root.get("type") == "static"
    total = root.get("mediaPresentationDuration", "")
    assert float(re.fullmatch(r"PT([\d.]+)S", total).group(1)) == pytest.approx(DURATION, abs=0.05)  # type: ignore[union-attr]
    sets = root.findall("d:Period/d:AdaptationSet", ns)
    assert [s.get("contentType") for s in sets] == ["video", "audio"]
    hls = {v.uri.split("/")[0]: v.attrs for v in check_master(out / "master.m3u8").variants}
    timelines = {}
    for rep in root.iter("{urn:mpeg:dash:schema:mpd:2011}Representation"):
        name = rep.get("id", "")
        template = rep.find("d:SegmentTemplate", ns)
        assert template is not None
        assert (out / template.get("initialization", "")).is_file()
        timescale = int(template.get("timescale", "0"))
        number = int(template.get("startNumber", "1"))
        ticks, count = 0, 0
        for s in template.findall("d:SegmentTimeline/d:S", ns):
            repeat = int(s.get("r", "0")) + 1
            ticks += int(s.get("d", "0")) * repeat
            count += repeat
        media = template.get("media", "")
        for n in range(number, number + count):
            path = out / media.replace("$Number%05d$", f"{n:05d}")
            assert path.is_file(), path
        assert not (out / media.replace("$Number%05d$", f"{number + count:05d}")).exists()
        assert ticks / timescale == pytest.approx(DURATION, abs=0.05)
        assert int(rep.get("bandwidth", "0")) > 0
        if name in hls:
            assert hls[name]["CODECS"].startswith(rep.get("codecs", "") + ",")
            assert f"{rep.get('width')}x{rep.get('height')}" == hls[name]["RESOLUTION"]
            timelines[name] = ET.tostring(template.find("d:SegmentTimeline", ns))  # type: ignore[arg-type]
    assert set(timelines) == set(VIDEO)
    assert len(set(timelines.values())) == 1  # identical timelines: aligned segments


def test_poster_and_sprite(ingested: Ingested) -> None:
    out = ingested.out
    assert picture_size(out / "poster.jpg") == (640, 360)
    plan = sprite_plan(DURATION, 640, 360)
    assert (plan.interval, plan.count, plan.columns, plan.rows) == (1.0, 6, 6, 1)
    width, height = picture_size(out / "sprite.jpg")
    assert (width, height) == (6 * 160, 90)
    text = (out / "sprite.vtt").read_text()
    assert text.startswith("WEBVTT\n\n")
    cues = re.findall(
        r"(\d\d):(\d\d):(\d\d\.\d{3}) --> (\d\d):(\d\d):(\d\d\.\d{3})\n"
        r"sprite\.jpg#xywh=(\d+),(\d+),(\d+),(\d+)\n",
        text,
    )
    assert len(cues) == 6
    end = 0.0
    for c in cues:
        start = int(c[0]) * 3600 + int(c[1]) * 60 + float(c[2])
        assert start == pytest.approx(end)
        end = int(c[3]) * 3600 + int(c[4]) * 60 + float(c[5])
        x, y, w, h = map(int, c[6:])
        assert x + w <= width and y + h <= height
    assert end == pytest.approx(DURATION)


def test_progress_is_reported_per_job(ingested: Ingested) -> None:
    names = {e[0] for e in ingested.events}
    assert names == {*VIDEO, *AUDIO, "poster", "sprite"}
    for name in names:
        fractions = [f for n, f, _ in ingested.events if n == name]
        assert all(0 <= f <= 1 for f in fractions)
        assert fractions[-1] == 1.0
    assert all(speed >= 0 for _, _, speed in ingested.events)


# -- other sources and failures -------------------------------------------------------------


async def test_raw_portrait_source_without_audio(media: Path, tmp_path: Path) -> None:
    result = await ingest_title(
        media / "portrait.h264", "portrait", tmp_path, ladder=LADDER, segment_seconds=1.0
    )
    assert result.duration == pytest.approx(2.0, abs=0.05)
    assert [(r["width"], r["height"], r["audio"]) for r in result.renditions] == [
        (240, 426, None),
        (360, 640, None),
    ]
    assert result.audio == []
    m = check_master(tmp_path / "portrait" / "master.m3u8")
    assert m.media == [] and all("AUDIO" not in v.attrs for v in m.variants)
    assert all(v.attrs["CODECS"].count(",") == 0 for v in m.variants)
    assert [len(v.playlist.segments) for v in m.variants] == [2, 2]
    root = ET.parse(tmp_path / "portrait" / "manifest.mpd").getroot()
    assert len(root.findall(".//{urn:mpeg:dash:schema:mpd:2011}AdaptationSet")) == 1
    proc = ffmpeg_decode(tmp_path / "portrait" / "manifest.mpd")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert picture_size(tmp_path / "portrait" / "poster.jpg") == (360, 640)
    assert picture_size(tmp_path / "portrait" / "sprite.jpg") == (2 * 160, 284)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("empty.mp4", r"empty\.mp4: the file is empty"),
        ("notes.mp4", r"notes\.mp4: not a media file \(.*Invalid data"),
        ("tone.m4a", r"tone\.m4a: no video stream \(audio only\)"),
        ("still.png", r"still\.png: a still image"),
        ("missing.mp4", r"missing\.mp4: cannot read: No such file"),
    ],
)
async def test_bad_sources_fail_before_any_output(
    media: Path, tmp_path: Path, source: str, message: str
) -> None:
    with pytest.raises(SourceError, match=message):
        await ingest_title(media / source, "title1", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "title", ["", "Clip", "../x", "a/b", "-a", "_a", "a" * 65, "tête", "a b", "a.b", "a\n"]
)
async def test_unsafe_titles_are_refused(media: Path, tmp_path: Path, title: str) -> None:
    with pytest.raises(ValueError, match=re.escape("[a-z0-9][a-z0-9_-]{0,63}")):
        await ingest_title(media / "clip.mp4", title, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"preset": "warp"}, "preset 'warp'"),
        ({"segment_seconds": 0.5}, "segment_seconds"),
        ({"parallel": 0}, "parallel"),
        ({"retries": -1}, "retries"),
    ],
)
async def test_bad_options_are_refused(
    media: Path, tmp_path: Path, option: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await ingest_title(media / "clip.mp4", "title1", tmp_path, **option)
    assert list(tmp_path.iterdir()) == []


async def test_existing_output_is_never_mixed(media: Path, tmp_path: Path) -> None:
    (tmp_path / "title1").mkdir()
    with pytest.raises(FileExistsError):
        await ingest_title(media / "clip.mp4", "title1", tmp_path, ladder=LADDER[:1])


def flaky_run(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[str]:
    """Make the first ``failures`` encodes of 240p fail for real (an unknown x264 preset),
    after leaving a stray segment behind, as a crashed encoder would."""
    real = ffmpeg.run
    calls: list[str] = []

    async def run(
        args: list[str], *, duration: float, on_progress: Any = None, cwd: Any = None
    ) -> None:
        name = cwd.name if cwd is not None else ""
        calls.append(name)
        if name == "240p" and calls.count(name) <= failures:
            (cwd / "seg00009.m4s").write_bytes(b"stale")
            args = list(args)
            args[args.index("-preset") + 1] = "no-such-preset"
        await real(args, duration=duration, on_progress=on_progress, cwd=cwd)

    monkeypatch.setattr(ingest.ffmpeg, "run", run)
    return calls


async def test_a_failing_rendition_is_retried(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = flaky_run(monkeypatch, failures=1)
    result = await ingest_title(
        media / "clip.mp4",
        "retried",
        tmp_path,
        ladder=LADDER[:1],
        segment_seconds=SEGMENT,
        retries=1,
    )
    assert calls.count("240p") == 2
    out = tmp_path / "retried"
    assert not (out / "240p" / "seg00009.m4s").exists()  # the failed attempt's leftovers
    m = check_master(out / "master.m3u8")
    assert [len(v.playlist.segments) for v in m.variants] == [3]
    assert result.renditions[0]["name"] == "240p"


async def test_a_rendition_failing_every_time_fails_the_ingest(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = flaky_run(monkeypatch, failures=2)
    with pytest.raises(FFmpegError, match=r"240p: failed 2 time\(s\)") as info:
        await ingest_title(
            media / "clip.mp4", "failed", tmp_path, ladder=LADDER[:1], segment_seconds=SEGMENT
        )
    assert calls.count("240p") == 2
    assert "no-such-preset" in info.value.stderr
    assert not (tmp_path / "failed" / "manifest.json").exists()


# -- ffmpeg.run --------------------------------------------------------------------------------


def ffmpeg_children() -> set[int]:
    """Our ffmpeg child processes, from /proc (Linux)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if int(rest.split()[1]) == os.getpid() and "ffmpeg" in comm:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_cancelling_kills_ffmpeg() -> None:
    before = ffmpeg_children()
    started = asyncio.Event()
    progress: list[tuple[float, float]] = []

    def on_progress(fraction: float, speed: float) -> None:
        progress.append((fraction, speed))
        started.set()

    # An endless source: only cancellation ends this encode.
    task = asyncio.create_task(
        ffmpeg.run(
            ["-re", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25", "-f", "null", "-"],
            duration=100.0,
            on_progress=on_progress,
        )
    )
    await asyncio.wait_for(started.wait(), 20)
    assert ffmpeg_children() - before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ffmpeg_children() - before == set()
    assert all(0 <= f < 0.5 and s >= 0 for f, s in progress)


async def test_run_failure_carries_the_tail_of_stderr(tmp_path: Path) -> None:
    with pytest.raises(FFmpegError, match="status") as info:
        await ffmpeg.run(["-i", str(tmp_path / "nope.mp4"), "-f", "null", "-"], duration=1.0)
    assert "No such file or directory" in info.value.stderr
    assert info.value.returncode not in (None, 0)


async def test_probe(media: Path) -> None:
    p = await ffmpeg.probe(media / "clip.mp4")
    assert (p.width, p.height, p.fps, p.has_audio, p.video_codec) == (640, 360, 25.0, True, "h264")
    assert p.duration == pytest.approx(DURATION, abs=0.05)
    # A raw elementary stream states no duration: it is measured.
    raw = await ffmpeg.probe(media / "portrait.h264")
    assert (raw.width, raw.height, raw.has_audio) == (360, 640, False)
    assert raw.duration == pytest.approx(2.0, abs=0.05)


# -- pure parts ---------------------------------------------------------------------------------

STREAM = "  Stream #0:{i}[0x{i}](und): {desc}\n"
HEAD = "Input #0, {fmt}, from 'x':\n  Duration: {dur}, start: 0.000000, bitrate: 1 kb/s\n"


def probe_text(
    *streams: str, fmt: str = "mov,mp4,m4a,3gp,3g2,mj2", dur: str = "00:01:02.50"
) -> str:
    return HEAD.format(fmt=fmt, dur=dur) + "".join(
        STREAM.format(i=i, desc=d) for i, d in enumerate(streams)
    )


H264 = "Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), {size}, 5000 kb/s, {rate}, 90k tbn (default)"
AAC = "Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 128 kb/s (default)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            probe_text(H264.format(size="1920x1080 [SAR 1:1 DAR 16:9]", rate="25 fps, 25 tbr"), AAC),
            {"width": 1920, "height": 1080, "fps": 25.0, "has_audio": True, "duration": 62.5,
             "video_codec": "h264", "audio_index": 1},
            id="plain",
        ),
        pytest.param(
            probe_text(H264.format(size="720x576 [SAR 16:15 DAR 4:3]", rate="25 fps, 25 tbr")),
            {"width": 768, "height": 576, "coded_width": 720, "sar": (16, 15), "has_audio": False},
            id="anamorphic-pal",
        ),
        pytest.param(
            probe_text(H264.format(size="1920x1080", rate="29.97 fps, 29.97 tbr"))
            + "    Side data:\n      displaymatrix: rotation of -90.00 degrees\n",
            {"width": 1080, "height": 1920, "rotation": 270, "fps": 29.97},
            id="phone-rotated",
        ),
        pytest.param(
            probe_text(AAC, "Video: mjpeg (Baseline), yuvj420p(pc), 600x600 [SAR 1:1 DAR 1:1], 90k tbr, 90k tbn (attached pic)",
                       H264.format(size="640x360", rate="23.98 fps, 23.98 tbr")),
            {"width": 640, "height": 360, "video_index": 2, "audio_index": 0, "fps": 23.98},
            id="cover-art-first",
        ),
        pytest.param(
            probe_text(H264.format(size="1280x720", rate="1k tbr"), dur="N/A"),
            {"duration": 0.0, "fps": 1000.0},
            id="no-duration-tbr-only",
        ),
        pytest.param(
            probe_text("Video: mpeg2video (Main), yuv420p(tv, top first), 1920x1080 [SAR 1:1 DAR 16:9], 29.97 fps, 29.97 tbr, 90k tbn"),
            {"interlaced": True, "video_codec": "mpeg2video"},
            id="interlaced",
        ),
    ],
)  # fmt: skip
def test_parse_probe(text: str, expected: dict[str, Any]) -> None:
    p = parse_probe(text)
    assert {k: getattr(p, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[in#0 @ 0x1] Error opening input: Invalid data found when processing input\n",
         r"not a media file \(Error opening input: Invalid data"),
        (probe_text(AAC), r"no video stream \(audio only\)"),
        (probe_text(AAC, "Video: png, rgb24(pc), 500x500, 90k tbr, 90k tbn (attached pic)"),
         r"no video stream \(audio only\)"),
        (probe_text("Video: png, rgb24(pc), 64x64, 25 fps, 25 tbr", fmt="png_pipe"), "still image"),
        (probe_text("Video: h264, none, 25 fps"), "no picture size"),
        (probe_text("Video: h264, yuv420p, 640x360"), "no usable frame rate"),
    ],
)  # fmt: skip
def test_parse_probe_rejects(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_probe(text)


@pytest.mark.parametrize(
    ("durations", "target"),
    [([2.0, 2.0, 2.0], 2), ([4.004, 4.004, 1.5], 4), ([2.5], 3), ([2.49], 2), ([0.02], 1), ([], 1),
     ([6.0, 6.6], 7)],
)  # fmt: skip
def test_target_duration_rounds_half_up(durations: list[float], target: int) -> None:
    assert target_duration(durations) == target


@pytest.mark.parametrize(
    ("sizes", "seconds", "target", "peak"),
    [
        ([250_000, 250_000], [2.0, 2.0], 2, 1_000_000),
        ([100_000, 500_000, 100_000], [2.0, 2.0, 2.0], 2, 2_000_000),
        # A tiny last segment counts only together with its neighbour (1..3 s windows).
        ([250_000, 250_000, 10_000], [2.0, 2.0, 0.02], 2, 1_029_703),
        # Shorter than half a target: the single segment.
        ([10_000], [0.5], 2, 160_000),
    ],
)
def test_peak_bandwidth_follows_rfc8216(
    sizes: list[int], seconds: list[float], target: int, peak: int
) -> None:
    assert peak_bandwidth(sizes, seconds, target) == peak


@pytest.mark.parametrize(
    ("duration", "interval", "count", "columns", "rows"),
    [(6.0, 1, 6, 6, 1), (95.0, 10, 10, 10, 1), (3600.0, 10, 360, 10, 36), (36000.0, 36, 1000, 10, 100),
     (0.5, 1, 1, 1, 1)],
)  # fmt: skip
def test_sprite_plan(duration: float, interval: float, count: int, columns: int, rows: int) -> None:
    plan = sprite_plan(duration, 1920, 1080)
    assert (plan.interval, plan.count, plan.columns, plan.rows) == (interval, count, columns, rows)
    assert (plan.thumb_width, plan.thumb_height) == (160, 90)
