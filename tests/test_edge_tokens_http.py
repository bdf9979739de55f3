"""Signed URL tokens enforced by a running edge, over real HTTP."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest

from edge.config import LogConfig
from edge.tokens import REASONS, SigningKeys, generate_key_line, load_keys, sign, signed_path

from .conftest import (
    ADMIN_TOKEN,
    TEST_KEYS,
    FakeOrigin,
    RunningEdge,
    blob,
    edge_config,
    put,
    raw_request,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


MASTER = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=2000000\n720p/index.m3u8\n"
MEDIA = (
    "#EXTM3U\n#EXT-X-TARGETDURATION:4\n"
    '#EXT-X-IMAGE:URI="../art/poster.jpg"\n'
    "#EXTINF:4.0,\nseg1.m4s\n#EXTINF:4.0,\nseg2.m4s\n#EXT-X-ENDLIST\n"
)


def _populate(origin_dir: Path) -> dict[str, bytes]:
    files = {
        "/v/t1/seg.m4s": blob(5000, seed=1),
        "/v/t1/master.m3u8": MASTER.encode(),
        "/v/t1/720p/index.m3u8": MEDIA.encode(),
        "/v/t1/720p/seg1.m4s": blob(3000, seed=2),
        "/v/t1/720p/seg2.m4s": blob(3000, seed=3),
        "/v/t1/art/poster.jpg": blob(700, seed=4),
        "/v/t2/seg.m4s": blob(5000, seed=5),
        "/v/t10/seg.m4s": blob(5000, seed=6),
        "/art/x.jpg": blob(900, seed=7),
    }
    for path, data in files.items():
        put(origin_dir, path, data)
    return files


async def _signed_edge(edges, origin_dir: Path, tmp_path: Path, **changes) -> RunningEdge:
    config = edge_config(tmp_path, [f"file://{origin_dir}"], signed=True, public=("/art/",))
    if changes:
        config = dataclasses.replace(config, **changes)
    return await edges(config)


@pytest.fixture
def files(origin_dir: Path) -> dict[str, bytes]:
    return _populate(origin_dir)


@pytest.fixture
async def edge(edges, origin_dir: Path, tmp_path: Path, files) -> RunningEdge:
    return await _signed_edge(edges, origin_dir, tmp_path)


def rejections(edge: RunningEdge) -> dict[str, float]:
    return {r: edge.counter("edge_token_rejections_total", reason=r) for r in REASONS}


async def fetch(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with client.get(url) as r:
        return r.status, await r.read()


async def assert_rejected(
    client: aiohttp.ClientSession, edge: RunningEdge, url: str, reason: str
) -> None:
    before = rejections(edge)
    status, body = await fetch(client, url)
    after = rejections(edge)
    assert status == 403, (url, status, body)
    assert f"forbidden: {reason}".encode() in body, body
    moved = {r: after[r] - before[r] for r in REASONS if after[r] != before[r]}
    assert moved == {reason: 1}, moved


def token_of(url: str) -> str:
    path = urlsplit(url).path
    assert path.startswith("/_t/")
    return path.split("/")[2]


def replace_char(text: str, index: int) -> str:
    index %= len(text)
    c = text[index]
    return text[:index] + ("A" if c != "A" else "B") + text[index + 1 :]


# -- accepted -------------------------------------------------------------------------------


async def test_valid_token_serves_the_object(edge: RunningEdge, client, files):
    status, body = await fetch(client, edge.signed("/v/t1/seg.m4s"))
    assert (status, body) == (200, files["/v/t1/seg.m4s"])
    assert rejections(edge) == dict.fromkeys(REASONS, 0.0)


async def test_public_prefix_needs_no_token(edge: RunningEdge, client, files):
    status, body = await fetch(client, edge.url + "/art/x.jpg")
    assert (status, body) == (200, files["/art/x.jpg"])
    # The public prefix is exactly /art/: the same name elsewhere still needs a token.
    await assert_rejected(client, edge, edge.url + "/v/t1/art/poster.jpg", "missing")


async def test_token_bound_to_the_client_address_works(edge: RunningEdge, client, files):
    status, body = await fetch(client, edge.signed("/v/t1/seg.m4s", ip="127.0.0.1"))
    assert (status, body) == (200, files["/v/t1/seg.m4s"])


async def test_prefix_without_slash_scopes_its_own_subtree(edge: RunningEdge, client, files):
    status, body = await fetch(client, edge.signed("/v/t1/seg.m4s", prefix="/v/t1"))
    assert (status, body) == (200, files["/v/t1/seg.m4s"])


# -- rejected, each for exactly its reason ----------------------------------------------------


async def test_missing_token(edge: RunningEdge, client):
    await assert_rejected(client, edge, edge.url + "/v/t1/seg.m4s", "missing")


@pytest.mark.parametrize(
    "token",
    ["garbage", "k1.123.L3YvdDEv..short", "k1.notanumber.L3YvdDEv..AAAAAAAAAAAAAAAAAAAAAA", "~x"],
)
async def test_malformed_token(edge: RunningEdge, client, token: str):
    await assert_rejected(client, edge, edge.url + f"/_t/{token}/v/t1/seg.m4s", "malformed")


@pytest.mark.parametrize("field", ["mac", "expires", "prefix"])
async def test_forged_token_one_character_changed(edge: RunningEdge, client, field: str):
    url = edge.signed("/v/t1/seg.m4s")
    token = token_of(url)
    kid, expires, prefix, ip, mac = token.split(".")
    if field == "mac":
        forged = replace_char(token, -5)
    elif field == "expires":
        # Later expiry, same length: a forger extending the token's life.
        forged = ".".join([kid, str(int(expires) + 1), prefix, ip, mac])
    else:
        forged = ".".join([kid, expires, replace_char(prefix, 1), ip, mac])
    assert forged != token and len(forged) == len(token)
    await assert_rejected(client, edge, url.replace(token, forged), "bad_signature")
    # The untouched token still works: only the change made it fail.
    assert (await fetch(client, url))[0] == 200


@pytest.mark.parametrize("ttl", [-60, 0])
async def test_expired_token(edge: RunningEdge, client, ttl: int):
    await assert_rejected(client, edge, edge.signed("/v/t1/seg.m4s", ttl=ttl), "expired")


async def test_token_for_another_title_is_out_of_scope(edge: RunningEdge, client):
    url = edge.signed("/v/t2/seg.m4s", prefix="/v/t1/")
    await assert_rejected(client, edge, url, "out_of_scope")
    url = edge.signed("/v/t10/seg.m4s", prefix="/v/t1/")
    await assert_rejected(client, edge, url, "out_of_scope")


async def test_prefix_without_slash_does_not_cover_a_longer_name(edge: RunningEdge, client):
    # "/v/t1" scopes /v/t1 and /v/t1/..., never /v/t10/...
    url = edge.signed("/v/t10/seg.m4s", prefix="/v/t1")
    await assert_rejected(client, edge, url, "out_of_scope")


async def test_unknown_key_id(edge: RunningEdge, client):
    other = SigningKeys(keys={"k9": b"\x33" * 32}, current="k9")
    token = sign(other, "/v/t1/", int(time.time()) + 3600)
    url = edge.url + signed_path(token, "/v/t1/seg.m4s")
    await assert_rejected(client, edge, url, "unknown_key")


async def test_token_bound_to_another_client(edge: RunningEdge, client):
    url = edge.signed("/v/t1/seg.m4s", ip="10.1.2.3")
    await assert_rejected(client, edge, url, "wrong_client")


@pytest.mark.parametrize(
    ("rest", "status"),
    [
        ("/v/t1/%2e%2e/t2/seg.m4s", b"400"),  # a dot segment after decoding: refused outright
        ("/v/t1/%252e%252e/t2/seg.m4s", b"403"),  # double encoding: "%" left, out of scope
    ],
)
async def test_encoded_dot_segments_cannot_escape_the_scope(
    edge: RunningEdge, rest: str, status: bytes
):
    token = token_of(edge.signed("/v/t1/seg.m4s"))
    before = rejections(edge)
    raw = await raw_request(
        edge.port,
        f"GET /_t/{token}{rest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert raw.split(b" ", 2)[1] == status, raw[:200]
    if status == b"403":
        assert rejections(edge)["out_of_scope"] == before["out_of_scope"] + 1


# -- relative URLs in manifests keep the token ---------------------------------------------


async def test_token_survives_relative_url_resolution(edge: RunningEdge, client, files):
    master_url = edge.signed("/v/t1/master.m3u8", prefix="/v/t1/") + "?session=abc"
    token = token_of(master_url)
    status, master = await fetch(client, master_url)
    assert status == 200
    fetched: dict[str, bytes] = {}
    playlists = [(master_url, master)]
    while playlists:
        base, text = playlists.pop()
        refs = [line for line in text.decode().splitlines() if line and not line.startswith("#")]
        refs += [
            line.split('URI="', 1)[1].split('"', 1)[0]
            for line in text.decode().splitlines()
            if 'URI="' in line
        ]
        for ref in refs:
            url = urljoin(base, ref)
            assert f"/_t/{token}/" in url, url  # the query is dropped, the path token is kept
            status, body = await fetch(client, url)
            assert status == 200, url
            path = urlsplit(url).path.split(token, 1)[1]
            fetched[path] = body
            if path.endswith(".m3u8"):
                playlists.append((url, body))
    assert set(fetched) == {
        "/v/t1/720p/index.m3u8",
        "/v/t1/720p/seg1.m4s",
        "/v/t1/720p/seg2.m4s",
        "/v/t1/art/poster.jpg",
    }
    assert all(files[p] == b for p, b in fetched.items())
    # A root-relative reference drops the token: fine for the public prefix, refused elsewhere.
    assert await fetch(client, urljoin(master_url, "/art/x.jpg")) == (200, files["/art/x.jpg"])
    await assert_rejected(client, edge, urljoin(master_url, "/v/t1/seg.m4s"), "missing")


# -- logging -------------------------------------------------------------------------------


async def test_access_log_never_contains_the_token(
    edges, origin_dir: Path, tmp_path: Path, files, client, caplog
):
    caplog.set_level(logging.INFO, logger="edge.access")
    edge = await _signed_edge(
        edges, origin_dir, tmp_path, log=LogConfig(level="info", access_log=True)
    )
    good = edge.signed("/v/t1/seg.m4s")
    expired = edge.signed("/v/t1/720p/seg1.m4s", ttl=-5)
    forged = good.replace(token_of(good), replace_char(token_of(good), -3))
    tokens = {token_of(good), token_of(expired), token_of(forged)}
    results = [(await fetch(client, url))[0] for url in (good, expired, forged, good)]
    assert results == [200, 403, 403, 200]

    access = [r.getMessage() for r in caplog.records if r.name == "edge.access"]
    assert len(access) == 4, access
    assert "path=/v/t1/seg.m4s status=200" in access[0]
    assert "path=/v/t1/720p/seg1.m4s status=403" in access[1]
    for line in access:
        assert "/_t/" not in line, line
        assert not any(t in line for t in tokens), line
    # Nor does anything else the edge logged while serving them.
    for record in caplog.records:
        assert not any(t in record.getMessage() for t in tokens), record.getMessage()


# -- key rotation ----------------------------------------------------------------------------


async def test_key_rotation_through_admin_reload(edge: RunningEdge, client, tmp_path: Path):
    key_file = edge.config.signing.key_file
    assert key_file is not None
    old_keys = edge.keys
    assert old_keys is not None and old_keys.current == "k1"
    new_line = generate_key_line("k2")
    staged = tmp_path / "keys.staged"
    staged.write_text(new_line + "\n" + TEST_KEYS)
    new_keys = load_keys(staged)
    assert new_keys.current == "k2"

    def url(keys: SigningKeys) -> str:
        return edge.url + signed_path(sign(keys, "/v/t1/", int(time.time()) + 600), "/v/t1/seg.m4s")

    await assert_rejected(client, edge, url(new_keys), "unknown_key")

    os.replace(staged, key_file)
    # Without the admin credential nothing is reloaded.
    async with client.post(edge.admin + "/admin/reload-keys") as r:
        assert r.status == 401
    await assert_rejected(client, edge, url(new_keys), "unknown_key")

    async with client.post(edge.admin + "/admin/reload-keys", headers=AUTH) as r:
        assert r.status == 200
        assert await r.json() == {"reloaded": True}
    assert (await fetch(client, url(new_keys)))[0] == 200
    assert (await fetch(client, url(old_keys)))[0] == 200  # k1 is still listed

    # Retire k1: its tokens stop working at once, k2's keep working.
    key_file.write_text(new_line + "\nk0 hex:" + "22" * 32 + "\n")
    async with client.post(edge.admin + "/admin/reload-keys", headers=AUTH) as r:
        assert await r.json() == {"reloaded": True}
    await assert_rejected(client, edge, url(old_keys), "unknown_key")
    assert (await fetch(client, url(new_keys)))[0] == 200


async def test_aborted_response_log_does_not_contain_the_token(
    edges, origin: FakeOrigin, tmp_path: Path, client, caplog
):
    origin.files["/v/t1/seg.m4s"] = blob(100_000, seed=8)
    origin.mode = "truncate"  # every answer stops half-way: the response is cut after its head
    edge = await edges(edge_config(tmp_path, [origin.url], signed=True, public=("/art/",)))
    url = edge.signed("/v/t1/seg.m4s")
    async with client.get(url) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    await edge.settled()
    assert edge.counter("edge_client_aborts_total") == 1
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("event=response_aborted" in m for m in messages), messages
    leaks = [m for m in messages if token_of(url) in m]
    assert not leaks, leaks
