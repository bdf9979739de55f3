"""Command line of the origin.

    python -m origin serve [--config FILE] [-a HOST:PORT] [--root DIR]
    python -m origin ingest SOURCE --title ID [--ladder FILE] [--replace] [--enqueue-only]
    python -m origin worker            # run queued ingest jobs until stopped
    python -m origin jobs [--all]      # list jobs and their states
    python -m origin synth --titles N --renditions R --duration S [--out DIR]
    python -m origin check-config --config FILE

``ingest`` queues a job in the persistent queue and, unless --enqueue-only, works
on it in this process, printing progress; if this process dies, the job's lease
expires and any ``worker`` (or the next ``ingest``) picks it up again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, OriginConfig, add_config_arguments, config_from_args

if TYPE_CHECKING:
    from .jobs import JobQueue

log = logging.getLogger("origin")


def setup_logging(level: str) -> None:
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


async def serve(config: OriginConfig) -> None:
    from aiohttp import web

    from .app import ORIGIN, create_app

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    origin = app[ORIGIN]
    assert origin.server is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "event=origin_ready listen=%s:%d storage=%s",
        config.listen.host or "*",
        origin.server.port,
        config.storage.backend,
    )
    await stop.wait()
    log.info("event=origin_stopping")
    await runner.cleanup()
    log.info("event=origin_stopped")


def _worker_name() -> str:
    from .jobs import default_worker_name

    return default_worker_name("origin")


async def work(config: OriginConfig, *, job_id: int | None = None, once: bool = False) -> int:
    """Run ingest jobs: all of them (worker), or until ``job_id`` is finished (ingest)."""
    from .catalog import CatalogFeed
    from .jobs import JobQueue, run_worker
    from .publish import ingest_handler
    from .storage import open_storage

    storage = open_storage(config.storage.spec())
    feed = CatalogFeed(config.catalog_db)
    queue = JobQueue(
        config.jobs.db, lease_seconds=config.jobs.lease, max_attempts=config.jobs.max_attempts
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    # A worker finishes its job on TERM/INT, then exits. `ingest` gives up at once instead
    # (the operator pressed Ctrl-C): the job stays leased and another worker takes it over.
    on_signal = stop.set if job_id is None else main_task.cancel
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    handler = ingest_handler(config, storage, feed)
    try:
        if job_id is None:
            return await run_worker(
                queue, _worker_name(), {"ingest": handler}, stop=stop, once=once
            )
        # Work until our job is finished (it may be behind others, or held by a dead worker
        # whose lease has to run out first), showing its progress.
        printer = asyncio.create_task(_show_progress(queue, job_id))
        try:
            await _work_until_done(queue, handler, job_id, stop)
        finally:
            printer.cancel()
        job = queue.get(job_id)
        return 0 if job is not None and job.state == "done" else 1
    finally:
        queue.close()
        feed.close()
        await storage.close()


async def _work_until_done(
    queue: JobQueue, handler: Callable[..., Awaitable[Any]], job_id: int, stop: asyncio.Event
) -> None:
    from .jobs import run_worker

    while not stop.is_set():
        job = queue.get(job_id)
        if job is None or job.state in ("done", "failed", "cancelled"):
            break
        n = await run_worker(
            queue, _worker_name(), {"ingest": handler}, stop=stop, once=True, poll_interval=1.0
        )
        if n == 0:
            await asyncio.sleep(1.0)


async def _show_progress(queue: JobQueue, job_id: int) -> None:
    last = None
    while True:
        job = queue.get(job_id)
        if job is not None:
            line = f"job {job_id}: {job.state} {100 * (job.progress or 0):3.0f}% {job.note or ''}"
            if line != last:
                print(line.rstrip(), flush=True)
                last = line
        await asyncio.sleep(0.5)


async def _published(config: OriginConfig, title: str) -> bool:
    from .publish import is_published
    from .storage import open_storage

    storage = open_storage(config.storage.spec())
    try:
        return await is_published(storage, title)
    finally:
        await storage.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m origin", description="opencdn origin")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve assets to edges")
    add_config_arguments(p)
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    add_config_arguments(p)
    p = sub.add_parser("ingest", help="encode a source video into a ladder and publish it")
    add_config_arguments(p)
    p.add_argument("source", type=Path)
    p.add_argument("--title", required=True, help="title id: [a-z0-9][a-z0-9_-]{0,63}")
    p.add_argument("--ladder", type=Path, help="ladder YAML (default: the built-in ladder)")
    p.add_argument("--replace", action="store_true", help="re-ingest a published title")
    p.add_argument("--enqueue-only", action="store_true", help="queue the job for a worker")
    p = sub.add_parser("worker", help="run queued jobs until stopped")
    add_config_arguments(p)
    p.add_argument("--once", action="store_true", help="run at most one job")
    p = sub.add_parser("jobs", help="list jobs")
    add_config_arguments(p)
    p.add_argument("--all", action="store_true", help="include finished jobs")
    p = sub.add_parser("synth", help="write a synthetic catalog (no ffmpeg)")
    add_config_arguments(p)
    p.add_argument("--titles", type=int, required=True)
    p.add_argument("--renditions", type=int, default=3)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per title")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="directory (default: the local storage root)")
    args = parser.parse_args(argv)

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        root = config.storage.root
        if config.storage.backend == "local":
            probe = root
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if root.exists() and not root.is_dir():
                print(
                    f"configuration error: storage.root: {root} is not a directory", file=sys.stderr
                )
                return 2
            if not os.access(probe, os.W_OK | os.X_OK):
                print(
                    f"configuration error: storage.root: {probe} is not writable", file=sys.stderr
                )
                return 2
        print(f"configuration ok: listen {config.listen}, storage {config.storage.backend}")
        return 0
    setup_logging(config.log_level)

    if args.command == "serve":
        try:
            _run(serve(config))
        except (OSError, ValueError) as exc:  # a port in use, an unusable storage root, ...
            log.error("event=origin_failed error=%r", str(exc))
            return 1
        return 0

    if args.command == "jobs":
        from .jobs import JobQueue, format_jobs

        queue = JobQueue(config.jobs.db, lease_seconds=config.jobs.lease)
        states = None if args.all else ["queued", "running", "failed"]
        print(format_jobs(queue.list(states), time.time()))
        queue.close()
        return 0

    if args.command == "synth":
        from .synth import synth_catalog

        if args.titles < 1 or args.renditions < 1 or args.duration <= 0:
            print("error: --titles, --renditions and --duration must be positive", file=sys.stderr)
            return 2
        out = args.out or (config.storage.root if config.storage.backend == "local" else None)
        if out is None:
            print("error: --out is required with the s3 backend", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        titles = synth_catalog(
            out,
            titles=args.titles,
            renditions=args.renditions,
            duration=args.duration,
            seed=args.seed,
        )
        print(f"wrote {len(titles)} titles under {out} in {time.perf_counter() - t0:.1f}s")
        if args.out is None:
            # Written straight into the asset root: announce them like ingested titles.
            import json

            from .catalog import CatalogFeed

            feed = CatalogFeed(config.catalog_db)
            for title in titles:
                manifest = json.loads((out / "v" / title / "manifest.json").read_text())
                feed.announce(title, manifest)
            feed.close()
            print(f"announced {len(titles)} titles in the catalog feed")
        return 0

    if args.command == "worker":
        try:
            _run(work(config, once=args.once))
        except KeyboardInterrupt:
            pass
        return 0

    # ingest: validate what can be validated before queueing anything.
    from .ffmpeg import SourceError, probe
    from .ingest import check_title
    from .jobs import JobQueue

    try:
        check_title(args.title)
        if args.ladder is not None:
            from .ladder import load_ladder

            load_ladder(args.ladder)
        source = args.source.resolve()
        asyncio.run(probe(source))
    except (ValueError, SourceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.replace and asyncio.run(_published(config, args.title)):
        print(f"error: title {args.title!r} is already published (use --replace)", file=sys.stderr)
        return 2
    queue = JobQueue(
        config.jobs.db, lease_seconds=config.jobs.lease, max_attempts=config.jobs.max_attempts
    )
    payload = {"source": str(source), "title": args.title, "replace": args.replace}
    if args.ladder is not None:
        payload["ladder_file"] = str(args.ladder.resolve())
    job = queue.enqueue("ingest", payload, dedupe_key=f"ingest:{args.title}")
    queue.close()
    if job.payload != payload:
        print(
            f"job {job.id} for {args.title} is already queued or running (from "
            f"{job.payload.get('source')}); following it instead",
            file=sys.stderr,
        )
    print(f"job {job.id} queued: ingest {args.title} from {job.payload.get('source')}")
    if args.enqueue_only:
        return 0
    try:
        _run(work(config, job_id=job.id))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"interrupted; job {job.id} stays queued: `python -m origin worker` will take it"
            " over once its lease runs out",
            file=sys.stderr,
        )
        return 130
    queue = JobQueue(config.jobs.db)
    final = queue.get(job.id)
    queue.close()
    if final is not None and final.state == "done":
        print(f"published {args.title}: {final.result}")
        return 0
    if final is not None and final.state in ("queued", "running"):
        print(
            f"job {job.id} is still {final.state}; `python -m origin jobs` shows it",
            file=sys.stderr,
        )
        return 1
    print(f"ingest failed: {final.error if final else 'job vanished'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
