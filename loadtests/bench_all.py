#!/usr/bin/env python3
"""Every benchmark of the project, one after another, and one table of all their figures.

Run by hand (it is not a test)::

    .venv/bin/python loadtests/bench_all.py                       # everything, ~30 minutes
    .venv/bin/python loadtests/bench_all.py --quick               # each one's quick mode
    .venv/bin/python loadtests/bench_all.py --only ring,index,search,recommend --quick
    .venv/bin/python loadtests/bench_all.py --skip control --json all.json --markdown

It runs each ``loadtests/bench_*.py`` as a child process, never two at once (they would
measure each other), with ``--json`` to a file in the log directory and its output (stdout and
stderr) to ``NAME.log`` there (``--stream`` also echoes it here). What a benchmark needs is
checked first: nginx and wrk on PATH, free disk space in the temp directory, ffmpeg, a
PostgreSQL server at ``--pg-url`` (without one, bench_control.py runs on SQLite only); a
benchmark that cannot run gets a row "skipped: <reason>", one that fails (exit status 1, a
timeout) a row "error, exit N, see LOG". At the end it prints one table of every figure
(loadtests/results.py) with the machine's CPU model and core count, and the log directory.

Exit status: 0 every benchmark run met its targets (skipped ones do not count), 2 a target was
missed, 1 a benchmark failed, 130 interrupted (the table of what ran is still printed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from results import (  # noqa: E402
    Row,
    cpu_model,
    exit_status,
    loads_rows,
    outcome_rows,
    render_markdown,
    render_text,
    row_to_dict,
    skipped,
)

GIB = 1 << 30
APT = {"nginx": "nginx-light"}  # the Debian package of a tool, when not named like it
PG_URL = os.environ.get("OPENCDN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    what: str
    tools: tuple[str, ...] = ()  # executables it needs on PATH
    disk_gib: tuple[float, float] = (0.0, 0.0)  # free space it needs in the temp dir (full, quick)
    args: tuple[str, ...] = ()  # always passed
    ffmpeg: bool = False
    postgres: bool = False  # runs on SQLite alone without PostgreSQL


BENCHES = (
    # --nginx-nopush off: the fair nginx baseline for unaligned ranges (README, "Known effects").
    Bench("edge", "bench_edge.py", "edge hit path vs nginx", ("nginx", "wrk"), (9.0, 2.6),
          ("--nginx-nopush", "off")),
    Bench("origin", "bench_origin.py", "origin 2 MiB ranges vs nginx", ("nginx", "wrk"),
          (2.3, 0.7)),
    Bench("steering", "bench_steering.py", "steering decisions/s", ("wrk",)),
    Bench("control", "bench_control.py", "control plane req/s, SQLite and PostgreSQL", ("wrk",),
          (1.0, 0.5), postgres=True),
    Bench("fill", "bench_fill.py", "nightly fill vs LRU and Belady, simulated"),
    Bench("ingest", "bench_ingest.py", "ingest speed (x real time)", disk_gib=(1.0, 0.5),
          ffmpeg=True),
    Bench("index", "bench_index.py", "edge LRU index memory"),
    Bench("ring", "bench_ring.py", "steering ring vs ATC's"),
    Bench("search", "bench_search.py", "control-plane search latency"),
    Bench("recommend", "bench_recommend.py", "home rows hit rate vs popularity"),
)  # fmt: skip
NAMES = tuple(b.name for b in BENCHES)


def select(only: str, skip: str) -> list[Bench]:
    """The benchmarks to run, in their fixed order; ValueError names an unknown one."""

    def names(spec: str) -> list[str]:
        out = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in out if n not in NAMES]
        if unknown:
            raise ValueError(
                f"unknown benchmark {', '.join(unknown)}; choose from {','.join(NAMES)}"
            )
        return out

    wanted, dropped = set(names(only) or NAMES), set(names(skip))
    out = [b for b in BENCHES if b.name in wanted and b.name not in dropped]
    if not out:
        raise ValueError("--only and --skip leave no benchmark to run")
    return out


# -- what a benchmark needs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What the preflight checks look at, gathered once before the first benchmark."""

    which: Callable[[str], str | None]
    free_gib: float
    ffmpeg: str | None  # None when found, else why not
    postgres: str | None  # None when reachable, else why not


