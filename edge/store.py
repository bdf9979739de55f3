"""The SSD slice store: files on disk, one LRU index per disk, cached descriptors.

Every object is cached as fixed-size slices (the last one shorter); a small
object is a single slice. A slice is one file named by the xxh3 hash of
``path NUL slice-index`` under two levels of fan-out directories, on the disk
chosen by weighted rendezvous hashing of that key. Each file starts with a
small header (the object's metadata as JSON) followed by the body, so a hit
needs no other lookup and the body goes out with ``sendfile`` from
``body_offset``.

Crash safety: a slice is written to ``NAME.RANDOM.tmp``, fsynced and renamed,
so a file under its final name is always complete; at start-up the index is
rebuilt from the final names and every ``.tmp`` or foreign file is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .lru import LRUIndex, pinned_keys

log = logging.getLogger("edge.store")

MAGIC = b"OCS1"
_PREFIX = struct.Struct("<4sI")  # magic, header length
_HEX = frozenset("0123456789abcdef")
PINS_FILE = "pinned.keys"
LOCK_FILE = ".lock"
# The slice size the directory's slices were cut with. Slices are named by (path, index),
# so slices cut at another size would be served as wrong bytes at the right offsets.
LAYOUT_FILE = "layout.json"


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the edge knows about one upstream representation."""

    size: int
    etag: str  # strong, quoted
    last_modified: int  # epoch seconds
    content_type: str
    checksum: str | None = None  # xxh64 hex of the whole object, when the upstream sent one


@dataclass(slots=True)
class SliceHandle:
    """An open, complete slice file. ``refs`` counts readers; closed at zero once dropped."""

    key: int
    fd: int
    body_offset: int
    length: int
    path: str
    index: int
    meta: ObjectMeta
    disk: Disk
    refs: int = 0
    dropped: bool = False


def slice_key(path: str, index: int) -> int:
    return xxhash.xxh3_64_intdigest(f"{path}\x00{index}".encode())


def encode_header(path: str, index: int, length: int, meta: ObjectMeta) -> bytes:
    body = json.dumps(
        {
            "path": path,
            "index": index,
            "length": length,
            "size": meta.size,
            "etag": meta.etag,
            "last_modified": meta.last_modified,
            "content_type": meta.content_type,
            "checksum": meta.checksum,
        },
        separators=(",", ":"),
    ).encode()
    return _PREFIX.pack(MAGIC, len(body)) + body


def decode_header(raw: bytes) -> tuple[int, str, int, int, ObjectMeta]:
    """Returns (body_offset, path, index, length, meta); ValueError if corrupt."""
    if len(raw) < _PREFIX.size:
        raise ValueError("short header")
    magic, n = _PREFIX.unpack_from(raw)
    if magic != MAGIC or _PREFIX.size + n > len(raw):
        raise ValueError("bad header")
    d = json.loads(raw[_PREFIX.size : _PREFIX.size + n])
    meta = ObjectMeta(
        size=int(d["size"]),
        etag=str(d["etag"]),
        last_modified=int(d["last_modified"]),
        content_type=str(d["content_type"]),
        checksum=d.get("checksum"),
    )
    return _PREFIX.size + n, str(d["path"]), int(d["index"]), int(d["length"]), meta


class CacheInUse(Exception):
    """Another process holds the cache directory: two edges must never share one."""


