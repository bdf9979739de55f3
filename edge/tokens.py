"""Signed URL tokens for the edge.

A token authorises requests under one path prefix (typically a whole title, e.g. ``/v/title1/``)
until an expiry time, optionally only from one client IP address. It is an HMAC-SHA256 over all of
those fields plus the id of the key that signed it, so keys can rotate without downtime: every
listed key verifies, only the current one signs.

Where the token goes
--------------------
The token is a path segment, not a query parameter::

    /_t/<TOKEN>/v/title1/master.m3u8

HLS/DASH players resolve the relative URLs inside a manifest against the manifest's URL, which
keeps the path but drops the query, so "720p/index.m3u8" becomes
``/_t/<TOKEN>/v/title1/720p/index.m3u8`` and still carries the token. `split_token` takes it off
again; the server then normalises the remaining path and calls `TokenVerifier.check`.

Token format
------------
Five fields separated by ``.``::

    KID.EXPIRES.PREFIX.IP.MAC

``KID``
    Key id, ``[A-Za-z0-9_-]{1,32}``, written as is.
``EXPIRES``
    Unix time in whole seconds, decimal. The token is valid while ``now < EXPIRES``; at
    ``now == EXPIRES`` it has expired (the bound is exclusive).
``PREFIX``
    The scoped path prefix, UTF-8, URL-safe base64 without padding.
``IP``
    Empty when the token is not bound to a client; otherwise the packed address (4 bytes for IPv4,
    16 for IPv6), URL-safe base64 without padding. IPv4-mapped IPv6 addresses
    (``::ffff:1.2.3.4``) are stored and compared as the IPv4 address.
``MAC``
    The first 16 bytes (128 bits) of ``HMAC-SHA256(secret, b"opencdn-token-v1\\n" + BODY)``,
    URL-safe base64 without padding (always 22 characters), where ``BODY`` is the token text up to,
    not including, the last ``.`` (ASCII). Truncating to 128 bits keeps every segment URL in a
    manifest 21 characters shorter while still leaving forgery at 2**-128 per guess.

No field can contain ``.`` (base64url, digits and key ids cannot), so the MAC input splits into
fields in exactly one way and every field, the key id included, is bound by the MAC. The MAC is
computed over the text as sent, so a token has a single valid spelling. All characters are from
``[A-Za-z0-9_.-]``: never ``/``, ``?``, ``#`` or ``%``. ``~`` is reserved to mark a future
format version. A token for ``/v/title1/`` is 52 characters long, 58 when bound to an IPv4
address.

Rejection reasons
-----------------
Checks run in this order and the first failure is the reason (`TokenRejected.reason`):

``missing``        no token in the path.
``malformed``      not five fields of the right characters and lengths (a truncated MAC is
                   malformed: its length is fixed), or fields that do not decode.
``unknown_key``    the key id is not listed (e.g. a key that was rotated out).
``bad_signature``  the MAC does not match; any altered field, or another key's signature.
``expired``        ``now >= EXPIRES``.
``wrong_client``   the token is bound to an address and the client's differs (or is unknown).
``out_of_scope``   the path is outside the prefix, or is not in clean normalised form.

The signature is checked before the expiry, the client and the scope, so those three reasons
only count genuine tokens.

Scope rule
----------
A prefix ending in ``/`` scopes every path that starts with it. A prefix not ending in ``/``
scopes exactly that path and everything below it: ``/v/title1`` allows ``/v/title1`` and
``/v/title1/...`` but not ``/v/title10/...``. Prefixes must start with ``/`` and must not contain
``..``, ``//``, NUL, ``\\``, ``%`` or a ``.`` segment.

The request path is expected to be decoded and normalised already. As defence in depth, a path
that still contains a ``.`` or ``..`` segment, ``//``, NUL, ``\\`` or ``%`` is rejected as
``out_of_scope`` instead of being matched. A ``%`` left after decoding means double encoding, and
a second decoding step elsewhere could turn it into ``..``.

Key file
--------
One key per line, ``KEYID SECRET`` separated by whitespace. ``SECRET`` starts with ``hex:``
(hexadecimal) or ``b64:`` (base64, standard or URL-safe alphabet, padding optional) and decodes
to at least 16 bytes. A ``#`` starts a comment running to the end of the line; blank lines are
ignored. The first key is the current signing key. `generate_key_line` writes a new line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

__all__ = [
    "REASONS",
    "TOKEN_PATH_PREFIX",
    "SigningKeys",
    "TokenRejected",
    "TokenVerifier",
    "generate_key_line",
    "load_keys",
    "redact",
    "sign",
    "signed_path",
    "split_token",
    "verify",
]

TOKEN_PATH_PREFIX: Final = "/_t/"

REASONS: Final = frozenset(
    {
        "missing",
        "malformed",
        "unknown_key",
        "bad_signature",
        "expired",
        "out_of_scope",
        "wrong_client",
    }
)

MIN_SECRET_BYTES: Final = 16
MAX_PREFIX_BYTES: Final = 1024
# Longest expiry is 12 digits (about the year 33000). The bound keeps int() and the token short.
MAX_EXPIRES: Final = 10**12 - 1
# Longest token a maximal prefix and an IPv6 binding produce, rounded up. Anything longer is
# rejected before the regex looks at it.
MAX_TOKEN_LEN: Final = 2048

_MAC_BYTES: Final = 16
_MAC_DOMAIN: Final = b"opencdn-token-v1\n"
_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64: Final = r"[A-Za-z0-9_-]"
_TOKEN_RE: Final = re.compile(
    rf"({_B64}{{1,32}})\.([0-9]{{1,12}})\.({_B64}{{2,}})\.({_B64}*)\.({_B64}{{22}})"
)
_TOKEN_PREFIX_LEN: Final = len(TOKEN_PATH_PREFIX)
_V4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"


class TokenRejected(Exception):
    """The request's token does not authorise it; `reason` is a short label for metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SigningKeys:
    """Key id -> secret. `current` signs new tokens; every listed key verifies."""

    # repr=False so that logging a SigningKeys (or an object holding one) cannot leak secrets.
    keys: Mapping[str, bytes] = field(repr=False)
    current: str

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("no signing keys")
        for key_id, secret in self.keys.items():
            if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
                raise ValueError(f"invalid key id {key_id!r}")
            if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"key {key_id}: secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.current not in self.keys:
            raise ValueError(f"current key {self.current!r} is not among the keys")
        # A private read-only copy: a caller mutating its dict later must not change which keys
        # verify behind the verifier's back (its memo would go stale).
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __repr__(self) -> str:
        return f"SigningKeys(ids={sorted(self.keys)!r}, current={self.current!r})"


