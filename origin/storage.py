"""The origin's object store: one async interface, a local-directory and an S3 backend.

This module is the interface (keys, :class:`ObjectInfo`, the :class:`Storage` base class,
:func:`open_storage`); the backends are :class:`origin.local.LocalStorage` and
:class:`origin.s3.S3Storage`, both also importable from here.

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
import mimetypes
import os
import posixpath
import re
import stat as statmod
import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeGuard, TypeVar

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

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

READ_CHUNK: Final = 256 * KiB  # largest chunk read() yields
COPY_CHUNK: Final = 1 * MiB  # buffer for copying and hashing whole files
MAX_KEY_BYTES: Final = 1024  # S3's limit; the local backend keeps the same one
# A segment plus the sidecar's ".json" must fit the 255-byte file name limit of
# ext4/xfs/zfs, so both backends refuse longer segments and behave the same.
MAX_SEGMENT_BYTES: Final = 250


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
        # On cancellation the worker stops at its next chunk and cleans up.
        return await self._write(
            key,
            functools.partial(self._put_file_sync, key, src, content_type, cancel),
            on_cancel=cancel.set,
        )

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

    async def _write(
        self,
        key: str,
        job: Callable[[], T],
        *,
        is_prefix: bool = False,
        on_cancel: Callable[[], None] | None = None,
    ) -> T:
        loop = asyncio.get_running_loop()
        self._invalidate(key, is_prefix)
        cf = self._submit(job)

        # Invalidate again when the *thread* finishes: if the caller was
        # cancelled, the write may still land after this coroutine is gone.
        def done(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to keep fresh
                loop.call_soon_threadsafe(self._invalidate, key, is_prefix)

        cf.add_done_callback(done)
        fut = asyncio.wrap_future(cf)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # A worker thread cannot be interrupted. A cancelled write returns only once its
            # thread is done (or the job never started), so a caller's cleanup after the
            # cancellation (publish's delete_prefix) cannot be overtaken by the write landing.
            if on_cancel is not None:
                on_cancel()
            if not cf.cancel():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(fut)
            raise

    def forget(self, key: str) -> None:
        """Drop cached metadata of ``key`` (the caller saw the object change underneath)."""
        self._invalidate(key, False)

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
        from .local import LocalStorage

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
    from .s3 import S3Storage

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


# -- the backends ----------------------------------------------------------------------------

# They build on this module, so importing them here at the top would be an import cycle:
# ``origin.storage.LocalStorage`` and ``.S3Storage`` load their module on first use instead
# (and boto3 is only imported once S3 is).
if TYPE_CHECKING:
    from .local import LocalStorage
    from .s3 import S3Storage
else:

    def __getattr__(name: str) -> type[Storage]:
        if name == "LocalStorage":
            from .local import LocalStorage

            return LocalStorage
        if name == "S3Storage":
            from .s3 import S3Storage

            return S3Storage
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