class Disk:
    """One cache directory (normally one SSD) with its own byte-bounded LRU."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.index = LRUIndex(capacity)
        self.weight = float(max(capacity, 1))
        self.seed = xxhash.xxh64_intdigest(str(root).encode())
        self.errors = 0
        self.failed = False
        self.reserved = 0  # bytes promised to fills in progress
        self.lock_fd = -1
        self.pins_dirty = False

    def file_path(self, key: int) -> str:
        h = f"{key:016x}"
        return f"{self.root}/{h[0:2]}/{h[2:4]}/{h}"

    def rendezvous(self, key: int) -> float:
        # Weighted rendezvous hashing: -w / ln(u) for u uniform in (0, 1).
        u = (xxhash.xxh64_intdigest(key.to_bytes(8, "little"), seed=self.seed) + 1) / 2.0**64
        return -self.weight / math.log(u) if u < 1.0 else math.inf

    def rebuild(self, slice_size: int) -> tuple[int, int]:
        """Index every complete slice file; remove temporaries and strangers.

        Returns (objects indexed, files removed). Recency is approximated by
        modification time (the order slices were filled or last refreshed). Slices cut
        at another slice size than ``slice_size`` are all removed (``LAYOUT_FILE``).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock()
        recorded = self._recorded_slice_size()
        # No record: a cache from before the record existed, cut at the configured size.
        reset = recorded is not None and recorded != slice_size
        if reset:
            log.warning(
                "event=cache_reset dir=%s reason=slice_size recorded=%s configured=%d",
                self.root,
                recorded,
                slice_size,
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / PINS_FILE)
        found: list[tuple[float, int, int]] = []
        removed = 0
        # Only our own two-level fan-out is walked: anything else under the root (a
        # filesystem's lost+found, an operator's notes) is left alone, and one unreadable
        # directory costs only its own entries.
        for top in _scan(self.root):
            if not _is_fanout(top):
                continue
            for sub in _scan(top.path):
                if not _is_fanout(sub):
                    continue
                for f in _scan(sub.path):
                    name = f.name
                    try:
                        if (
                            not reset
                            and len(name) == 16
                            and _HEX.issuperset(name)
                            and name[0:2] == top.name
                            and name[2:4] == sub.name
                            and f.is_file(follow_symlinks=False)
                        ):
                            st = f.stat(follow_symlinks=False)
                            if st.st_size >= _PREFIX.size:
                                found.append((st.st_mtime, int(name, 16), st.st_size))
                                continue
                    except OSError as exc:
                        log.warning("event=rebuild_skip path=%s error=%r", f.path, str(exc))
                        continue
                    # partial writes from a crash (*.tmp) and anything else in our fan-out
                    removed += _unlink(f.path)
        # Recorded after the sweep: a crash during a reset sweeps again at the next start.
        if recorded != slice_size:
            write_atomic(self.root / LAYOUT_FILE, json.dumps({"slice_size": slice_size}).encode())
        found.sort()
        for _, key, size in found:
            self.index.insert(key, size)
        pins = self.load_pins()
        for key in pins:
            self.index.pin(key)
        # An operator may have shrunk the disk's capacity: trim now, oldest first.
        victims, _ = self.index.make_room(0, max_scan=len(found) + 1)
        for key, _size in victims:
            removed += _unlink(self.file_path(key))
        return len(self.index), removed

    def _recorded_slice_size(self) -> int | str | None:
        """The recorded slice size; None if there is no record, a string if it is unreadable
        (which also resets: nothing says how the slices were cut)."""
        try:
            doc = json.loads((self.root / LAYOUT_FILE).read_bytes())
            size = doc["slice_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise ValueError(f"slice_size {size!r}")
            return size
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable({exc})"

    def lock(self) -> None:
        """Take the directory's lock for this process's lifetime (released on exit)."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CacheInUse(
                f"cache directory {self.root} is in use by another edge (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def unlock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def load_pins(self) -> set[int]:
        try:
            text = (self.root / PINS_FILE).read_text()
        except FileNotFoundError:
            return set()
        out = set()
        for line in text.split():
            with contextlib.suppress(ValueError):
                out.add(int(line, 16))
        return out

    def save_pins(self) -> None:
        write_pins(self.root / PINS_FILE, self.index.pinned_snapshot())


def write_pins(path: Path, snapshot: tuple[bytes, bytes]) -> None:
    """Write a pins file (one 16-digit hex key a line) from an index snapshot.

    Run in a worker thread by ``Store.flush_pins_async``: at a million pinned slices the
    formatting takes most of a second, which must not stall the players' event loop.
    """
    write_atomic(path, "".join([f"{k:016x}\n" for k in pinned_keys(snapshot)]).encode())


def _scan(path: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        log.warning("event=rebuild_skip path=%s error=%r", path, str(exc))
        return []


def _is_fanout(entry: os.DirEntry[str]) -> bool:
    try:
        return (
            len(entry.name) == 2
            and _HEX.issuperset(entry.name)
            and entry.is_dir(follow_symlinks=False)
        )
    except OSError:
        return False


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except IsADirectoryError:
        return 0
    except FileNotFoundError:
        return 0


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file crash-safely: temporary name, fsync, rename, fsync the directory.

    On any error the file under ``path`` is left as it was and the temporary is removed:
    a full disk (a short write, then ENOSPC) must never replace a good file with a
    truncated one.
    """
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)  # os.write may write less than asked
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk.
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SliceWriter:
    """A slice being filled: a temporary file that becomes visible on commit."""

    __slots__ = ("body_offset", "disk", "fd", "final", "key", "length", "pinned", "tmp", "written")

    def __init__(self, disk: Disk, key: int, header: bytes, length: int, pinned: bool) -> None:
        self.disk = disk
        self.key = key
        self.length = length
        self.pinned = pinned
        self.final = disk.file_path(key)
        self.tmp = f"{self.final}.{secrets.token_hex(4)}.tmp"
        os.makedirs(os.path.dirname(self.final), exist_ok=True)
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.body_offset = len(header)
        self.written = 0
        try:
            _write_all(self.fd, header)
        except OSError:
            self.discard()
            self.close()
            raise

    def write(self, data: bytes | memoryview) -> None:
        _write_all(self.fd, data)
        self.written += len(data)

    def discard(self) -> None:
        """Remove the temporary file; the descriptor stays readable until ``close``."""
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # a regular file that takes nothing: looping would never end
            raise OSError(28, "write made no progress (disk full?)")
        view = view[n:]


