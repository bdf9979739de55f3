"""origin.storage against a real directory and a real S3 API (moto's server, see conftest)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import xxhash

from origin.storage import (
    READ_CHUNK,
    InvalidKey,
    LocalStorage,
    NotFound,
    ObjectInfo,
    S3Storage,
    Storage,
    StorageError,
    check_key,
    guess_content_type,
    make_etag,
    open_storage,
)

from .conftest import MotoS3

MiB = 1024 * 1024
BACKENDS = ["local", "s3"]

Factory = Callable[..., Storage]


def data_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def read_all(store: Storage, key: str, start: int, end: int) -> bytes:
    out = bytearray()
    async for chunk in store.read(key, start, end):
        assert 0 < len(chunk) <= READ_CHUNK
        out += chunk
    return bytes(out)


@pytest.fixture(scope="session")
def s3_admin(moto: MotoS3) -> Iterator[Any]:
    client = moto.client()
    yield client
    client.close()


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def make_s3(moto: MotoS3, bucket: str) -> AsyncIterator[Factory]:
    made: list[Storage] = []

    def make(**kw: Any) -> Storage:
        args: dict[str, Any] = {
            "endpoint_url": moto.endpoint,
            "region": moto.region,
            "access_key_id": moto.access_key_id,
            "secret_access_key": moto.secret_access_key,
        }
        args.update(kw)
        store = S3Storage(args.pop("bucket", bucket), **args)
        made.append(store)
        return store

    yield make
    for s in made:
        await s.close()


@pytest.fixture
async def make_local(tmp_path: Path) -> AsyncIterator[Factory]:
    root = tmp_path / "store"
    root.mkdir()
    made: list[Storage] = []

    def make(**kw: Any) -> Storage:
        kw.pop("page_size", None)  # an S3 knob
        store = LocalStorage(root, **kw)
        made.append(store)
        return store

    yield make
    for s in made:
        await s.close()


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest) -> Factory:
    """New instances of one backend over the same data (a second one has a cold stat cache)."""
    factory: Factory = request.getfixturevalue(f"make_{request.param}")
    return factory


@pytest.fixture
def store(make_store: Factory) -> Storage:
    return make_store()


# -- keys ------------------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("..", id="dotdot"),
    pytest.param("v/../etc/passwd", id="dotdot-inside"),
    pytest.param("../x", id="dotdot-lead"),
    pytest.param("./x", id="dot-slash"),
    pytest.param("v/./x", id="dot-inside"),
    pytest.param("v//x", id="double-slash"),
    pytest.param("v/x/", id="trailing-slash"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("v\\..\\x", id="backslash"),
    pytest.param("v/x\x00.m4s", id="nul"),
    pytest.param("v/x\n.m4s", id="newline"),
    pytest.param("v/x\x7f", id="del"),
    pytest.param("v/x\x85", id="c1-control"),
    pytest.param(".meta/v/x.json", id="meta"),
    pytest.param("v/.tmp-0123456789abcdef", id="temp-file"),
    pytest.param("v/x\udc80", id="lone-surrogate"),
    pytest.param("a/" * 512 + "b", id="too-long"),
    pytest.param("v/" + "x" * 251, id="segment-too-long"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_rejects(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "v/title1/720p/seg00001.m4s",
        "x",
        "v/título/ドラマ/seg.m4s",
        "v/a..b/c.",  # dots inside a segment are fine
        "v/" + "x" * 250,
        "/".join(["abcdefg"] * 128),  # exactly 1023 bytes
    ],
)
def test_check_key_accepts(key: str) -> None:
    assert check_key(key) == key


def test_check_key_rejects_non_strings() -> None:
    with pytest.raises(InvalidKey):
        check_key(b"v/x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("../x", id="dotdot"),
        pytest.param("/abs", id="absolute"),
        pytest.param(".meta/v/x.json", id="meta"),
        pytest.param("v/x\x00", id="nul"),
    ],
)
async def test_every_method_validates_keys(store: Storage, key: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with pytest.raises(InvalidKey):
        await store.stat(key)
    with pytest.raises(InvalidKey):
        store.read(key, 0, 0)  # refused at the call, before iterating
    with pytest.raises(InvalidKey):
        store.local_path(key)
    with pytest.raises(InvalidKey):
        await store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        await store.put_file(key, src)
    with pytest.raises(InvalidKey):
        await store.delete(key)
    with pytest.raises(InvalidKey):
        await store.list(key)


# -- put / stat / read -----------------------------------------------------------------------


async def test_put_bytes_stat_round_trip(make_store: Factory) -> None:
    store = make_store()
    data = data_of(1000)
    before = int(time.time())
    info = await store.put_bytes("v/t1/720p/seg00001.m4s", data)
    checksum = xxhash.xxh64_hexdigest(data)
    assert info == ObjectInfo(
        key="v/t1/720p/seg00001.m4s",
        size=1000,
        checksum=checksum,
        etag=f'"{checksum}-1000"',
        mtime=info.mtime,
        content_type="video/iso.segment",
    )
    assert before - 1 <= info.mtime <= time.time() + 1
    assert await store.stat("v/t1/720p/seg00001.m4s") == info
    # A fresh instance (cold cache) reads the same metadata back from the backend.
    assert await make_store().stat("v/t1/720p/seg00001.m4s") == info
    assert await read_all(store, "v/t1/720p/seg00001.m4s", 0, 999) == data
    assert await store.stat("v/t1/720p/seg00002.m4s") is None
    assert await store.stat("v/t1") is None  # a "directory" is not an object


async def test_read_ranges_at_the_edges(store: Storage) -> None:
    size = 3 * READ_CHUNK + 123
    data = data_of(size, seed=1)
    await store.put_bytes("v/t/big.mp4", data)
    ranges = [
        (0, 0),  # first byte
        (size - 1, size - 1),  # last byte
        (0, size - 1),  # whole
        (7, 7),  # a single byte
        (READ_CHUNK - 1, READ_CHUNK),  # straddles a chunk boundary
        (READ_CHUNK, 2 * READ_CHUNK - 1),  # exactly one chunk
        (1, 2 * READ_CHUNK + 1),  # several chunks, unaligned
        (size - READ_CHUNK - 5, size - 1),  # the tail
    ]
    for start, end in ranges:
        assert await read_all(store, "v/t/big.mp4", start, end) == data[start : end + 1], (
            start,
            end,
        )
    # The empty range (what an empty object has) yields nothing.
    assert await read_all(store, "v/t/big.mp4", 5, 4) == b""


async def test_empty_object(store: Storage) -> None:
    info = await store.put_bytes("v/t/empty.vtt", b"")
    assert (info.size, info.checksum) == (0, xxhash.xxh64_hexdigest(b""))
    assert await store.stat("v/t/empty.vtt") == info
    assert await read_all(store, "v/t/empty.vtt", 0, -1) == b""


async def test_read_errors(store: Storage) -> None:
    await store.put_bytes("v/t/a.m4s", b"0123456789")
    for start, end in [(-1, 3), (5, 3), (0, -2)]:
        with pytest.raises(ValueError):
            store.read("v/t/a.m4s", start, end)
    with pytest.raises(ValueError):
        store.read("v/t/a.m4s", True, 3)
    with pytest.raises(StorageError, match="past the end"):
        await read_all(store, "v/t/a.m4s", 5, 10)
    with pytest.raises(StorageError, match="past the end"):
        await read_all(store, "v/t/a.m4s", 10, 10)
    with pytest.raises(NotFound):
        await read_all(store, "v/t/missing.m4s", 0, 0)


async def test_read_can_be_abandoned(store: Storage) -> None:
    data = data_of(3 * READ_CHUNK)
    await store.put_bytes("v/t/a.mp4", data)
    async with aclosing(store.read("v/t/a.mp4", 0, 3 * READ_CHUNK - 1)) as chunks:
        async for chunk in chunks:
            assert len(chunk) == READ_CHUNK
            break
    # The store is still fully usable afterwards.
    assert await read_all(store, "v/t/a.mp4", 0, 0) == data[:1]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("v/t/master.m3u8", "application/vnd.apple.mpegurl"),
        ("v/t/manifest.mpd", "application/dash+xml"),
        ("v/t/720p/seg1.m4s", "video/iso.segment"),
        ("v/t/720p/init.mp4", "video/mp4"),
        ("v/t/audio/init.m4a", "audio/mp4"),
        ("v/t/thumb.JPG", "image/jpeg"),
        ("v/t/info.json", "application/json"),
        ("v/t/subs/en.vtt", "text/vtt"),
        ("v/t/legacy/seg1.ts", "video/mp2t"),
        ("v/t/notes.txt", "text/plain"),
        ("v/t/blob", "application/octet-stream"),
        ("v/t/archive.tar.gz", "application/octet-stream"),
        ("data:text/html,x", "application/octet-stream"),  # not parsed as a data: URL
    ],
)
def test_guess_content_type(key: str, expected: str) -> None:
    assert guess_content_type(key) == expected


async def test_content_types(make_store: Factory) -> None:
    store = make_store()
    for key, expected in [
        ("v/t/master.m3u8", "application/vnd.apple.mpegurl"),
        ("v/t/720p/init.mp4", "video/mp4"),
        ("v/t/subs/en.vtt", "text/vtt"),
        ("v/t/blob", "application/octet-stream"),
    ]:
        assert (await store.put_bytes(key, b"x")).content_type == expected
    info = await store.put_bytes("v/t/x.bin", b"x", content_type="text/plain; charset=utf-8")
    assert info.content_type == "text/plain; charset=utf-8"
    cold = make_store()
    assert (await cold.stat("v/t/x.bin")) == info
    assert (await cold.stat("v/t/subs/en.vtt") or info).content_type == "text/vtt"
    for bad in ["text/html\r\nX-Evil: 1", "nonsense", "", "a/b\x00", "é/x"]:
        with pytest.raises(ValueError, match="content type"):
            await store.put_bytes("v/t/y.bin", b"x", content_type=bad)
    assert await store.stat("v/t/y.bin") is None


async def test_etag_stable_across_writes_and_backends(
    make_local: Factory, make_s3: Factory
) -> None:
    data = data_of(5000, seed=3)
    local, s3 = make_local(), make_s3()
    a = await local.put_bytes("v/t/seg.m4s", data)
    b = await s3.put_bytes("v/t/seg.m4s", data)
    c = await local.put_bytes("v/t/seg.m4s", data)  # rewritten: same bytes, same validator
    assert a.etag == b.etag == c.etag == make_etag(xxhash.xxh64_hexdigest(data), 5000)
    assert a.etag.startswith('"') and a.etag.endswith('"')
    d = await local.put_bytes("v/t/seg.m4s", data[:-1] + b"?")
    assert d.etag != a.etag


async def test_put_bytes_rejects_non_bytes(store: Storage) -> None:
    with pytest.raises(TypeError):
        await store.put_bytes("v/t/x", "text")  # type: ignore[arg-type]
    info = await store.put_bytes("v/t/x", bytearray(b"abc"))
    assert info.size == 3


# -- put_file, multipart, streaming ----------------------------------------------------------


async def test_put_file_20mib_multipart_and_streamed_read(
    make_store: Factory, tmp_path: Path, moto: MotoS3, bucket: str, s3_admin: Any
) -> None:
    store = make_store()
    size = 20 * MiB
    data = data_of(size, seed=4)
    src = tmp_path / "src.mp4"
    src.write_bytes(data)
    checksum = xxhash.xxh64_hexdigest(data)
    info = await store.put_file("v/t/movie.mp4", src)
    assert (info.size, info.checksum, info.content_type) == (size, checksum, "video/mp4")
    assert info.etag == f'"{checksum}-{size}"'
    assert await make_store().stat("v/t/movie.mp4") == info

    if isinstance(store, S3Storage):
        head = s3_admin.head_object(Bucket=bucket, Key="v/t/movie.mp4")
        assert head["ETag"].endswith('-3"'), head["ETag"]  # three 8 MiB parts
        assert head["Metadata"]["xxh64"] == checksum
        assert head["ContentType"] == "video/mp4"
        assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    else:
        assert isinstance(store, LocalStorage)
        assert store.local_path("v/t/movie.mp4") == str(store.root / "v/t/movie.mp4")

    del data
    # Chunk by chunk, each at most 256 KiB, and never the whole object in memory.
    h = xxhash.xxh64()
    chunks = 0
    tracemalloc.start()
    try:
        async for chunk in store.read("v/t/movie.mp4", 0, size - 1):
            assert 0 < len(chunk) <= READ_CHUNK
            h.update(chunk)
            chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.hexdigest() == checksum
    assert chunks >= size // READ_CHUNK
    assert peak < 4 * MiB, peak


async def test_put_file_small_is_a_single_put(
    make_s3: Factory, tmp_path: Path, bucket: str, s3_admin: Any
) -> None:
    store = make_s3()
    src = tmp_path / "seg.m4s"
    src.write_bytes(data_of(MiB))
    info = await store.put_file("v/t/seg.m4s", src)
    head = s3_admin.head_object(Bucket=bucket, Key="v/t/seg.m4s")
    assert "-" not in head["ETag"]
    assert head["Metadata"] == {"xxh64": info.checksum, "mtime": str(info.mtime)}


async def test_put_file_sources(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        await store.put_file("v/t/x", tmp_path)
    with pytest.raises(StorageError, match="source file"):
        await store.put_file("v/t/x", tmp_path / "missing")
    assert await store.stat("v/t/x") is None
    src = tmp_path / "s.json"
    src.write_bytes(b"{}")
    info = await store.put_file("v/t/s.json", src, content_type="application/x-custom")
    assert (info.size, info.content_type) == (2, "application/x-custom")
    # Replacing an object replaces it completely.
    src.write_bytes(b"[1]")
    info = await store.put_file("v/t/s.json", src)
    assert await read_all(store, "v/t/s.json", 0, 2) == b"[1]"
    assert info.content_type == "application/json"


async def test_cancelled_put_file_leaves_no_debris(
    make_store: Factory, tmp_path: Path, bucket: str, s3_admin: Any
) -> None:
    """Whatever moment the cancellation lands, the outcome is all or nothing."""
    store = make_store()
    data = data_of(24 * MiB, seed=6)
    src = tmp_path / "big.mp4"
    src.write_bytes(data)
    task = asyncio.create_task(store.put_file("v/t/big.mp4", src))
    await asyncio.sleep(0)  # the job is handed to a worker
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.close()  # waits for the worker to wind down
    info = await make_store().stat("v/t/big.mp4")
    if info is not None:
        assert info.checksum == xxhash.xxh64_hexdigest(data)
    if isinstance(store, S3Storage):
        assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    else:
        assert isinstance(store, LocalStorage)
        leftovers = [p.name for p in store.root.rglob("*") if p.name.startswith(".tmp-")]
        assert leftovers == []


async def test_a_cancelled_write_returns_only_once_its_worker_is_done(
    make_local: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """publish() cleans up after a cancelled upload: the upload's thread must not land a file
    after that cleanup (tests/test_origin_server.py's all-or-nothing publish was flaky)."""
    store = make_local()
    assert isinstance(store, LocalStorage)
    entered, release = threading.Event(), threading.Event()
    real = LocalStorage._put_bytes_sync

    def slow(self: LocalStorage, key: str, data: bytes, content_type: str) -> Any:
        entered.set()
        release.wait(30)
        return real(self, key, data, content_type)

    monkeypatch.setattr(LocalStorage, "_put_bytes_sync", slow)
    task = asyncio.create_task(store.put_bytes("v/t/a.m4s", b"aaaa"))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    # The cancellation is pending until the thread ends: the task is not done yet.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The write has landed by the time the cancellation is seen, so a cleanup now removes it.
    assert await store.delete_prefix("v/t/") == 1
    assert await store.list("v/t/") == []


# -- delete, delete_prefix, list -------------------------------------------------------------


async def test_delete(store: Storage) -> None:
    await store.put_bytes("v/t/a.m4s", b"a")
    assert await store.delete("v/t/a.m4s") is True
    assert await store.stat("v/t/a.m4s") is None
    with pytest.raises(NotFound):
        await read_all(store, "v/t/a.m4s", 0, 0)
    assert await store.delete("v/t/a.m4s") is False
    assert await store.delete("v/never") is False
    assert await store.list("") == []


async def test_list_and_delete_prefix(store: Storage) -> None:
    keys = [
        "v/t1/720p/seg2.m4s",
        "v/t1/720p/seg1.m4s",
        "v/t1/master.m3u8",
        "v/t10/master.m3u8",
        "v/t2/master.m3u8",
        "w/other",
    ]
    await asyncio.gather(*(store.put_bytes(k, k.encode()) for k in keys))
    assert await store.list("") == sorted(keys)
    assert await store.list("v/t1/") == sorted(keys[:3])
    assert await store.list("v/t1") == sorted(keys[:4])  # a string prefix, as in S3
    assert await store.list("v/t1/720p/seg1") == ["v/t1/720p/seg1.m4s"]
    assert await store.list("nothing/") == []
    for bad in ["../", "/v/", "v//", ".meta/"]:
        with pytest.raises(InvalidKey):
            await store.list(bad)
    for bad in ["", "v/t1", "v//", "../"]:  # no trailing '/': "v/t1" would hit v/t10 too
        with pytest.raises(InvalidKey):
            await store.delete_prefix(bad)

    assert await store.delete_prefix("v/t1/") == 3
    assert await store.list("") == sorted(keys[3:])
    assert await store.stat("v/t1/master.m3u8") is None
    assert await store.delete_prefix("v/t1/") == 0
    if isinstance(store, LocalStorage):
        assert not (store.root / "v/t1").exists()
        assert not (store.root / ".meta/v/t1").exists()
        assert (store.root / "v/t10/master.m3u8").exists()


async def test_pagination(make_store: Factory) -> None:
    store = make_store(page_size=7)  # S3: ListObjectsV2 pages and DeleteObjects batches of 7
    keys = [f"v/t/seg{i:03d}.m4s" for i in range(40)]
    await asyncio.gather(*(store.put_bytes(k, b"x") for k in reversed(keys)))
    await store.put_bytes("v/u/seg.m4s", b"x")
    assert await store.list("v/t/") == keys
    assert await store.delete_prefix("v/t/") == 40
    assert await store.list("") == ["v/u/seg.m4s"]


# -- the stat cache --------------------------------------------------------------------------


async def test_stat_cache_invalidated_by_own_writes(make_store: Factory) -> None:
    mine, other = make_store(stat_ttl=60), make_store()
    assert await mine.stat("v/t/a.m4s") is None
    # Another writer's object stays invisible while the negative answer is cached...
    await other.put_bytes("v/t/a.m4s", b"one")
    assert await mine.stat("v/t/a.m4s") is None
    # ...but this instance's own writes are seen at once.
    first = await mine.put_bytes("v/t/a.m4s", b"two")
    assert await mine.stat("v/t/a.m4s") == first
    await other.put_bytes("v/t/a.m4s", b"three")
    assert await mine.stat("v/t/a.m4s") == first  # cached
    second = await mine.put_bytes("v/t/a.m4s", b"four")
    assert second.checksum != first.checksum
    assert await mine.stat("v/t/a.m4s") == second
    assert await mine.delete("v/t/a.m4s") is True
    assert await mine.stat("v/t/a.m4s") is None
    await mine.put_bytes("v/t/b.m4s", b"b")
    assert await mine.stat("v/t/b.m4s") is not None
    await mine.delete_prefix("v/t/")
    assert await mine.stat("v/t/b.m4s") is None


async def test_stat_cache_expires(make_store: Factory) -> None:
    mine, other = make_store(stat_ttl=0), make_store()
    assert await mine.stat("v/t/a.m4s") is None
    info = await other.put_bytes("v/t/a.m4s", b"one")
    assert await mine.stat("v/t/a.m4s") == info


async def test_concurrent_stats_agree(make_store: Factory) -> None:
    info = await make_store().put_bytes("v/t/a.m4s", b"abc")
    cold = make_store()  # nothing cached: the 50 calls share one backend lookup
    results = await asyncio.gather(*(cold.stat("v/t/a.m4s") for _ in range(50)))
    assert results == [info] * 50


async def test_closed_store(make_store: Factory) -> None:
    store = make_store()
    await store.put_bytes("v/t/a", b"a")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await store.stat("v/t/b")
    with pytest.raises(StorageError, match="closed"):
        await store.put_bytes("v/t/a", b"a")


# -- local specifics -------------------------------------------------------------------------


async def test_local_path(make_local: Factory, make_s3: Factory) -> None:
    local = make_local()
    assert isinstance(local, LocalStorage)
    path = local.local_path("v/t/a.m4s")
    assert path == os.path.join(local.root, "v/t/a.m4s") and os.path.isabs(path)
    await local.put_bytes("v/t/a.m4s", b"abc")
    assert Path(path).read_bytes() == b"abc"
    assert make_s3().local_path("v/t/a.m4s") is None


async def test_local_leftovers_of_a_crash_are_invisible(make_local: Factory) -> None:
    store = make_local()
    assert isinstance(store, LocalStorage)
    info = await store.put_bytes("v/t/seg.m4s", b"good")
    # A crash mid-write leaves a temp file next to the object and one in .meta.
    (store.root / "v/t/.tmp-0123456789abcdef").write_bytes(b"half-writ")
    (store.root / ".meta/v/t/.tmp-fedcba9876543210").write_bytes(b"{")
    assert await store.list("") == ["v/t/seg.m4s"]
    with pytest.raises(InvalidKey):
        await store.list("v/t/.")
    with pytest.raises(InvalidKey):
        await store.stat("v/t/.tmp-0123456789abcdef")
    with pytest.raises(InvalidKey):
        store.read("v/t/.tmp-0123456789abcdef", 0, 0)
    assert await store.stat("v/t/seg.m4s") == info
    assert await store.delete_prefix("v/t/") == 1


async def test_local_crash_between_object_and_sidecar(make_local: Factory) -> None:
    store = make_local()
    assert isinstance(store, LocalStorage)
    await store.put_bytes("v/t/seg.m4s", b"old content")
    # The new object was renamed into place, the sidecar still describes the old one.
    tmp = store.root / "v/t/.tmp-1111111111111111"
    tmp.write_bytes(b"new content!")
    os.replace(tmp, store.root / "v/t/seg.m4s")
    info = await make_local().stat("v/t/seg.m4s")
    assert info is not None
    assert (info.size, info.checksum) == (12, xxhash.xxh64_hexdigest(b"new content!"))


async def test_local_hand_copied_file_gets_a_sidecar(make_local: Factory) -> None:
    store = make_local()
    assert isinstance(store, LocalStorage)
    data = data_of(3 * MiB + 5, seed=9)
    f = store.root / "v/t/720p/seg1.m4s"
    f.parent.mkdir(parents=True)
    f.write_bytes(data)
    sidecar = store.root / ".meta/v/t/720p/seg1.m4s.json"
    assert not sidecar.exists()

    info = await store.stat("v/t/720p/seg1.m4s")
    assert info is not None
    assert (info.size, info.checksum) == (len(data), xxhash.xxh64_hexdigest(data))
    assert info.content_type == "video/iso.segment"
    assert info.mtime == int(f.stat().st_mtime)
    doc = json.loads(sidecar.read_text())
    assert doc["xxh64"] == info.checksum and doc["size"] == len(data)
    assert await make_local().stat("v/t/720p/seg1.m4s") == info
    assert await store.list("v/") == ["v/t/720p/seg1.m4s"]

    # Edited by hand later (same size, new bytes): the stale sidecar is noticed.
    edited = data[::-1]
    f.write_bytes(edited)
    os.utime(f, ns=(time.time_ns(), f.stat().st_mtime_ns + 1_000_000))
    again = await make_local().stat("v/t/720p/seg1.m4s")
    assert again is not None and again.checksum == xxhash.xxh64_hexdigest(edited)

    # A sidecar that is garbage is not trusted either.
    sidecar.write_text('{"v": 1, "xxh64": "not hex"}')
    assert await make_local().stat("v/t/720p/seg1.m4s") == again


async def test_local_key_that_is_also_a_directory(make_local: Factory) -> None:
    store = make_local()
    await store.put_bytes("v/a/b", b"x")
    with pytest.raises(StorageError, match="directory"):
        await store.put_bytes("v/a", b"y")
    await store.put_bytes("v/c", b"y")
    with pytest.raises(StorageError):
        await store.put_bytes("v/c/d", b"z")
    assert await store.stat("v/a") is None
    assert await store.list("") == ["v/a/b", "v/c"]


async def test_local_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "fresh" / "assets")  # a fresh origin's root is created
    assert (tmp_path / "fresh/assets").is_dir()
    await store.close()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="not a directory"):
        LocalStorage(tmp_path / "file")
    with pytest.raises(ValueError, match=r"^storage\.root: .*not a directory"):
        open_storage({"backend": "local", "root": str(tmp_path / "file")})


