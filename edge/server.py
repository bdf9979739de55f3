"""The data-plane HTTP/1.1 server: asyncio protocol callbacks and ``os.sendfile``.

aiohttp's server is general and pays for it on every request (request and
response objects, a thread hop to open files, sendfile emulated in chunks).
Here a cache hit is answered inside ``data_received``, synchronously: parse
the head, look up the open slice, ``send`` the head and ``sendfile`` the body from the page cache straight into the socket. No task,
no future, no thread hop and no copy through Python; the event loop keeps the
socket registered for reading the whole time.

Only when a response cannot finish at once (a miss waiting for its upstream,
or a client whose socket buffer is full) does the connection get a task, and
reading pauses until it is done (pipelined requests wait in order). Direct
writes to the socket happen only while the transport's own buffer is empty,
so bytes never overtake each other; when the socket is full, the next chunk
goes through ``transport.write`` and the task waits for it to drain.

Timeouts cost nothing per request: each connection carries a deadline that a
once-a-second sweeper enforces (the way nginx keeps timers). ``header_timeout``
runs from a request's first byte (slowloris), ``idle_timeout`` between
requests, and ``send_timeout`` only while the client accepts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .errors import REASONS, HTTPError
from .http1 import Request, parse_head

if TYPE_CHECKING:
    from .config import LimitsConfig

log = logging.getLogger("edge.server")

_NEVER = float("inf")
_LINGER_TIME = 2.0  # seconds to keep reading after an error response (nginx lingering_time)
_CHUNK = 64 * 1024  # bytes copied through the transport when the socket is full


class ConnectionAborted(Exception):
    """The client went away or timed out, or we aborted a response mid-body."""


# The handler answers a request at once (True/False: keep the connection alive or not) or
# returns a coroutine that finishes the answer in a task and then says the same.
Handler = Callable[["Connection", Request], "bool | Coroutine[Any, Any, bool]"]


class Connection(asyncio.Protocol):
    __slots__ = (
        "_blocked",
        "_drained",
        "_head_started",
        "buf",
        "busy",
        "bytes_out",
        "closed",
        "deadline",
        "fd",
        "lingering",
        "loop",
        "peer",
        "requests",
        "server",
        "sock",
        "task",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.buf = b""
        self.bytes_out = 0
        self.busy = False  # a task is answering a request
        self.closed = False
        self.lingering = False
        self.requests = 0
        self.peer = ""
        self.fd = -1
        self.deadline = _NEVER
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._drained: asyncio.Future[None] | None = None
        self._blocked = False  # reading paused until the client takes what is queued
        self._head_started = 0.0

    # -- protocol callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        tsock = transport.get_extra_info("socket")
        # Our own descriptor for the same connection, for direct send() and sendfile(): the
        # transport closes its descriptor on its own schedule, and a write to a closed (or
        # reused!) descriptor number must never happen. Closed in connection_lost.
        # (No MSG_MORE/TCP_CORK for the head: measured, it makes unaligned sendfile ranges
        # a third slower on Linux.)
        sock = socket.fromfd(tsock.fileno(), tsock.family, tsock.type)
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        peer = transport.get_extra_info("peername")
        addr = peer[0] if isinstance(peer, tuple) else str(peer)
        self.peer = addr[7:] if addr.startswith("::ffff:") else addr
        limits = server.limits
        if len(server.conns) >= limits.max_connections or server.closing:
            reason = "draining" if server.closing else "connections"
            server.rejected[reason] = server.rejected.get(reason, 0) + 1
            transport.write(
                simple_response(
                    503,
                    "too many connections" if reason == "connections" else "shutting down",
                    close=True,
                    extra=f"Retry-After: {limits.retry_after}\r\n",
                )
            )
            self.closed = True
            transport.close()
            return
        server.connections_total += 1
        server.conns.add(self)
        server.idle.clear()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Pause as soon as anything is buffered, resume when all of it is out: direct
        # writes may only follow an empty transport buffer.
        transport.set_write_buffer_limits(high=0, low=0)
        # A new connection must send its first request promptly (nginx's
        # client_header_timeout); idle_timeout applies between requests.
        self.deadline = self.loop.time() + limits.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fd >= 0:
            self.sock.close()
            self.fd = -1
        self.server._forget(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)  # drain() sees ``closed`` and raises
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._blocked and not self.busy and not self.closed:
            self._blocked = False
            assert self.transport is not None
            self.transport.resume_reading()
            self._process()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # discarding what a refused client still sends
        self.buf = self.buf + data if self.buf else data
        if not self.busy and not self._blocked:
            self._process()

    def eof_received(self) -> bool | None:
        if not self.busy:
            self.close()
        return True  # keep the write side open for a response in progress

    # -- the request loop ----------------------------------------------------------

    def _process(self) -> None:
        server = self.server
        limits = server.limits
        transport = self.transport
        assert transport is not None
        while not self.busy and not self.closed:
            if transport.get_write_buffer_size():
                # The client is not reading what we answered: stop reading its requests
                # until it does (resume_writing), so pipelining cannot queue unbounded
                # responses in our memory.
                self._blocked = True
                transport.pause_reading()
                return
            buf = self.buf
            if buf[:1] in (b"\r", b"\n"):
                # RFC 9112 §2.2: ignore empty lines before a request-line.
                buf = self.buf = buf.lstrip(b"\r\n")
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if b"\n\n" in buf or b"\r\r" in buf:
                    # A head ended with bare LFs (or CRs): invalid here (see http1), and
                    # waiting for a CRLF CRLF that never comes would only hold the socket.
                    self._refuse(HTTPError(400, "bare CR or LF line ends", reason="bad_header"))
                    return
                if len(buf) > limits.max_header_bytes:
                    self._refuse(HTTPError(431, "request head too large", reason="head_too_large"))
                elif buf:
                    if not self._head_started:
                        self._head_started = self.loop.time()
                        self.deadline = self._head_started + limits.header_timeout
                else:
                    self._head_started = 0.0
                    self.deadline = self.loop.time() + limits.idle_timeout
                return
            if end > limits.max_header_bytes:
                self._refuse(HTTPError(431, "request head too large", reason="head_too_large"))
                return
            self.buf = buf[end + 4 :]
            self._head_started = 0.0
            try:
                req = parse_head(buf[:end])
            except HTTPError as exc:
                self._refuse(exc)
                return
            self.requests += 1
            self.deadline = _NEVER
            try:
                keep = server.handler(self, req)
            except ConnectionAborted:
                self.abort()
                return
            except Exception:
                # Never let an error escape into the event loop's transport callbacks.
                log.exception("event=handler_error peer=%s", self.peer)
                self.abort()
                return
            if keep is True:
                continue
            if keep is False:
                self.close()
                return
            self.busy = True
            transport.pause_reading()
            self.task = self.loop.create_task(self._finish(keep))
            return

    async def _finish(self, answer: Coroutine[Any, Any, bool]) -> None:
        try:
            keep = await answer
        except ConnectionAborted:
            keep = False
            self.abort()
        except asyncio.CancelledError:
            self.abort()
            return
        except Exception:
            log.exception("event=handler_error peer=%s", self.peer)
            keep = False
            self.abort()
        self.busy = False
        self.task = None
        if not keep or self.closed or self.server.closing:
            self.close()
            return
        assert self.transport is not None
        self.transport.resume_reading()
        self._process()

    def _refuse(self, exc: HTTPError) -> None:
        server = self.server
        server.bad_requests[exc.reason] = server.bad_requests.get(exc.reason, 0) + 1
        self.write(simple_response(exc.status, str(exc), close=True))
        self._linger()

    def _linger(self) -> None:
        """Close after an error without losing the response (RFC 9112 §9.6).

        Closing with unread data in the receive buffer makes the kernel send RST,
        which can destroy the response before the client reads it. So: half-close
        once the response is out, then discard what the client still sends, for a
        short while (nginx's lingering close).
        """
        self.lingering = True
        self.buf = b""
        self.deadline = self.loop.time() + _LINGER_TIME
        assert self.transport is not None
        if self.transport.get_write_buffer_size() == 0 and self.transport.can_write_eof():
            self.transport.write_eof()
        # Otherwise the transport is still sending; the deadline closes it.

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes in order: straight to the socket when nothing is buffered."""
        transport = self.transport
        assert transport is not None
        if self.closed:
            raise ConnectionAborted("connection closed")
        n = 0
        if transport.get_write_buffer_size() == 0:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                raise ConnectionAborted(str(exc)) from exc
        if n < len(data):
            transport.write(data[n:] if n else data)
        self.bytes_out += len(data)
        self.server.bytes_sent += len(data)

    def sendfile_now(self, fd: int, offset: int, count: int) -> int:
        """Send what the socket takes right now, zero-copy; returns bytes sent."""
        assert self.transport is not None
        if self.closed:
            raise ConnectionAborted("connection closed")
        if self.transport.get_write_buffer_size():
            return 0
        sent = 0
        out = self.fd
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, count)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                    raise ConnectionAborted(str(exc)) from exc
                raise
            if n == 0:
                raise OSError(errno.EIO, "cached file shorter than its index entry")
            offset += n
            count -= n
            sent += n
        self.bytes_out += sent
        self.server.bytes_sent += sent
        return sent

    async def drain(self) -> None:
        """Until everything queued has gone to the socket."""
        assert self.transport is not None
        while self.transport.get_write_buffer_size():
            if self.closed:
                raise ConnectionAborted("connection closed")
            if self._drained is None or self._drained.done():
                self._drained = self.loop.create_future()
            self.deadline = self.loop.time() + self.server.limits.send_timeout
            try:
                await self._drained
            finally:
                self.deadline = _NEVER
        if self.closed:
            raise ConnectionAborted("connection closed")

    async def send(self, data: bytes) -> None:
        self.write(data)
        await self.drain()

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        while count > 0:
            await self.drain()
            n = self.sendfile_now(fd, offset, count)
            offset += n
            count -= n
            if count > 0 and n == 0:
                # The socket is full: hand one chunk to the transport, which waits for
                # the socket to be writable, and wait for it to drain.
                chunk = os.pread(fd, min(count, _CHUNK), offset)
                if not chunk:
                    raise OSError(errno.EIO, "cached file shorter than its index entry")
                self.write(chunk)
                offset += len(chunk)
                count -= len(chunk)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.transport.get_write_buffer_size():
                # The transport closes after sending what is queued: bound that wait.
                self.deadline = self.loop.time() + self.server.limits.send_timeout
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        """Drop the connection without finishing the response (the client sees it cut)."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


_date_cache: tuple[int, str] = (0, "")


def http_date_now() -> str:
    """The Date header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
    return _date_cache[1]