def _mac_states(keys: SigningKeys) -> dict[str, hmac.HMAC]:
    # HMAC state after absorbing the key and the domain tag; copying it is about twice as fast as
    # starting a fresh HMAC for every request.
    return {kid: hmac.new(secret, _MAC_DOMAIN, hashlib.sha256) for kid, secret in keys.keys.items()}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    # Raises binascii.Error for a length that no unpadded encoding has (1 mod 4).
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(state: hmac.HMAC, body: bytes) -> bytes:
    h = state.copy()
    h.update(body)
    return base64.urlsafe_b64encode(h.digest()[:_MAC_BYTES]).rstrip(b"=")


def _packed_ip(address: str) -> bytes:
    """Packed form of an IP address, IPv4-mapped IPv6 folded to IPv4. Raises ValueError."""
    # Fast path: inet_pton is 5 to 20 times cheaper than ipaddress. The round trip through
    # inet_ntop keeps the accepted syntax exactly ipaddress's whatever the libc: only the
    # canonical spelling takes this path (including "::ffff:1.2.3.4", the form dual-stack sockets
    # report IPv4 peers in); anything else is left to ipaddress.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
    except (OSError, ValueError):  # ValueError: embedded NUL
        pass
    else:
        if socket.inet_ntop(family, packed) == address:
            return packed[12:] if packed[:12] == _V4_MAPPED_PREFIX else packed
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.packed
    return ip.packed


