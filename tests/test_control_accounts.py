"""Accounts over HTTP on both backends: sign-up, sign-in and out, sessions (expiry, revocation,
cap), password change, rate limits (per client address, through trusted proxies, and per
e-mail), profiles (caps, ownership, concurrency), roles, and the handling of hostile input."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from typing import Any

import pytest

from control import auth
from control.clients import forwarded_client
from control.config import RateConfig
from tests.control_support import PASSWORD

UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "wrong e-mail or password"}}
NO_LIMITS = {"enabled": False}


def fields_of(r: Any) -> dict[str, str]:
    assert r.status == 400, r
    assert r.body["error"]["code"] == "bad_request", r
    return dict(r.body["error"].get("details", {}).get("fields", {}))


# -- sign-up and sign-in ------------------------------------------------------------------


async def test_signup_signs_in_and_makes_the_first_profile(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.post(
        "/v1/accounts", json={"email": "  Alice.B+tv@Example.COM ", "password": PASSWORD}
    )
    assert r.status == 201, r
    body = r.body
    assert set(body) == {"account", "token", "expires_at", "profile"}
    assert body["account"]["email"] == "alice.b+tv@example.com"
    assert body["account"]["role"] == "user"
    assert body["expires_at"] == rc.clock.now + rc.config.sessions.ttl
    assert body["profile"] == {
        "id": body["profile"]["id"],
        "name": "alice.b+tv",
        "maturity_limit": 18,
        "kids": False,
        "created_at": rc.clock.now,
    }
    token = body["token"]
    r = await rc.api.get("/v1/account", token=token)
    assert r.status == 200, r
    assert r.body == body["account"]
    r = await rc.api.get("/v1/profiles", token=token)
    assert r.status == 200
    assert r.body == {"items": [body["profile"]], "total": 1, "offset": 0, "limit": 20}
    assert rc.counter("control_signups", "ok") == 1
    # Only the digest is stored.
    row = await rc.control.db.fetchone("SELECT token_hash FROM sessions")
    assert row["token_hash"] == auth.token_digest(token) != token

    r = await rc.api.post(
        "/v1/accounts", json={"email": "bob@example.com", "password": PASSWORD, "name": "Bob"}
    )
    assert r.status == 201, r
    assert r.body["profile"]["name"] == "Bob"


async def test_signup_with_a_taken_address_is_a_conflict(start_control: Any) -> None:
    rc = await start_control()
    await rc.signup("carol@example.com")
    for spelling in ("carol@example.com", "CAROL@example.com "):
        r = await rc.api.post("/v1/accounts", json={"email": spelling, "password": "other pass 1"})
        assert r.status == 409, r
        assert r.body == {
            "error": {"code": "conflict", "message": "cannot create an account with these details"}
        }
    assert rc.counter("control_signups", "exists") == 2
    # The existing account's password is untouched.
    r = await rc.api.post("/v1/sessions", json={"email": "carol@example.com", "password": PASSWORD})
    assert r.status == 201


async def test_signin_failures_are_indistinguishable(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup("dave@example.com")
    r = await rc.api.post(
        "/v1/sessions",
        json={"email": "DAVE@example.com", "password": PASSWORD, "device": "living room tv"},
    )
    assert r.status == 201, r
    assert set(r.body) == {"account", "token", "expires_at"}
    assert r.body["account"]["id"] == user.account_id
    assert r.body["token"] != user.token

    wrong = await rc.api.post(
        "/v1/sessions", json={"email": "dave@example.com", "password": "wrong password"}
    )
    unknown = await rc.api.post(
        "/v1/sessions", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    short = await rc.api.post("/v1/sessions", json={"email": "dave@example.com", "password": "x"})
    for reply in (wrong, unknown, short):
        assert reply.status == 401, reply
        assert reply.body == UNAUTHORIZED
    assert wrong.headers.get("Content-Type") == unknown.headers.get("Content-Type")
    assert rc.counter("control_signins", "ok") == 1
    assert rc.counter("control_signins", "bad_credentials") == 3


async def test_signin_rehashes_a_password_hashed_with_other_parameters(
    start_control: Any,
) -> None:
    rc = await start_control()
    user = await rc.signup()
    old = auth.hash_password(PASSWORD, params=auth.KdfParams(n=4, r=1, p=1))
    await rc.control.db.execute(
        "UPDATE accounts SET password_hash = ? WHERE id = ?", (old, user.account_id)
    )
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    assert r.status == 201, r
    row = await rc.control.db.fetchone(
        "SELECT password_hash FROM accounts WHERE id = ?", (user.account_id,)
    )
    assert row["password_hash"] != old
    assert row["password_hash"].startswith("scrypt$2$1$1$")
    assert not auth.needs_rehash(row["password_hash"], rc.config.kdf)
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    assert r.status == 201


async def test_create_account_for_the_cli(start_control: Any) -> None:
    from control.errors import BadRequest, Conflict

    rc = await start_control()
    account = await rc.control.accounts.create_account("Root@Example.com", PASSWORD, role="admin")
    assert (account.email, account.role) == ("root@example.com", "admin")
    assert len(await rc.control.accounts.profiles_of(account.id)) == 1
    # The CLI prints .message alone: it must read well on its own (no "invalid body: ",
    # no doubled words) and, for an operator, say plainly that the address is taken.
    with pytest.raises(Conflict) as conflict:
        await rc.control.accounts.create_account(" ROOT@example.com", PASSWORD)
    assert conflict.value.message == "an account with this e-mail already exists"
    with pytest.raises(BadRequest) as bad:
        await rc.control.accounts.create_account("not-an-address", PASSWORD)
    assert bad.value.message == "e-mail address must contain exactly one '@'"
    assert set(bad.value.details["fields"]) == {"email"}
    with pytest.raises(BadRequest) as bad:
        await rc.control.accounts.create_account("x@example.com", "short")
    assert bad.value.message == "password must be at least 8 characters"
    assert bad.value.details == {"fields": {"password": "must be at least 8 characters"}}
    with pytest.raises(BadRequest) as bad:
        await rc.control.accounts.create_account("x@example.com", "p" * 1025)
    assert bad.value.message == "password must be at most 1024 characters"
    with pytest.raises(BadRequest) as bad:
        await rc.control.accounts.create_account("x@example.com", PASSWORD, role="root")
    assert bad.value.message == "role must be one of user, admin"
    assert (
        await rc.control.db.fetchone("SELECT id FROM accounts WHERE email = ?", ("x@example.com",))
        is None
    )
    # The HTTP sign-up keeps its uniform answer for a taken address.
    r = await rc.api.post("/v1/accounts", json={"email": "root@example.com", "password": PASSWORD})
    assert r.body["error"]["message"] == "cannot create an account with these details"


# -- sessions -----------------------------------------------------------------------------


async def test_a_session_expires_after_its_ttl(start_control: Any) -> None:
    rc = await start_control(sessions={"ttl": "1h"})
    user = await rc.signup()
    rc.clock.advance(3599)
    assert (await rc.api.get("/v1/account", token=user.token)).status == 200
    rc.clock.advance(1)
    r = await rc.api.get("/v1/account", token=user.token)
    assert r.status == 401
    assert r.body["error"]["code"] == "unauthorized"


BAD_AUTHORIZATION = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Bearer not-a-token",
    "Bearer " + "x" * 5000,
    "Bearer \u00e9\u00e9",
]


async def test_requests_without_a_valid_token_are_401(start_control: Any) -> None:
    rc = await start_control()
    for header in BAD_AUTHORIZATION:
        headers = {} if header is None else {"Authorization": header}
        for method, path in (
            ("GET", "/v1/account"),
            ("GET", "/v1/profiles"),
            ("DELETE", "/v1/sessions/current"),
            ("DELETE", "/v1/sessions"),
            ("PUT", "/v1/admin/accounts/abc/role"),
        ):
            r = await rc.api.call(method, path, headers=headers)
            assert r.status == 401, (header, method, path, r)
            assert r.body["error"]["code"] == "unauthorized"


async def test_signout_ends_only_this_session(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    phone = r.body["token"]
    r = await rc.api.delete("/v1/sessions/current", token=user.token)
    assert r.status == 204
    assert r.body == ""
    assert (await rc.api.get("/v1/account", token=user.token)).status == 401
    assert (await rc.api.get("/v1/account", token=phone)).status == 200
    assert (await rc.api.delete("/v1/sessions/current", token=user.token)).status == 401
    assert rc.counter("control_sessions_revoked", "signout") == 1


async def test_signout_everywhere_ends_every_device(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    other = await rc.signup()
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    phone = r.body["token"]
    assert (await rc.api.delete("/v1/sessions", token=phone)).status == 204
    for token in (user.token, phone):
        assert (await rc.api.get("/v1/account", token=token)).status == 401
    assert (await rc.api.get("/v1/account", token=other.token)).status == 200
    assert rc.counter("control_sessions_revoked", "signout_all") == 2
    # Signing in again works.
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    assert r.status == 201
    assert (await rc.api.get("/v1/account", token=r.body["token"])).status == 200


async def test_signing_in_beyond_the_session_cap_ends_the_oldest(start_control: Any) -> None:
    rc = await start_control(sessions={"max_per_account": 2})
    user = await rc.signup()  # session 1
    tokens = [user.token]
    for _ in range(2):
        rc.clock.advance(1)
        r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
        assert r.status == 201, r
        tokens.append(r.body["token"])
    statuses = [(await rc.api.get("/v1/account", token=t)).status for t in tokens]
    assert statuses == [401, 200, 200]
    assert rc.counter("control_sessions_revoked", "session_cap") == 1


async def test_concurrent_signins_keep_the_session_cap(start_control: Any) -> None:
    rc = await start_control(sessions={"max_per_account": 3}, rate_limits=NO_LIMITS)
    user = await rc.signup()
    replies = await asyncio.gather(
        *(
            rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
            for _ in range(8)
        )
    )
    assert all(r.status == 201 for r in replies), replies
    live = await rc.control.db.fetchone(
        "SELECT COUNT(*) AS n FROM sessions WHERE account_id = ? AND revoked_at IS NULL",
        (user.account_id,),
    )
    assert live["n"] == 3


async def test_password_change_keeps_this_session_and_ends_the_others(
    start_control: Any,
) -> None:
    rc = await start_control()
    user = await rc.signup()
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    phone = r.body["token"]
    new = "a new and long password"

    r = await rc.api.put(
        "/v1/account/password",
        json={"current_password": "not the password", "new_password": new},
        token=user.token,
    )
    assert fields_of(r) == {"current_password": "is wrong"}
    r = await rc.api.put(
        "/v1/account/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        token=user.token,
    )
    assert fields_of(r) == {"new_password": "must be at least 8 characters"}
    assert r.body["error"]["message"] == "invalid body: new_password must be at least 8 characters"
    assert (await rc.api.get("/v1/account", token=phone)).status == 200

    r = await rc.api.put(
        "/v1/account/password",
        json={"current_password": PASSWORD, "new_password": new},
        token=user.token,
    )
    assert r.status == 204, r
    assert (await rc.api.get("/v1/account", token=user.token)).status == 200
    assert (await rc.api.get("/v1/account", token=phone)).status == 401
    assert rc.counter("control_sessions_revoked", "password_change") == 1
    # Checking the current password drew on the account's sign-in bucket; let it refill.
    rc.clock.advance(60)
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    assert r.status == 401
    assert r.body == UNAUTHORIZED
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": new})
    assert r.status == 201


# -- rate limits --------------------------------------------------------------------------


async def test_signin_is_limited_per_address(start_control: Any) -> None:
    rc = await start_control(
        rate_limits={"signin_per_address": {"rate": 0.5, "burst": 2}},
    )
    user = await rc.signup()
    body = {"email": user.email, "password": PASSWORD}
    assert (await rc.api.post("/v1/sessions", json=body)).status == 201
    assert (await rc.api.post("/v1/sessions", json={**body, "password": "wrong one"})).status == 401
    r = await rc.api.post("/v1/sessions", json=body)
    assert r.status == 429, r
    assert r.body["error"]["code"] == "rate_limited"
    assert r.body["error"]["details"]["retry_after"] == 2.0
    assert r.headers["Retry-After"] == "2"
    # Another address (account) from the same client is refused too.
    r = await rc.api.post("/v1/sessions", json={"email": "x@example.com", "password": PASSWORD})
    assert r.status == 429
    assert rc.counter("control_rate_limited", "signin_per_address") == 2
    assert rc.counter("control_signins", "rate_limited") == 2
    rc.clock.advance(2)
    assert (await rc.api.post("/v1/sessions", json=body)).status == 201


async def test_signin_is_limited_per_account_whether_or_not_it_exists(
    start_control: Any,
) -> None:
    rc = await start_control(
        rate_limits={"signin_per_account": {"rate": 0.1, "burst": 2}},
    )
    user = await rc.signup()
    outcomes: dict[str, list[Any]] = {}
    for email in (user.email, "ghost@example.com"):
        replies = [
            await rc.api.post("/v1/sessions", json={"email": email, "password": "bad password"})
            for _ in range(3)
        ]
        outcomes[email] = [(r.status, r.body, r.headers.get("Retry-After")) for r in replies]
    assert outcomes[user.email] == outcomes["ghost@example.com"]
    assert [o[0] for o in outcomes[user.email]] == [401, 401, 429]
    assert outcomes[user.email][2][2] == "10"
    # The right password is refused too while the account's bucket is empty, and case
    # variants of the address share the bucket.
    r = await rc.api.post("/v1/sessions", json={"email": user.email.upper(), "password": PASSWORD})
    assert r.status == 429
    # Other accounts are not affected.
    other = await rc.signup()
    r = await rc.api.post("/v1/sessions", json={"email": other.email, "password": PASSWORD})
    assert r.status == 201
    assert rc.counter("control_rate_limited", "signin_per_account") == 3
    rc.clock.advance(10)
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
    assert r.status == 201


async def test_signup_is_limited_per_address(start_control: Any) -> None:
    rc = await start_control(rate_limits={"signup_per_address": {"rate": 0.25, "burst": 2}})
    await rc.signup()
    await rc.signup()
    r = await rc.api.post("/v1/accounts", json={"email": "e@example.com", "password": PASSWORD})
    assert r.status == 429, r
    assert r.headers["Retry-After"] == "4"
    assert rc.counter("control_signups", "rate_limited") == 1
    assert rc.counter("control_rate_limited", "signup_per_address") == 1
    rc.clock.advance(4)
    r = await rc.api.post("/v1/accounts", json={"email": "e@example.com", "password": PASSWORD})
    assert r.status == 201, r


async def test_signup_is_limited_per_account_whether_or_not_it_exists(
    start_control: Any,
) -> None:
    rc = await start_control(rate_limits={"signup_per_account": {"rate": 0.1, "burst": 2}})
    await rc.control.accounts.create_account("taken@example.com", PASSWORD)
    outcomes: dict[str, list[Any]] = {}
    for email in ("taken@example.com", "new@example.com"):
        replies = [
            await rc.api.post(
                "/v1/accounts", json={"email": spelling, "password": PASSWORD}
            )  # spellings of one address share a bucket
            for spelling in (email, email.upper(), f" {email} ")
        ]
        outcomes[email] = [(r.status, r.headers.get("Retry-After")) for r in replies]
    assert outcomes == {
        "taken@example.com": [(409, None), (409, None), (429, "10")],
        "new@example.com": [(201, None), (409, None), (429, "10")],
    }
    assert rc.counter("control_rate_limited", "signup_per_account") == 2
    assert rc.counter("control_signups", "rate_limited") == 2
    # Other addresses, from the same client, are not affected; invalid requests take nothing.
    r = await rc.api.post("/v1/accounts", json={"email": "taken@example.com", "password": "x"})
    assert r.status == 400
    await rc.signup()
    rc.clock.advance(10)
    r = await rc.api.post("/v1/accounts", json={"email": "taken@example.com", "password": PASSWORD})
    assert r.status == 409
    r = await rc.api.post("/v1/accounts", json={"email": "taken@example.com", "password": PASSWORD})
    assert r.status == 429


async def test_the_default_signup_limit_per_account(start_control: Any) -> None:
    rc = await start_control()
    assert rc.config.rate_limits.signup_per_account == RateConfig(0.01, 3)
    body = {"email": "probe@example.com", "password": PASSWORD}
    statuses = [(await rc.api.post("/v1/accounts", json=body)).status for _ in range(4)]
    assert statuses == [201, 409, 409, 429]
    rc.clock.advance(100)
    assert (await rc.api.post("/v1/accounts", json=body)).status == 409


async def test_per_address_limits_key_on_the_client_behind_a_trusted_proxy(
    start_control: Any,
) -> None:
    limits = {
        "signup_per_address": {"rate": 0.1, "burst": 1},
        "signin_per_address": {"rate": 0.1, "burst": 1},
    }
    rc = await start_control(rate_limits=limits, trusted_proxies=["127.0.0.0/8", "::1"])

    async def signup(xff: str | None) -> int:
        headers = {} if xff is None else {"X-Forwarded-For": xff}
        body = {"email": f"u{rc.users}@example.com", "password": PASSWORD}
        rc.users += 1
        return (await rc.api.post("/v1/accounts", json=body, headers=headers)).status

    # Each client behind the proxy (this test's 127.0.0.1) has its own bucket.
    assert await signup("198.51.100.1") == 201
    assert await signup("198.51.100.2") == 201
    assert await signup("198.51.100.1") == 429
    # The right-most untrusted entry is the client: what a client wrote left of it, or in a
    # second header line before the proxy's, does not give it a fresh bucket.
    assert await signup("203.0.113.9, 198.51.100.1") == 429
    assert await signup("198.51.100.1, 127.0.0.2") == 429  # a trusted hop is skipped
    assert await signup("[2001:db8::7]:4711") == 201
    assert await signup("2001:db8::7") == 429
    assert rc.counter("control_rate_limited", "signup_per_address") == 4
    # Sign-in too.
    body = {"email": "nobody@example.com", "password": PASSWORD}
    r = await rc.api.post("/v1/sessions", json=body, headers={"X-Forwarded-For": "192.0.2.1"})
    assert r.status == 401
    r = await rc.api.post("/v1/sessions", json=body, headers={"X-Forwarded-For": "192.0.2.1"})
    assert r.status == 429
    r = await rc.api.post("/v1/sessions", json=body, headers={"X-Forwarded-For": "192.0.2.2"})
    assert r.status == 401


async def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(start_control: Any) -> None:
    rc = await start_control(rate_limits={"signup_per_address": {"rate": 0.1, "burst": 1}})
    assert rc.config.trusted_proxies == ()
    ok = await rc.api.post(
        "/v1/accounts",
        json={"email": "a@example.com", "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.1"},
    )
    assert ok.status == 201
    # Another claimed address from the same peer: the same (peer's) bucket.
    r = await rc.api.post(
        "/v1/accounts",
        json={"email": "b@example.com", "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.2"},
    )
    assert r.status == 429


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ff::/48")]


@pytest.mark.parametrize(
    ("remote", "xff", "client"),
    [
        # Not from a trusted proxy: the peer, whatever the header says.
        ("198.51.100.1", ["203.0.113.5"], "198.51.100.1"),
        ("198.51.100.1", [], "198.51.100.1"),
        ("::ffff:198.51.100.1", ["203.0.113.5"], "198.51.100.1"),
        # From a trusted proxy: the right-most entry that is not a trusted proxy.
        ("10.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.5"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.5, 10.2.3.4"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1", "203.0.113.5, 10.2.3.4"], "203.0.113.5"),  # two lines
        ("10.0.0.1", ["203.0.113.5:4711"], "203.0.113.5"),
        ("10.0.0.1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("10.0.0.1", ["::ffff:203.0.113.5"], "203.0.113.5"),
        ("2001:db8:ff::1", ["2001:db8::5"], "2001:db8::5"),
        ("10.0.0.1", ["203.0.113.5, , "], "203.0.113.5"),  # empty elements: no hop
        # No header, or nothing to follow: the nearest hop we can vouch for.
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
        ("10.0.0.1", ["10.9.9.9, 10.0.0.2"], "10.9.9.9"),
        ("10.0.0.1", ["unknown"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.5, garbage, 10.0.0.7"], "10.0.0.7"),
        ("10.0.0.1", ["garbage, 203.0.113.5"], "203.0.113.5"),  # left of the client: unread
        # A peer that is no IP address (a Unix socket) or none at all.
        ("", ["203.0.113.5"], "unknown"),
        (None, [], "unknown"),
        ("/run/control.sock", ["203.0.113.5"], "/run/control.sock"),
    ],
)
def test_forwarded_client(remote: str | None, xff: list[str], client: str) -> None:
    assert forwarded_client(remote, xff, TRUSTED) == client


def test_forwarded_client_without_trusted_proxies() -> None:
    assert forwarded_client("10.0.0.1", ["203.0.113.5"], ()) == "10.0.0.1"


def test_trusted_proxies_configuration(tmp_path: Any) -> None:
    from control.config import ConfigError, load_config

    path = tmp_path / "control.yaml"
    path.write_text('trusted_proxies: ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.0.0.0/8"]\n')
    config = load_config(path)
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert load_config(None).trusted_proxies == ()
    for text, key in (
        ("trusted_proxies: 10.0.0.0/8\n", "trusted_proxies"),
        ("trusted_proxies: ['10.0.0.0/8', 'lan']\n", "trusted_proxies[1]"),
        ("trusted_proxies: ['10.0.0.1/8']\n", "trusted_proxies[0]"),  # host bits: a typo?
        ("trusted_proxies: [42]\n", "trusted_proxies[0]"),
        ("trusted_proxie: []\n", "trusted_proxie"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"{key}:")):
            load_config(path)
    path.write_text("rate_limits: {signup_per_account: {rate: 0}}\n")
    with pytest.raises(ConfigError, match=r"rate_limits\.signup_per_account\.rate"):
        load_config(path)


async def test_rate_limits_can_be_turned_off(start_control: Any) -> None:
    rc = await start_control(
        rate_limits={"enabled": False, "signin_per_address": {"rate": 0.01, "burst": 1}}
    )
    user = await rc.signup()
    for _ in range(4):
        r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": PASSWORD})
        assert r.status == 201


# -- profiles -----------------------------------------------------------------------------


async def test_profile_lifecycle(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    t = user.token
    rc.clock.advance(1)  # list order is creation order
    r = await rc.api.post("/v1/profiles", json={"name": "Kid", "kids": True}, token=t)
    assert r.status == 201, r
    kid = r.body
    rc.clock.advance(1)
    assert (kid["name"], kid["maturity_limit"], kid["kids"]) == ("Kid", 7, True)
    r = await rc.api.post(
        "/v1/profiles", json={"name": "Toddler", "kids": True, "maturity_limit": 3}, token=t
    )
    assert (r.body["maturity_limit"], r.body["kids"]) == (3, True)
    rc.clock.advance(1)
    r = await rc.api.post(
        "/v1/profiles", json={"name": "Teen", "kids": True, "maturity_limit": 16}, token=t
    )
    assert r.body["maturity_limit"] == 7
    rc.clock.advance(1)
    r = await rc.api.post("/v1/profiles", json={"name": "Grandpa", "maturity_limit": 12}, token=t)
    assert (r.body["maturity_limit"], r.body["kids"]) == (12, False)
    grandpa = r.body["id"]

    r = await rc.api.get(f"/v1/profiles/{kid['id']}", token=t)
    assert r.status == 200
    assert r.body == kid
    r = await rc.api.get("/v1/profiles", params={"offset": 1, "limit": 2}, token=t)
    assert r.body["total"] == 5
    assert [p["name"] for p in r.body["items"]] == ["Kid", "Toddler"]

    # PATCH: rename, maturity, kids flag (turning kids on caps the limit).
    r = await rc.api.patch(f"/v1/profiles/{grandpa}", json={"name": "Granddad"}, token=t)
    assert (r.status, r.body["name"], r.body["maturity_limit"]) == (200, "Granddad", 12)
    r = await rc.api.patch(f"/v1/profiles/{grandpa}", json={"kids": True}, token=t)
    assert (r.body["kids"], r.body["maturity_limit"]) == (True, 7)
    r = await rc.api.patch(
        f"/v1/profiles/{grandpa}", json={"kids": False, "maturity_limit": 18}, token=t
    )
    assert (r.body["kids"], r.body["maturity_limit"]) == (False, 18)
    r = await rc.api.patch(f"/v1/profiles/{grandpa}", json={}, token=t)
    assert r.status == 200
    assert (await rc.api.get(f"/v1/profiles/{grandpa}", token=t)).body == r.body

    # Name clashes.
    r = await rc.api.patch(f"/v1/profiles/{grandpa}", json={"name": "Kid"}, token=t)
    assert r.status == 409
    r = await rc.api.post("/v1/profiles", json={"name": "Kid"}, token=t)
    assert r.status == 409
    # The cap (5 by default).
    r = await rc.api.post("/v1/profiles", json={"name": "Sixth"}, token=t)
    assert r.status == 409
    assert r.body["error"]["code"] == "conflict"

    # Deleting, down to the last one.
    profiles = (await rc.api.get("/v1/profiles", token=t)).body["items"]
    for p in profiles[:-1]:
        r = await rc.api.delete(f"/v1/profiles/{p['id']}", token=t)
        assert r.status == 204, r
    last = profiles[-1]["id"]
    r = await rc.api.delete(f"/v1/profiles/{last}", token=t)
    assert r.status == 409
    assert (await rc.api.get(f"/v1/profiles/{profiles[0]['id']}", token=t)).status == 404
    assert [p.id for p in await rc.control.accounts.profiles_of(user.account_id)] == [last]


async def test_another_accounts_profile_is_not_found(start_control: Any) -> None:
    rc = await start_control()
    alice, bob = await rc.signup(), await rc.signup()
    from control.errors import NotFound

    for method, body in (("GET", None), ("PATCH", {"name": "Mallory"}), ("DELETE", None)):
        r = await rc.api.call(
            method, f"/v1/profiles/{alice.profile_id}", json=body, token=bob.token
        )
        assert r.status == 404, (method, r)
        assert r.body["error"]["code"] == "not_found"
        unknown = await rc.api.call(method, "/v1/profiles/nope", json=body, token=bob.token)
        assert unknown.body == r.body
    for bad in ("a" * 65, "bad.id", "%27%3B--", "%00"):
        r = await rc.api.get(f"/v1/profiles/{bad}", token=bob.token)
        assert r.status == 404, (bad, r)
    with pytest.raises(NotFound):
        await rc.control.accounts.get_profile(bob.account_id, alice.profile_id)
    p = await rc.control.accounts.get_profile(alice.account_id, alice.profile_id)
    assert p.account_id == alice.account_id
    assert (await rc.api.get(f"/v1/profiles/{alice.profile_id}", token=alice.token)).status == 200


async def test_concurrent_profile_creations_stop_at_the_cap(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    replies = await asyncio.gather(
        *(
            rc.api.post("/v1/profiles", json={"name": f"viewer {i}"}, token=user.token)
            for i in range(10)
        )
    )
    statuses = sorted(r.status for r in replies)
    cap = rc.config.profiles.max_per_account
    assert statuses == [201] * (cap - 1) + [409] * (10 - cap + 1), replies
    assert len(await rc.control.accounts.profiles_of(user.account_id)) == cap


async def test_concurrent_profiles_with_one_name_make_one(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    replies = await asyncio.gather(
        *(rc.api.post("/v1/profiles", json={"name": "Same"}, token=user.token) for _ in range(5))
    )
    assert sorted(r.status for r in replies) == [201, 409, 409, 409, 409]


# -- roles --------------------------------------------------------------------------------


async def test_roles(start_control: Any) -> None:
    rc = await start_control()
    admin = await rc.admin()
    user = await rc.signup()
    path = f"/v1/admin/accounts/{user.account_id}/role"
    r = await rc.api.put(path, json={"role": "admin"}, token=user.token)
    assert r.status == 403
    assert r.body["error"]["code"] == "forbidden"

    r = await rc.api.put(path, json={"role": "superuser"}, token=admin.token)
    assert set(fields_of(r)) == {"role"}
    r = await rc.api.put(
        "/v1/admin/accounts/unknown-account/role", json={"role": "admin"}, token=admin.token
    )
    assert r.status == 404
    r = await rc.api.put(path, json={"role": "admin"}, token=admin.token)
    assert r.status == 200, r
    assert r.body["role"] == "admin"
    assert r.body["id"] == user.account_id
    # The existing session has the new role at once.
    assert (await rc.api.get("/v1/account", token=user.token)).body["role"] == "admin"
    r = await rc.api.put(
        f"/v1/admin/accounts/{admin.account_id}/role", json={"role": "user"}, token=user.token
    )
    assert r.status == 200
    assert r.body["role"] == "user"
    # The last administrator cannot be demoted.
    r = await rc.api.put(path, json={"role": "user"}, token=user.token)
    assert r.status == 409
    r = await rc.api.put(path, json={"role": "admin"}, token=user.token)
    assert r.status == 200


# -- hostile input ------------------------------------------------------------------------


BAD_SIGNUPS = [
    ({}, "email"),
    ({"email": "a@example.com"}, "password"),
    ({"password": PASSWORD}, "email"),
    ({"email": 5, "password": PASSWORD}, "email"),
    ({"email": ["a@example.com"], "password": PASSWORD}, "email"),
    ({"email": "a@example.com", "password": 12345678}, "password"),
    ({"email": "a@example.com", "password": None}, "password"),
    ({"email": "a@example.com", "password": "short"}, "password"),
    ({"email": "a@example.com", "password": "p" * 1025}, "password"),
    ({"email": "not an address", "password": PASSWORD}, "email"),
    ({"email": "a@localhost", "password": PASSWORD}, "email"),
    ({"email": "a@@example.com", "password": PASSWORD}, "email"),
    ({"email": "a" * 300 + "@example.com", "password": PASSWORD}, "email"),
    ({"email": "a\x00b@example.com", "password": PASSWORD}, "email"),
    ({"email": "a@example.com", "password": PASSWORD, "name": "x" * 10_000}, "name"),
    ({"email": "a@example.com", "password": PASSWORD, "name": "bell\x07"}, "name"),
    ({"email": "a@example.com", "password": PASSWORD, "name": 7}, "name"),
    ({"email": "a@example.com", "password": PASSWORD, "role": "admin"}, "role"),
]


async def test_signup_refuses_bad_fields(start_control: Any) -> None:
    rc = await start_control()
    for body, field in BAD_SIGNUPS:
        r = await rc.api.post("/v1/accounts", json=body)
        assert field in fields_of(r), (body, r)
    assert rc.counter("control_signups", "invalid") == len(BAD_SIGNUPS)
    assert (await rc.control.db.fetchone("SELECT COUNT(*) AS n FROM accounts"))["n"] == 0
    # None of them used up the sign-up rate limit (3 at once by default).
    for _ in range(3):
        await rc.signup()


BAD_PROFILES: list[tuple[dict[str, Any], str | None]] = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 10_000}, "name"),
    ({"name": "tab\there"}, "name"),
    ({"name": "nul\x00"}, "name"),
    ({"name": "\u202e"}, None),  # a format character, not a control one: allowed
    ({"name": ["list"]}, "name"),
    ({"name": "ok", "maturity_limit": 19}, "maturity_limit"),
    ({"name": "ok", "maturity_limit": -1}, "maturity_limit"),
    ({"name": "ok", "maturity_limit": "12"}, "maturity_limit"),
    ({"name": "ok", "maturity_limit": 12.5}, "maturity_limit"),
    ({"name": "ok", "maturity_limit": True}, "maturity_limit"),
    ({"name": "ok", "kids": "yes"}, "kids"),
    ({"name": "ok", "kids": 1}, "kids"),
    ({"name": "ok", "extra": 1}, "extra"),
]


async def test_profile_creation_and_update_refuse_bad_fields(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    for body, field in BAD_PROFILES:
        r = await rc.api.post("/v1/profiles", json=body, token=user.token)
        if field is None:
            assert r.status == 201, (body, r)
            continue
        assert field in fields_of(r), (body, r)
        if body:  # every non-empty case is as wrong for PATCH ({} is a valid PATCH)
            r = await rc.api.patch(f"/v1/profiles/{user.profile_id}", json=body, token=user.token)
            assert field in fields_of(r), (body, r)
    assert len(await rc.control.accounts.profiles_of(user.account_id)) == 2


ODD_NAMES = [
    "'; DROP TABLE accounts; --",
    "Robert'); DROP TABLE profiles;--",
    "% _ \\ ? ?? $1 %s",
    "Zoë 🎬 名前",
    "Ελληνικά",
    "\u05e2\u05d1\u05e8\u05d9\u05ea",
]


async def test_profile_names_are_stored_verbatim(start_control: Any) -> None:
    rc = await start_control(profiles={"max_per_account": 20})
    user = await rc.signup()
    for name in ODD_NAMES:
        r = await rc.api.post("/v1/profiles", json={"name": name}, token=user.token)
        assert r.status == 201, r
        assert r.body["name"] == name
        r = await rc.api.get(f"/v1/profiles/{r.body['id']}", token=user.token)
        assert r.body["name"] == name
        r = await rc.api.post("/v1/profiles", json={"name": name}, token=user.token)
        assert r.status == 409
    # Nothing was dropped.
    assert (await rc.api.get("/v1/account", token=user.token)).status == 200
    names = {p.name for p in await rc.control.accounts.profiles_of(user.account_id)}
    assert names == {*ODD_NAMES, user.email.split("@")[0]}
    # A sign-up with such a name works too.
    r = await rc.api.post(
        "/v1/accounts",
        json={"email": "o'brien@example.com", "password": PASSWORD, "name": ODD_NAMES[0]},
    )
    assert r.status == 201, r
    assert r.body["profile"]["name"] == ODD_NAMES[0]


async def test_names_are_nfc_normalised_and_stripped(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    r = await rc.api.post("/v1/profiles", json={"name": "  Zoe\u0308 "}, token=user.token)
    assert r.status == 201
    assert r.body["name"] == "Zo\u00eb"
    r = await rc.api.post("/v1/profiles", json={"name": "Zo\u00eb"}, token=user.token)
    assert r.status == 409


async def test_malformed_bodies(start_control: Any) -> None:
    rc = await start_control()
    user = await rc.signup()
    cases: list[tuple[dict[str, str], bytes, int]] = [
        ({"Content-Type": "application/json"}, b"{not json", 400),
        ({"Content-Type": "application/json"}, b"", 400),
        ({"Content-Type": "application/json"}, b"[1, 2]", 400),
        ({"Content-Type": "application/json"}, b'"text"', 400),
        ({"Content-Type": "application/json"}, b'{"a": NaN}', 400),
        ({"Content-Type": "application/json"}, b"\xff\xfe{}", 400),
        ({"Content-Type": "application/json"}, b"[" * 100_000, 413),
        (
            {"Content-Type": "application/json"},
            json.dumps({"name": "x" * (rc.config.max_body + 10)}).encode(),
            413,
        ),
        ({"Content-Type": "text/plain"}, b'{"name": "x"}', 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"name=x", 415),
        ({}, b'{"name": "x"}', 415),
    ]
    targets = [
        ("POST", "/v1/accounts", None),
        ("POST", "/v1/sessions", None),
        ("POST", "/v1/profiles", user.token),
        ("PATCH", f"/v1/profiles/{user.profile_id}", user.token),
        ("PUT", "/v1/account/password", user.token),
    ]
    for method, path, token in targets:
        for headers, data, status in cases:
            r = await rc.api.call(method, path, data=data, headers=headers, token=token)
            assert r.status == status, (path, headers, data[:40], r)
        assert r.body["error"]["code"] in (
            "bad_request",
            "payload_too_large",
            "unsupported_media_type",
        )


async def test_session_is_checked_before_the_profile_in_one_query(start_control: Any) -> None:
    """Viewer routes read the session and the profile together: a dead session is 401 even
    for another account's profile id, a live one gets 404 for it (existence never shows)."""
    rc = await start_control()
    a, b = await rc.signup(), await rc.signup()
    path = f"/v1/profiles/{b.profile_id}/history"
    assert (await rc.api.get(path, token=b.token)).status == 200
    assert (await rc.api.get(path, token=a.token)).status == 404
    assert (await rc.api.get(f"/v1/profiles/{'x' * 65}/history", token=a.token)).status == 404
    assert (await rc.api.get(path, token="not-a-session")).status == 401
    await rc.api.delete("/v1/sessions/current", token=a.token)
    r = await rc.api.get(path, token=a.token)
    assert r.status == 401 and r.body["error"]["code"] == "unauthorized"
    rc.clock.advance(rc.config.sessions.ttl + 1)
    assert (await rc.api.get(path, token=b.token)).status == 401


