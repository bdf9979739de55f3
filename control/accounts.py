"""Accounts, sessions and viewer profiles (the store behind control/routes/accounts.py).

Passwords. scrypt through control/auth.py with the configured cost (``config.kdf``). Hashing
and verifying run in the default executor (``hashlib.scrypt`` releases the GIL), so a sign-in
never blocks the event loop. A sign-in for an unknown address verifies against a dummy hash of
the same cost, so both failures take as long and answer the same 401 body. A hash made with
other parameters than the configured ones is replaced on the next good sign-in.

Sessions. Opaque bearer tokens (control.auth.new_session_token); only their SHA-256 digest is
stored. A session ends at ``expires_at`` (``config.sessions.ttl`` after sign-in) or when
revoked: sign-out (this session), sign-out everywhere (every session of the account), a
password change (every session but the one that made the change). An account keeps at most
``config.sessions.max_per_account`` live sessions: signing in once more revokes the oldest.
Expired rows of an account are deleted when it next signs in.

Uniform errors. Sign-in with an unknown address and with a wrong password answer the same
401 ``{"code": "unauthorized", "message": "wrong e-mail or password"}``. Sign-up with an
address that already has an account answers 409 ``conflict`` ("cannot create an account with
these details"): like most streaming services we do reveal at sign-up that an address is
taken (the alternative, a silent "check your mail", needs an e-mail round trip this service
does not have). Enumeration through sign-up is bounded by the sign-up rate limits, per client
address (``rate_limits.signup_per_address``, 3 at once then one per 20 s by default) and per
normalised e-mail whether or not it has an account (``rate_limits.signup_per_account``, 3 at
once then one per 100 s), and the sign-in limits apply per address and per normalised e-mail
whether or not it has an account, so a refusal there reveals nothing either.
``create_account`` (the CLI's create-admin, run by an operator) says plainly that the address
is taken, and its errors read well on their own (no "invalid body: " prefix).

Rate limits are token buckets (control.auth.take_token, clock = ``control.clock``) kept in the
database (table rate_buckets), so every worker and instance draws on the same ones. A bucket
this process alone has emptied (control.auth.RateLimiter) refuses without a database write: a
flood from one address costs the database nothing. ``rate_limits.enabled: false`` turns them
off. The client address keying the per-address ones is control.clients.client_address: the
TCP peer, or, when that is a ``trusted_proxies`` reverse proxy, the client it names in
X-Forwarded-For.

Serialisation. Writes that check a per-account cap (sessions, profiles) first bump
``accounts.version`` inside their transaction, which serialises them per account on both
backends (see control/db.py), so concurrent requests cannot both pass a cap.

Profiles. Up to ``config.profiles.max_per_account``; names unique per account (exact, after
NFC and stripping); ``maturity_limit`` 0..18 is the highest age rating the profile sees; a
kids profile is capped at 7. Sign-up makes the first profile (named from ``name`` or the
e-mail's local part, maturity 18); the last profile cannot be deleted.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from . import auth
from .db import IntegrityError, Tx
from .errors import BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized
from .fields import clean_text

log = logging.getLogger("control")
PRUNE_INTERVAL = 60.0  # seconds between deletions of idle rate-limit buckets

ROLES = ("user", "admin")
KIDS_MATURITY = 7
MAX_PROFILE_NAME = 50
MAX_DEVICE = 100
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_MAX_TOKEN_CHARS = 256

# The session of a bearer token, for queries that read it along with something else.
SESSION_COLUMNS = "s.account_id, s.expires_at, s.revoked_at, a.role, a.email"
SESSION_FROM = "FROM sessions s JOIN accounts a ON a.id = s.account_id"


def token_digest(token: str) -> str:
    """The stored form of a bearer token; Unauthorized for one that cannot be ours."""
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise Unauthorized("sign in required")
    return auth.token_digest(token)


BAD_CREDENTIALS = "wrong e-mail or password"
SIGNUP_CONFLICT = "cannot create an account with these details"
EMAIL_TAKEN = "an account with this e-mail already exists"  # create_account (operators) only


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    email: str
    role: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "role": self.role,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Session:
    account_id: str
    role: str
    token_hash: str
    expires_at: float
    email: str


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    account_id: str
    name: str
    maturity_limit: int
    kids: bool
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "maturity_limit": self.maturity_limit,
            "kids": self.kids,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class SignedIn:
    """What sign-up and sign-in hand the client: the token is shown this once."""

    account: Account
    token: str
    expires_at: float
    profile: Profile | None = None


def new_id() -> str:
    return secrets.token_urlsafe(12)


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def _account(row: dict[str, Any]) -> Account:
    return Account(row["id"], row["email"], row["role"], float(row["created_at"]))


def _profile(row: dict[str, Any]) -> Profile:
    return Profile(
        row["id"],
        row["account_id"],
        row["name"],
        int(row["maturity_limit"]),
        bool(row["kids"]),
        float(row["created_at"]),
    )


_PROFILE_COLS = "id, account_id, name, maturity_limit, kids, created_at"


def bad_field(name: str, reason: str) -> BadRequest:
    return BadRequest(f"invalid body: {name} {reason}", {"fields": {name: reason}})


def normalize_email(email: str) -> str:
    """control.auth.normalize_email, its ValueError as a 400 naming the field."""
    try:
        return auth.normalize_email(email)
    except ValueError as exc:
        raise bad_field("email", str(exc)) from None


def check_password(password: str, field: str = "password") -> None:
    """The cheap part of control.auth's password rules (length after NFC), checked before a
    rate-limit token or a hash is spent on the request."""
    n = len(unicodedata.normalize("NFC", password))
    if not auth.MIN_PASSWORD_CHARS <= n <= auth.MAX_PASSWORD_CHARS:
        raise bad_field(
            field,
            f"must be {auth.MIN_PASSWORD_CHARS} to {auth.MAX_PASSWORD_CHARS} characters",
        )


def kids_maturity(kids: bool, maturity_limit: int | None) -> int:
    """The maturity limit a profile ends up with: 18 by default, at most 7 for kids."""
    if kids:
        return KIDS_MATURITY if maturity_limit is None else min(maturity_limit, KIDS_MATURITY)
    return 18 if maturity_limit is None else maturity_limit


class AccountStore:
    def __init__(self, control: Any) -> None:
        self.control = control
        cfg = control.config
        self.kdf: auth.KdfParams = cfg.kdf
        # A dummy of the configured cost, so an unknown address costs what a real one does.
        self.dummy_hash = (
            auth.DUMMY_HASH
            if self.kdf == auth.KdfParams()
            else auth.hash_password(secrets.token_urlsafe(32), params=self.kdf)
        )
        rl = cfg.rate_limits
        self.limits_enabled: bool = rl.enabled
        self.limiters = {
            name: auth.RateLimiter(
                rate=getattr(rl, name).rate, burst=getattr(rl, name).burst, clock=control.clock
            )
            for name in (
                "signin_per_address",
                "signin_per_account",
                "signup_per_address",
                "signup_per_account",
            )
        }

    # -- helpers ----------------------------------------------------------------------------

    @property
    def db(self) -> Any:
        return self.control.db

    def _now(self) -> float:
        return float(self.control.clock())

    async def _hash(self, password: str, field: str = "password") -> str:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, functools.partial(auth.hash_password, password, params=self.kdf)
            )
        except ValueError as exc:
            # auth's reasons start with "password " ("password must be at least 8
            # characters"); the field name takes its place.
            raise bad_field(field, str(exc).removeprefix("password ")) from None

    async def _verify(self, password: str, encoded: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, auth.verify_password, password, encoded)

    async def check_rate(self, limit: str, key: str, counter: str | None = None) -> None:
        """Take a token from limit ``limit``'s bucket for ``key``; 429 with Retry-After when
        it is empty. The local bucket goes first: it counts only this process's requests, so
        when it is empty the shared one (which counts them too) is empty as well."""
        if not self.limits_enabled:
            return
        limiter = self.limiters[limit]
        if limiter.allow(key):
            allowed, retry_after = await self._take_shared(limit, key)
            if not allowed:
                limiter.refund(key)
        else:
            allowed, retry_after = False, limiter.retry_after(key)
        if allowed:
            return
        m = self.control.metrics
        m.inc("control_rate_limited", limit)
        if counter is not None:
            m.inc(counter, "rate_limited")
        log.info("event=rate_limited limit=%s", limit)
        raise TooManyRequests("too many attempts; retry later", retry_after=retry_after)

    async def _take_shared(self, limit: str, key: str) -> tuple[bool, float]:
        """(allowed, seconds until a token is back) from the shared bucket of (limit, key)."""
        rule = getattr(self.control.config.rate_limits, limit)
        bucket = hashlib.sha256(f"{limit}\0{key}".encode()).hexdigest()
        now = self._now()
        async with self.db.transaction() as tx:
            # The upsert takes the row's lock first (PostgreSQL), so instances taking from one
            # bucket at once take turns instead of both spending the same token; SQLite has one
            # writer at a time anyway. A new bucket starts full.
            await tx.execute(
                "INSERT INTO rate_buckets (id, tokens, updated_at, full_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET id = excluded.id",
                (bucket, float(rule.burst), now, now),
            )
            row = await tx.fetchone(
                "SELECT tokens, updated_at FROM rate_buckets WHERE id = ?", (bucket,)
            )
            assert row is not None
            last = float(row["updated_at"])
            allowed, tokens, retry_after = auth.take_token(
                (float(row["tokens"]), last), now, rate=rule.rate, burst=rule.burst
            )
            # max(): an instance whose clock is behind must not rewind the bucket's time (that
            # would refill it twice).
            at = max(now, last)
            await tx.execute(
                "UPDATE rate_buckets SET tokens = ?, updated_at = ?, full_at = ? WHERE id = ?",
                (tokens, at, at + (rule.burst - tokens) / rule.rate, bucket),
            )
        return allowed, retry_after

    def start(self) -> None:
        if self.limits_enabled:
            self.control.spawn(self._prune_loop(), "rate_bucket_prune")

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await self.prune_rate_buckets()
            except Exception as exc:  # a database hiccup: try again next time
                log.warning("event=rate_bucket_prune_failed error=%r", str(exc)[:200])

    async def prune_rate_buckets(self) -> int:
        """Delete the buckets idle long enough to be full again: a missing bucket is a full
        one, so no answer changes. (full_at is the clock of the instance that wrote it: the
        instances' clocks are assumed to agree, as NTP keeps them, to well under a second.)"""
        return int(
            await self.db.execute("DELETE FROM rate_buckets WHERE full_at <= ?", (self._now(),))
        )

    @staticmethod
    async def lock_account(tx: Tx, account_id: str) -> bool:
        """Serialise this transaction with every other write of the account (control/db.py);
        False when the account does not exist."""
        n = await tx.execute(
            "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
        )
        return n > 0

    async def _insert_session(
        self, tx: Tx, account_id: str, device: str, now: float
    ) -> tuple[str, float]:
        """A new session in ``tx`` (the account already locked); past the cap, the oldest live
        sessions are revoked."""
        token, digest = auth.new_session_token()
        expires_at = now + self.control.config.sessions.ttl
        await tx.execute(
            "DELETE FROM sessions WHERE account_id = ? AND expires_at <= ?", (account_id, now)
        )
        await tx.execute(
            "INSERT INTO sessions(token_hash, account_id, created_at, expires_at, device)"
            " VALUES (?, ?, ?, ?, ?)",
            (digest, account_id, now, expires_at, device),
        )
        live = await tx.fetchall(
            "SELECT token_hash FROM sessions WHERE account_id = ? AND revoked_at IS NULL"
            " AND expires_at > ? ORDER BY created_at DESC, token_hash",
            (account_id, now),
        )
        cap = self.control.config.sessions.max_per_account
        # The new session always stays; the newest others fill the rest of the cap.
        others = [r["token_hash"] for r in live if r["token_hash"] != digest]
        excess = others[cap - 1 :]
        for h in excess:
            await tx.execute("UPDATE sessions SET revoked_at = ? WHERE token_hash = ?", (now, h))
        if excess:
            self.control.metrics.inc("control_sessions_revoked", "session_cap", n=len(excess))
        return token, expires_at

    async def _insert_account(
        self, tx: Tx, email: str, password_hash: str, role: str, profile_name: str, now: float
    ) -> tuple[Account, Profile]:
        account = Account(new_id(), email, role, now)
        await tx.execute(
            "INSERT INTO accounts(id, email, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)",
            (account.id, email, password_hash, role, now),
        )
        profile = Profile(new_id(), account.id, profile_name, 18, False, now)
        await tx.execute(
            f"INSERT INTO profiles({_PROFILE_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (profile.id, account.id, profile.name, 18, 0, now),
        )
        return account, profile

    @staticmethod
    def _first_profile_name(email: str, name: str | None) -> str:
        if name:
            return name
        local = email.split("@", 1)[0]
        return (clean_text(local) or "")[:MAX_PROFILE_NAME] or "Profile"

    # -- accounts ---------------------------------------------------------------------------

    async def create_account(
        self, email: str, password: str, role: str = "user", *, profile_name: str | None = None
    ) -> Account:
        """An account with its first profile (the CLI's create-admin). For an operator, not
        the HTTP sign-up: no rate limit, and errors whose ``message`` reads well on its own:
        BadRequest for an unusable role, address or password (``"password must be at least 8
        characters"``, with ``details.fields`` as usual), Conflict ``"an account with this
        e-mail already exists"`` if the address is taken."""
        if role not in ROLES:
            reason = f"must be one of {', '.join(ROLES)}"
            raise BadRequest(f"role {reason}", {"fields": {"role": reason}})
        try:
            address = auth.normalize_email(email)
        except ValueError as exc:
            raise BadRequest(str(exc), {"fields": {"email": str(exc)}}) from None
        try:
            encoded = await self._hash(password)
        except BadRequest as exc:
            reason = exc.details["fields"]["password"]
            raise BadRequest(f"password {reason}", exc.details) from None
        now = self._now()
        name = self._first_profile_name(address, profile_name)
        try:
            async with self.db.transaction() as tx:
                if await tx.fetchone("SELECT id FROM accounts WHERE email = ?", (address,)):
                    raise Conflict(EMAIL_TAKEN)
                account, _ = await self._insert_account(tx, address, encoded, role, name, now)
        except IntegrityError:  # a concurrent creation with the same address won
            raise Conflict(EMAIL_TAKEN) from None
        log.info("event=account_created account=%s role=%s", account.id, role)
        return account

    async def signup(
        self, email: str, password: str, name: str | None, remote: str, device: str = ""
    ) -> SignedIn:
        """Sign-up: an account, its first profile and a session, in one transaction."""
        m = self.control.metrics
        try:
            address = normalize_email(email)
            check_password(password)
        except BadRequest:
            m.inc("control_signups", "invalid")
            raise
        await self.check_rate("signup_per_address", remote, "control_signups")
        # Per e-mail too, whether or not it has an account (so a refusal reveals nothing):
        # bounds probing one address for an account from many client addresses.
        await self.check_rate("signup_per_account", address, "control_signups")
        try:
            encoded = await self._hash(password)
        except BadRequest:
            m.inc("control_signups", "invalid")
            raise
        now = self._now()
        try:
            async with self.db.transaction() as tx:
                if await tx.fetchone("SELECT id FROM accounts WHERE email = ?", (address,)):
                    raise Conflict(SIGNUP_CONFLICT)
                account, profile = await self._insert_account(
                    tx, address, encoded, "user", self._first_profile_name(address, name), now
                )
                token, expires_at = await self._insert_session(tx, account.id, device, now)
        except (Conflict, IntegrityError):
            m.inc("control_signups", "exists")
            log.info("event=signup outcome=exists")
            raise Conflict(SIGNUP_CONFLICT) from None
        m.inc("control_signups", "ok")
        log.info("event=signup outcome=ok account=%s", account.id)
        return SignedIn(account, token, expires_at, profile)

    async def signin(self, email: str, password: str, remote: str, device: str = "") -> SignedIn:
        """Sign-in: a new session; one 401 for an unknown address and a wrong password."""
        m = self.control.metrics
        address = normalize_email(email)
        await self.check_rate("signin_per_address", remote, "control_signins")
        await self.check_rate("signin_per_account", address, "control_signins")
        row = await self.db.fetchone(
            "SELECT id, email, role, created_at, password_hash FROM accounts WHERE email = ?",
            (address,),
        )
        encoded = row["password_hash"] if row else self.dummy_hash
        ok = await self._verify(password, encoded)
        if row is None or not ok:
            m.inc("control_signins", "bad_credentials")
            log.info("event=signin outcome=bad_credentials")
            raise Unauthorized(BAD_CREDENTIALS)
        account = _account(row)
        now = self._now()
        rehash = None
        if auth.needs_rehash(encoded, self.kdf):
            rehash = await self._hash(password)
        async with self.db.transaction() as tx:
            if not await self.lock_account(tx, account.id):  # deleted meanwhile
                raise Unauthorized(BAD_CREDENTIALS)
            if rehash is not None:
                await tx.execute(
                    "UPDATE accounts SET password_hash = ? WHERE id = ? AND password_hash = ?",
                    (rehash, account.id, encoded),
                )
            token, expires_at = await self._insert_session(tx, account.id, device, now)
        m.inc("control_signins", "ok")
        log.info(
            "event=signin outcome=ok account=%s rehashed=%s", account.id, int(rehash is not None)
        )
        return SignedIn(account, token, expires_at)

    async def authenticate(self, token: str) -> Session:
        """The live session of a bearer token; Unauthorized when unknown, expired or revoked."""
        digest = token_digest(token)
        row = await self.db.fetchone(
            f"SELECT {SESSION_COLUMNS} {SESSION_FROM} WHERE s.token_hash = ?", (digest,)
        )
        return self.session_of_row(row, digest)

    def session_of_row(self, row: dict[str, Any] | None, digest: str) -> Session:
        """The session from a row of a query that joins SESSION_FROM (selecting at least
        SESSION_COLUMNS) on ``s.token_hash = digest``: a route may read its session with its
        own data in one query. Unauthorized when unknown, expired or revoked."""
        if row is None or row["revoked_at"] is not None or self._now() >= row["expires_at"]:
            raise Unauthorized("the session is expired or signed out; sign in again")
        return Session(
            row["account_id"], row["role"], digest, float(row["expires_at"]), row["email"]
        )

    async def authenticate_profile(self, token: str, profile_id: str) -> tuple[Session, Profile]:
        """`authenticate` and `get_profile` in one query: most viewer requests need both, and
        on PostgreSQL every round trip costs more than the query. The same answers: 401 for
        a bad session first, then 404 for a profile that is missing or another account's."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("sign in required")
        digest = auth.token_digest(token)
        row = await self.db.fetchone(
            "SELECT s.account_id, s.expires_at, s.revoked_at, a.role, a.email,"
            " p.id AS p_id, p.name AS p_name, p.maturity_limit AS p_maturity,"
            " p.kids AS p_kids, p.created_at AS p_created"
            " FROM sessions s JOIN accounts a ON a.id = s.account_id"
            " LEFT JOIN profiles p ON p.account_id = s.account_id AND p.id = ?"
            " WHERE s.token_hash = ?",
            (profile_id if valid_id(profile_id) else "", digest),
        )
        if row is None or row["revoked_at"] is not None or self._now() >= row["expires_at"]:
            raise Unauthorized("the session is expired or signed out; sign in again")
        session = Session(
            row["account_id"], row["role"], digest, float(row["expires_at"]), row["email"]
        )
        if row["p_id"] is None:
            raise NotFound("no such profile")
        profile = Profile(
            row["p_id"],
            row["account_id"],
            row["p_name"],
            int(row["p_maturity"]),
            bool(row["p_kids"]),
            float(row["p_created"]),
        )
        return session, profile

    async def get_account(self, account_id: str) -> Account:
        row = await self.db.fetchone(
            "SELECT id, email, role, created_at FROM accounts WHERE id = ?", (account_id,)
        )
        if row is None:
            raise NotFound("no such account")
        return _account(row)

    async def signout(self, session: Session) -> None:
        n = await self.db.execute(
            "UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
            (self._now(), session.token_hash),
        )
        self.control.metrics.inc("control_sessions_revoked", "signout", n=n)
        log.info("event=signout account=%s", session.account_id)

    async def signout_everywhere(self, account_id: str) -> int:
        now = self._now()
        n: int = await self.db.execute(
            "UPDATE sessions SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL"
            " AND expires_at > ?",
            (now, account_id, now),
        )
        self.control.metrics.inc("control_sessions_revoked", "signout_all", n=n)
        log.info("event=signout_all account=%s sessions=%d", account_id, n)
        return n

    async def change_password(self, session: Session, current: str, new: str) -> None:
        """Replace the password; every other session of the account ends, this one stays.
        The current password is checked under the per-account sign-in limit (a stolen session
        must not become a password-guessing oracle)."""
        await self.check_rate("signin_per_account", session.email)
        row = await self.db.fetchone(
            "SELECT password_hash FROM accounts WHERE id = ?", (session.account_id,)
        )
        if row is None:
            raise Unauthorized("sign in required")
        if not await self._verify(current, row["password_hash"]):
            log.info("event=password_change outcome=wrong_password account=%s", session.account_id)
            raise bad_field("current_password", "is wrong")
        encoded = await self._hash(new, "new_password")
        now = self._now()
        async with self.db.transaction() as tx:
            await self.lock_account(tx, session.account_id)
            n = await tx.execute(
                "UPDATE accounts SET password_hash = ? WHERE id = ? AND password_hash = ?",
                (encoded, session.account_id, row["password_hash"]),
            )
            if n == 0:  # changed concurrently: the current password checked is no longer it
                raise Conflict("the password was changed meanwhile; sign in again")
            revoked = await tx.execute(
                "UPDATE sessions SET revoked_at = ? WHERE account_id = ? AND token_hash <> ?"
                " AND revoked_at IS NULL AND expires_at > ?",
                (now, session.account_id, session.token_hash, now),
            )
        self.control.metrics.inc("control_sessions_revoked", "password_change", n=revoked)
        log.info(
            "event=password_change outcome=ok account=%s revoked=%d", session.account_id, revoked
        )

    async def set_role(self, account_id: str, role: str) -> Account:
        """Make an account a user or an admin; the last administrator cannot be demoted."""
        if role not in ROLES:
            raise bad_field("role", f"must be one of {', '.join(ROLES)}")
        if not valid_id(account_id):
            raise NotFound("no such account")
        async with self.db.transaction() as tx:
            if not await self.lock_account(tx, account_id):
                raise NotFound("no such account")
            if role != "admin":
                # Lock every admin row so two concurrent demotions cannot both pass.
                await tx.execute(
                    "UPDATE accounts SET version = version + 1 WHERE role = 'admin' AND id <> ?",
                    (account_id,),
                )
                others = await tx.fetchone(
                    "SELECT COUNT(*) AS n FROM accounts WHERE role = 'admin' AND id <> ?",
                    (account_id,),
                )
                current = await tx.fetchone("SELECT role FROM accounts WHERE id = ?", (account_id,))
                if current and current["role"] == "admin" and others and int(others["n"]) == 0:
                    raise Conflict("the last administrator cannot be demoted")
            await tx.execute("UPDATE accounts SET role = ? WHERE id = ?", (role, account_id))
            row = await tx.fetchone(
                "SELECT id, email, role, created_at FROM accounts WHERE id = ?", (account_id,)
            )
        assert row is not None
        log.info("event=role_changed account=%s role=%s", account_id, role)
        return _account(row)

    # -- profiles ---------------------------------------------------------------------------

    async def profiles_of(self, account_id: str) -> list[Profile]:
        rows = await self.db.fetchall(
            f"SELECT {_PROFILE_COLS} FROM profiles WHERE account_id = ? ORDER BY created_at, id",
            (account_id,),
        )
        return [_profile(r) for r in rows]

    async def get_profile(self, account_id: str, profile_id: str) -> Profile:
        """The account's profile; NotFound when missing or another account's."""
        if not valid_id(profile_id):
            raise NotFound("no such profile")
        row = await self.db.fetchone(
            f"SELECT {_PROFILE_COLS} FROM profiles WHERE id = ? AND account_id = ?",
            (profile_id, account_id),
        )
        if row is None:
            raise NotFound("no such profile")
        return _profile(row)

    async def create_profile(
        self, account_id: str, name: str, maturity_limit: int | None, kids: bool
    ) -> Profile:
        limit = self.control.config.profiles.max_per_account
        p = Profile(
            new_id(), account_id, name, kids_maturity(kids, maturity_limit), kids, self._now()
        )
        try:
            async with self.db.transaction() as tx:
                if not await self.lock_account(tx, account_id):
                    raise NotFound("no such account")
                row = await tx.fetchone(
                    "SELECT COUNT(*) AS n FROM profiles WHERE account_id = ?", (account_id,)
                )
                if row is not None and int(row["n"]) >= limit:
                    raise Conflict(f"an account has at most {limit} profiles")
                await self._name_free(tx, account_id, name, None)
                await tx.execute(
                    f"INSERT INTO profiles({_PROFILE_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (p.id, account_id, p.name, p.maturity_limit, int(p.kids), p.created_at),
                )
        except IntegrityError:
            raise Conflict("a profile of this account already has that name") from None
        log.info("event=profile_created account=%s profile=%s", account_id, p.id)
        return p

    @staticmethod
    async def _name_free(tx: Tx, account_id: str, name: str, except_id: str | None) -> None:
        clash = await tx.fetchone(
            "SELECT id FROM profiles WHERE account_id = ? AND name = ? AND id <> ?",
            (account_id, name, except_id or ""),
        )
        if clash is not None:
            raise Conflict("a profile of this account already has that name")

    async def update_profile(
        self,
        account_id: str,
        profile_id: str,
        *,
        name: str | None = None,
        maturity_limit: int | None = None,
        kids: bool | None = None,
    ) -> Profile:
        current = await self.get_profile(account_id, profile_id)
        try:
            async with self.db.transaction() as tx:
                await self.lock_account(tx, account_id)
                row = await tx.fetchone(
                    f"SELECT {_PROFILE_COLS} FROM profiles WHERE id = ? AND account_id = ?",
                    (profile_id, account_id),
                )
                if row is None:
                    raise NotFound("no such profile")
                current = _profile(row)
                new_kids = current.kids if kids is None else kids
                if maturity_limit is None:
                    maturity = current.maturity_limit
                    if new_kids:
                        maturity = min(maturity, KIDS_MATURITY)
                else:
                    maturity = kids_maturity(new_kids, maturity_limit)
                new_name = current.name if name is None else name
                if new_name != current.name:
                    await self._name_free(tx, account_id, new_name, profile_id)
                await tx.execute(
                    "UPDATE profiles SET name = ?, maturity_limit = ?, kids = ? WHERE id = ?",
                    (new_name, maturity, int(new_kids), profile_id),
                )
        except IntegrityError:
            raise Conflict("a profile of this account already has that name") from None
        return Profile(profile_id, account_id, new_name, maturity, new_kids, current.created_at)

    async def delete_profile(self, account_id: str, profile_id: str) -> None:
        await self.get_profile(account_id, profile_id)
        async with self.db.transaction() as tx:
            await self.lock_account(tx, account_id)
            row = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM profiles WHERE account_id = ?", (account_id,)
            )
            if row is not None and int(row["n"]) <= 1:
                raise Conflict("the last profile of an account cannot be deleted")
            n = await tx.execute(
                "DELETE FROM profiles WHERE id = ? AND account_id = ?", (profile_id, account_id)
            )
            if n == 0:
                raise NotFound("no such profile")
        log.info("event=profile_deleted account=%s profile=%s", account_id, profile_id)