def simple_response(
    status: int,
    message: str,
    *,
    close: bool = False,
    extra: str = "",
    head_only: bool = False,
    server: str = "opencdn-edge",
) -> bytes:
    body = f"{status} {REASONS.get(status, '')}: {message}\n".encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Date: {http_date_now()}\r\n"
        f"Server: {server}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        # Browser players on another origin must be able to read errors and Retry-After.
        "Access-Control-Allow-Origin: *\r\n"
        "Access-Control-Expose-Headers: Retry-After\r\n"
        f"{extra}"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    ).encode()
    return head if head_only else head + body


class Server:
    """Listens and runs ``handler(conn, request)`` for each request."""

    def __init__(self, handler: Handler, limits: LimitsConfig) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.conns: set[Connection] = set()
        self.closing = False
        self.bytes_sent = 0
        self.egress_rate = 0.0  # bytes/s, smoothed
        self.connections_total = 0
        self.rejected: dict[str, int] = {}
        self.bad_requests: dict[str, int] = {}
        self.sockets: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        infos = await self.loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and self.sockets:
                addr = (addr[0], self.port, *addr[2:])
            try:
                sock.bind(addr)
            except OSError as exc:
                sock.close()
                raise OSError(
                    exc.errno, f"cannot listen on {addr[0]}:{addr[1]}: {exc.strerror}"
                ) from exc
            sock.setblocking(False)
            self.sockets.append(sock)
            if port == 0:
                break  # an ephemeral port is only guaranteed free on the first family
        for sock in self.sockets:
            srv = await self.loop.create_server(
                lambda: Connection(self), sock=sock, backlog=1024, start_serving=True
            )
            self._servers.append(srv)
        self._sweeper = self.loop.create_task(self._sweep())

    def _forget(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if not self.conns:
            self.idle.set()

    async def _sweep(self) -> None:
        last_t = self.loop.time()
        last_b = self.bytes_sent
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            dt = max(now - last_t, 1e-3)
            inst = (self.bytes_sent - last_b) / dt
            rate = 0.5 * self.egress_rate + 0.5 * inst
            self.egress_rate = rate if rate >= 1.0 else 0.0
            last_t, last_b = now, self.bytes_sent
            for conn in list(self.conns):
                if conn.deadline < now:
                    conn.abort()

    def over_egress(self) -> bool:
        cap = self.limits.max_egress
        return cap is not None and self.egress_rate > cap

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish, then close what is left."""
        self.closing = True
        for srv in self._servers:
            srv.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # Connections between requests have nothing in flight: close them now.
        for conn in list(self.conns):
            if not conn.busy:
                conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self.idle.wait()
        for conn in list(self.conns):
            conn.abort()
        tasks = [c.task for c in list(self.conns) if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
