"""What the three locustfiles share: options, thresholds, accounts and sessions, the catalog,
signed edge URLs and response checks.

Options. Every option is registered with ``events.init_command_line_parser`` and has an
environment variable ``LOCUST_<OPTION>`` (``--max-error-rate`` is ``LOCUST_MAX_ERROR_RATE``),
given explicitly (locust maps only its own options to variables). Options are read when a
test starts, not at import, so values typed in the web UI apply, and in distributed mode the
master's values reach the workers (locust sends custom options with every spawn message).

Thresholds. On ``events.quitting`` the master (or the single process) evaluates the run with
thresholds.py: overall error rate and the p95 of every request name. A broken threshold is
logged (``threshold failed: ...``) and sets ``environment.process_exit_code = 1``; a pass
never sets it, so locust's own ``--exit-code-on-error`` still applies to failed requests.

Accounts (viewers.py and apis.py). One of ``--accounts FILE`` (``email,password`` lines),
``--signup N`` (N accounts made at start, subscribed and paid for by an administrator), or
``--email`` with ``--password`` / ``--password-file`` (one account, e.g. the local fleet's
demo account). An account signs in once per load process; the users on it share the session
(the control plane keeps at most ``sessions.max_per_account`` sessions, 20 by default, per
account and signing in beyond that revokes the oldest). Sign-in and sign-up are rate limited
per client address and per account (control's ``rate_limits``); a 429 is recorded under its
own name (``... (429 rate limited)``, not a failure) and the request is retried after its
Retry-After.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import gevent
from gevent.lock import BoundedSemaphore, Semaphore
from locust import events
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from edge.tokens import SigningKeys, load_keys, sign, signed_path

from .thresholds import RATE_LIMITED, Row, Thresholds, evaluate, parse_default, parse_p95
from .workload import Zipf, parse_accounts, shard, streams_share

log = logging.getLogger("opencdn.loadtest")

MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is waited in steps of this
SIGNIN_ATTEMPTS = 20  # a 20th 429 in a row is a failure: the sign-in is given up
SETUP_ATTEMPTS = 100  # the same for set-up calls (sign-ups): then the test does not start
CATALOG_PAGE = 100  # GET /v1/titles' largest page


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


# -- responses -------------------------------------------------------------------------------


def error_of(body: bytes | None) -> str:
    """The control plane's ``{"error": {"code", "message"}}`` as ``code: message``, or the
    start of the body."""
    if not body:
        return ""
    try:
        err = json.loads(body).get("error")
        return f"{err['code']}: {err['message']}"[:200]
    except (ValueError, AttributeError, TypeError, KeyError):
        return body[:120].decode("utf-8", "replace")


def judge_json(
    r: Any,
    expect: tuple[int, ...] = (200,),
    shape: Callable[[Any], str | None] | None = None,
) -> Any:
    """Mark a catch_response ``r`` a success or a failure: the status must be in ``expect``
    and, unless it is a 204, the body a JSON document ``shape`` finds nothing wrong with (it
    answers what is wrong, or None). The document (``{}`` for a 204), or None on failure."""
    if r.status_code == 0:  # no answer: locust already holds the connection error
        r.failure(r.error if getattr(r, "error", None) else "no response")
        return None
    if r.status_code not in expect:
        r.failure(f"HTTP {r.status_code} {error_of(r.content)}".strip())
        return None
    if r.status_code == 204:
        r.success()
        return {}
    try:
        doc = json.loads(r.content or b"")
    except ValueError:
        r.failure(f"HTTP {r.status_code}: the body is not JSON")
        return None
    problem = shape(doc) if shape is not None else None
    if problem:
        r.failure(problem)
        return None
    r.success()
    return doc


def page_shape(doc: Any) -> str | None:
    """The one pagination shape of control's list endpoints."""
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        return "not a page: no items list"
    if not isinstance(doc.get("total"), int) or doc["total"] < len(doc["items"]):
        return "not a page: total is missing or below the items' count"
    return None


def retry_after(headers: Any) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.1, float(headers.get("Retry-After") or 1)))
    except (TypeError, ValueError):
        return 1.0


# -- accounts and sessions -------------------------------------------------------------------


