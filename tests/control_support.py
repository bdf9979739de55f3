"""Fixtures for the control plane: a live service on 127.0.0.1 over SQLite and PostgreSQL.

``control_db_url`` is parametrised over both backends, so every test that starts a control
plane runs twice. PostgreSQL is the machine's server on loopback (override with
OPENCDN_TEST_POSTGRES); each test gets its own schema, dropped afterwards. Without a reachable
server the PostgreSQL case skips with the reason, except under CI=true where it fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from aiohttp import web

PG_ADMIN_URL = os.environ.get("OPENCDN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "correct horse battery staple"


class FakeClock:
    """Wall time the test controls (starts at a fixed, realistic instant)."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", "postgresql"])
def control_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN_URL} under CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    schema = "t_" + secrets.token_hex(6)
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield _pg_schema_url(schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


class Api:
    """A thin JSON client: ``await api.call("POST", "/v1/x", json=..., token=...)``."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Reply:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.base + path, json=json, data=data, headers=h, params=params
        ) as r:
            raw = await r.read()
            body: Any = raw.decode("utf-8", "replace")
            if r.content_type == "application/json" and raw:
                body = await r.json()
            return Reply(r.status, body, r.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> Reply:
        return await self.call("PUT", path, **kw)

    async def patch(self, path: str, **kw: Any) -> Reply:
        return await self.call("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)


@dataclass
class User:
    email: str
    password: str
    token: str
    account_id: str
    profile_id: str  # the first profile, made at sign-up


@dataclass
class RunningControl:
    url: str
    app: web.Application
    runner: web.AppRunner
    clock: FakeClock
    api: Api
    config: Any
    users: int = field(default=0)

    @property
    def control(self) -> Any:
        from control.app import CONTROL

        return self.app[CONTROL]

    def counter(self, name: str, *labels: str) -> int:
        return int(self.control.metrics.value(name, *labels))

    async def signup(self, email: str | None = None, password: str = PASSWORD) -> User:
        self.users += 1
        email = email or f"user{self.users}-{secrets.token_hex(3)}@example.com"
        r = await self.api.post("/v1/accounts", json={"email": email, "password": password})
        assert r.status == 201, r
        return User(
            email, password, r.body["token"], r.body["account"]["id"], r.body["profile"]["id"]
        )

    async def admin(self) -> User:
        """An administrator, created as the CLI does (``python -m control create-admin``)."""
        self.users += 1
        email = f"admin{self.users}@example.com"
        account = await self.control.accounts.create_account(email, PASSWORD, role="admin")
        r = await self.api.post("/v1/sessions", json={"email": email, "password": PASSWORD})
        assert r.status == 201, r
        return User(email, PASSWORD, r.body["token"], account.id, "")

    async def subscriber(self, plan: str = "standard") -> User:
        """A signed-up user with a paid, active subscription to ``plan``."""
        user = await self.signup()
        r = await self.api.post("/v1/subscription", json={"plan_id": plan}, token=user.token)
        assert r.status == 201, r
        await self.control.billing.mark_paid(r.body["invoice"]["id"], reference="test")
        return user


def control_settings(db_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A config document for tests: fast KDF, loopback, rate limits on (tests may loosen)."""
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "database": {"url": db_url, "pool_min": 1, "pool_max": 4},
        "kdf": {"n": 2, "r": 1, "p": 1},
        # Sign-in limits stay at their defaults; sign-ups are loosened so a test can make
        # many users from one address (tests of the sign-up limit set it themselves).
        "rate_limits": {"signup_per_address": {"rate": 100, "burst": 1000}},
        "recommend": {"interval": 0},
        "log_level": "debug",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


async def start_control_app(config: Any, clock: FakeClock) -> tuple[web.AppRunner, str]:
    from control.app import create_app

    runner = web.AppRunner(create_app(config, clock=clock), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def start_control(
    control_db_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[RunningControl]]]:
    """``rc = await start_control(**config_overrides)``: a live control plane on loopback."""
    from control.config import load_config

    running: list[RunningControl] = []
    session = aiohttp.ClientSession()
    count = 0

    async def start(clock: FakeClock | None = None, **overrides: Any) -> RunningControl:
        nonlocal count
        count += 1
        path = tmp_path / f"control{count}.yaml"
        path.write_text(yaml.safe_dump(control_settings(control_db_url, tmp_path, **overrides)))
        config = load_config(path)
        clock = clock or FakeClock()
        runner, url = await start_control_app(config, clock)
        rc = RunningControl(url, runner.app, runner, clock, Api(session, url), config)
        running.append(rc)
        return rc

    try:
        yield start
    finally:
        for rc in reversed(running):
            await rc.runner.cleanup()
        await session.close()