class SliceStore:
    """All cache disks, the descriptor cache, and the insert API used by fills."""

    def __init__(
        self,
        disks: Iterable[tuple[Path, int]],
        *,
        slice_size: int,
        max_open_files: int = 4096,
        reserve: int = 0,
    ) -> None:
        self.disks = [Disk(Path(p), cap) for p, cap in disks]
        if not self.disks:
            raise ValueError("at least one cache directory is required")
        self.slice_size = slice_size
        self.max_open_files = max_open_files
        self.reserve = reserve
        # Slices probed by purge when the object's size is unknown (128 GiB at 2 MiB slices).
        self.max_probe = 65536
        self._open: OrderedDict[int, SliceHandle] = OrderedDict()
        self.evictions = 0
        self.evicted_bytes = 0
        self.disk_errors = 0
        self._pins_lock = asyncio.Lock()
        self.last_disk_error: str | None = None
        self.last_disk_error_at = 0.0

    # -- placement ---------------------------------------------------------

    def disk_for(self, key: int) -> Disk:
        if len(self.disks) == 1:
            return self.disks[0]
        live = [d for d in self.disks if not d.failed] or self.disks
        return max(live, key=lambda d: d.rendezvous(key))

    # -- start-up ----------------------------------------------------------

    def rebuild(self) -> tuple[int, int]:
        total = removed = 0
        for disk in self.disks:
            try:
                n, r = disk.rebuild(self.slice_size)
            except OSError as exc:
                # Not a directory, not creatable, unreadable: serve without this disk.
                self._disk_error(disk, exc)
                disk.failed = True
                log.error("event=disk_failed dir=%s error=%r", disk.root, str(exc))
                continue
            total += n
            removed += r
            log.info(
                "event=cache_rebuilt dir=%s objects=%d bytes=%d removed=%d",
                disk.root,
                n,
                disk.index.used,
                r,
            )
        return total, removed

    # -- accounting --------------------------------------------------------

    @property
    def used(self) -> int:
        return sum(d.index.used for d in self.disks)

    @property
    def capacity(self) -> int:
        return sum(d.index.capacity for d in self.disks)

    @property
    def objects(self) -> int:
        return sum(len(d.index) for d in self.disks)

    @property
    def failed_disks(self) -> list[Disk]:
        return [d for d in self.disks if d.failed]

    def _disk_error(self, disk: Disk, exc: OSError) -> None:
        disk.errors += 1
        self.disk_errors += 1
        self.last_disk_error = f"{disk.root}: {exc.strerror or exc}"
        self.last_disk_error_at = time.time()
        log.warning("event=disk_error dir=%s error=%r", disk.root, str(exc))
        # Repeated I/O errors take the disk out of service; a full disk is not a failure.
        if exc.errno not in (28, 122) and disk.errors >= 3:  # ENOSPC, EDQUOT
            disk.failed = True

    def has_slice(self, path: str, index: int) -> bool:
        key = slice_key(path, index)
        return key in self.disk_for(key).index

    # -- hits ----------------------------------------------------------------

    def open_slice(self, path: str, index: int) -> SliceHandle | None:
        """A complete cached slice, or None. Synchronous: the hit path never hops threads."""
        key = slice_key(path, index)
        h = self._open.get(key)
        if h is not None:
            self._open.move_to_end(key)
            h.disk.index.touch(key)
            return h
        disk = self.disk_for(key)
        if key not in disk.index or disk.failed:
            return None
        try:
            fd = os.open(disk.file_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            disk.index.remove(key)
            return None
        except OSError as exc:
            self._disk_error(disk, exc)
            return None
        try:
            raw = os.pread(fd, 4096, 0)
            body_offset, hpath, hindex, length, meta = decode_header(raw)
            if hpath != path or hindex != index:
                raise ValueError("hash collision")
            if os.fstat(fd).st_size != body_offset + length:
                raise ValueError("size mismatch")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            os.close(fd)
            log.warning("event=slice_corrupt key=%016x path=%s error=%r", key, path, str(exc))
            self._remove(disk, key)
            return None
        h = SliceHandle(key, fd, body_offset, length, path, index, meta, disk)
        self._cache_handle(h)
        disk.index.touch(key)
        return h

    def _cache_handle(self, h: SliceHandle) -> None:
        self._open[h.key] = h
        while len(self._open) > self.max_open_files:
            _, old = self._open.popitem(last=False)
            self._drop(old)

    def _drop(self, h: SliceHandle) -> None:
        h.dropped = True
        if h.refs == 0:
            os.close(h.fd)

    def acquire(self, h: SliceHandle) -> None:
        h.refs += 1
        h.disk.index.acquire(h.key)

    def release(self, h: SliceHandle) -> None:
        h.refs -= 1
        h.disk.index.release(h.key)
        if h.refs == 0 and h.dropped:
            os.close(h.fd)

    # -- removal -------------------------------------------------------------

    def _remove(self, disk: Disk, key: int) -> None:
        disk.index.remove(key)
        h = self._open.pop(key, None)
        if h is not None:
            self._drop(h)
        _unlink(disk.file_path(key))

    def purge(self, path: str, size: int | None = None) -> int:
        """Remove every cached slice of an object; returns how many were removed.

        Without a known size, slices are probed by index (a hash and a dict lookup
        each) up to ``max_probe``, and any slice found tells the object's real size.
        """
        n = 0
        limit = self.max_probe if size is None else max(1, -(-size // self.slice_size))
        i = 0
        while i < limit:
            key = slice_key(path, i)
            disk = self.disk_for(key)
            if key in disk.index:
                if size is None:
                    h = self.open_slice(path, i)
                    if h is not None:
                        size = h.meta.size
                        limit = max(1, -(-size // self.slice_size))
                if key in disk.index:
                    self._remove(disk, key)
                    n += 1
            i += 1
        return n

    # -- inserts (reactive misses and proactive fill alike) -------------------

    def begin_insert(
        self, path: str, index: int, length: int, meta: ObjectMeta, *, pinned: bool = False
    ) -> SliceWriter | None:
        """Reserve room and open a temporary file, or None if the slice cannot be cached.

        None means the disk is failed or full of pinned/in-use data; the caller
        then passes the upstream bytes through without caching them.
        """
        key = slice_key(path, index)
        disk = self.disk_for(key)
        if disk.failed:
            return None
        header = encode_header(path, index, length, meta)
        need = len(header) + length
        if not self._has_free_space(disk, need):
            return None
        victims, fits = disk.index.make_room(need + disk.reserved)
        for vkey, vsize in victims:
            h = self._open.pop(vkey, None)
            if h is not None:
                self._drop(h)
            _unlink(disk.file_path(vkey))
            self.evictions += 1
            self.evicted_bytes += vsize
        if not fits:
            return None
        try:
            w = SliceWriter(disk, key, header, length, pinned)
        except OSError as exc:
            self._disk_error(disk, exc)
            return None
        disk.reserved += need
        return w

    def _has_free_space(self, disk: Disk, need: int) -> bool:
        """Keep ``reserve`` bytes free on the filesystem (it may be shared with other data)."""
        if not self.reserve:
            return True
        try:
            st = os.statvfs(disk.root)
        except OSError as exc:
            self._disk_error(disk, exc)
            return False
        return st.f_bavail * st.f_frsize - need >= self.reserve

    @staticmethod
    def finish(w: SliceWriter) -> OSError | None:
        """fsync and rename a fully written slice. Blocking: run it in a thread.

        It touches no shared state (the loop thread owns the index); ``publish``
        then makes the result visible. The writer's descriptor stays open for
        readers of the fill in progress; its owner closes it with ``w.close()``.
        """
        try:
            if w.written != w.length:
                raise OSError(5, f"short slice: {w.written} of {w.length} bytes")
            os.fsync(w.fd)
            os.rename(w.tmp, w.final)
        except OSError as exc:
            w.discard()
            return exc
        return None

    def publish(self, w: SliceWriter, error: OSError | None) -> bool:
        """On the loop thread, after ``finish``: index the slice, or count the failure."""
        disk = w.disk
        need = w.body_offset + w.length
        disk.reserved -= need
        if error is not None:
            self._disk_error(disk, error)
            return False
        old = self._open.pop(w.key, None)
        if old is not None:
            self._drop(old)
        disk.index.insert(w.key, need, pinned=w.pinned)
        if w.pinned:
            disk.pins_dirty = True
        return True

    def commit(self, w: SliceWriter) -> bool:
        """``finish`` and ``publish`` in one call, for callers without an event loop."""
        return self.publish(w, self.finish(w))

    def abort(self, w: SliceWriter) -> None:
        w.disk.reserved -= w.body_offset + w.length
        w.discard()

    # -- pins ------------------------------------------------------------------

    def set_pinned(self, path: str, index: int, pinned: bool) -> bool:
        key = slice_key(path, index)
        disk = self.disk_for(key)
        ok = disk.index.pin(key) if pinned else disk.index.unpin(key)
        if ok:
            disk.pins_dirty = True
        return ok

    @property
    def pinned_bytes(self) -> int:
        return sum(d.index.pinned_bytes for d in self.disks)

    def unpin_except(self, keep: Container[int]) -> Iterator[int]:
        """Unpin every pinned slice whose key is not in ``keep``, lazily.

        Yields once per cached slice examined: the bytes that slice released (0 when it was
        not pinned or is kept), so the caller can pace a walk over millions of slices and
        give the event loop back between steps. The keys are a snapshot: slices added
        meanwhile are not looked at, slices removed meanwhile are skipped.
        """
        for disk in self.disks:
            index = disk.index
            for key in list(index._slot):
                released = 0
                if key not in keep and index.is_pinned(key):
                    released = index.size_of(key) or 0
                    if index.unpin(key):
                        disk.pins_dirty = True
                yield released

    def flush_pins(self) -> None:
        """Persist pin changes (batched: rewriting the file per change would be quadratic).

        Pins lost to a crash before a flush come back with the next fill manifest.
        """
        for disk in self.disks:
            if disk.pins_dirty and not disk.failed:
                disk.pins_dirty = False
                try:
                    disk.save_pins()
                except OSError as exc:
                    self._disk_error(disk, exc)

    async def flush_pins_async(self) -> None:
        """``flush_pins`` for the running server: the snapshot is taken on the loop (a copy
        of two arrays), the formatting and the fsynced write happen in a worker thread.
        Flushes are serialised, so an older snapshot never lands after a newer one."""
        async with self._pins_lock:
            for disk in self.disks:
                if disk.pins_dirty and not disk.failed:
                    disk.pins_dirty = False
                    snapshot = disk.index.pinned_snapshot()
                    try:
                        await asyncio.to_thread(write_pins, disk.root / PINS_FILE, snapshot)
                    except OSError as exc:
                        self._disk_error(disk, exc)

    def close(self) -> None:
        self.flush_pins()
        for disk in self.disks:
            disk.unlock()
        for h in self._open.values():
            self._drop(h)
        self._open.clear()
