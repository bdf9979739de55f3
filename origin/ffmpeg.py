"""Running ffmpeg: probing a source and running an encode with progress, as asyncio subprocesses.

The only module of the origin that starts processes. The ffmpeg binary comes from the
imageio-ffmpeg wheel (``OPENCDN_FFMPEG`` overrides it); that wheel has no ffprobe, so ``probe``
reads what ``ffmpeg -i SRC`` prints about its input. That text is meant for people, not programs,
so the parser takes only the few facts it needs, each from a pattern that has been stable across
ffmpeg releases for a decade, and falls back to decoding the stream when the container does not
state its duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

__all__ = [
    "FFmpegError",
    "Probe",
    "SourceError",
    "ffmpeg_exe",
    "input_url",
    "parse_probe",
    "probe",
    "run",
]

STDERR_TAIL_LINES: Final = 30
PR_SET_PDEATHSIG: Final = 1
# Looked up in the parent: the child between fork and exec must not import or load anything.
_LIBC: Final = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
# Containers ffmpeg opens for single pictures: a poster is not a title.
IMAGE_FORMATS: Final = re.compile(r"^(image2|\w+_pipe|apng|gif|webp)$")


class SourceError(ValueError):
    """The source cannot be ingested: missing, empty, not a media file, or without video."""


class FFmpegError(RuntimeError):
    """ffmpeg exited with an error; the message ends with the tail of what it printed."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message + (f":\n{stderr}" if stderr else ""))
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Probe:
    """What an ingest needs to know about a source.

    ``width`` x ``height`` is the *display* size in square pixels: the coded size stretched by
    the sample aspect ratio (anamorphic DVD and broadcast sources) and turned by the rotation a
    phone records, which is what the viewer sees and what the ladder is chosen for.
    """

    duration: float
    width: int
    height: int
    fps: float
    has_audio: bool
    video_codec: str
    coded_width: int = 0
    coded_height: int = 0
    sar: tuple[int, int] = (1, 1)
    rotation: int = 0
    interlaced: bool = False
    video_index: int = 0  # ffmpeg's stream index: map it as "0:<index>"
    audio_index: int | None = None
    # False for a source whose container states no duration (a raw elementary stream): it has
    # no index either, so seeking in it (``-ss`` before ``-i``) finds nothing.
    seekable: bool = True


@functools.cache
def ffmpeg_exe() -> str:
    exe = os.environ.get("OPENCDN_FFMPEG")
    if exe:
        return exe
    import imageio_ffmpeg  # type: ignore[import-untyped,unused-ignore]

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def input_url(path: Path) -> str:
    """A path as an ffmpeg input: absolute and with ``file:``, so that a name containing ``:``
    is never taken for a protocol (``concat:``, ``http:``) and a run in another directory finds it."""
    return "file:" + str(path.resolve())


# -- probing --------------------------------------------------------------------------------

