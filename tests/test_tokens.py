"""Tests for edge.tokens: signed URL tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import tokens
from edge.tokens import (
    MAX_EXPIRES,
    REASONS,
    TOKEN_PATH_PREFIX,
    SigningKeys,
    TokenRejected,
    TokenVerifier,
    generate_key_line,
    load_keys,
    sign,
    signed_path,
    split_token,
    verify,
)

SECRET_1 = bytes(range(32))
SECRET_0 = b"\x5a" * 32
SECRET_OTHER = b"\xa5" * 32
KEYS = SigningKeys(keys={"k1": SECRET_1, "k0": SECRET_0}, current="k1")

NOW = 1_700_000_000
EXP = NOW + 3600
TITLE = "/v/title1/"
IP4 = "192.0.2.1"
IP6 = "2001:db8::1"

PATH_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    secret: bytes, kid: str, exp: str, prefix_field: str, ip_field: str = "", mac_len: int = 16
) -> str:
    """Build a token from raw field text, MACed as the module docstring specifies.

    Written independently of edge.tokens so that the tests also pin down the documented format.
    """
    body = f"{kid}.{exp}.{prefix_field}.{ip_field}"
    mac = hmac.new(secret, b"opencdn-token-v1\n" + body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64(mac[:mac_len])}"


def with_field(token: str, index: int, value: str) -> str:
    fields = token.split(".")
    fields[index] = value
    return ".".join(fields)


def flip_mac_bit(token: str, byte: int, bit: int) -> str:
    mac_field = token.rsplit(".", 1)[1]
    mac = bytearray(base64.urlsafe_b64decode(mac_field + "=="))
    mac[byte] ^= 1 << bit
    return with_field(token, 4, b64(bytes(mac)))


T_TITLE = sign(KEYS, TITLE, EXP)
T_NOSLASH = sign(KEYS, "/v/title1", EXP)
T_IP4 = sign(KEYS, TITLE, EXP, IP4)
T_IP6 = sign(KEYS, TITLE, EXP, IP6)
T_MAPPED = sign(KEYS, TITLE, EXP, "::ffff:" + IP4)
T_ROOT = sign(KEYS, "/", EXP)
T_UNICODE = sign(KEYS, "/v/tïtle/", EXP)
T_SIGNED_K0 = sign(SigningKeys(keys=KEYS.keys, current="k0"), TITLE, EXP)
PREFIX_FIELD = b64(TITLE.encode())

# The MAC's last base64 character carries 4 bits of padding. Changing only those bits decodes to
# the same MAC bytes; comparing the text rejects it, so each token has a single valid spelling.
_last = T_TITLE[-1]
_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
T_NONCANONICAL = T_TITLE[:-1] + _alphabet[_alphabet.index(_last) ^ 1]


def check_with_function(token: str | None, path: str, now: float, client_ip: str | None) -> None:
    verify(KEYS, token, path, now, client_ip)


def check_with_verifier(token: str | None, path: str, now: float, client_ip: str | None) -> None:
    TokenVerifier(KEYS, clock=lambda: now).check(token, path, client_ip)


def check_twice_with_verifier(
    token: str | None, path: str, now: float, client_ip: str | None
) -> None:
    # The second call answers from the memo when the first succeeded: it must agree.
    verifier = TokenVerifier(KEYS, clock=lambda: now)
    first: TokenRejected | None = None
    try:
        verifier.check(token, path, client_ip)
    except TokenRejected as e:
        first = e
    try:
        verifier.check(token, path, client_ip)
    except TokenRejected as e:
        assert first is not None and first.reason == e.reason
        raise
    assert first is None


CHECKERS = [
    pytest.param(check_with_function, id="verify"),
    pytest.param(check_with_verifier, id="verifier"),
    pytest.param(check_twice_with_verifier, id="verifier-memo"),
]

Checker = Callable[[str | None, str, float, str | None], None]

ACCEPTED = [
    pytest.param(T_TITLE, "/v/title1/master.m3u8", NOW, None, id="basic"),
    pytest.param(T_TITLE, "/v/title1/720p/seg00001.ts", NOW, IP4, id="deeper, any client"),
    pytest.param(T_TITLE, "/v/title1/", NOW, None, id="prefix itself"),
    pytest.param(T_TITLE, "/v/title1/seg..1.ts", NOW, None, id="dots inside a name"),
    pytest.param(T_TITLE, "/v/title1/.hidden", NOW, None, id="dot-file"),
    pytest.param(T_TITLE, "/v/title1/x", EXP - 0.001, None, id="just before expiry"),
    pytest.param(T_NOSLASH, "/v/title1", NOW, None, id="no-slash prefix: exact"),
    pytest.param(T_NOSLASH, "/v/title1/", NOW, None, id="no-slash prefix: dir"),
    pytest.param(T_NOSLASH, "/v/title1/a/b.ts", NOW, None, id="no-slash prefix: below"),
    pytest.param(T_ROOT, "/anything/at/all", NOW, None, id="root prefix"),
    pytest.param(T_UNICODE, "/v/tïtle/x.ts", NOW, None, id="unicode prefix"),
    pytest.param(T_IP4, "/v/title1/x", NOW, IP4, id="ip4"),
    pytest.param(T_IP4, "/v/title1/x", NOW, "::ffff:" + IP4, id="ip4 token, mapped client"),
    pytest.param(T_MAPPED, "/v/title1/x", NOW, IP4, id="mapped token, ip4 client"),
    pytest.param(T_MAPPED, "/v/title1/x", NOW, "::FFFF:c000:201", id="mapped, hex form"),
    pytest.param(T_IP6, "/v/title1/x", NOW, IP6, id="ip6"),
    pytest.param(T_IP6, "/v/title1/x", NOW, "2001:DB8:0:0::1", id="ip6 other spelling"),
    pytest.param(T_SIGNED_K0, "/v/title1/x", NOW, None, id="non-current key verifies"),
]


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize(("token", "path", "now", "client_ip"), ACCEPTED)
def test_accepted(
    checker: Checker, token: str, path: str, now: float, client_ip: str | None
) -> None:
    checker(token, path, now, client_ip)


REJECTED = [
    # missing
    pytest.param(None, TITLE, NOW, None, "missing", id="missing"),
    # malformed
    pytest.param("", TITLE, NOW, None, "malformed", id="empty"),
    pytest.param("garbage", TITLE, NOW, None, "malformed", id="one field"),
    pytest.param(T_TITLE.rsplit(".", 1)[0], TITLE, NOW, None, "malformed", id="four fields"),
    pytest.param(T_TITLE + ".AAAA", TITLE, NOW, None, "malformed", id="six fields"),
    pytest.param(with_field(T_TITLE, 1, "17e9"), TITLE, NOW, None, "malformed", id="exp not int"),
    pytest.param(with_field(T_TITLE, 1, "-1"), TITLE, NOW, None, "malformed", id="exp negative"),
    pytest.param(with_field(T_TITLE, 1, ""), TITLE, NOW, None, "malformed", id="exp empty"),
    pytest.param(
        with_field(T_TITLE, 1, "1" * 13), TITLE, NOW, None, "malformed", id="exp too long"
    ),
    pytest.param(with_field(T_TITLE, 1, "١٢٣"), TITLE, NOW, None, "malformed", id="exp arabic"),
    pytest.param(with_field(T_TITLE, 2, "L3Y$"), TITLE, NOW, None, "malformed", id="b64 char"),
    pytest.param(with_field(T_TITLE, 2, "L3Y="), TITLE, NOW, None, "malformed", id="b64 padding"),
    pytest.param(with_field(T_TITLE, 2, "L3Y+"), TITLE, NOW, None, "malformed", id="b64 std alpha"),
    pytest.param(with_field(T_TITLE, 2, "L3YvL"), TITLE, NOW, None, "malformed", id="b64 length"),
    pytest.param(with_field(T_TITLE, 2, ""), TITLE, NOW, None, "malformed", id="prefix empty"),
    pytest.param(with_field(T_TITLE, 3, "AAAAA"), TITLE, NOW, None, "malformed", id="ip length"),
    pytest.param(with_field(T_TITLE, 0, ""), TITLE, NOW, None, "malformed", id="kid empty"),
    pytest.param(with_field(T_TITLE, 0, "k~1"), TITLE, NOW, None, "malformed", id="kid char"),
    pytest.param(with_field(T_TITLE, 0, "k" * 33), TITLE, NOW, None, "malformed", id="kid long"),
    pytest.param(T_TITLE[:-1], TITLE, NOW, None, "malformed", id="mac truncated"),
    pytest.param(T_TITLE + "A", TITLE, NOW, None, "malformed", id="mac extended"),
    pytest.param(
        forge(SECRET_1, "k1", str(EXP), PREFIX_FIELD, mac_len=32),
        TITLE,
        NOW,
        None,
        "malformed",
        id="full-length mac",
    ),
    pytest.param(T_TITLE + "\n", TITLE, NOW, None, "malformed", id="trailing newline"),
    pytest.param("A" * 5000, TITLE, NOW, None, "malformed", id="huge"),
    pytest.param(T_TITLE.replace(".", "~"), TITLE, NOW, None, "malformed", id="tilde separators"),
    # Correctly MACed, so only a signer bug or a leaked key could produce these; still rejected.
    pytest.param(
        forge(SECRET_1, "k1", str(EXP), b64(b"/v/\xff/")),
        TITLE,
        NOW,
        None,
        "malformed",
        id="authentic but prefix not utf-8",
    ),
    pytest.param(
        forge(SECRET_1, "k1", str(EXP), b64(b"v/title1/")),
        "v/title1/x",
        NOW,
        None,
        "malformed",
        id="authentic but prefix relative",
    ),
    pytest.param(
        forge(SECRET_1, "k1", str(EXP), PREFIX_FIELD, b64(b"\x01\x02\x03\x04\x05")),
        TITLE,
        NOW,
        IP4,
        "malformed",
        id="authentic but 5-byte ip",
    ),
    # unknown_key
    pytest.param(with_field(T_TITLE, 0, "k9"), TITLE, NOW, None, "unknown_key", id="unknown kid"),
    pytest.param(
        forge(SECRET_OTHER, "kx", str(EXP), PREFIX_FIELD), TITLE, NOW, None, "unknown_key", id="kx"
    ),
    # bad_signature
    pytest.param(flip_mac_bit(T_TITLE, 0, 0), TITLE, NOW, None, "bad_signature", id="flip first"),
    pytest.param(flip_mac_bit(T_TITLE, 15, 7), TITLE, NOW, None, "bad_signature", id="flip last"),
    pytest.param(T_NONCANONICAL, TITLE, NOW, None, "bad_signature", id="noncanonical mac"),
    pytest.param(
        forge(SECRET_OTHER, "k1", str(EXP), PREFIX_FIELD),
        TITLE,
        NOW,
        None,
        "bad_signature",
        id="other secret",
    ),
    pytest.param(
        with_field(T_TITLE, 0, "k0"), TITLE, NOW, None, "bad_signature", id="relabelled kid"
    ),
    pytest.param(
        with_field(T_TITLE, 1, str(EXP + 86400)),
        TITLE,
        NOW,
        None,
        "bad_signature",
        id="extended expiry",
    ),
    pytest.param(
        with_field(T_TITLE, 1, "0" + str(EXP)), TITLE, NOW, None, "bad_signature", id="exp zero"
    ),
    pytest.param(
        with_field(T_TITLE, 2, b64(b"/")), "/v/x", NOW, None, "bad_signature", id="widened prefix"
    ),
    pytest.param(
        with_field(T_IP4, 3, ""), TITLE, NOW, "198.51.100.7", "bad_signature", id="ip stripped"
    ),
    pytest.param(
        with_field(T_IP4, 3, b64(ipaddress.ip_address("198.51.100.7").packed)),
        TITLE,
        NOW,
        "198.51.100.7",
        "bad_signature",
        id="ip replaced",
    ),
    pytest.param(
        forge(SECRET_1, "k1", str(EXP), PREFIX_FIELD, mac_len=12) + "AAAAAA",
        TITLE,
        NOW,
        None,
        "bad_signature",
        id="short mac padded",
    ),
    # expired (exclusive: at now == expires the token is expired)
    pytest.param(T_TITLE, TITLE, EXP, None, "expired", id="at expiry"),
    pytest.param(T_TITLE, TITLE, EXP + 0.001, None, "expired", id="just after"),
    pytest.param(T_TITLE, TITLE, EXP + 10**9, None, "expired", id="long after"),
    pytest.param(sign(KEYS, TITLE, 0), TITLE, 0, None, "expired", id="expiry 0"),
    # out_of_scope
    pytest.param(T_TITLE, "/v/title10/x.ts", NOW, None, "out_of_scope", id="sibling title"),
    pytest.param(T_NOSLASH, "/v/title10/x.ts", NOW, None, "out_of_scope", id="noslash sibling"),
    pytest.param(T_NOSLASH, "/v/title10", NOW, None, "out_of_scope", id="noslash longer name"),
    pytest.param(T_NOSLASH, "/v/title", NOW, None, "out_of_scope", id="noslash shorter"),
    pytest.param(T_TITLE, "/v/title1", NOW, None, "out_of_scope", id="dir without slash"),
    pytest.param(T_TITLE, "/v/title2/x.ts", NOW, None, "out_of_scope", id="other title"),
    pytest.param(T_TITLE, "/v/", NOW, None, "out_of_scope", id="parent"),
    pytest.param(T_TITLE, "/", NOW, None, "out_of_scope", id="root"),
    pytest.param(T_TITLE, "", NOW, None, "out_of_scope", id="empty path"),
    pytest.param(T_TITLE, "v/title1/x", NOW, None, "out_of_scope", id="relative"),
    pytest.param(T_TITLE, "/V/TITLE1/x", NOW, None, "out_of_scope", id="case"),
    pytest.param(T_TITLE, "/v/title1/../title2/x", NOW, None, "out_of_scope", id="dotdot"),
    pytest.param(T_TITLE, "/v/title1/..", NOW, None, "out_of_scope", id="trailing dotdot"),
    pytest.param(T_TITLE, "/v/title1/./x", NOW, None, "out_of_scope", id="dot segment"),
    pytest.param(T_TITLE, "/v/title1/.", NOW, None, "out_of_scope", id="trailing dot"),
    pytest.param(T_TITLE, "/v/title1//x", NOW, None, "out_of_scope", id="double slash"),
    pytest.param(T_ROOT, "//evil/x", NOW, None, "out_of_scope", id="root, double slash"),
    pytest.param(T_TITLE, "/v/title1/x\x00.ts", NOW, None, "out_of_scope", id="nul"),
    pytest.param(T_TITLE, "/v/title1/..\\title2\\x", NOW, None, "out_of_scope", id="backslash"),
    pytest.param(T_TITLE, "/v/title1/%2e%2e/title2/x", NOW, None, "out_of_scope", id="%2e%2e"),
    pytest.param(T_TITLE, "/v/title1/..%2ftitle2", NOW, None, "out_of_scope", id="%2f"),
    pytest.param(T_TITLE, "/v/title1%2F..%2Ftitle2", NOW, None, "out_of_scope", id="%2F prefix"),
    pytest.param(T_TITLE, "/v/title1/%252e%252e/x", NOW, None, "out_of_scope", id="double enc"),
    pytest.param(T_UNICODE, "/v/title/x", NOW, None, "out_of_scope", id="unicode vs ascii"),
    # wrong_client
    pytest.param(T_IP4, TITLE, NOW, "192.0.2.2", "wrong_client", id="other ip4"),
    pytest.param(T_IP4, TITLE, NOW, None, "wrong_client", id="no client ip"),
    pytest.param(T_IP4, TITLE, NOW, "", "wrong_client", id="empty client ip"),
    pytest.param(T_IP4, TITLE, NOW, "not-an-ip", "wrong_client", id="garbage client ip"),
    pytest.param(T_IP4, TITLE, NOW, IP4 + " ", "wrong_client", id="client ip with space"),
    pytest.param(T_IP4, TITLE, NOW, "::ffff:192.0.2.2", "wrong_client", id="other mapped"),
    pytest.param(T_IP4, TITLE, NOW, "::192.0.2.1", "wrong_client", id="ipv4-compatible"),
    pytest.param(T_IP4, TITLE, NOW, "64:ff9b::c000:201", "wrong_client", id="nat64 form"),
    pytest.param(T_IP6, TITLE, NOW, "2001:db8::2", "wrong_client", id="other ip6"),
    pytest.param(T_IP6, TITLE, NOW, IP4, "wrong_client", id="ip6 token, ip4 client"),
    pytest.param(T_MAPPED, TITLE, NOW, "192.0.2.2", "wrong_client", id="mapped token, other"),
    # Order of checks: the first failing one is the reason.
    pytest.param(T_IP4, "/other/", EXP, "192.0.2.9", "expired", id="expired beats rest"),
    pytest.param(T_IP4, "/other/", NOW, "192.0.2.9", "wrong_client", id="client beats scope"),
    pytest.param(
        with_field(T_TITLE, 0, "k9"), TITLE, EXP, None, "unknown_key", id="key before expiry"
    ),
    pytest.param(
        flip_mac_bit(T_TITLE, 3, 3), TITLE, EXP, None, "bad_signature", id="mac before expiry"
    ),
]


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize(("token", "path", "now", "client_ip", "reason"), REJECTED)
def test_rejected(
    checker: Checker, token: str | None, path: str, now: float, client_ip: str | None, reason: str
) -> None:
    assert reason in REASONS
    with pytest.raises(TokenRejected) as excinfo:
        checker(token, path, now, client_ip)
    assert excinfo.value.reason == reason
    assert str(excinfo.value) == reason


def test_every_reason_is_covered() -> None:
    covered = {p.values[-1] for p in REJECTED}
    assert covered == REASONS


def test_token_shape() -> None:
    kid, exp, prefix_field, ip_field, mac = T_IP4.split(".")
    assert (kid, exp, ip_field) == ("k1", str(EXP), b64(bytes([192, 0, 2, 1])))
    assert base64.urlsafe_b64decode(prefix_field + "==") == TITLE.encode()
    assert len(mac) == 22
    # The format is exactly what the docstring describes (forge() follows the docstring).
    assert forge(SECRET_1, "k1", str(EXP), prefix_field, ip_field) == T_IP4
    # IPv4-mapped addresses are stored as IPv4, so both spellings sign the same token.
    assert T_MAPPED == T_IP4
    assert len(T_TITLE) == 52 and len(T_IP4) == 58


# --- signing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expires", "client_ip"),
    [
        pytest.param("", EXP, None, id="empty prefix"),
        pytest.param("v/title1/", EXP, None, id="relative prefix"),
        pytest.param("/v/../x/", EXP, None, id="dotdot segment"),
        pytest.param("/v/a..b/", EXP, None, id="dotdot inside name"),
        pytest.param("/v//x/", EXP, None, id="double slash"),
        pytest.param("/v/x\x00/", EXP, None, id="nul"),
        pytest.param("/v/./x/", EXP, None, id="dot segment"),
        pytest.param("/v/%2e%2e/", EXP, None, id="percent"),
        pytest.param("/v\\x/", EXP, None, id="backslash"),
        pytest.param("/v/\udcff/", EXP, None, id="lone surrogate"),
        pytest.param("/" + "a" * 1024, EXP, None, id="too long"),
        pytest.param(b"/v/", EXP, None, id="bytes prefix"),
        pytest.param(TITLE, -1, None, id="negative expiry"),
        pytest.param(TITLE, MAX_EXPIRES + 1, None, id="expiry too large"),
        pytest.param(TITLE, 1.5, None, id="float expiry"),
        pytest.param(TITLE, True, None, id="bool expiry"),
        pytest.param(TITLE, "1700000000", None, id="str expiry"),
        pytest.param(TITLE, EXP, "not-an-ip", id="bad ip"),
        pytest.param(TITLE, EXP, "", id="empty ip"),
    ],
)
def test_sign_rejects_bad_input(prefix: object, expires: object, client_ip: str | None) -> None:
    with pytest.raises(ValueError):
        sign(KEYS, prefix, expires, client_ip)  # type: ignore[arg-type]


def test_sign_accepts_limits() -> None:
    verify(KEYS, sign(KEYS, "/" + "a" * 1023, MAX_EXPIRES), "/" + "a" * 1023, NOW, None)
    verify(KEYS, sign(KEYS, "/", MAX_EXPIRES, "ffff::ffff"), "/x", NOW, "ffff::ffff")


# --- key rotation ------------------------------------------------------------------------------

OLD = SigningKeys(keys={"old": SECRET_0}, current="old")
ROTATING = SigningKeys(keys={"new": SECRET_1, "old": SECRET_0}, current="new")
ROTATED = SigningKeys(keys={"new": SECRET_1}, current="new")
T_OLD = sign(OLD, TITLE, EXP)
T_NEW = sign(ROTATING, TITLE, EXP)


@pytest.mark.parametrize(
    ("keys", "token", "reason"),
    [
        pytest.param(OLD, T_OLD, None, id="old token, old keys"),
        pytest.param(ROTATING, T_OLD, None, id="old token still listed"),
        pytest.param(ROTATING, T_NEW, None, id="new token, new keys"),
        pytest.param(OLD, T_NEW, "unknown_key", id="new token, old keys"),
        pytest.param(ROTATED, T_OLD, "unknown_key", id="old token, old key removed"),
        pytest.param(ROTATED, T_NEW, None, id="new token after removal"),
    ],
)
def test_key_rotation(keys: SigningKeys, token: str, reason: str | None) -> None:
    assert T_NEW.startswith("new.") and T_OLD.startswith("old.")
    if reason is None:
        verify(keys, token, TITLE, NOW, None)
        TokenVerifier(keys, clock=lambda: NOW).check(token, TITLE, None)
    else:
        with pytest.raises(TokenRejected, match=reason):
            verify(keys, token, TITLE, NOW, None)


def test_replace_keys_drops_memoised_tokens_of_removed_key() -> None:
    verifier = TokenVerifier(ROTATING, clock=lambda: NOW)
    verifier.check(T_OLD, TITLE, None)
    verifier.check(T_OLD, TITLE, None)  # memoised now
    verifier.replace_keys(ROTATED)
    assert verifier.keys is ROTATED
    with pytest.raises(TokenRejected, match="unknown_key"):
        verifier.check(T_OLD, TITLE, None)
    verifier.check(T_NEW, TITLE, None)


# --- SigningKeys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "current"),
    [
        pytest.param({}, "k1", id="no keys"),
        pytest.param({"k1": SECRET_1}, "k2", id="current not listed"),
        pytest.param({"k1": b"x" * 15}, "k1", id="short secret"),
        pytest.param({"k 1": SECRET_1}, "k 1", id="bad id"),
        pytest.param({"k1": "text secret not bytes"}, "k1", id="str secret"),
    ],
)
def test_signing_keys_validation(keys: dict[str, bytes], current: str) -> None:
    with pytest.raises(ValueError):
        SigningKeys(keys=keys, current=current)


def test_signing_keys_repr_hides_secrets_and_copies() -> None:
    source = {"k1": SECRET_1}
    keys = SigningKeys(keys=source, current="k1")
    assert "k1" in repr(keys)
    assert repr(SECRET_1) not in repr(keys) and SECRET_1.hex() not in repr(keys)
    source["k2"] = SECRET_0
    assert list(keys.keys) == ["k1"]


# --- load_keys ---------------------------------------------------------------------------------

HEX_SECRET = "hex:" + SECRET_1.hex()
B64_SECRET = "b64:" + base64.b64encode(SECRET_0).decode()
B64URL_SECRET = "b64:" + b64(b"\xfb\xff" * 16)


def test_load_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        "# edge signing keys\n"
        "\n"
        f"  k2   {HEX_SECRET}   # current\r\n"
        f"k1\t{B64_SECRET}\n"
        f"k0 {B64URL_SECRET}\n"
        "   # trailing comment\n"
    )
    keys = load_keys(path)
    assert keys.current == "k2"
    assert dict(keys.keys) == {"k2": SECRET_1, "k1": SECRET_0, "k0": b"\xfb\xff" * 16}


def test_generate_key_line(tmp_path: Path) -> None:
    line = generate_key_line("edge-2024_q1")
    assert line != generate_key_line("edge-2024_q1")
    path = tmp_path / "keys"
    path.write_text(line + "\n" + generate_key_line("older") + "\n")
    keys = load_keys(path)
    assert keys.current == "edge-2024_q1"
    assert len(keys.keys["edge-2024_q1"]) == 32
    with pytest.raises(ValueError):
        generate_key_line("bad id")


# A secret-only line where the secret happens to look like a key id, to check it is not quoted.
ID_LIKE_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtMTIz"

LOAD_ERRORS = [
    # (file content, line in the message or None, fragment of the message, text never shown)
    pytest.param("", None, "no keys", None, id="empty file"),
    pytest.param("# only\n\n   \n", None, "no keys", None, id="only comments"),
    pytest.param(f"{HEX_SECRET}\n", 1, "expected 'KEYID SECRET'", HEX_SECRET, id="one field"),
    pytest.param(f"k1 {HEX_SECRET} extra\n", 1, "found 3 field(s)", HEX_SECRET, id="three fields"),
    pytest.param(
        f"k1 {HEX_SECRET[:20]} {HEX_SECRET[20:]}\n",
        1,
        "found 3 field(s)",
        HEX_SECRET[4:20],
        id="secret split by space",
    ),
    pytest.param(f"k.1 {HEX_SECRET}\n", 1, "key id must match", HEX_SECRET, id="bad key id"),
    pytest.param(f"{'k' * 33} {HEX_SECRET}\n", 1, "key id must match", HEX_SECRET, id="long id"),
    pytest.param(
        f"k1 {SECRET_1.hex()}\n", 1, "must start with 'hex:' or 'b64:'", SECRET_1.hex(), id="bare"
    ),
    pytest.param(
        f"{ID_LIKE_SECRET} k1\n", 1, "must start with", ID_LIKE_SECRET, id="fields swapped"
    ),
    pytest.param(f"k1 {HEX_SECRET}0\n", 1, "hex digits", SECRET_1.hex(), id="odd hex"),
    pytest.param(f"k1 {HEX_SECRET[:-1]}g\n", 1, "hex digits", SECRET_1.hex()[:-1], id="bad hex"),
    pytest.param(f"k1 {B64_SECRET}!\n", 1, "not base64", B64_SECRET[4:], id="bad b64 char"),
    pytest.param(f"k1 {B64_SECRET}A\n", 1, "not base64", B64_SECRET[4:], id="bad b64 length"),
    pytest.param(f"k1 {B64_SECRET}===\n", 1, "not base64", B64_SECRET[4:], id="b64 padding"),
    pytest.param("k1 hex:\n", 1, "hex digits", None, id="empty hex"),
    pytest.param(
        f"k1 hex:{'ab' * 15}\n", 1, "15 bytes, need at least 16", "ab" * 15, id="short secret"
    ),
    pytest.param(
        f"# keys\nk1 {HEX_SECRET}\n\nk2 {B64_SECRET}\nk1 hex:{'cd' * 16}\n",
        5,
        "duplicate key id 'k1' (first on line 2)",
        "cd" * 16,
        id="duplicate id",
    ),
    pytest.param(
        f"k1 {HEX_SECRET}\nk2 b64:".encode() + b"\xff\xfe\n",
        2,
        "not valid UTF-8",
        None,
        id="not utf-8",
    ),
]


@pytest.mark.parametrize(("content", "line", "fragment", "hidden"), LOAD_ERRORS)
def test_load_keys_errors(
    tmp_path: Path, content: str | bytes, line: int | None, fragment: str, hidden: str | None
) -> None:
    path = tmp_path / "edge.keys"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as excinfo:
        load_keys(path)
    message = str(excinfo.value)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(where), message
    assert fragment in message
    if hidden is not None:
        assert hidden not in message
    for secret in (SECRET_1, SECRET_0):
        assert secret.hex() not in message


def test_load_keys_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.keys"
    with pytest.raises(ValueError, match=r"nope\.keys: cannot read key file"):
        load_keys(path)


# --- split_token / signed_path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/_t/TOK/v/x", ("TOK", "/v/x"), id="token and path"),
        pytest.param("/_t/TOK/v/title1/720p/index.m3u8", ("TOK", "/v/title1/720p/index.m3u8")),
        pytest.param("/v/x", (None, "/v/x"), id="no token"),
        pytest.param("/", (None, "/"), id="root"),
        pytest.param("/_t/TOK", ("TOK", "/"), id="token only"),
        pytest.param("/_t/TOK/", ("TOK", "/"), id="token and slash"),
        pytest.param("/_t/", ("", "/"), id="empty token"),
        pytest.param("/_t//v/x", ("", "/v/x"), id="empty token with path"),
        pytest.param("/_t", (None, "/_t"), id="marker without slash"),
        pytest.param("/_tx/TOK/v/x", (None, "/_tx/TOK/v/x"), id="longer marker"),
        pytest.param("/_T/TOK/v/x", (None, "/_T/TOK/v/x"), id="marker is case-sensitive"),
        pytest.param("/v/_t/TOK/x", (None, "/v/_t/TOK/x"), id="marker not at start"),
        pytest.param("/_t/A/_t/B/x", ("A", "/_t/B/x"), id="only the first is a token"),
    ],
)
def test_split_token(path: str, expected: tuple[str | None, str]) -> None:
    assert split_token(path) == expected


def test_signed_path() -> None:
    assert signed_path(T_TITLE, "/v/title1/master.m3u8") == (
        f"{TOKEN_PATH_PREFIX}{T_TITLE}/v/title1/master.m3u8"
    )
    assert split_token(signed_path(T_TITLE, "/v/title1/a.ts")) == (T_TITLE, "/v/title1/a.ts")
    for token, path in [(T_TITLE, "v/x"), (T_TITLE, ""), ("", "/v/x"), ("a/b", "/v/x")]:
        with pytest.raises(ValueError):
            signed_path(token, path)


def test_relative_url_resolution_keeps_token() -> None:
    # What a player does with a relative URL inside a manifest (RFC 3986 resolution).
    from urllib.parse import urljoin

    master = "https://edge.example" + signed_path(T_TITLE, "/v/title1/master.m3u8?x=1")
    for ref in ["720p/index.m3u8", "./720p/index.m3u8", "720p/seg1.ts?q=2"]:
        resolved = urljoin(master, ref).removeprefix("https://edge.example").split("?")[0]
        token, path = split_token(resolved)
        assert token == T_TITLE
        verify(KEYS, token, path, NOW, None)


# --- property: sign -> verify round-trips ------------------------------------------------------

segments = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\\%\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: ".." not in s and s != ".")
prefixes = (
    st.lists(segments, min_size=0, max_size=5)
    .flatmap(lambda segs: st.sampled_from(["/" + "/".join(segs), "/" + "/".join(segs) + "/"]))
    .map(lambda p: "/" if p == "//" else p)
)
ips = st.one_of(st.none(), st.ip_addresses().map(str))


@given(prefix=prefixes, expires=st.integers(1, MAX_EXPIRES), client_ip=ips)
def test_sign_verify_round_trip(prefix: str, expires: int, client_ip: str | None) -> None:
    token = sign(KEYS, prefix, expires, client_ip)
    assert PATH_SAFE.fullmatch(token)
    assert not set("/?#%~") & set(token)
    token_in_path, rest = split_token(signed_path(token, prefix))
    assert token_in_path == token and rest == prefix
    below = prefix + ("x" if prefix.endswith("/") else "/x")
    for path in (prefix, below):
        verify(KEYS, token, path, expires - 1, client_ip)
    verifier = TokenVerifier(KEYS, clock=lambda: expires - 0.5)
    verifier.check(token, below, client_ip)
    verifier.check(token, below, client_ip)
    with pytest.raises(TokenRejected, match="expired"):
        verify(KEYS, token, below, expires, client_ip)
    if client_ip is not None:
        mapped = ipaddress.ip_address(client_ip)
        if mapped.version == 4:
            verify(KEYS, token, below, 0, f"::ffff:{client_ip}")


# --- the memo ----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def full_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every token that goes through full (non-memoised) verification."""
    calls: list[str] = []
    real = tokens._verify_token

    def spy(*args: object) -> object:
        calls.append(args[1])  # type: ignore[arg-type]
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tokens, "_verify_token", spy)
    return calls


