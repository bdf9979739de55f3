#!/usr/bin/env python3
"""Ingest speed as a multiple of real time: a 1080p30 clip through the default ladder.

Run by hand (it is not a test and nothing imports it)::

    .venv/bin/python loadtests/bench_ingest.py              # 60 s clip, preset veryfast
    .venv/bin/python loadtests/bench_ingest.py --quick      # 10 s clip
    .venv/bin/python loadtests/bench_ingest.py --preset ultrafast --duration 30

1. The source: a 1920x1080 30 fps ``testsrc2`` pattern with a 440 Hz sine, made with the
   bundled ffmpeg (imageio-ffmpeg) and encoded once with libx264 ``-preset ultrafast -crf 18``
   + AAC, so the ingest decodes a realistic H.264 file rather than raw frames. It is cached in
   the system temp directory (``$TMPDIR/opencdn-bench-ingest/``) and reused by later runs.
2. After waiting for a quiet machine, ``origin.ingest.ingest_title(src, "bench", work_dir,
   ladder=DEFAULT_LADDER, preset=...)`` runs in this process exactly as the origin's worker
   runs it: every rung and the audio encoded by ffmpeg children, ``parallel`` = the number of
   CPUs at a time, then packaged (playlists, MPD, single.mp4, poster, sprite, manifest).
   A sampler thread reads the children's peak RSS (VmHWM) from /proc every 0.2 s.
3. It prints the wall time, speed = clip seconds / wall seconds (target >= 1.0x: a title is
   ready in less than its own running time), the CPU used by the ffmpeg children, and per
   rendition its size, average and peak bit rate against the ladder's target, ffmpeg's own
   speed and peak RSS.

Exit status: 0 target met, 1 error (ingest failed, a warning was logged), 2 target missed.
``--json FILE`` writes the speed and wall time as rows (loadtests/results.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_edge import MiB, proc_tree, wait_quiet  # noqa: E402
from results import measured, write_rows  # noqa: E402

TITLE = "bench"
TARGET = 1.0
CACHE_DIR = Path(tempfile.gettempdir()) / "opencdn-bench-ingest"


# -- the source -----------------------------------------------------------------------------


def make_source(ffmpeg: str, seconds: float) -> tuple[Path, bool]:
    """The cached test clip (made if missing); returns (path, made now)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"testsrc2_1080p30_{seconds:g}s_x264-ultrafast-crf18_aac.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path, False
    part = path.with_name(f".{path.name}.{os.getpid()}.part.mp4")
    argv = [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", f"{seconds:g}",
        "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-ac", "2",
        "-movflags", "+faststart",
        str(part),
    ]  # fmt: skip
    t0 = time.monotonic()
    try:
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    print(f"made the source in {time.monotonic() - t0:.1f}s")
    return path, True


# -- watching the ffmpeg children ------------------------------------------------------------


@dataclass
class Child:
    job: str
    first: float
    last: float
    hwm: int = 0  # bytes


@dataclass
class Sampler:
    """Peak RSS (VmHWM) of every descendant process, and of all of them at once."""

    interval: float = 0.2
    children: dict[int, Child] = field(default_factory=dict)
    peak_total: int = 0  # largest sum of VmRSS seen at one sample
    most_at_once: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            now = time.monotonic()
            total = 0
            n = 0
            for pid in proc_tree(me)[1:]:
                with contextlib.suppress(OSError, ValueError):
                    hwm = rss = 0
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                hwm = int(line.split()[1]) * 1024
                            elif line.startswith("VmRSS:"):
                                rss = int(line.split()[1]) * 1024
                    c = self.children.get(pid)
                    if c is None:
                        c = self.children[pid] = Child(_job_of(pid), now, now)
                    c.last = now
                    c.hwm = max(c.hwm, hwm)
                    total += rss
                    n += 1
            self.peak_total = max(self.peak_total, total)
            self.most_at_once = max(self.most_at_once, n)
            self._stop.wait(self.interval)

    def by_job(self) -> dict[str, Child]:
        out: dict[str, Child] = {}
        for c in self.children.values():
            o = out.get(c.job)
            if o is None:
                out[c.job] = Child(c.job, c.first, c.last, c.hwm)
            else:  # a retried job, or several probes
                o.first, o.last, o.hwm = (
                    min(o.first, c.first),
                    max(o.last, c.last),
                    max(o.hwm, c.hwm),
                )
        return out


