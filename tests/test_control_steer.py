"""The control plane's steering client (control/steer.py): the response parser on tables of
inputs (no event loop), then the kept-alive client against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from control import steer
from control.steer import (
    MAX_ANSWER_BYTES,
    ResponseError,
    ResponseParser,
    SteeringClient,
    SteeringFailed,
)

# -- ResponseParser ------------------------------------------------------------------------

ANSWER = b'{"edges": []}'


def parse(raw: bytes, pieces: int = 1, eof: bool = False) -> ResponseParser:
    """Feed ``raw`` in ``pieces`` roughly equal parts (1: all at once; len(raw): a byte at a
    time), then an EOF if asked."""
    p = ResponseParser()
    step = max(1, -(-len(raw) // pieces))
    for i in range(0, len(raw), step):
        p.feed(raw[i : i + step])
    if eof:
        p.eof()
    return p


COMPLETE = [
    # (raw response, eof after it, status, body, keep_alive)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n" + ANSWER, False, 200, ANSWER, True),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", False, 200, b"", True),
    (b"HTTP/1.1 503 Unavailable\r\nContent-Length: 2\r\n\r\nno", False, 503, b"no", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True),
    (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 13\r\n\r\n" + ANSWER,
        False,
        200,
        ANSWER,
        False,
    ),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\n" + ANSWER, False, 200, ANSWER, False),
    (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
        False,
        200,
        b"{}",
        True,
    ),
    # chunked, with an extension and a trailer field
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"edg\r\n8;ext=1\r\nes": []}\r\n0\r\nX-Trailer: 1\r\n\r\n',
        False,
        200,
        ANSWER,
        True,
    ),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", False, 200, b"", True),
    # close-delimited: complete only at EOF, and never reused
    (b"HTTP/1.1 200 OK\r\n\r\n" + ANSWER, True, 200, ANSWER, False),
    # 204 and 304 have no content whatever their Content-Length says (RFC 9112 6.3)
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False, 204, b"", True),
    # Connection is a list of tokens: "close" only as a whole token
    (
        b"HTTP/1.1 200 OK\r\nConnection: x-closed, keep-alive\r\nContent-Length: 2\r\n\r\n{}",
        False,
        200,
        b"{}",
        True,
    ),
    (
        b"HTTP/1.1 200 OK\r\nConnection: te, close\r\nContent-Length: 2\r\n\r\n{}",
        False,
        200,
        b"{}",
        False,
    ),
]


@pytest.mark.parametrize("raw,eof,status,body,keep_alive", COMPLETE)
@pytest.mark.parametrize("pieces", [1, 3, 10_000])
def test_parser_reads_complete_responses(
    raw: bytes, eof: bool, status: int, body: bytes, keep_alive: bool, pieces: int
) -> None:
    p = parse(raw, pieces, eof)
    assert p.done
    assert (p.status, bytes(p.body), p.keep_alive) == (status, body, keep_alive)


def test_bytes_after_a_complete_response_are_noticed() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n")
    assert p.done and p.leftover  # the client does not reuse such a connection
    assert not parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").leftover


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n" + ANSWER[:-1],
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n",
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"edg\r\n',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ],
)
def test_parser_waits_for_the_rest(raw: bytes) -> None:
    p = parse(raw)
    assert not p.done
    assert not p.eof()  # an EOF here is a truncated answer, not a complete one


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"HTTP/2 200\r\n\r\n", "bad status line"),
        (b"ICY 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "interim"),
        (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer-encoding"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "transfer-encoding",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "CRLF"),
        (
            f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n".encode(),
            "too large",
        ),
        (
            f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{MAX_ANSWER_BYTES + 1:x}\r\n".encode(),
            "too large",
        ),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_ANSWER_BYTES + 1), "too large"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20_000, "head too large"),
        # Repeated framing fields are refused, even when equal (RFC 9112 6.3).
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\n", "repeated"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n", "repeated"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "repeated",
        ),
        # Only ASCII digits: str.isdigit() would take a superscript two (latin-1 0xB2).
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 \xb200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\xb2\r\n", "bad chunk size"),
    ],
)
def test_parser_refuses_what_it_cannot_trust(raw: bytes, reason: str) -> None:
    with pytest.raises(ResponseError, match=reason):
        parse(raw)


# -- SteeringClient against real servers -----------------------------------------------------


def steer_answer(*edge_ids: str) -> bytes:
    edges = [
        {"edge": e, "url": f"http://{e}.test:8080", "site": "s1", "reason": "ring"}
        for e in edge_ids
    ]
    return json.dumps(
        {"key": "k", "edges": [*edges, {"edge": "origin", "url": "http://o"}]}
    ).encode()


Respond = Callable[[bytes], bytes | None]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Respond], Any]]:
    """``url, stats = await server(respond)``: a raw HTTP server on 127.0.0.1 answering each
    request head with ``respond(head)`` (None: close the connection without an answer);
    ``stats`` counts connections and requests."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(respond: Respond) -> tuple[str, dict[str, Any]]:
        stats: dict[str, Any] = {"connections": 0, "requests": 0, "targets": []}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            stats["connections"] += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    stats["requests"] += 1
                    stats["targets"].append(head.split(b" ")[1].decode())
                    out = respond(head)
                    if out is None:
                        break
                    writer.write(out)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", stats

    yield start
    for w in writers:
        w.close()
    for srv in servers:
        srv.close()
        await srv.wait_closed()


