"""The ABR ladder: rung selection per source size, and loading ladders from YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from origin.ladder import DEFAULT_LADDER, Rung, load_ladder, select

ROOT = Path(__file__).resolve().parent.parent


def sizes(rungs: list[Rung]) -> list[tuple[str, int, int]]:
    return [(r.name, r.width, r.height) for r in rungs]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            (1920, 1080),
            [("240p", 426, 240), ("360p", 640, 360), ("480p", 854, 480), ("720p", 1280, 720),
             ("1080p", 1920, 1080)],
            id="1080p",
        ),
        pytest.param(
            (1280, 720),
            [("240p", 426, 240), ("360p", 640, 360), ("480p", 854, 480), ("720p", 1280, 720)],
            id="720p-never-upscaled",
        ),
        pytest.param(
            (3840, 2160),
            [("240p", 426, 240), ("360p", 640, 360), ("480p", 854, 480), ("720p", 1280, 720),
             ("1080p", 1920, 1080)],
            id="4k-capped-by-ladder",
        ),
        pytest.param((480, 270), [("240p", 426, 240)], id="480x270"),
        pytest.param(
            (1080, 1920),
            [("240p", 240, 426), ("360p", 360, 640), ("480p", 480, 854), ("720p", 720, 1280),
             ("1080p", 1080, 1920)],
            id="portrait-1080x1920",
        ),
        pytest.param(
            (640, 480), [("240p", 320, 240), ("360p", 480, 360), ("480p", 640, 480)], id="4:3"
        ),
        pytest.param(
            (1920, 804),
            [("240p", 426, 178), ("360p", 640, 268), ("480p", 854, 358), ("720p", 1280, 536),
             ("1080p", 1920, 804)],
            id="scope-2.39",
        ),
        pytest.param(
            (1080, 1080),
            [("240p", 240, 240), ("360p", 360, 360), ("480p", 480, 480), ("720p", 720, 720),
             ("1080p", 1080, 1080)],
            id="square",
        ),
        # Odd sizes: even output, never wider or taller than the source.
        pytest.param(
            (853, 480), [("240p", 426, 240), ("360p", 640, 360), ("480p", 852, 480)], id="853x480"
        ),
        pytest.param((641, 361), [("240p", 426, 240), ("360p", 640, 360)], id="641x361"),
        pytest.param((161, 91), [("240p", 160, 90)], id="tiny-odd"),
        pytest.param((320, 180), [("240p", 320, 180)], id="below-lowest-rung"),
        pytest.param((2, 2), [("240p", 2, 2)], id="smallest"),
    ],
)  # fmt: skip
def test_select(source: tuple[int, int], expected: list[tuple[str, int, int]]) -> None:
    chosen = select(DEFAULT_LADDER, *source)
    assert sizes(chosen) == expected
    for r in chosen:
        assert r.width % 2 == 0 and r.height % 2 == 0
        assert r.width <= source[0] and r.height <= source[1]


def test_select_scales_bitrate_of_a_small_source_by_area() -> None:
    (rung,) = select(DEFAULT_LADDER, 320, 180)
    # 320x180 is 9/16 of the 240p box (426.7x240): 400 kbit/s becomes 225.
    assert rung.video_kbps == 225
    assert rung.maxrate_kbps == 337
    assert rung.audio_kbps == 96
    (full,) = select(DEFAULT_LADDER, 480, 270)
    assert full.video_kbps == 400


def test_select_sorts_and_keeps_rungs_of_equal_height() -> None:
    ladder = [Rung("hi", 720, 4500), Rung("low", 360, 800), Rung("mid", 720, 2800)]
    assert [r.name for r in select(ladder, 1920, 1080)] == ["low", "mid", "hi"]
    assert [r.name for r in select(ladder, 640, 360)] == ["low"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((DEFAULT_LADDER, 0, 1080), "at least 2x2"),
        ((DEFAULT_LADDER, 1920, 1), "at least 2x2"),
        (((), 1920, 1080), "empty"),
    ],
)
def test_select_rejects(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select(*args)  # type: ignore[arg-type]


def test_rung_defaults() -> None:
    r = Rung("720p", 720, 2800)
    assert (r.audio_kbps, r.maxrate_kbps, r.bufsize_kbits) == (128, 4200, 8400)
    r = Rung("720p", 720, 2800, max_kbps=3000, buffer_kbits=3000)
    assert (r.maxrate_kbps, r.bufsize_kbits) == (3000, 3000)


def test_example_file_is_the_default_ladder() -> None:
    assert load_ladder(ROOT / "conf" / "ladder.example.yaml") == DEFAULT_LADDER


def test_load_ladder_sorts_and_takes_optional_keys(tmp_path: Path) -> None:
    f = tmp_path / "ladder.yaml"
    f.write_text(
        "- {name: hd, height: 720, video_kbps: 3000, max_kbps: 3300, buffer_kbits: 6000}\n"
        "- {name: sd, height: 360, video_kbps: 700, audio_kbps: 64, max_kbps: null}\n"
    )
    assert load_ladder(f) == (
        Rung("sd", 360, 700, 64),
        Rung("hd", 720, 3000, 128, max_kbps=3300, buffer_kbits=6000),
    )


GOOD = "  height: 360\n  video_kbps: 800\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"must be a non-empty list of rungs, got NoneType"),
        ("[]\n", r"must be a non-empty list"),
        ("name: 360p\n", r"must be a non-empty list of rungs, got dict"),
        ("- 360\n", r"\[0\]: must be a mapping, got int"),
        ("- [\n", r"not valid YAML"),
        ("- name: 360p\n  height: 360\n  vidoe_kbps: 800\n",
         r"\[0\]\.vidoe_kbps: unknown key \(did you mean 'video_kbps'\?\)"),
        ("- name: 360p\n  video_kbps: 800\n", r"\[0\]\.height: missing"),
        ("- height: 360\n  video_kbps: 800\n", r"\[0\]\.name: missing"),
        ("- name: 360p\n  height: 360\n  video_kbps: 800k\n",
         r"\[0\]\.video_kbps: must be an integer, got str '800k'"),
        ("- name: 360p\n  height: 360\n  video_kbps: yes\n",
         r"\[0\]\.video_kbps: must be an integer, got bool"),
        ("- name: 360p\n  height: 360\n  video_kbps: 0\n",
         r"\[0\]\.video_kbps: must be at least 1, got 0"),
        ("- name: 360p\n  height: 361\n  video_kbps: 800\n", r"\[0\]\.height: must be even"),
        ("- name: 360p\n  height: 360.0\n  video_kbps: 800\n",
         r"\[0\]\.height: must be an integer, got float"),
        ("- name: 360p\n" + GOOD + "  audio_kbps: 8\n", r"\[0\]\.audio_kbps: must be at least 16"),
        ("- name: 360p\n" + GOOD + "  max_kbps: 500\n", r"\[0\]\.max_kbps: must be at least 800"),
        ("- name: 360P\n" + GOOD, r"\[0\]\.name '360P': must match"),
        ("- name: ../x\n" + GOOD, r"\[0\]\.name '../x': must match"),
        ("- name: audio1\n" + GOOD, r"\[0\]\.name 'audio1': names starting with 'audio' are reserved"),
        ("- name: a\n" + GOOD + "- name: b\n  height: 480\n  video_kbps: 800\n- name: a\n" + GOOD,
         r"\[2\]\.name: 'a' already used by \[0\]"),
        ("- name: a\n" + GOOD + "- name: b\n" + GOOD, r"\[1\]: height 360 at 800 kbit/s duplicates \[0\]"),
    ],
)  # fmt: skip
def test_load_ladder_errors_name_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "ladder.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_ladder(f)
    assert str(info.value).startswith(f"{f}: ")


def test_load_ladder_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.yaml: cannot read"):
        load_ladder(tmp_path / "nope.yaml")