def preflight(b: Bench, quick: bool, m: Machine) -> str | None:
    """Why ``b`` cannot run here, or None."""
    missing = [t for t in b.tools if m.which(t) is None]
    if missing:
        packages = " ".join(APT.get(t, t) for t in missing)
        return f"{' and '.join(missing)} not on PATH (apt-get install {packages})"
    need = b.disk_gib[1 if quick else 0]
    if need and m.free_gib < need:
        return f"needs {need:g} GiB free in {tempfile.gettempdir()}, {m.free_gib:.1f} GiB free"
    if b.ffmpeg and m.ffmpeg is not None:
        return m.ffmpeg
    return None


def find_ffmpeg() -> str | None:
    sys.path.insert(0, str(REPO))
    try:
        from origin.ffmpeg import ffmpeg_exe

        exe = ffmpeg_exe()
    except Exception as exc:  # an import error, or imageio-ffmpeg without its binary
        return f"no ffmpeg ({type(exc).__name__}: {exc})"
    finally:
        sys.path.remove(str(REPO))
    if not os.access(exe, os.X_OK):
        return f"ffmpeg {exe} is not executable"
    return None


def check_postgres(url: str) -> str | None:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:  # ImportError, OperationalError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL unreachable at {url} ({first})"
    return None


def command(b: Bench, args: argparse.Namespace, json_path: Path, pg_down: bool) -> list[str]:
    argv = [sys.executable, str(HERE / b.script), *b.args, "--json", str(json_path)]
    if args.quick:
        argv.append("--quick")
    if b.postgres:
        argv += ["--backend", "sqlite"] if pg_down else ["--pg-url", args.pg_url]
    return argv


# -- running one ---------------------------------------------------------------------------------


def _pump(src: IO[bytes], log: IO[bytes], echo: bool) -> None:
    for chunk in iter(lambda: os.read(src.fileno(), 65536), b""):
        log.write(chunk)
        log.flush()
        if echo:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


