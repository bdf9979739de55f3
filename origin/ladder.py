"""The adaptive-bitrate ladder: which renditions a source gets, at what size and bitrate.

A rung is named by its nominal height (``720p``) and describes a 16:9 *box*: 720p is at most
1280x720. A source is scaled to fit inside each box with its display aspect kept, so the rung's
name keeps its usual meaning for other shapes:

* a 4:3 source gets 960x720 at 720p, while a 2.39:1 ("scope") source gets 1280x536: the box is
  fixed, not the height, which is how scope titles come to be labelled 1080p at 1920x804;
* a portrait source gets a portrait box (720p is 720x1280), as phones label portrait video;
* a rung is offered only if the source fills its box in at least one dimension, so nothing is
  upscaled; a source smaller than the lowest box still gets the lowest rung, at the source's own
  size (with its bitrate scaled down by area, since a 160x90 stream needs no 400 kbit/s).

Sizes are for square pixels (the encoder applies ``setsar=1``), with sources of any sample aspect
ratio first converted to their display size by the prober, and always even, as 4:2:0 chroma
subsampling requires.

This module is pure (no I/O apart from ``load_ladder`` reading its file) and typed strictly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

__all__ = ["DEFAULT_LADDER", "Rung", "load_ladder", "select"]

# A rung name becomes a directory name under /v/<title>/ and a DASH Representation id, so it is
# kept to characters that need no escaping anywhere. Names starting with "audio" are reserved
# for the audio renditions that sit next to the video ones.
NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
RESERVED_PREFIX: Final = "audio"
BOX_ASPECT: Final = 16 / 9


@dataclass(frozen=True)
class Rung:
    """One step of the ladder.

    ``width`` is 0 in a ladder definition and filled in by ``select`` for a given source.
    ``max_kbps`` and ``buffer_kbits`` are the encoder's VBV cap and buffer (capped VBR); when
    left out they default to 1.5x the target and 2x the cap, which keeps the peak segment bit rate
    (what players budget for, the HLS ``BANDWIDTH``) within 2x the average.
    """

    name: str
    height: int
    video_kbps: int
    audio_kbps: int = 128
    width: int = 0
    max_kbps: int | None = None
    buffer_kbits: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"name {self.name!r}: must match {NAME_RE.pattern} (lower-case letters, digits,"
                " '_' and '-', at most 32 characters)"
            )
        if self.name.startswith(RESERVED_PREFIX):
            raise ValueError(f"name {self.name!r}: names starting with 'audio' are reserved")
        _positive_int("height", self.height, minimum=2)
        if self.height % 2:
            raise ValueError(f"height: must be even (4:2:0 video), got {self.height}")
        _positive_int("video_kbps", self.video_kbps)
        _positive_int("audio_kbps", self.audio_kbps, minimum=16)
        _positive_int("width", self.width, minimum=0)
        if self.max_kbps is not None:
            _positive_int("max_kbps", self.max_kbps, minimum=self.video_kbps)
        if self.buffer_kbits is not None:
            _positive_int("buffer_kbits", self.buffer_kbits)

    @property
    def maxrate_kbps(self) -> int:
        return self.max_kbps if self.max_kbps is not None else self.video_kbps * 3 // 2

    @property
    def bufsize_kbits(self) -> int:
        return self.buffer_kbits if self.buffer_kbits is not None else 2 * self.maxrate_kbps


def _positive_int(key: str, value: object, *, minimum: int = 1) -> None:
    # bool is an int in Python; "yes" in YAML 1.1 must not become a bitrate of 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{key}: must be at least {minimum}, got {value}")


DEFAULT_LADDER: Final[tuple[Rung, ...]] = (
    Rung("240p", 240, 400, 96),
    Rung("360p", 360, 800, 96),
    Rung("480p", 480, 1400, 128),
    Rung("720p", 720, 2800, 128),
    Rung("1080p", 1080, 5000, 128),
)


def _even(x: float, limit: int) -> int:
    """``x`` rounded to an even number, at least 2 and at most ``limit`` rounded down to even."""
    return max(2, min(int(x / 2 + 0.5) * 2, limit - limit % 2))


def select(ladder: Iterable[Rung], source_width: int, source_height: int) -> list[Rung]:
    """The rungs a source of this display size gets, lowest first, with their output sizes.

    Never empty: a source smaller than every box gets the lowest rung at the source's size.
    """
    if source_width < 2 or source_height < 2:
        raise ValueError(f"source size {source_width}x{source_height}: must be at least 2x2")
    rungs = sorted(ladder, key=lambda r: (r.height, r.video_kbps))
    if not rungs:
        raise ValueError("the ladder is empty")
    portrait = source_height > source_width
    chosen: list[Rung] = []
    seen: set[tuple[int, int, int]] = set()
    for i, rung in enumerate(rungs):
        short, long = rung.height, rung.height * BOX_ASPECT
        box_w, box_h = (short, long) if portrait else (long, short)
        scale = min(box_w / source_width, box_h / source_height)
        if scale > 1 and i > 0:
            break  # sorted: every later box is larger still
        kbps, max_kbps = rung.video_kbps, rung.max_kbps
        if scale > 1:  # the lowest rung, for a source smaller than its box: keep the source size
            area = (source_width * source_height) / (box_w * box_h)
            kbps = max(1, round(kbps * area))
            max_kbps = None if max_kbps is None else max(kbps, round(max_kbps * area))
            scale = 1.0
        width = _even(source_width * scale, source_width)
        height = _even(source_height * scale, source_height)
        if (width, height, kbps) in seen:
            continue
        seen.add((width, height, kbps))
        chosen.append(replace(rung, width=width, height=height, video_kbps=kbps, max_kbps=max_kbps))
    return chosen


# -- loading a ladder from YAML ------------------------------------------------------------


def load_ladder(path: Path) -> tuple[Rung, ...]:
    """Read a ladder: a YAML list of rungs (see ``conf/ladder.example.yaml``).

    Every error is a ``ValueError`` that starts with the file and the entry at fault
    (``conf/ladder.yaml: [2].video_kbps: ...``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    return parse_ladder(data, str(path))


def parse_ladder(data: Any, where: str = "ladder") -> tuple[Rung, ...]:
    """A ladder from already-parsed YAML (a list of mappings), validated completely."""
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: must be a non-empty list of rungs, got {type(data).__name__}")
    known = [f.name for f in fields(Rung) if f.name != "width"]
    required = ("name", "height", "video_kbps")
    rungs: list[Rung] = []
    for i, entry in enumerate(data):
        at = f"{where}: [{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{at}: must be a mapping, got {type(entry).__name__}")
        for key in entry:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                also = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"{at}.{key}: unknown key{also}; known: {', '.join(known)}")
        for key in required:
            if key not in entry:
                raise ValueError(f"{at}.{key}: missing")
        try:
            rungs.append(Rung(**{k: v for k, v in entry.items() if v is not None}))
        except ValueError as e:
            raise ValueError(f"{at}.{e}") from None
    _check_unique(rungs, where)
    return tuple(sorted(rungs, key=lambda r: (r.height, r.video_kbps)))


def _check_unique(rungs: Sequence[Rung], where: str) -> None:
    # Two rungs may share a height (a "high" 1080p at a higher bitrate), but not a name, nor
    # both height and bitrate: that would be one rendition encoded twice.
    names: dict[str, int] = {}
    shapes: dict[tuple[int, int], int] = {}
    for i, r in enumerate(rungs):
        if r.name in names:
            raise ValueError(f"{where}: [{i}].name: {r.name!r} already used by [{names[r.name]}]")
        shape = (r.height, r.video_kbps)
        if shape in shapes:
            raise ValueError(
                f"{where}: [{i}]: height {r.height} at {r.video_kbps} kbit/s"
                f" duplicates [{shapes[shape]}]"
            )
        names[r.name] = i
        shapes[shape] = i