def ok(body: bytes) -> Respond:
    return lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_client_reuses_one_kept_alive_connection(server: Any) -> None:
    url, stats = await server(ok(steer_answer("e1", "e2")))
    client = SteeringClient(url + "/", timeout=2.0)
    try:
        for _ in range(5):
            edges = await client.ranked_edges("title/one two", "2001:db8::1")
            assert [e.id for e in edges] == ["e1", "e2"]  # the origin is never returned
    finally:
        client.close()
    assert (stats["connections"], stats["requests"], client.connections_opened) == (1, 5, 1)
    # The key and the address are percent-encoded into one query each.
    assert stats["targets"][0] == "/v1/steer?key=title%2Fone%20two&client=2001%3Adb8%3A%3A1"


async def test_concurrent_starts_open_connections_then_share_them(server: Any) -> None:
    url, stats = await server(ok(steer_answer("e1")))
    client = SteeringClient(url, timeout=2.0)
    try:
        await asyncio.gather(*(client.ranked_edges("k", "10.0.0.1") for _ in range(8)))
        opened = client.connections_opened
        assert 1 <= opened <= 8
        await asyncio.gather(*(client.ranked_edges("k", "10.0.0.1") for _ in range(opened)))
    finally:
        client.close()
    assert client.connections_opened == opened and stats["requests"] == 8 + opened


async def test_a_connection_the_server_closed_is_replaced_without_failing(
    server: Any,
) -> None:
    """The server closes after each answer without saying so (no Connection: close): the
    reused connection fails before any byte of an answer, and the GET is sent again."""
    answer = steer_answer("e1")
    served = {"n": 0}

    def once_per_connection(head: bytes) -> bytes | None:
        served["n"] += 1
        return ok(answer)(head) if served["n"] % 2 else None

    url, _ = await server(once_per_connection)
    client = SteeringClient(url, timeout=2.0)
    try:
        for _ in range(3):
            assert [e.id for e in await client.ranked_edges("k", "10.0.0.1")] == ["e1"]
    finally:
        client.close()
    assert client.connections_opened == 3


