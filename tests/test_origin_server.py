"""The origin serving edges over real HTTP: auth, publication, ranges, checksums, the feed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from aiohttp import web

from origin.app import ORIGIN, create_app
from origin.catalog import CatalogFeed
from origin.config import load_config
from origin.publish import publish, unpublish
from origin.storage import open_storage

from .conftest import blob, edge_config, raw_request, start_edge

FILL = "fill-token-for-tests-0123456789"
CATALOG = "catalog-token-for-tests-0123456"


class RunningOrigin:
    def __init__(self, runner: web.AppRunner, root: Path) -> None:
        self.runner = runner
        self.origin = runner.app[ORIGIN]
        assert self.origin.server is not None
        self.url = f"http://127.0.0.1:{self.origin.server.port}"
        self.root = root

    @property
    def storage(self) -> Any:
        return self.origin.storage

    def counter(self, name: str, **labels: str) -> float:
        v = self.origin.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v


@pytest.fixture
async def origin_server(tmp_path: Path) -> AsyncIterator[RunningOrigin]:
    (tmp_path / "fill.tokens").write_text(f"# edges\n{FILL}\n")
    (tmp_path / "catalog.tokens").write_text(CATALOG + "\n")
    (tmp_path / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {tmp_path / 'assets'}}}\n"
        f"fill_credentials_file: {tmp_path / 'fill.tokens'}\n"
        f"catalog_credentials_file: {tmp_path / 'catalog.tokens'}\n"
        f"catalog_db: {tmp_path / 'catalog.sqlite'}\n"
        "metadata_ttl: 0.2\n"
        "access_log: false\n"
    )
    config = load_config(tmp_path / "origin.yaml")
    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()
    yield RunningOrigin(runner, tmp_path / "assets")
    await runner.cleanup()


def auth(token: str = FILL) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def put_title(
    storage: Any, title: str, files: dict[str, bytes], *, published: bool = True
) -> None:
    for name, data in files.items():
        await storage.put_bytes(f"v/{title}/{name}", data)
    if published:
        await storage.put_bytes(f"v/{title}/manifest.json", json.dumps({"title": title}).encode())


async def test_fill_credential_required(origin_server: RunningOrigin, client):
    await put_title(origin_server.storage, "t1", {"a.m4s": b"x" * 100})
    for headers in (
        {},
        auth("wrong-token-0123456789abcdef"),
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ):
        async with client.get(origin_server.url + "/v/t1/a.m4s", headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.get(origin_server.url + "/v/t1/a.m4s", headers=auth()) as r:
        assert r.status == 200
    assert origin_server.counter("origin_auth_failures_total", credential="fill") == 3


async def test_credentials_rotate_without_restart(origin_server: RunningOrigin, tmp_path, client):
    await put_title(origin_server.storage, "t1", {"a.m4s": b"x"})
    new = "new-fill-token-0123456789abcdef"
    tokens = tmp_path / "fill.tokens"
    tokens.write_text(f"{new}\n{FILL}\n")
    os.utime(tokens, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    for token, status in ((new, 200), (FILL, 200)):
        async with client.get(origin_server.url + "/v/t1/a.m4s", headers=auth(token)) as r:
            assert r.status == status
    tokens.write_text(f"{new}\n")
    os.utime(tokens, ns=(2, 2))
    async with client.get(origin_server.url + "/v/t1/a.m4s", headers=auth(FILL)) as r:
        assert r.status == 401


async def test_ranges_checksum_and_validators(origin_server: RunningOrigin, client):
    data = blob(3_000_000, seed=1)
    await put_title(origin_server.storage, "t1", {"r.mp4": data})
    url = origin_server.url + "/v/t1/r.mp4"
    async with client.get(url, headers=auth()) as r:
        assert r.status == 200
        assert await r.read() == data
        assert r.headers["X-Checksum-XXH64"] == xxhash.xxh64_hexdigest(data)
        etag = r.headers["ETag"]
        assert etag.startswith('"')
    async with client.get(url, headers={**auth(), "Range": "bytes=1000000-2999999"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 1000000-2999999/{len(data)}"
        assert await r.read() == data[1000000:3000000]
    async with client.get(url, headers={**auth(), "Range": "bytes=-10"}) as r:
        assert await r.read() == data[-10:]
    async with client.get(url, headers={**auth(), "If-None-Match": etag}) as r:
        assert r.status == 304
    async with client.get(url, headers={**auth(), "Range": "bytes=5000000-"}) as r:
        assert r.status == 416
        assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    async with client.head(url, headers=auth()) as r:
        assert (r.status, r.headers["Content-Length"]) == (200, str(len(data)))


async def test_unpublished_titles_and_hidden_files_are_not_served(
    origin_server: RunningOrigin, client
):
    await put_title(origin_server.storage, "draft", {"a.m4s": b"x"}, published=False)
    async with client.get(origin_server.url + "/v/draft/a.m4s", headers=auth()) as r:
        assert r.status == 404
    await origin_server.storage.put_bytes("v/draft/manifest.json", b"{}")
    # Negative metadata is cached for metadata_ttl (0.2 s here): poll, bounded.
    async with asyncio.timeout(5):
        while True:
            async with client.get(origin_server.url + "/v/draft/a.m4s", headers=auth()) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "target",
    [
        b"/v/t1/../../catalog.tokens",
        b"/v/t1/%2e%2e/%2e%2e/catalog.tokens",
        b"/.meta/v/t1/a.m4s.json",
        b"/v/t1/..%2f..%2fcatalog.tokens",
        b"//etc/passwd",
    ],
)
async def test_paths_never_escape_the_asset_root(origin_server: RunningOrigin, target):
    await put_title(origin_server.storage, "t1", {"a.m4s": b"x"})
    raw = await raw_request(
        origin_server.runner.app[ORIGIN].server.port,  # type: ignore[union-attr]
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer "
        + FILL.encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    status = int(raw.split(b" ", 2)[1])
    assert status in (400, 404), raw[:200]
    assert CATALOG.encode() not in raw


async def test_catalog_feed_after_publish_and_withdraw(
    origin_server: RunningOrigin, tmp_path, client
):
    out = tmp_path / "out" / "t9"
    out.mkdir(parents=True)
    files = []
    for name, data in (("master.m3u8", b"#EXTM3U\n"), ("poster.jpg", b"jpeg")):
        (out / name).write_bytes(data)
        files.append({"path": name, "size": len(data), "xxh64": xxhash.xxh64_hexdigest(data)})
    manifest = {
        "title": "t9",
        "duration": 12.5,
        "renditions": [
            {
                "name": "360p",
                "width": 640,
                "height": 360,
                "bandwidth": 900000,
                "codecs": "avc1.4d401e,mp4a.40.2",
            }
        ],
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    feed = origin_server.origin.feed
    assert isinstance(feed, CatalogFeed)
    seq = await publish(origin_server.storage, "t9", out, feed)
    async with client.get(origin_server.url + "/catalog/feed?since=0", headers=auth(FILL)) as r:
        assert r.status == 401  # the fill credential is not a catalog credential
    async with client.get(origin_server.url + "/catalog/feed?since=0", headers=auth(CATALOG)) as r:
        doc = await r.json()
    assert doc["next"] == seq
    (entry,) = doc["titles"]
    assert (entry["title"], entry["published"], entry["duration"]) == ("t9", True, 12.5)
    assert entry["renditions"][0]["height"] == 360
    async with client.get(origin_server.url + "/v/t9/master.m3u8", headers=auth()) as r:
        assert await r.read() == b"#EXTM3U\n"
    await unpublish(origin_server.storage, "t9", feed)
    async with client.get(
        origin_server.url + f"/catalog/feed?since={seq}", headers=auth(CATALOG)
    ) as r:
        doc = await r.json()
    assert [(e["title"], e["published"]) for e in doc["titles"]] == [("t9", False)]
    assert origin_server.counter("origin_published_titles") == 0


async def test_publish_is_all_or_nothing(origin_server: RunningOrigin, tmp_path):
    out = tmp_path / "out" / "t8"
    out.mkdir(parents=True)
    (out / "a.m4s").write_bytes(b"aaaa")
    manifest = {
        "title": "t8",
        "files": [
            {"path": "a.m4s", "size": 4, "xxh64": xxhash.xxh64_hexdigest(b"aaaa")},
            {"path": "missing.m4s", "size": 1, "xxh64": "00"},
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((OSError, Exception)):
        await publish(origin_server.storage, "t8", out, origin_server.origin.feed)
    assert await origin_server.storage.list("v/t8/") == []


async def test_edge_fills_from_the_origin_with_its_credential(
    origin_server: RunningOrigin, tmp_path, client
):
    import dataclasses

    data = blob(700_000, seed=2)
    await put_title(origin_server.storage, "t1", {"seg.m4s": data, "big.mp4": blob(3_000_000, 3)})
    (tmp_path / "fill.cred").write_text(FILL + "\n")
    (tmp_path / "edge").mkdir()
    config = edge_config(tmp_path / "edge", [origin_server.url])
    config = dataclasses.replace(
        config,
        upstreams=(
            dataclasses.replace(config.upstreams[0], credential_file=tmp_path / "fill.cred"),
        ),
    )
    edge = await start_edge(config)
    try:
        status, _, body = await edge.get(client, "/v/t1/seg.m4s")
        assert (status, body == data) == (200, True)
        status, _, body = await edge.get(
            client, "/v/t1/big.mp4", headers={"Range": "bytes=2500000-2500099"}
        )
        assert status == 206 and len(body) == 100
        assert edge.counter("edge_checksum_failures_total") == 0
        assert edge.counter("edge_upstream_failures_total", reason="status_401") == 0
    finally:
        await edge.stop()


async def test_s3_backend_streams_ranges(tmp_path, client, moto_endpoint):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket="assets")
    (tmp_path / "fill.tokens").write_text(FILL + "\n")
    (tmp_path / "secret").write_text("test\n")
    (tmp_path / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: s3, bucket: assets, prefix: cdn, region: us-east-1, "
        f"endpoint_url: '{moto_endpoint}', access_key_id: test, "
        f"secret_access_key_file: {tmp_path / 'secret'}}}\n"
        f"fill_credentials_file: {tmp_path / 'fill.tokens'}\n"
        f"catalog_db: {tmp_path / 'catalog.sqlite'}\n"
        "access_log: false\n"
    )
    config = load_config(tmp_path / "origin.yaml")
    storage = open_storage(config.storage.spec())
    data = blob(2_500_000, seed=4)
    await put_title(storage, "t1", {"r.mp4": data})
    await storage.close()
    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()
    try:
        url = f"http://127.0.0.1:{runner.app[ORIGIN].server.port}/v/t1/r.mp4"  # type: ignore[union-attr]
        async with client.get(url, headers={**auth(), "Range": "bytes=100-2000099"}) as r:
            assert r.status == 206
            assert await r.read() == data[100:2000100]
            assert r.headers["X-Checksum-XXH64"] == xxhash.xxh64_hexdigest(data)
        async with client.get(url, headers=auth()) as r:
            assert await r.read() == data
    finally:
        await runner.cleanup()


async def test_healthz_and_metrics_need_no_credential(origin_server: RunningOrigin, client):
    async with client.get(origin_server.url + "/healthz") as r:
        assert (r.status, (await r.json())["state"]) == (200, "ok")
    async with client.get(origin_server.url + "/metrics") as r:
        text = await r.text()
    for name in (
        "origin_requests_total",
        "origin_response_bytes_total",
        "origin_storage_latency_seconds",
    ):
        assert name in text


def test_origin_config_errors_name_the_key(tmp_path):
    from origin.config import ConfigError

    for text, key in (
        ("storage: {backend: ftp}\n", "storage.backend"),
        ("storage: {backend: s3}\n", "storage.bucket"),
        ("ingest: {preset: turbo}\n", "ingest.preset"),
        ("listn: 1.2.3.4:5\n", "listn"),
        ("jobs: {lease: forever}\n", "jobs.lease"),
        ("fill_credentials_file: /nonexistent/x\n", "fill_credentials_file"),
    ):
        f = tmp_path / "o.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(f)
        assert str(f) in str(info.value) and key in str(info.value), str(info.value)


def test_origin_example_config_loads(tmp_path):
    import re as _re

    from origin.config import OriginConfig

    text = (Path(__file__).parent.parent / "conf" / "origin.example.yaml").read_text()
    for name in ("fill.tokens", "catalog.tokens"):
        (tmp_path / name).write_text("example-token-0123456789abcdef\n")
    text = text.replace("/etc/opencdn/", f"{tmp_path}/").replace("/srv/opencdn/", f"{tmp_path}/")
    text = text.replace("/var/lib/opencdn-origin/", f"{tmp_path}/")
    (tmp_path / "origin.yaml").write_text(text)
    config = load_config(tmp_path / "origin.yaml")
    assert config.storage.root == tmp_path / "assets"
    documented = set(_re.findall(r"^\s*#?\s*([a-z_]+):", text, _re.M))
    import dataclasses as _dc

    from origin.config import IngestConfig, JobsConfig, StorageConfig

    for cls in (OriginConfig, StorageConfig, IngestConfig, JobsConfig):
        for f in _dc.fields(cls):
            assert f.name in documented, f"{cls.__name__}.{f.name} is not documented"


async def test_file_changed_on_disk_is_served_fresh(origin_server: RunningOrigin, client):
    await put_title(origin_server.storage, "t1", {"a.m4s": b"A" * 100})
    url = origin_server.url + "/v/t1/a.m4s"
    async with client.get(url, headers=auth()) as r:
        assert await r.read() == b"A" * 100  # metadata now cached
    (origin_server.root / "v" / "t1" / "a.m4s").write_bytes(b"B" * 50)  # behind storage's back
    async with client.get(url, headers=auth()) as r:
        assert r.status == 200
        body = await r.read()
        assert body == b"B" * 50
        assert r.headers["X-Checksum-XXH64"] == xxhash.xxh64_hexdigest(body)


async def test_clients_resetting_mid_response_leak_no_descriptors(origin_server: RunningOrigin):
    import socket
    import struct

    data = blob(4_000_000, seed=9)
    await put_title(origin_server.storage, "t1", {"big.mp4": data})
    path = str(origin_server.root / "v" / "t1" / "big.mp4")
    port = origin_server.origin.server.port  # type: ignore[union-attr]
    request = (
        f"GET /v/t1/big.mp4 HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer {FILL}\r\n\r\n"
    ).encode()
    for _ in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await reader.readexactly(1024)  # the response has started
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST with most of the body unsent
    async with asyncio.timeout(10):
        while origin_server.origin.server.conns:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)

    def open_on(p: str) -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}") == p
            except OSError:
                pass
        return n

    assert open_on(path) == 0


def test_catalog_summary_carries_audio_groups() -> None:
    """The control plane rebuilds master playlists from the feed: renditions name their audio
    group and its channel count, as master.m3u8's EXT-X-MEDIA does."""
    from origin.catalog import summary

    manifest = {
        "duration": 10.0,
        "renditions": [
            {"name": "360p", "width": 640, "height": 360, "bandwidth": 900000,
             "codecs": "avc1.64001e,mp4a.40.2", "frame_rate": 25.0, "audio": "audio_128k",
             "segments": 3},
            {"name": "silent", "width": 320, "height": 180, "bandwidth": 200000,
             "codecs": "avc1.64000d", "frame_rate": 25.0, "audio": None},
        ],
        "audio": [{"name": "audio_128k", "channels": 2, "codecs": "mp4a.40.2"}],
    }  # fmt: skip
    s = summary("t1", manifest)
    assert s["renditions"][0]["audio"] == "audio_128k"
    assert s["renditions"][0]["audio_channels"] == 2
    assert "segments" not in s["renditions"][0]
    assert s["renditions"][1]["audio"] is None and s["renditions"][1]["audio_channels"] is None


async def test_signed_tokens_never_reach_the_access_log(tmp_path: Path, client, caplog) -> None:
    (tmp_path / "fill.tokens").write_text(f"{FILL}\n")
    (tmp_path / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {tmp_path / 'assets'}}}\n"
        f"fill_credentials_file: {tmp_path / 'fill.tokens'}\n"
        f"catalog_db: {tmp_path / 'catalog.sqlite'}\n"
        "access_log: true\n"
    )
    runner = web.AppRunner(create_app(load_config(tmp_path / "origin.yaml")), handle_signals=False)
    await runner.setup()
    try:
        port = runner.app[ORIGIN].server.port  # type: ignore[union-attr]
        secret = "k1.1999999999.L3YvdDEv..SECRETMACSECRETMACSEC"
        with caplog.at_level("INFO", logger="origin.access"):
            async with client.get(f"http://127.0.0.1:{port}/_t/{secret}/v/t1/a.m4s") as r:
                assert r.status == 401
        lines = [r.getMessage() for r in caplog.records if r.name == "origin.access"]
        assert lines and all("SECRETMAC" not in line for line in lines)
        assert any("/_t/-/v/t1/a.m4s" in line for line in lines)
    finally:
        await runner.cleanup()