def test_memo_skips_full_verification(full_verifications: list[str]) -> None:
    verifier = TokenVerifier(KEYS, clock=Clock(NOW))
    for i in range(5):
        verifier.check(T_TITLE, f"/v/title1/seg{i}.ts", "198.51.100.1")
    # Unbound tokens are shared by every client.
    verifier.check(T_TITLE, "/v/title1/seg9.ts", "198.51.100.2")
    assert full_verifications == [T_TITLE]


def test_memo_does_not_bypass_expiry(full_verifications: list[str]) -> None:
    clock = Clock(NOW)
    verifier = TokenVerifier(KEYS, clock=clock)
    verifier.check(T_IP4, "/v/title1/a.ts", IP4)
    clock.now = EXP - 0.001
    verifier.check(T_IP4, "/v/title1/b.ts", IP4)
    clock.now = EXP
    with pytest.raises(TokenRejected, match="expired"):
        verifier.check(T_IP4, "/v/title1/c.ts", IP4)
    assert full_verifications == [T_IP4]  # the rejection came from the memo path


def test_memo_does_not_bypass_ip_binding(full_verifications: list[str]) -> None:
    verifier = TokenVerifier(KEYS, clock=Clock(NOW))
    verifier.check(T_IP4, "/v/title1/a.ts", IP4)
    for other in ["192.0.2.2", None, "", "::ffff:192.0.2.2"]:
        with pytest.raises(TokenRejected, match="wrong_client"):
            verifier.check(T_IP4, "/v/title1/a.ts", other)
    # A different spelling of the same address verifies in full, then still works.
    verifier.check(T_IP4, "/v/title1/a.ts", "::ffff:" + IP4)
    verifier.check(T_IP4, "/v/title1/a.ts", IP4)
    assert full_verifications.count(T_IP4) == 7


