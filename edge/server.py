"""The data-plane HTTP/1.1 server: raw non-blocking sockets and ``os.sendfile``.

aiohttp's server is general and pays for it on every request (request and
response objects, a thread hop to open files, sendfile emulated in chunks).
The hit path here is: one ``recv``, a dict lookup for the open slice, one
``send`` of a prebuilt head with MSG_MORE and ``sendfile`` from the page cache
straight into the socket, with no thread hop and no copy through Python.

Timeouts cost nothing per request: each connection carries a deadline that a
once-a-second sweeper enforces (the way nginx keeps timers), which also
defeats slowloris clients (``header_timeout`` runs from a request's first byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import REASONS, HTTPError
from .http1 import Request, parse_head

if TYPE_CHECKING:
    from .config import LimitsConfig

log = logging.getLogger("edge.server")

_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_RECV = 65536
_NEVER = float("inf")
_LINGER_TIME = 2.0  # seconds to keep reading after an error response (nginx lingering_time)


class ConnectionAborted(Exception):
    """The client went away or timed out, or we aborted a response mid-body."""


class Connection:
    __slots__ = (
        "buf",
        "busy",
        "bytes_out",
        "deadline",
        "fd",
        "loop",
        "peer",
        "requests",
        "server",
        "sock",
        "task",
        "timed_out",
    )

    def __init__(self, server: Server, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.loop = server.loop
        self.buf = b""
        self.bytes_out = 0
        self.deadline = self.loop.time() + server.limits.idle_timeout
        self.task: asyncio.Task[None] | None = None
        self.timed_out = False
        self.requests = 0
        self.busy = False

    # -- waiting ---------------------------------------------------------------

    async def _wait(self, writer: bool) -> None:
        fut = self.loop.create_future()
        if writer:
            self.loop.add_writer(self.fd, _wake, fut)
            try:
                await fut
            finally:
                self.loop.remove_writer(self.fd)
        else:
            self.loop.add_reader(self.fd, _wake, fut)
            try:
                await fut
            finally:
                self.loop.remove_reader(self.fd)

    async def _wait_writable(self) -> None:
        # The send timeout runs only while the client accepts nothing; waits for the
        # upstream in between are bounded by the upstream's own timeouts.
        self.deadline = self.loop.time() + self.server.limits.send_timeout
        try:
            await self._wait(True)
        finally:
            self.deadline = _NEVER

    # -- reading ---------------------------------------------------------------

    async def read_head(self) -> Request | None:
        """The next request head, or None when the client closed cleanly between requests."""
        limits = self.server.limits
        # RFC 9112 §2.2: ignore empty lines before a request-line, also when they were
        # pipelined behind the previous request.
        buf = self.buf.lstrip(b"\r\n")
        started = bool(buf)
        self.deadline = self.loop.time() + (
            limits.header_timeout if started else limits.idle_timeout
        )
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if end > limits.max_header_bytes:
                    raise HTTPError(431, "request head too large", reason="head_too_large")
                self.buf = buf[end + 4 :]
                return parse_head(buf[:end])
            if len(buf) > limits.max_header_bytes:
                raise HTTPError(431, "request head too large", reason="head_too_large")
            try:
                data = self.sock.recv(_RECV)
            except BlockingIOError:
                await self._wait(False)
                continue
            except OSError as exc:
                raise ConnectionAborted(str(exc)) from exc
            if not data:
                if buf.strip():
                    raise ConnectionAborted("client closed mid-request")
                return None
            if not started:
                # RFC 9112 §2.2: ignore at least one empty line before a request-line.
                data = data.lstrip(b"\r\n")
                if not data:
                    continue
                started = True
                self.deadline = self.loop.time() + limits.header_timeout
            buf += data

    # -- writing ---------------------------------------------------------------

    async def send(self, data: bytes | memoryview, *, more: bool = False) -> None:
        view = memoryview(data)
        flags = _MSG_MORE if more else 0
        sock = self.sock
        while view:
            try:
                n = sock.send(view, flags)
            except BlockingIOError:
                await self._wait_writable()
                continue
            except OSError as exc:
                raise ConnectionAborted(str(exc)) from exc
            view = view[n:]
            self.bytes_out += n
            self.server.bytes_sent += n

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        out = self.fd
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                await self._wait_writable()
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise ConnectionAborted(str(exc)) from exc
                raise
            if n == 0:
                raise OSError(errno.EIO, "cached file shorter than its index entry")
            offset += n
            count -= n
            self.bytes_out += n
            self.server.bytes_sent += n

    async def _linger(self) -> None:
        """Close after an error without losing the response (RFC 9112 §9.6).

        Closing a socket with unread data in its receive buffer makes the kernel send RST,
        which can destroy the response before the client reads it. So: half-close, then read
        and discard what the client still sends, for a short while.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        self.deadline = self.loop.time() + _LINGER_TIME
        while True:  # bounded by the deadline, like nginx's lingering_time
            try:
                data = self.sock.recv(_RECV)
            except BlockingIOError:
                await self._wait(False)
                continue
            except OSError:
                return
            if not data:
                return

    def abort(self) -> None:
        """Drop the connection without finishing the response (RFC 9112 §9.6 style)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- the connection's life ---------------------------------------------------

    async def run(self) -> None:
        server = self.server
        try:
            while not server.closing:
                try:
                    req = await self.read_head()
                except HTTPError as exc:
                    server.bad_requests[exc.reason] = server.bad_requests.get(exc.reason, 0) + 1
                    await self.send(simple_response(exc.status, str(exc), close=True))
                    await self._linger()
                    break
                if req is None:
                    break
                self.requests += 1
                self.busy = True
                self.deadline = _NEVER
                try:
                    keep = await server.handler(self, req)
                finally:
                    self.busy = False
                if not keep:
                    break
        except ConnectionAborted:
            pass
        except asyncio.CancelledError:
            if not self.timed_out:
                raise
        except Exception:
            log.exception("event=connection_error peer=%s", self.peer)
        finally:
            server._forget(self)
            with contextlib.suppress(OSError):
                self.sock.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
) -> bytes:
    body = f"{status} {REASONS.get(status, '')}: {message}\n".encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Date: {http_date_now()}\r\n"
        "Server: opencdn-edge\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    ).encode()
    return head if head_only else head + body


Handler = Callable[[Connection, Request], Awaitable[bool]]


class Server:
    """Accepts connections and runs ``handler(conn, request) -> keep_alive`` for each request."""

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
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

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
            sock.bind(addr)
            sock.listen(1024)
            sock.setblocking(False)
            self.sockets.append(sock)
            if port == 0:
                break  # an ephemeral port is only guaranteed free on the first family
        for sock in self.sockets:
            self._tasks.append(self.loop.create_task(self._accept(sock)))
        self._tasks.append(self.loop.create_task(self._sweep()))

    async def _accept(self, lsock: socket.socket) -> None:
        loop = self.loop
        limits = self.limits
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning.
                log.warning("event=accept_error error=%r", str(exc))
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.conns) >= limits.max_connections or self.closing:
                reason = "draining" if self.closing else "connections"
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                with contextlib.suppress(OSError):
                    sock.send(
                        simple_response(
                            503,
                            "too many connections" if reason == "connections" else "shutting down",
                            close=True,
                            extra=f"Retry-After: {limits.retry_after}\r\n",
                        )
                    )
                sock.close()
                continue
            self.connections_total += 1
            peer = addr[0] if isinstance(addr, tuple) else str(addr)
            if peer.startswith("::ffff:"):
                peer = peer[7:]
            conn = Connection(self, sock, peer)
            self.conns.add(conn)
            self._idle.clear()
            conn.task = loop.create_task(conn.run())

    def _forget(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if not self.conns:
            self._idle.set()

    async def _sweep(self) -> None:
        last_t = self.loop.time()
        last_b = self.bytes_sent
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            dt = max(now - last_t, 1e-3)
            inst = (self.bytes_sent - last_b) / dt
            self.egress_rate = 0.5 * self.egress_rate + 0.5 * inst
            last_t, last_b = now, self.bytes_sent
            for conn in list(self.conns):
                if conn.deadline < now and conn.task is not None and not conn.timed_out:
                    conn.timed_out = True
                    conn.task.cancel()

    def over_egress(self) -> bool:
        cap = self.limits.max_egress
        return cap is not None and self.egress_rate > cap

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish, then close what is left."""
        self.closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for sock in self.sockets:
            sock.close()
        # Idle keep-alive connections have nothing in flight: close them now.
        for conn in list(self.conns):
            if not conn.busy and conn.task is not None:
                conn.timed_out = True
                conn.task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self._idle.wait()
        for conn in list(self.conns):
            if conn.task is not None:
                conn.timed_out = True
                conn.task.cancel()
        tasks = [c.task for c in self.conns if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
