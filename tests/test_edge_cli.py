"""The edge's command line, run as real subprocesses: check-config, sign, keygen, serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from edge.tokens import load_keys

from .conftest import (
    TEST_KEYS,
    FakeOrigin,
    blob,
    edge_config,
    free_port,
    put,
    subprocess_env,
)

TIMEOUT = 20.0  # seconds any single CLI invocation may take
SLICE_NAME = re.compile(r"[0-9a-f]{16}")


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=subprocess_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


async def arun_cli(cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        *args,
        env=subprocess_env(),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class EdgeProcess:
    """``python -m edge serve`` as a subprocess whose stderr log is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.eof = False
        self._changed = asyncio.Event()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def start(cls, cwd: Path, *args: str) -> EdgeProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge",
            "serve",
            *args,
            env=subprocess_env(),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _pump(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self.eof = True
        self._changed.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, needle: str, *, start: int = 0, timeout: float = 10.0) -> str:
        """The first log line from index ``start`` on that contains ``needle``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    for line in self.lines[start:]:
                        if needle in line:
                            return line
                    if self.eof:
                        raise AssertionError(f"edge exited before logging {needle!r}:\n{self.log}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {needle!r} within {timeout} s:\n{self.log}") from None

    async def exit_code(self, timeout: float = 10.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._pump_task
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._pump_task


@contextlib.asynccontextmanager
async def serving(cwd: Path, *args: str) -> AsyncIterator[EdgeProcess]:
    edge = await EdgeProcess.start(cwd, *args)
    try:
        yield edge
    finally:
        await edge.close()


def ready_ports(line: str) -> tuple[int, str]:
    """(data port, admin address) from the event=edge_ready line."""
    m = re.search(r" data=[^ ]*:(\d+) admin=(\S+)", line)
    assert m, line
    return int(m.group(1)), m.group(2)


async def healthz(client: aiohttp.ClientSession, base: str) -> tuple[int, str]:
    async with client.get(base + "/healthz") as r:
        return r.status, json.loads(await r.read())["state"]


async def until_health(client: aiohttp.ClientSession, base: str, want: tuple[int, str]) -> None:
    async with asyncio.timeout(5.0):
        while await healthz(client, base) != want:
            await asyncio.sleep(0.02)


# -- check-config --------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str, name: str = "edge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
node_id: edge-test-1
listen: "127.0.0.1:8080"
admin:
  listen: "127.0.0.1:9091"
upstreams:
  - url: file:///srv/origin
cache:
  dirs:
    - path: cache0
      size: 64MiB
  slice_size: 1MiB
signing:
  public_prefixes: ["/"]
limits:
  max_connections: 100
  drain_timeout: 5s
"""