_INPUT_RE: Final = re.compile(r"^Input #0, ([^ ]+), from ", re.M)
_DURATION_RE: Final = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.M)
_STREAM_RE: Final = re.compile(r"^\s*Stream #0:(\d+)\S*: (Video|Audio): (.*)$", re.M)
# "640x360" in a stream line, not the "0x31637661" of a codec tag: bounded by ", " or " [".
_SIZE_RE: Final = re.compile(r"(?:^|[ ,])(\d{1,5})x(\d{1,5})(?=$|[ ,\[])")
_SAR_RE: Final = re.compile(r"\[SAR (\d+):(\d+) DAR \d+:\d+\]")
_RATE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)\b")
_ROTATION_RE: Final = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def parse_probe(text: str, src: str = "source") -> Probe:
    """A ``Probe`` from the stderr of ``ffmpeg -hide_banner -i SRC`` (pure, for tests).

    Raises ``SourceError`` for anything that is not a video; a duration of 0 means "not stated"
    (the caller measures it by decoding).
    """
    fmt = _INPUT_RE.search(text)
    if fmt is None:
        reason = _last_error_line(text) or "ffmpeg did not recognise it"
        raise SourceError(f"{src}: not a media file ({reason})")
    if IMAGE_FORMATS.match(fmt.group(1)):
        raise SourceError(f"{src}: a still image ({fmt.group(1)}), not a video")
    streams = [
        (int(m.group(1)), m.group(2), m.group(3), m.end()) for m in _STREAM_RE.finditer(text)
    ]
    audios = [index for index, kind, _, _ in streams if kind == "Audio"]
    # Cover art in a music file is a one-picture "video" stream marked (attached pic).
    videos = [
        (index, desc, end)
        for index, kind, desc, end in streams
        if kind == "Video" and "(attached pic)" not in desc
    ]
    if not videos:
        what = "audio only" if audios else "no streams ffmpeg can read"
        raise SourceError(f"{src}: no video stream ({what})")
    video_index, desc, end = videos[0]
    codec = desc.split(None, 1)[0].rstrip(",")
    size = _SIZE_RE.search(desc)
    if size is None or int(size.group(1)) == 0 or int(size.group(2)) == 0:
        raise SourceError(f"{src}: the video stream has no picture size ({codec})")
    coded_w, coded_h = int(size.group(1)), int(size.group(2))
    sar = (1, 1)
    if m := _SAR_RE.search(desc):
        num, den = int(m.group(1)), int(m.group(2))
        if num > 0 and den > 0:
            sar = (num, den)
    fps = 0.0
    for m in _RATE_RE.finditer(desc):  # "fps" comes before "tbr"; take the first stated
        fps = float(m.group(1)) * (1000 if m.group(2) else 1)
        if fps > 0:
            break
    if not 0 < fps <= 1000:
        raise SourceError(f"{src}: the video stream has no usable frame rate")
    # The rotation of a phone recording is printed in the stream's side data, after its line.
    rotation = 0
    following = text[end : end + 600].split("Stream #", 1)[0]
    if m := _ROTATION_RE.search(following):
        rotation = round(float(m.group(1))) % 360
    width = round(coded_w * sar[0] / sar[1])
    height = coded_h
    if rotation in (90, 270):
        width, height = height, width
    duration = 0.0
    if m := _DURATION_RE.search(text):
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return Probe(
        duration=duration,
        width=width,
        height=height,
        fps=fps,
        has_audio=bool(audios),
        video_codec=codec,
        coded_width=coded_w,
        coded_height=coded_h,
        sar=sar,
        rotation=rotation,
        # The field order ffmpeg prints in the pixel format's parentheses ("top first").
        interlaced=bool(re.search(r"\b(top|bottom) (first|coded first)", desc)),
        video_index=video_index,
        audio_index=audios[0] if audios else None,
    )


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("At least one output file")]
    if not lines:
        return ""
    # "[in#0 @ 0x55..] Error opening input: ..." -> "Error opening input: ..."
    return re.sub(r"^\[[^\]]*\]\s*", "", lines[-1])


async def probe(src: Path) -> Probe:
    """Probe a source; ``SourceError`` if it is missing, empty, not a media file or has no video."""
    try:
        size = src.stat().st_size
    except OSError as e:
        raise SourceError(f"{src}: cannot read: {e.strerror or e}") from e
    if not src.is_file():
        raise SourceError(f"{src}: not a regular file")
    if size == 0:
        raise SourceError(f"{src}: the file is empty")
    if not os.access(src, os.R_OK):
        raise SourceError(f"{src}: not readable (permission denied)")
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-i",
        input_url(src),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        await _kill(proc)
        raise
    # ffmpeg exits 1 here ("At least one output file must be specified"): that is expected.
    result = parse_probe(err.decode("utf-8", "replace"), str(src))
    if result.duration <= 0:
        result = await _measured(src, result)
    if result.duration < 1 / result.fps:
        raise SourceError(f"{src}: the video is shorter than one frame")
    return result


