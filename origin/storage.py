"""The origin's object store: one async interface, a local-directory and an S3 backend.

Keys look like ``v/title1/720p/seg00001.m4s``. Every key from outside goes
through :func:`check_key`, which refuses anything that could leave the store's
root (``..``, absolute paths, backslashes, NUL and control characters) and any
segment starting with ``.``: dot-names are reserved for the store's own files
(``.meta/`` sidecars, ``.tmp-*`` files of writes in progress) so those can never
be listed, stat-ed or served.

Every object carries the same metadata on both backends: size, the xxh64 of the
whole content (computed at write time), a strong ETag derived from checksum and
size (so an object copied between backends keeps its validator), the write time
and a content type.

All methods are coroutines except :meth:`Storage.read` (an async iterator) and
:meth:`Storage.local_path`. Blocking work (file I/O, boto3 calls) runs on a
per-store thread pool, so a slow disk or bucket cannot starve the event loop or
the loop's default executor, and objects are only ever handled in bounded
chunks: nothing reads a whole object into memory.

``stat`` answers are cached for a few seconds (a store serving hot segments to
many edges sees the same keys over and over); this instance's own writes and
deletes invalidate the entries they touch, and concurrent ``stat`` calls for a
key share one backend lookup.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import mimetypes
import os
import posixpath
import re
import secrets
import stat as statmod
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol, TypeGuard, TypeVar
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
import xxhash
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
from cachetools import TTLCache

__all__ = [
    "InvalidKey",
    "LocalStorage",
    "NotFound",
    "ObjectInfo",
    "S3Storage",
    "Storage",
    "StorageError",
    "check_key",
    "guess_content_type",
    "make_etag",
    "open_storage",
]

T = TypeVar("T")

log = logging.getLogger("origin.storage")

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

READ_CHUNK: Final = 256 * KiB  # largest chunk read() yields
COPY_CHUNK: Final = 1 * MiB  # buffer for copying and hashing whole files
MAX_KEY_BYTES: Final = 1024  # S3's limit; the local backend keeps the same one
# A segment plus the sidecar's ".json" must fit the 255-byte file name limit of
# ext4/xfs/zfs, so both backends refuse longer segments and behave the same.
MAX_SEGMENT_BYTES: Final = 250
META_DIR: Final = ".meta"
TMP_PREFIX: Final = ".tmp-"

S3_MIN_PART: Final = 5 * MiB  # every part but the last must be at least this big
S3_MAX_PART: Final = 5 * GiB
S3_MAX_PARTS: Final = 10_000
S3_MAX_PUT: Final = 5 * GiB  # single PUT and CopyObject limit
S3_MAX_BATCH: Final = 1000  # DeleteObjects and ListObjectsV2 page limit


class StorageError(Exception):
    """An I/O or backend failure (the server answers 502/503)."""


class NotFound(StorageError):
    """``read`` of an object that does not exist (any more).

    A subclass of StorageError because, after a successful ``stat``, a vanished
    object is a backend race, not a client error; a server that wants a 404
    instead can catch this first.
    """


class InvalidKey(ValueError):
    """A key (or prefix) that is not a safe, relative object name."""


class _Cancelled(Exception):
    """Raised inside a worker thread when the coroutine that started the job was cancelled."""


# -- keys, content types, validators ---------------------------------------------------------

# C0 and C1 control characters, DEL and backslash (a path separator on Windows
# and an escape in too many places to be worth allowing).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _show(text: str, limit: int = 80) -> str:
    """A key for an error message: repr() escapes control characters, and it is cut short."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidKey`.

    Rules: a non-empty, relative, ``/``-separated UTF-8 string of at most 1024
    bytes; no empty segment (so no leading, trailing or doubled ``/``); no
    segment starting with ``.`` (covers ``.`` and ``..``, and reserves dot-names
    for ``.meta/`` and temp files); no segment over 250 bytes; no NUL, control
    character or backslash.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidKey("empty key")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"key {_show(key)} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long; the limit is {MAX_KEY_BYTES}")
    bad = _FORBIDDEN.search(key)
    if bad is not None:
        raise InvalidKey(f"key {_show(key)} contains the forbidden character {bad.group()!r}")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"key {_show(key)} has an empty segment (leading, trailing or '//')")
        if segment.startswith("."):
            raise InvalidKey(f"key {_show(key)} has a segment starting with '.'")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"key {_show(key)} has a segment over {MAX_SEGMENT_BYTES} bytes")
    return key


def _check_prefix(prefix: str, *, directory: bool) -> str:
    """A listing prefix: "" (everything), or a key's beginning.

    Matching is by string prefix, like S3 ("v/tit" matches "v/title1/a").
    ``directory`` demands a trailing "/" (for deletes: "v/title1" must not also
    wipe "v/title10/").
    """
    if not isinstance(prefix, str):
        raise InvalidKey(f"prefix must be a string, not {type(prefix).__name__}")
    if directory and not prefix.endswith("/"):
        raise InvalidKey(f"prefix {_show(prefix)} must be non-empty and end with '/'")
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


# Pinned here because the platform's mime tables disagree on these (some map
# .ts to Qt translations, most know nothing of .m4s), and the type an edge
# caches must not depend on which host the origin runs on.
_CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".ts": "video/mp2t",
    ".aac": "audio/aac",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".json": "application/json",
    ".vtt": "text/vtt",
}
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"

# type/subtype made of RFC 9110 token characters, optionally with parameters;
# printable ASCII only, so the value is safe in a header and in S3 metadata.
_CONTENT_TYPE_RE = re.compile(
    r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*;[\x20-\x7e]*)?"
)
_CHECKSUM_RE = re.compile(r"[0-9a-f]{16}")