def _path_is_clean(path: str) -> bool:
    if not path.startswith("/") or "//" in path or "\x00" in path or "\\" in path or "%" in path:
        return False
    # Splitting allocates, so only do it when a dot segment is possible at all.
    if "/." in path:
        for segment in path.split("/"):
            if segment == "." or segment == "..":
                return False
    return True


def _in_scope(prefix: str, path: str) -> bool:
    if not path.startswith(prefix):
        return False
    n = len(prefix)
    # A prefix without a trailing "/" must end at a segment boundary: "/v/title1" must not match
    # "/v/title10".
    return prefix[-1] == "/" or len(path) == n or path[n] == "/"


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError("prefix must be a string starting with '/'")
    if ".." in prefix or not _path_is_clean(prefix):
        raise ValueError(
            f"prefix must not contain '..', '//', NUL, '\\\\', '%' or a '.' segment: {prefix!r}"
        )
    try:
        encoded = prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"prefix is not encodable as UTF-8: {prefix!r}") from None
    if len(encoded) > MAX_PREFIX_BYTES:
        raise ValueError(f"prefix longer than {MAX_PREFIX_BYTES} bytes")


def sign(keys: SigningKeys, prefix: str, expires: int, client_ip: str | None = None) -> str:
    """Return a token for `prefix`, valid while now < `expires`, signed with the current key.

    `client_ip`, if given, binds the token to that address. Raises ValueError for an invalid
    prefix, expiry or address.
    """
    _check_prefix(prefix)
    # bool is an int, but True as an expiry is certainly a bug.
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise ValueError("expires must be an int (unix seconds)")
    if not 0 <= expires <= MAX_EXPIRES:
        raise ValueError(f"expires out of range 0..{MAX_EXPIRES}")
    ip_field = "" if client_ip is None else _b64(_packed_ip(client_ip))
    body = f"{keys.current}.{expires}.{_b64(prefix.encode('utf-8'))}.{ip_field}"
    state = hmac.new(keys.keys[keys.current], _MAC_DOMAIN, hashlib.sha256)
    return f"{body}.{_mac(state, body.encode('ascii')).decode('ascii')}"


def signed_path(token: str, path: str) -> str:
    """The request path carrying `token`: "/_t/" + token + path."""
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    if not token or "/" in token:
        raise ValueError("token must be non-empty and contain no '/'")
    return TOKEN_PATH_PREFIX + token + path


def split_token(path: str) -> tuple[str | None, str]:
    """Split "/_t/TOKEN/rest" into ("TOKEN", "/rest"); a path without a token gives (None, path).

    "/_t/TOKEN" with nothing after it gives ("TOKEN", "/"). The token may come back empty
    ("/_t//x"); `verify` rejects that as malformed rather than missing, since the client did try.
    """
    if not path.startswith(TOKEN_PATH_PREFIX):
        return None, path
    end = path.find("/", _TOKEN_PREFIX_LEN)
    if end < 0:
        return path[_TOKEN_PREFIX_LEN:], "/"
    return path[_TOKEN_PREFIX_LEN:end], path[end:]


_TOKEN_IN_PATH = re.compile(r"/_t/[^/]*")


def redact(path: str) -> str:
    """The path as it may be logged: every token segment replaced by "-"."""
    return _TOKEN_IN_PATH.sub("/_t/-", path) if "/_t/" in path else path