# -- S3 specifics ----------------------------------------------------------------------------


async def test_s3_wrong_bucket(make_s3: Factory, moto: MotoS3, tmp_path: Path) -> None:
    store = make_s3(bucket="no-such-bucket-here")
    src = tmp_path / "f"
    src.write_bytes(b"x" * 10)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: store.stat("v/t/a"),
        lambda: store.put_bytes("v/t/a", b"x"),
        lambda: store.put_file("v/t/a", src),
        lambda: store.list(""),
        lambda: store.delete("v/t/a"),
        lambda: store.delete_prefix("v/"),
        lambda: read_all(store, "v/t/a", 0, 0),
    ]
    for attempt in attempts:
        with pytest.raises(StorageError) as e:
            await attempt()
        assert not isinstance(e.value, NotFound)
        assert "no-such-bucket-here" in str(e.value)
        assert moto.secret_access_key not in str(e.value)
        assert moto.access_key_id not in str(e.value)


async def test_s3_unreachable_endpoint(moto: MotoS3) -> None:
    from .conftest import free_port

    store = S3Storage(
        "some-bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="id",
        secret_access_key="secret-value",
        max_attempts=1,
        connect_timeout=1,
    )
    try:
        with pytest.raises(StorageError, match="EndpointConnectionError") as e:
            await store.list("")
        assert "secret-value" not in str(e.value)
    finally:
        await store.close()


