"""Synthetic catalogs: real packaging over made-up segments; and the playlist checker itself."""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xxhash

from origin.ffmpeg import ffmpeg_exe
from origin.ladder import DEFAULT_LADDER
from origin.synth import avc_codec, grey_jpeg, synth_catalog
from tests.m3u8check import PlaylistError, check_master, check_media

MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): xxhash.xxh64(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("synth")
    ids = synth_catalog(root, titles=3, renditions=3, duration=22.0, segment_seconds=4.0, seed=7)
    return root, ids


def test_ids_and_layout(catalog: tuple[Path, list[str]]) -> None:
    root, ids = catalog
    assert ids == ["synth7-00000", "synth7-00001", "synth7-00002"]
    assert sorted(p.name for p in (root / "v").iterdir()) == ids
    out = root / "v" / ids[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["240p", "360p", "480p", "audio_96k", "audio_128k", "manifest.json", "manifest.mpd",
         "master.m3u8", "master_single.m3u8", "poster.jpg", "sprite.jpg", "sprite.vtt"]
    )  # fmt: skip
    assert sorted(p.name for p in (out / "360p").iterdir()) == [
        "index.m3u8", "init.mp4", *(f"seg{n:05d}.m4s" for n in range(1, 7)), "single.m3u8",
        "single.mp4",
    ]  # fmt: skip


@pytest.mark.parametrize("master", ["master.m3u8", "master_single.m3u8"])
def test_playlists_are_valid(catalog: tuple[Path, list[str]], master: str) -> None:
    root, ids = catalog
    for title in ids:
        m = check_master(root / "v" / title / master)
        assert [v.attrs["RESOLUTION"] for v in m.variants] == ["426x240", "640x360", "854x480"]
        assert [v.attrs["CODECS"] for v in m.variants] == [
            "avc1.4d4015,mp4a.40.2",
            "avc1.4d401e,mp4a.40.2",
            "avc1.4d401e,mp4a.40.2",
        ]
        for v in m.variants:
            assert [s.duration for s in v.playlist.segments] == [4.0] * 5 + [2.0]
            assert v.playlist.target == 4


def test_segment_sizes_follow_the_bitrate(catalog: tuple[Path, list[str]]) -> None:
    root, ids = catalog
    manifest = json.loads((root / "v" / ids[0] / "manifest.json").read_text())
    kbps = {r.name: r.video_kbps for r in DEFAULT_LADDER} | {"audio_96k": 96, "audio_128k": 128}
    for name, rate in kbps.items():
        d = root / "v" / ids[0] / name
        if not d.exists():
            continue
        playlist = check_media(d / "index.m3u8", root / "v" / ids[0])
        for s in playlist.segments:
            expected = rate * 1000 * s.duration / 8
            assert abs(s.size - expected) <= 0.051 * expected, (name, s.uri)
    assert {r["name"] for r in manifest["renditions"]} == {"240p", "360p", "480p"}
    for r in manifest["renditions"]:
        video = kbps[r["name"]] * 1000
        audio = kbps[r["audio"]] * 1000
        assert 0.95 * (video + audio) <= r["avg_bandwidth"] <= 1.05 * (video + audio)
        assert r["avg_bandwidth"] <= r["bandwidth"] <= 1.06 * (video + audio)


def test_manifest_matches_the_files(catalog: tuple[Path, list[str]]) -> None:
    root, ids = catalog
    out = root / "v" / ids[1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["title"] == ids[1]
    assert manifest["duration"] == 22.0
    assert manifest["created"] == "2020-01-01T00:00:00Z"
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(tree(out)) - {"manifest.json"}
    for path, f in listed.items():
        data = (out / path).read_bytes()
        assert (f["size"], f["xxh64"]) == (len(data), xxhash.xxh64(data).hexdigest())
    # single.mp4 is the init segment and every media segment, back to back.
    for name in ("240p", "audio_96k"):
        parts = [out / name / "init.mp4", *sorted((out / name).glob("seg*.m4s"))]
        assert (out / name / "single.mp4").read_bytes() == b"".join(p.read_bytes() for p in parts)


def test_mpd_references_the_same_segments(catalog: tuple[Path, list[str]]) -> None:
    root, ids = catalog
    out = root / "v" / ids[2]
    mpd = ET.parse(out / "manifest.mpd").getroot()
    assert mpd.get("mediaPresentationDuration") == "PT22.000S"
    reps = list(mpd.iter(f"{MPD_NS}Representation"))
    assert [r.get("id") for r in reps] == ["240p", "360p", "480p", "audio_96k", "audio_128k"]
    for rep in reps:
        template = rep.find(f"{MPD_NS}SegmentTemplate")
        assert template is not None
        assert (out / template.get("initialization", "")).is_file()
        count = sum(int(s.get("r", "0")) + 1 for s in template.iter(f"{MPD_NS}S"))
        media = template.get("media", "")
        assert count == 6
        for n in range(1, count + 1):
            assert (out / media.replace("$Number%05d$", f"{n:05d}")).is_file()


def test_poster_and_sprite_are_real_jpegs(catalog: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = catalog
    for name, size in (("poster.jpg", "854x480"), ("sprite.jpg", "1280x90")):
        proc = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-i", str(root / "v" / ids[0] / name), "-f", "null", "-"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"{size}" in proc.stderr and "error" not in proc.stderr.lower()
    assert (root / "v" / ids[0] / "sprite.vtt").read_text().count(
        "sprite.jpg#xywh="
    ) == 8  # every 3 s


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 9), (16, 16), (1921, 1081)])
def test_grey_jpeg_decodes(tmp_path: Path, width: int, height: int) -> None:
    f = tmp_path / "grey.jpg"
    f.write_bytes(grey_jpeg(width, height))
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-v", "error", "-i", str(f), "-f", "rawvideo", "-"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert proc.stdout == bytes([128]) * (width * height)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synth_catalog(tmp_path / "a", titles=2, renditions=2, duration=9.0, seed=3)
    b = synth_catalog(tmp_path / "b", titles=2, renditions=2, duration=9.0, seed=3)
    c = synth_catalog(tmp_path / "c", titles=2, renditions=2, duration=9.0, seed=4)
    assert a == b and a != c
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    seg = "v/{}/240p/seg00001.m4s"
    assert (tmp_path / "a" / seg.format(a[0])).read_bytes() != (
        tmp_path / "c" / seg.format(c[0])
    ).read_bytes()
    # Segments differ from each other too, not only between seeds.
    first = tmp_path / "a" / "v" / a[0] / "240p"
    assert (first / "seg00001.m4s").read_bytes() != (first / "seg00002.m4s").read_bytes()
    # Writing again over an existing catalog replaces the titles.
    synth_catalog(tmp_path / "a", titles=2, renditions=2, duration=9.0, seed=3)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_rendition_count(tmp_path: Path) -> None:
    (one,) = synth_catalog(tmp_path, titles=1, renditions=1, duration=3.0, seed=1)
    assert sorted(p.name for p in (tmp_path / "v" / one).iterdir() if p.is_dir()) == [
        "240p",
        "audio_96k",
    ]
    (every,) = synth_catalog(tmp_path, titles=1, renditions=9, duration=3.0, seed=2)
    m = check_master(tmp_path / "v" / every / "master.m3u8")
    assert [v.attrs["RESOLUTION"] for v in m.variants][-1] == "1920x1080"
    assert [v.attrs["CODECS"].split(",")[0] for v in m.variants][-2:] == [
        "avc1.64001f",
        "avc1.640028",
    ]
    with pytest.raises(ValueError):
        synth_catalog(tmp_path, titles=1, renditions=0, duration=3.0)


