"""Accounts and sessions (viewers.py and apis.py), and the answers' checks.

One of ``--accounts FILE`` (``email,password`` lines), ``--signup N`` (N accounts made at
start, subscribed and paid for by an administrator), or ``--email`` with ``--password`` /
``--password-file`` (one account, e.g. the local fleet's demo account). An account signs in
once per load process; the users on it share the session (the control plane keeps at most
``sessions.max_per_account`` sessions, 20 by default, per account and signing in beyond that
revokes the oldest). Sign-in and sign-up are rate limited per client address and per account
(control's ``rate_limits``); a 429 is recorded under its own name (``... (429 rate
limited)``, not a failure) and the request is retried after its Retry-After.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore, Semaphore
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from .run import add_option, fail_usage, refresh_loop_clock, worker_share
from .thresholds import RATE_LIMITED
from .workload import parse_accounts, shard, streams_share

log = logging.getLogger("opencdn.loadtest")

MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is waited in steps of this
SIGNIN_ATTEMPTS = 20  # a 20th 429 in a row is a failure: the sign-in is given up
SETUP_ATTEMPTS = 100  # the same for set-up calls (sign-ups): then the test does not start


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
