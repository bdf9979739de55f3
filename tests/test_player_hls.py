"""control/player/hls.py: RFC 8216 playlists as the reference player reads them (tables)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from control.player.hls import (
    ByteRange,
    MediaPlaylist,
    PlaylistError,
    Segment,
    parse_attributes,
    parse_media_playlist,
    parse_multivariant,
    resolve,
)
from origin.synth import synth_catalog

EDGE = "http://127.0.0.1:8080"
TOKEN = "k1.1790000000.abcDEF_-"
MASTER_URL = f"{EDGE}/_t/{TOKEN}/v/t1/master.m3u8"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BANDWIDTH=1000", {"BANDWIDTH": "1000"}),
        ('CODECS="avc1.4d401e,mp4a.40.2",BANDWIDTH=5', {"CODECS": "avc1.4d401e,mp4a.40.2", "BANDWIDTH": "5"}),
        ('URI="a b,c"', {"URI": "a b,c"}),  # quoted strings keep commas and spaces
        ("RESOLUTION=1280x720,FRAME-RATE=25.000", {"RESOLUTION": "1280x720", "FRAME-RATE": "25.000"}),
        ('NAME=""', {"NAME": ""}),
        ("IV=0x00ff", {"IV": "0x00ff"}),
    ],
)  # fmt: skip
def test_attribute_lists(text: str, expected: dict[str, str]) -> None:
    assert parse_attributes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BANDWIDTH", "without '='"),
        ("bandwidth=1", "bad attribute name"),
        ("A=1,A=2", "given twice"),
        ('URI="open', "unterminated"),
        ('URI="x"y', "junk after"),
        ("A=1,", "ends with ','"),
        ("A=", "bad value"),
        ("A=x y", "bad value"),
        ('A=x"', "bad value"),
    ],
)
def test_bad_attribute_lists(text: str, message: str) -> None:
    with pytest.raises(PlaylistError, match=message):
        parse_attributes(text)


def test_the_origin_packaging_parses_and_resolves_under_the_token(tmp_path: Path) -> None:
    """What origin/package.py writes (via synth), fetched through an edge with a path token."""
    (key,) = synth_catalog(tmp_path, titles=1, renditions=3, duration=10.0, seed=3)
    d = tmp_path / "v" / key
    url = f"{EDGE}/_t/{TOKEN}/v/{key}/master.m3u8"
    m = parse_multivariant((d / "master.m3u8").read_text(), url)
    assert [v.resolution for v in m.by_bandwidth()] == [(426, 240), (640, 360), (854, 480)]
    low = m.by_bandwidth()[0]
    # Relative URIs keep the token: it is a path segment (edge/tokens.py).
    assert low.uri == f"{EDGE}/_t/{TOKEN}/v/{key}/240p/index.m3u8"
    assert low.codecs == "avc1.4d4015,mp4a.40.2" and low.frame_rate == 25.0
    assert low.average_bandwidth is not None and low.average_bandwidth <= low.bandwidth
    audio = m.audio_for(low)
    assert audio is not None and audio.uri == f"{EDGE}/_t/{TOKEN}/v/{key}/audio_96k/index.m3u8"
    assert audio.default and audio.channels == "2"

    pl = parse_media_playlist((d / "240p" / "index.m3u8").read_text(), low.uri)
    assert pl.target_duration == 4 and pl.playlist_type == "VOD"
    assert [s.duration for s in pl.segments] == [4.0, 4.0, 2.0]
    assert [s.start for s in pl.segments] == [0.0, 4.0, 8.0] and pl.duration == 10.0
    assert pl.segments[0].uri == f"{EDGE}/_t/{TOKEN}/v/{key}/240p/seg00001.m4s"
    assert pl.segments[0].init is not None
    assert pl.segments[0].init.uri == f"{EDGE}/_t/{TOKEN}/v/{key}/240p/init.mp4"
    assert [s.sequence for s in pl.segments] == [0, 1, 2]
    assert pl.index_at(0) == 0 and pl.index_at(4.0) == 1 and pl.index_at(9.99) == 2
    assert pl.index_at(50) == 2

    # The byte-range variant: EXT-X-MAP with BYTERANGE, then contiguous ranges of single.mp4.
    single = parse_media_playlist(
        (d / "240p" / "single.m3u8").read_text(), low.uri.replace("index", "single")
    )
    sizes = [(d / "240p" / f"seg0000{i}.m4s").stat().st_size for i in (1, 2, 3)]
    init = single.segments[0].init
    assert init is not None and init.byterange == ByteRange(840, 0)
    assert init.uri.endswith(f"/_t/{TOKEN}/v/{key}/240p/single.mp4")
    offsets = [840, 840 + sizes[0], 840 + sizes[0] + sizes[1]]
    assert [s.byterange for s in single.segments] == [
        ByteRange(n, o) for n, o in zip(sizes, offsets, strict=True)
    ]
    assert ByteRange(10, 840).header == "bytes=840-849"


def test_the_control_planes_session_playlist_with_content_steering() -> None:
    from control.manifest import hls_multivariant

    renditions = [
        {"name": "240p", "width": 426, "height": 240, "bandwidth": 500_000,
         "codecs": "avc1.4d4015,mp4a.40.2", "frame_rate": 25.0, "audio": "audio_96k",
         "audio_channels": 2},
        {"name": "480p", "width": 854, "height": 480, "bandwidth": 1_500_000,
         "codecs": "avc1.4d401e,mp4a.40.2", "frame_rate": 25.0, "audio": "audio_128k"},
    ]  # fmt: skip
    text = hls_multivariant(
        renditions,
        edge_url=EDGE,
        media_key="t1",
        tokens={"240p": "tokA", "480p": "tokB", "audio_96k": "tokC", "audio_128k": "tokD"},
        steering_uri="http://steer.example/v1/steering/hls?key=t1",
    )
    m = parse_multivariant(text, "http://control.example/v1/playback/p1/master.m3u8?token=x")
    assert m.steering is not None and m.steering.pathway_id == "cdn"
    assert m.steering.server_uri.startswith("http://steer.example/v1/steering/hls")
    assert [v.uri for v in m.variants] == [
        f"{EDGE}/_t/tokA/v/t1/240p/index.m3u8",
        f"{EDGE}/_t/tokB/v/t1/480p/index.m3u8",
    ]
    assert {v.pathway_id for v in m.variants} == {"cdn"}
    a = m.audio_for(m.variants[1])
    assert a is not None and a.uri == f"{EDGE}/_t/tokD/v/t1/audio_128k/index.m3u8"


MEDIA_HEAD = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # A range without an offset follows the previous one of the same resource (4.3.2.2).
        ("#EXTINF:4,\n#EXT-X-BYTERANGE:100@0\nf.mp4\n#EXTINF:4,\n#EXT-X-BYTERANGE:50\nf.mp4\n"
         "#EXT-X-ENDLIST\n", [ByteRange(100, 0), ByteRange(50, 100)]),
        # EXT-X-MAP's BYTERANGE without an offset starts at 0.
        ('#EXT-X-MAP:URI="f.mp4",BYTERANGE="30"\n#EXTINF:4,\n#EXT-X-BYTERANGE:10@30\nf.mp4\n'
         "#EXT-X-ENDLIST\n", [ByteRange(10, 30)]),
        # Unknown tags and comments are ignored (6.3.1); CRLF line ends are fine.
        ("#EXT-X-FUTURE-THING:1\r\n# a comment\r\n#EXTINF:3.5,title\r\ns1.m4s\r\n"
         "#EXT-X-ENDLIST\r\n", [None]),
        ('#EXT-X-KEY:METHOD=NONE\n#EXTINF:4,\ns.m4s\n#EXT-X-ENDLIST\n', [None]),
    ],
)  # fmt: skip
def test_media_playlist_byte_ranges(body: str, expected: list[ByteRange | None]) -> None:
    pl = parse_media_playlist(MEDIA_HEAD + body, f"{EDGE}/_t/T/v/t/240p/index.m3u8")
    assert [s.byterange for s in pl.segments] == expected
    if "EXT-X-MAP" in body:
        init = pl.segments[0].init
        assert init is not None and init.byterange == ByteRange(30, 0)


@pytest.mark.parametrize(
    ("base", "uri", "expected"),
    [
        (MASTER_URL, "720p/index.m3u8", f"{EDGE}/_t/{TOKEN}/v/t1/720p/index.m3u8"),
        (f"{EDGE}/_t/{TOKEN}/v/t1/720p/index.m3u8", "seg00001.m4s",
         f"{EDGE}/_t/{TOKEN}/v/t1/720p/seg00001.m4s"),
        (f"{EDGE}/_t/{TOKEN}/v/t1/720p/index.m3u8", "../audio/index.m3u8",
         f"{EDGE}/_t/{TOKEN}/v/t1/audio/index.m3u8"),
        (MASTER_URL, "/v/t1/x.m4s", f"{EDGE}/v/t1/x.m4s"),  # absolute path: token gone
        (MASTER_URL, "http://other:1/a.m4s", "http://other:1/a.m4s"),
        (MASTER_URL, "//cdn.example/a.m4s", "http://cdn.example/a.m4s"),
    ],
)  # fmt: skip
def test_relative_resolution(base: str, uri: str, expected: str) -> None:
    assert resolve(base, uri) == expected


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "data:text/plain,x", "javascript:alert(1)", "a b.m4s", "x\x01"]
)
def test_non_http_uris_are_refused(uri: str) -> None:
    with pytest.raises(PlaylistError):
        resolve(MASTER_URL, uri)


@pytest.mark.parametrize(
    "uri",
    [
        "http://[::1/seg.m4s",  # urljoin/urlsplit: ValueError("Invalid IPv6 URL")
        "http://h:abc/seg.m4s",  # a port that does not parse
        "http://h:99999999/seg.m4s",  # nor fit
    ],
)
def test_malformed_urls_are_playlist_errors(uri: str) -> None:
    # A PlaylistError (an unplayable playlist), never a bare ValueError (a traceback).
    with pytest.raises(PlaylistError, match="not a valid URL"):
        resolve(MASTER_URL, uri)
    with pytest.raises(PlaylistError, match="not a valid URL"):
        parse_media_playlist(MEDIA_HEAD + f"#EXTINF:4,\n{uri}\n#EXT-X-ENDLIST\n", MASTER_URL)


def _playlist(durations: list[float]) -> MediaPlaylist:
    segments, start = [], 0.0
    for n, d in enumerate(durations):
        segments.append(Segment(f"{EDGE}/s{n}.m4s", d, start, n))
        start += d
    return MediaPlaylist(4, tuple(segments))


@pytest.mark.parametrize(
    ("seconds", "index"),
    [
        (-1.0, 0), (0.0, 0), (3.9999, 0), (4.0 - 1e-7, 1),  # within 1e-6 of an end: the next
        (4.0, 1), (5.5, 1), (6.0, 2), (9.99, 2), (10.0, 2), (1e9, 2),  # past the end: the last
    ],
)  # fmt: skip
def test_index_at(seconds: float, index: int) -> None:
    assert _playlist([4.0, 2.0, 4.0]).index_at(seconds) == index


class _CountingSegments(tuple):  # type: ignore[type-arg]
    """Segments that count how many of them a look-up reads."""

    reads = 0

    def __getitem__(self, i: Any) -> Any:
        type(self).reads += 1
        return super().__getitem__(i)


def test_index_at_is_a_binary_search() -> None:
    # The player asks once per segment: a linear scan made a hostile 200,000-segment playlist
    # O(n^2). Counted, not timed: a look-up reads about log2(n) segments, not n.
    pl = _playlist([1.0] * 200_000)
    counted = dataclasses.replace(pl, segments=_CountingSegments(pl.segments))
    _CountingSegments.reads = 0
    assert counted.index_at(199_999.5) == 199_999
    assert counted.index_at(10.5) == 10
    assert _CountingSegments.reads <= 2 * 20  # log2(200,000) < 18


MASTER_OK = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\na/index.m3u8\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must start with #EXTM3U"),
        ("<html>error</html>", "must start with #EXTM3U"),
        ("#EXTM3U\n", "no EXT-X-STREAM-INF"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:RESOLUTION=1x1\na.m3u8\n", "without BANDWIDTH"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=0\na.m3u8\n", "must be positive"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=-5\na.m3u8\n", "not a decimal-integer"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=99999999999999999999\na\n", "decimal-integer"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n", "without a URI"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n#EXT-X-VERSION:7\na\n", "followed by its URI"),
        ("#EXTM3U\na.m3u8\n", "without EXT-X-STREAM-INF"),
        ('#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO="aac"\na\n', "AUDIO group 'aac'"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,RESOLUTION=big\na\n", "RESOLUTION"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,FRAME-RATE=nan\na\n", "FRAME-RATE"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-STREAM-INF:BANDWIDTH=1\na\n", "both"),
        ('#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,NAME="a"\n' + MASTER_OK[8:], "without GROUP-ID"),
        ('#EXTM3U\n#EXT-X-MEDIA:TYPE=DATA,GROUP-ID="g",NAME="a"\n' + MASTER_OK[8:], "TYPE"),
        ('#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="g",NAME="a",DEFAULT=yes\n'
         + MASTER_OK[8:], "YES or NO"),
        ("#EXTM3U\n#EXT-X-CONTENT-STEERING:PATHWAY-ID=\"x\"\n" + MASTER_OK[8:], "SERVER-URI"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nfile:///etc/passwd\n", "not an http"),
        ("#EXTM3U\n#EXT-X-VERSION:99\n" + MASTER_OK[8:], "not supported"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:" + "A" * 9000 + "\na\n", "longer than"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na\x00b\n", "control character"),
    ],
)  # fmt: skip
def test_bad_multivariant_playlists(text: str, message: str) -> None:
    with pytest.raises(PlaylistError, match=message):
        parse_multivariant(text, MASTER_URL)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("#EXTINF:4,\ns.m4s\n", "no EXT-X-ENDLIST"),
        ("#EXT-X-ENDLIST\n", "no segments"),
        ("s.m4s\n#EXT-X-ENDLIST\n", "without EXTINF"),
        ("#EXTINF:4,\n#EXTINF:4,\ns.m4s\n#EXT-X-ENDLIST\n", "EXTINF twice"),
        ("#EXTINF:-1,\ns.m4s\n#EXT-X-ENDLIST\n", "out of range"),
        ("#EXTINF:0,\ns.m4s\n#EXT-X-ENDLIST\n", "must be positive"),
        ("#EXTINF:inf,\ns.m4s\n#EXT-X-ENDLIST\n", "decimal-floating-point"),
        ("#EXTINF:1e308,\ns.m4s\n#EXT-X-ENDLIST\n", "decimal-floating-point"),
        ("#EXTINF:9,\ns.m4s\n#EXT-X-ENDLIST\n", "more than EXT-X-TARGETDURATION 4"),
        ("#EXTINF:4,\n#EXT-X-BYTERANGE:50\nf.mp4\n#EXT-X-ENDLIST\n", "must follow a range"),
        ("#EXTINF:4,\n#EXT-X-BYTERANGE:10@0\nf.mp4\n#EXTINF:4,\n#EXT-X-BYTERANGE:5\ng.mp4\n"
         "#EXT-X-ENDLIST\n", "same resource"),
        ("#EXTINF:4,\n#EXT-X-BYTERANGE:0@0\nf.mp4\n#EXT-X-ENDLIST\n", "out of range"),
        ("#EXTINF:4,\n#EXT-X-BYTERANGE:x@0\nf.mp4\n#EXT-X-ENDLIST\n", "not n"),
        ("#EXT-X-MAP:BYTERANGE=\"1@0\"\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n", "without URI"),
        ('#EXT-X-KEY:METHOD=AES-128,URI="k"\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n', "encrypted"),
        ("#EXT-X-STREAM-INF:BANDWIDTH=1\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n", "both"),
        ("#EXTINF:4,\ns\n#EXT-X-ENDLIST\n#EXTINF:4,\nt\n", "after EXT-X-ENDLIST"),
        ("#EXTINF:4,\n", "without a segment URI"),
        ("#EXT-X-PLAYLIST-TYPE:LIVE\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n", "PLAYLIST-TYPE"),
    ],
)  # fmt: skip
def test_bad_media_playlists(body: str, message: str) -> None:
    with pytest.raises(PlaylistError, match=message):
        parse_media_playlist(MEDIA_HEAD + body, f"{EDGE}/_t/T/v/t/240p/index.m3u8")


@pytest.mark.parametrize(
    "text",
    [
        "#EXTM3U\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n",  # no target duration
        "#EXTM3U\n#EXT-X-TARGETDURATION:0\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n",
        "#EXTM3U\n#EXT-X-TARGETDURATION:abc\n#EXTINF:4,\ns\n#EXT-X-ENDLIST\n",
    ],
)
def test_target_duration_is_required_and_checked(text: str) -> None:
    with pytest.raises(PlaylistError, match="TARGETDURATION"):
        parse_media_playlist(text, f"{EDGE}/x/index.m3u8")


def test_hostile_sizes_are_bounded() -> None:
    with pytest.raises(PlaylistError, match="larger than"):
        parse_media_playlist("#EXTM3U\n" + "#" * (5 << 20), f"{EDGE}/x/index.m3u8")
    many = "#EXTM3U\n" + "#EXT-X-STREAM-INF:BANDWIDTH=1\na\n" * 300
    with pytest.raises(PlaylistError, match="more than 256 variants"):
        parse_multivariant(many, MASTER_URL)