def test_fast_enough_for_thousands_of_titles(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    ids = synth_catalog(tmp_path, titles=100, renditions=2, duration=8.0, seed=5)
    elapsed = time.perf_counter() - t0
    assert len(ids) == 100
    assert elapsed < 10, f"{elapsed:.1f}s for 100 titles"


@pytest.mark.parametrize(
    ("width", "height", "codec"),
    [(426, 240, "avc1.4d4015"), (640, 360, "avc1.4d401e"), (854, 480, "avc1.4d401e"),
     (1280, 720, "avc1.64001f"), (1920, 1080, "avc1.640028"), (3840, 2160, "avc1.640033")],
)  # fmt: skip
def test_avc_codec(width: int, height: int, codec: str) -> None:
    assert avc_codec(width, height, 25) == codec


# -- the checker catches what it should ---------------------------------------------------------

GOOD = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="single.mp4",BYTERANGE="10@0"
#EXTINF:4.000,
#EXT-X-BYTERANGE:40@10
single.mp4
#EXTINF:3.500,
#EXT-X-BYTERANGE:50
single.mp4
#EXT-X-ENDLIST
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("", "", None),
        ("#EXTINF:3.500,", "#EXTINF:4.500,", "lasts 4.5 > target 4"),
        ("#EXT-X-VERSION:7", "#EXT-X-VERSION:6", "VERSION 6 < 7"),
        ("#EXT-X-ENDLIST\n", "", "ENDLIST missing"),
        ("#EXT-X-BYTERANGE:40@10", "#EXT-X-BYTERANGE:40@11", "does not continue at 10"),
        ("#EXT-X-BYTERANGE:50", "#EXT-X-BYTERANGE:49", "ranges end at 99, file has 100"),
        ("#EXT-X-BYTERANGE:50", "#EXT-X-BYTERANGE:51", "ranges end at 101"),
        ('URI="single.mp4"', 'URI="/v/t/single.mp4"', "not relative"),
        ('URI="single.mp4"', 'URI="https://cdn/single.mp4"', "not relative"),
        ('URI="single.mp4"', 'URI="other.mp4"', "no such file"),
        ("#EXT-X-INDEPENDENT-SEGMENTS", "#EXT-X-DISCONTINUITY", "unexpected tag"),
        ("#EXTINF:4.000,", "#EXTINF:4.000", "malformed EXTINF"),
        ("#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-PLAYLIST-TYPE:EVENT", "expected VOD"),
    ],
)
def test_checker_rejects_broken_media_playlists(
    tmp_path: Path, old: str, new: str, message: str | None
) -> None:
    (tmp_path / "single.mp4").write_bytes(b"x" * 100)
    (tmp_path / "p.m3u8").write_text(GOOD.replace(old, new) if old else GOOD)
    if message is None:
        assert check_media(tmp_path / "p.m3u8").duration == 7.5
        return
    with pytest.raises(PlaylistError, match=message):
        check_media(tmp_path / "p.m3u8")


def test_checker_rejects_bandwidth_below_the_peak(tmp_path: Path) -> None:
    (tmp_path / "single.mp4").write_bytes(b"x" * 100)
    (tmp_path / "p.m3u8").write_text(GOOD)
    master = (
        "#EXTM3U\n#EXT-X-VERSION:7\n"
        '#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH=100,CODECS="avc1.4d401e",'
        "RESOLUTION=640x360,FRAME-RATE=25.000\np.m3u8\n"
    )
    (tmp_path / "m.m3u8").write_text(master.format(115))  # peak: 8 * 100 B / 7.5 s = 106.7
    check_master(tmp_path / "m.m3u8")
    (tmp_path / "m.m3u8").write_text(master.format(80))
    with pytest.raises(PlaylistError, match="BANDWIDTH 80 < peak"):
        check_master(tmp_path / "m.m3u8")
