"""The run as a whole, shared by the three locustfiles: options, thresholds, reports and roles.

Options. Every option is registered with ``events.init_command_line_parser`` and has an
environment variable ``LOCUST_<OPTION>`` (``--max-error-rate`` is ``LOCUST_MAX_ERROR_RATE``),
given explicitly (locust maps only its own options to variables). Options are read when a
test starts, not at import, so values typed in the web UI apply, and in distributed mode the
master's values reach the workers (locust sends custom options with every spawn message).

Thresholds. On ``events.quitting`` the master (or the single process) evaluates the run with
thresholds.py: overall error rate and the p95 of every request name. A broken threshold is
logged (``threshold failed: ...``) and sets ``environment.process_exit_code = 1``; a pass
never sets it, so locust's own ``--exit-code-on-error`` still applies to failed requests.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import sys
import time
from typing import Any, NoReturn

import gevent
from locust import events
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from .thresholds import RATE_LIMITED, Row, Thresholds, evaluate, parse_default, parse_p95

log = logging.getLogger("opencdn.loadtest")


# -- options ---------------------------------------------------------------------------------


def env_name(flag: str) -> str:
    return "LOCUST_" + flag.lstrip("-").upper().replace("-", "_")


def add_option(parser: Any, flag: str, **kw: Any) -> None:
    """``parser.add_argument`` with the ``LOCUST_*`` variable, once: several locustfiles in one
    ``-f a.py,b.py`` register the same shared options."""
    if flag in parser._option_string_actions:
        return
    env = env_name(flag)
    default = kw.get("default")
    shown = "none" if default in (None, "") else default
    kw["help"] = f"{kw.get('help', '')} (env {env}; default {shown})"
    parser.add_argument(flag, env_var=env, **kw)


@events.init_command_line_parser.add_listener
def _threshold_options(parser: Any) -> None:
    add_option(
        parser,
        "--max-error-rate",
        type=float,
        default=1.0,
        help="fail the run when more than this percent of all requests failed",
    )
    add_option(
        parser,
        "--p95-default",
        default="2000",
        help="fail the run when a request name's p95 is above this many ms ('off': unchecked)",
    )
    add_option(
        parser,
        "--p95",
        default="",
        help="per-name p95 limits in ms, 'NAME=MS,...' ('GET segment=800,POST /v1/playback=300'"
        "; MS may be 'off')",
    )
    add_option(
        parser,
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice (0: a new one each run)",
    )


def thresholds_from(options: Any) -> Thresholds:
    rate = float(options.max_error_rate)
    if not 0 <= rate <= 100:
        raise ValueError("--max-error-rate is a percentage, 0 to 100")
    return Thresholds(
        max_error_rate=rate,
        p95_default_ms=parse_default(str(options.p95_default)),
        p95_ms=parse_p95(str(options.p95 or "")),
    )


def fail_usage(message: str) -> NoReturn:
    """A bad option: said once, exit status 2 (as argparse does), before any user starts."""
    print(f"locust: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@events.init.add_listener
def _check_threshold_options(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # a worker gets the master's options, checked there
    try:
        thresholds_from(environment.parsed_options)
    except ValueError as exc:
        fail_usage(str(exc))


@events.init.add_listener
def refresh_loop_clock(**_: Any) -> None:
    """Refresh the event loop's clock before locust arms the ``--run-time`` timer.

    gevent (libev) timers count from the loop's cached time, last updated when the loop last
    ran; loading the locustfiles and their imports happens before that without running it,
    so on a busy machine the cache is seconds old and a ``--run-time 4s`` run ended 0.06 s
    after it started (seen with a few locust processes on 2 vCPUs). Init fires just before
    the timer is armed; work done at init after this (sign-ups) calls it again."""
    gevent.get_hub().loop.update_now()


WORKER_QUIT_MARGIN = 10.0  # seconds a master waits for its workers beyond --stop-timeout


@events.init.add_listener
def wait_for_workers_at_quit(environment: Environment, **_: Any) -> None:
    """A master that quits only once its workers have sent their final stats.

    locust's ``MasterRunner.quit`` tells the workers to quit and stops 0.5 s later, while each
    worker first stops its users (up to ``--stop-timeout``: viewers end their plays and send
    their stop events) and only then sends its final report: what workers did after those
    0.5 s was missing from the master's stats, so from the CSV and HTML reports and from the
    thresholds (a distributed viewers run showed 4 stop events for 8 plays). The same steps,
    but waiting until every worker said it quit (it does after its final report), at most
    ``--stop-timeout`` plus a margin for a worker that died."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return
    quitting = False

    def quit() -> None:
        nonlocal quitting
        if quitting:  # the last worker's quit makes a headless master call quit() again
            return
        quitting = True
        runner.stop(send_stop_to_client=False)
        for client in runner.clients.all:
            runner.server.send_to_client(Message("quit", None, client.id))
        deadline = time.monotonic() + float(environment.stop_timeout or 0) + WORKER_QUIT_MARGIN
        while runner.clients.all and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if runner.clients.all:
            log.warning(
                "event=workers_not_quit workers=%d: their last stats are missing",
                len(runner.clients.all),
            )
        runner.greenlet.kill(block=True)

    runner.quit = quit  # type: ignore[method-assign]