def _verify_token(
    mac_state: Callable[[str], hmac.HMAC | None], token: str, now: float, client_ip: str | None
) -> tuple[str, int, bytes | None]:
    """Check everything but scope; return (prefix, expires, packed bound IP or None)."""
    if len(token) > MAX_TOKEN_LEN:
        raise TokenRejected("malformed")
    m = _TOKEN_RE.fullmatch(token)
    if m is None:
        raise TokenRejected("malformed")
    kid, exp_text, prefix_field, ip_field, mac_field = m.groups()
    # Lengths that no unpadded base64 has; checked before the key lookup so that "malformed" does
    # not depend on which keys happen to be configured.
    if len(prefix_field) % 4 == 1 or len(ip_field) % 4 == 1:
        raise TokenRejected("malformed")
    state = mac_state(kid)
    if state is None:
        raise TokenRejected("unknown_key")
    body_end = len(token) - len(mac_field) - 1
    expected = _mac(state, token[:body_end].encode("ascii"))
    if not hmac.compare_digest(expected, mac_field.encode("ascii")):
        raise TokenRejected("bad_signature")
    # Authentic from here on: only our own signer (or someone holding a key) produced these
    # fields, so decoding failures below mean a broken signer and are merely reported.
    try:
        prefix = _unb64(prefix_field).decode("utf-8")
        bound_ip = _unb64(ip_field) if ip_field else None
    except (binascii.Error, UnicodeDecodeError):
        raise TokenRejected("malformed") from None
    if (bound_ip is not None and len(bound_ip) not in (4, 16)) or not prefix.startswith("/"):
        raise TokenRejected("malformed")
    expires = int(exp_text)
    if now >= expires:
        raise TokenRejected("expired")
    if bound_ip is not None:
        if client_ip is None:
            raise TokenRejected("wrong_client")
        try:
            packed = _packed_ip(client_ip)
        except ValueError:
            raise TokenRejected("wrong_client") from None
        if packed != bound_ip:
            raise TokenRejected("wrong_client")
    return prefix, expires, bound_ip


def _check_scope(prefix: str, path: str) -> None:
    if not _in_scope(prefix, path) or not _path_is_clean(path):
        raise TokenRejected("out_of_scope")


def verify(
    keys: SigningKeys, token: str | None, path: str, now: float, client_ip: str | None
) -> None:
    """Raise TokenRejected unless `token` authorises `path` for `client_ip` at time `now`.

    `path` is the request path with the token removed, already normalised. Checks run in this
    order, and the first failure is the reason: missing, malformed, unknown_key, bad_signature,
    expired, wrong_client, out_of_scope. For many requests use `TokenVerifier`, which reuses the
    per-key HMAC state and memoises verified tokens.
    """
    if token is None:
        raise TokenRejected("missing")

    def mac_state(kid: str) -> hmac.HMAC | None:
        secret = keys.keys.get(kid)
        return None if secret is None else hmac.new(secret, _MAC_DOMAIN, hashlib.sha256)

    prefix, _, _ = _verify_token(mac_state, token, now, client_ip)
    _check_scope(prefix, path)


