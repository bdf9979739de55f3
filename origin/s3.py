"""The S3 backend of :mod:`origin.storage`: objects in an S3 (or S3-compatible) bucket.

See :class:`S3Storage` for how metadata travels with an object, and :mod:`origin.storage` for
the contract every backend keeps.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
import xxhash
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from .storage import (
    _CHECKSUM_RE,
    COPY_CHUNK,
    MAX_KEY_BYTES,
    GiB,
    InvalidKey,
    MiB,
    NotFound,
    ObjectInfo,
    Storage,
    StorageError,
    _Cancelled,
    _check_int,
    _check_src,
    _info,
    _Reader,
    _show,
    _valid_content_type,
    check_key,
    guess_content_type,
)

__all__ = ["S3Storage"]

S3_MIN_PART: Final = 5 * MiB  # every part but the last must be at least this big
S3_MAX_PART: Final = 5 * GiB
S3_MAX_PARTS: Final = 10_000
S3_MAX_PUT: Final = 5 * GiB  # single PUT and CopyObject limit
S3_MAX_BATCH: Final = 1000  # DeleteObjects and ListObjectsV2 page limit

_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_REGION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CREDENTIAL_RE = re.compile(r"[\x21-\x7e]{1,1024}")


def _error_code(e: ClientError) -> tuple[str, int | None]:
    response: dict[str, Any] = e.response or {}
    code = str(response.get("Error", {}).get("Code", "Unknown"))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


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