def stats_rows(environment: Environment) -> list[Row]:
    return [
        Row(
            method=str(e.method or ""),
            name=str(e.name),
            requests=int(e.num_requests),
            failures=int(e.num_failures),
            p95_ms=float(e.get_response_time_percentile(0.95)) if e.num_requests else 0.0,
        )
        for e in environment.stats.entries.values()
    ]


@events.quitting.add_listener
def _check_thresholds(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # the master holds the whole run's stats
    t = thresholds_from(environment.parsed_options)
    rows = stats_rows(environment)
    waits = sum(r.requests for r in rows if r.name.endswith(RATE_LIMITED))
    if waits:
        log.warning(
            "event=signin_rate_limited attempts=%d: the control plane's sign-in limits held "
            "users back (rate_limits; see loadtests/README.md), so less load ran than asked",
            waits,
        )
    failed = evaluate(rows, t)
    for line in failed:
        log.error("threshold failed: %s", line)
    if failed:
        if not environment.process_exit_code:  # keep a set-up failure's 2
            environment.process_exit_code = 1
        return
    p95 = "off" if t.p95_default_ms is None else f"{t.p95_default_ms:g} ms"
    log.info(
        "thresholds passed: error rate <= %g%%, p95 <= %s by default%s",
        t.max_error_rate,
        p95,
        "".join(f", {k} {'off' if v is None else f'{v:g} ms'}" for k, v in t.p95_ms.items()),
    )


def abort_start(environment: Environment, message: str) -> None:
    """The test cannot start (an accounts file, a key file, an object list...): say why, stop
    the runner (its users stop at once: every locustfile's on_start checks) and exit 2."""
    log.error("event=not_started error=%r", message)
    if environment.process_exit_code is None:
        environment.process_exit_code = 2
    if environment.runner is not None:
        # Spawned: the runner is quit from outside the test_start event being fired.
        gevent.spawn(environment.runner.quit)


@events.quitting.add_listener
def _final_csv(environment: Environment, **_: Any) -> None:
    """Write the ``--csv`` files once more from the final stats. Locust's writer rewrites them
    once a second and not at exit (locustio/locust#1806, #2299), so what the last second
    recorded (the stop events of users ending their plays in --stop-timeout) was missing from
    them. Replaced, not rewritten in place: locust's writer keeps its handle on the old file
    until it closes it, so it cannot write over the final one."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or not is_reporting_node(environment):
        return
    out = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", out.requests_csv),
        ("_failures.csv", out.failures_csv),
        ("_exceptions.csv", out.exceptions_csv),
    ):
        path = f"{prefix}{suffix}"
        with open(f"{path}.final", "w", newline="", encoding="utf-8") as f:
            write(csv.writer(f))
        os.replace(f"{path}.final", path)


def run_seed(environment: Environment) -> int:
    seed = int(getattr(environment.parsed_options, "seed", 0) or 0)
    return seed or secrets.randbits(32)


def worker_share(environment: Environment) -> tuple[int, int]:
    """(index, count) of this process among the load generators: (0, 1) unless a worker of a
    distributed run, where ``--expect-workers`` (sent by the master) is the count."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return 0, 1
    count = int(getattr(environment.parsed_options, "expect_workers", 1) or 1)
    index = int(runner.worker_index)
    if index >= count:
        log.warning(
            "event=more_workers_than_expected index=%d expect_workers=%d: shards overlap",
            index,
            count,
        )
        count = index + 1
    return index, count


def is_reporting_node(environment: Environment) -> bool:
    """The process that prints the run's summary: the master, or the only process."""
    return not isinstance(environment.runner, WorkerRunner)


def is_master(environment: Environment) -> bool:
    return isinstance(environment.runner, MasterRunner)