@pytest.mark.parametrize(
    "respond,outcome,detail",
    [
        (lambda h: b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", "error", "status 500"),
        (ok(b"not json"), "error", ""),
        (ok(b'{"edges": [{"edge": "origin", "url": "http://o"}]}'), "error", ""),
        (lambda h: b"garbage\r\n\r\n", "error", "bad status line"),
        (lambda h: None, "error", "closed"),
        (lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", "timeout", "0.3"),
    ],
    ids=["500", "not-json", "origin-only", "garbage", "closed", "truncated"],
)
async def test_failures_are_steering_failed(
    server: Any, respond: Respond, outcome: str, detail: str
) -> None:
    url, _ = await server(respond)
    client = SteeringClient(url, timeout=0.3)
    try:
        with pytest.raises(SteeringFailed) as err:
            await client.ranked_edges("k", "10.0.0.1")
    finally:
        client.close()
    assert err.value.outcome == outcome and detail in err.value.detail


async def test_a_refused_connection_is_an_error(unused_tcp_port: int) -> None:
    client = SteeringClient(f"http://127.0.0.1:{unused_tcp_port}", timeout=1.0)
    with pytest.raises(SteeringFailed) as err:
        await client.ranked_edges("k", "10.0.0.1")
    assert err.value.outcome == "error"


async def test_after_a_timeout_the_connection_is_not_reused() -> None:
    """An answer arriving after the timeout must not be read as the next request's."""
    release = asyncio.Event()
    seen = {"requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                seen["requests"] += 1
                late = seen["requests"] == 1
                if late:
                    await release.wait()
                writer.write(ok(steer_answer("late" if late else "e1"))(b""))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = SteeringClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", 0.2)
    try:
        with pytest.raises(SteeringFailed) as err:
            await client.ranked_edges("k", "a")
        assert err.value.outcome == "timeout"
        release.set()
        assert [e.id for e in await client.ranked_edges("k", "a")] == ["e1"]
    finally:
        client.close()
        srv.close()
        await srv.wait_closed()
    assert client.connections_opened == 2


def test_the_client_on_uvloop_as_the_service_runs_it() -> None:
    """The service runs on uvloop, whose transports call connection_made a loop iteration
    later than asyncio's and are not asyncio.Transport instances: reuse, a replaced
    connection and a timeout, there."""
    import uvloop

    async def scenario() -> tuple[list[str], int, str]:
        answers = {"n": 0}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    answers["n"] += 1
                    if b"key=slow" in head:
                        await asyncio.sleep(5)
                    if answers["n"] == 3:
                        break  # close without an answer: the client must retry elsewhere
                    writer.write(ok(steer_answer(f"e{answers['n']}"))(head))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = SteeringClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", 0.5)
        try:
            got = [(await client.ranked_edges("k", "a"))[0].id for _ in range(3)]
            with pytest.raises(SteeringFailed) as err:
                await client.ranked_edges("slow", "a")
            return got, client.connections_opened, err.value.outcome
        finally:
            client.close()
            srv.close()

    got, opened, outcome = uvloop.run(scenario())
    # e1, e2 on one connection; the third request is closed on, then answered on a new one.
    assert got == ["e1", "e2", "e4"] and opened == 2 and outcome == "timeout"


async def test_idle_connections_older_than_the_ttl_are_not_reused(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, stats = await server(ok(steer_answer("e1")))
    client = SteeringClient(url, timeout=2.0)
    try:
        await client.ranked_edges("k", "a")
        await client.ranked_edges("k", "a")
        assert client.connections_opened == 1
        monkeypatch.setattr(steer, "IDLE_TTL", 0.0)
        await client.ranked_edges("k", "a")
    finally:
        client.close()
    assert client.connections_opened == 2 and stats["requests"] == 3


def test_configured_paths_and_hosts_are_sent_as_ascii() -> None:
    c = SteeringClient("http://bücher.example:8080/stéer ing", timeout=1.0)
    line = c._request("k", "a").decode("ascii").split("\r\n")
    assert line[0] == "GET /st%C3%A9er%20ing/v1/steer?key=k&client=a HTTP/1.1"
    assert line[1] == "Host: xn--bcher-kva.example:8080"
