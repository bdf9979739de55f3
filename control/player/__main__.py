"""The reference player's command line.

python -m control.player --control URL --email E (--password-file F | --password P)
    (--title ID | --search TEXT) [--episode ID] [--profile ID] [--speed X] [--duration S]
    [--resume] [--source-address A] [--reservoir S] [--cushion S] [--max-buffer S]
    [--min-timeout S] [--json] [-v]

Without --password-file or --password, the password is the first line of standard input
(a password on the command line is visible to other users in the process list; prefer the
file or stdin outside demos). Prints the QoE summary on stdout (text, or one JSON object
with --json); logs go to stderr, one ``event=...`` line per event.

Exit status: 0 played to the end (or to --duration), 1 the play failed (sign-in or playback
refused, an unplayable playlist, every edge failing), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from .abr import AbrConfig
from .session import Player, PlayerError, PlayerOptions, Summary

MAX_PASSWORD = 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m control.player",
        description="Reference HLS player: plays a title through the CDN and reports its QoE.",
    )
    p.add_argument("--control", required=True, help="the control plane's URL")
    p.add_argument("--email", required=True)
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-file", type=Path, help="first line is the password")
    secret.add_argument("--password", help="the password (visible in the process list)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--title", help="a title id")
    what.add_argument("--search", help="play the first title this search finds")
    p.add_argument("--episode", help="an episode id (for a series)")
    p.add_argument("--profile", help="a profile id (default: the account's first)")
    p.add_argument("--speed", type=float, default=1.0, help="playout speed, 1 = real time")
    p.add_argument("--duration", type=float, help="seconds of media to play at most")
    p.add_argument("--resume", action="store_true", help="start at the resume position")
    p.add_argument("--source-address", help="local address to connect from")
    defaults = AbrConfig()
    p.add_argument("--reservoir", type=float, default=defaults.reservoir, help="BBA, seconds")
    p.add_argument("--cushion", type=float, default=defaults.cushion, help="BBA, seconds")
    p.add_argument(
        "--max-buffer", type=float, default=defaults.max_buffer, help="seconds of media ahead"
    )
    p.add_argument(
        "--min-timeout", type=float, default=2.0, help="floor of the per-request timeout (s)"
    )
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="log every segment")
    return p


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        value = str(args.password)
    elif args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                value = f.readline(MAX_PASSWORD + 2)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--password-file {args.password_file}: {exc}") from None
    else:
        value = sys.stdin.readline(MAX_PASSWORD + 2)
    value = value.rstrip("\r\n")
    if not value or len(value) > MAX_PASSWORD:
        raise ValueError("the password is empty (or longer than 1024 characters)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    try:
        options = PlayerOptions(
            control=args.control,
            email=args.email,
            password=_password(args),
            title=args.title,
            search=args.search,
            episode=args.episode,
            profile=args.profile,
            speed=args.speed,
            duration=args.duration,
            resume=args.resume,
            source_address=args.source_address,
            abr=AbrConfig(
                reservoir=args.reservoir, cushion=args.cushion, max_buffer=args.max_buffer
            ),
            min_timeout=args.min_timeout,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    player = Player(options)
    try:
        summary = _run(player)
    except PlayerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _print(player.summary.to_json() if args.json else player.summary.text(), args.json)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: a bug, or an answer nothing else foresaw
        # Only the type: an exception's message (and a traceback's locals) may hold a URL
        # with its signed token, or the session token.
        print(f"error: the play failed ({type(exc).__name__})", file=sys.stderr)
        _print(player.summary.to_json() if args.json else player.summary.text(), args.json)
        return 1
    _print(summary.to_json() if args.json else summary.text(), args.json)
    return 0 if summary.completed else 1


def _run(player: Player) -> Summary:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(player.run())
    return uvloop.run(player.run())


def _print(summary: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(summary)


if __name__ == "__main__":
    sys.exit(main())
