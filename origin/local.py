"""The local-directory backend of :mod:`origin.storage`: objects are files under a root.

See :class:`LocalStorage` for the layout and crash safety, and :mod:`origin.storage` for the
contract every backend keeps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat as statmod
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

import xxhash

from .storage import (
    _CHECKSUM_RE,
    COPY_CHUNK,
    InvalidKey,
    KiB,
    NotFound,
    ObjectInfo,
    Storage,
    StorageError,
    _Cancelled,
    _check_src,
    _info,
    _Reader,
    _show,
    _valid_content_type,
    check_key,
    guess_content_type,
)

__all__ = ["LocalStorage"]

log = logging.getLogger("origin.storage")  # the store's log, whichever backend

META_DIR: Final = ".meta"
TMP_PREFIX: Final = ".tmp-"


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