def test_check_config_accepts_a_good_file(tmp_path: Path):
    path = write_config(tmp_path, GOOD)
    result = run_cli(tmp_path, "check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration ok: node edge-test-1, listen 127.0.0.1:8080")
    assert f"{tmp_path / 'cache0'} (64.0 MiB)" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD.replace("  slice_size: 1MiB", "  slize_size: 1MiB"), "cache.slize_size"),
        (GOOD.replace("size: 64MiB", "size: lots"), "cache.dirs[0].size"),
        (
            GOOD.replace('listen: "127.0.0.1:8080"', 'listen: ["127.0.0.1:8080"'),
            "line 3, column 1: invalid YAML",
        ),
        (GOOD.replace("upstreams:\n  - url: file:///srv/origin\n", ""), "upstreams"),
    ],
    ids=["unknown-key", "bad-size", "yaml-syntax", "no-upstreams"],
)
def test_check_config_rejects_a_bad_file_naming_file_and_key(tmp_path: Path, text: str, key: str):
    path = write_config(tmp_path, text)
    result = run_cli(tmp_path, "check-config", "--config", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith(f"configuration error: {path}: "), result.stderr
    assert key in result.stderr, result.stderr


def test_check_config_unknown_key_suggests_the_right_one(tmp_path: Path):
    path = write_config(tmp_path, GOOD.replace("  slice_size: 1MiB", "  slize_size: 1MiB"))
    result = run_cli(tmp_path, "check-config", "--config", str(path))
    assert 'did you mean "slice_size"' in result.stderr


def test_check_config_from_flags_alone(tmp_path: Path):
    cache = tmp_path / "cache"
    args = ["check-config", "-b", "file:///x", "-s", str(cache), "--public-prefix", "/"]
    result = run_cli(tmp_path, *args, "--cache-size", "1GiB")
    assert result.returncode == 0, result.stderr
    assert f"cache {cache} (1.0 GiB)" in result.stdout
    # A bad flag value is reported against the flag.
    result = run_cli(tmp_path, *args, "--cache-size", "lots")
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: --cache-size: "), result.stderr


# -- sign and keygen -----------------------------------------------------------------------------


async def test_signed_url_from_the_cli_is_accepted_by_the_edge(
    edges, origin_dir: Path, tmp_path: Path, client
):
    data = put(origin_dir, "/v/t1/seg.m4s", blob(3000))
    put(origin_dir, "/v/t2/seg.m4s", blob(3000, seed=1))
    (tmp_path / "edge").mkdir()
    config = edge_config(tmp_path / "edge", [f"file://{origin_dir}"], signed=True)
    key_file = config.signing.key_file
    assert key_file is not None
    path = write_config(
        tmp_path,
        GOOD.replace('public_prefixes: ["/"]', f"key_file: {key_file}"),
    )
    code, out, err = await arun_cli(
        tmp_path, "sign", "--config", str(path), "--prefix", "/v/t1/", "--ttl", "60"
    )
    assert code == 0, err
    url = out.strip()
    assert "\n" not in url
    assert url.startswith("http://127.0.0.1:8080/_t/"), url
    assert url.endswith("/v/t1/")

    edge = await edges(config)
    signed_dir = urlsplit(url).path
    async with client.get(edge.url + signed_dir + "seg.m4s") as r:
        assert r.status == 200
        assert await r.read() == data
    async with client.get(edge.url + signed_dir.replace("/v/t1/", "/v/t2/") + "seg.m4s") as r:
        assert r.status == 403
    assert edge.counter("edge_token_rejections_total", reason="out_of_scope") == 1

    # Refusals: no key file, a non-positive ttl.
    code, _, err = await arun_cli(
        tmp_path,
        "sign",
        "--config",
        str(write_config(tmp_path, GOOD, "open.yaml")),
        "--prefix",
        "/v/",
    )
    assert code == 2 and "no signing key file" in err
    code, _, err = await arun_cli(
        tmp_path, "sign", "--config", str(path), "--prefix", "/v/t1/", "--ttl", "0"
    )
    assert code == 2 and "--ttl" in err


def test_keygen_prints_a_line_load_keys_accepts(tmp_path: Path):
    first = run_cli(tmp_path, "keygen", "k9")
    second = run_cli(tmp_path, "keygen", "k9")
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    line = first.stdout.strip()
    assert line.startswith("k9 ") and "\n" not in line
    assert second.stdout.strip() != line  # a fresh secret each time
    key_file = tmp_path / "keys"
    key_file.write_text(line + "\n" + TEST_KEYS)
    keys = load_keys(key_file)
    assert keys.current == "k9"
    assert len(keys.keys["k9"]) == 32
    assert set(keys.keys) == {"k9", "k1", "k0"}

    bad = run_cli(tmp_path, "keygen", "not a key id")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "key id" in bad.stderr


# -- serve -------------------------------------------------------------------------------------


def serve_args(
    upstream: str, cache: Path, port: int, admin: str, public: str | None = "/"
) -> list[str]:
    args = ["-a", f"127.0.0.1:{port}", "--admin-listen", admin, "-b", upstream]
    args += ["-s", str(cache), "--cache-size", "64MiB"]
    return args if public is None else [*args, "--public-prefix", public]


async def test_serve_from_flags_signals_and_graceful_stop(origin_dir: Path, tmp_path: Path):
    data = put(origin_dir, "/v/t/seg.m4s", blob(100_000))
    port, admin_port = free_port(), free_port()
    args = serve_args(f"file://{origin_dir}", tmp_path / "cache", port, f"127.0.0.1:{admin_port}")
    async with serving(tmp_path, *args) as edge, aiohttp.ClientSession() as client:
        ready = await edge.wait_for("event=edge_ready")
        assert ready_ports(ready) == (port, f"127.0.0.1:{admin_port}")
        data_url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"

        async with client.get(data_url + "/v/t/seg.m4s") as r:
            assert (r.status, await r.read()) == (200, data)
        await edge.wait_for("event=request method=GET path=/v/t/seg.m4s status=200")
        assert await healthz(client, admin_url) == (200, "ok")

        edge.proc.send_signal(signal.SIGUSR1)
        await until_health(client, admin_url, (503, "draining"))
        async with client.get(data_url + "/v/t/seg.m4s") as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "2"
        edge.proc.send_signal(signal.SIGUSR2)
        await until_health(client, admin_url, (200, "ok"))
        async with client.get(data_url + "/v/t/seg.m4s") as r:
            assert (r.status, await r.read()) == (200, data)

        # SIGTERM with idle keep-alive connections open on both ports: a prompt, clean exit.
        mark = len(edge.lines)
        edge.proc.send_signal(signal.SIGTERM)
        assert await edge.exit_code(timeout=10.0) == 0, edge.log
    tail = edge.lines[mark:]
    assert any("event=edge_stopping" in line for line in tail), edge.log
    assert "event=edge_stopped" in tail[-1], edge.log
    assert not any("level=ERROR" in line or "Traceback" in line for line in edge.lines), edge.log


async def test_sighup_rereads_the_signing_keys(origin_dir: Path, tmp_path: Path):
    put(origin_dir, "/v/t1/seg.m4s", b"segment")
    key_file = tmp_path / "keys"
    key_file.write_text(TEST_KEYS)
    port = free_port()
    args = [
        *serve_args(f"file://{origin_dir}", tmp_path / "cache", port, "off", public=None),
        "--signing-key-file",
        str(key_file),
    ]
    async with serving(tmp_path, *args) as edge, aiohttp.ClientSession() as client:
        assert ready_ports(await edge.wait_for("event=edge_ready"))[1] == "off"
        code, out, err = await arun_cli(tmp_path, "keygen", "k7")
        assert code == 0, err
        staged = tmp_path / "keys.new"
        staged.write_text(out + TEST_KEYS)
        code, url, err = await arun_cli(
            tmp_path,
            "sign",
            "--signing-key-file",
            str(staged),
            "-b",
            "file:///x",
            "--prefix",
            "/v/t1/",
            "--base-url",
            f"http://127.0.0.1:{port}",
        )
        assert code == 0, err
        url = url.strip() + "seg.m4s"
        async with client.get(url) as r:
            assert r.status == 403  # k7 is not known yet

        staged.replace(key_file)
        mark = len(edge.lines)
        edge.proc.send_signal(signal.SIGHUP)
        line = await edge.wait_for("event=keys_reloaded", start=mark)
        assert "keys=3 current=k7" in line
        async with client.get(url) as r:
            assert (r.status, await r.read()) == (200, b"segment")
        edge.proc.send_signal(signal.SIGTERM)
        assert await edge.exit_code() == 0, edge.log


def cache_files(cache: Path) -> tuple[list[Path], list[Path]]:
    """(complete slice files, temporaries) under a cache dir."""
    files = [p for p in cache.rglob("*") if p.is_file()]
    return (
        [p for p in files if SLICE_NAME.fullmatch(p.name)],
        [p for p in files if p.name.endswith(".tmp")],
    )


async def test_kill_during_a_fill_leaves_nothing_servable(
    origin: FakeOrigin, tmp_path: Path, client
):
    path = "/v/t/big.m4s"
    data = origin.files[path] = blob(400_000, seed=9)
    origin.gate = asyncio.Event()  # the origin sends half the body, then waits
    cache = tmp_path / "cache"
    port = free_port()
    args = [*serve_args(origin.url, cache, port, "off"), "--slice-size", "1MiB"]

    async with serving(tmp_path, *args) as edge:
        await edge.wait_for("event=edge_ready")
        async with client.get(f"http://127.0.0.1:{port}{path}") as r:
            assert r.status == 200
            assert r.headers["X-Cache"] == "MISS"
            first = await r.content.readexactly(200_000)
            assert first == data[:200_000]
            assert origin.arrived.is_set()
            complete, temporaries = cache_files(cache)
            assert (complete, len(temporaries)) == ([], 1)  # the fill in progress
            edge.proc.kill()
            assert await edge.exit_code() == -signal.SIGKILL
            with pytest.raises(aiohttp.ClientError):
                await r.read()
    complete, temporaries = cache_files(cache)
    assert complete == []
    assert len(temporaries) == 1
    leftovers = [
        p for p in cache.rglob("*") if p.is_file() and p.name not in (".lock", "layout.json")
    ]
    assert all(p.name.endswith(".tmp") for p in leftovers), leftovers

    port = free_port()
    args = [*serve_args(origin.url, cache, port, "off"), "--slice-size", "1MiB"]
    async with serving(tmp_path, *args) as edge:
        await edge.wait_for("event=edge_ready")
        assert "removed=1" in await edge.wait_for("event=store_ready")
        assert cache_files(cache) == ([], [])  # the leftover temporary is gone
        origin.gate.set()
        async with client.get(f"http://127.0.0.1:{port}{path}") as r:
            assert (r.status, r.headers["X-Cache"]) == (200, "MISS")
            assert await r.read() == data
        assert origin.fetches(path) == 2
        # Committed this time (the commit may trail the response by an fsync): served as a hit.
        async with asyncio.timeout(5.0):
            while True:
                async with client.get(f"http://127.0.0.1:{port}{path}") as r:
                    assert (r.status, await r.read()) == (200, data)
                    if r.headers["X-Cache"] == "HIT":
                        break
                await asyncio.sleep(0.02)
        assert origin.fetches(path) == 2
        edge.proc.send_signal(signal.SIGTERM)
        assert await edge.exit_code() == 0, edge.log
    assert len(cache_files(cache)[0]) == 1


async def test_sigterm_lets_the_request_in_flight_finish(
    origin: FakeOrigin, tmp_path: Path, client
):
    path = "/v/t/big.m4s"
    data = origin.files[path] = blob(400_000, seed=5)
    origin.gate = asyncio.Event()
    port = free_port()
    args = [*serve_args(origin.url, tmp_path / "cache", port, "off"), "--slice-size", "1MiB"]
    async with serving(tmp_path, *args) as edge:
        await edge.wait_for("event=edge_ready")
        async with client.get(f"http://127.0.0.1:{port}{path}") as r:
            first = await r.content.readexactly(200_000)
            edge.proc.send_signal(signal.SIGTERM)
            await edge.wait_for("event=edge_stopping")
            # The listener closes: new connections are refused while the edge drains ...
            async with asyncio.timeout(5.0):
                while True:
                    try:
                        _, w = await asyncio.open_connection("127.0.0.1", port)
                    except (ConnectionRefusedError, ConnectionResetError):  # closed listener
                        break
                    w.close()
                    await w.wait_closed()
                    await asyncio.sleep(0.02)
            assert edge.proc.returncode is None
            # ... but the response under way is finished before the edge exits.
            origin.gate.set()
            rest = await r.read()
        assert first + rest == data
        assert await edge.exit_code() == 0, edge.log
    assert "event=edge_stopped" in edge.lines[-1], edge.log


async def test_serve_fails_cleanly_when_the_port_is_taken(tmp_path: Path, origin_dir: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = serve_args(f"file://{origin_dir}", tmp_path / "cache", port, "off")
        async with serving(tmp_path, *args) as edge:
            assert await edge.exit_code() == 1
    assert "event=edge_failed" in edge.log
    assert "Address already in use" in edge.log
    assert "event=edge_ready" not in edge.log
