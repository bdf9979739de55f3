"""Accounts: the pure core of passwords, session tokens, e-mail addresses and rate limits.

* Passwords are hashed with scrypt (memory-hard, so GPU/ASIC guessing of a leaked table is
  expensive) under a random per-user salt, into a self-describing string
  ``scrypt$n$r$p$salt_b64$hash_b64``. Because the cost travels with each hash, the cost can be
  raised later: :func:`needs_rehash` tells the sign-in path to re-hash on the next good password.
* Session tokens are opaque random bearer strings. Only their SHA-256 digest is stored, so a
  leaked sessions table cannot be replayed. The store owns expiry and revocation (a row per
  digest with ``expires_at``; "sign out everywhere" deletes every row of the account); this module
  only mints tokens and digests them.
* Sign-in must not reveal whether an address has an account: on an unknown address the caller
  verifies the password against :data:`DUMMY_HASH` (so both paths pay for one scrypt) and returns
  the same error as for a wrong password.
* :class:`RateLimiter` is a token bucket per key; callers keep one per axis (e.g. keyed by client
  address and keyed by normalised e-mail) for sign-in and for sign-up. :func:`take_token` is
  the bucket's arithmetic alone, for buckets kept elsewhere (the control plane's shared ones,
  in its database).

Everything here is pure: no I/O, and time is an injected clock, so the tests need no sleeping.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DUMMY_HASH",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "KdfParams",
    "RateLimiter",
    "hash_password",
    "needs_rehash",
    "new_session_token",
    "normalize_email",
    "take_token",
    "token_digest",
    "verify_password",
]

MIN_PASSWORD_CHARS = 8
# The upper bound is not about scrypt (it hashes the password once up front, so length barely
# matters) but about refusing absurd request bodies before doing any expensive work.
MAX_PASSWORD_CHARS = 1024

SALT_BYTES = 16

# Bounds on the cost parameters we are willing to run. A stored hash is data: if a row were
# corrupted or planted with n=2**30, verifying it would try to allocate terabytes. KdfParams
# enforces the same bounds, so every hash this module can produce it can also verify.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 256 * 1024 * 1024  # scrypt needs about 128 * r * n bytes
_MIN_DKLEN = 16
_MAX_DKLEN = 64
_MIN_SALT_BYTES = 8
_MAX_SALT_BYTES = 64

_SCHEME = "scrypt"
# Decimal without sign, spaces or leading zeros: int() alone would also accept "+8", " 8 ", "0_8"
# and non-ASCII digits, and a hash string should have exactly one spelling.
_UINT = re.compile(r"[1-9][0-9]{0,9}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost. The defaults (n=2**14, r=8, p=1: 16 MiB and some 50 ms per hash on a current
    server core) follow the common interactive-login recommendation; tests pass a smaller ``n``."""

    n: int = 2**14
    r: int = 8
    p: int = 1
    dklen: int = 32

    def __post_init__(self) -> None:
        if not _params_ok(self.n, self.r, self.p, self.dklen):
            raise ValueError(
                f"unsupported scrypt parameters n={self.n} r={self.r} p={self.p} "
                f"dklen={self.dklen}: n must be a power of two in [2, {_MAX_N}], "
                f"r in [1, {_MAX_R}], p in [1, {_MAX_P}], 128*r*n <= {_MAX_MEMORY} bytes, "
                f"dklen in [{_MIN_DKLEN}, {_MAX_DKLEN}]"
            )


def _params_ok(n: int, r: int, p: int, dklen: int) -> bool:
    return (
        2 <= n <= _MAX_N
        and n & (n - 1) == 0
        and 1 <= r <= _MAX_R
        and 1 <= p <= _MAX_P
        and 128 * r * n <= _MAX_MEMORY
        and _MIN_DKLEN <= dklen <= _MAX_DKLEN
    )