async def test_rate_limits_are_shared_by_instances_of_one_database(start_control: Any) -> None:
    """Two instances (or workers) on one database draw on the same buckets: the configured
    limit holds for the service, not per process."""
    from tests.control_support import FakeClock

    clock = FakeClock()
    limits = {"signin_per_account": {"rate": 0.1, "burst": 3}}
    a = await start_control(clock=clock, rate_limits=limits)
    b = await start_control(clock=clock, rate_limits=limits)
    user = await a.signup()
    bad = {"email": user.email, "password": "wrong password"}
    statuses = [(await rc.api.post("/v1/sessions", json=bad)).status for rc in (a, b, a, b, a)]
    assert statuses == [401, 401, 401, 429, 429]
    # Both refusals come from the shared bucket: each instance's own still had tokens.
    assert b.counter("control_rate_limited", "signin_per_account") == 1
    assert a.counter("control_rate_limited", "signin_per_account") == 1
    clock.advance(10)  # one token back, for whichever instance asks first
    r = await b.api.post("/v1/sessions", json={**bad, "password": PASSWORD})
    assert r.status == 201, r
    assert (await a.api.post("/v1/sessions", json=bad)).status == 429
    # The database keeps digests, never the address.
    rows = await a.control.db.fetchall("SELECT id FROM rate_buckets")
    assert rows and all(user.email not in r["id"] for r in rows)