def test_memo_does_not_bypass_scope_or_signature() -> None:
    verifier = TokenVerifier(KEYS, clock=Clock(NOW))
    verifier.check(T_TITLE, "/v/title1/a.ts", None)
    for path in ["/v/title2/a.ts", "/v/title1/../title2/a.ts", "/v/title10/a.ts"]:
        with pytest.raises(TokenRejected, match="out_of_scope"):
            verifier.check(T_TITLE, path, None)
    with pytest.raises(TokenRejected, match="bad_signature"):
        verifier.check(flip_mac_bit(T_TITLE, 0, 0), "/v/title1/a.ts", None)
    with pytest.raises(TokenRejected, match="missing"):
        verifier.check(None, "/v/title1/a.ts", None)


def test_memo_is_bounded(full_verifications: list[str]) -> None:
    verifier = TokenVerifier(KEYS, clock=Clock(NOW), memo_size=3)
    many = [sign(KEYS, f"/v/t{i}/", EXP) for i in range(10)]
    for i, token in enumerate(many):
        verifier.check(token, f"/v/t{i}/x", None)
        assert len(verifier._memo) <= 3
    full_verifications.clear()
    verifier.check(many[-1], "/v/t9/x", None)  # still memoised
    verifier.check(many[0], "/v/t0/x", None)  # evicted long ago
    assert full_verifications == [many[0]]