def _b64encode(raw: bytes) -> str:
    # URL-safe and unpadded: the string never contains "$" and can sit in any column or log.
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    # The alphabet is checked first because the stdlib decoder silently skips foreign characters.
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _password_bytes(password: str) -> bytes:
    """The bytes that are hashed; ValueError when the password is not acceptable.

    NFC first, so the same password typed on keyboards that compose accents differently (e.g.
    macOS vs Windows) gives the same bytes. Lengths count characters after normalisation.
    """
    normalized = unicodedata.normalize("NFC", password)
    if len(normalized) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(normalized) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    try:
        return normalized.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates can arrive through JSON ("\ud800"); they are not text.
        raise ValueError("password must be valid Unicode text") from None


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL refuses above 32 MiB by default; give it exactly what these parameters need
    # (128*r*(n+p+2) bytes, per its own check) plus slack, the bounds above capping the total.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def hash_password(password: str, *, params: KdfParams = KdfParams()) -> str:
    """``scrypt$n$r$p$salt$hash`` with a fresh 16-byte salt; ValueError for an unusable password.

    (The default is a frozen, hence immutable, dataclass: sharing it between calls is safe.)
    """
    secret = _password_bytes(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(secret, salt, params.n, params.r, params.p, params.dklen)
    return f"{_SCHEME}${params.n}${params.r}${params.p}${_b64encode(salt)}${_b64encode(digest)}"


@dataclass(frozen=True)
class _Parsed:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse(encoded: str) -> _Parsed | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    _, n_s, r_s, p_s, salt_s, digest_s = parts
    if not all(_UINT.fullmatch(s) for s in (n_s, r_s, p_s)):
        return None
    salt = _b64decode(salt_s)
    digest = _b64decode(digest_s)
    if salt is None or digest is None:
        return None
    n, r, p = int(n_s), int(r_s), int(p_s)
    if not _params_ok(n, r, p, len(digest)):
        return None
    if not _MIN_SALT_BYTES <= len(salt) <= _MAX_SALT_BYTES:
        return None
    return _Parsed(n, r, p, salt, digest)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``. Never raises: a malformed or out-of-bounds hash,
    or a password that could never have been set, is simply no match."""
    parsed = _parse(encoded)
    if parsed is None:
        return False
    try:
        secret = _password_bytes(password)
    except ValueError:
        # Such a password can never have been hashed. Returning early leaks nothing about the
        # account, since the answer is the same whether or not the address exists.
        return False
    candidate = _scrypt(secret, parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.digest))
    # Constant time, so response timing does not reveal how many leading bytes matched.
    return hmac.compare_digest(candidate, parsed.digest)


def needs_rehash(encoded: str, params: KdfParams) -> bool:
    """Whether ``encoded`` was made with other parameters than ``params`` (or is unreadable), so
    the sign-in path should store ``hash_password(password, params=params)`` once it verified."""
    parsed = _parse(encoded)
    if parsed is None:
        return True
    return (parsed.n, parsed.r, parsed.p, len(parsed.digest), len(parsed.salt)) != (
        params.n,
        params.r,
        params.p,
        params.dklen,
        SALT_BYTES,
    )


# hash_password(<32 random bytes, discarded>) with the default KdfParams. A literal, not computed
# at import, so importing the module does not cost a scrypt run. It has the default cost so that
# verifying against it takes as long as verifying a real (current) hash; a deployment running
# other parameters should make its own with hash_password(secrets.token_urlsafe(32), params=...).
DUMMY_HASH = "scrypt$16384$8$1$RSbGm1CMnyR8tVTFu0NbgA$cDJg-lCaE0QMcXimsUcjN4CSSb91N3tjq5fYF1PCt6s"


def new_session_token() -> tuple[str, str]:
    """``(token, digest)``: the token (32 random bytes, URL-safe) goes to the client once, only
    the digest is stored."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    """SHA-256 hex of a session token: the key to look the session up by.

    A plain fast hash is enough (unlike passwords) because the token carries 256 bits of entropy,
    so there is nothing to guess, and it must be unsalted to be a lookup key.
    """
    # "surrogatepass": aiohttp decodes headers with surrogateescape, so a garbage Authorization
    # header may hold lone surrogates; it must hash to a miss, not raise.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


_MAX_EMAIL_BYTES = 254  # RFC 5321 path limit minus the angle brackets
_MAX_LOCAL_BYTES = 64
_MAX_LABEL_CHARS = 63


def normalize_email(email: str) -> str:
    """The canonical spelling of an address, used as the account key; ValueError if unusable.

    Surrounding whitespace is stripped and the *whole* address lower-cased. RFC 5321 lets the
    local part be case-sensitive, but no mainstream provider treats it so, while users do type
    ``Alice@`` one day and ``alice@`` the next; folding it keeps them on one account and stops
    case variants from dodging the per-account rate limit. ``str.lower`` rather than ``casefold``,
    which would merge genuinely different addresses (``ß`` vs ``ss``). Dots and ``+tags`` are
    kept: their meaning is provider-specific.

    Validation is deliberately basic (the confirmation e-mail is the real test): exactly one
    ``@``, no whitespace or control/format characters, RFC length limits, and a domain of at
    least two non-empty labels (no ``localhost``).
    """
    address = unicodedata.normalize("NFC", email.strip()).lower()
    if address.count("@") != 1:
        raise ValueError("e-mail address must contain exactly one '@'")
    if any(c.isspace() or unicodedata.category(c).startswith("C") for c in address):
        raise ValueError("e-mail address must not contain spaces or control characters")
    local, domain = address.split("@")
    if not local or not domain:
        raise ValueError("e-mail address needs a name before and a domain after the '@'")
    try:
        if len(address.encode("utf-8")) > _MAX_EMAIL_BYTES:
            raise ValueError(f"e-mail address must be at most {_MAX_EMAIL_BYTES} bytes")
        if len(local.encode("utf-8")) > _MAX_LOCAL_BYTES:
            raise ValueError(f"e-mail name before the '@' must be at most {_MAX_LOCAL_BYTES} bytes")
    except UnicodeEncodeError:
        raise ValueError("e-mail address must be valid Unicode text") from None
    labels = domain.split(".")
    if len(labels) < 2 or not all(0 < len(label) <= _MAX_LABEL_CHARS for label in labels):
        raise ValueError("e-mail domain must look like 'example.com'")
    return address


def take_token(
    state: tuple[float, float] | None, now: float, *, rate: float, burst: float
) -> tuple[bool, float, float]:
    """One request against a token bucket holding ``state`` = (tokens, last update), None for
    a key never seen (a full bucket): (allowed, tokens left, seconds until a token is back,
    0.0 when allowed). The bucket refills at ``rate`` per second up to ``burst``; a clock that
    steps backwards refills nothing (it must not drain a bucket either)."""
    tokens = burst if state is None else min(burst, state[0] + max(0.0, now - state[1]) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0, 0.0
    return False, tokens, (1.0 - tokens) / rate


class RateLimiter:
    """A token bucket per key: up to ``burst`` requests at once, refilled at ``rate`` per second.

    Memory is bounded two ways. A bucket untouched for ``burst / rate`` seconds is full again,
    which is exactly the state of a key never seen, so it is dropped without changing any answer.
    And if ``max_keys`` live buckets still remain (many distinct keys in one window, e.g. a spray
    from many addresses), the least recently used is evicted. That fails open for the evicted
    key (it gets a fresh burst) rather than closed for everyone (refusing new keys would let an
    attacker lock every other client out); the key's owner must send ``max_keys`` other keys
    in between to get it, each of which is itself rate-limited.
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float], max_keys: int = 100_000
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._rate = float(rate)
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._idle_s = self._burst / self._rate
        # key -> (tokens, last update); ordered by last update, oldest first, so idle buckets
        # are always at the front.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many keys currently hold state (for tests and metrics)."""
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        while self._buckets:
            _, last = next(iter(self._buckets.values()))
            if now - last < self._idle_s:
                break
            self._buckets.popitem(last=False)

    def allow(self, key: str) -> bool:
        """Take one token for ``key`` if there is one; False means reject (HTTP 429)."""
        now = self._clock()
        self._prune(now)
        allowed, tokens, _ = take_token(
            self._buckets.get(key), now, rate=self._rate, burst=self._burst
        )
        if key in self._buckets:
            self._buckets.move_to_end(key)
        elif len(self._buckets) >= self._max_keys:
            self._buckets.popitem(last=False)
        self._buckets[key] = (tokens, now)
        return allowed

    def refund(self, key: str) -> None:
        """Give back the token ``allow(key)`` took, when the request was refused elsewhere
        after all (the shared bucket, control/accounts.py): this bucket must not run dry
        before the one it stands in front of."""
        state = self._buckets.get(key)
        if state is not None:
            self._buckets[key] = (min(self._burst, state[0] + 1.0), state[1])

    def retry_after(self, key: str) -> float:
        """Seconds until ``allow(key)`` would succeed (0.0 if it would now), for ``Retry-After``.
        Read-only: asking does not consume or refresh anything."""
        state = self._buckets.get(key)
        return take_token(state, self._clock(), rate=self._rate, burst=self._burst)[2]