async def _measured(src: Path, p: Probe) -> Probe:
    """Measure the duration by remuxing the video to nowhere (containers that do not say it).

    A raw elementary stream has no timestamps to copy (out_time stays N/A), so the frame count
    at the stated rate is the measure then.
    """
    last: dict[str, str] = {}

    def keep(block: dict[str, str]) -> None:
        last.update(block)

    try:
        await _run(
            ["-i", input_url(src), "-map", f"0:{p.video_index}", "-c", "copy", "-f", "null", "-"],
            duration=0.0,
            on_progress=None,
            on_block=keep,
        )
    except FFmpegError as e:
        raise SourceError(f"{src}: cannot read the video stream: {e}") from e
    frames = int(last["frame"]) if last.get("frame", "").isdigit() else 0
    # out_time is where the last frame starts; one more frame gives the duration.
    out_time = _out_time(last)
    duration = max(out_time + 1 / p.fps if out_time > 0 else 0.0, frames / p.fps)
    return replace(p, duration=duration, seekable=False)


# -- running --------------------------------------------------------------------------------


async def run(
    args: list[str],
    *,
    duration: float,
    on_progress: Callable[[float, float], None] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run ``ffmpeg ARGS``, reporting ``on_progress(fraction, speed)`` as it goes.

    ``fraction`` is the output time reached over ``duration`` (0..1) and ``speed`` the multiple of
    real time ffmpeg reports. Cancelling the calling task kills ffmpeg. A non-zero exit raises
    ``FFmpegError`` carrying the last lines ffmpeg printed.
    """
    await _run(args, duration=duration, on_progress=on_progress, cwd=cwd)


def _die_with_parent(parent: int) -> None:
    """In the child before exec (Linux): SIGKILL when the process that started it dies, so an
    encode never outlives a killed ingest or origin; if that process is gone already (it died
    between the fork and here), exit at once."""
    if _LIBC is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:
        os._exit(1)


async def _run(
    args: list[str],
    *,
    duration: float,
    on_progress: Callable[[float, float], None] | None,
    on_block: Callable[[dict[str, str]], None] | None = None,
    cwd: Path | None = None,
) -> None:
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-progress",
        "pipe:1",
        "-nostats",
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        # Own process group: a Ctrl-C at the terminal is for us to handle (the job is
        # left for another worker), not for ffmpeg to die of mid-encode.
        start_new_session=True,
        # ...which also takes it out of reach of whoever stops us by process group (the
        # fleet): it dies with us instead, even when we are SIGKILLed.
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        limit=1 << 20,  # a line longer than this (odd metadata) would otherwise stop the reader
    )
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    async def read_progress(stream: asyncio.StreamReader) -> None:
        # -progress writes blocks of key=value lines, each ending with progress=continue|end.
        block: dict[str, str] = {}
        async for raw in stream:
            key, _, value = raw.decode("utf-8", "replace").strip().partition("=")
            block[key] = value
            if key != "progress":
                continue
            out_time = _out_time(block)
            speed = _speed(block.get("speed", ""))
            done = value == "end"
            fraction = 1.0 if done else (min(1.0, out_time / duration) if duration > 0 else 0.0)
            if on_progress is not None:
                on_progress(fraction, speed)
            if on_block is not None:
                on_block(block)
            block = {}

    async def read_errors(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)

    try:
        await asyncio.gather(read_progress(proc.stdout), read_errors(proc.stderr))
        returncode = await proc.wait()
    except BaseException:
        # Cancelled (or a progress callback raised): never leave an encoder running.
        await _kill(proc)
        raise
    if returncode != 0:
        raise FFmpegError(f"ffmpeg exited with status {returncode}", returncode, "\n".join(tail))


def _out_time(block: dict[str, str]) -> float:
    # out_time_us is microseconds (out_time_ms too, despite its name); "N/A" before the first
    # frame. Negative values appear briefly when inputs start before zero.
    for key in ("out_time_us", "out_time_ms"):
        value = block.get(key, "")
        if value.lstrip("-").isdigit():
            return max(0.0, int(value) / 1_000_000)
    return 0.0


def _speed(text: str) -> float:
    with contextlib.suppress(ValueError):
        return max(0.0, float(text.strip().rstrip("x")))
    return 0.0


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        # Shielded so a second cancellation cannot leave a zombie behind.
        await asyncio.shield(proc.wait())
