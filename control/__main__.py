"""Command line of the control plane.

python -m control serve --config /etc/opencdn/control.yaml [-a HOST:PORT]
python -m control check-config --config FILE
python -m control migrate --config FILE          apply schema migrations, print the version
python -m control recompute --config FILE        run the recommendation batch once
python -m control create-admin --config FILE --email E [--password-file F]

Exit status: 0 ok, 2 configuration or usage error, 1 runtime failure (database unreachable...).
A password is read from --password-file, else from standard input (first line), never from
the command line, where other users could read it in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .config import ConfigError, ControlConfig, load_config

log = logging.getLogger("control")


async def serve(
    config: ControlConfig,
    *,
    primary: bool = True,
    reuse_port: bool = False,
    worker: int = 0,
    metrics_dir: Path | None = None,
) -> None:
    from aiohttp import web

    from .app import AccessLogger, create_app

    runner = web.AppRunner(
        create_app(config, primary=primary, worker=worker, metrics_dir=metrics_dir),
        handle_signals=False,
        access_log=log,
        access_log_class=AccessLogger,
    )
    await runner.setup()
    site = web.TCPSite(
        runner, config.listen.host or None, config.listen.port, reuse_port=reuse_port or None
    )
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    addrs = ",".join(f"{a[0]}:{a[1]}" for a in runner.addresses)
    log.info("event=control_ready listen=%s database=%s", addrs, config.database.redacted_url)
    await stop.wait()
    log.info("event=control_stopping")
    await runner.cleanup()
    log.info("event=control_stopped")


async def _migrate(config: ControlConfig) -> int:
    from .app import open_database
    from .db import schema_version

    database = await open_database(config, time.time())
    try:
        version = await schema_version(database)
    finally:
        await database.close()
    print(f"schema version {version} ({database.dialect})")
    return 0


async def _recompute(config: ControlConfig) -> int:
    from .app import Control, running

    async with running(Control(config), background=False) as c:
        t0 = time.perf_counter()
        n = await c.home.recompute()
    print(f"recomputed home rows for {n} profiles in {time.perf_counter() - t0:.2f} s")
    return 0


async def _create_admin(config: ControlConfig, email: str, password: str) -> int:
    from .app import Control, running
    from .errors import ControlError

    async with running(Control(config), background=False) as c:
        try:
            account = await c.accounts.create_account(email, password, role="admin")
        except ControlError as exc:
            print(f"cannot create the administrator: {exc.message}", file=sys.stderr)
            return 2
    print(f"administrator {account.email} created (account {account.id})")
    return 0


def _run_serve(
    config: ControlConfig,
    *,
    primary: bool,
    reuse_port: bool,
    worker: int = 0,
    metrics_dir: Path | None = None,
) -> None:
    coro = serve(
        config, primary=primary, reuse_port=reuse_port, worker=worker, metrics_dir=metrics_dir
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _serve_workers(config: ControlConfig) -> int:
    """``workers`` processes on one port (SO_REUSEPORT; the kernel spreads connections).

    Forked before any event loop exists. The parent forwards TERM/INT and waits; if a worker
    dies on its own, the parent stops the others and exits 1 so systemd restarts the set.
    """
    if config.workers == 1:
        _run_serve(config, primary=True, reuse_port=False)
        return 0
    children: list[int] = []
    metrics_dir = Path(tempfile.mkdtemp(prefix="opencdn-control-metrics-"))
    for i in range(config.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with_parent()
            code = 0
            try:
                _run_serve(
                    config, primary=i == 0, reuse_port=True, worker=i, metrics_dir=metrics_dir
                )
            except BaseException:
                log.exception("event=worker_failed worker=%d", i)
                code = 1
            logging.shutdown()
            os._exit(code)
        children.append(pid)
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    alive = set(children)
    while alive:
        pid, wstatus = os.wait()
        alive.discard(pid)
        if os.waitstatus_to_exitcode(wstatus) != 0 or not stopping:
            if not stopping:
                log.error("event=worker_exited pid=%d note=%r", pid, "stopping the others")
                forward(signal.SIGTERM, None)
            status = 1
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the parent dies (even by SIGKILL), so no orphan keeps
    serving on the port under a supervisor that only tracks the parent."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _read_password(path: Path | None) -> str:
    if path is not None:
        text = path.read_text(encoding="utf-8")
    elif sys.stdin.isatty():
        text = getpass.getpass("password: ")
    else:
        text = sys.stdin.readline()
    return text.rstrip("\r\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m control", description="opencdn control plane")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "serve": "serve the control plane API",
        "check-config": "validate the configuration and exit",
        "migrate": "apply database migrations and exit",
        "recompute": "run the recommendation batch once",
        "create-admin": "create an administrator account",
    }
    for name, help_ in commands.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, help="YAML configuration (default: built-in)")
        if name == "serve":
            p.add_argument("-a", "--listen", help="HOST:PORT (default 127.0.0.1:8090)")
        if name == "create-admin":
            p.add_argument("--email", required=True)
            p.add_argument("--password-file", type=Path, help="file holding the password")
    args = parser.parse_args(argv)
    overrides = {"listen": args.listen} if getattr(args, "listen", None) else {}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(
            f"configuration ok: database {config.database.redacted_url}, "
            f"{len(config.plans)} plans, listen {config.listen.host}:{config.listen.port}"
        )
        return 0
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)sZ level=%(levelname)s logger=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # The pool's retry warnings span two lines each; our own events say the same in one.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    from .db import DatabaseError

    try:
        if args.command == "serve":
            return _serve_workers(config)
        if args.command == "migrate":
            return asyncio.run(_migrate(config))
        if args.command == "recompute":
            return asyncio.run(_recompute(config))
        password = _read_password(args.password_file)
        return asyncio.run(_create_admin(config, args.email, password))
    except DatabaseError as exc:
        where = f"{args.config}: " if args.config else ""
        print(
            f"database error ({where}database.url {config.database.redacted_url}): {exc}",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