def add_account_options(parser: Any) -> None:
    add_option(parser, "--email", default="", help="the account to sign in with")
    add_option(
        parser,
        "--password",
        default="",
        is_secret=True,
        help="its password (prefer --password-file or the variable: a command line is public)",
    )
    add_option(parser, "--password-file", default="", help="a file holding the password")
    add_option(
        parser,
        "--accounts",
        default="",
        help="a CSV file of 'email,password' lines: viewers are spread over them",
    )
    add_option(
        parser,
        "--signup",
        type=int,
        default=0,
        help="make this many accounts at start (sign-up is rate limited per address: 3 at "
        "once, then 1 per 20 s by default); needs --admin-email to pay their subscription",
    )
    add_option(
        parser,
        "--signup-domain",
        default="loadtest.opencdn.test",
        help="the e-mail domain of --signup accounts",
    )
    add_option(parser, "--plan", default="premium", help="the plan --signup accounts take")
    add_option(
        parser,
        "--admin-email",
        default="",
        help="an administrator who marks --signup accounts' invoices paid",
    )
    add_option(
        parser,
        "--admin-password-file",
        default="",
        help="the administrator's password file (or LOCUST_ADMIN_PASSWORD)",
    )
    add_option(parser, "--admin-password", default="", is_secret=True, include_in_web_ui=False)
    add_option(
        parser,
        "--signup-save",
        default="",
        help="append the --signup accounts to this CSV, for --accounts in later runs",
    )


def _read_secret_file(path: str, what: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror or exc}") from None
    value = next((x.strip() for x in lines if x.strip()), "")
    if not value:
        raise ValueError(f"{what} {path} is empty")
    return value


@dataclass
class Account:
    email: str
    password: str
    streams: int = 4
    token: str | None = None
    profile_id: str | None = None
    lock: Semaphore = field(default_factory=Semaphore)  # one sign-in at a time
    slots: BoundedSemaphore = field(init=False)  # the plan's concurrent streams

    def __post_init__(self) -> None:
        self.slots = BoundedSemaphore(self.streams)


