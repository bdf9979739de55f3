"""Pure parts of playback: steering answers, signed prefixes, steering URLs and the per-session
HLS multivariant playlist (no event loop, no I/O)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from control.manifest import (
    BASE_PATHWAY,
    RankedEdge,
    SteerAnswerError,
    allowed_renditions,
    clean_rendition,
    covers_ladder,
    fallback_edge,
    hls_multivariant,
    parse_steer_answer,
    playlist_path,
    rendition_directories,
    rendition_prefix,
    steering_url,
    title_prefix,
    url_prefix,
)
from edge.tokens import SigningKeys, TokenRejected, sign, split_token, verify
from tests.m3u8check import parse_attributes

KEYS = SigningKeys({"k1": b"\x11" * 32}, "k1")

LADDER: list[dict[str, Any]] = [
    {"name": "1080p", "width": 1920, "height": 1080, "bandwidth": 5_000_000,
     "codecs": "avc1.640028,mp4a.40.2", "frame_rate": 30.0},
    {"name": "240p", "width": 426, "height": 240, "bandwidth": 400_000,
     "codecs": "avc1.4d4015,mp4a.40.2", "frame_rate": 30.0},
    {"name": "720p", "width": 1280, "height": 720, "bandwidth": 2_800_000,
     "codecs": "avc1.64001f,mp4a.40.2", "frame_rate": 29.97},
    {"name": "480p", "width": 854, "height": 480, "bandwidth": 1_200_000,
     "codecs": "avc1.4d401e,mp4a.40.2", "frame_rate": 30.0},
]  # fmt: skip


# -- steering answers ---------------------------------------------------------------------


def _answer(*entries: Any) -> dict[str, Any]:
    return {"key": "t", "client": "198.51.100.7", "site": "paris", "edges": list(entries)}


def _e(edge: Any, url: Any) -> dict[str, Any]:
    return {"edge": edge, "site": "paris", "url": url, "reason": "ring order"}


def test_steer_answer_keeps_rank_order_without_steerings_origin() -> None:
    """Steering ends every answer with the origin as its own last resort; the origin refuses
    players, so it never becomes an edge a player is given."""
    doc = _answer(
        _e("par2", "http://10.0.0.2:8080"),
        _e("par1", "http://10.0.0.1:8080/"),
        _e("origin", "https://origin.example"),
    )
    assert parse_steer_answer(doc) == [
        RankedEdge("par2", "http://10.0.0.2:8080"),
        RankedEdge("par1", "http://10.0.0.1:8080"),
    ]


def test_steer_answer_naming_only_the_origin_is_an_error() -> None:
    with pytest.raises(SteerAnswerError):
        parse_steer_answer(_answer(_e("origin", "https://origin.example")))


@pytest.mark.parametrize(
    "entry",
    [
        _e("bad id!", "http://10.0.0.9"),
        _e("", "http://10.0.0.9"),
        _e(7, "http://10.0.0.9"),
        _e("x", "ftp://10.0.0.9"),
        _e("x", "http://10.0.0.9/?q=1"),
        _e("x", "http://user@10.0.0.9"),
        _e("x", 'http://10.0.0.9/"x'),
        _e("x", "http://10.0.0.9/\nEVIL"),
        _e("x", "http://10.0.0.9:99999"),
        _e("x", "//10.0.0.9"),
        _e("x", None),
        "not an object",
    ],
)
def test_steer_answer_skips_unusable_entries(entry: Any) -> None:
    doc = _answer(entry, _e("par1", "http://10.0.0.1"))
    assert parse_steer_answer(doc) == [RankedEdge("par1", "http://10.0.0.1")]


def test_steer_answer_drops_repeated_ids() -> None:
    doc = _answer(_e("a", "http://10.0.0.1"), _e("a", "http://10.0.0.2"))
    assert parse_steer_answer(doc) == [RankedEdge("a", "http://10.0.0.1")]


@pytest.mark.parametrize(
    "doc",
    [None, [], "x", {}, {"edges": None}, {"edges": []}, _answer(_e("x", "nope"))],
)
def test_steer_answer_without_usable_edges_is_an_error(doc: Any) -> None:
    with pytest.raises(SteerAnswerError):
        parse_steer_answer(doc)


def test_fallback_edge_is_the_configured_fallback_url() -> None:
    assert fallback_edge("http://edges.example:8080/") == RankedEdge(
        "fallback", "http://edges.example:8080"
    )
    with pytest.raises(ValueError):
        fallback_edge("not a url")


# -- prefixes and tokens ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["title1", "a.b-c_d", "T9"])
def test_url_prefix_carries_a_token_scoped_to_the_title(key: str) -> None:
    token = sign(KEYS, title_prefix(key), 2_000_000_000)
    prefix = url_prefix("http://edge.example:81/", token, key)
    assert url_prefix("http://edge.example:81", token, key) == prefix
    assert prefix == f"http://edge.example:81/_t/{token}/v/{key}/"
    got, path = split_token(urlsplit(prefix + "720p/index.m3u8").path)
    assert got == token and path == f"/v/{key}/720p/index.m3u8"
    verify(KEYS, got, path, 1_900_000_000, None)
    with pytest.raises(TokenRejected) as exc:
        verify(KEYS, got, f"/v/{key}x/master.m3u8", 1_900_000_000, None)
    assert exc.value.reason == "out_of_scope"


@pytest.mark.parametrize("key", ["", "..", ".hidden", "a/b", "a b", "x" * 200, "é"])
def test_title_prefix_refuses_keys_that_are_not_one_segment(key: str) -> None:
    with pytest.raises(ValueError):
        title_prefix(key)
    with pytest.raises(ValueError):
        rendition_prefix(key, "720p")


def test_a_rendition_token_reaches_only_its_directory() -> None:
    token = sign(KEYS, rendition_prefix("title1", "480p"), 2_000_000_000)
    prefix = url_prefix("http://edge.example:81", token, "title1", "480p")
    assert prefix == f"http://edge.example:81/_t/{token}/v/title1/480p/"
    got, path = split_token(urlsplit(prefix + "seg00001.m4s").path)
    assert got == token and path == "/v/title1/480p/seg00001.m4s"
    verify(KEYS, got, path, 1_900_000_000, None)
    verify(KEYS, got, "/v/title1/480p/index.m3u8", 1_900_000_000, None)
    for other in [
        "/v/title1/1080p/seg00001.m4s",
        "/v/title1/480px/seg00001.m4s",
        "/v/title1/master.m3u8",
        "/v/title1/manifest.mpd",
        "/v/title1/480p/../1080p/seg00001.m4s",
    ]:
        with pytest.raises(TokenRejected) as exc:
            verify(KEYS, got, other, 1_900_000_000, None)
        assert exc.value.reason == "out_of_scope", other


@pytest.mark.parametrize("name", ["", "..", "a/b", "a b", 'a"b', "x" * 200])
def test_rendition_prefix_refuses_names_that_are_not_one_segment(name: str) -> None:
    with pytest.raises(ValueError):
        rendition_prefix("title1", name)


def test_playlist_path() -> None:
    assert playlist_path("AbC_-9") == "/v1/playback/AbC_-9/master.m3u8"
    for bad in ["", "a/b", "a.b", "x" * 65]:
        with pytest.raises(ValueError):
            playlist_path(bad)


def test_steering_urls() -> None:
    url = steering_url("https://steer.example/", "hls", "title1", "2001:db8::1")
    u = urlsplit(url)
    assert (u.scheme, u.netloc, u.path) == ("https", "steer.example", "/v1/steering/hls")
    assert parse_qs(u.query) == {"key": ["title1"], "client": ["2001:db8::1"], "base": ["cdn"]}
    assert "/v1/steering/dash?" in steering_url("http://s", "dash", "k", "10.0.0.1")
    with pytest.raises(ValueError):
        steering_url("http://s", "smooth", "k", "10.0.0.1")


# -- renditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_height", "names"),
    [
        (480, ["240p", "480p"]),
        (1080, ["240p", "480p", "720p", "1080p"]),
        (2160, ["240p", "480p", "720p", "1080p"]),
        (719, ["240p", "480p"]),
        (144, ["240p"]),  # none fits: the lowest is kept
    ],
)
def test_allowed_renditions(max_height: int, names: list[str]) -> None:
    assert [r["name"] for r in allowed_renditions(LADDER, max_height)] == names


@pytest.mark.parametrize(
    ("max_height", "full"), [(2160, True), (1080, True), (1079, False), (480, False), (144, False)]
)
def test_covers_ladder(max_height: int, full: bool) -> None:
    assert covers_ladder(LADDER, allowed_renditions(LADDER, max_height)) is full


def test_an_invalid_ladder_entry_counts_as_withheld() -> None:
    """A rendition the playlist cannot list (here: no codecs) is never allowed, so the plan
    does not cover the ladder and no title-wide token would reach its directory."""
    ladder = [*LADDER, {"name": "4320p", "width": 7680, "height": 4320, "bandwidth": 1}]
    assert not covers_ladder(ladder, allowed_renditions(ladder, 4320))
    assert not covers_ladder([], [])


def test_allowed_renditions_of_nothing_is_nothing() -> None:
    assert allowed_renditions([], 1080) == []
    assert allowed_renditions([{"name": "x"}], 1080) == []


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"name": "../x"}, False),
        ({"name": "a/b"}, False),
        ({"name": ""}, False),
        ({"height": 0}, False),
        ({"height": True}, False),
        ({"height": 720.0}, True),
        ({"width": "1280"}, False),
        ({"bandwidth": None}, False),
        ({"codecs": 'avc1.64001f",x'}, False),
        ({"codecs": "avc1.64001f, mp4a.40.2"}, False),
        ({"codecs": ""}, False),
        ({"frame_rate": None}, True),
        ({"frame_rate": float("nan")}, True),
    ],
)
def test_clean_rendition(change: dict[str, Any], valid: bool) -> None:
    r = {**LADDER[2], **change}
    assert (clean_rendition(r) is not None) is valid


def test_clean_rendition_keeps_audio_only_when_named_safely() -> None:
    r = clean_rendition({**LADDER[2], "audio": "audio_128k", "audio_channels": 2})
    assert r is not None and r["audio"] == "audio_128k" and r["audio_channels"] == 2
    r = clean_rendition({**LADDER[2], "audio": 'a"b'})
    assert r is not None and "audio" not in r


# -- the multivariant playlist ----------------------------------------------------------


def _parse(text: str) -> tuple[list[str], list[tuple[dict[str, str], str]], list[dict[str, str]]]:
    """(tags in order, [(STREAM-INF attributes, URI)], [EXT-X-MEDIA attributes])."""
    path = Path("session.m3u8")
    lines = text.split("\n")
    assert lines[0] == "#EXTM3U" and text.endswith("\n")
    tags, variants, media = [], [], []
    pending = None
    for n, ln in enumerate(lines[1:], 2):
        if not ln:
            continue
        if ln.startswith("#"):
            name, _, value = ln[1:].partition(":")
            tags.append(name)
            if name == "EXT-X-STREAM-INF":
                pending = parse_attributes(value, path, n)
            elif name in ("EXT-X-MEDIA", "EXT-X-CONTENT-STEERING"):
                media.append({"TAG": name, **parse_attributes(value, path, n)})
            continue
        assert pending is not None, f"line {n}: URI without EXT-X-STREAM-INF"
        variants.append((pending, ln))
        pending = None
    assert pending is None
    return tags, variants, media


EDGE = "http://10.0.0.1:8080"


def _tokens(renditions: list[dict[str, Any]]) -> dict[str, str]:
    return {d: f"T-{d}" for d in rendition_directories(renditions)}


def _uri(name: str) -> str:
    return f"{EDGE}/_t/T-{name}/v/title1/{name}/index.m3u8"


def _playlist(renditions: list[dict[str, Any]], **kw: Any) -> str:
    return hls_multivariant(
        renditions, edge_url=EDGE + "/", media_key="title1", tokens=_tokens(renditions), **kw
    )


def test_playlist_lists_allowed_renditions_with_absolute_uris_lowest_first() -> None:
    text = _playlist(allowed_renditions(LADDER, 720))
    tags, variants, media = _parse(text)
    assert tags[:2] == ["EXT-X-VERSION", "EXT-X-INDEPENDENT-SEGMENTS"]
    assert text.startswith("#EXTM3U\n#EXT-X-VERSION:7\n")
    assert "EXT-X-CONTENT-STEERING" not in tags and media == []
    # Every variant under its own directory, with that directory's own token.
    assert [uri for _, uri in variants] == [_uri("240p"), _uri("480p"), _uri("720p")]
    first = variants[0][0]
    assert first["BANDWIDTH"] == "400000" and first["RESOLUTION"] == "426x240"
    assert first["CODECS"] == '"avc1.4d4015,mp4a.40.2"' and first["FRAME-RATE"] == "30.000"
    assert variants[2][0]["FRAME-RATE"] == "29.970"
    assert all("PATHWAY-ID" not in attrs for attrs, _ in variants)
    assert "1080p" not in text


def test_playlist_uris_carry_real_tokens_for_their_directory_only() -> None:
    renditions = allowed_renditions(
        [{**r, "audio": "audio_128k", "audio_channels": 2} for r in LADDER], 480
    )
    tokens = {
        d: sign(KEYS, rendition_prefix("title1", d), 2_000_000_000)
        for d in rendition_directories(renditions)
    }
    assert set(tokens) == {"240p", "480p", "audio_128k"}
    text = hls_multivariant(renditions, edge_url=EDGE, media_key="title1", tokens=tokens)
    _, variants, media = _parse(text)
    uris = [uri for _, uri in variants] + [m["URI"].strip('"') for m in media]
    assert len(uris) == 3
    for uri in uris:
        token, path = split_token(urlsplit(uri).path)
        directory = path.removeprefix("/v/title1/").split("/")[0]
        verify(KEYS, token, f"/v/title1/{directory}/seg00001.m4s", 1_900_000_000, None)
        for other in ("720p", "1080p"):
            with pytest.raises(TokenRejected):
                verify(KEYS, token, f"/v/title1/{other}/seg00001.m4s", 1_900_000_000, None)


def test_playlist_refuses_a_missing_token() -> None:
    renditions = allowed_renditions(LADDER, 720)
    tokens = _tokens(renditions)
    del tokens["480p"]
    with pytest.raises(ValueError):
        hls_multivariant(renditions, edge_url=EDGE, media_key="title1", tokens=tokens)


def test_playlist_with_content_steering() -> None:
    server = "https://steer.example/v1/steering/hls?key=title1&client=10.1.2.3&base=cdn"
    text = _playlist(allowed_renditions(LADDER, 1080), steering_uri=server)
    tags, variants, media = _parse(text)
    steering = [m for m in media if m["TAG"] == "EXT-X-CONTENT-STEERING"]
    assert steering == [
        {"TAG": "EXT-X-CONTENT-STEERING", "SERVER-URI": f'"{server}"', "PATHWAY-ID": '"cdn"'}
    ]
    assert tags.index("EXT-X-CONTENT-STEERING") < tags.index("EXT-X-STREAM-INF")
    assert len(variants) == 4
    assert all(attrs["PATHWAY-ID"] == f'"{BASE_PATHWAY}"' for attrs, _ in variants)


def test_playlist_audio_groups_as_the_origin_writes_them() -> None:
    ladder = [
        {**LADDER[1], "audio": "audio_64k", "audio_channels": 2},
        {**LADDER[3], "audio": "audio_128k"},
        {**LADDER[2], "audio": "audio_128k"},
    ]
    text = _playlist(allowed_renditions(ladder, 720))
    _, variants, media = _parse(text)
    assert media == [
        {"TAG": "EXT-X-MEDIA", "TYPE": "AUDIO", "GROUP-ID": '"audio_64k"', "NAME": '"audio"',
         "DEFAULT": "YES", "AUTOSELECT": "YES", "CHANNELS": '"2"',
         "URI": f'"{_uri("audio_64k")}"'},
        {"TAG": "EXT-X-MEDIA", "TYPE": "AUDIO", "GROUP-ID": '"audio_128k"', "NAME": '"audio"',
         "DEFAULT": "YES", "AUTOSELECT": "YES", "URI": f'"{_uri("audio_128k")}"'},
    ]  # fmt: skip
    assert [a["AUDIO"] for a, _ in variants] == ['"audio_64k"', '"audio_128k"', '"audio_128k"']


def test_playlist_matches_the_origins_master_for_the_same_renditions() -> None:
    """The origin's own writer and ours agree on every attribute, fed what the origin's catalog
    feed carries (origin/catalog.py summary of the manifest.json)."""
    from datetime import UTC, datetime
    from fractions import Fraction

    from origin.catalog import summary
    from origin.package import Track, build_manifest, master_playlist

    def video(name: str, w: int, h: int, size: int) -> Track:
        return Track(name, "video", "avc1.64001f", 90000, 800, (0, 360000), (360000, 360000),
                     (size, size), w, h, Fraction(30), audio="audio_128k")  # fmt: skip

    audio = Track("audio_128k", "audio", "mp4a.40.2", 48000, 600, (0, 192000),
                  (192000, 192000), (64000, 64000), channels=2, sample_rate=48000)  # fmt: skip
    videos = [video("360p", 640, 360, 400_000), video("720p", 1280, 720, 1_500_000)]
    theirs = master_playlist(videos, [audio])
    manifest = build_manifest("title1", 8.0, videos, [audio], [], datetime.now(UTC), 4.0)
    entries = summary("title1", manifest)["renditions"]
    assert [(e["audio"], e["audio_channels"]) for e in entries] == [("audio_128k", 2)] * 2
    # The feed's summary drops avg_bandwidth: add it back to compare the full attribute set.
    entries = [
        {**e, "avg_bandwidth": r["avg_bandwidth"]}
        for e, r in zip(entries, manifest["renditions"], strict=True)
    ]
    renditions = allowed_renditions(entries, 1080)
    ours = _playlist(renditions)
    strip = re.compile(r'URI="[^"]*"|^[^#].*$', re.M)
    assert strip.sub("", ours) == strip.sub("", theirs)
    assert [ln for ln in ours.splitlines() if ln and not ln.startswith("#")] == [
        _uri("360p"),
        _uri("720p"),
    ]
    assert f'URI="{_uri("audio_128k")}"' in ours


@pytest.mark.parametrize(
    "edge", ["/v/title1/", "10.0.0.1", 'http://10.0.0.1/"', "ftp://x", "http://x/?q=1"]
)
def test_playlist_refuses_a_bad_edge_url(edge: str) -> None:
    renditions = allowed_renditions(LADDER, 720)
    with pytest.raises(ValueError):
        hls_multivariant(renditions, edge_url=edge, media_key="title1", tokens=_tokens(renditions))


def test_playlist_refuses_a_steering_uri_with_a_quote() -> None:
    from steering.manifests import SteeringError

    with pytest.raises(SteeringError):
        _playlist(allowed_renditions(LADDER, 720), steering_uri='x"y')


def test_a_frame_rate_too_large_for_a_float_is_unknown_not_a_crash() -> None:
    r = {"name": "720p", "width": 1280, "height": 720, "bandwidth": 2_800_000,
         "codecs": "avc1.64001f", "frame_rate": 10**400}  # fmt: skip
    cleaned = clean_rendition(r)
    assert cleaned is not None and cleaned["frame_rate"] == 0.0
