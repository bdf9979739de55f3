"""Command line of the local fleet.

    python -m fleet run --config conf/fleet.yaml [--data DIR] [--set KEY=VALUE ...]
    python -m fleet status --config conf/fleet.yaml        # each service's health
    python -m fleet check-config --config conf/fleet.yaml  # names the file and key at fault

``--data`` replaces ``data_dir`` (taken as it is, after the ``--set`` values); ``--set`` overrides any key of the file (list items by id:
``--set edges.e1.listen=127.0.0.11:18080``), checked like the file itself.

Exit status: 0 ok (``run``: stopped by SIGINT, SIGTERM or SIGHUP), 2 configuration or usage error,
1 runtime failure (a port in use, a service that died at start; the message names its log).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config

DEFAULT_CONFIG = Path("conf/fleet.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet", description="opencdn local fleet")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("run", "start the fleet, print what to open, stop it on Ctrl-C"),
        ("status", "print each service's health (of a running fleet)"),
        ("check-config", "validate the fleet description and exit"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}"
        )
        p.add_argument("--data", help="data directory (replaces data_dir)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a key of the file, e.g. edges.e1.listen=127.0.0.11:18080",
        )
    args = parser.parse_args(argv)
    try:
        # --data as given (a path), not read as YAML like a --set value.
        cfg = load_config(args.config, args.set, data_dir=args.data)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(
            f"configuration ok: {len(cfg.edges)} edges in {len(cfg.sites)} sites, "
            f"data in {cfg.data_dir}"
        )
        return 0

    from .run import Fleet, status

    if args.command == "status":
        return status(cfg, sys.stdout)
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=logging.INFO,
        format="ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    return Fleet(cfg, str(args.config)).run()


if __name__ == "__main__":
    sys.exit(main())