class Setup:
    """Plain HTTP for the set-up done once per process (sign-ups, manifests): not a user's
    traffic, so not in the stats. urllib is cooperative here (locust patched the sockets)."""

    def __init__(self, base: str, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw, status, headers = r.read(), r.status, r.headers
        except urllib.error.HTTPError as exc:
            raw, status, headers = exc.read(), exc.code, exc.headers
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return status, doc, headers

    def json(
        self, want: int, method: str, path: str, body: Any = None, token: str | None = None
    ) -> Any:
        """The answer of a call that must answer ``want``, waiting out 429s (sign-ups are
        limited to one per 20 s per address by default: a long wait is expected)."""
        for _ in range(SETUP_ATTEMPTS):
            status, doc, headers = self.call(method, path, body, token)
            if status == 429:
                wait = retry_after(headers)
                log.info("event=setup_rate_limited path=%s retry_after=%.1f", path, wait)
                gevent.sleep(wait)
                continue
            if status != want:
                raise ValueError(
                    f"{method} {self.base}{path} answered {status} "
                    f"{error_of(json.dumps(doc).encode() if doc else b'')}"
                )
            return doc
        raise ValueError(f"{method} {self.base}{path}: still rate limited, gave up")


def signup_accounts(control: str, options: Any, n: int, tag: str) -> list[tuple[str, str]]:
    """N new accounts on ``options.plan``, each invoice marked paid by the administrator."""
    admin_email = options.admin_email
    admin_pw = options.admin_password
    if options.admin_password_file:
        admin_pw = _read_secret_file(options.admin_password_file, "--admin-password-file")
    if not admin_email or not admin_pw:
        raise ValueError(
            "--signup needs --admin-email and --admin-password-file (or LOCUST_ADMIN_PASSWORD):"
            " a new account plays nothing until its first invoice is paid"
        )
    api = Setup(control)
    admin = api.json(201, "POST", "/v1/sessions", {"email": admin_email, "password": admin_pw})
    out = []
    for k in range(n):
        email = f"locust-{tag}-{k}@{options.signup_domain}"
        password = secrets.token_urlsafe(18)
        t0 = time.monotonic()
        doc = api.json(201, "POST", "/v1/accounts", {"email": email, "password": password})
        sub = api.json(201, "POST", "/v1/subscription", {"plan_id": options.plan}, doc["token"])
        invoice = sub.get("invoice") or {}
        if invoice.get("status") == "open":
            api.json(
                200,
                "POST",
                f"/v1/admin/invoices/{invoice['id']}/paid",
                {"reference": "locust load test"},
                admin["token"],
            )
        out.append((email, password))
        log.info("event=account_signed_up n=%d of=%d seconds=%.1f", k + 1, n, time.monotonic() - t0)
    if options.signup_save:
        with open(options.signup_save, "a", encoding="utf-8") as f:
            f.writelines(f"{e},{p}\n" for e, p in out)
    return out


_accounts: dict[tuple[Any, ...], list[Account]] = {}


def load_accounts(environment: Environment, control: str, streams: int) -> list[Account]:
    """The accounts this process uses (its shard in a distributed run). ValueError says what
    is missing or wrong.

    Made once per set of account options: the locustfiles call this at ``init`` already
    (``preload_accounts``), before locust starts the ``--run-time`` clock, so slow sign-ups
    (rate limited) do not eat the run; ``test_start`` then gets the same accounts."""
    o = environment.parsed_options
    index, count = worker_share(environment)
    key = (control, streams, index, count, o.accounts, o.signup, o.email, o.password_file)
    if key not in _accounts:
        _accounts[key] = _make_accounts(o, control, streams, index, count)
    return _accounts[key]


def preload_accounts(environment: Environment, streams: int) -> None:
    """At ``init``: the accounts of a standalone process, or exit 2 saying what is wrong. A
    worker gets its options from the master with the first spawn, so its accounts are made
    at ``test_start`` (sign-ups then count in the run time)."""
    if environment.host and not isinstance(environment.runner, WorkerRunner | MasterRunner):
        try:
            load_accounts(environment, environment.host, streams)
        except (ValueError, OSError) as exc:
            fail_usage(str(exc))
        refresh_loop_clock()


def _make_accounts(o: Any, control: str, streams: int, index: int, count: int) -> list[Account]:
    pairs: list[tuple[str, str]]
    if o.accounts:
        try:
            text = Path(o.accounts).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--accounts {o.accounts}: {exc.strerror or exc}") from None
        pairs = parse_accounts(text, o.accounts)
        if len(pairs) < count:
            raise ValueError(f"--accounts has {len(pairs)} accounts for {count} workers")
        pairs = shard(pairs, index, count)
    elif int(o.signup or 0):
        if int(o.signup) < 1:
            raise ValueError("--signup must be at least 1")
        # Unique per run and worker: sign-up refuses an address that has an account.
        tag = f"{int(time.time())}-{secrets.token_hex(3)}-w{index}"
        pairs = signup_accounts(control, o, int(o.signup), tag)
    elif o.email:
        password = o.password
        if o.password_file:
            password = _read_secret_file(o.password_file, "--password-file")
        if not password:
            raise ValueError("--email needs --password-file or --password (LOCUST_PASSWORD)")
        # Every worker plays on this one account: each takes its part of the plan's streams.
        share = streams_share(streams, index, count)
        if share == 0:
            raise ValueError(
                f"{count} workers on one account of {streams} streams: give --accounts"
            )
        return [Account(o.email, password, share)]
    else:
        raise ValueError(
            "no account: give --accounts FILE, --signup N, or --email with --password-file"
        )
    return [Account(e, p, streams) for e, p in pairs]


def sign_in(user: Any, account: Account) -> bool:
    """The account's session (signed in once per process; users on it share it) and its first
    profile. False when that failed (recorded as a failure)."""
    with account.lock:
        if account.token is None and not _post_session(user, account):
            return False
        if account.profile_id is not None:
            return True
        with user.client.get(
            "/v1/profiles?limit=1",
            headers=auth(account),
            name="GET /v1/profiles",
            catch_response=True,
        ) as r:
            doc = judge_json(r, (200,), _profiles_shape)
        if doc is None:
            forget_session_on_401(account, r.status_code)
            return False
        account.profile_id = doc["items"][0]["id"]
        return True


def _post_session(user: Any, account: Account) -> bool:
    for attempt in range(1, SIGNIN_ATTEMPTS + 1):
        with user.client.post(
            "/v1/sessions",
            json={"email": account.email, "password": account.password, "device": "locust"},
            name="POST /v1/sessions",
            catch_response=True,
        ) as r:
            if r.status_code == 429 and attempt < SIGNIN_ATTEMPTS:
                # The limiter doing its job: counted apart, waited out, tried again.
                r.request_meta["name"] = "POST /v1/sessions" + RATE_LIMITED
                r.success()
                wait = retry_after(r.headers)
            else:
                doc = judge_json(r, (201,), _session_shape)
                if doc is None:
                    return False
                account.token = doc["token"]
                return True
        gevent.sleep(wait)
    return False  # not reached: the last attempt is judged above


def _session_shape(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("token"), str) or not doc["token"]:
        return "the sign-in answer has no token"
    return None


def _profiles_shape(doc: Any) -> str | None:
    problem = page_shape(doc)
    if problem:
        return problem
    if not doc["items"] or not isinstance(doc["items"][0].get("id"), str):
        return "the account has no profile"
    return None


def auth(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.token}"}


def forget_session_on_401(account: Account, status: int) -> None:
    """A revoked or expired session: the next request signs in again."""
    if status == 401:
        account.token = None
        account.profile_id = None


# -- the catalog -----------------------------------------------------------------------------


class Catalog:
    """The titles in browse order (most popular first), read once per process by the first user
    that needs them, up to ``limit`` titles; the Zipf ranks of title popularity."""

    def __init__(self, limit: int, alpha: float) -> None:
        self.limit = limit
        self.alpha = alpha
        self.titles: list[dict[str, Any]] = []
        self.zipf: Zipf | None = None
        self._lock = Semaphore()

    def ensure(self, user: Any, account: Account) -> bool:
        with self._lock:
            if self.titles:
                return True
            titles: list[dict[str, Any]] = []
            while len(titles) < self.limit:
                size = min(CATALOG_PAGE, self.limit - len(titles))
                with user.client.get(
                    f"/v1/titles?profile_id={account.profile_id}&limit={size}&offset={len(titles)}",
                    headers=auth(account),
                    name="GET /v1/titles",
                    catch_response=True,
                ) as r:
                    doc = judge_json(r, (200,), _titles_shape)
                    if doc is not None and not titles and not doc["items"]:
                        r.failure("the catalog is empty: nothing to watch")
                        return False
                if doc is None:
                    forget_session_on_401(account, r.status_code)
                    return False
                titles += doc["items"]
                if len(doc["items"]) < size or len(titles) >= doc["total"]:
                    break
            self.titles = titles
            self.zipf = Zipf(len(titles), self.alpha)
            log.info("event=catalog_read titles=%d zipf_alpha=%g", len(titles), self.alpha)
            return True

    def pick(self, rng: random.Random) -> dict[str, Any]:
        assert self.zipf is not None
        return self.titles[self.zipf.pick(rng)]


def _titles_shape(doc: Any) -> str | None:
    problem = page_shape(doc)
    if problem:
        return problem
    for t in doc["items"]:
        if not isinstance(t, dict) or not isinstance(t.get("id"), str) or "name" not in t:
            return "a title card without id or name"
    return None


def q(text: str) -> str:
    return quote(text, safe="")


# -- signed edge URLs ------------------------------------------------------------------------


class Signer:
    """Edge URL tokens made by the product's own edge/tokens.py (``sign``, ``signed_path``),
    one per title prefix ``/v/<title>/`` as the control plane makes them, re-signed when half
    of ``ttl`` has passed so a long run never sends an expired token."""

    def __init__(self, keys: SigningKeys, ttl: int) -> None:
        self.keys = keys
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_file(cls, path: str, ttl: int) -> Signer:
        return cls(load_keys(Path(path)), ttl)

    @staticmethod
    def prefix_of(path: str) -> str:
        parts = path.split("/")
        if len(parts) < 4 or parts[0] != "" or parts[1] != "v" or not parts[2]:
            raise ValueError(f"{path!r} is not /v/<title>/<file>")
        return f"/v/{parts[2]}/"

    def path(self, object_path: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        prefix = self.prefix_of(object_path)
        token, expires = self._tokens.get(prefix, ("", 0))
        if expires - now < self.ttl / 2:
            expires = int(now) + self.ttl
            token = sign(self.keys, prefix, expires)
            self._tokens[prefix] = (token, expires)
        return signed_path(token, object_path)