async def test_s3_prefix(make_s3: Factory, bucket: str, s3_admin: Any) -> None:
    store = make_s3(prefix="origin/")
    await store.put_bytes("v/t/a.m4s", b"a")
    keys = [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["origin/v/t/a.m4s"]
    assert await store.list("") == ["v/t/a.m4s"]
    assert await make_s3(prefix="origin").list("v/") == ["v/t/a.m4s"]
    assert await make_s3().list("") == ["origin/v/t/a.m4s"]
    long_key = "v/" + "x/" * 420 + "y"  # fine alone, too long behind the prefix
    prefixed = make_s3(prefix="p" * 200 + "/")
    with pytest.raises(InvalidKey):
        await prefixed.stat(long_key)
    with pytest.raises(InvalidKey):
        prefixed.read(long_key, 0, 0)


async def test_s3_object_without_metadata_gets_a_checksum(
    make_s3: Factory, bucket: str, s3_admin: Any
) -> None:
    data = data_of(2 * MiB + 1, seed=5)
    s3_admin.put_object(Bucket=bucket, Key="v/t/hand.mp4", Body=data)
    s3_admin.put_object(Bucket=bucket, Key="v/../bad", Body=b"x")  # unreachable name
    store = make_s3()
    info = await store.stat("v/t/hand.mp4")
    assert info is not None
    assert (info.size, info.checksum) == (len(data), xxhash.xxh64_hexdigest(data))
    assert info.content_type == "video/mp4"
    head = s3_admin.head_object(Bucket=bucket, Key="v/t/hand.mp4")
    assert head["Metadata"]["xxh64"] == info.checksum
    assert await make_s3().stat("v/t/hand.mp4") == info
    assert await store.list("v/") == ["v/t/hand.mp4"]


# -- open_storage ----------------------------------------------------------------------------


async def test_open_storage(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    local = open_storage({"backend": "local", "root": str(tmp_path)})
    assert isinstance(local, LocalStorage) and local.name == "local"
    await local.close()
    s3 = open_storage(
        {
            "backend": "s3",
            "bucket": bucket,
            "prefix": "o/",
            "region": moto.region,
            "endpoint_url": moto.endpoint,
            "access_key_id": moto.access_key_id,
            "secret_access_key": moto.secret_access_key,
            "part_size": 16 * MiB,
        }
    )
    try:
        assert isinstance(s3, S3Storage) and s3.name == "s3"
        assert (s3.prefix, s3.part_size) == ("o/", 16 * MiB)
        assert (await s3.put_bytes("v/a", b"a")).size == 1
    finally:
        await s3.close()


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ({}, "storage.backend"),
        ({"backend": "ftp"}, "storage.backend"),
        ({"backend": "local"}, "storage.root"),
        ({"backend": "local", "root": 5}, "storage.root"),
        ({"backend": "local", "root": ""}, "storage.root"),
        ({"backend": "local", "root": "/tmp", "bucket": "b"}, "storage.bucket"),
        ({"backend": "s3"}, "storage.bucket"),
        ({"backend": "s3", "bucket": "s3://bkt"}, "storage.bucket"),
        ({"backend": "s3", "bucket": "bkt", "root": "/x"}, "storage.root"),
        ({"backend": "s3", "bucket": "bkt", "prefix": "../x"}, "storage.prefix"),
        ({"backend": "s3", "bucket": "bkt", "prefix": 3}, "storage.prefix"),
        ({"backend": "s3", "bucket": "bkt", "region": "us east"}, "storage.region"),
        ({"backend": "s3", "bucket": "bkt", "endpoint_url": "ftp://x"}, "storage.endpoint_url"),
        ({"backend": "s3", "bucket": "bkt", "endpoint_url": "http://"}, "storage.endpoint_url"),
        (
            {"backend": "s3", "bucket": "bkt", "endpoint_url": "http://h:99999"},
            "storage.endpoint_url",
        ),
        ({"backend": "s3", "bucket": "bkt", "access_key_id": "a"}, "storage.access_key_id"),
        (
            {"backend": "s3", "bucket": "bkt", "access_key_id": "a", "secret_access_key": "a b"},
            "storage.secret_access_key",
        ),
        ({"backend": "s3", "bucket": "bkt", "part_size": MiB}, "storage.part_size"),
        ({"backend": "s3", "bucket": "bkt", "part_size": "8M"}, "storage.part_size"),
        (
            {"backend": "s3", "bucket": "bkt", "multipart_threshold": True},
            "storage.multipart_threshold",
        ),
    ],
)
def test_open_storage_errors(spec: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(names)}[ :]"):
        open_storage(spec)


def test_open_storage_never_echoes_secrets() -> None:
    with pytest.raises(ValueError, match=r"^storage\.endpoint_url") as e:
        open_storage(
            {"backend": "s3", "bucket": "bkt", "endpoint_url": "http://user:hunter2@host/"}
        )
    assert "hunter2" not in str(e.value)
    with pytest.raises(ValueError, match=r"^storage\.secret_access_key") as e:
        open_storage(
            {
                "backend": "s3",
                "bucket": "bkt",
                "access_key_id": "id",
                "secret_access_key": "hunter2\n",
            }
        )
    assert "hunter2" not in str(e.value)
    with pytest.raises(ValueError, match="storage:"):
        open_storage([("backend", "local")])  # type: ignore[arg-type]
