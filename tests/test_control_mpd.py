"""control/mpd.py: a capped plan's per-session DASH MPD, from real MPDs the origin's packager
writes (origin/synth.py runs the same dash_mpd the ingest does). No event loop."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from control.mpd import MpdError, session_mpd
from origin.synth import synth_catalog

NS = "{urn:mpeg:dash:schema:mpd:2011}"
EDGE = "http://edge1.test:8080"
STEER = "https://steer.test/v1/steering/dash?key=k&client=10.0.0.1&base=cdn"


@pytest.fixture(scope="module")
def origin_mpd(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("synth")
    (key,) = synth_catalog(root, titles=1, renditions=5, duration=8.0, seed=9)
    return key, (root / "v" / key / "manifest.mpd").read_text()


def tokens(*dirs: str) -> dict[str, str]:
    return {d: f"tok-{d}" for d in dirs}


def reps(doc: str) -> list[tuple[str, str | None, list[tuple[str, str | None]]]]:
    """(kind, representation id, [(BaseURL, serviceLocation)]) in document order."""
    root = ET.fromstring(doc)
    out = []
    for aset in root.iter(NS + "AdaptationSet"):
        for rep in aset.findall(NS + "Representation"):
            urls = [(u.text or "", u.get("serviceLocation")) for u in rep.findall(NS + "BaseURL")]
            out.append((aset.get("contentType") or "", rep.get("id"), urls))
    return out


ALL_AUDIO = ("audio_96k", "audio_128k")


@pytest.mark.parametrize(
    ("max_height", "dirs", "expected_video", "expected_audio"),
    [
        # basic (480p): three rungs, both audio tracks
        (480, ("240p", "360p", "480p", *ALL_AUDIO), ["240p", "360p", "480p"], list(ALL_AUDIO)),
        # the whole ladder
        (
            2160,
            ("240p", "360p", "480p", "720p", "1080p", *ALL_AUDIO),
            ["240p", "360p", "480p", "720p", "1080p"],
            list(ALL_AUDIO),
        ),
        # an allowed height without a token is left out too, and so is an audio track
        # no allowed rendition names
        (720, ("240p", "720p", "audio_96k"), ["240p", "720p"], ["audio_96k"]),
        # no audio token at all: the audio AdaptationSet goes
        (480, ("240p",), ["240p"], []),
    ],
)
def test_representations_kept_are_the_plans(
    origin_mpd: tuple[str, str],
    max_height: int,
    dirs: tuple[str, ...],
    expected_video: list[str],
    expected_audio: list[str],
) -> None:
    key, text = origin_mpd
    doc = session_mpd(
        text, max_height=max_height, edge_url=EDGE, media_key=key, tokens=tokens(*dirs)
    )
    got = reps(doc)
    assert [r[1] for r in got if r[0] == "video"] == expected_video
    assert [r[1] for r in got if r[0] == "audio"] == expected_audio
    for _, rep_id, urls in got:
        # One BaseURL per Representation: the title prefix under its own directory's token,
        # so its templates ("<dir>/init.mp4") resolve inside the token's scope.
        assert urls == [(f"{EDGE}/_t/tok-{rep_id}/v/{key}/", "cdn")]
    root = ET.fromstring(doc)
    video = next(a for a in root.iter(NS + "AdaptationSet") if a.get("contentType") == "video")
    heights = [int(r.get("height") or 0) for r in video.findall(NS + "Representation")]
    assert video.get("maxHeight") == str(max(heights))
    if "audio" not in {r[0] for r in got}:
        assert [a.get("contentType") for a in root.iter(NS + "AdaptationSet")] == ["video"]


def test_baseurl_precedes_the_segment_template_and_steering_precedes_the_period(
    origin_mpd: tuple[str, str],
) -> None:
    key, text = origin_mpd
    doc = session_mpd(
        text, max_height=480, edge_url=EDGE + "/", media_key=key,
        tokens=tokens("240p", "audio_96k"), steering_uri=STEER,
    )  # fmt: skip
    root = ET.fromstring(doc)
    assert [c.tag for c in root] == [NS + "ContentSteering", NS + "Period"]
    steer = root[0]
    assert steer.text == STEER and steer.get("defaultServiceLocation") == "cdn"
    assert steer.get("queryBeforeStart") == "false"
    for rep in root.iter(NS + "Representation"):
        tags = [c.tag.removeprefix(NS) for c in rep]
        # ISO/IEC 23009-1 RepresentationType: base elements, then BaseURL, then SegmentTemplate
        assert tags.index("BaseURL") == tags.index("SegmentTemplate") - 1
    # The default namespace is written as the origin writes it (no ns0: prefixes).
    assert "ns0:" not in doc and doc.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<MPD ')
    assert 'xmlns="urn:mpeg:dash:schema:mpd:2011"' in doc
    # Nothing else changes: durations and timelines are the origin's.
    assert root.get("mediaPresentationDuration") == ET.fromstring(text).get(
        "mediaPresentationDuration"
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.replace("<MPD ", "<Other ", 1).replace("</MPD>", "</Other>"), "root"),
        (lambda t: t[: len(t) // 2], "well-formed"),
        (lambda t: t.replace('type="static"', 'type="dynamic"'), "static"),
        (
            lambda t: t.replace("<MPD ", '<!DOCTYPE MPD [<!ENTITY a "aaaa">]>\n<MPD ', 1).replace(
                '<?xml version="1.0" encoding="UTF-8"?>\n', ""
            ),
            "declaration",
        ),
        (lambda t: t.replace('height="', 'height="9').replace('maxHeight="', 'x="'), "no video"),
        (lambda t: "x" * (3 * 1024 * 1024), "too large"),
        # A declaration past the first kilobytes, or in another encoding, is found too.
        (
            lambda t: t.replace(
                '<?xml version="1.0" encoding="UTF-8"?>\n',
                "<!--" + "c" * 8000 + '-->\n<!DOCTYPE MPD [<!ENTITY a "aaaa">]>\n',
            ),
            "declaration",
        ),
        (
            lambda t: (
                t.replace('encoding="UTF-8"', 'encoding="UTF-16"')
                .replace("<MPD ", '<!DOCTYPE MPD [<!ENTITY a "aaaa">]>\n<MPD ', 1)
                .encode("utf-16")
            ),
            "declaration",
        ),
    ],
    ids=[
        "not-mpd",
        "truncated",
        "dynamic",
        "doctype",
        "all-too-tall",
        "huge",
        "late-doctype",
        "utf16-doctype",
    ],
)
def test_unusable_mpds_are_refused(
    origin_mpd: tuple[str, str], mutate: object, reason: str
) -> None:
    key, text = origin_mpd
    assert callable(mutate)
    with pytest.raises(MpdError, match=reason):
        session_mpd(
            mutate(text), max_height=480, edge_url=EDGE, media_key=key,
            tokens=tokens("240p", "360p", "480p"),
        )  # fmt: skip


def test_a_bad_edge_url_is_a_value_error(origin_mpd: tuple[str, str]) -> None:
    key, text = origin_mpd
    with pytest.raises(ValueError, match="edge_url"):
        session_mpd(text, max_height=480, edge_url="edge1", media_key=key, tokens=tokens("240p"))


def test_bytes_are_read_like_text(origin_mpd: tuple[str, str], tmp_path: Path) -> None:
    key, text = origin_mpd
    kw = {"max_height": 360, "edge_url": EDGE, "media_key": key, "tokens": tokens("240p")}
    assert session_mpd(text.encode(), **kw) == session_mpd(text, **kw)  # type: ignore[arg-type]
