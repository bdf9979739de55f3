"""Command line of the edge appliance.

    python -m edge serve --config /etc/opencdn/edge.yaml
    python -m edge serve -a 127.0.0.1:8080 -b http://origin:8000 -s /srv/cache --cache-size 500GiB \\
        --signing-key-file /etc/opencdn/edge-keys
    python -m edge check-config --config /etc/opencdn/edge.yaml
    python -m edge sign --config /etc/opencdn/edge.yaml --prefix /v/title1/ --ttl 3600
    python -m edge keygen KEYID >> /etc/opencdn/edge-keys
    python -m edge fill --now --config /etc/opencdn/edge.yaml     # fill now, wait, summarise
    python -m edge fill --status --config /etc/opencdn/edge.yaml  # what is left to fill
    python -m edge drain --wait --config /etc/opencdn/edge.yaml   # drain, wait for 0 connections
    python -m edge undrain --config /etc/opencdn/edge.yaml        # take players again

Signals while serving: TERM/INT stop gracefully (drain, then exit), USR1 starts
draining, USR2 stops draining, HUP re-reads the signing key file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    EdgeConfig,
    add_config_arguments,
    config_from_args,
    read_credential_file,
)
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
    """What the file alone cannot tell: cache directories usable, sizes that fit, ports.

    A cache directory the edge cannot use is a problem only when no other one is usable:
    the edge serves without a failed disk (and reports itself degraded), so one dead SSD
    must not keep a restarted appliance from serving with the others.
    """
    problems: list[str] = []
    warnings: list[str] = []
    unusable: list[str] = []
    for i, d in enumerate(config.cache.dirs):
        key = f"cache.dirs[{i}].path"
        probe = d.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # the directory will be created below its nearest ancestor
        if d.path.exists() and not d.path.is_dir():
            unusable.append(f"{key}: {d.path} exists and is not a directory")
            continue
        if not os.access(probe, os.W_OK | os.X_OK):
            unusable.append(f"{key}: {probe} is not writable by this user")
            continue
        try:
            st = os.statvfs(probe)
        except OSError as exc:
            unusable.append(f"{key}: {probe}: {exc.strerror}")
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
    if len(unusable) == len(config.cache.dirs):
        problems[:0] = unusable
    else:
        warnings += [
            f"{u}; the edge serves without this disk (health: degraded, disk_failed)"
            for u in unusable
        ]
    return problems, warnings


def _admin_base(config: EdgeConfig) -> str:
    """The running edge's admin API, as this host reaches it."""
    admin = config.admin.listen
    if admin is None:
        raise OSError("the admin API is disabled (admin.listen: null)")
    host = admin.host if admin.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{admin.port}"


