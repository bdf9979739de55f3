"""Accounts core: password hashing, session tokens, e-mail normalisation and rate limiting.

The KDF runs with n=2**10 (about 1 ms) except where the default cost is the point (DUMMY_HASH).
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from control.auth import (
    DUMMY_HASH,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    KdfParams,
    RateLimiter,
    hash_password,
    needs_rehash,
    new_session_token,
    normalize_email,
    take_token,
    token_digest,
    verify_password,
)

FAST = KdfParams(n=2**10)
PASSWORD = "correct horse battery staple"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


SALT = b64(b"s" * 16)
DIGEST = b64(b"d" * 32)


# -- passwords ---------------------------------------------------------------------------------


def test_round_trip_and_format() -> None:
    encoded = hash_password(PASSWORD, params=FAST)
    assert re.fullmatch(r"scrypt\$1024\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}", encoded)
    assert verify_password(PASSWORD, encoded)


def test_matches_hashlib_scrypt() -> None:
    # The format is an interface (other tools may verify these); pin it to the raw KDF.
    _, n, r, p, salt, digest = hash_password(PASSWORD, params=FAST).split("$")
    raw_salt = base64.urlsafe_b64decode(salt + "==")
    expected = hashlib.scrypt(
        PASSWORD.encode(), salt=raw_salt, n=int(n), r=int(r), p=int(p), dklen=32
    )
    assert base64.urlsafe_b64decode(digest + "=") == expected


@pytest.mark.parametrize(
    "attempt",
    [
        "correct horse battery stapl",
        "Correct horse battery staple",
        "correct horse battery staple ",
        "",
        "x" * (MAX_PASSWORD_CHARS + 1),
    ],
)
def test_wrong_password(attempt: str) -> None:
    assert not verify_password(attempt, hash_password(PASSWORD, params=FAST))


def test_same_password_different_salts() -> None:
    a, b = (hash_password(PASSWORD, params=FAST) for _ in range(2))
    assert a != b
    assert a.split("$")[4] != b.split("$")[4]
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)


def test_unicode_normalised_before_hashing() -> None:
    composed, decomposed = "caf\u00e9-p\u00e4ssword", "cafe\u0301-pa\u0308ssword"
    assert verify_password(decomposed, hash_password(composed, params=FAST))


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "at least 8"),
        ("x" * (MIN_PASSWORD_CHARS - 1), "at least 8"),
        ("x" * (MAX_PASSWORD_CHARS + 1), "at most 1024"),
        ("abcdefg\ud800", "valid Unicode"),
    ],
)
def test_unacceptable_passwords(password: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hash_password(password, params=FAST)


@pytest.mark.parametrize("length", [MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS])
def test_length_limits_inclusive(length: int) -> None:
    assert verify_password("p" * length, hash_password("p" * length, params=FAST))


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "scrypt",
        f"bcrypt$1024$8$1${SALT}${DIGEST}",
        f"scrypt$1024$8$1${SALT}",
        f"scrypt$1024$8$1${SALT}${DIGEST}$",
        f"$scrypt$1024$8$1${SALT}${DIGEST}",
        f"scrypt$1000$8$1${SALT}${DIGEST}",  # n not a power of two
        f"scrypt$1$8$1${SALT}${DIGEST}",  # n too small
        f"scrypt${2**21}$8$1${SALT}${DIGEST}",  # n too large
        f"scrypt${2**30}$8$1${SALT}${DIGEST}",  # would allocate terabytes
        f"scrypt$1024$0$1${SALT}${DIGEST}",
        f"scrypt$1024$33$1${SALT}${DIGEST}",
        f"scrypt$1024$8$0${SALT}${DIGEST}",
        f"scrypt$1024$8$17${SALT}${DIGEST}",
        f"scrypt$01024$8$1${SALT}${DIGEST}",  # leading zero
        f"scrypt$+1024$8$1${SALT}${DIGEST}",
        f"scrypt$ 1024$8$1${SALT}${DIGEST}",
        f"scrypt$\u0661\u0660\u0662\u0664$8$1${SALT}${DIGEST}",  # Arabic-Indic digits
        f"scrypt$1024$8$1$${DIGEST}",  # empty salt
        f"scrypt$1024$8$1${b64(b's' * 4)}${DIGEST}",  # salt too short
        f"scrypt$1024$8$1${SALT}$",  # empty hash
        f"scrypt$1024$8$1${SALT}${b64(b'd' * 8)}",  # hash too short
        f"scrypt$1024$8$1${SALT}${b64(b'd' * 65)}",  # hash too long
        f"scrypt$1024$8$1${SALT}+/${DIGEST}",  # not the URL-safe alphabet
        f"scrypt$1024$8$1${SALT}${DIGEST}=",  # padding is not written, so not accepted
        f"scrypt$1024$8$1${SALT}${DIGEST[:-1]}!",
        f"scrypt$1024$8$1$A${DIGEST}",  # impossible base64 length
        f"SCRYPT$1024$8$1${SALT}${DIGEST}",
    ],
)
def test_malformed_encodings_are_no_match(encoded: str) -> None:
    assert verify_password(PASSWORD, encoded) is False
    assert needs_rehash(encoded, FAST)


def test_well_formed_but_wrong_hash_is_no_match() -> None:
    assert verify_password(PASSWORD, f"scrypt$1024$8$1${SALT}${DIGEST}") is False


def test_tampered_hash_is_no_match() -> None:
    encoded = hash_password(PASSWORD, params=FAST)
    head, digest = encoded.rsplit("$", 1)
    flipped = ("A" if digest[0] != "A" else "B") + digest[1:]
    assert not verify_password(PASSWORD, f"{head}${flipped}")


@pytest.mark.parametrize(
    ("made_with", "now", "expected"),
    [
        (FAST, FAST, False),
        (FAST, KdfParams(n=2**11), True),
        (FAST, KdfParams(n=2**10, r=4), True),
        (FAST, KdfParams(n=2**10, p=2), True),
        (FAST, KdfParams(n=2**10, dklen=64), True),
        (KdfParams(n=2**11), FAST, True),  # lowering the cost also re-hashes: params are policy
    ],
)
def test_needs_rehash(made_with: KdfParams, now: KdfParams, expected: bool) -> None:
    encoded = hash_password(PASSWORD, params=made_with)
    assert needs_rehash(encoded, now) is expected
    assert verify_password(PASSWORD, encoded)


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 1000}, {"n": 1}, {"n": 2**21}, {"r": 0}, {"p": 0}, {"dklen": 8}, {"n": 2**20, "r": 8}],
)
def test_kdf_params_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="unsupported scrypt parameters"):
        KdfParams(**kwargs)


def test_default_params_documented_cost() -> None:
    assert KdfParams() == KdfParams(n=2**14, r=8, p=1, dklen=32)


# -- DUMMY_HASH --------------------------------------------------------------------------------


def test_dummy_hash_has_default_cost() -> None:
    # Same cost as a current real hash, so the unknown-address path takes as long as a known one.
    assert not needs_rehash(DUMMY_HASH, KdfParams())


@pytest.mark.parametrize("guess", ["", "password", "password123", "12345678", DUMMY_HASH])
def test_dummy_hash_verifies_nothing_real(guess: str) -> None:
    assert verify_password(guess, DUMMY_HASH) is False


# -- session tokens ----------------------------------------------------------------------------


def test_session_token_shape_and_digest() -> None:
    token, digest = new_session_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 bytes, URL-safe, unpadded
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == token_digest(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token not in digest


def test_token_digest_stable_and_tokens_unique() -> None:
    pairs = [new_session_token() for _ in range(200)]
    assert len({t for t, _ in pairs}) == len({d for _, d in pairs}) == 200
    assert token_digest("abc") == token_digest("abc") != token_digest("abd")
    assert token_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_token_digest_never_raises_on_garbage() -> None:
    # e.g. a header aiohttp decoded with surrogateescape
    assert re.fullmatch(r"[0-9a-f]{64}", token_digest("tok\udcff\x00"))


# -- e-mail addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM \n", "alice@example.com"),
        ("ALICE+Films@mail.example.co.uk", "alice+films@mail.example.co.uk"),
        ("first.last@example.com", "first.last@example.com"),  # dots are kept
        ("Stra\u00dfe@example.de", "stra\u00dfe@example.de"),  # lower, not casefold (ß stays)
        ("JOS\u0045\u0301@example.com", "jos\u00e9@example.com"),  # NFC
        ("a@b.c", "a@b.c"),
        ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
    ],
)
def test_normalize_email(raw: str, normalised: str) -> None:
    assert normalize_email(raw) == normalised
    assert normalize_email(normalised) == normalised  # idempotent


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "alice",
        "alice.example.com",
        "@example.com",
        "alice@",
        "alice@@example.com",
        "al@ice@example.com",
        "al ice@example.com",
        "alice@exa mple.com",
        "alice\t@example.com",
        "alice\u00a0@example.com",  # non-breaking space
        "alice\x00@example.com",
        "ali\u200bce@example.com",  # zero-width space (format character)
        "alice@localhost",
        "alice@example.",
        "alice@.example.com",
        "alice@example..com",
        "alice@" + "x" * 64 + ".com",  # label too long
        "x" * 65 + "@example.com",  # local part too long
        "a@" + ".".join(["x" * 60] * 5),  # whole address too long
        "alice\ud800@example.com",
    ],
)
def test_normalize_email_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="e-mail"):
        normalize_email(raw)


# -- rate limiter ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(
    clock: FakeClock, *, rate: float = 1.0, burst: int = 3, max_keys: int = 100
) -> RateLimiter:
    return RateLimiter(rate=rate, burst=burst, clock=clock, max_keys=max_keys)


@pytest.mark.parametrize(
    ("rate", "burst", "steps", "expected"),
    [
        # steps: (seconds to advance before the call, key); expected: allow() results
        (1.0, 3, [(0, "a")] * 4, [True, True, True, False]),
        (1.0, 1, [(0, "a"), (0, "a"), (0.999, "a"), (0.001, "a")], [True, False, False, True]),
        (
            0.5,
            2,
            [(0, "a"), (0, "a"), (0, "a"), (1, "a"), (1, "a")],
            [True, True, False, False, True],
        ),
        # refill never exceeds burst, however long the idle time
        (
            1.0,
            2,
            [(0, "a"), (0, "a"), (1e6, "a"), (0, "a"), (0, "a")],
            [True, True, True, True, False],
        ),
        # refused attempts do not consume tokens (nor push the refill out)
        (1.0, 1, [(0, "a"), (0.5, "a"), (0.5, "a")], [True, False, True]),
        # per-key isolation
        (
            1.0,
            1,
            [(0, "a"), (0, "a"), (0, "b"), (0, "b"), (0, "c")],
            [True, False, True, False, True],
        ),
        # a clock stepping backwards neither refills nor drains
        (1.0, 1, [(0, "a"), (-50, "a"), (1, "a")], [True, False, True]),
    ],
)
def test_token_bucket(
    rate: float, burst: int, steps: list[tuple[float, str]], expected: list[bool]
) -> None:
    clock = FakeClock()
    rl = limiter(clock, rate=rate, burst=burst)
    got = []
    for advance, key in steps:
        clock.now += advance
        got.append(rl.allow(key))
    assert got == expected


@pytest.mark.parametrize(
    ("rate", "burst", "used", "wait", "expected"),
    [
        (1.0, 2, 0, 0.0, 0.0),
        (1.0, 2, 1, 0.0, 0.0),
        (1.0, 2, 2, 0.0, 1.0),
        (1.0, 2, 2, 0.25, 0.75),
        (0.1, 1, 1, 0.0, 10.0),
        (0.1, 1, 1, 10.0, 0.0),
    ],
)
def test_retry_after(rate: float, burst: int, used: int, wait: float, expected: float) -> None:
    clock = FakeClock()
    rl = limiter(clock, rate=rate, burst=burst)
    for _ in range(used):
        assert rl.allow("a")
    clock.now += wait
    assert rl.retry_after("a") == pytest.approx(expected)
    assert rl.allow("a") is (expected == 0.0)


def test_retry_after_is_read_only() -> None:
    clock = FakeClock()
    rl = limiter(clock, burst=1)
    assert rl.retry_after("new") == 0.0
    assert len(rl) == 0
    rl.allow("a")
    for _ in range(5):
        assert rl.retry_after("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert rl.allow("a")


def test_idle_buckets_are_evicted() -> None:
    clock = FakeClock()
    rl = limiter(clock, rate=1.0, burst=5)
    for i in range(50):
        rl.allow(f"k{i}")
    assert len(rl) == 50
    clock.now += 5.0  # burst / rate: every bucket is full again, same as never seen
    rl.allow("fresh")
    assert len(rl) == 1


def test_memory_capped_lru_evicted() -> None:
    clock = FakeClock()
    rl = limiter(clock, rate=0.001, burst=1, max_keys=10)
    assert rl.allow("victim") and not rl.allow("victim")
    for i in range(9):
        rl.allow(f"k{i}")
        clock.now += 0.001
    assert len(rl) == 10
    assert not rl.allow("victim")  # still tracked; touching it makes it most recently used
    for i in range(100):
        rl.allow(f"spray{i}")
        assert len(rl) <= 10
    assert len(rl) == 10
    assert rl.allow("victim")  # evicted long ago: fails open with a fresh burst


def test_limited_key_survives_while_under_cap() -> None:
    clock = FakeClock()
    rl = limiter(clock, rate=0.001, burst=1, max_keys=10)
    rl.allow("victim")
    for i in range(9):
        rl.allow(f"k{i}")
    assert not rl.allow("victim")


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0.0}, {"rate": -1.0}, {"rate": float("nan")}, {"burst": 0}, {"max_keys": 0}],
)
def test_limiter_rejects_bad_config(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"rate": 1.0, "burst": 1, "max_keys": 10, **kwargs}
    with pytest.raises(ValueError):
        RateLimiter(
            rate=args["rate"],
            burst=int(args["burst"]),
            clock=FakeClock(),
            max_keys=int(args["max_keys"]),
        )


@pytest.mark.parametrize(
    ("state", "now", "rate", "burst", "expected"),
    [
        # A key never seen: a full bucket.
        (None, 100.0, 1.0, 3, (True, 2.0, 0.0)),
        (None, 100.0, 0.1, 1, (True, 0.0, 0.0)),
        # Refilled by the time elapsed, up to the burst.
        ((0.0, 100.0), 100.5, 1.0, 3, (False, 0.5, 0.5)),
        ((0.0, 100.0), 101.0, 1.0, 3, (True, 0.0, 0.0)),
        ((2.5, 100.0), 200.0, 1.0, 3, (True, 2.0, 0.0)),
        ((0.0, 100.0), 100.0, 0.25, 2, (False, 0.0, 4.0)),
        # A clock that stepped backwards refills nothing and drains nothing.
        ((0.5, 100.0), 90.0, 1.0, 3, (False, 0.5, 0.5)),
        ((1.5, 100.0), 90.0, 1.0, 3, (True, 0.5, 0.0)),
    ],
)
def test_take_token(
    state: tuple[float, float] | None,
    now: float,
    rate: float,
    burst: int,
    expected: tuple[bool, float, float],
) -> None:
    allowed, tokens, retry = take_token(state, now, rate=rate, burst=burst)
    assert (allowed, pytest.approx(tokens), pytest.approx(retry)) == expected


def test_refund_gives_back_one_token_up_to_the_burst() -> None:
    clock = FakeClock()
    lim = limiter(clock, rate=1.0, burst=2)
    assert lim.allow("a") and lim.allow("a") and not lim.allow("a")
    lim.refund("a")
    assert lim.allow("a") and not lim.allow("a")
    lim.refund("b")  # a key never seen holds a full bucket already: nothing to give back
    lim.refund("a")
    lim.refund("a")
    lim.refund("a")
    assert [lim.allow("a") for _ in range(3)] == [True, True, False]