def guess_content_type(key: str) -> str:
    """The content type for a key, from its extension."""
    ext = posixpath.splitext(key)[1].lower()
    if ext in _CONTENT_TYPES:
        return _CONTENT_TYPES[ext]
    # Only the extension is consulted: guess_type() of the whole key would
    # parse "data:text/html,..." as a data URL and return the type it names.
    guessed, encoding = mimetypes.guess_type("object" + ext, strict=True)
    # "x.tar.gz" guesses the tar type with a gzip *encoding*: serving that as
    # application/x-tar would be a lie, so anything encoded is opaque bytes.
    if guessed is None or encoding is not None:
        return DEFAULT_CONTENT_TYPE
    return guessed


def _valid_content_type(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= 255 and bool(_CONTENT_TYPE_RE.fullmatch(value))


def _content_type(key: str, given: str | None) -> str:
    if given is None:
        return guess_content_type(key)
    if not _valid_content_type(given):
        raise ValueError(f"invalid content type {_show(str(given))}")
    return given


def make_etag(checksum: str, size: int) -> str:
    """The strong ETag of an object: the same on every backend for the same bytes."""
    return f'"{checksum}-{size}"'


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store knows about one object, without reading it."""

    key: str
    size: int
    checksum: str  # xxh64 hex of the whole content
    etag: str  # strong, quoted; see make_etag
    mtime: int  # epoch seconds of the write
    content_type: str


def _info(key: str, size: int, checksum: str, mtime: int, content_type: str) -> ObjectInfo:
    return ObjectInfo(key, size, checksum, make_etag(checksum, size), mtime, content_type)


def _check_range(start: int, end: int) -> None:
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if start < 0 or end < start - 1:
        raise ValueError(f"invalid byte range {start}-{end}")


def _check_src(src: Path) -> int:
    """The size of a regular source file for put_file (a FIFO would block a worker forever)."""
    try:
        st = os.stat(src)
    except OSError as e:
        raise StorageError(f"cannot read source file {src}: {e.strerror}") from e
    if not statmod.S_ISREG(st.st_mode):
        raise ValueError(f"source {src} is not a regular file")
    return st.st_size


def _hash_file(src: Path, cancel: threading.Event) -> tuple[str, int]:
    h = xxhash.xxh64()
    size = 0
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if cancel.is_set():
                raise _Cancelled
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


# -- the interface ---------------------------------------------------------------------------


class _Reader(Protocol):
    """A backend's open byte range; used from worker threads only."""

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class Storage(abc.ABC):
    """The origin's master copies. See the module docstring for the contract."""

    name: str

    def __init__(self, *, workers: int, stat_ttl: float, stat_cache_size: int) -> None:
        _check_int("workers", workers, 1, 1024)
        _check_int("stat_cache_size", stat_cache_size, 1, 10_000_000)
        if not isinstance(stat_ttl, int | float) or isinstance(stat_ttl, bool) or stat_ttl < 0:
            raise ValueError("stat_ttl must be a number >= 0")
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"storage-{self.name}"
        )
        self._cache: TTLCache[str, ObjectInfo | None] = TTLCache(stat_cache_size, stat_ttl)
        self._caching = stat_ttl > 0  # 0 turns the cache off (TTLCache would keep ttl=0 briefly)
        self._inflight: dict[str, asyncio.Future[ObjectInfo | None]] = {}
        # Bumped by every invalidation: a stat that started before a write must
        # not put its (possibly older) answer into the cache after it.
        self._generation = 0
        self._closed = False

    # -- public API --------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None if there is none. Never reads the content
        (except to compute a missing checksum once; see the backends)."""
        key = self._check(key)
        try:
            return self._cache[key]
        except KeyError:
            pass
        fut = self._inflight.get(key)
        if fut is None:
            generation = self._generation
            fut = asyncio.ensure_future(self._run(functools.partial(self._stat_sync, key)))
            self._inflight[key] = fut
            fut.add_done_callback(functools.partial(self._stat_done, key, generation))
        # shield: one caller giving up must not cancel the lookup the others wait on.
        return await asyncio.shield(fut)

    def read(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``start..end`` (inclusive) in chunks of at most 256 KiB.

        Arguments are checked here, before iteration starts. ``end == start - 1``
        is the empty range (what an empty object has) and yields nothing. Raises
        NotFound if the object is gone, StorageError if the range goes past its
        end (it changed since stat) or the backend fails mid-stream. A consumer
        that may stop early should use ``contextlib.aclosing`` so the file or
        connection is released at once rather than when the generator is collected.
        """
        key = self._check(key)
        _check_range(start, end)
        return self._read(key, start, end)

    @abc.abstractmethod
    def local_path(self, key: str) -> str | None:
        """The absolute file path of the object if it is a local file (for sendfile), else None."""

    async def put_file(self, key: str, src: Path, content_type: str | None = None) -> ObjectInfo:
        """Store the content of the file ``src`` under ``key``, replacing any object there."""
        key = self._check(key)
        content_type = _content_type(key, content_type)
        src = Path(src)
        cancel = threading.Event()
        try:
            return await self._write(
                key, functools.partial(self._put_file_sync, key, src, content_type, cancel)
            )
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next chunk and cleans up
            raise

    async def put_bytes(
        self, key: str, data: bytes | bytearray | memoryview, content_type: str | None = None
    ) -> ObjectInfo:
        """Store ``data`` under ``key``, replacing any object there."""
        key = self._check(key)
        content_type = _content_type(key, content_type)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        data = bytes(data)  # a private copy: the caller may reuse its buffer meanwhile
        return await self._write(
            key, functools.partial(self._put_bytes_sync, key, data, content_type)
        )

    async def delete(self, key: str) -> bool:
        """Remove the object; True if it existed."""
        key = self._check(key)
        return await self._write(key, functools.partial(self._delete_sync, key))

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (which must end with '/'); returns how many."""
        prefix = _check_prefix(prefix, directory=True)
        return await self._write(
            prefix, functools.partial(self._delete_prefix_sync, prefix), is_prefix=True
        )

    async def list(self, prefix: str) -> list[str]:
        """All keys starting with ``prefix`` ("" for all), sorted."""
        prefix = _check_prefix(prefix, directory=False)
        return await self._run(functools.partial(self._list_sync, prefix))

    async def close(self) -> None:
        """Let the jobs already handed to workers finish, then release the backend.

        Later calls raise StorageError. (Queued jobs are not dropped: their
        callers would see a CancelledError they never asked for.)
        """
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, True)
        self._close_backend()

    # -- backend hooks (run in worker threads) -----------------------------------------------

    def _check(self, key: str) -> str:
        """check_key plus any limit of the backend (run on the loop, before any I/O)."""
        return check_key(key)

    @abc.abstractmethod
    def _stat_sync(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def _open_sync(self, key: str, start: int, end: int) -> _Reader: ...

    @abc.abstractmethod
    def _put_file_sync(
        self, key: str, src: Path, content_type: str, cancel: threading.Event
    ) -> ObjectInfo: ...

    @abc.abstractmethod
    def _put_bytes_sync(self, key: str, data: bytes, content_type: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def _delete_sync(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _delete_prefix_sync(self, prefix: str) -> int: ...

    @abc.abstractmethod
    def _list_sync(self, prefix: str) -> builtins.list[str]: ...  # 'list' is a method here

    @abc.abstractmethod
    def _close_backend(self) -> None: ...

    # -- machinery ---------------------------------------------------------------------------

    def _submit(self, job: Callable[[], T]) -> concurrent.futures.Future[T]:
        if self._closed:
            raise StorageError(f"{self.name} storage is closed")
        try:
            return self._pool.submit(job)
        except RuntimeError as e:  # shut down between the check and here
            raise StorageError(f"{self.name} storage is closed") from e

    async def _run(self, job: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._submit(job))

    async def _write(self, key: str, job: Callable[[], T], *, is_prefix: bool = False) -> T:
        loop = asyncio.get_running_loop()
        self._invalidate(key, is_prefix)
        cf = self._submit(job)

        # Invalidate again when the *thread* finishes: if the caller was
        # cancelled, the write may still land after this coroutine is gone.
        def done(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to keep fresh
                loop.call_soon_threadsafe(self._invalidate, key, is_prefix)

        cf.add_done_callback(done)
        return await asyncio.wrap_future(cf)

    def _invalidate(self, key: str, is_prefix: bool) -> None:
        self._generation += 1
        if is_prefix:
            for k in [k for k in self._cache if k.startswith(key)]:
                self._cache.pop(k, None)
            for k in [k for k in self._inflight if k.startswith(key)]:
                del self._inflight[k]
        else:
            self._cache.pop(key, None)
            self._inflight.pop(key, None)

    def _stat_done(self, key: str, generation: int, fut: asyncio.Future[ObjectInfo | None]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if fut.cancelled() or fut.exception() is not None:  # exception() marks it retrieved
            return
        if self._caching and generation == self._generation:
            self._cache[key] = fut.result()

    async def _read(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        remaining = end - start + 1
        if remaining == 0:
            return
        reader = await self._run(functools.partial(self._open_sync, key, start, end))
        try:
            while remaining > 0:
                chunk = await self._run(functools.partial(reader.read, min(READ_CHUNK, remaining)))
                if not chunk:
                    raise StorageError(
                        f"{self.name}: {_show(key)} ended {remaining} bytes early "
                        "(changed while being read)"
                    )
                remaining -= len(chunk)
                yield chunk
        finally:
            # Closed on a worker, behind any read still running there (the
            # reader serialises the two), never under a read in flight.
            try:
                self._pool.submit(reader.close)
            except RuntimeError:  # pool shut down: nothing else can be using the reader
                reader.close()


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, not {value!r}")
    return value


# -- local directory -------------------------------------------------------------------------


class _FileReader:
    """A byte range of an open file; reads and close serialised by a lock."""

    def __init__(self, fd: int, start: int) -> None:
        self._fd = fd
        self._pos = start
        self._lock = threading.Lock()

    def read(self, n: int) -> bytes:
        with self._lock:
            if self._fd < 0:
                raise StorageError("read after close")
            try:
                data = os.pread(self._fd, n, self._pos)
            except OSError as e:
                raise StorageError(f"local read failed: {e.strerror}") from e
            self._pos += len(data)
            return data

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _fsync_dir(path: str | Path) -> None:
    # A rename or unlink is only durable once the directory itself is synced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class LocalStorage(Storage):
    """Objects are files under ``root`` (created if missing); their metadata is a JSON
    sidecar under ``root/.meta/``.

    Writes are crash-safe: the content goes to a ``.tmp-*`` file in the target
    directory, is fsynced and renamed over the key, then the sidecar is written
    the same way. A crash leaves either the old or the new object, plus at most
    a temp file that is never listed or served (check_key refuses dot-names).

    The sidecar records the file's inode, mtime (ns) and size. A sidecar that is
    missing, unreadable or does not match the file (a crash between the two
    renames, or a file copied or edited in by hand) is not trusted: the first
    ``stat`` then reads the file once in a worker thread to compute the
    checksum, writes a fresh sidecar and answers from it, with the file's
    mtime and a content type guessed from the extension.
    """

    name = "local"

    def __init__(
        self,
        root: Path | str,
        *,
        workers: int = 16,
        stat_ttl: float = 3.0,
        stat_cache_size: int = 10_000,
    ) -> None:
        if not isinstance(root, str | os.PathLike) or not str(root):
            raise ValueError("root must be a non-empty path")
        path = Path(root)
        try:
            # Created on the first start of a fresh origin; a file there is an error.
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ValueError(f"root {str(path)!r} exists and is not a directory") from None
        except OSError as e:
            raise ValueError(f"root {str(path)!r} cannot be created: {e.strerror}") from None
        self.root = path.resolve()
        self._root = str(self.root)
        self._meta = os.path.join(self._root, META_DIR)
        super().__init__(workers=workers, stat_ttl=stat_ttl, stat_cache_size=stat_cache_size)

    def local_path(self, key: str) -> str:
        return os.path.join(self._root, check_key(key))

    def _sidecar(self, key: str) -> str:
        return os.path.join(self._meta, key + ".json")

    # -- stat --------------------------------------------------------------------------------

    def _stat_sync(self, key: str) -> ObjectInfo | None:
        path = os.path.join(self._root, key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise StorageError(f"local stat {_show(key)}: {e.strerror}") from e
        if not statmod.S_ISREG(st.st_mode):
            return None
        info = self._load_sidecar(key, st)
        if info is not None:
            return info
        return self._rebuild_sidecar(key, path)

    def _load_sidecar(self, key: str, st: os.stat_result) -> ObjectInfo | None:
        try:
            with open(self._sidecar(key), "rb") as f:
                raw = f.read(8 * KiB + 1)
            doc = json.loads(raw) if len(raw) <= 8 * KiB else None
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        size, mtime = doc.get("size"), doc.get("mtime")
        checksum, content_type = doc.get("xxh64"), doc.get("content_type")
        if not (
            doc.get("v") == 1
            and doc.get("key") == key
            and size == st.st_size
            and doc.get("ino") == st.st_ino
            and doc.get("mtime_ns") == st.st_mtime_ns
            and isinstance(size, int)
            and isinstance(mtime, int)
            and not isinstance(mtime, bool)
            and isinstance(checksum, str)
            and _CHECKSUM_RE.fullmatch(checksum)
            and isinstance(content_type, str)
            and _valid_content_type(content_type)
        ):
            return None
        return _info(key, size, checksum, mtime, content_type)

    def _rebuild_sidecar(self, key: str, path: str) -> ObjectInfo | None:
        for _ in range(3):  # retried only if the file changes while being hashed
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as e:
                raise StorageError(f"local stat {_show(key)}: {e.strerror}") from e
            try:
                before = os.fstat(fd)
                if not statmod.S_ISREG(before.st_mode):
                    return None
                h = xxhash.xxh64()
                offset = 0
                while chunk := os.pread(fd, COPY_CHUNK, offset):
                    h.update(chunk)
                    offset += len(chunk)
                after = os.fstat(fd)
            except OSError as e:
                raise StorageError(f"local read {_show(key)}: {e.strerror}") from e
            finally:
                os.close(fd)
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                continue
            if offset != after.st_size:
                continue
            info = _info(key, offset, h.hexdigest(), int(after.st_mtime), guess_content_type(key))
            try:
                self._write_sidecar(key, info, after)
            except (OSError, StorageError) as e:
                # A read-only root can still be served; the checksum is just
                # recomputed whenever the cached answer expires.
                log.warning("cannot write the sidecar of %s: %s", _show(key), e)
            return info
        raise StorageError(f"local {_show(key)} keeps changing while its checksum is computed")

    # -- writes ------------------------------------------------------------------------------

    def _makedirs(self, directory: str) -> None:
        """Create missing directories, syncing each parent that gained an entry."""
        missing: list[str] = []
        d = directory
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise StorageError(
                        f"local: {d!r} exists and is not a directory (a key is a prefix "
                        "of another key)"
                    ) from None
                continue
            _fsync_dir(os.path.dirname(d))

    def _create_temp(self, directory: str) -> tuple[int, str]:
        # A concurrent delete_prefix may prune the directory between makedirs
        # and open; try again a few times rather than fail the write.
        for _ in range(5):
            self._makedirs(directory)
            tmp = os.path.join(directory, TMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue
            return fd, tmp
        raise StorageError(f"local: directory {directory!r} keeps disappearing")

    def _commit(self, target: str, fill: Callable[[int], str]) -> tuple[str, os.stat_result]:
        """Write a file crash-safely: ``fill(fd)`` writes the content and returns its checksum."""
        directory = os.path.dirname(target)
        fd, tmp = self._create_temp(directory)
        try:
            try:
                checksum = fill(fd)
                os.fsync(fd)
                st = os.fstat(fd)  # rename keeps inode and mtime, so these match the final file
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
        return checksum, st

    def _write_sidecar(self, key: str, info: ObjectInfo, st: os.stat_result) -> None:
        doc = {
            "v": 1,
            "key": key,
            "size": info.size,
            "xxh64": info.checksum,
            "mtime": info.mtime,
            "content_type": info.content_type,
            "ino": st.st_ino,
            "mtime_ns": st.st_mtime_ns,
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()

        def fill(fd: int) -> str:
            _write_all(fd, raw)
            return ""

        self._commit(self._sidecar(key), fill)

    def _put(self, key: str, fill: Callable[[int], str], content_type: str) -> ObjectInfo:
        try:
            checksum, st = self._commit(os.path.join(self._root, key), fill)
            info = _info(key, st.st_size, checksum, int(st.st_mtime), content_type)
            # After the object: a crash in between leaves a sidecar that does
            # not match the new file, which stat() detects and recomputes.
            self._write_sidecar(key, info, st)
        except IsADirectoryError:
            raise StorageError(
                f"local put {_show(key)}: a directory of that name exists (the key is a "
                "prefix of other keys)"
            ) from None
        except NotADirectoryError:
            raise StorageError(
                f"local put {_show(key)}: a parent path is a file (another key is a "
                "prefix of this one)"
            ) from None
        except OSError as e:
            raise StorageError(f"local put {_show(key)}: {e.strerror or e}") from e
        return info

    def _put_file_sync(
        self, key: str, src: Path, content_type: str, cancel: threading.Event
    ) -> ObjectInfo:
        _check_src(src)
        try:
            # Opened apart from the copy so a bad source is not reported as a store failure.
            f = open(src, "rb", buffering=0)  # noqa: SIM115 -- closed by the `with f` below
        except OSError as e:
            raise StorageError(f"cannot read source file {src}: {e.strerror}") from e

        def fill(fd: int) -> str:
            h = xxhash.xxh64()
            buf = bytearray(COPY_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                if cancel.is_set():
                    raise _Cancelled
                h.update(view[:n])
                _write_all(fd, view[:n])
            return h.hexdigest()

        with f:
            return self._put(key, fill, content_type)

    def _put_bytes_sync(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        def fill(fd: int) -> str:
            _write_all(fd, data)
            return xxhash.xxh64_hexdigest(data)

        return self._put(key, fill, content_type)

    # -- reads -------------------------------------------------------------------------------

    def _open_sync(self, key: str, start: int, end: int) -> _Reader:
        path = os.path.join(self._root, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"local: no object {_show(key)}") from None
        except OSError as e:
            raise StorageError(f"local open {_show(key)}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                raise NotFound(f"local: no object {_show(key)}")
            if end >= st.st_size:
                raise StorageError(
                    f"local: range {start}-{end} is past the end of {_show(key)} "
                    f"({st.st_size} bytes; it changed since stat)"
                )
            with contextlib.suppress(OSError, AttributeError):  # advisory only
                os.posix_fadvise(fd, start, end - start + 1, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        return _FileReader(fd, start)

    # -- deletes and listings ----------------------------------------------------------------

    def _delete_sync(self, key: str) -> bool:
        path = os.path.join(self._root, key)
        try:
            os.unlink(path)
            existed = True
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            existed = False
        except OSError as e:
            raise StorageError(f"local delete {_show(key)}: {e.strerror}") from e
        # The object first: a crash before the sidecar goes leaves an orphan
        # sidecar, which is harmless (stat needs the object) and overwritten later.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._sidecar(key))
        if existed:
            with contextlib.suppress(OSError):
                _fsync_dir(os.path.dirname(path))
        return existed

    def _delete_prefix_sync(self, prefix: str) -> int:
        count = 0
        for key in self._list_sync(prefix):
            if self._delete_sync(key):
                count += 1
        # Prune the emptied directories of both trees (rmdir refuses non-empty
        # ones, so a concurrent write into the prefix is left alone).
        for top in (self._root, self._meta):
            self._prune(os.path.join(top, prefix.removesuffix("/")))
        return count

    @staticmethod
    def _prune(top: str) -> None:
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)

    def _list_sync(self, prefix: str) -> list[str]:
        head, _, partial = prefix.rpartition("/")
        base = os.path.join(self._root, head) if head else self._root
        keys: list[str] = []
        # (directory, key prefix of its entries, name filter for this level)
        stack: list[tuple[str, str, str]] = [(base, head + "/" if head else "", partial)]
        try:
            while stack:
                directory, key_prefix, name_filter = stack.pop()
                try:
                    entries = list(os.scandir(directory))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    name = entry.name
                    # Dot-names are the store's own (.meta, temp files), never objects.
                    if name.startswith(".") or not name.startswith(name_filter):
                        continue
                    key = key_prefix + name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, key + "/", ""))
                    elif entry.is_file():
                        try:
                            keys.append(check_key(key))
                        except InvalidKey:
                            continue  # a hand-placed file with a name no request can reach
        except OSError as e:
            raise StorageError(f"local list {_show(prefix)}: {e.strerror}") from e
        keys.sort()
        return keys

    def _close_backend(self) -> None:
        pass


# -- S3 --------------------------------------------------------------------------------------


_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_REGION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CREDENTIAL_RE = re.compile(r"[\x21-\x7e]{1,1024}")


def _error_code(e: ClientError) -> tuple[str, int | None]:
    response: dict[str, Any] = e.response or {}
    code = str(response.get("Error", {}).get("Code", "Unknown"))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


class _S3Reader:
    """A ranged GET's body; reads and close serialised by a lock."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where
        self._lock = threading.Lock()
        self._closed = False

    def read(self, n: int) -> bytes:
        with self._lock:
            if self._closed:
                raise StorageError("read after close")
            try:
                data = self._body.read(n)
            except (BotoCoreError, OSError, ValueError) as e:
                raise StorageError(f"s3 read {self._where}: {type(e).__name__}: {e}") from e
            if not isinstance(data, bytes):
                raise StorageError(f"s3 read {self._where}: unexpected body type")
            return data

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(Exception):
                    self._body.close()


