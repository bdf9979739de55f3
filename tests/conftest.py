"""Shared fixtures: real edges and origins on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.app import EDGE, Edge, create_app
from edge.config import (
    AdminConfig,
    CacheConfig,
    CacheDir,
    EdgeConfig,
    LimitsConfig,
    Listen,
    LogConfig,
    SigningConfig,
    UpstreamConfig,
)
from edge.tokens import SigningKeys, sign, signed_path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

TEST_KEYS = "k1 hex:" + "11" * 32 + "\nk0 hex:" + "22" * 32 + "\n"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


class RunningEdge:
    """An edge started in-process; ``url`` is its data plane, ``admin`` its admin API."""

    def __init__(self, config: EdgeConfig, runner: web.AppRunner) -> None:
        self.config = config
        self.runner = runner
        self.edge: Edge = runner.app[EDGE]
        assert self.edge.server is not None
        self.port = self.edge.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        addrs = runner.addresses
        self.admin = f"http://127.0.0.1:{addrs[0][1]}" if addrs else ""
        self.keys: SigningKeys | None = None

    def signed(
        self, path: str, prefix: str | None = None, ttl: int = 3600, ip: str | None = None
    ) -> str:
        """A URL for ``path`` carrying a token for ``prefix`` (default: the path's directory)."""
        assert self.keys is not None
        import time

        prefix = prefix or path.rsplit("/", 1)[0] + "/"
        token = sign(self.keys, prefix, int(time.time()) + ttl, ip)
        return self.url + signed_path(token, path)

    def counter(self, name: str, **labels: str) -> float:
        """Read one sample from this edge's Prometheus registry (the /metrics numbers)."""
        value = self.edge.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value

    async def settled(self) -> None:
        """Until every fill has been committed (or failed)."""
        assert self.edge.puller is not None
        await self.edge.puller.idle.wait()

    async def get(
        self, session: aiohttp.ClientSession, path: str, **kw: Any
    ) -> tuple[int, Any, bytes]:
        """GET, read the body, and wait for fills to settle, so the next request sees the cache."""
        async with session.get(self.url + path, **kw) as r:
            body = await r.read()
            status, headers = r.status, r.headers.copy()
        await self.settled()
        return status, headers, body

    async def stop(self) -> None:
        await self.runner.cleanup()


def edge_config(
    tmp: Path,
    upstreams: list[str],
    *,
    cache_size: int = 256 * 1024 * 1024,
    slice_size: int = 256 * 1024,
    signed: bool = False,
    public: tuple[str, ...] = ("/",),
    limits: dict[str, Any] | None = None,
    admin: bool = True,
    cache_dirs: int = 1,
) -> EdgeConfig:
    key_file = None
    if signed:
        key_file = tmp / "keys"
        key_file.write_text(TEST_KEYS)
        public = tuple(p for p in public if p != "/")
    cred = tmp / "admin-token"
    cred.write_text(ADMIN_TOKEN + "\n")
    dirs = tuple(CacheDir(tmp / f"cache{i}", cache_size // cache_dirs) for i in range(cache_dirs))
    return EdgeConfig(
        node_id="test-edge",
        listen=Listen("127.0.0.1", 0),
        admin=AdminConfig(listen=Listen("127.0.0.1", 0) if admin else None, credential_file=cred),
        upstreams=tuple(
            UpstreamConfig(url=u, connect_timeout=2.0, read_timeout=5.0) for u in upstreams
        ),
        upstream_retries=1,
        cache=CacheConfig(dirs=dirs, slice_size=slice_size, max_open_files=64),
        signing=SigningConfig(key_file=key_file, public_prefixes=public),
        limits=dataclasses.replace(LimitsConfig(drain_timeout=5.0), **(limits or {})),
        log=LogConfig(level="warning", access_log=False),
    )


async def start_edge(config: EdgeConfig) -> RunningEdge:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    if config.admin.listen is not None:
        site = web.TCPSite(runner, config.admin.listen.host, config.admin.listen.port)
        await site.start()
    running = RunningEdge(config, runner)
    if config.signing.key_file is not None:
        from edge.tokens import load_keys

        running.keys = load_keys(config.signing.key_file)
    return running


@pytest.fixture
async def edges() -> AsyncIterator[Callable[..., Awaitable[RunningEdge]]]:
    """Factory: ``await edges(config)`` starts an edge that is stopped after the test."""
    started: list[RunningEdge] = []

    async def make(config: EdgeConfig) -> RunningEdge:
        e = await start_edge(config)
        started.append(e)
        return e

    yield make
    for e in reversed(started):
        await e.stop()


@pytest.fixture
def origin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "origin"
    d.mkdir()
    return d


def put(root: Path, path: str, data: bytes) -> bytes:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    return data


def blob(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (so misplaced slices are caught)."""
    import hashlib

    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=64).digest()
        i += 1
    return bytes(out[:n])


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # Plain client: no decompression, no cookie jar, fresh connections allowed.
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


# -- a programmable HTTP origin for upstream behaviour tests -------------------------------


class FakeOrigin:
    """A real HTTP origin on loopback whose answers a test can bend.

    It serves ``files`` with correct Range support unless ``mode`` says otherwise,
    and counts every request, so tests assert on upstream fetches.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.mode = "ok"
        self.checksum: dict[str, str] = {}
        self.gate: asyncio.Event | None = None  # when set, bodies wait for it
        self.arrived = asyncio.Event()
        self.fail_first = 0
        self.url = ""
        self.require_auth: str | None = None
        self._runner: web.AppRunner | None = None

    def fetches(self, path: str | None = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p == path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        rng = request.headers.get("Range")
        self.requests.append((path, rng))
        self.arrived.set()
        if (
            self.require_auth
            and request.headers.get("Authorization") != f"Bearer {self.require_auth}"
        ):
            return web.Response(status=401)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        if self.mode == "500":
            return web.Response(status=500)
        data = self.files.get(path)
        if data is None:
            return web.Response(status=404)
        size = len(data)
        start, end = 0, size - 1
        status = 200
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
            assert m, rng
            start, end = int(m.group(1)), min(int(m.group(2)), size - 1)
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        body = data[start : end + 1]
        headers = {
            "ETag": self.etags.get(path, '"v1"'),
            "Last-Modified": "Sun, 06 Nov 1994 08:49:37 GMT",
            "Content-Type": "video/iso.segment",
        }
        if self.mode == "no_validators":
            del headers["ETag"], headers["Last-Modified"]
        if path in self.checksum:
            headers["X-Checksum-XXH64"] = self.checksum[path]
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            if self.mode == "bad_range":
                headers["Content-Range"] = f"bytes {start + 1}-{end}/{size}"
        if self.mode == "ignore_range":
            status = 200
            body = data
            headers.pop("Content-Range", None)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if self.mode == "truncate":
            await resp.write(body[: len(body) // 2])
            # Close the connection without finishing the announced body.
            assert request.transport is not None
            request.transport.close()
            return resp
        if self.mode == "trickle":
            for i in range(0, len(body), 1024):
                await resp.write(body[i : i + 1024])
                await asyncio.sleep(0.05)
            await resp.write_eof()
            return resp
        half = len(body) // 2
        await resp.write(body[:half])
        if self.gate is not None:
            await self.gate.wait()
        await resp.write(body[half:])
        await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def origin() -> AsyncIterator[FakeOrigin]:
    o = FakeOrigin()
    await o.start()
    yield o
    await o.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def raw_request(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


# -- a real S3 API (moto's server) for the origin storage tests ---------------------------

# Imported here, not at the top, so this block stays a self-contained addition.
from collections.abc import Iterator  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MotoS3:
    """A moto server on loopback; dummy credentials are passed explicitly, never via env."""

    endpoint: str
    region: str = "us-east-1"
    access_key_id: str = "testing-key-id"
    secret_access_key: str = "testing-secret-key"

    def client(self) -> Any:
        """A plain boto3 client on the server (the caller closes it)."""
        import boto3  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto_server as a subprocess on 127.0.0.1, on a port the kernel picks, for the session."""
    import http.client
    import subprocess
    import time

    exe = Path(sys.executable).with_name("moto_server")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Output goes to a file, not a pipe: werkzeug logs every request, and a
    # pipe nobody drains would eventually block the server.
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        endpoint = ""
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer within 30 s: {log.read_text()}")
            if not endpoint:
                m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text())
                endpoint = m.group(1) if m else ""
            if endpoint:
                conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=2)
                try:
                    conn.request("GET", "/")
                    conn.getresponse().read()
                    break  # any HTTP answer means it is serving
                except OSError:
                    pass
                finally:
                    conn.close()
            time.sleep(0.02)  # poll interval, not a guess at the start-up time
        yield MotoS3(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint(moto: MotoS3) -> str:
    """Just the moto server's URL, for tests that make their own clients (any credentials)."""
    return moto.endpoint


# The control plane's fixtures (live service over SQLite and PostgreSQL).
from tests.control_support import control_db_url, start_control  # noqa: E402, F401
