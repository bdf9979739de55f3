"""Fetching byte ranges from the upstreams (origin and/or parent edges).

Each upstream is asked for exactly one slice with a ``Range`` request and its
answer is checked against what was asked before a single byte is used: the
status, ``Content-Range``, ``Content-Length`` and, where it applies, the
checksum header. Anything else raises ``UpstreamMismatch``, is counted and is
never cached. Upstreams are tried in the configured order, each with a small
number of retries.

Besides HTTP(S), an upstream may be ``file:///dir``: a local directory (a
mounted master copy, and the embedded default for a single-box setup).

The nightly fill (``edge.fill``) uses the same client for its other sources: a
peer edge of the site, asked with ``Cache-Control: only-if-cached`` and a path
the filling edge signs itself (``UpstreamSpec.headers`` / ``sign_path``), whose
504 means "not cached there" (``NotCached``), and parent caches.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import xxhash

from .conditionals import parse_http_date
from .errors import NotFound, RangeNotSatisfiable, UpstreamError, UpstreamMismatch
from .store import ObjectMeta

log = logging.getLogger("edge.upstream")

CHECKSUM_HEADER = "X-Checksum-XXH64"
READ_CHUNK = 256 * 1024

# Types the player cares about that mimetypes does not know everywhere.
_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".mp4": "video/mp4",
    ".ts": "video/mp2t",
    ".cmfv": "video/mp4",
    ".cmfa": "audio/mp4",
    ".vtt": "text/vtt",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".json": "application/json",
}


def guess_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return _TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def derived_etag(path: str, size: int, last_modified: int, checksum: str | None) -> str:
    """A strong validator when the upstream gave none (or only a weak one)."""
    basis = checksum or f"{path}\x00{size}\x00{last_modified}"
    return '"' + xxhash.xxh64_hexdigest(basis.encode()) + '"'


@dataclass(slots=True)
class UpstreamResponse:
    """A validated answer: ``body`` yields exactly ``length`` bytes starting at ``start``."""

    source: str
    meta: ObjectMeta
    start: int
    length: int
    body: AsyncIterator[bytes]
    whole: bool  # the body is the complete object (so a whole-object checksum applies)


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    url: str
    credential: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    fill_timeout: float = 120.0
    # Extra request headers (a peer fill sends Cache-Control: only-if-cached).
    headers: tuple[tuple[str, str], ...] = ()
    # Maps the object path to the path requested (a peer fill adds a signed token).
    sign_path: Callable[[str], str] | None = None


class NotCached(UpstreamError):
    """A peer asked with only-if-cached does not hold the object (504, RFC 9111 §5.2.1.7)."""

    reason = "not_cached"


def _parse_content_range(value: str) -> tuple[int, int, int] | None:
    # RFC 9110 §14.4: "bytes first-last/complete-length"
    unit, _, rest = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    rng, _, total = rest.partition("/")
    first, _, last = rng.partition("-")
    if not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    a, b, n = int(first), int(last), int(total)
    if a > b or b >= n:
        return None
    return a, b, n


class Upstreams:
    """The ordered upstream list with retries; owns no session (the app does)."""

    def __init__(
        self,
        specs: list[UpstreamSpec],
        session: aiohttp.ClientSession,
        *,
        retries: int = 1,
        node_id: str = "",
        on_attempt: object = None,
    ) -> None:
        if not specs:
            raise ValueError("at least one upstream is required")
        self.specs = specs
        self.session = session
        self.retries = retries
        self.node_id = node_id
        self.fetches = 0
        self.failures: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_at = 0.0
        self.last_success_at = 0.0

    def record_failure(self, reason: str, source: str, detail: str) -> None:
        """Count a failed attempt; also used by fills for failures found mid-body."""
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.last_error = f"{source}: {detail}"
        self.last_error_at = time.time()
        log.warning(
            "event=upstream_failure upstream=%s reason=%s detail=%r", source, reason, detail
        )

    async def fetch(
        self, path: str, start: int, end: int, expect_etag: str | None = None
    ) -> UpstreamResponse:
        """Fetch bytes ``start..end`` (inclusive, end clipped to the object) of ``path``."""
        last: Exception | None = None
        for spec in self.specs:
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
                self.fetches += 1
                try:
                    if spec.url.startswith("file://"):
                        resp = await self._fetch_file(spec, path, start, end)
                    else:
                        resp = await self._fetch_http(spec, path, start, end)
                except (NotFound, RangeNotSatisfiable, NotCached):
                    raise
                except UpstreamMismatch as exc:
                    self.record_failure("mismatch", spec.url, str(exc))
                    last = exc
                    break  # a wrong answer will not improve on retry; try the next upstream
                except UpstreamError as exc:
                    self.record_failure(exc.reason, spec.url, str(exc))
                    last = exc
                    continue
                if expect_etag is not None and resp.meta.etag != expect_etag:
                    await _close(resp.body)
                    raise UpstreamMismatch("object changed upstream (ETag differs)", changed=True)
                self.last_success_at = time.time()
                return resp
        raise UpstreamError(f"all upstreams failed: {last}", reason="exhausted")

    # -- HTTP --------------------------------------------------------------

    async def _fetch_http(
        self, spec: UpstreamSpec, path: str, start: int, end: int
    ) -> UpstreamResponse:
        wire_path = spec.sign_path(path) if spec.sign_path is not None else path
        url = spec.url + quote(wire_path, safe="/:@!$&'()*+,;=-._~")
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        headers.update(spec.headers)
        if spec.credential:
            headers["Authorization"] = f"Bearer {spec.credential}"
        if self.node_id:
            headers["Via"] = f"1.1 {self.node_id} (opencdn-edge)"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=spec.connect_timeout, sock_read=spec.read_timeout
        )
        try:
            resp = await self.session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False, auto_decompress=False
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"connect: {exc or type(exc).__name__}", reason="connect") from exc
        try:
            return self._validate_http(spec, resp, path, start, end)
        except BaseException:
            resp.release()
            resp.close()
            raise

    def _validate_http(
        self, spec: UpstreamSpec, resp: aiohttp.ClientResponse, path: str, start: int, end: int
    ) -> UpstreamResponse:
        h = resp.headers
        status = resp.status
        if status in (404, 410):
            raise NotFound(path)
        if status == 504 and any(
            k.lower() == "cache-control" and "only-if-cached" in v.lower() for k, v in spec.headers
        ):
            raise NotCached(f"{spec.url} does not hold {path}", reason="not_cached")
        if status == 416:
            cr = h.get("Content-Range", "")
            if cr.startswith("bytes */") and cr[8:].isdigit() and int(cr[8:]) == 0 and start == 0:
                meta = self._meta(h, path, 0)
                return UpstreamResponse(spec.url, meta, 0, 0, _empty(resp), True)
            if cr.startswith("bytes */") and cr[8:].isdigit() and int(cr[8:]) <= start:
                raise RangeNotSatisfiable(int(cr[8:]))
            raise UpstreamMismatch(f"416 for bytes {start}-{end}: {cr!r}")
        if status >= 500 or status in (401, 403, 408, 429):
            raise UpstreamError(f"status {status}", reason=f"status_{status}")
        clen = h.get("Content-Length")
        if status == 206:
            parsed = _parse_content_range(h.get("Content-Range", ""))
            if parsed is None:
                raise UpstreamMismatch(f"206 with bad Content-Range {h.get('Content-Range')!r}")
            a, b, size = parsed
            if a != start or b != min(end, size - 1):
                raise UpstreamMismatch(f"asked {start}-{end}, got {a}-{b}/{size}")
            length = b - a + 1
            if clen is not None and clen != str(length):
                raise UpstreamMismatch(f"Content-Length {clen} for {length}-byte range")
            meta = self._meta(h, path, size)
            return UpstreamResponse(
                spec.url,
                meta,
                a,
                length,
                _http_body(resp, length, _deadline(spec)),
                a == 0 and length == size,
            )
        if status == 200:
            if clen is None or not clen.isdigit():
                raise UpstreamMismatch("200 without Content-Length")
            size = int(clen)
            if start != 0:
                raise UpstreamMismatch(f"200 (whole object) for bytes {start}-{end}")
            length = min(size, end + 1)
            meta = self._meta(h, path, size)
            return UpstreamResponse(
                spec.url, meta, 0, length, _http_body(resp, length, _deadline(spec)), length == size
            )
        raise UpstreamMismatch(f"unexpected status {status}")

    def _meta(self, h: object, path: str, size: int) -> ObjectMeta:
        get = h.get  # type: ignore[attr-defined]
        lm = parse_http_date(get("Last-Modified", "")) or 0
        checksum = get(CHECKSUM_HEADER)
        if checksum is not None:
            checksum = checksum.strip().lower()
        etag = get("ETag")
        if not etag or etag.startswith("W/") or not etag.startswith('"'):
            etag = derived_etag(path, size, lm, checksum)
        ctype = get("Content-Type") or guess_type(path)
        return ObjectMeta(size, etag, lm, ctype, checksum)

    # -- local directory ---------------------------------------------------

    async def _fetch_file(
        self, spec: UpstreamSpec, path: str, start: int, end: int
    ) -> UpstreamResponse:
        root = spec.url[len("file://") :]
        if path.endswith("/"):
            raise NotFound(path)  # a directory, or a file named with a trailing slash
        full = os.path.realpath(os.path.join(root, path.lstrip("/")))
        # Paths are normalised before they get here; this is the last line of defence.
        if not (full + "/").startswith(os.path.realpath(root) + "/"):
            raise NotFound(path)
        loop = asyncio.get_running_loop()
        try:
            # stat only: no descriptor is held until the body is actually read, so a fill
            # cancelled in between leaks nothing.
            st = await loop.run_in_executor(None, os.stat, full)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(path) from exc
        except OSError as exc:
            raise UpstreamError(f"stat: {exc}", reason="io") from exc
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(path)
        size = st.st_size
        if start >= size and not (start == 0 and size == 0):
            raise RangeNotSatisfiable(size)
        lm = int(st.st_mtime)
        etag = (
            '"'
            + hashlib.blake2s(
                f"{st.st_ino}-{size}-{st.st_mtime_ns}".encode(), digest_size=10
            ).hexdigest()
            + '"'
        )
        meta = ObjectMeta(size, etag, lm, guess_type(path), None)
        length = 0 if size == 0 else min(end, size - 1) - start + 1
        return UpstreamResponse(
            spec.url,
            meta,
            start,
            length,
            _file_body(full, st, start, length, _deadline(spec)),
            length == size,
        )


async def _empty(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    resp.release()
    return
    yield b""  # pragma: no cover - makes this an async generator


def _deadline(spec: UpstreamSpec) -> float:
    return time.monotonic() + spec.fill_timeout


def _check_deadline(deadline: float, got: int, length: int) -> None:
    if time.monotonic() > deadline:
        raise UpstreamError(f"too slow: {got} of {length} bytes in fill_timeout", reason="slow")


async def _http_body(
    resp: aiohttp.ClientResponse, length: int, deadline: float
) -> AsyncIterator[bytes]:
    """Yields exactly ``length`` bytes or raises UpstreamError (truncated, timed out)."""
    got = 0
    ok = False
    try:
        while got < length:
            _check_deadline(deadline, got, length)
            try:
                chunk = await resp.content.read(min(READ_CHUNK, length - got))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise UpstreamError(
                    f"body after {got} bytes: {exc or type(exc).__name__}", reason="body"
                ) from exc
            if not chunk:
                raise UpstreamError(f"truncated: {got} of {length} bytes", reason="truncated")
            got += len(chunk)
            yield chunk
        ok = True
    finally:
        if ok and resp.content.at_eof():
            resp.release()
        else:
            # We stop early (a 200 for a bigger object) or failed: do not reuse the connection.
            resp.close()


async def _file_body(
    full: str, expected: os.stat_result, start: int, length: int, deadline: float
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UpstreamError(f"open: {exc}", reason="io") from exc
    try:
        st = os.fstat(fd)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (
            expected.st_ino,
            expected.st_size,
            expected.st_mtime_ns,
        ):
            raise UpstreamMismatch(f"{full} changed while being read")
        got = 0
        while got < length:
            _check_deadline(deadline, got, length)
            try:
                chunk = await loop.run_in_executor(
                    None, os.pread, fd, min(READ_CHUNK, length - got), start + got
                )
            except OSError as exc:
                raise UpstreamError(f"read: {exc}", reason="io") from exc
            if not chunk:
                raise UpstreamError(f"truncated: {got} of {length} bytes", reason="truncated")
            got += len(chunk)
            yield chunk
    finally:
        # Synchronous, so even a cancelled fill releases the file. A pread still running
        # in its thread may then fail with EBADF; its result is discarded anyway.
        os.close(fd)


async def _close(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
