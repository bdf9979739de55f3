"""Command line of the steering service.

python -m steering serve --config /etc/opencdn/steering.yaml [-a HOST:PORT]
python -m steering check-config --config /etc/opencdn/steering.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from .config import ConfigError, SteeringConfig, load_config

log = logging.getLogger("steering")


def _reload(app: object, path: Path | None) -> None:
    from .app import reload_app

    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("event=reload_failed error=%r note=%r", str(exc), "kept the last good state")
        return
    reload_app(app, config)  # type: ignore[arg-type]


async def serve(config: SteeringConfig, path: Path | None = None) -> None:
    from aiohttp import web

    from .app import create_app

    runner = web.AppRunner(create_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.listen.host or None, config.listen.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, runner.app, path)
    addrs = ",".join(f"{a[0]}:{a[1]}" for a in runner.addresses)
    log.info("event=steering_ready listen=%s edges=%d", addrs, len(config.edges))
    await stop.wait()
    await runner.cleanup()
    log.info("event=steering_stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steering", description="opencdn steering")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "serve steering answers"), ("check-config", "validate and exit")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, help="YAML configuration")
        p.add_argument("-a", "--listen", help="HOST:PORT (default 127.0.0.1:8100)")
    args = parser.parse_args(argv)
    overrides = {"listen": args.listen} if args.listen else {}
    try:
        config = load_config(args.config, overrides)
        if config.coverage_zone_file is not None:
            from .locality import LocalityError, load_czf

            try:
                load_czf(config.coverage_zone_file)
            except LocalityError as exc:
                raise ConfigError(f"coverage_zone_file: {exc}") from None
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"configuration ok: {len(config.sites)} sites, {len(config.edges)} edges")
        return 0
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        import uvloop

        uvloop.run(serve(config, args.config))
    except OSError as exc:
        log.error("event=steering_failed error=%r", str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