def _job_of(pid: int) -> str:
    """Which ingest job a child is: its working directory is the rendition's directory; the
    poster and the sprite run in the title's directory, the probe elsewhere."""
    try:
        cwd = os.path.basename(os.readlink(f"/proc/{pid}/cwd"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    if cwd == TITLE:
        if any(a.endswith(b"sprite.jpg") for a in argv):
            return "sprite"
        if any(a.endswith(b"poster.jpg") for a in argv):
            return "poster"
    if any(a == b"-f" for a in argv) and b"hls" in argv:
        return cwd
    return "probe"


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=60.0, help="seconds of the test clip (default 60)"
    )
    ap.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    ap.add_argument("--quick", action="store_true", help="a 10 s clip")
    ap.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="ffmpeg processes at once (default: ingest_title's default, the number of CPUs)",
    )
    ap.add_argument("--segment-seconds", type=float, default=4.0)
    ap.add_argument("--quiet-limit", type=float, default=0.3, metavar="CORES")
    ap.add_argument("--quiet-wait", type=float, default=120.0, metavar="SECONDS")
    ap.add_argument("--keep", action="store_true", help="keep the output directory")
    ap.add_argument("--tmpdir", type=Path, default=None, help="where to create the output dir")
    ap.add_argument("--progress", type=float, default=10.0, metavar="SECONDS",
                    help="print progress this often (0: never; default 10)")  # fmt: skip
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 10.0
    if not 1 <= args.duration <= 3600:
        ap.error("--duration must be 1 to 3600 seconds")
    return args


class WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


async def run_ingest(
    src: Path, out: Path, args: argparse.Namespace, progress: dict[str, tuple[float, float]]
) -> Any:
    from origin.ingest import ingest_title
    from origin.ladder import DEFAULT_LADDER

    def on_progress(name: str, fraction: float, speed: float) -> None:
        progress[name] = (fraction, speed)

    async def report() -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(args.progress)
            jobs = "  ".join(
                f"{k} {f * 100:3.0f}% {s:.2f}x" for k, (f, s) in progress.items() if f < 1.0
            )
            print(f"  {time.monotonic() - t0:5.0f}s  {jobs or '(packaging)'}", flush=True)

    reporter = asyncio.create_task(report()) if args.progress > 0 else None
    try:
        return await ingest_title(
            src,
            TITLE,
            out,
            ladder=DEFAULT_LADDER,
            preset=args.preset,
            segment_seconds=args.segment_seconds,
            parallel=args.parallel,
            on_progress=on_progress,
        )
    finally:
        if reporter is not None:
            reporter.cancel()