def run_child(argv: list[str], log_path: Path, timeout: float, echo: bool) -> int | None:
    """Runs one benchmark to its end; its exit status, or None when it was stopped after
    ``timeout`` seconds (SIGTERM first: every benchmark stops its servers on it). It stays in
    our process group, so Ctrl-C reaches it too and it cleans up; KeyboardInterrupt is raised
    here once it has exited."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(REPO), env=env,
        )  # fmt: skip
        assert p.stdout is not None
        pump = threading.Thread(target=_pump, args=(p.stdout, log, echo), daemon=True)
        pump.start()
        try:
            try:
                p.wait(timeout if timeout > 0 else None)
                rc: int | None = p.returncode
            except subprocess.TimeoutExpired:
                rc = None
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        except KeyboardInterrupt:
            # After Ctrl-C the child got the same SIGINT; after our SIGTERM it did not: tell it
            # then. Either way it stops its servers before it exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(60)
            if p.poll() is None:
                p.kill()
                p.wait()
            raise
        finally:
            pump.join(10)
            p.stdout.close()
    return rc


def read_json(path: Path) -> tuple[list[Row] | None, str]:
    """The rows a benchmark wrote, or None and why not."""
    try:
        return loads_rows(path.read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, "no JSON file"
    except (OSError, ValueError) as exc:
        return None, f"bad JSON file: {exc}"


def fmt_secs(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    whole = round(s)
    return f"{whole // 60} min {whole % 60:02d} s"


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="run each benchmark's --quick mode")
    ap.add_argument("--only", default="", metavar="NAMES", help=f"subset of {','.join(NAMES)}")
    ap.add_argument("--skip", default="", metavar="NAMES", help="benchmarks not to run")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write every row and the machine")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--stream", action="store_true", help="echo each benchmark's output too")
    ap.add_argument("--log-dir", type=Path, help="where the logs go (default: a new temp dir)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a benchmark after this long (default 3600, --quick 900; 0: never)",
    )
    ap.add_argument("--pg-url", default=PG_URL, help=f"PostgreSQL for bench_control ({PG_URL})")
    args = ap.parse_args(argv)
    if args.timeout is None:
        args.timeout = 900.0 if args.quick else 3600.0
    return args


def header_lines(args: argparse.Namespace, started: datetime.datetime, took: float) -> list[str]:
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} cores; Linux {platform.release()}; "
        f"Python {platform.python_version()}",
        f"run: {'--quick' if args.quick else 'full'}, started {started:%Y-%m-%d %H:%M}, "
        f"took {fmt_secs(took)}",
    ]


def run_bench(
    b: Bench,
    tag: str,
    args: argparse.Namespace,
    machine: Machine,
    log_dir: Path,
    rows: list[Row],
    runs: list[dict[str, Any]],
) -> None:
    """Runs one benchmark (or skips it) and adds its rows; KeyboardInterrupt once its row
    (interrupted) is added, if Ctrl-C stopped it."""
    reason = preflight(b, args.quick, machine)
    if reason is not None:
        print(f"{tag}: skipped: {reason}", flush=True)
        rows.append(skipped(b.name, reason))
        runs.append({"bench": b.name, "status": "skipped", "reason": reason})
        return
    pg_down = machine.postgres if b.postgres else None
    json_path = log_dir / f"{b.name}.json"
    json_path.unlink(missing_ok=True)
    log_path = log_dir / f"{b.name}.log"
    argv = command(b, args, json_path, pg_down is not None)
    print(f"{tag}: {b.what}: {' '.join([b.script, *argv[2:]])}", flush=True)
    t0 = time.monotonic()
    interrupted = False
    try:
        rc = run_child(argv, log_path, args.timeout, args.stream)
    except KeyboardInterrupt:
        rc, interrupted = 130, True
    secs = time.monotonic() - t0
    got, why = read_json(json_path)
    rows += outcome_rows(b.name, rc, got, str(log_path), timeout=args.timeout)
    if pg_down is not None:
        rows.append(skipped(b.name, f"postgresql backend: {pg_down}"))
    ran = "timed out" if rc is None else f"exit {rc}"
    extra = f" ({why})" if why and rc in (0, 2) else ""
    print(f"{tag}: {ran} in {fmt_secs(secs)}, {len(got or [])} figures{extra}", flush=True)
    runs.append({"bench": b.name, "status": "run", "exit": rc, "seconds": round(secs, 1),
                 "command": argv, "log": str(log_path)})  # fmt: skip
    if interrupted:
        raise KeyboardInterrupt


def _on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops like Ctrl-C; and Ctrl-C works even when a shell started us in the
    # background with SIGINT ignored (the children inherit the default then, not the ignore).
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        benches = select(args.only, args.skip)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench_all."))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now()
    t_start = time.monotonic()

    machine = Machine(
        which=shutil.which,
        free_gib=shutil.disk_usage(tempfile.gettempdir()).free / GIB,
        ffmpeg=find_ffmpeg() if any(b.ffmpeg for b in benches) else None,
        postgres=check_postgres(args.pg_url) if any(b.postgres for b in benches) else None,
    )
    print(f"{len(benches)} benchmarks, one at a time; logs in {log_dir}", flush=True)
    rows: list[Row] = []
    runs: list[dict[str, Any]] = []
    interrupted = False
    for i, b in enumerate(benches, 1):
        try:
            run_bench(b, f"[{i}/{len(benches)}] {b.name}", args, machine, log_dir, rows, runs)
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: the remaining benchmarks are not run", file=sys.stderr)
            break

    took = time.monotonic() - t_start
    header = header_lines(args, started, took)
    times = ", ".join(
        f"{r['bench']} {fmt_secs(r['seconds'])}" for r in runs if r["status"] == "run"
    )
    if times:
        header.append(f"times: {times}")
    print()
    print((render_markdown if args.markdown else render_text)(rows, header), end="")
    print(f"logs: {log_dir}")
    if args.json:
        doc = {
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "linux": platform.release(),
                        "python": platform.python_version()},
            "quick": args.quick,
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(took, 1),
            "benches": runs,
            "rows": [row_to_dict(r) for r in rows],
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    if interrupted:
        return 130
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
