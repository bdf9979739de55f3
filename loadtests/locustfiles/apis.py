"""Steering and control-plane APIs, in a weighted mix. ``--host`` is the control plane,
``--steering`` the steering service.

Operations (``--mix NAME=WEIGHT,...``; a name left out weighs 0):

steering (content keys drawn by Zipf over ``--keys`` or ``--key-count`` synthetic keys, client
addresses drawn from ``--clients``):

* ``steer``: ``GET /v1/steer?key=K&client=IP``, the ranked answer the control plane asks for
  at every playback start (steering/app.py): a JSON object whose ``edges`` each name an edge
  and its URL;
* ``steering_hls``, ``steering_dash``: ``GET /v1/steering/hls`` and ``/dash``, the content
  steering manifests players reload every TTL, checked by steering/manifests.py's own strict
  parsers;
* ``fleet``: ``GET /fleet`` (every edge's health), ``steering_healthz``: ``GET /healthz``.

control plane (one session per account and load process, see accounts.py; titles drawn by Zipf
over the catalog's browse order, read once per process):

* ``home``: ``GET /v1/profiles/{id}/home``; ``browse``: ``GET /v1/titles`` (a page drawn by
  Zipf: the first pages are the most read); ``title``: ``GET /v1/titles/{id}``; ``search``:
  ``GET /v1/search`` with a word of a title's name (the answer must hold the title when it
  holds every match); ``autocomplete``: ``GET /v1/autocomplete`` with its first letters;
  ``genres``: ``GET /v1/genres``; ``control_healthz``: ``GET /healthz``.

Each user draws one operation per task. A mix without control operations needs no account, a
mix without steering ones no ``--steering``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The product (steering.manifests, edge.tokens) and this package, whatever the working directory.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import itertools  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from locust import FastHttpUser, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from loadtests.locustfiles.accounts import (  # noqa: E402
    Account,
    add_account_options,
    auth,
    forget_session_on_401,
    judge_json,
    load_accounts,
    page_shape,
    preload_accounts,
    sign_in,
)
from loadtests.locustfiles.catalog import Catalog, q  # noqa: E402
from loadtests.locustfiles.run import (  # noqa: E402
    abort_start,
    add_option,
    fail_usage,
    is_master,
    is_reporting_node,
    run_seed,
)
from loadtests.locustfiles.workload import (  # noqa: E402
    Weighted,
    Zipf,
    parse_mix,
    parse_seconds_range,
    random_address,
    search_word,
)
from steering.manifests import (  # noqa: E402
    SteeringError,
    parse_dash_steering,
    parse_hls_steering,
)

log = logging.getLogger("opencdn.loadtest.apis")

STEERING_OPS = ("steer", "steering_hls", "steering_dash", "fleet", "steering_healthz")
CONTROL_OPS = ("home", "browse", "title", "search", "autocomplete", "genres", "control_healthz")
DEFAULT_MIX = (
    "steer=20,steering_hls=5,steering_dash=2,fleet=1,steering_healthz=1,"
    "home=10,browse=4,title=8,search=8,autocomplete=6,genres=1,control_healthz=1"
)
BROWSE_PAGE = 20


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_account_options(parser)
    add_option(parser, "--steering", default="", help="the steering service's URL")
    add_option(parser, "--mix", default=DEFAULT_MIX, help="operation weights, 'NAME=W,...' "
               f"(operations: {', '.join(STEERING_OPS + CONTROL_OPS)})")  # fmt: skip
    add_option(parser, "--keys", default="", help="a file of content keys, one a line, most "
               "popular first (default: --key-count synthetic keys)")  # fmt: skip
    add_option(parser, "--key-count", type=int, default=1000, help="synthetic content keys "
               "(k000001...) when there is no --keys")  # fmt: skip
    add_option(parser, "--clients", default="203.0.113.0/24,198.51.100.0/24", help="CIDRs "
               "the steered client addresses are drawn from")  # fmt: skip
    add_option(parser, "--think-time", default="0", help="seconds a user waits between two "
               "operations, 'S' or 'LOW-HIGH'")  # fmt: skip
    add_option(parser, "--zipf", type=float, default=0.8, help="Zipf exponent of key and "
               "title popularity (0: uniform)")  # fmt: skip
    add_option(parser, "--catalog-size", type=int, default=1000, help="titles read from the "
               "catalog to draw from")  # fmt: skip


@dataclass(frozen=True)
class Config:
    steering: str
    mix: Weighted
    clients: tuple[str, ...]
    think: tuple[float, float]
    zipf: float
    catalog_size: int
    key_count: int
    keys_file: str

    @property
    def needs_steering(self) -> bool:
        return any(self.mix.weights.get(op, 0) > 0 for op in STEERING_OPS)

    @property
    def needs_control(self) -> bool:
        return any(self.mix.weights.get(op, 0) > 0 for op in CONTROL_OPS)


def config_from(o: Any) -> Config:
    import ipaddress

    clients = tuple(c.strip() for c in str(o.clients).split(",") if c.strip())
    for c in clients:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValueError(f"--clients: {c!r} is not a CIDR") from None
    cfg = Config(
        steering=str(o.steering or "").rstrip("/"),
        mix=Weighted(parse_mix(str(o.mix), STEERING_OPS + CONTROL_OPS)),
        clients=clients,
        think=parse_seconds_range(str(o.think_time), "--think-time"),
        zipf=float(o.zipf),
        catalog_size=int(o.catalog_size),
        key_count=int(o.key_count),
        keys_file=str(o.keys or ""),
    )
    if cfg.needs_steering and not cfg.steering:
        raise ValueError("the mix has steering operations: --steering URL is required")
    if cfg.needs_steering and not clients:
        raise ValueError("--clients: at least one CIDR")
    if cfg.zipf < 0 or cfg.catalog_size < 1 or cfg.key_count < 1:
        raise ValueError("--zipf must be >= 0, --catalog-size and --key-count >= 1")
    return cfg


def keys_from(cfg: Config) -> list[str]:
    if not cfg.keys_file:
        return [f"k{n:06d}" for n in range(1, cfg.key_count + 1)]
    try:
        text = Path(cfg.keys_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--keys {cfg.keys_file}: {exc.strerror or exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    if not keys:
        raise ValueError(f"--keys {cfg.keys_file}: no keys in it")
    return keys


class State:
    config: Config
    accounts: list[Account]
    catalog: Catalog
    keys: list[str]
    key_zipf: Zipf
    page_zipf = Zipf(50, 1.0)  # browse pages: the first is read far more than the fiftieth
    seed = 0
    error: str | None = "the test has not started"
    users = itertools.count()


STATE = State()


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    if is_reporting_node(environment) and environment.parsed_options is not None:
        try:
            config = config_from(environment.parsed_options)
        except ValueError as exc:
            fail_usage(str(exc))
        if config.needs_control:
            preload_accounts(environment, 1)


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    try:
        if environment.parsed_options is None or not environment.host:
            raise ValueError("--host (the control plane's URL) is required")
        cfg = config_from(environment.parsed_options)
        if is_master(environment):
            return  # the workers do the work: the master only adds up their stats
        keys = keys_from(cfg)
        accounts = load_accounts(environment, environment.host, 1) if cfg.needs_control else []
    except (ValueError, OSError) as exc:
        STATE.error = str(exc)
        abort_start(environment, STATE.error)
        return
    STATE.config, STATE.keys, STATE.accounts = cfg, keys, accounts
    STATE.key_zipf = Zipf(len(keys), cfg.zipf)
    STATE.catalog = Catalog(cfg.catalog_size, cfg.zipf)
    STATE.seed = run_seed(environment)
    STATE.users = itertools.count()
    STATE.error = None
    log.info(
        "event=apis_ready mix=%s keys=%d accounts=%d seed=%d",
        ",".join(f"{k}={v:g}" for k, v in cfg.mix.weights.items() if v),
        len(keys),
        len(accounts),
        STATE.seed,
    )


# -- answers -------------------------------------------------------------------------------


def _steer_shape(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("edges"), list) or not doc["edges"]:
        return "the steering answer ranks no edge"
    for e in doc["edges"]:
        if not isinstance(e, dict) or not isinstance(e.get("edge"), str) or "url" not in e:
            return "a ranked entry without edge or url"
    return None


def _manifest_shape(parse: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    def shape(doc: Any) -> str | None:
        try:
            parse(doc)
        except SteeringError as exc:
            return f"not a steering manifest a player accepts: {exc}"
        return None

    return shape


def _fleet_shape(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("edges"), list) or not doc["edges"]:
        return "the fleet answer lists no edge"
    return None


def _healthz_shape(key: str, ok: str) -> Callable[[Any], str | None]:
    def shape(doc: Any) -> str | None:
        if not isinstance(doc, dict) or doc.get(key) != ok:
            return f"healthz says {key}={doc.get(key) if isinstance(doc, dict) else doc!r}"
        return None

    return shape


class ApiClient(FastHttpUser):
    """One operation of the mix per task."""

    network_timeout = 30.0
    connection_timeout = 10.0

    rng: random.Random
    account: Account | None

    def wait_time(self) -> float:
        lo, hi = STATE.config.think
        return self.rng.uniform(lo, hi) if hi else 0.0

    def on_start(self) -> None:
        if STATE.error is not None:
            raise StopUser()
        n = next(STATE.users)
        self.rng = random.Random(f"{STATE.seed}:{n}")
        self.account = STATE.accounts[n % len(STATE.accounts)] if STATE.accounts else None

    @task
    def operation(self) -> None:
        op = STATE.config.mix.pick(self.rng)
        if op in CONTROL_OPS and op != "control_healthz":
            a = self.account
            assert a is not None
            if not sign_in(self, a) or not STATE.catalog.ensure(self, a):
                return
        getattr(self, f"op_{op}")()

    def fetch_json(
        self, url: str, name: str, shape: Callable[[Any], str | None], signed_in: bool = False
    ) -> Any:
        headers = auth(self.account) if signed_in and self.account is not None else {}
        with self.client.get(url, headers=headers, name=name, catch_response=True) as r:
            doc = judge_json(r, (200,), shape)
        if signed_in and self.account is not None:
            forget_session_on_401(self.account, r.status_code)
        return doc

    # -- steering ------------------------------------------------------------------------

    def _steering_query(self) -> str:
        key = STATE.keys[STATE.key_zipf.pick(self.rng)]
        client = random_address(self.rng, STATE.config.clients)
        return f"key={q(key)}&client={q(client)}"

    def op_steer(self) -> None:
        url = f"{STATE.config.steering}/v1/steer?{self._steering_query()}"
        self.fetch_json(url, "GET /v1/steer", _steer_shape)

    def op_steering_hls(self) -> None:
        url = f"{STATE.config.steering}/v1/steering/hls?{self._steering_query()}&base=cdn"
        self.fetch_json(url, "GET /v1/steering/hls", _manifest_shape(parse_hls_steering))

    def op_steering_dash(self) -> None:
        url = f"{STATE.config.steering}/v1/steering/dash?{self._steering_query()}&base=cdn"
        self.fetch_json(url, "GET /v1/steering/dash", _manifest_shape(parse_dash_steering))

    def op_fleet(self) -> None:
        self.fetch_json(f"{STATE.config.steering}/fleet", "GET /fleet", _fleet_shape)

    def op_steering_healthz(self) -> None:
        self.fetch_json(
            f"{STATE.config.steering}/healthz",
            "GET /healthz (steering)",
            _healthz_shape("state", "ok"),
        )

    # -- control plane -------------------------------------------------------------------

    def _profile(self) -> str:
        assert self.account is not None and self.account.profile_id is not None
        return self.account.profile_id

    def op_home(self) -> None:
        def rows(doc: Any) -> str | None:
            if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
                return "the home answer has no rows"
            return None

        self.fetch_json(
            f"/v1/profiles/{self._profile()}/home", "GET /v1/profiles/{id}/home", rows, True
        )

    def op_browse(self) -> None:
        offset = STATE.page_zipf.pick(self.rng) * BROWSE_PAGE
        total = len(STATE.catalog.titles)
        if offset >= total:  # a page past the catalog's end is a valid, empty answer, but
            offset = 0  # not one viewers ask: they page through what exists
        self.fetch_json(
            f"/v1/titles?profile_id={self._profile()}&limit={BROWSE_PAGE}&offset={offset}",
            "GET /v1/titles",
            page_shape,
            True,
        )

    def op_title(self) -> None:
        title = STATE.catalog.pick(self.rng)

        def same(doc: Any) -> str | None:
            if not isinstance(doc, dict) or doc.get("id") != title["id"]:
                return "the details are not the asked title's"
            return None

        self.fetch_json(
            f"/v1/titles/{q(title['id'])}?profile_id={self._profile()}",
            "GET /v1/titles/{id}",
            same,
            True,
        )

    def op_search(self) -> None:
        title = STATE.catalog.pick(self.rng)
        word = search_word(str(title["name"]), self.rng)

        def found(doc: Any) -> str | None:
            problem = page_shape(doc)
            if problem:
                return problem
            ids = {t.get("id") for t in doc["items"] if isinstance(t, dict)}
            if doc["total"] <= len(doc["items"]) and title["id"] not in ids:
                return f"searching {word!r} did not find the title {title['id']!r}"
            return None

        self.fetch_json(
            f"/v1/search?profile_id={self._profile()}&q={q(word)}&limit=20",
            "GET /v1/search",
            found,
            True,
        )

    def op_autocomplete(self) -> None:
        title = STATE.catalog.pick(self.rng)
        prefix = search_word(str(title["name"]), self.rng)[:3]

        def suggestions(doc: Any) -> str | None:
            if not isinstance(doc, dict) or not isinstance(doc.get("suggestions"), list):
                return "the autocomplete answer has no suggestions list"
            return None

        self.fetch_json(
            f"/v1/autocomplete?profile_id={self._profile()}&q={q(prefix)}",
            "GET /v1/autocomplete",
            suggestions,
            True,
        )

    def op_genres(self) -> None:
        self.fetch_json(
            f"/v1/genres?profile_id={self._profile()}", "GET /v1/genres", page_shape, True
        )

    def op_control_healthz(self) -> None:
        self.fetch_json("/healthz", "GET /healthz (control)", _healthz_shape("status", "ok"))