class S3Storage(Storage):
    """Objects in an S3 (or S3-compatible) bucket, under an optional key prefix.

    The checksum and write time travel as user metadata (``x-amz-meta-xxh64``,
    ``x-amz-meta-mtime``), the type as the object's Content-Type, the size is
    the object's ContentLength. An object uploaded by other means (no valid
    ``xxh64`` metadata) has its checksum computed on its first ``stat`` by
    streaming it once, and stored with an in-place CopyObject guarded by the
    ETag, like the local backend's sidecar rebuild.

    ``page_size`` is ListObjectsV2's MaxKeys and the DeleteObjects batch size
    (at most 1000, S3's limit).
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        *,
        workers: int = 32,
        page_size: int = S3_MAX_BATCH,
        stat_ttl: float = 3.0,
        stat_cache_size: int = 10_000,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
            raise ValueError(
                f"bucket: {_show(str(bucket))} is not a bucket name (just the name, "
                "no 's3://' or '/')"
            )
        self.bucket = bucket
        self.prefix = self._normalise_prefix(prefix)
        if region is not None and (not isinstance(region, str) or not _REGION_RE.fullmatch(region)):
            raise ValueError(f"region: {_show(str(region))} is not a region name")
        if endpoint_url is not None:
            self._check_endpoint(endpoint_url)
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be given together")
        for name, value in (
            ("access_key_id", access_key_id),
            ("secret_access_key", secret_access_key),
        ):
            # Never echo the value: it may be a secret.
            if value is not None and (
                not isinstance(value, str) or not _CREDENTIAL_RE.fullmatch(value)
            ):
                raise ValueError(f"{name}: must be 1-1024 printable ASCII characters")
        self.multipart_threshold = _check_int(
            "multipart_threshold", multipart_threshold, 1 * MiB, S3_MAX_PUT
        )
        self.part_size = _check_int("part_size", part_size, S3_MIN_PART, S3_MAX_PART)
        self.page_size = _check_int("page_size", page_size, 1, S3_MAX_BATCH)
        _check_int("max_attempts", max_attempts, 1, 20)
        for name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
                raise ValueError(f"{name} must be a number > 0")
        super().__init__(workers=workers, stat_ttl=stat_ttl, stat_cache_size=stat_cache_size)
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # One connection per worker thread, so no thread waits for the pool.
            max_pool_connections=max(32, workers),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Custom endpoints (MinIO, Ceph, moto) rarely have per-bucket DNS.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        try:
            # A private session: boto3's default one is shared, mutable global state.
            session = boto3.session.Session(
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                region_name=region,
            )
            self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        except (BotoCoreError, ValueError) as e:
            raise ValueError(
                f"endpoint_url: cannot create the S3 client ({type(e).__name__})"
            ) from None
        self._bucket_ok = False

    @staticmethod
    def _normalise_prefix(prefix: object) -> str:
        if not isinstance(prefix, str):
            raise ValueError("prefix: must be a string")
        if not prefix:
            return ""
        try:
            check_key(prefix.removesuffix("/"))
        except InvalidKey as e:
            raise ValueError(f"prefix: {e}") from None
        return prefix.removesuffix("/") + "/"

    @staticmethod
    def _check_endpoint(url: object) -> None:
        if not isinstance(url, str):
            raise ValueError("endpoint_url: must be a string")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"endpoint_url: {_show(url)} is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint_url: {_show(url)} must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            # Not echoed: the userinfo may hold a secret.
            raise ValueError("endpoint_url: must not contain credentials; use the key fields")
        if parts.query or parts.fragment:
            raise ValueError(f"endpoint_url: {_show(url)} must not have a query or fragment")

    def local_path(self, key: str) -> None:
        self._check(key)
        return None

    def _check(self, key: str) -> str:
        self._full(check_key(key))
        return key

    def _full(self, key: str) -> str:
        full = self.prefix + key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidKey(
                f"key {_show(key)} with the bucket prefix exceeds {MAX_KEY_BYTES} bytes"
            )
        return full

    def _where(self, key: str) -> str:
        # repr()-quoted: keys may hold characters that must not reach a log line raw.
        return _show(f"s3://{self.bucket}/{self.prefix}{key}", 200)

    def _error(self, op: str, key: str, e: Exception) -> StorageError:
        """A botocore failure as StorageError. The message names the operation and
        object; botocore's own texts carry no credentials, and the endpoint has none."""
        if isinstance(e, ClientError):
            code, status = _error_code(e)
            message = str(e.response.get("Error", {}).get("Message", ""))[:200]
            text = f"s3 {op} {self._where(key)}: {code} (HTTP {status}) {message}"
            return StorageError(text.rstrip())
        return StorageError(f"s3 {op} {self._where(key)}: {type(e).__name__}: {e}")

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as e:
            raise self._error(op, key, e) from e

    def _ensure_bucket(self) -> None:
        """Tell "no such object" from "no such bucket": a HEAD 404 is the same for both."""
        if self._bucket_ok:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code, status = _error_code(e)
            if status == 404:
                raise StorageError(f"s3: bucket {self.bucket!r} does not exist") from e
            raise StorageError(f"s3: bucket {self.bucket!r}: {code} (HTTP {status})") from e
        except BotoCoreError as e:
            raise StorageError(f"s3: bucket {self.bucket!r}: {type(e).__name__}: {e}") from e
        self._bucket_ok = True

    # -- stat --------------------------------------------------------------------------------

    def _stat_sync(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        for _ in range(2):  # twice only if the object changes during a checksum repair
            try:
                head = self._client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as e:
                if _error_code(e)[1] == 404:
                    self._ensure_bucket()
                    return None
                raise self._error("stat", key, e) from e
            except BotoCoreError as e:
                raise self._error("stat", key, e) from e
            self._bucket_ok = True
            info = self._info_from_head(key, head)
            if info is not None:
                return info
            info = self._repair(key, head)
            if info is not None:
                return info
        raise StorageError(f"s3 stat {self._where(key)}: changed while its checksum was computed")

    def _info_from_head(self, key: str, head: dict[str, Any]) -> ObjectInfo | None:
        """The metadata written by put_*, or None if the checksum is missing or malformed."""
        size = head.get("ContentLength")
        if not isinstance(size, int) or size < 0:
            raise StorageError(f"s3 stat {self._where(key)}: no valid ContentLength")
        meta = head.get("Metadata") or {}
        checksum = meta.get("xxh64")
        if not isinstance(checksum, str) or not _CHECKSUM_RE.fullmatch(checksum):
            return None
        raw_mtime = meta.get("mtime")
        if isinstance(raw_mtime, str) and raw_mtime.isascii() and raw_mtime.isdigit():
            mtime = int(raw_mtime)
        else:
            mtime = self._last_modified(head)
        content_type = head.get("ContentType")
        if not _valid_content_type(content_type):
            content_type = guess_content_type(key)
        return _info(key, size, checksum, mtime, content_type)

    @staticmethod
    def _last_modified(head: dict[str, Any]) -> int:
        value = head.get("LastModified")
        return int(value.timestamp()) if isinstance(value, datetime) else int(time.time())

    def _repair(self, key: str, head: dict[str, Any]) -> ObjectInfo | None:
        """Compute and store the checksum of an object written without one.

        Returns None when the object changed meanwhile (the caller looks again).
        """
        full = self._full(key)
        size = head["ContentLength"]
        etag = head.get("ETag")
        if size > S3_MAX_PUT:
            raise StorageError(
                f"s3 stat {self._where(key)}: no xxh64 metadata and too large to add it in "
                "place; upload it again with put_file"
            )
        h = xxhash.xxh64()
        seen = 0
        with self._errors("stat (checksum)", key):
            try:
                extra = {"IfMatch": etag} if isinstance(etag, str) else {}
                body = self._client.get_object(Bucket=self.bucket, Key=full, **extra)["Body"]
            except ClientError as e:
                if _error_code(e)[1] in (404, 412):
                    return None
                raise
            try:
                while chunk := body.read(COPY_CHUNK):
                    h.update(chunk)
                    seen += len(chunk)
            finally:
                body.close()
            if seen != size:
                return None
            mtime = self._last_modified(head)
            content_type = head.get("ContentType")
            # S3 labels an upload without a type binary/octet-stream: that is
            # "unknown", and the extension knows better.
            if not _valid_content_type(content_type) or content_type == "binary/octet-stream":
                content_type = guess_content_type(key)
            metadata = dict(head.get("Metadata") or {})
            metadata.update(xxh64=h.hexdigest(), mtime=str(mtime))
            guard = {"CopySourceIfMatch": etag} if isinstance(etag, str) else {}
            try:
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=full,
                    CopySource={"Bucket": self.bucket, "Key": full},
                    Metadata=metadata,
                    MetadataDirective="REPLACE",
                    ContentType=content_type,
                    **guard,
                )
            except ClientError as e:
                if _error_code(e)[1] in (404, 412):
                    return None
                raise
        return _info(key, size, h.hexdigest(), mtime, content_type)

    # -- writes ------------------------------------------------------------------------------

    def _put_bytes_sync(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        full = self._full(key)
        if len(data) > S3_MAX_PUT:
            raise StorageError(f"s3 put {self._where(key)}: over 5 GiB; use put_file")
        checksum = xxhash.xxh64_hexdigest(data)
        mtime = int(time.time())
        with self._errors("put", key):
            self._client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ContentType=content_type,
                Metadata={"xxh64": checksum, "mtime": str(mtime)},
            )
        self._bucket_ok = True
        return _info(key, len(data), checksum, mtime, content_type)

    def _put_file_sync(
        self, key: str, src: Path, content_type: str, cancel: threading.Event
    ) -> ObjectInfo:
        full = self._full(key)
        size = _check_src(src)
        try:
            if size <= self.multipart_threshold:
                with open(src, "rb") as f:
                    data = f.read(self.multipart_threshold + 1)
                if len(data) > self.multipart_threshold:
                    raise StorageError(f"source file {src} grew while being read")
                return self._put_bytes_sync(key, data, content_type)
            # S3 metadata is fixed when the upload is created, before any part
            # is sent: so hash the file once first, hash again what is actually
            # sent, and refuse to complete if the two differ.
            checksum, size = _hash_file(src, cancel)
        except OSError as e:
            raise StorageError(f"cannot read source file {src}: {e.strerror}") from e
        part_size = max(self.part_size, math.ceil(size / S3_MAX_PARTS / MiB) * MiB)
        mtime = int(time.time())
        with self._errors("put (multipart)", key):
            upload = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                ContentType=content_type,
                Metadata={"xxh64": checksum, "mtime": str(mtime)},
            )
            upload_id = upload["UploadId"]
            try:
                self._upload_parts(key, full, upload_id, src, part_size, checksum, size, cancel)
            except BaseException:
                # An unfinished upload's parts are stored (and billed) until aborted.
                with contextlib.suppress(BotoCoreError, ClientError):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id
                    )
                raise
        self._bucket_ok = True
        return _info(key, size, checksum, mtime, content_type)

    def _upload_parts(
        self,
        key: str,
        full: str,
        upload_id: str,
        src: Path,
        part_size: int,
        checksum: str,
        size: int,
        cancel: threading.Event,
    ) -> None:
        h = xxhash.xxh64()
        sent = 0
        parts: list[dict[str, Any]] = []
        try:
            with open(src, "rb") as f:
                while data := f.read(part_size):
                    if cancel.is_set():
                        raise _Cancelled
                    h.update(data)
                    sent += len(data)
                    number = len(parts) + 1
                    r = self._client.upload_part(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                    )
                    parts.append({"ETag": r["ETag"], "PartNumber": number})
        except OSError as e:
            raise StorageError(f"cannot read source file {src}: {e.strerror}") from e
        if sent != size or h.hexdigest() != checksum:
            raise StorageError(
                f"s3 put {self._where(key)}: source file {src} changed during upload"
            )
        self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    # -- reads -------------------------------------------------------------------------------

    def _open_sync(self, key: str, start: int, end: int) -> _Reader:
        full = self._full(key)
        try:
            r = self._client.get_object(Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end}")
        except ClientError as e:
            code, status = _error_code(e)
            if code in ("NoSuchKey", "404"):
                raise NotFound(f"s3: no object {self._where(key)}") from e
            if status == 416:
                raise StorageError(
                    f"s3 read {self._where(key)}: range {start}-{end} is past the end "
                    "(it changed since stat)"
                ) from e
            raise self._error("read", key, e) from e
        except BotoCoreError as e:
            raise self._error("read", key, e) from e
        reader = _S3Reader(r["Body"], self._where(key))
        # S3 clamps a range that runs past the end instead of refusing it: check
        # we got exactly the bytes asked for, so a shorter object is an error.
        content_range = r.get("ContentRange")
        whole = content_range is None and start == 0 and r.get("ContentLength") == end + 1
        if not whole and not (
            isinstance(content_range, str) and content_range.startswith(f"bytes {start}-{end}/")
        ):
            reader.close()
            raise StorageError(
                f"s3 read {self._where(key)}: range {start}-{end} is past the end or "
                f"the object changed since stat (got {content_range!r})"
            )
        return reader

    # -- deletes and listings ----------------------------------------------------------------

    def _delete_sync(self, key: str) -> bool:
        full = self._full(key)
        # S3's DELETE succeeds whether or not the key exists: ask first.
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as e:
            if _error_code(e)[1] == 404:
                self._ensure_bucket()
                return False
            raise self._error("delete", key, e) from e
        except BotoCoreError as e:
            raise self._error("delete", key, e) from e
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)
        return True

    def _pages(self, prefix: str) -> Iterator[list[str]]:
        """Full keys under ``prefix``, one list per ListObjectsV2 page."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        for page in pages:
            yield [str(o["Key"]) for o in page.get("Contents", ())]

    def _list_sync(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors("list", prefix):
            for page in self._pages(prefix):
                for full in page:
                    try:
                        keys.append(check_key(full[len(self.prefix) :]))
                    except InvalidKey:
                        continue  # written by other means, under a name no request can reach
        self._bucket_ok = True
        keys.sort()
        return keys

    def _delete_prefix_sync(self, prefix: str) -> int:
        count = 0
        with self._errors("delete_prefix", prefix):
            # Deleting page by page is safe: ListObjectsV2 continues after the
            # last key it returned, whether or not that key still exists.
            for page in self._pages(prefix):
                for i in range(0, len(page), self.page_size):
                    batch = page[i : i + self.page_size]
                    r = self._client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    )
                    errors = r.get("Errors") or []
                    if errors:
                        first = errors[0]
                        raise StorageError(
                            f"s3 delete_prefix {self._where(prefix)}: {len(errors)} of "
                            f"{len(batch)} deletes failed, e.g. {_show(str(first.get('Key')))}: "
                            f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                        )
                    count += len(batch)
        self._bucket_ok = True
        return count

    def _close_backend(self) -> None:
        self._client.close()


# -- configuration ---------------------------------------------------------------------------

_LOCAL_KEYS: Final = frozenset({"backend", "root"})
_S3_KEYS: Final = frozenset(
    {
        "backend",
        "bucket",
        "prefix",
        "region",
        "endpoint_url",
        "access_key_id",
        "secret_access_key",
        "multipart_threshold",
        "part_size",
    }
)


def _opt_str(spec: Mapping[str, object], name: str) -> str | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"storage.{name}: must be a string, not {type(value).__name__}")
    return value


def open_storage(spec: Mapping[str, object]) -> Storage:
    """A storage from a config mapping; ValueError names the offending key.

    ``{"backend": "local", "root": "/srv/origin"}`` or ``{"backend": "s3",
    "bucket": ..., "prefix": ..., "region": ..., "endpoint_url": ...,
    "access_key_id": ..., "secret_access_key": ..., "multipart_threshold": ...,
    "part_size": ...}`` (all but bucket optional).
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"storage: must be a mapping, not {type(spec).__name__}")
    for name in spec:
        if not isinstance(name, str):
            raise ValueError(f"storage: keys must be strings, not {name!r}")
    backend = spec.get("backend")
    if backend == "local":
        allowed = _LOCAL_KEYS
    elif backend == "s3":
        allowed = _S3_KEYS
    else:
        raise ValueError(f"storage.backend: must be 'local' or 's3', not {backend!r}")
    for name in sorted(spec):
        if name not in allowed:
            raise ValueError(f"storage.{name}: unknown setting for the {backend} backend")

    if backend == "local":
        root = spec.get("root")
        if not isinstance(root, str | os.PathLike) or not str(root):
            raise ValueError("storage.root: required, a directory path")
        try:
            return LocalStorage(Path(root))
        except ValueError as e:
            raise ValueError(f"storage.root: {e}") from None

    bucket = _opt_str(spec, "bucket")
    if not bucket:
        raise ValueError("storage.bucket: required for the s3 backend")
    numbers: dict[str, int] = {}
    for name in ("multipart_threshold", "part_size"):
        value = spec.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"storage.{name}: must be an integer number of bytes")
            numbers[name] = value
    prefix = _opt_str(spec, "prefix") or ""
    region = _opt_str(spec, "region")
    endpoint_url = _opt_str(spec, "endpoint_url")
    access_key_id = _opt_str(spec, "access_key_id")
    secret_access_key = _opt_str(spec, "secret_access_key")
    try:
        return S3Storage(
            bucket,
            prefix=prefix,
            region=region,
            endpoint_url=endpoint_url,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            multipart_threshold=numbers.get("multipart_threshold", 8 * MiB),
            part_size=numbers.get("part_size", 8 * MiB),
        )
    except ValueError as e:
        # The constructor's messages start with the offending argument's name.
        raise ValueError(f"storage.{e}") from None
