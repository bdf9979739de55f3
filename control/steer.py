"""The steering client: which edges a player should use for one title, in rank order.

``GET {steering_url}/v1/steer?key=<media key>&client=<player address>`` on the steering service
(steering/app.py), bounded by ``playback.steering_timeout``. Any failure (timeout, connection
refused, non-200, an answer naming no usable edge) raises `SteeringFailed` with the outcome for
``control_steering_requests{outcome}``; the caller falls back to ``playback.fallback_url``.
Steering's own last resort, the origin (edge id ``"origin"``, last in every answer), is never
returned (control/manifest.py ``parse_steer_answer``): the origin refuses players. An answer
naming nothing but the origin (no edge alive) is therefore a failure (``error``) and the caller
falls back too.

Every playback start asks steering, so the exchange is a plain HTTP/1.1 GET over a small pool
of kept-alive connections (`SteeringClient`) rather than a general-purpose client: in
bench_control's mix, aiohttp's client cost about 1 ms of CPU per start, a tenth of the control
plane's time. The answer is parsed by `ResponseParser` (pure: Content-Length, chunked and
close-delimited bodies, RFC 9112 section 6.3), which the tests drive with tables of inputs.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from .manifest import RankedEdge, SteerAnswerError, parse_steer_answer

MAX_ANSWER_BYTES = 256 * 1024
MAX_HEAD_BYTES = 16 * 1024
MAX_IDLE = 16  # kept-alive connections kept per worker; more in flight close after use
# An idle connection older than this is closed rather than reused: a NAT or load balancer may
# have dropped it silently, and a start would then wait steering_timeout to find out.
IDLE_TTL = 10.0
_STATUS = re.compile(r"[0-9]{3}\Z")
_DIGITS = re.compile(r"[0-9]{1,15}\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")


class SteeringFailed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome  # error | timeout
        self.detail = detail


class ResponseError(Exception):
    """The bytes received are not an HTTP/1.1 response we accept."""


class ResponseParser:
    """One HTTP/1.x response, fed as bytes arrive. ``feed`` returns True once it is complete;
    ``eof`` tells it the connection closed (completing a close-delimited body)."""

    __slots__ = ("_buf", "_chunk_left", "_mode", "_need", "body", "headers", "keep_alive", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._mode = "head"  # head | length | chunks | trailer | close | done
        self._need = 0
        self._chunk_left = -1
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.keep_alive = True

    @property
    def done(self) -> bool:
        return self._mode == "done"

    def feed(self, data: bytes) -> bool:
        self._buf += data
        if self._mode == "head":
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise ResponseError("response head too large")
                return False
            self._head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        if self._mode == "length":
            take = min(self._need, len(self._buf))
            self.body += self._buf[:take]
            del self._buf[:take]
            self._need -= take
            if self._need == 0:
                self._mode = "done"
        elif self._mode in ("chunks", "trailer"):
            self._chunks()
        elif self._mode == "close":
            self.body += self._buf
            self._buf.clear()
        if len(self.body) > MAX_ANSWER_BYTES:
            raise ResponseError("answer too large")
        return self._mode == "done"

    @property
    def leftover(self) -> bool:
        """Bytes beyond the complete response (a server out of step): never reuse."""
        return bool(self._buf)

    def eof(self) -> bool:
        """The peer closed: True when that completes the response (a close-delimited body)."""
        if self._mode == "close":
            self._mode = "done"
            self.keep_alive = False
        return self._mode == "done"

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if (
            len(parts) < 2
            or parts[0] not in ("HTTP/1.1", "HTTP/1.0")
            or not _STATUS.match(parts[1])
        ):
            raise ResponseError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        if self.status < 200:  # 1xx: steering never sends them; refuse rather than guess
            raise ResponseError(f"unexpected interim status {self.status}")
        for ln in lines[1:]:
            name, sep, value = ln.partition(":")
            if not sep or not name or name != name.strip():
                raise ResponseError(f"bad header line {ln[:80]!r}")
            key = name.lower()
            if key in self.headers and key in ("content-length", "transfer-encoding"):
                # RFC 9112 section 6.3: the framing must be unambiguous; repeated framing
                # fields (even equal ones) are refused rather than merged.
                raise ResponseError(f"repeated {key}")
            self.headers[key] = value.strip()
        tokens = {t.strip() for t in self.headers.get("connection", "").lower().split(",")}
        self.keep_alive = "close" not in tokens and (
            parts[0] == "HTTP/1.1" or "keep-alive" in tokens
        )
        te = self.headers.get("transfer-encoding")
        cl = self.headers.get("content-length")
        if self.status in (204, 304):
            self._mode = "done"  # RFC 9112 section 6.3 rule 1: no content, whatever it says
        elif te is not None:
            # RFC 9112 section 6.3: chunked must be the final coding; with Content-Length too,
            # the message is suspect: refuse it (and never reuse the connection).
            if te.lower() != "chunked" or cl is not None:
                raise ResponseError(f"unsupported transfer-encoding {te[:40]!r}")
            self._mode = "chunks"
        elif cl is not None:
            if not _DIGITS.match(cl):
                raise ResponseError(f"bad content-length {cl[:40]!r}")
            self._need = int(cl)
            if self._need > MAX_ANSWER_BYTES:
                raise ResponseError("answer too large")
            self._mode = "length" if self._need else "done"
        else:
            self._mode = "close"
            self.keep_alive = False

    def _chunks(self) -> None:
        buf = self._buf
        while True:
            if self._mode == "trailer":
                # Trailer fields end with an empty line; ours are ignored.
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ResponseError("trailer too large")
                    return
                del buf[: end + 2]
                if end == 0:
                    self._mode = "done"
                    return
                continue
            if self._chunk_left < 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ResponseError("chunk size line too long")
                    return
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                if not _HEX.match(size):
                    raise ResponseError(f"bad chunk size {size[:20]!r}")
                self._chunk_left = int(size, 16)
                del buf[: end + 2]
                if self._chunk_left == 0:
                    self._mode = "trailer"
                    self._chunk_left = -1
                    continue
                if len(self.body) + self._chunk_left > MAX_ANSWER_BYTES:
                    raise ResponseError("answer too large")
            # the chunk's data, then its CRLF
            if len(buf) < self._chunk_left + 2:
                return
            if buf[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                raise ResponseError("chunk not followed by CRLF")
            self.body += buf[: self._chunk_left]
            del buf[: self._chunk_left + 2]
            self._chunk_left = -1


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.closed = False
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[ResponseParser] | None = None
        self.received = False  # any byte of the current exchange's answer
        self.idle_since = 0.0  # time.monotonic() when it went back to the pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not registered as asyncio.Transport.
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser, waiter = self._parser, self._waiter
        if parser is None or waiter is None or waiter.done():
            # Bytes nobody asked for (a server talking out of turn): never reuse this one.
            self.close()
            return
        self.received = True
        try:
            complete = parser.feed(data)
        except ResponseError as exc:
            waiter.set_exception(exc)
            self.close()
            return
        if complete:
            self._parser = self._waiter = None
            waiter.set_result(parser)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser, waiter = self._parser, self._waiter
        self._parser = self._waiter = None
        if waiter is None or waiter.done():
            return
        if parser is not None and parser.eof():
            waiter.set_result(parser)
        else:
            waiter.set_exception(ConnectionResetError("steering closed the connection"))

    def exchange(self, request: bytes) -> asyncio.Future[ResponseParser]:
        self._parser = ResponseParser()
        self._waiter = asyncio.get_running_loop().create_future()
        self.received = False
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class SteeringClient:
    """``await client.ranked_edges(key, client_address)`` against one steering service."""

    def __init__(self, base_url: str, timeout: float) -> None:
        u = urlsplit(base_url)
        self.timeout = timeout
        self._host = u.hostname or ""
        self._tls = u.scheme == "https"
        default = 443 if self._tls else 80
        self._port = u.port or default
        # The config validator accepts any printable path and host: sent as ASCII (RFC 3986
        # percent-encoding, IDNA for a non-ASCII name) so the request line is always valid.
        self._path = quote(u.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~") + "/v1/steer"
        if ":" not in self._host and not self._host.isascii():
            try:
                self._host = self._host.encode("idna").decode("ascii")
            except UnicodeError:
                pass  # not a valid name: connecting fails, and the start falls back
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if self._port == default else f"{host}:{self._port}"
        self._ssl = ssl.create_default_context() if self._tls else None
        self._idle: list[_Connection] = []
        self.connections_opened = 0  # for tests: kept-alive connections are reused

    def _request(self, key: str, client: str) -> bytes:
        target = f"{self._path}?key={quote(key, safe='')}&client={quote(client, safe='')}"
        return (
            f"GET {target} HTTP/1.1\r\nHost: {self._authority}\r\n"
            "Accept: application/json\r\nUser-Agent: opencdn-control\r\n\r\n"
        ).encode("latin-1")

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(
            _Connection, self._host, self._port, ssl=self._ssl
        )
        # The transport create_connection returns, whichever loop runs it and whenever that
        # loop calls connection_made.
        conn.transport = transport
        self.connections_opened += 1
        return conn

    async def _exchange(self, request: bytes) -> ResponseParser:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > IDLE_TTL:
                conn.close()
                continue
            try:
                return await self._finish(conn, conn.exchange(request))
            except ConnectionResetError:
                # An idle connection the server closed as we reused it: nothing of the answer
                # arrived, and a GET may be repeated (RFC 9110 section 9.2.2), on a new one.
                if conn.received:
                    raise
        conn = await self._connect()
        return await self._finish(conn, conn.exchange(request))

    async def _finish(
        self, conn: _Connection, answer: asyncio.Future[ResponseParser]
    ) -> ResponseParser:
        try:
            parser = await answer
        except BaseException:
            conn.close()  # a timeout or an error mid-answer: the connection's state is unknown
            raise
        if (
            parser.keep_alive
            and not parser.leftover
            and not conn.closed
            and len(self._idle) < MAX_IDLE
        ):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return parser

    async def ranked_edges(self, key: str, client: str) -> list[RankedEdge]:
        """The steering service's ranked edges for ``key`` and the player at ``client``."""
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._exchange(self._request(key, client))
        except TimeoutError:
            raise SteeringFailed("timeout", f"no answer within {self.timeout:g} s") from None
        except ResponseError as exc:
            raise SteeringFailed("error", str(exc)) from None
        except (OSError, ValueError) as exc:
            raise SteeringFailed("error", str(exc)[:200] or type(exc).__name__) from None
        if answer.status != 200:
            raise SteeringFailed("error", f"status {answer.status}")
        try:
            return parse_steer_answer(orjson.loads(answer.body))
        except (ValueError, SteerAnswerError) as exc:
            raise SteeringFailed("error", str(exc)[:200]) from None

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