def test_memo_disabled(full_verifications: list[str]) -> None:
    verifier = TokenVerifier(KEYS, clock=Clock(NOW), memo_size=0)
    for _ in range(3):
        verifier.check(T_TITLE, "/v/title1/x", None)
    assert full_verifications == [T_TITLE] * 3
    assert len(verifier._memo) == 0
    with pytest.raises(ValueError):
        TokenVerifier(KEYS, memo_size=-1)


def test_memo_does_not_store_rejections(full_verifications: list[str]) -> None:
    clock = Clock(EXP)
    verifier = TokenVerifier(KEYS, clock=clock)
    for _ in range(2):
        with pytest.raises(TokenRejected, match="expired"):
            verifier.check(T_TITLE, "/v/title1/x", None)
    assert full_verifications == [T_TITLE] * 2
    assert len(verifier._memo) == 0


# --- clock injection ---------------------------------------------------------------------------


def test_injected_clock_is_used() -> None:
    token = sign(KEYS, TITLE, 100)
    clock = Clock(99.5)
    verifier = TokenVerifier(KEYS, clock=clock)
    verifier.check(token, "/v/title1/x", None)  # valid at the injected time, not at time.time()
    clock.now = 100
    with pytest.raises(TokenRejected, match="expired"):
        verifier.check(token, "/v/title1/x", None)
    clock.now = 50  # the clock may even go back; the verifier just asks it
    verifier.check(token, "/v/title1/x", None)


def test_default_clock_is_wall_clock() -> None:
    verifier = TokenVerifier(KEYS)
    verifier.check(sign(KEYS, TITLE, int(time.time()) + 60), "/v/title1/x", None)
    with pytest.raises(TokenRejected, match="expired"):
        verifier.check(sign(KEYS, TITLE, int(time.time()) - 1), "/v/title1/x", None)