class TokenVerifier:
    """Verifies request tokens against a clock, memoising tokens that verified.

    The memo maps token -> (prefix, expires, client_ip it verified for, or None if the token is
    not IP-bound), so repeated segment requests of one playback skip the base64 decoding, the
    HMAC and the IP parsing. Expiry and scope are still checked on every call; a bound token
    presented by a different client_ip string misses the memo and is verified in full. The memo
    holds at most `memo_size` entries and is cleared when full (cheaper than LRU bookkeeping, and
    a full clear only costs one HMAC per active token); 0 disables it.
    """

    __slots__ = ("_clock", "_keys", "_memo", "_memo_size", "_states")

    def __init__(
        self,
        keys: SigningKeys,
        clock: Callable[[], float] = time.time,
        memo_size: int = 65536,
    ) -> None:
        if memo_size < 0:
            raise ValueError("memo_size must be >= 0")
        self._clock = clock
        self._memo_size = memo_size
        self._memo: dict[str, tuple[str, int, str | None]] = {}
        self._keys = keys
        self._states = _mac_states(keys)

    @property
    def keys(self) -> SigningKeys:
        return self._keys

    def replace_keys(self, keys: SigningKeys) -> None:
        """Switch to a new key set (e.g. after reloading the key file).

        Clears the memo, so tokens of a key that was removed stop verifying at once.
        """
        self._states = _mac_states(keys)
        self._keys = keys
        self._memo.clear()

    def check(self, token: str | None, path: str, client_ip: str | None) -> None:
        """Raise TokenRejected unless `token` authorises `path` for `client_ip` now."""
        if token is None:
            raise TokenRejected("missing")
        hit = self._memo.get(token)
        if hit is not None:
            prefix, expires, verified_for = hit
            if verified_for is None or verified_for == client_ip:
                if self._clock() >= expires:
                    raise TokenRejected("expired")
                _check_scope(prefix, path)
                return
        prefix, expires, bound_ip = _verify_token(self._states.get, token, self._clock(), client_ip)
        if self._memo_size:
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[token] = (prefix, expires, None if bound_ip is None else client_ip)
        _check_scope(prefix, path)


_HEX_RE: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_B64_TEXT_RE: Final = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


def _decode_secret(text: str) -> bytes:
    """Decode "hex:..." or "b64:..."; error messages never quote the secret."""
    if text.startswith("hex:"):
        digits = text[4:]
        # bytes.fromhex would accept embedded spaces; be exact.
        if not _HEX_RE.fullmatch(digits):
            raise ValueError("secret after 'hex:' is not an even number of hex digits")
        return bytes.fromhex(digits)
    if text.startswith("b64:"):
        encoded = text[4:]
        if not _B64_TEXT_RE.fullmatch(encoded):
            raise ValueError("secret after 'b64:' is not base64")
        encoded = encoded.rstrip("=").replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            raise ValueError("secret after 'b64:' is not base64") from None
    raise ValueError("secret must start with 'hex:' or 'b64:'")


def load_keys(path: Path) -> SigningKeys:
    """Read a key file (format in the module docstring); the first key is the current one.

    Raises ValueError("<path>:<line>: <problem>") for any problem, never quoting a secret.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read key file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # The exception text quotes the offending byte, which may belong to a secret.
        lineno = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{lineno}: not valid UTF-8") from None
    keys: dict[str, bytes] = {}
    first_line: dict[str, int] = {}
    current: str | None = None
    # split("\n") rather than splitlines(): the latter also breaks at form feeds and other
    # separators, which would make the reported line numbers disagree with editors.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{path}:{lineno}"
        if len(fields) != 2:
            # The fields are not quoted: one of them may be a secret pasted without its id.
            raise ValueError(f"{where}: expected 'KEYID SECRET', found {len(fields)} field(s)")
        key_id, secret_text = fields
        if not _KEY_ID_RE.fullmatch(key_id):
            raise ValueError(f"{where}: key id must match [A-Za-z0-9_-]{{1,32}}")
        # The key id is quoted only once the secret field has proved to be a secret: with the
        # fields swapped, the "key id" would be the secret.
        try:
            secret = _decode_secret(secret_text)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"{where}: secret is {len(secret)} bytes, need at least {MIN_SECRET_BYTES}"
            )
        if key_id in keys:
            raise ValueError(
                f"{where}: duplicate key id {key_id!r} (first on line {first_line[key_id]})"
            )
        keys[key_id] = secret
        first_line[key_id] = lineno
        if current is None:
            current = key_id
    if current is None:
        raise ValueError(f"{path}: no keys (expected lines of 'KEYID SECRET')")
    return SigningKeys(keys=keys, current=current)


def generate_key_line(key_id: str) -> str:
    """A key file line with a fresh random 32-byte secret, for operators adding a key."""
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError("key id must match [A-Za-z0-9_-]{1,32}")
    return f"{key_id} hex:{secrets.token_bytes(32).hex()}"