async def test_idle_rate_buckets_are_pruned_without_changing_answers(
    start_control: Any,
) -> None:
    limits = {
        "signin_per_account": {"rate": 0.1, "burst": 2},  # full again after 20 s idle
        "signin_per_address": {"rate": 1, "burst": 10},
    }
    rc = await start_control(rate_limits=limits)
    user = await rc.signup()
    bad = {"email": user.email, "password": "wrong password"}
    for _ in range(2):
        assert (await rc.api.post("/v1/sessions", json=bad)).status == 401
    accounts = rc.control.accounts
    count = "SELECT COUNT(*) AS n FROM rate_buckets"
    before = (await rc.control.db.fetchone(count))["n"]
    assert before == 4  # sign-up: address and e-mail; sign-in: address and account
    assert await accounts.prune_rate_buckets() == 0  # every bucket is short of tokens
    # Full again after: sign-up per address 0.01 s (1 of 1000 taken, 100/s), sign-in per
    # address 2 s (2 of 10, 1/s), sign-in per account 20 s (2 of 2, 0.1/s), sign-up per
    # e-mail 100 s (1 of 3, 0.01/s).
    rc.clock.advance(2)
    assert await accounts.prune_rate_buckets() == 2
    rc.clock.advance(17.9)
    assert await accounts.prune_rate_buckets() == 0
    rc.clock.advance(0.1)
    assert await accounts.prune_rate_buckets() == 1
    assert (await rc.control.db.fetchone(count))["n"] == 1
    # A pruned bucket answers as the full one it was.
    assert (await rc.api.post("/v1/sessions", json=bad)).status == 401
    assert (await rc.api.post("/v1/sessions", json=bad)).status == 401
    assert (await rc.api.post("/v1/sessions", json=bad)).status == 429