def fmt_mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    warnings = WarningCounter()
    logging.getLogger().addHandler(warnings)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    try:
        from origin import ffmpeg as origin_ffmpeg
        from origin.ladder import DEFAULT_LADDER
    except ImportError as exc:
        print(f"error: cannot import the origin's ingest: {exc}", file=sys.stderr)
        return 1
    exe = origin_ffmpeg.ffmpeg_exe()
    src, made = make_source(exe, args.duration)
    probe = asyncio.run(origin_ffmpeg.probe(src))
    size = src.stat().st_size
    print(
        f"source: {src}{' (made now)' if made else ' (cached)'}: {probe.width}x{probe.height} "
        f"{probe.fps:g} fps, {probe.duration:.2f} s, {fmt_mb(size)}, "
        f"{8 * size / probe.duration / 1e6:.1f} Mbit/s"
    )
    parallel = args.parallel if args.parallel is not None else (os.cpu_count() or 1)
    print(
        f"ingest: preset {args.preset}, {parallel} ffmpeg at a time, {os.cpu_count()} CPUs, "
        f"ladder {', '.join(f'{r.name} {r.video_kbps}k' for r in DEFAULT_LADDER)}"
    )

    work = Path(tempfile.mkdtemp(prefix="bench_ingest.", dir=args.tmpdir))
    sampler = Sampler()
    progress: dict[str, tuple[float, float]] = {}
    try:
        busy = wait_quiet(args.quiet_limit, args.quiet_wait)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampler.start()
        t0 = time.monotonic()
        try:
            result = asyncio.run(run_ingest(src, work, args, progress))
        finally:
            wall = time.monotonic() - t0
            sampler.stop()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        return 130
    except Exception as exc:
        print(f"\nerror: ingest failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        return 1

    try:
        return report(args, result, wall, ru0, ru1, made, busy, sampler, progress, warnings)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    result: Any,
    wall: float,
    ru0: resource.struct_rusage,
    ru1: resource.struct_rusage,
    made: bool,
    busy: float,
    sampler: Sampler,
    progress: dict[str, tuple[float, float]],
    warnings: WarningCounter,
) -> int:
    from origin.ladder import DEFAULT_LADDER

    clip = args.duration
    speed = clip / wall
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    sizes = {f["path"]: f["size"] for f in result.files}
    total = sum(sizes.values())
    singles = sum(v for k, v in sizes.items() if k.endswith("/single.mp4"))
    jobs = sampler.by_job()
    print()
    print(
        f"wall {wall:.1f} s for a {clip:g} s clip: speed {speed:.2f}x real time "
        f"(target >= {TARGET:.1f}x)  {'ok' if speed >= TARGET else 'MISSED'}"
    )
    print(
        f"ffmpeg children: {cpu:.0f} CPU s ({cpu / wall:.2f} cores on average), "
        f"peak RSS of one child {max((c.hwm for c in jobs.values()), default=0) / MiB:.0f} MiB, "
        f"of all at once {sampler.peak_total / MiB:.0f} MiB ({sampler.most_at_once} processes)"
    )
    # ru_maxrss covers every child ever waited for, so the source encode too when made now.
    maxrss = ru1.ru_maxrss * 1024
    note = " (includes the source encode made in this run)" if made else ""
    print(f"getrusage(RUSAGE_CHILDREN).ru_maxrss: {maxrss / MiB:.0f} MiB{note}")
    print(
        f"output: {len(result.files)} files, {fmt_mb(total)} "
        f"(of which {fmt_mb(singles)} single.mp4 copies of the segments), "
        f"title duration {result.duration:.3f} s"
    )
    print()
    targets = {r.name: r.video_kbps for r in DEFAULT_LADDER}
    cols = [
        "rendition", "size", "segments", "MB", "target kbit/s", "avg kbit/s", "peak kbit/s",
        "ffmpeg speed", "encode s", "peak RSS MiB",
    ]  # fmt: skip
    rows = []
    dur = result.duration or clip
    for r in result.renditions:
        name = r["name"]
        b = sizes.get(f"{name}/single.mp4", 0)
        j = jobs.get(name)
        rows.append(
            [
                name, f"{r['width']}x{r['height']}", str(r["segments"]), f"{b / 1e6:.1f}",
                str(targets.get(name, "?")), f"{8 * b / dur / 1000:,.0f}",
                f"{r['video_bandwidth'] / 1000:,.0f}", f"{progress.get(name, (0, 0))[1]:.2f}x",
                f"{j.last - j.first:.0f}" if j else "?", f"{j.hwm / MiB:.0f}" if j else "?",
            ]
        )  # fmt: skip
    for a in result.audio:
        name = a["name"]
        b = sizes.get(f"{name}/single.mp4", 0)
        j = jobs.get(name)
        rows.append(
            [
                name, f"{a['channels']}ch {a['sample_rate']}", str(a["segments"]),
                f"{b / 1e6:.1f}", name.removeprefix("audio_").removesuffix("k"),
                f"{8 * b / dur / 1000:,.0f}", f"{a['bandwidth'] / 1000:,.0f}",
                f"{progress.get(name, (0, 0))[1]:.2f}x",
                f"{j.last - j.first:.0f}" if j else "?", f"{j.hwm / MiB:.0f}" if j else "?",
            ]
        )  # fmt: skip
    for name, path in (("sprite", "sprite.jpg"), ("poster", "poster.jpg")):
        j = jobs.get(name)
        rows.append(
            [
                name, "", "", f"{sizes.get(path, 0) / 1e6:.2f}", "", "", "",
                f"{progress[name][1]:.2f}x" if name == "sprite" and name in progress else "",
                f"{j.last - j.first:.0f}" if j else "?", f"{j.hwm / MiB:.0f}" if j else "?",
            ]
        )  # fmt: skip
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    line = fmt(cols)
    print(line)
    print("-" * len(line))
    for r in rows:
        print(fmt(r))
    print()
    print(
        "avg = bytes of single.mp4 (init + segments) x 8 / duration; peak = the HLS BANDWIDTH "
        "of the video alone (RFC 8216 peak segment rate); ffmpeg speed = its own last report; "
        "encode s = how long the process was seen; peak RSS = its VmHWM sampled every 0.2 s"
    )
    if busy >= args.quiet_limit:
        print(f"WARNING: the machine was busy before the run ({busy:.2f} cores elsewhere)")
    if args.json:
        clip_name = f"{clip:g} s 1080p30 clip, preset {args.preset}"
        write_rows(
            args.json,
            [
                measured("ingest", f"speed, {clip_name}", speed, "x real time",
                         target=f">= {TARGET:.1f}x", met=speed >= TARGET),
                measured("ingest", "wall time", wall, "s"),
                measured("ingest", "ffmpeg CPU", cpu / wall, "cores"),
            ],
        )  # fmt: skip

    print()
    if warnings.records:
        print("PROBLEMS:")
        for w in warnings.records:
            print(f"  logged: {w}")
        return 1
    if speed < TARGET:
        print("result: no errors, but the speed target was missed")
        return 2
    print("result: no errors, target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
