"""Command line of the edge appliance.

    python -m edge serve --config /etc/opencdn/edge.yaml
    python -m edge serve -a 127.0.0.1:8080 -b http://origin:8000 -s /srv/cache --cache-size 500GiB \\
        --signing-key-file /etc/opencdn/edge-keys
    python -m edge check-config --config /etc/opencdn/edge.yaml
    python -m edge sign --config /etc/opencdn/edge.yaml --prefix /v/title1/ --ttl 3600
    python -m edge keygen KEYID >> /etc/opencdn/edge-keys

Signals while serving: TERM/INT stop gracefully (drain, then exit), USR1 starts
draining, USR2 stops draining, HUP re-reads the signing key file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .config import ConfigError, EdgeConfig, add_config_arguments, config_from_args
from .store import CacheInUse
from .tokens import generate_key_line, load_keys, sign, signed_path
from .units import format_size

log = logging.getLogger("edge")


def setup_logging(level: str) -> None:
    # One line per event, logfmt-style key=value, UTC timestamps.
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


async def serve(config: EdgeConfig, *, ready: asyncio.Event | None = None) -> None:
    from aiohttp import web

    from .app import EDGE, create_app

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    edge = app[EDGE]
    if config.admin.listen is not None:
        site = web.TCPSite(runner, config.admin.listen.host or None, config.admin.listen.port)
        await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, edge.set_draining, True)
    loop.add_signal_handler(signal.SIGUSR2, edge.set_draining, False)
    loop.add_signal_handler(signal.SIGHUP, _reload, edge)
    assert edge.server is not None
    admin = "off"
    if config.admin.listen is not None:
        admin = ",".join(f"{a[0]}:{a[1]}" for a in runner.addresses) or str(config.admin.listen)
    log.info(
        "event=edge_ready node=%s data=%s:%d admin=%s",
        config.node_id,
        config.listen.host or "*",
        edge.server.port,
        admin,
    )
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("event=edge_stopping drain_timeout=%.1f", config.limits.drain_timeout)
    await runner.cleanup()
    log.info("event=edge_stopped")


def check_environment(config: EdgeConfig) -> tuple[list[str], list[str]]:
    """What the file alone cannot tell: cache directories usable, sizes that fit, ports."""
    problems: list[str] = []
    warnings: list[str] = []
    for i, d in enumerate(config.cache.dirs):
        key = f"cache.dirs[{i}].path"
        probe = d.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # the directory will be created below its nearest ancestor
        if d.path.exists() and not d.path.is_dir():
            problems.append(f"{key}: {d.path} exists and is not a directory")
            continue
        if not os.access(probe, os.W_OK | os.X_OK):
            problems.append(f"{key}: {probe} is not writable by this user")
            continue
        try:
            st = os.statvfs(probe)
        except OSError as exc:
            problems.append(f"{key}: {probe}: {exc.strerror}")
            continue
        total = st.f_blocks * st.f_frsize
        if d.size > total:
            warnings.append(
                f"cache.dirs[{i}].size: {format_size(d.size)} is more than the whole "
                f"filesystem of {d.path} ({format_size(total)}); fills will fail when it is full"
            )
    admin = config.admin.listen
    if (
        admin is not None
        and admin.port
        and admin.port == config.listen.port
        and (
            admin.host == config.listen.host
            or "" in (admin.host, config.listen.host)
            or "0.0.0.0" in (admin.host, config.listen.host)
        )
    ):
        problems.append(f"admin.listen: {admin} collides with listen {config.listen}")
    return problems, warnings


def _reload(edge: object) -> None:
    edge.key_mtime = 0.0  # type: ignore[attr-defined]
    edge.reload_keys()  # type: ignore[attr-defined]


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge", description="opencdn edge appliance")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="serve video segments")
    add_config_arguments(p_serve)
    p_check = sub.add_parser("check-config", help="validate the configuration and exit")
    add_config_arguments(p_check)
    p_sign = sub.add_parser("sign", help="print a signed URL prefix")
    add_config_arguments(p_sign)
    p_sign.add_argument("--prefix", required=True, help="path prefix to authorise, e.g. /v/title1/")
    p_sign.add_argument("--ttl", type=int, default=3600, help="seconds until expiry (default 3600)")
    p_sign.add_argument("--client-ip", help="bind the token to this client address")
    p_sign.add_argument("--base-url", help="URL of the edge (default: from the listen address)")
    p_key = sub.add_parser("keygen", help="print a new signing key line for the key file")
    p_key.add_argument("key_id")

    args = parser.parse_args(argv)
    if args.command == "keygen":
        try:
            print(generate_key_line(args.key_id))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "sign" and not args.upstream:
        # Signing needs only the keys (and the listen address for the URL); an upstream
        # is required to serve, not to sign, so do not insist on one here.
        args.upstream = ["http://upstream.unused.invalid"]
    try:
        config = config_from_args(args)
        keys = load_keys(Path(config.signing.key_file)) if config.signing.key_file else None
    except (ConfigError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "check-config":
        problems, warnings = check_environment(config)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if problems:
            for p in problems:
                print(f"configuration error: {p}", file=sys.stderr)
            return 2
        dirs = ", ".join(f"{d.path} ({format_size(d.size)})" for d in config.cache.dirs)
        print(f"configuration ok: node {config.node_id}, listen {config.listen}, cache {dirs}")
        return 0
    if args.command == "sign":
        if keys is None:
            print("error: no signing key file configured (signing.key_file)", file=sys.stderr)
            return 2
        if args.ttl <= 0:
            print("error: --ttl must be a positive number of seconds", file=sys.stderr)
            return 2
        try:
            token = sign(keys, args.prefix, int(time.time()) + args.ttl, args.client_ip)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        base = args.base_url
        if base is None:
            host = config.listen.host
            if host in ("", "0.0.0.0", "::"):
                host = "127.0.0.1"
            elif ":" in host:
                host = f"[{host}]"
            base = f"http://{host}:{config.listen.port}"
        print(base.rstrip("/") + signed_path(token, args.prefix))
        return 0

    setup_logging(config.log.level)
    try:
        _run(serve(config))
    except KeyboardInterrupt:
        pass
    except (OSError, CacheInUse) as exc:
        log.error("event=edge_failed error=%r", str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