def _admin_call(config: EdgeConfig, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """One request to the running edge's admin API (stdlib only: the CLI has no loop)."""
    req = urllib.request.Request(_admin_base(config) + path, method=method)
    if config.admin.credential_file is not None:
        token = read_credential_file(config.admin.credential_file)
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        return exc.code, {"error": body}


def _metrics(config: EdgeConfig) -> dict[str, float]:
    """The running edge's /metrics samples (admin API, no credential): name{labels} -> value."""
    with urllib.request.urlopen(_admin_base(config) + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _summary(st: dict[str, Any]) -> str:
    by = st.get("bytes_by_source", {})
    return (
        f"fill {st.get('state')}: manifest {st.get('manifest')}, "
        f"{st.get('objects_done', 0)}/{st.get('objects_total', 0)} objects, "
        f"{format_size(st.get('bytes_done', 0))}/{format_size(st.get('bytes_total', 0))} "
        f"({st.get('objects_left', 0)} objects, {format_size(st.get('bytes_left', 0))} left); "
        f"downloaded: peer {format_size(by.get('peer', 0))}, "
        f"parent {format_size(by.get('parent', 0))}, origin {format_size(by.get('origin', 0))}"
        + (f"; last error: {st['last_error']}" if st.get("last_error") else "")
    )


def fill_command(config: EdgeConfig, args: argparse.Namespace) -> int:
    """``fill --status`` / ``fill --now``: talk to the running edge's admin API."""
    try:
        if args.status:
            code, st = _admin_call(config, "GET", "/admin/fill")
            if code != 200:
                print(f"error: status {code}: {st.get('error', '')}", file=sys.stderr)
                return 1
            if not st.get("enabled", True):
                print("fill disabled (needs steering.url and fill.enabled: true)")
                return 0
            print(_summary(st))
            print(json.dumps(st, indent=2, sort_keys=True))
            return 0
        code, st = _admin_call(config, "POST", "/admin/fill")
        if code != 202:
            print(f"error: status {code}: {st.get('error', '')}", file=sys.stderr)
            return 1
        print(f"fill started: manifest {st.get('manifest')}, window {st.get('window')}")
        if args.no_wait:
            return 0
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        # The 202 already says "filling"; wait for the runner to report the run's end.
        started = st.get("last_started_at")
        while True:
            time.sleep(0.2)
            code, st = _admin_call(config, "GET", "/admin/fill")
            if code != 200:
                print(f"error: status {code}: {st.get('error', '')}", file=sys.stderr)
                return 1
            if not st.get("running") and st.get("last_started_at") != started:
                break
            if deadline is not None and time.monotonic() > deadline:
                print("timed out waiting; the fill goes on: " + _summary(st), file=sys.stderr)
                return 1
        print(_summary(st))
        return 0 if st.get("state") == "done" else 1
    except BrokenPipeError:
        raise  # our stdout was closed (`... | head`), not the edge: see _quiet_broken_pipe
    except (OSError, ValueError) as exc:
        print(f"error: cannot reach the edge's admin API: {exc}", file=sys.stderr)
        return 1


def drain_command(config: EdgeConfig, args: argparse.Namespace) -> int:
    """``drain [--wait]`` / ``undrain``: the admin API's drain switch, from the command line."""
    try:
        if args.command == "undrain":
            code, st = _admin_call(config, "POST", "/admin/undrain")
            if code != 200:
                print(f"error: status {code}: {st.get('error', '')}", file=sys.stderr)
                return 1
            print(f"undrained: health {st.get('state')}")
            return 0
        code, st = _admin_call(config, "POST", "/admin/drain")
        if code != 200:
            print(f"error: status {code}: {st.get('error', '')}", file=sys.stderr)
            return 1
        print("draining: new requests get 503 with Retry-After, steering sends no new players")
        if not args.wait:
            return 0
        # Players finish their requests and reconnect elsewhere; keep-alive connections close
        # at their next request (answered 503, Connection: close) or after limits.idle_timeout.
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        last = None
        while True:
            samples = _metrics(config)
            if samples.get('edge_health_state{state="draining"}') != 1.0:
                print(
                    "error: the edge is no longer draining (undrained meanwhile?)", file=sys.stderr
                )
                return 1
            conns = int(samples.get("edge_connections_open", 0.0))
            if conns == 0:
                print("drained: no client connections open")
                return 0
            if conns != last:
                print(f"{conns} client connections open", flush=True)
                last = conns
            if deadline is not None and time.monotonic() > deadline:
                print(f"timed out: {conns} client connections still open", file=sys.stderr)
                return 1
            time.sleep(args.interval)
    except BrokenPipeError:
        raise  # our stdout was closed (`... | head`), not the edge: see _quiet_broken_pipe
    except (OSError, ValueError) as exc:
        print(f"error: cannot reach the edge's admin API: {exc}", file=sys.stderr)
        return 1


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
    p_fill = sub.add_parser("fill", help="run the nightly fill now, or show its status")
    add_config_arguments(p_fill)
    what = p_fill.add_mutually_exclusive_group(required=True)
    what.add_argument("--now", action="store_true", help="start a fill now, ignoring the window")
    what.add_argument("--status", action="store_true", help="show the fill status and exit")
    p_fill.add_argument("--no-wait", action="store_true", help="with --now: return at once")
    p_fill.add_argument(
        "--timeout", type=float, default=0.0, help="with --now: give up waiting after SECS"
    )

    p_drain = sub.add_parser(
        "drain", help="stop taking players (running edge), optionally wait for 0 connections"
    )
    add_config_arguments(p_drain)
    p_drain.add_argument(
        "--wait", action="store_true", help="wait until no client connection is open"
    )
    p_drain.add_argument(
        "--timeout", type=float, default=0.0, help="with --wait: give up after SECS (0: never)"
    )
    p_drain.add_argument(
        "--interval", type=float, default=0.5, help="with --wait: seconds between checks"
    )
    p_undrain = sub.add_parser("undrain", help="take players again after a drain")
    add_config_arguments(p_undrain)

    args = parser.parse_args(argv)
    if args.command == "keygen":
        try:
            print(generate_key_line(args.key_id))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("sign", "fill", "drain", "undrain") and not args.upstream:
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

    if args.command == "fill":
        return fill_command(config, args)
    if args.command in ("drain", "undrain"):
        return drain_command(config, args)

    setup_logging(config.log.level)
    try:
        _run(serve(config))
    except KeyboardInterrupt:
        pass
    except (OSError, CacheInUse) as exc:
        log.error("event=edge_failed error=%r", str(exc))
        return 1
    return 0


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``fill --status | head``): exit as a shell tool does,
    without a traceback, and without Python's second error when it flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    try:
        code = main()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    sys.exit(code)
