"""Publishing an ingested title atomically, and the ingest job that does it.

A title is visible to edges (and announced to the catalog) only once its
``manifest.json`` is stored, and that file is stored last, after every other
file of the title was uploaded and its checksum verified. A failed or
interrupted publication therefore leaves nothing visible; its partial files
are removed, and the job can simply run again. Re-ingesting a published title
needs ``replace``: the title is withdrawn first (marker removed, then files),
so players never see a mix of two encodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .catalog import CatalogFeed
from .config import OriginConfig
from .jobs import PermanentJobError
from .storage import Storage

log = logging.getLogger("origin.publish")

MARKER = "manifest.json"


class PublishError(Exception):
    """A title could not be published; nothing of it is visible."""


def title_prefix(title: str) -> str:
    return f"v/{title}/"


async def is_published(storage: Storage, title: str) -> bool:
    return await storage.stat(title_prefix(title) + MARKER) is not None


async def published_manifest(storage: Storage, title: str) -> dict[str, Any] | None:
    """The stored manifest.json of a published title, or None."""
    key = title_prefix(title) + MARKER
    info = await storage.stat(key)
    if info is None:
        return None
    data = b"".join([chunk async for chunk in storage.read(key, 0, info.size - 1)])
    doc = json.loads(data)
    return doc if isinstance(doc, dict) else {}


async def publish(
    storage: Storage, title: str, out_dir: Path, feed: CatalogFeed, *, concurrency: int = 8
) -> int:
    """Upload ``out_dir`` (an ingest's output) as ``v/<title>/``; returns the feed sequence."""
    manifest = json.loads((out_dir / MARKER).read_text())
    files = [f for f in manifest["files"] if f["path"] != MARKER]
    prefix = title_prefix(title)
    sem = asyncio.Semaphore(concurrency)

    async def upload(f: dict[str, Any]) -> None:
        async with sem:
            info = await storage.put_file(
                prefix + f["path"], out_dir / f["path"], f.get("content_type")
            )
        if info.size != f["size"] or info.checksum != f["xxh64"]:
            raise PublishError(
                f"{prefix}{f['path']}: stored {info.size} bytes xxh64 {info.checksum}, "
                f"expected {f['size']} bytes xxh64 {f['xxh64']}"
            )

    try:
        # A TaskGroup, not gather: on the first failure the other uploads are cancelled
        # before the cleanup below, so none lands after it.
        async with asyncio.TaskGroup() as tg:
            for f in files:
                tg.create_task(upload(f))
        # The marker last: from this moment the title is whole and visible.
        await storage.put_file(prefix + MARKER, out_dir / MARKER, "application/json")
    except BaseException as exc:
        if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        # Nothing is visible without the marker; remove what was uploaded (best effort).
        try:
            await asyncio.shield(storage.delete_prefix(prefix))
        except Exception as cleanup:  # the original failure matters more
            log.warning("event=publish_cleanup_failed title=%s error=%r", title, str(cleanup))
        raise exc from None
    seq = feed.announce(title, manifest)
    log.info("event=title_published title=%s files=%d seq=%d", title, len(files) + 1, seq)
    return seq


async def unpublish(storage: Storage, title: str, feed: CatalogFeed) -> int:
    """Withdraw a title: marker first (invisible at once), then its files."""
    prefix = title_prefix(title)
    await storage.delete(prefix + MARKER)
    removed = await storage.delete_prefix(prefix)
    feed.withdraw(title)
    log.info("event=title_withdrawn title=%s files=%d", title, removed)
    return removed


Progress = Callable[[float, str | None], None]


def ingest_handler(
    config: OriginConfig, storage: Storage, feed: CatalogFeed
) -> Callable[[Any, Progress], Awaitable[dict[str, Any]]]:
    """The job handler for kind "ingest": payload {source, title, ladder_file?, replace?}."""
    from .ingest import ingest_title
    from .ladder import DEFAULT_LADDER, load_ladder

    async def handle(job: Any, progress: Progress) -> dict[str, Any]:
        p = job.payload
        title = p["title"]
        source = Path(p["source"])
        ladder_file = p.get("ladder_file") or config.ingest.ladder_file
        ladder = load_ladder(Path(ladder_file)) if ladder_file else DEFAULT_LADDER
        stored = await published_manifest(storage, title)
        if stored is not None:
            if stored.get("job") == job.id:
                # This very job published it and then died before saying so: finish its work.
                if not feed.is_announced(title, job.id):
                    feed.announce(title, stored)
                return {"title": title, "duration": stored.get("duration"), "recovered": True}
            if not p.get("replace"):
                raise PermanentJobError(f"title {title!r} is already published (use --replace)")
        # One directory per attempt: a worker that lost its lease and still runs must not
        # touch the next attempt's files.
        work = config.ingest.work_dir / f"{title}-job{job.id}-try{job.attempts}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        done: dict[str, float] = {}
        shown = [0.0]

        def on_progress(rung: str, fraction: float, speed: float) -> None:
            done[rung] = fraction
            # Renditions report as they start, so the average can dip: never show it going back.
            shown[0] = max(shown[0], sum(done.values()) / max(len(done), 1))
            progress(shown[0] * 0.9, f"encoding {rung} {fraction:.0%} at {speed:.1f}x")

        try:
            result = await ingest_title(
                source,
                title,
                work,
                ladder=ladder,
                preset=config.ingest.preset,
                segment_seconds=config.ingest.segment_seconds,
                parallel=config.ingest.parallel or None,
                retries=config.ingest.retries,
                on_progress=on_progress,
            )
            # Which job published it: a retry after a crash recognises its own work.
            marker = result.out_dir / MARKER
            manifest = json.loads(marker.read_text())
            manifest["job"] = job.id
            marker.write_text(json.dumps(manifest, indent=1))
            progress(0.9, "publishing")
            if stored is not None:
                # --replace: the old version stayed up during the encode; swap it now.
                await unpublish(storage, title, feed)
            seq = await publish(storage, title, result.out_dir, feed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress(1.0, "published")
        return {"title": title, "duration": result.duration, "seq": seq}

    return handle
